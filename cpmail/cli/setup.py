"""`cpmail init` and `cpmail demo`: set up a home."""

from __future__ import annotations

import typer

from cpmail.cli.common import ctx_of
from cpmail.settings import DEFAULT_TOML, SETTINGS_FILE, write_atomic


def init(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Rewrite cpmail.toml with the defaults."),
) -> None:
    """Create the home, cpmail.toml, the database schema and the secrets folder."""
    c = ctx_of(ctx)
    c.home.mkdir(parents=True, exist_ok=True)
    path = c.home / SETTINGS_FILE
    wrote = False
    if force or not path.exists():
        write_atomic(path, DEFAULT_TOML.encode("utf-8"), mode=0o644)
        wrote = True
    from cpmail.secrets import SecretStore
    from cpmail.store import make_engine, upgrade

    settings = c.settings  # validates the file, old or new
    SecretStore(c.home, settings["secrets.backend"]).ensure_dir()
    upgrade(make_engine(settings.db_url))
    c.settings.mail_dir.mkdir(parents=True, exist_ok=True)
    c.say(f"{'Created' if wrote else 'Kept'} {path}")
    c.say(f"Database ready: {settings['database.url'] or c.home / 'cpmail.db'}")
    c.say("Next: `cpmail staff add ID --name N --work-email E`, then `cpmail check --dry-run`.")


def register(app: typer.Typer) -> None:
    """Add init and demo to the root app."""
    app.command("init")(init)
