"""`cpmail report` and `cpmail send-report`: PDFs of invoices, estimates, POs and cash flow."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the report commands to the root app."""
