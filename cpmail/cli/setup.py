"""`cpmail init` and `cpmail demo`: set up a home."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cpmail.cli.common import ctx_of
from cpmail.errors import ConfigError
from cpmail.settings import (
    DEFAULT_TOML,
    PRIVATE_DIR,
    PRIVATE_FILE,
    SETTINGS_FILE,
    Settings,
    StrKey,
    private_dir,
    redact,
    write_atomic,
)

if TYPE_CHECKING:
    import sqlalchemy as sa


def _make_home(home: Path) -> None:
    """Create the home private (0700): it holds settings, secrets and the agency's data."""
    if home.exists() and not home.is_dir():
        raise ConfigError(f"{home} is not a folder; give --home a folder (or one to be made).")
    private_dir(home)


def _settings_file(path: Path, *, force: bool) -> tuple[bool, Path | None]:
    """Write the default cpmail.toml (when missing, or ``force``); either way leave it 0600.

    Return whether it was written, and where the file it replaced was kept.
    """
    if path.exists() and not path.is_file():  # (a folder, a device): change nothing
        raise ConfigError(f"{path} is not a file; move it away and run `cpmail init` again.")
    if force or not path.exists():
        kept = _keep_copy(path) if path.exists() else None
        write_atomic(path, DEFAULT_TOML.encode("utf-8"), mode=PRIVATE_FILE)
        return True, kept
    path.chmod(PRIVATE_FILE)  # an older or hand-made file may be open to others
    return False, None


def _keep_copy(path: Path) -> Path | None:
    """Copy ``path`` to ``cpmail.toml.bak`` (0600) beside it before it is replaced.

    The settings may be the only record of the agency, the sender and the database;
    on the defaults the day's mail would go to the file transport and be recorded as
    sent. A name already taken by another copy is never written over (``.bak.2``
    …); a file that holds the defaults, or a copy already kept, needs no new one.
    """
    import os

    try:
        old = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"cannot read {path} to keep a copy of it ({e.strerror}); nothing was changed."
        ) from None
    if old == DEFAULT_TOML.encode("utf-8"):
        return None
    for n in range(1, 1000):
        copy = path.with_name(f"{path.name}.bak" + (f".{n}" if n > 1 else ""))
        try:
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if copy.is_file() and not copy.is_symlink() and copy.read_bytes() == old:
                    return copy
            continue
        except OSError as e:
            raise ConfigError(
                f"cannot keep a copy of {path} as {copy} ({e.strerror}); nothing was changed."
            ) from None
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), PRIVATE_FILE)
                f.write(old)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            copy.unlink(missing_ok=True)
            raise ConfigError(
                f"cannot keep a copy of {path} as {copy} ({e.strerror}); nothing was changed."
            ) from None
        return copy
    raise ConfigError(
        f"{path.parent} holds 999 copies of {path.name} already; move them away and "
        "run `cpmail init --force` again."
    )


def _database(settings: Settings) -> sa.Engine:
    """Create or upgrade the schema; a new SQLite file is private (0600), in a 0700 folder."""
    from cpmail.store import make_engine, upgrade

    engine = make_engine(settings.db_url)  # (makes a missing folder of an SQLite file, 0700)
    upgrade(engine)  # (a new SQLite file made 0600 first)
    return engine


def _mail_dir(settings: Settings) -> None:
    """The file transport's folder: made 0700; the default one in the home tightened too."""
    folder = private_dir(settings.mail_dir)
    if folder.resolve() == (settings.home / "mail").resolve():
        folder.chmod(PRIVATE_DIR)


def init(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Rewrite cpmail.toml with the defaults."),
) -> None:
    """Create the home, cpmail.toml, the database schema and the secrets folder."""
    c = ctx_of(ctx)
    _make_home(c.home)
    path = c.home / SETTINGS_FILE
    if force:  # the settings it would write name a database a newer cpmail wrote: stop first
        from cpmail.store import refuse_newer

        refuse_newer(Settings(c.home, path, {}).db_url)
    wrote, kept = _settings_file(path, force=force)
    if kept is not None:
        c.say(f"Kept the old settings as {kept}")
    from cpmail.secrets import SecretStore

    settings = c.settings  # validates the file, old or new
    SecretStore(c.home, settings["secrets.backend"]).ensure_dir()
    _database(settings)
    _mail_dir(settings)
    c.say(f"{'Created' if wrote else 'Kept'} {path}")
    c.say(f"Database ready: {redact(settings['database.url']) or c.home / 'cpmail.db'}")
    c.say("Next: `cpmail staff add ID --name N --work-email E`, then `cpmail check --dry-run`.")


DEMO_SETTINGS: dict[StrKey, str] = {
    "agency.name": "Northwind Creative",
    "agency.address": "200 Harbor Street, Suite 4, Portland, ME 04101",
    "user.staff": "KM",
    "manager.name": "Kate Morgan",
    "manager.email": "kate.morgan@northwind.example",
    "helpdesk.email": "helpdesk@northwind.example",
}


def demo(
    ctx: typer.Context,
    date: str | None = typer.Option(
        None, "--date", metavar="YYYY-MM-DD", help="Lay the demo's dates around this day."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace the agency data (and outbox) already in this home."
    ),
) -> None:
    """Build a small fictional agency in this home, run `check`, show where the mail is."""
    import datetime as dt

    from cpmail import demo as demo_data
    from cpmail.cli.check import check
    from cpmail.cli.common import parse_date
    from cpmail.errors import InputError

    c = ctx_of(ctx)
    # Checked before anything is made: a refused --date leaves no home behind.
    day = parse_date(date, option="--date") if date is not None else None
    path = c.home / SETTINGS_FILE
    _make_home(c.home)
    _settings_file(path, force=False)
    s = c.settings
    engine = _database(s)
    from cpmail.secrets import SecretStore

    SecretStore(c.home, s["secrets.backend"]).ensure_dir()
    if demo_data.has_agency_data(engine):
        if not force:
            raise InputError(
                f"{c.home} already holds agency data; use another --home, or --force to "
                "replace it (its outbox and log go too)."
            )
        demo_data.clear_agency_data(engine)
    day = day or dt.datetime.now(s.tz()).date()
    for key, value in DEMO_SETTINGS.items():
        if not s[key] or key == "user.staff":
            s.set(key, value)
    s.set("mail.transport", "file")
    s.save()
    counts = demo_data.load(engine, s, day)
    shown = ("staff", "clients", "jobs", "tasks", "time_entries", "billings", "calendar_entries")
    c.say(
        f"Loaded the Northwind Creative demo agency for {day} into {c.home}: "
        + ", ".join(f"{counts.get(t, 0)} {t.replace('_', ' ')}" for t in shown)
        + f" and {sum(counts.values()) - sum(counts.get(t, 0) for t in shown)} more rows."
    )
    check(
        ctx,
        today=False,
        date=day.isoformat(),
        only=None,
        skip=None,
        dry_run=False,
        as_staff=None,
        json=False,
    )
    c.say("Open them with any mail program, or see `cpmail log`.")


def register(app: typer.Typer) -> None:
    """Add init and demo to the root app."""
    app.command("init")(init)
    app.command("demo")(demo)
