"""Sign in with Google and Microsoft: `config gmail|microsoft`, `staff signin`."""

from __future__ import annotations

import typer


def register(config_app: typer.Typer, staff_app: typer.Typer) -> None:
    """Add the sign-in commands to the config and staff groups."""
