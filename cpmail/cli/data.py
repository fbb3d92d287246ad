"""`cpmail data …`: import and export the agency's data."""

from __future__ import annotations

import typer

app = typer.Typer(help="Import and export the agency's data.", no_args_is_help=True)
