"""The database: engines, SQLite's settings, and schema migrations (Alembic)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cpmail.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision. Every command compares the database with it;
# reading it from Alembic's scripts instead costs each command about 0.1 s.
# tests/test_settings.py checks that it names Alembic's head.
SCHEMA_REVISION = "0009"


def _unicode_lower(text: Any) -> Any:
    return text.lower() if isinstance(text, str) else text


def lower(engine: sa.Engine) -> Any:
    """SQL's lower() of every letter, not only A-Z (SQLite's own), on either database."""
    return sa.func.unicode_lower if engine.dialect.name == "sqlite" else sa.func.lower


def utcnow() -> dt.datetime:
    """Now in UTC, naive: the form cpmail's own bookkeeping times are stored in."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def sqlite_path(url: str) -> str:
    """The file of a SQLite URL ('' in memory), read by SQLAlchemy's parser.

    Never the text after ``///``: an encrypted database's URL
    (``sqlite+pysqlcipher://:PASSWORD@/file.db``) has its password before the
    path, and that text would carry it into messages.
    """
    try:
        database = sa.engine.make_url(url).database or ""
    except Exception:
        return ""
    return "" if database == ":memory:" else database


def make_engine(
    url: str, *, busy_seconds: float = 60.0, connect_args: dict[str, Any] | None = None
) -> sa.Engine:
    """Create an engine; SQLite gets WAL, foreign keys, a busy timeout and BEGIN IMMEDIATE.

    BEGIN IMMEDIATE takes the write lock when a transaction starts, so two
    processes never both read "not yet queued" and then both queue: concurrent
    runs on one SQLite file are serialised, not interleaved.
    """
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path:
            from cpmail.settings import private_dir

            private_dir(Path(path).parent)
        try:
            engine = sa.create_engine(url, connect_args={"timeout": busy_seconds})
        except ImportError as e:  # sqlite+pysqlcipher:// without its driver
            raise _no_driver(sa.engine.make_url(url).drivername, e) from None

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # What is deleted is overwritten with zeros, on every build (some leave it in
            # the file's free pages): the text of a message sent or dropped is gone.
            cur.execute("PRAGMA secure_delete=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
            cur.close()
            # lower() of every letter, as PostgreSQL's is: SQLite's own changes only A-Z.
            dbapi_conn.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    from cpmail.settings import bare_at

    # The errors below never quote the URL or SQLAlchemy's words about it: they may hold
    # the password.
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        parsed = None
    if parsed is None or bare_at(url):
        raise ConfigError(
            "database.url is not a database URL cpmail can use; write it as "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME, with any @, /, : or space "
            "in the password written as %40, %2F, %3A or %20."
        )
    try:
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args or {})
    except sa.exc.NoSuchModuleError:
        raise ConfigError(
            f"database.url names {parsed.drivername!r}, a database driver cpmail does not "
            "have; use postgresql+psycopg://… (or leave it empty for SQLite)."
        ) from None
    except ImportError as e:  # a dialect cpmail knows, whose Python driver is not installed
        raise _no_driver(parsed.drivername, e) from None
    except (sa.exc.ArgumentError, ValueError, TypeError):
        raise ConfigError(
            "database.url is not a database URL cpmail can use; check its options after '?'."
        ) from None


def check_driver(url: str) -> None:
    """ConfigError when the Python driver of an SQLite ``url`` is not installed."""
    u = sa.engine.make_url(url)
    try:
        u.get_dialect().import_dbapi()
    except ImportError as e:
        raise _no_driver(u.drivername, e) from None


def _no_driver(drivername: str, e: ImportError) -> ConfigError:
    module = f" ({e.name})" if e.name else ""
    return ConfigError(
        f"database.url names {drivername!r}, whose Python driver{module} is not installed; "
        "use postgresql+psycopg://…, which cpmail installs, or install that driver."
    )


def _alembic_config(engine: sa.Engine, conn: sa.Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision (idempotent).

    A database a newer cpmail has already brought further is left as it is:
    ConfigError, saying that this cpmail must be upgraded.
    """
    from alembic import command

    _private_file(engine)
    with engine.begin() as conn:
        rev = _stored_revision(conn)
        if rev is not None and rev not in known_revisions():
            raise _newer(rev, describe(engine.url.render_as_string()))
        command.upgrade(_alembic_config(engine, conn), "head")


def _private_file(engine: sa.Engine) -> None:
    """A new SQLite file is made empty and 0600 before SQLite opens it, whatever the umask
    (SQLite gives its -wal and -shm files the database file's mode); one there keeps its."""
    import os

    from cpmail.settings import PRIVATE_FILE

    name = (engine.url.database or "") if engine.dialect.name == "sqlite" else ""
    if name in ("", ":memory:") or name.startswith("file:"):  # (a URI: SQLite reads it)
        return
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except OSError:  # there already, or not to be made here: SQLite says why
        return
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def refuse_newer(url: str) -> None:
    """ConfigError when the database at ``url`` is there and a newer cpmail wrote it; else
    nothing (a database that is not there, or cannot be read, is for what comes next)."""
    import os

    name = sqlite_path(url) if url.startswith("sqlite") else ""
    if url.startswith("sqlite") and (not name or not os.path.isfile(name)):
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rev = _stored_revision(conn)
    except sa.exc.SQLAlchemyError:
        return
    finally:
        engine.dispose()
    if rev is not None and rev not in known_revisions():
        raise _newer(rev, describe(url))


def known_revisions() -> frozenset[str]:
    """Every schema revision this cpmail has a migration for."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return frozenset(s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions())


def _newer(rev: str, where: str) -> ConfigError:
    """The error for a database at a revision this cpmail has no migration for."""
    return ConfigError(
        f"the database at {where} is at schema revision {rev}, which a newer cpmail wrote "
        f"(this one knows revisions up to {SCHEMA_REVISION}); upgrade cpmail on this machine."
    )


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The schema revision of the database; None when it holds no cpmail schema.

    A database that cannot be opened at all (down, locked, damaged) raises.
    """
    with engine.connect() as conn:
        return _stored_revision(conn)


def _stored_revision(conn: sa.Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    row = conn.execute(sa.text("SELECT version_num FROM alembic_version")).first()
    return None if row is None else str(row[0])


def clock(conn: sa.Connection) -> dt.datetime:
    """Now in UTC, naive, by the database's clock on a server (machines' clocks may differ)."""
    if conn.dialect.name == "postgresql":
        value = conn.execute(sa.text("SELECT timezone('UTC', now())")).scalar_one()
        assert isinstance(value, dt.datetime)
        return value
    return utcnow()


def describe(url: str) -> str:
    """Where a database is, for a sentence: its file, or engine, host and name (no password)."""
    if url.startswith("sqlite"):
        return sqlite_path(url) or "(in memory)"
    try:
        u = sa.engine.make_url(url)
    except Exception:
        return "named by database.url"
    # libpq also takes the host and port as options (?host=…&port=…), and a socket's folder
    query = {k: v if isinstance(v, str) else ",".join(v) for k, v in u.query.items()}
    host = u.host or query.get("host") or "localhost"
    port = f":{u.port or query['port']}" if u.port or query.get("port") else ""
    return f"{u.get_backend_name()} {u.database or ''!s} on {host}{port}".replace("  ", " ")


def connect(url: str, *, where: str, busy_seconds: float = 60.0) -> sa.Engine:
    """Open the database and make sure it holds cpmail's schema at the newest revision.

    A database that exists but cannot be used (down, locked, read-only,
    damaged, a wrong name) raises ``Unavailable`` (exit 3) saying so; only a
    database with no cpmail schema is told to run `cpmail init`.
    """
    sqlite = url.startswith("sqlite")
    if sqlite and not Path(sqlite_path(url)).exists():
        check_driver(url)  # `cpmail init` would fail for want of it: say that first
        raise ConfigError(f"there is no cpmail database at {where}; run `cpmail init` first.")
    engine = make_engine(url, busy_seconds=busy_seconds)
    try:
        rev = current_revision(engine)
    except sa.exc.SQLAlchemyError as e:
        from cpmail.errors import Unavailable
        from cpmail.store.failures import explain_database

        raise explain_database(e, where, sqlite=sqlite) or Unavailable(
            f"cannot open the database {where}: {type(e).__name__}."
        ) from None
    if rev is None:
        raise ConfigError(f"there is no cpmail database at {where}; run `cpmail init` first.")
    if rev != SCHEMA_REVISION:
        engine.dispose()
        if rev not in known_revisions():
            raise _newer(rev, where)
        raise ConfigError(
            f"the database at {where} is at schema revision {rev}; run `cpmail db upgrade`."
        )
    return engine
