"""Helpers the benchmarks share: timing subprocesses, medians, a local smtp-sink.

The benchmarks run commands the way a user does: the installed ``cpmail``
console script of the same virtual environment, with compiled bytecode (the
first, warm-up run writes it, as Python does on any machine where
PYTHONDONTWRITEBYTECODE is not set).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CPMAIL = str(BIN / "cpmail") if (BIN / "cpmail").exists() else "cpmail"


def user_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give: no CPMAIL_* leaking in, bytecode on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPMAIL_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def timed(cmd: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True) -> float:
    """Run ``cmd`` with output discarded; return its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        env=env if env is not None else user_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if check and proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        )
    return elapsed


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(tool: str) -> str:
    """The path of a test tool, or stop with how to install it."""
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else "")
    if not path:
        raise SystemExit(
            f"{tool} is missing: install Debian's postfix package for it "
            "(DEBIAN_FRONTEND=noninteractive apt-get install -y postfix; "
            "the Postfix daemon itself is not needed and must not be started)."
        )
    return path


@contextlib.contextmanager
def smtp_sink(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Postfix's smtp-sink on 127.0.0.1:``port``: accepts every message, keeps none."""
    cmd = [need("smtp-sink")]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]  # it refuses to run as root otherwise
    cmd += ["-m", "64", f"127.0.0.1:{port}", "256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"smtp-sink did not start on port {port}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def row(*cells: object, widths: Sequence[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()
