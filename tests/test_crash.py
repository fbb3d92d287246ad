"""A sending process killed mid-batch loses nothing: the next run delivers the rest."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from cpmail.compose import Draft, Mailbox, build_message
from cpmail.outbox import new_run_id, queue
from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store.schema import messages, runs
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp

N = 400


def test_sigkill_mid_batch_loses_nothing(cli: Cli, home: Path, smtp_server: SMTPTestServer) -> None:
    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0  # no missing time
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    run_id = new_run_id()
    with engine.begin() as conn:
        for i in range(N):
            msg = build_message(
                sender=Mailbox("jd@agency.test"),
                to=[Mailbox(f"person{i}@agency.test")],
                subject=f"Message {i}",
                text="x" * 2000,
                event="message",
                key=f"crash-test:{i}",
            )
            draft = Draft.from_message(
                msg,
                event="message",
                key=f"crash-test:{i}",
                account="JD",
                envelope_from="jd@agency.test",
            )
            assert queue(conn, draft, run_id=run_id) is not None
        ids = {r.message_id for r in conn.execute(sa.select(messages.c.message_id))}
    assert len(ids) == N

    env = {**os.environ, "CPMAIL_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpmail", "check", "--date", "2026-11-24"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(smtp_server.messages) < N // 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(smtp_server.messages)
    assert 0 < killed_at < N, "the process must die in the middle of the batch"

    with engine.connect() as conn:
        by_status: dict[str, int] = {
            s: n
            for s, n in conn.execute(
                sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status)
            ).all()
        }
    in_flight = by_status.get("sending", 0)
    assert by_status.get("sent", 0) <= killed_at
    # A dead run's claims are taken up again once its heartbeat is older than
    # outbox.stale_claim_minutes (15 by default): let them age by that much.
    _age(engine, dt.timedelta(minutes=16))
    r = cli("check", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output

    delivered = [
        message_from_bytes(m.data, policy=policy.default)["Message-ID"]
        for m in smtp_server.messages
    ]
    assert set(delivered) == ids, "every queued message was delivered"
    twice = len(delivered) - len(set(delivered))
    # Only a message accepted in the instant before the kill, not yet recorded, can go twice.
    assert twice <= in_flight
    assert twice <= 3  # one per open connection at most
    with engine.connect() as conn:
        statuses = {s for (s,) in conn.execute(sa.select(messages.c.status).distinct())}
    assert statuses == {"sent"}


def _age(engine: sa.Engine, by: dt.timedelta) -> None:
    """Claims and runs' heartbeats ``by`` older: a dead run's claims are then taken up."""
    with engine.begin() as conn:  # (in Python: SQLite has no arithmetic on its date text)
        for i, at in conn.execute(
            sa.select(messages.c.id, messages.c.claimed_at).where(messages.c.status == "sending")
        ).all():
            conn.execute(messages.update().where(messages.c.id == i).values(claimed_at=at - by))
        for i, beat, expires in conn.execute(
            sa.select(runs.c.id, runs.c.heartbeat_at, runs.c.expires_at)
        ).all():
            conn.execute(
                runs.update()
                .where(runs.c.id == i)
                .values(heartbeat_at=beat - by, expires_at=expires and expires - by)
            )


def test_a_test_message_its_command_left_behind_is_never_sent_by_another_run(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """A test message is sent by its own command at once, or never: killed while the server
    had it, or stopped after queueing it, the next check fails it and sends nothing."""
    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0  # no missing time
    engine = connect(Settings.load(home).db_url, where="test")
    # Stopped after queueing it, before sending (a SIGTERM at that moment gives it back
    # to the queue): queued, by a run that has ended.
    msg = build_message(
        sender=Mailbox("jd@agency.test"),
        to=[Mailbox("jd@agency.test")],
        subject="Left behind",
        text="x",
        event="test",
        key="left",
    )
    draft = Draft.from_message(
        msg, event="test", key=None, account="JD", envelope_from="jd@agency.test"
    )
    with engine.begin() as conn:
        left = queue(conn, draft, run_id="ended-run")
    # Killed while the server held the message text, before its answer.
    smtp_server.accept_delay = 2.0
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpmail", "staff", "test", "JD"],
        env={**os.environ, "CPMAIL_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(sa.select(messages.c.id).where(messages.c.status == "sending")).first():
                break
        time.sleep(0.02)
    time.sleep(0.5)  # (the text is on its way; the answer comes 2 s after it)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.5)
    smtp_server.accept_delay = 0

    def tests_sent() -> int:
        # (the manager is told of the failures, naming them: not a test message)
        return sum(m.rcpt_tos == ("jd@agency.test",) for m in smtp_server.messages)

    before = tests_sent()
    assert before <= 1
    _age(engine, dt.timedelta(minutes=16))
    said = cli("status").stdout  # nor is it said to wait, or to be taken up again
    assert "taken up again" not in said and "held by a run" not in said, said
    r = cli("check", "--date", "2026-11-24")
    assert tests_sent() == before, "no other run sends a test message"
    # its command was to say what became of it: not the check's to report, nor the manager's
    assert r.exit_code == 0, r.output
    assert [m.rcpt_tos for m in smtp_server.messages if m.rcpt_tos != ("jd@agency.test",)] == []
    rows = {x["id"]: x for x in json.loads(cli("log", "--json").stdout) if x["event"] == "test"}
    assert len(rows) == 2 and left in rows
    assert {x["status"] for x in rows.values()} == {"failed"}
    assert all("the command that sent it stopped first" in x["last_error"] for x in rows.values())
    r = cli("outbox", "retry", "--all")  # nor can it be retried by hand
    assert r.exit_code == 0 and tests_sent() == before, r.output


@pytest.mark.serial
def test_a_stop_signal_during_a_big_import_is_said_as_a_stop(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    """Ctrl-C while rows are being written: exit 130 and "stopped", never an internal error,
    and the database as it was, at whatever moment the signal comes."""
    assert (
        initialised("staff", "add", "KM", "--name", "Kim", "--work-email", "km@a.test").exit_code
        == 0
    )
    path = tmp_path / "time_entries.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("id,staff_id,work_date,hours\n")
        f.writelines(f"T{i},KM,2026-11-{1 + i % 27:02d},{i % 8 + 0.25}\n" for i in range(200_000))
    db = home / "cpmail.db"
    env = {**os.environ, "CPMAIL_HOME": str(home)}
    for delay in (0.0, 0.2, 0.4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cpmail", "data", "import", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Wait until rows are being written (the write-ahead log grows), then a little more.
        wal = db.with_name("cpmail.db-wal")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (wal.exists() and wal.stat().st_size > 1 << 20):
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (delay, err.decode())
        assert b"stopped by SIGINT" in err and b"internal error" not in err, err
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM time_entries").fetchone() == (0,)
            # an empty log again: the next round waits for its own writes, not these
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert not wal.exists() or wal.stat().st_size == 0
