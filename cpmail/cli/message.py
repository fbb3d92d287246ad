"""`cpmail message manager|helpdesk|bug|wish`: write to people who can help."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the message command to the root app."""
