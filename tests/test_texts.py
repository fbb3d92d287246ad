"""A message's text is kept exactly while the message may still go: queued,
claimed, deferred or failed (for `outbox retry`). Once it is sent, dropped, or
a test message that failed, the text goes, whichever command or run ended it,
and whatever a run killed before it could remove them left behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store.schema import message_bodies, messages
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_faults import prepare, queue_messages, received


def _texts(home: Path) -> dict[str, tuple[str, bool]]:
    """Message-ID -> (status, whether its text is kept)."""
    engine = connect(Settings.load(home).db_url, where="test")
    m = messages.c
    kept = sa.exists().where(message_bodies.c.message_id == m.id)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(m.message_id, m.status, kept)).all()
            orphans = conn.execute(
                sa.select(sa.func.count())
                .select_from(message_bodies)
                .where(~sa.exists().where(m.id == message_bodies.c.message_id))
            ).scalar_one()
    finally:
        engine.dispose()
    assert orphans == 0  # no text of a message that is not there
    return {r[0]: (r[1], bool(r[2])) for r in rows}


def _ids(home: Path) -> dict[str, int]:
    engine = connect(Settings.load(home).db_url, where="test")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(messages.c.message_id, messages.c.id))
            return {r.message_id: r.id for r in rows}
    finally:
        engine.dispose()


def test_each_text_is_kept_while_its_message_may_go_and_only_then(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, backend: str
) -> None:
    prepare(cli, smtp_server, db=backend)
    mids = sorted(queue_messages(home, 4))
    assert all(kept for _, kept in _texts(home).values())  # queued: all kept

    smtp_server.fail_rcpt = {"person1@agency.test": "451 4.2.0 try later"}
    smtp_server.fail_rcpt["person2@agency.test"] = "550 5.1.1 no such user"
    r = cli("check")
    assert r.exit_code == 1, r.output
    texts = _texts(home)  # (the manager's summary of what failed is one more, sent)
    by_status: dict[str, list[str]] = {}
    for mid in mids:
        by_status.setdefault(texts[mid][0], []).append(mid)
    assert len(by_status["sent"]) == 2 and len(by_status["deferred"]) == 1, texts
    assert len(by_status["failed"]) == 1, texts
    for mid, (status, kept) in texts.items():
        assert kept == (status in ("deferred", "failed")), (mid, status, kept)

    # the failed one goes once the server takes it: its text goes with it
    smtp_server.fail_rcpt = {"person1@agency.test": "451 4.2.0 try later"}
    failed = by_status["failed"][0]
    assert cli("outbox", "retry", str(_ids(home)[failed])).exit_code == 0
    texts = _texts(home)
    assert texts[failed] == ("sent", False), texts
    # the deferred one is dropped: nothing can send it later, its text goes
    deferred = by_status["deferred"][0]
    r = cli("outbox", "drop", str(_ids(home)[deferred]))
    assert r.exit_code == 0, r.output
    assert _texts(home)[deferred] == ("dropped", False)
    assert cli("outbox", "retry", str(_ids(home)[deferred])).exit_code == 2
    assert sum(received(smtp_server)[mid] for mid in mids) == 3


def test_the_texts_a_killed_run_left_of_sent_mail_go_with_the_next_run(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, backend: str
) -> None:
    """A run killed after recording messages sent, before it removed their texts: the
    next run that sends anything removes them, and sends none of them again."""
    prepare(cli, smtp_server, db=backend)
    mids = sorted(queue_messages(home, 3))
    engine = connect(Settings.load(home).db_url, where="test")
    try:
        with engine.begin() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.message_id.in_(mids[:2]))
                .values(status="sent", pending_rcpts="", attempts=1)
            )
    finally:
        engine.dispose()
    assert [kept for _, kept in _texts(home).values()] == [True] * 3
    r = cli("check")
    assert r.exit_code == 0, r.output
    assert _texts(home) == {mid: ("sent", False) for mid in mids}
    assert sum(received(smtp_server).values()) == 1


def test_the_text_of_sent_mail_is_not_left_in_the_database_file(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Removed means overwritten: the database file keeps nothing of a sent message's
    text in its free pages (some SQLite builds leave deleted data there)."""
    prepare(cli, smtp_server)
    queue_messages(home, 30)
    before = (home / "cpmail.db").read_bytes() + _wal(home)
    run = b"x" * 70  # (each message's text is 1,500 x's, in lines of 76)
    assert before.count(run) >= 30 * 20
    assert cli("check").exit_code == 0
    db = sqlite3.connect(home / "cpmail.db")  # everything in the database file itself
    try:
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        db.close()
    after = (home / "cpmail.db").read_bytes() + _wal(home)
    assert after.count(run) == 0, after.count(run)


def _wal(home: Path) -> bytes:
    wal = home / "cpmail.db-wal"
    return wal.read_bytes() if wal.exists() else b""


def test_a_claim_removes_the_texts_of_what_its_pass_sent_since_the_last_one(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """A long pass (a paced account takes hours) does not keep what it sent until it
    ends: each claim takes the texts of the messages recorded sent since the last."""
    from cpmail.outbox import claim

    prepare(cli, smtp_server)
    mids = sorted(queue_messages(home, 4))
    ids = _ids(home)
    engine = connect(Settings.load(home).db_url, where="test")
    try:
        first = [ids[m] for m in mids[:2]]
        with engine.begin() as conn:  # as the recorder leaves them: sent, text kept
            conn.execute(messages.update().where(messages.c.id.in_(first)).values(status="sent"))
        taken = claim(engine, run_id="r-forget", forget=first)
    finally:
        engine.dispose()
    assert sorted(e.id for e in taken) == sorted(ids[m] for m in mids[2:])
    assert all(e.raw for e in taken)
    texts = _texts(home)
    assert [texts[m][1] for m in mids] == [False, False, True, True], texts
