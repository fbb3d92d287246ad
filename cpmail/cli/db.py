"""`cpmail db upgrade`: apply schema migrations."""

from __future__ import annotations

import typer

from cpmail.cli.common import ctx_of

app = typer.Typer(help="The database.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Apply schema migrations to the newest revision."""
    c = ctx_of(ctx)
    from cpmail.store import head_revision, make_engine
    from cpmail.store import upgrade as run_upgrade

    run_upgrade(make_engine(c.settings.db_url))
    c.say(f"Database schema is at revision {head_revision()}.")
