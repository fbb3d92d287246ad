"""Commands other than `check` stopped by a signal: all or nothing, and what they say is true.

Each command runs as a real process on a real home. To stop it at a known
moment after its work is done, its standard output is a pipe already full:
the command blocks printing what it did until the test reads it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import test_pull
from tests.conftest import Cli
from tests.test_data import SAMPLES, engine_of, table_rows, write_rows
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
