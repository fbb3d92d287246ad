"""Commands other than `check` stopped by a signal: all or nothing, and what they say is true.

Each command runs as a real process on a real home. To stop it at a known
moment after its work is done, its standard output is a pipe already full:
the command blocks printing what it did until the test reads it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests import test_pull
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_data import SAMPLES, engine_of, table_rows, write_rows
from tests.test_delivery import setup_smtp
from tests.test_faults import queue_messages, small_disk
from tests.test_pull import first_day

# A PostgreSQL source and a home that pulls from it (tests/test_pull.py).
pg_source = test_pull.pg_source
home_for = test_pull.home_for


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: a write to it blocks until the other end is read."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"\n" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)  # (the flag is the open file's: the command's too)
    return r, w


def spawn_blocked(home: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """`cpmail ARGS` writing to a full pipe; return the process and the pipe's read end."""
    r, w = full_pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cpmail", *args],
            env={**os.environ, "CPMAIL_HOME": str(home)},
            stdout=w,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(w)
    return proc, r


def drain(proc: subprocess.Popen[bytes], r: int) -> tuple[str, str]:
    """Read what the command wrote until it ends; return its stdout (after the filling)
    and its stderr."""
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, err = proc.communicate(timeout=60)
    return out.lstrip(b"\n").decode(), err.decode()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


def blocked_writing(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the command waits to write into its pipe (Linux: where it sleeps)."""
    try:
        return "pipe_write" in Path(f"/proc/{proc.pid}/wchan").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_once_the_import_is_committed_says_it_was_done(
    initialised: Cli, home: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    path = write_rows(tmp_path / "in", "clients", SAMPLES["clients"], "csv")
    proc, r = spawn_blocked(home, "data", "import", str(path))
    try:
        wait_for(lambda: blocked_writing(proc) or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = drain(proc, r)
    finally:
        proc.kill()
    engine = engine_of(home)
    try:
        assert len(table_rows(engine, "clients")) == 2  # committed before the signal
    finally:
        engine.dispose()
    assert proc.returncode == 128 + sig, err
    # What it says is true: the import was done, and its summary is printed whole.
    assert out == "clients: 2 rows (2 new, 0 updated)\n", out
    assert f"stopped by {sig.name}" in err
    assert "not done" not in err
    assert "the import was finished first and is kept whole" in err, err


@pytest.mark.postgres
def test_a_signal_once_the_pull_is_committed_says_it_was_done(
    initialised: Cli, home: Path, pg_source: Any, home_for: Any
) -> None:
    first_day(pg_source)
    home_for(pg_source)
    proc, r = spawn_blocked(home, "data", "pull")
    try:
        wait_for(lambda: blocked_writing(proc) or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = drain(proc, r)
    finally:
        proc.kill()
    engine = engine_of(home)
    try:
        assert len(table_rows(engine, "tasks")) == 3
    finally:
        engine.dispose()
    assert proc.returncode == 143, err
    assert "tasks: 3 rows (3 new, 0 updated, 0 deleted)" in out, out
    assert "stopped by SIGTERM; the import was finished first and is kept whole" in err, err


# ------------------------------------------------------------------ one-off messages


def slow_commit(home: Path, table: str, seconds: int = 3, *, on: str = "INSERT") -> None:
    """Make the COMMIT of a transaction that inserted into ``table`` (or did ``on``) take
    ``seconds`` (PostgreSQL: a deferred trigger that sleeps, once per transaction)."""
    engine = engine_of(home)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF coalesce(current_setting('slow_commit.done', true), '') = '' THEN "
                "PERFORM set_config('slow_commit.done', 'y', true); "
                f"PERFORM pg_sleep({seconds}); END IF; RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                f"CREATE CONSTRAINT TRIGGER slow_commit AFTER {on} ON {table} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
            )
        )
    engine.dispose()


def committing(home: Path, app: str) -> bool:
    """Whether a connection named ``app`` is running a COMMIT."""
    engine = engine_of(home)
    try:
        with engine.connect() as conn:
            n = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app "
                    "AND state = 'active' AND query = 'COMMIT'"
                ),
                {"app": app},
            ).scalar()
    finally:
        engine.dispose()
    return bool(n)


def spawn(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cpmail", *args],
        env={**os.environ, "CPMAIL_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def terminated_at_commit(home: Path, app: str, *args: str) -> str:
    """Run cpmail ``args``, send it SIGTERM while its connection ``app`` runs a COMMIT;
    check that it ended 143 and return what it said on standard error."""
    proc = spawn(home, *args)
    try:
        wait_for(lambda: committing(home, app) or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    return err


@pytest.mark.postgres
@pytest.mark.parametrize(
    "command",
    [
        ("message", "manager", "The printer on floor 2 is out of toner."),
        ("staff", "test", "JD"),
    ],
    ids=["message", "staff-test"],
)
def test_a_signal_while_a_message_is_queued_says_where_it_is(
    cli: Cli, home: Path, pg_url: str, smtp_server: SMTPTestServer, command: tuple[str, ...]
) -> None:
    app = f"cpmail-intr-{uuid.uuid4().hex[:8]}"
    setup_smtp(cli, smtp_server, db=f"{pg_url}&application_name={app}")
    # No agency data and no planned hours: only what the command queued can go out.
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    slow_commit(home, "messages")
    err = terminated_at_commit(home, app, *command)
    assert "stopped by SIGTERM" in err
    assert not smtp_server.messages  # stopped before it was handed over
    time.sleep(4)  # (whatever the server still does with the COMMIT is over)
    waiting = [r for r in json.loads(cli("outbox", "--json").stdout) if r["status"] != "failed"]
    if command[0] == "staff":
        # A test message is sent at once or not at all: it never waits to go later.
        assert waiting == [], waiting
    elif waiting:
        # It waits in the outbox, to go with the next run: the command must say so.
        assert "1 not sent (see `cpmail outbox`)" in err, err
    else:
        assert "nothing is lost" in err or "not sent" in err, err
    # Whatever it said, the next run sends nothing the command said was not kept.
    r = cli("check", "--date", "2026-11-24")
    assert len(smtp_server.messages) == len(waiting), r.output


@pytest.mark.postgres
def test_a_signal_while_outbox_retry_queues_again_says_where_the_mail_is(
    cli: Cli, home: Path, pg_url: str, smtp_server: SMTPTestServer
) -> None:
    app = f"cpmail-intr-{uuid.uuid4().hex[:8]}"
    setup_smtp(cli, smtp_server, db=f"{pg_url}&application_name={app}")
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    queue_messages(home, 3)
    engine = engine_of(home)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE messages SET status = 'failed', claimed_by = NULL"))
    engine.dispose()
    slow_commit(home, "messages", on="UPDATE")
    err = terminated_at_commit(home, app, "outbox", "retry", "--all")
    assert not smtp_server.messages
    time.sleep(4)  # (whatever the server still does with the COMMIT is over)
    waiting = json.loads(cli("outbox", "--json").stdout)
    assert [r["status"] for r in waiting] == ["queued"] * 3, waiting
    # They went back in the queue, and go with the next run: the command says so.
    assert "3 message(s) queued again, not sent: they wait in the outbox" in err, err


# ------------------------------------------------------------------ resources


def test_an_import_that_fills_the_disk_is_exit_3_saying_so_not_bad_rows(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    # More than the import's page cache holds (16 MiB): pages go to disk before the COMMIT.
    path = tmp_path / "clients.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("id,name\n")
        f.writelines(f"C{i},Client {i:0100}\n" for i in range(200_000))
    with small_disk(tmp_path / "disk", "3m") as disk:
        cli.home = disk / "home"
        assert cli("init").exit_code == 0
        r = cli("data", "import", str(path))  # the disk fills up half-way through
        assert r.exit_code == 3, r.output
        assert "disk is full" in r.stderr, r.stderr
        assert "refused the rows" not in r.stderr
        engine = engine_of(cli.home)
        try:
            assert table_rows(engine, "clients") == []  # nothing half imported
        finally:
            engine.dispose()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_file_written_to_a_full_or_read_only_disk_is_exit_3_saying_so(
    cli: Cli, home: Path, tmp_path: Path, fault: str
) -> None:
    assert cli("demo").exit_code == 0
    with small_disk(tmp_path / "disk", "8k") as disk:
        (disk / "old.csv").write_text("kept\n")
        if fault == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        else:
            (disk / "filler").write_bytes(b"\0" * 4096)
        said = "the disk is full" if fault == "full" else "the file system is read-only"
        for args in (
            ("data", "export", "time_entries", "--out", str(disk / "old.csv")),
            ("report", "invoice", "B001", "--out", str(disk / "invoice.pdf")),
        ):
            r = cli(*args)
            assert r.exit_code == 3, r.output
            assert said in r.stderr, r.stderr
        # Nothing half written, nothing left behind; the file there is as it was.
        assert sorted(p.name for p in disk.iterdir()) == sorted(
            ["old.csv"] + (["filler"] if fault == "full" else [])
        )
        assert (disk / "old.csv").read_text() == "kept\n"


def test_templates_export_to_a_disk_that_fills_up_leaves_nothing_half_made(
    initialised: Cli, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "40k") as disk:
        r = initialised("templates", "export", str(disk / "mine"))
        assert r.exit_code == 3, r.output
        assert "the disk is full" in r.stderr and str(disk / "mine") in r.stderr, r.stderr
        assert list(disk.iterdir()) == []  # no folder, no template of the half done
    # With room, the same command goes through (no "exists; use --force").
    r = initialised("templates", "export", str(tmp_path / "mine"))
    assert r.exit_code == 0, r.output
