"""`cpmail db upgrade`: apply schema migrations."""

from __future__ import annotations

import typer

from cpmail.cli.common import ctx_of

app = typer.Typer(help="The database.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Apply schema migrations to the newest revision."""
    c = ctx_of(ctx)
    from cpmail.errors import ConfigError
    from cpmail.settings import SETTINGS_FILE
    from cpmail.store import head_revision, make_engine
    from cpmail.store import upgrade as run_upgrade

    settings_file = c.home / SETTINGS_FILE
    if not settings_file.exists() and c.settings.db_url.startswith("sqlite"):
        # (a database made here without its settings is a home no command would use)
        raise ConfigError(
            f"{settings_file} does not exist; run `cpmail init`, which makes the database too."
        )

    run_upgrade(make_engine(c.settings.db_url))
    c.say(f"Database schema is at revision {head_revision()}.")
