"""Fixtures every test may use: a fresh home and a way to run the CLI in it.

Migrating a new database takes most of `cpmail init`'s time, and most tests
start with `cpmail init`. So each kind is migrated by Alembic once per test
run (per worker with pytest-xdist), and after that a new one is given the
result (``_fast_upgrade``):

- an empty SQLite file (as `init` makes it) gets the bytes of a file Alembic
  migrated: same schema, same revision, WAL mode; the file keeps its inode
  and its 0600;
- an empty PostgreSQL schema (the first of the search_path) gets the
  statements that wrote when Alembic migrated one, in the same order, in one
  transaction, as Alembic sends them.

Everything else `init` does (settings file, secrets and mail folders, what
it prints) runs as it is. A database that is not empty is migrated by
Alembic as always, and so is any `cpmail` run in a process of its own.
tests/test_fast_migration.py checks that both give what Alembic gives.

Likewise typer builds the click command tree of `cpmail` anew for each
``CliRunner.invoke`` (a tenth of a second); here it is built once per app, as
a `cpmail` process builds it once (``_one_command_tree``).
"""

from __future__ import annotations

import gc
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer
import typer.main
import typer.testing
from typer.testing import CliRunner

import cpmail.store
from cpmail.cli.app import app
from cpmail.settings import PRIVATE_FILE

# Real servers every test module may ask for: SMTP (aiosmtpd) and PostgreSQL schemas.
pytest_plugins = ["tests.smtpserver", "tests.pg"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (``--dist loadgroup``), some tests share one worker.

    Those using Postfix, so that one Postfix is started (tests/postfix.py), not
    one per worker; those using PostgreSQL, so that the connections open at
    once stay as many as when the suite runs on one process (the server takes
    100). Tests marked ``serial`` are not this hook's matter: the test command
    runs them in a pytest of their own, beside the others (tests/run.py).
    """
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if "postfix" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("postfix"))
        elif item.get_closest_marker("postgres") is not None:
            item.add_marker(pytest.mark.xdist_group("postgres"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """What exists once the tests are collected (modules, fixtures' code) lives for
    the whole run: the garbage collector's full passes skip it from now on, which
    makes them several times shorter."""
    gc.collect()
    gc.freeze()


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Cli:
    """Runs `cpmail …` in-process with CPMAIL_HOME pointed at a temporary folder."""

    home: Path

    def __call__(
        self, *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None
    ) -> Result:
        runner = CliRunner()
        r = runner.invoke(
            app,
            ["--home", str(self.home), *args],
            input=input,
            env=env,
            catch_exceptions=False,
        )
        return Result(r.exit_code, r.stdout, r.stderr)


_real_upgrade = cpmail.store.upgrade


def _sqlite_file(engine: sa.Engine) -> Path | None:
    """The database file of an SQLite engine; None for anything else."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _migrate_once(folder: Path) -> bytes:
    """The bytes of an SQLite file that Alembic migrated to the newest revision."""
    path = folder / "cpmail.db"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    engine = cpmail.store.make_engine(f"sqlite:///{path}")
    try:
        _real_upgrade(engine)
    finally:
        engine.dispose()  # the last connection closes: the WAL goes into the file
    assert not path.with_name(path.name + "-wal").exists()
    engine = cpmail.store.make_engine(f"sqlite:///{path}")
    try:
        assert cpmail.store.current_revision(engine) == cpmail.store.head_revision()
    finally:
        engine.dispose()
    return path.read_bytes()


_WRITES = ("CREATE", "ALTER", "DROP", "COMMENT", "INSERT", "UPDATE", "DELETE")
Statement = tuple[str, Any]


def _pg_migration(url: str) -> list[Statement]:
    """What Alembic sends PostgreSQL to migrate an empty schema: the statements that write.

    Recorded while migrating a schema made for it (then dropped); its reads
    (Alembic looking at what is there) are left out.
    """
    schema = f"cpmail_migrated_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(sa.engine.make_url(url).set(query={}), isolation_level="AUTOCOMMIT")
    sent: list[Statement] = []
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        engine = cpmail.store.make_engine(
            admin.url.render_as_string(hide_password=False) + f"?options=-csearch_path%3D{schema}"
        )

        @sa.event.listens_for(engine, "before_cursor_execute")
        def record(
            conn: object, cursor: object, statement: str, params: Any, *rest: object
        ) -> None:
            if statement.lstrip().split(None, 1)[0].upper() in _WRITES:
                sent.append((statement, params))

        try:
            _real_upgrade(engine)
        finally:
            engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    return sent


def _pg_schema_is_empty(conn: sa.Connection) -> bool:
    """Whether the schema new tables go to (the first of search_path) exists and is empty."""
    empty = conn.execute(
        sa.text(
            "SELECT current_schema() IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c"
            "   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            "   WHERE n.nspname = current_schema())"
            " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t"
            "   JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace"
            "   WHERE n.nspname = current_schema())"
        )
    ).scalar()
    return bool(empty)


@pytest.fixture(scope="session", autouse=True)
def _fast_upgrade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Migrate an empty database the quick way (see the module docstring)."""
    migrated: list[bytes] = []  # made on first use
    pg_statements: list[list[Statement]] = []

    def sqlite_empty(path: Path) -> bool:
        return (
            path.is_file()
            and path.stat().st_size == 0
            and not any(path.with_name(path.name + x).exists() for x in ("-wal", "-journal"))
        )

    def upgrade(engine: sa.Engine) -> None:
        backend = engine.url.get_backend_name()
        path = _sqlite_file(engine)
        if path is not None and sqlite_empty(path):
            if not migrated:
                migrated.append(_migrate_once(tmp_path_factory.mktemp("migrated")))
            with path.open("r+b") as f:  # the same file: its inode and mode stay
                f.write(migrated[0])
            return
        if backend == "postgresql":
            with engine.begin() as conn:
                if _pg_schema_is_empty(conn):
                    if not pg_statements:
                        pg_statements.append(
                            _pg_migration(engine.url.render_as_string(hide_password=False))
                        )
                    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                    for statement, params in pg_statements[0]:
                        cursor.execute(statement, params)
                    cursor.close()
                    return
        _real_upgrade(engine)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpmail.store, "upgrade", upgrade)
        yield


@pytest.fixture(scope="session", autouse=True)
def _one_command_tree() -> Iterator[None]:
    """``CliRunner.invoke`` reuses the click command it built for an app."""
    build = typer.main.get_command
    built: dict[int, tuple[typer.Typer, object]] = {}

    def get_command(typer_app: typer.Typer) -> object:
        if id(typer_app) not in built:
            built[id(typer_app)] = (typer_app, build(typer_app))
        return built[id(typer_app)][1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(typer.testing, "_get_command", get_command)
        yield


def _frames() -> int:
    frame, n = sys._getframe(1), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1  # type: ignore[assignment]
    return n


DEEP = 700
"""Frames beyond which no garbage collection may start: Python stops at 1,000, and a
collection's finalizers need stack of their own, or Python prints "Exception ignored in"
over cpmail's one-line error."""


@pytest.fixture
def collection_depths() -> Iterator[list[int]]:
    """The frame depth of every garbage collection that starts during the test, with
    collections made frequent (a threshold of 10)."""
    depths: list[int] = []

    def collecting(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            depths.append(_frames())

    threshold = gc.get_threshold()
    gc.callbacks.append(collecting)
    gc.set_threshold(10)
    try:
        yield depths
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(collecting)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh home folder; CPMAIL_* variables from the caller's shell are cleared."""
    for k in list(os.environ):
        if k.startswith("CPMAIL_"):
            monkeypatch.delenv(k)
    h = tmp_path / "home"
    monkeypatch.setenv("CPMAIL_HOME", str(h))
    yield h


@pytest.fixture
def cli(home: Path) -> Cli:
    return Cli(home)


@pytest.fixture
def initialised(cli: Cli) -> Cli:
    """A home after `cpmail init`."""
    r = cli("init")
    assert r.exit_code == 0, r.output
    return cli
