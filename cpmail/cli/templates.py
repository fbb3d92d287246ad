"""`cpmail templates …`."""

from __future__ import annotations

import typer

app = typer.Typer(help="templates", no_args_is_help=True)
