"""`cpmail outbox`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the outbox commands to the root app."""
