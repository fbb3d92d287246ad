"""Every message once under faults: long runs, signals, stalled servers, full disks, lost databases.

Each test queues messages, runs `cpmail check` as a real process against a
real aiosmtpd server that misbehaves on demand (tests/smtpserver.py), and
counts the Message-IDs the server received: none lost, none twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cpmail.compose import Draft, Mailbox, build_message
from cpmail.outbox import new_run_id, queue
from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store.schema import messages
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp

DATE = "2026-11-24"


def prepare(cli: Cli, server: SMTPTestServer, *, db: str = "", **settings: str) -> None:
    setup_smtp(cli, server, db=db, **settings)
    # No agency data and no planned hours: only the queued messages go out.
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0


def queue_messages(home: Path, n: int, *, big_every: int = 0) -> set[str]:
    """Queue ``n`` messages from JD; return their Message-IDs. With ``big_every``, each
    message of that many is 60 kB instead of 1.5 kB."""
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    run_id = new_run_id()
    with engine.begin() as conn:
        for i in range(n):
            key = f"fault:{run_id}:{i}"
            msg = build_message(
                sender=Mailbox("jd@agency.test"),
                to=[Mailbox(f"person{i}@agency.test")],
                subject=f"Message {i}",
                text="x" * (60_000 if big_every and i % big_every == 1 else 1500),
                event="message",
                key=key,
            )
            draft = Draft.from_message(
                msg, event="message", key=key, account="JD", envelope_from="jd@agency.test"
            )
            assert queue(conn, draft, run_id=run_id) is not None
        ids = {r.message_id for r in conn.execute(sa.select(messages.c.message_id))}
    engine.dispose()
    return ids


def received(server: SMTPTestServer) -> Counter[str]:
    return Counter(
        str(message_from_bytes(m.data, policy=policy.default)["Message-ID"])
        for m in server.messages
    )


def statuses(home: Path) -> Counter[str]:
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status)
        ).all()
    engine.dispose()
    return Counter({s: n for s, n in rows})


def spawn(home: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cpmail", *(args or ("check", "--date", DATE))],
        env={**os.environ, "CPMAIL_HOME": str(home), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: object, timeout: float = 30.0) -> float:
    """Poll ``condition()`` until true; return when it became true (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.005)
    raise AssertionError("timed out waiting")


def assert_each_once(server: SMTPTestServer, ids: set[str]) -> None:
    got = received(server)
    assert set(got) == ids, f"lost: {len(ids - set(got))}"
    twice = {k: n for k, n in got.items() if n > 1}
    assert not twice, f"{len(twice)} sent more than once"


# ------------------------------------------------------------------ long runs


@pytest.mark.serial
def test_a_run_longer_than_the_stale_limit_keeps_its_claims(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    prepare(cli, smtp_server, **{"outbox.stale_claim_minutes": "0.05"})  # 3 s
    ids = queue_messages(home, 120)
    smtp_server.accept_delay = 0.1  # 120 messages over 3 connections: about 4 s
    first = spawn(home)
    wait_for(lambda: len(smtp_server.messages) >= 3)
    time.sleep(3.5)  # past the stale limit: only a dead run's claims may be taken
    second = spawn(home)
    _, err2 = second.communicate(timeout=60)
    _, err1 = first.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert_each_once(smtp_server, ids)
    assert statuses(home) == Counter({"sent": len(ids)})


@pytest.mark.serial
def test_a_live_run_keeps_its_claims_when_the_clock_steps_forward(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """The clock jumps 20 minutes ahead (NTP, a resumed machine) while a check sends: the
    next check must not take the live run's claims for abandoned ones and send them too."""
    import datetime as dt

    from cpmail.store.schema import messages, runs

    prepare(cli, smtp_server)  # the default limit: 15 minutes
    ids = queue_messages(home, 120)
    smtp_server.accept_delay = 0.1
    first = spawn(home)
    wait_for(lambda: len(smtp_server.messages) >= 3)
    jump = dt.timedelta(minutes=20)
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:  # what the first run wrote, as the jumped clock sees it
        for r in conn.execute(sa.select(runs).where(runs.c.ended_at.is_(None))).all():
            conn.execute(
                runs.update()
                .where(runs.c.id == r.id)
                .values(heartbeat_at=r.heartbeat_at - jump, expires_at=r.expires_at - jump)
            )
        for m in conn.execute(sa.select(messages.c.id, messages.c.claimed_at)).all():
            if m.claimed_at is not None:
                conn.execute(
                    messages.update()
                    .where(messages.c.id == m.id, messages.c.claimed_at.is_not(None))
                    .values(claimed_at=m.claimed_at - jump)
                )
    engine.dispose()
    second = spawn(home)
    _, err2 = second.communicate(timeout=60)
    _, err1 = first.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert_each_once(smtp_server, ids)
    assert statuses(home) == Counter({"sent": len(ids)})


# ------------------------------------------------------------------ signals


@pytest.mark.serial
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_records_what_was_sent_and_gives_back_the_rest(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, sig: signal.Signals
) -> None:
    prepare(cli, smtp_server)
    ids = queue_messages(home, 150)
    # (slow enough that each trial's signal, up to 0.3 s after its first message, comes
    # while mail is still being sent)
    smtp_server.accept_delay = 0.02
    rng = random.Random(sig)
    for _trial in range(2):
        if len(set(received(smtp_server))) == len(ids):
            break
        before = len(smtp_server.messages)
        proc = spawn(home, "check", "--date", DATE, "--json")
        wait_for(lambda b=before: len(smtp_server.messages) > b)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, err
        # what the run says of itself is what happened: its exit code, and mail it never
        # offered to the server is not "deferred"
        doc = json.loads(out)
        assert doc["exit_code"] == 128 + sig
        assert doc["totals"]["deferred"] == statuses(home)["deferred"] == 0, doc["totals"]
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and f"stopped by {sig.name}" in lines[0], err
        # nothing stays claimed, and every message the server has is recorded as sent
        s = statuses(home)
        assert s["sending"] == 0
        assert s["sent"] == len(set(received(smtp_server)))
    r = cli("check", "--date", DATE)
    assert r.exit_code == 0, r.output
    assert_each_once(smtp_server, ids)


@pytest.mark.serial
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_waits_for_the_answers_to_messages_in_the_servers_hands(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, sig: signal.Signals
) -> None:
    """Stop, then stop again at once: a message whose answer was awaited went back to the
    queue and was sent again by the next run (one per connection)."""
    prepare(cli, smtp_server, **{"outbox.stale_claim_minutes": "0.05"})
    ids = queue_messages(home, 60)
    smtp_server.accept_delay = 0.3  # each message waits 0.3 s for its answer
    proc = spawn(home, "check", "--date", DATE)
    wait_for(lambda: len(smtp_server.messages) >= 6)
    time.sleep(0.1)  # each connection has handed over its next message
    proc.send_signal(sig)
    time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    s = statuses(home)
    assert s["sending"] == 0 and s["sent"] == len(smtp_server.messages), s
    smtp_server.accept_delay = 0
    time.sleep(3.5)  # past the stale limit, should anything have stayed claimed
    r = cli("check", "--date", DATE)
    assert r.exit_code == 0, r.output
    assert_each_once(smtp_server, ids)


@pytest.mark.serial
def test_a_second_signal_waits_for_an_outcome_to_be_written_while_the_database_is_busy(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """The answer came, and its outcome waited for the database (another run writing): a
    second signal dropped it, the message stayed claimed, and a later run sent it again."""
    import sqlite3

    prepare(cli, smtp_server, **{"outbox.stale_claim_minutes": "0.05"})
    assert cli("config", "set", "mail.smtp.connections", "1").exit_code == 0
    ids = queue_messages(home, 10)
    smtp_server.accept_delay = 1.0  # each message waits 1 s for its answer
    proc = spawn(home, "check", "--date", DATE)
    wait_for(lambda: len(smtp_server.messages) >= 2)
    time.sleep(0.2)  # the third is in the server's hands
    other = sqlite3.connect(home / "cpmail.db", timeout=10, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the database
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: len(smtp_server.messages) >= 3)  # answered: its outcome waits to be written
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(2)
    other.execute("ROLLBACK")
    other.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    s = statuses(home)
    assert s["sending"] == 0 and s["sent"] == len(smtp_server.messages) == 3, s
    smtp_server.accept_delay = 0
    time.sleep(3.5)  # past the stale limit, should anything have stayed claimed
    assert cli("check", "--date", DATE).exit_code == 0
    assert_each_once(smtp_server, ids)


@pytest.mark.parametrize(
    "args", [("message", "manager", "two"), ("outbox", "retry", "--all")], ids=["message", "retry"]
)
def test_a_stop_signal_ends_any_sending_command_without_saying_sent(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, args: tuple[str, ...]
) -> None:
    """Stopped while it waits for the account's pace: not "Sent", exit 143, nothing lost."""
    prepare(cli, smtp_server, **{"mail.pace.per_minute": "1"})
    assert cli("message", "manager", "one").exit_code == 0  # the minute's one message
    if args[0] == "outbox":
        queue_messages(home, 3)
        with connect(Settings.load(home).db_url, where="test").begin() as conn:
            conn.execute(sa.text("UPDATE messages SET status = 'deferred' WHERE status = 'queued'"))
    proc = spawn(home, *args)
    wait_for(lambda: statuses(home)["sending"] >= 1)  # claimed: waiting for its slot
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    assert "Sent '" not in out and "stopped by SIGTERM" in err, (out, err)
    assert len(smtp_server.messages) == 1
    s = statuses(home)
    assert s["sent"] == 1 and s["sending"] == 0 and s["queued"] + s["deferred"] >= 1, s


@pytest.mark.serial
def test_sigkill_then_check_reports_the_mail_held_by_the_dead_run(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    prepare(cli, smtp_server, **{"outbox.stale_claim_minutes": "0.05"})
    ids = queue_messages(home, 150)
    smtp_server.accept_delay = 0.02
    proc = spawn(home)
    wait_for(lambda: len(smtp_server.messages) >= 10)
    proc.kill()
    proc.wait()
    if statuses(home)["sending"]:
        # at once, not after missed heartbeats: the run's process on this machine is gone
        r = cli("status", "--json")
        assert r.exit_code != 0 and json.loads(r.stdout)["outbox"]["sending_now"] == 0, r.stdout
        r = cli("check", "--date", DATE, "--dry-run")
        assert r.exit_code == 1 and "held by a run that stopped" in r.stderr, r.output
    time.sleep(0.7)  # three missed heartbeats (every 0.6 s at a 3 s limit) would be 1.8 s
    time.sleep(1.5)
    r = cli("check", "--date", DATE)
    if statuses(home)["sending"]:
        # the dead run's claims are not taken before the stale limit, but they are reported
        assert r.exit_code == 1, r.output
        assert "held by a run that stopped" in r.stderr
    time.sleep(3.2)
    r = cli("check", "--date", DATE)
    assert r.exit_code == 0, r.output
    got = received(smtp_server)
    assert set(got) == ids
    # a connection sends the next message only once the last is on record: at most one
    # accepted, unrecorded message per open connection (3) can go twice
    assert sum(got.values()) - len(got) <= 3


# ------------------------------------------------------------------ servers that stall


@pytest.mark.serial
def test_a_server_that_stops_answering_ends_the_run_early(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    prepare(cli, smtp_server, **{"mail.smtp.timeout": "1"})
    ids = queue_messages(home, 30)
    smtp_server.stall_after = 5
    started = time.monotonic()
    proc = spawn(home)
    accepted_at = wait_for(lambda: len(smtp_server.messages) >= 5)
    recorded_at = wait_for(lambda: statuses(home)["sent"] >= 5, timeout=10)
    assert proc.poll() is None, "the run still waits on the stalled server"
    # outcomes are written by a timer, not when the next answer comes
    assert recorded_at - accepted_at < 1.0
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, out + err
    assert "stopped answering" in err
    assert elapsed < 12, f"took {elapsed:.1f} s: every message waited out its timeout"
    s = statuses(home)
    assert s["sent"] == 5 and s["sending"] == 0
    smtp_server.stall_after = None
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert_each_once(smtp_server, ids)


@pytest.mark.serial
@pytest.mark.parametrize("apart", [0.0, 0.4])
def test_a_server_judged_silent_is_handed_no_more_messages(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, apart: float
) -> None:
    """Each text handed to a server that then says nothing may be sent twice: at most one
    per connection goes before the run judges it silent. Also when the connections start
    apart, and the first to wait out its timeout could reconnect and hand over another
    before the others have waited out theirs."""
    prepare(cli, smtp_server, **{"mail.smtp.timeout": "1"})
    ids = queue_messages(home, 30)
    smtp_server.greeting_delays = [0.0, apart, 2 * apart]
    smtp_server.stall_after = 0  # takes every text, answers none; counts down per text
    r = cli("check", "--date", DATE)
    assert r.exit_code == 3 and "stopped answering" in r.stderr, r.output
    handed_over = -smtp_server.stall_after
    assert 1 <= handed_over <= 3, handed_over  # mail.smtp.connections
    smtp_server.stall_after = None
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert_each_once(smtp_server, ids)


def test_mail_refused_before_it_is_sent_is_no_answer_from_a_silent_server(
    cli: Cli, home: Path, smtp_server_factory: Any
) -> None:
    """Messages too big for the server's SIZE fail without a word to it: between them, a
    server that answers nothing is still judged silent, handed one text at a time."""
    server = smtp_server_factory(size_limit=20_000)
    prepare(cli, server, **{"mail.smtp.timeout": "1", "mail.smtp.connections": "1"})
    queue_messages(home, 24, big_every=2)
    server.stall_after = 0  # takes every text, answers none; counts down per text
    r = cli("check", "--date", DATE)
    assert r.exit_code == 3 and "stopped answering" in r.stderr, r.output
    assert 1 <= -server.stall_after <= 3, -server.stall_after


@pytest.mark.parametrize("answer", ["354 go ahead", "220 ready"])
def test_an_answer_out_of_step_is_no_refusal(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, answer: str
) -> None:
    """A 354 (or another answer that is no refusal) to RCPT means the answers and commands
    are out of step, not that the recipient was refused for good: deferred, then sent."""
    prepare(cli, smtp_server)
    queue_messages(home, 1)
    smtp_server.fail_rcpt = {"person0@agency.test": answer}
    r = cli("check", "--date", DATE)
    assert r.exit_code == 1, r.output
    assert statuses(home)["deferred"] == 1 and smtp_server.messages == [], statuses(home)
    smtp_server.fail_rcpt = {}
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert len(smtp_server.messages) == 1


# ------------------------------------------------------------------ the mail server down


def test_mail_server_down_then_up_every_run_tells_the_truth(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, closed_port: int
) -> None:
    prepare(cli, smtp_server, **{"mail.smtp.port": str(closed_port)})
    ids = queue_messages(home, 20)
    for _ in range(2):  # cron, twice, while the server is down
        r = cli("check", "--date", DATE)
        assert r.exit_code == 3, r.output
        assert "refused the connection" in r.stderr
    # waiting mail is reported even when nothing new was found
    r = cli("outbox", "--json")
    assert r.exit_code == 0
    assert cli("config", "set", "mail.smtp.port", str(smtp_server.port)).exit_code == 0
    r = cli("check", "--date", DATE)
    assert r.exit_code == 0, r.output
    assert_each_once(smtp_server, ids)


def test_deferred_mail_makes_check_exit_1_until_it_is_sent(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    prepare(cli, smtp_server)
    ids = queue_messages(home, 4)
    smtp_server.fail_data = "451 4.3.0 try again later"
    r = cli("check", "--date", DATE)
    assert r.exit_code == 1, r.output
    smtp_server.fail_data = None
    r = cli("check", "--date", DATE)  # before the retry time: nothing new, but mail waits
    assert r.exit_code == 1, r.output
    assert "No new notifications" in r.stdout
    assert "4 message(s) wait in the outbox" in r.stderr and "next try" in r.stderr
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert cli("check", "--date", DATE).exit_code == 0
    assert_each_once(smtp_server, ids)


def test_relay_denied_without_a_passcode_keeps_mail_queued(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    prepare(cli, smtp_server)
    ids = queue_messages(home, 5)
    smtp_server.fail_rcpt = {
        f"person{i}@agency.test": "554 5.7.1 Relay access denied" for i in range(5)
    }
    r = cli("check", "--date", DATE)
    assert r.exit_code == 3, r.output
    assert "cpmail staff passcode JD" in r.stderr
    s = statuses(home)
    assert s["failed"] == 0 and s["deferred"] + s["queued"] == 5
    smtp_server.fail_rcpt = {}
    assert cli("check", "--date", DATE).exit_code == 0
    assert_each_once(smtp_server, ids)


@pytest.mark.parametrize(
    ("stage", "answer"),
    [
        ("rcpt", "550 5.7.1 Unable to relay"),
        ("rcpt", "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"),
        ("mail", "550 5.7.1 Sender not allowed"),
        ("mail", "553 5.7.1 Sender is not authorized"),
        ("mail", "550 5.7.60 SMTP; Client does not have permissions to send as this sender"),
        ("mail", "550 5.7.1 Sending as this address is not permitted"),
    ],
)
def test_refusals_of_the_sender_in_the_words_of_other_servers_keep_mail_queued(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, stage: str, answer: str
) -> None:
    """Relay denied or sender not allowed, as Exchange, qmail and others word it: exit 3,
    the fix named, and the mail stays queued instead of failing for good."""
    prepare(cli, smtp_server)
    ids = queue_messages(home, 3)
    if stage == "rcpt":
        smtp_server.fail_rcpt = {f"person{i}@agency.test": answer for i in range(3)}
    else:
        smtp_server.fail_mail = answer
    r = cli("check", "--date", DATE)
    assert r.exit_code == 3, r.output
    assert "cpmail staff passcode JD" in r.stderr
    s = statuses(home)
    assert s["failed"] == 0 and s["deferred"] + s["queued"] == 3
    smtp_server.fail_rcpt = {}
    smtp_server.fail_mail = None
    assert cli("check", "--date", DATE).exit_code == 0
    assert_each_once(smtp_server, ids)


# ------------------------------------------------------------------ the database


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if r.returncode != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write until the file system is full; return the filler to delete."""
    filler = path / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


@pytest.mark.serial
def test_disk_full_while_recording_loses_nothing_and_sends_nothing_twice(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "16m") as disk:
        cli.home = disk / "home"
        os.environ["CPMAIL_HOME"] = str(cli.home)
        prepare(cli, smtp_server)
        ids = queue_messages(cli.home, 200)
        smtp_server.accept_delay = 0.02
        proc = spawn(cli.home)
        wait_for(lambda: len(smtp_server.messages) >= 20)
        filler = fill(disk)
        at_full = len(smtp_server.messages)
        time.sleep(1.5)
        # outcomes cannot be written: sending waits (only what was in flight goes on)
        assert len(smtp_server.messages) - at_full <= 6
        filler.unlink()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert_each_once(smtp_server, ids)
        assert statuses(cli.home) == Counter({"sent": len(ids)})
        # a run that starts on a full disk says so (exit 3) and changes nothing
        filler = fill(disk)
        r = cli("check", "--date", DATE)
        filler.unlink()
        assert r.exit_code == 3, r.output
        assert "full" in r.stderr
        assert "internal error" not in r.stderr


def test_a_read_only_home_is_exit_3_naming_it(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    prepare(cli, smtp_server)
    queue_messages(home, 3)
    view = tmp_path / "read-only-home"
    view.mkdir()
    # The same home, seen through a read-only mount (as a read-only disk would be).
    if subprocess.run(["mount", "--bind", str(home), str(view)]).returncode != 0:
        pytest.skip("bind mounts need root (CI runs as root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        proc = spawn(view)
        _, err = proc.communicate(timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
    assert proc.returncode == 3, err
    assert "read-only file system" in err
    assert "cpmail init" not in err and "internal error" not in err


def test_a_damaged_database_is_exit_3_not_a_traceback(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    prepare(cli, smtp_server)
    db = home / "cpmail.db"
    for extra in (home / "cpmail.db-wal", home / "cpmail.db-shm"):
        extra.unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 500)
    # In a process of its own: SQLite shares what it knows of a file between the
    # connections of one process, and `prepare` ran in this one.
    _, err = (proc := spawn(home)).communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "damaged" in err and str(db) in err


def test_a_locked_database_is_exit_3_naming_the_lock(cli: Cli, home: Path) -> None:
    import sqlite3

    assert cli("init").exit_code == 0
    holder = sqlite3.connect(home / "cpmail.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        r = cli("outbox", env={"CPMAIL_DATABASE_BUSY_SECONDS": "1"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.exit_code == 3, r.output
    assert "locked" in r.stderr


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql+psycopg://postgres@127.0.0.1:{closed}/test", "cannot be reached"),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db_here", "does not exist"),
        ("postgresql+psycopg://no_such_role@127.0.0.1:5432/test", "refused the login"),
    ],
)
def test_postgres_down_or_misnamed_is_exit_3(
    cli: Cli, closed_port: int, url: str, words: str, pg_url: str
) -> None:
    # (pg_url: the server itself must be up for "does not exist" to be its answer)
    r = cli("outbox", env={"CPMAIL_DATABASE_URL": url.format(closed=closed_port)})
    assert r.exit_code == 3, r.output
    assert words in r.stderr
    assert "cpmail init" not in r.stderr


@pytest.mark.serial
@pytest.mark.postgres
def test_database_connections_lost_mid_run_lose_nothing(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, pg_url: str
) -> None:
    app = f"cpmail-faults-{new_run_id()}"
    url = f"{pg_url}&application_name={app}"
    prepare(cli, smtp_server, db=url)
    ids = queue_messages(home, 150)
    smtp_server.accept_delay = 0.02
    proc = spawn(home)
    wait_for(lambda: len(smtp_server.messages) >= 20)
    admin = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT"
    )
    # What a restart does to a client: every connection is cut, for a while.
    with admin.connect() as conn:
        for _ in range(20):
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :app"
                ),
                {"app": app},
            )
            time.sleep(0.05)
    admin.dispose()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 1, 3), err
    assert "internal error" not in err
    r = cli("check", "--date", DATE)
    assert r.exit_code in (0, 1), r.output
    if r.exit_code == 1:
        assert cli("outbox", "retry", "--all").exit_code == 0
    assert_each_once(smtp_server, ids)


def _locked(db: Path) -> bool:
    import sqlite3

    conn = sqlite3.connect(db, timeout=0.05, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


@pytest.mark.serial
def test_a_run_paused_past_the_stale_limit_sends_nothing_more(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """SIGSTOP (or a machine asleep) past the limit: another run takes over; no duplicates."""
    prepare(cli, smtp_server, **{"outbox.stale_claim_minutes": "0.05"})  # 3 s
    ids = queue_messages(home, 150)
    smtp_server.accept_delay = 0.02
    first = spawn(home)
    wait_for(lambda: len(smtp_server.messages) >= 10)
    # Stopped outside a write: SQLite's lock held by a stopped process would (rightly)
    # keep every other run waiting, which is another test's matter.
    for _ in range(100):
        first.send_signal(signal.SIGSTOP)
        if not _locked(home / "cpmail.db"):
            break
        first.send_signal(signal.SIGCONT)
        time.sleep(0.003)
    time.sleep(0.5)  # what was in flight is answered while it sleeps
    time.sleep(3.5)  # past the stale limit: its claims are taken up
    r = cli("check", "--date", DATE)
    assert r.exit_code == 0, r.output
    after_takeover = len(smtp_server.messages)
    first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=60)
    assert "internal error" not in err
    assert "left its messages to other runs" in err, out + err
    # the woken run sent at most what it had in hand at the moment it was stopped
    assert len(smtp_server.messages) - after_takeover <= 3
    got = received(smtp_server)
    assert set(got) == ids
    assert sum(got.values()) - len(got) <= 3
    assert statuses(home)["sending"] == 0
