"""A database an older cpmail made keeps every row when `cpmail db upgrade` brings it up to date;
one a newer cpmail wrote is left as it is."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command

import cpmail.store
from cpmail.outbox import claim
from cpmail.store import utcnow
from cpmail.store.schema import message_bodies, messages, metadata
from tests.conftest import Cli

OLD_INDEX = "ix_messages_status_next_attempt_at"
NEW_INDEX = "ix_messages_deferred_next_attempt_at"


def _initialised(cli: Cli, home: Path, backend: str) -> sa.Engine:
    """A home made by this cpmail on ``backend`` (SQLite when empty), and its database."""
    if backend:
        assert cli("config", "set", "database.url", backend).exit_code == 0
    assert cli("init").exit_code == 0
    return cpmail.store.make_engine(backend or f"sqlite:///{home / 'cpmail.db'}")


def _migrate(engine: sa.Engine, how: str, revision: str) -> None:
    with engine.begin() as conn:
        getattr(command, how)(cpmail.store._alembic_config(engine, conn), revision)


def _indexes(engine: sa.Engine) -> dict[str, str]:
    """The messages table's indexes: name -> how the database describes it."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            q = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'"
        else:
            q = (
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE tablename = 'messages' AND schemaname = current_schema()"
            )
        return {name: str(sql) for name, sql in conn.execute(sa.text(q))}


# Columns later revisions added: not there in the database an older cpmail made.
LATER = {"failed_at", "staff_ids"}


def _old_messages(*columns: str) -> Any:
    """The messages table as a revision before 0009 had it (with the text in ``raw``)."""
    return sa.table("messages", *(sa.column(c) for c in columns))


def _rows(engine: sa.Engine) -> list[Any]:
    """Every message, in the columns an older database has too."""
    old = [c for c in messages.c if c.name not in LATER]
    with engine.connect() as conn:
        return list(conn.execute(sa.select(*old).order_by(messages.c.id)))


def test_upgrading_from_0006_keeps_the_outbox_and_indexes_deferred_mail_only(
    backend: str, cli: Cli, home: Path
) -> None:
    engine = _initialised(cli, home, backend)
    try:
        _migrate(engine, "downgrade", "0006")  # as the cpmail before made it
        assert cpmail.store.current_revision(engine) == "0006"
        now = utcnow()
        common = {
            "event": "task-due-today",
            "from_addr": "ops@agency.test",
            "to_addrs": "ann@agency.test",
            "pending_rcpts": "ann@agency.test",
            "subject": "Due today",
            "raw": b"Subject: Due today\r\n\r\nHello\r\n",
            "created_at": now,
            "queued_at": now,
            "next_attempt_at": None,
            "attempts": 0,
            "sent_at": None,
        }  # (one set of keys for every row: an insert of many takes the first row's)
        with engine.begin() as conn:
            conn.execute(
                _old_messages(*common, "message_id", "status").insert(),
                [
                    {**common, "message_id": "<1@x>", "status": "queued"},
                    {
                        **common,
                        "message_id": "<2@x>",
                        "status": "deferred",
                        "next_attempt_at": now - dt.timedelta(minutes=5),
                        "attempts": 1,
                    },
                    {
                        **common,
                        "message_id": "<3@x>",
                        "status": "deferred",
                        "next_attempt_at": now + dt.timedelta(days=1),
                        "attempts": 1,
                    },
                    {**common, "message_id": "<4@x>", "status": "sent", "sent_at": now},
                ],
            )
        before = _rows(engine)
        assert OLD_INDEX in _indexes(engine) and NEW_INDEX not in _indexes(engine)

        r = cli("db", "upgrade")
        assert r.exit_code == 0, r.output
        assert cpmail.store.SCHEMA_REVISION in r.stdout

        assert cpmail.store.current_revision(engine) == cpmail.store.SCHEMA_REVISION
        assert _rows(engine) == before  # every row as it was
        indexes = _indexes(engine)
        assert OLD_INDEX not in indexes
        # only deferred messages are in it: sending one moves no entry of it
        assert "status = 'deferred'" in indexes[NEW_INDEX].replace("::text", "").replace(
            "(status", "status"
        )
        # what is due is claimed as before: the queued one and the deferred one now due
        claimed = claim(engine, run_id="upgrade-test", limit=10)
        assert [e.id for e in claimed] == [before[0].id, before[1].id], before
        assert [e.raw for e in claimed] == [common["raw"]] * 2

        _migrate(engine, "downgrade", "0006")  # and back, for whoever must
        assert OLD_INDEX in _indexes(engine) and NEW_INDEX not in _indexes(engine)
    finally:
        engine.dispose()


def test_upgrading_from_0007_dates_failed_mail_by_when_it_was_queued(
    backend: str, cli: Cli, home: Path
) -> None:
    """Mail that failed before the database recorded when has its queue time instead;
    nothing else gets a time of failure, and every row is as it was."""
    engine = _initialised(cli, home, backend)
    try:
        _migrate(engine, "downgrade", "0007")
        queued = dt.datetime(2026, 11, 2, 8, 30)
        common = {
            "event": "task-due-today",
            "from_addr": "ops@agency.test",
            "to_addrs": "ann@agency.test",
            "pending_rcpts": "",
            "subject": "Due today",
            "created_at": queued,
            "queued_at": queued,
            "attempts": 1,
        }
        old = messages.c
        with engine.begin() as conn:
            for mid, status in (("<1@x>", "failed"), ("<2@x>", "sent"), ("<3@x>", "deferred")):
                conn.execute(
                    sa.text(
                        "INSERT INTO messages (event, from_addr, to_addrs, pending_rcpts, "
                        "subject, message_id, status, attempts, created_at, queued_at) "
                        "VALUES (:event, :from_addr, :to_addrs, :pending_rcpts, :subject, "
                        ":message_id, :status, :attempts, :created_at, :queued_at)"
                    ),
                    {**common, "message_id": mid, "status": status},
                )
        before = _rows(engine)
        assert cli("db", "upgrade").exit_code == 0
        assert _rows(engine) == before
        with engine.connect() as conn:
            got = {
                r.message_id: r.failed_at
                for r in conn.execute(sa.select(old.message_id, old.failed_at))
            }
        assert got == {"<1@x>": queued, "<2@x>": None, "<3@x>": None}
    finally:
        engine.dispose()


def _everything(engine: sa.Engine) -> dict[str, list[Any]]:
    """Every row of every table, the revision's too."""
    with engine.connect() as conn:
        tables = {t.name: list(conn.execute(sa.select(t))) for t in metadata.sorted_tables}
        tables["alembic_version"] = list(conn.execute(sa.text("SELECT * FROM alembic_version")))
    return tables


def test_a_database_a_newer_cpmail_wrote_is_named_as_such_and_left_as_it_is(
    backend: str, cli: Cli, home: Path
) -> None:
    """Another machine upgraded cpmail first: every command says to upgrade cpmail here
    (exit 2), none says to run `cpmail db upgrade`, none fails inside, nothing changes."""
    if backend:
        assert cli("config", "set", "database.url", backend).exit_code == 0
    assert cli("init").exit_code == 0
    assert cli("staff", "add", "AB", "--name", "Ann B", "--work-email", "ab@x.test").exit_code == 0
    assert cli("config", "set", "agency.name", "Acme").exit_code == 0  # (not the defaults)
    engine = cpmail.store.make_engine(backend or f"sqlite:///{home / 'cpmail.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
        before = _everything(engine)
        for command in (("check",), ("db", "upgrade"), ("init",), ("staff", "list")):
            r = cli(*command)
            assert r.exit_code == 2, (command, r.output)
            said = " ".join(r.stderr.split())
            assert "schema revision 0099, which a newer cpmail wrote" in said, (command, said)
            assert said.endswith("upgrade cpmail on this machine."), (command, said)
            assert "db upgrade" not in said and r.stderr.count("\n") == 1, (command, said)
            assert _everything(engine) == before, command
        if not backend:  # (the defaults `init --force` writes name the home's database)
            settings = (home / "cpmail.toml").read_text(encoding="utf-8")
            r = cli("init", "--force")  # nor are the settings replaced before it is said
            assert r.exit_code == 2 and "newer cpmail" in r.stderr, r.output
            assert (home / "cpmail.toml").read_text(encoding="utf-8") == settings
            assert not list(home.glob("cpmail.toml.bak*"))
        r = cli("status")  # says the same, as a problem of the database
        assert r.exit_code == 3 and "which a newer cpmail wrote" in r.stdout, r.output
        assert "db upgrade" not in r.stdout, r.output
    finally:
        engine.dispose()


def test_upgrading_from_0008_moves_each_kept_text_to_a_table_of_its_own(
    backend: str, cli: Cli, home: Path
) -> None:
    """The texts of mail that may still go are kept (and go, byte for byte); mail sent
    before had none, and gets none; going back puts each text in its row again."""
    engine = _initialised(cli, home, backend)
    try:
        _migrate(engine, "downgrade", "0008")
        now = utcnow()
        rows = {
            "<q@x>": ("queued", b"Subject: a\r\n\r\nqueued\r\n"),
            "<f@x>": ("failed", b"Subject: b\r\n\r\nfailed \xc3\xa9\r\n"),
            "<s@x>": ("sent", None),
        }
        values = {
            "event": "task-due-today",
            "from_addr": "ops@agency.test",
            "to_addrs": "ann@agency.test",
            "pending_rcpts": "ann@agency.test",
            "subject": "Due",
            "created_at": now,
            "queued_at": now,
            "attempts": 0,
        }
        old = _old_messages(*values, "message_id", "status", "raw")
        with engine.begin() as conn:
            for mid, (status, raw) in rows.items():
                conn.execute(old.insert().values(**values, message_id=mid, status=status, raw=raw))
        before = _rows(engine)
        assert cli("db", "upgrade").exit_code == 0
        assert _rows(engine) == before
        m, b = messages.c, message_bodies.c
        with engine.connect() as conn:
            q = sa.select(m.message_id, b.raw).where(b.message_id == m.id)
            texts = {r.message_id: r.raw for r in conn.execute(q)}
            columns = [c["name"] for c in sa.inspect(conn).get_columns("messages")]
        assert texts == {"<q@x>": rows["<q@x>"][1], "<f@x>": rows["<f@x>"][1]}
        assert "raw" not in columns
        [queued] = claim(engine, run_id="upgrade-test", limit=10)
        assert queued.raw == rows["<q@x>"][1]

        _migrate(engine, "downgrade", "0008")
        with engine.connect() as conn:
            back = conn.execute(sa.text("SELECT message_id, raw FROM messages"))
            got = {r.message_id: None if r.raw is None else bytes(r.raw) for r in back}
        assert got == {k: raw for k, (_, raw) in rows.items()}
    finally:
        engine.dispose()
