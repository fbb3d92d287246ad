"""Faults, trial after trial: does every message go out exactly once?

For each fault, each trial starts a fresh home with N queued messages, runs
`cpmail check` as a real process against a real aiosmtpd server on
127.0.0.1, does the harm at a random moment, then runs `check` again (as
cron would) until the outbox is empty, and counts the Message-IDs the
server received: lost (never received) and duplicated (received twice).

    python bench/faults.py                      # every fault, 5 trials each
    python bench/faults.py --trials 10 --only sigterm,sigkill
    python bench/faults.py --pg-restart         # also restart PostgreSQL mid-run
                                                # (pg_ctlcluster; cuts every client)

It prints one row per fault: trials, messages, lost, duplicated, the exit
codes of the harmed runs, and the bar it must meet.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_faults import (
    DATE,
    fill,
    prepare,
    queue_messages,
    received,
    spawn,
    statuses,
    wait_for,
)

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def fresh_home(tmp: Path, disk: str | None = None) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(dir=tmp))
    if disk:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={disk}", "tmpfs", str(base)], check=True
        )
    try:
        yield base / "home"
    finally:
        if disk:
            subprocess.run(["umount", "-l", str(base)], check=False)


def finish(home: Path, server: SMTPTestServer) -> None:
    """Run check (as cron would) until nothing waits; retry deferred mail at once."""
    cli = Cli(home)
    for _ in range(10):
        s = statuses(home)
        if s["sending"]:
            time.sleep(1)  # a dead run's claims: wait for the stale limit
        if not (s["queued"] or s["deferred"] or s["sending"]):
            return
        cli("outbox", "retry", "--all")
        cli("check", "--date", DATE)
    raise RuntimeError(f"mail still waits: {dict(statuses(home))}")


def trial(
    tmp: Path,
    n: int,
    harm: Callable[[subprocess.Popen[str], SMTPTestServer, Path, random.Random], None],
    rng: random.Random,
    *,
    settings: dict[str, Any] | None = None,
    disk: str | None = None,
    server_setup: Callable[[SMTPTestServer], None] | None = None,
    db: str = "",
) -> tuple[int, int, int]:
    with SMTPTestServer() as server, fresh_home(tmp, disk) as home:
        os.environ["CPMAIL_HOME"] = str(home)
        cli = Cli(home)
        prepare(cli, server, db=db, **{"outbox.stale_claim_minutes": "0.05", **(settings or {})})
        ids = queue_messages(home, n)
        server.accept_delay = 0.01
        if server_setup:
            server_setup(server)
        proc = spawn(home)
        harm(proc, server, home, rng)
        proc.communicate(timeout=300)
        code = proc.returncode
        server.stall_after = None
        server.accept_delay = 0.0
        finish(home, server)
        got = received(server)
        lost = len(ids - set(got))
        twice = sum(c - 1 for c in got.values() if c > 1)
        return lost, twice, code


def after_some(server: SMTPTestServer, rng: random.Random, at_least: int = 5) -> None:
    wait_for(lambda: len(server.messages) >= at_least, timeout=60)
    time.sleep(rng.uniform(0, 0.5))


def signal_harm(sig: int) -> Callable[..., None]:
    def harm(
        proc: subprocess.Popen[str], server: SMTPTestServer, home: Path, rng: random.Random
    ) -> None:
        after_some(server, rng)
        proc.send_signal(sig)

    return harm


def long_run(
    proc: subprocess.Popen[str], server: SMTPTestServer, home: Path, rng: random.Random
) -> None:
    after_some(server, rng)
    time.sleep(3.5)  # past the 3 s stale limit, then a second run from cron
    second = spawn(home)
    second.communicate(timeout=300)


def stall(
    proc: subprocess.Popen[str], server: SMTPTestServer, home: Path, rng: random.Random
) -> None:
    after_some(server, rng)
    server.stall_after = rng.randint(0, 5)


def disk_full(
    proc: subprocess.Popen[str], server: SMTPTestServer, home: Path, rng: random.Random
) -> None:
    after_some(server, rng)
    filler = fill(home.parent)
    time.sleep(rng.uniform(0.5, 2.0))
    filler.unlink()


def pg_restart(
    proc: subprocess.Popen[str], server: SMTPTestServer, home: Path, rng: random.Random
) -> None:
    after_some(server, rng)
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
    )


def pg_schema() -> tuple[str, Callable[[], None]]:
    import uuid

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        for _ in range(30):
            try:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
                return
            except sa.exc.OperationalError:
                time.sleep(1)

    return f"{PG}?options=-csearch_path%3D{schema}", drop


FAULTS: dict[str, dict[str, Any]] = {
    "long-run": {"harm": long_run, "bar": "0 duplicated", "settings": {}},
    "sigterm": {"harm": signal_harm(signal.SIGTERM), "bar": "0 duplicated"},
    "sigint": {"harm": signal_harm(signal.SIGINT), "bar": "0 duplicated"},
    "sighup": {"harm": signal_harm(signal.SIGHUP), "bar": "0 duplicated"},
    "sigkill": {"harm": signal_harm(signal.SIGKILL), "bar": "≤ 1 per open connection (3)"},
    "stalled-server": {
        "harm": stall,
        "bar": "0 duplicated",
        "settings": {"mail.smtp.timeout": "1"},
    },
    "disk-full": {"harm": disk_full, "bar": "0 duplicated", "disk": "24m"},
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("-n", type=int, default=150, help="messages queued per trial")
    ap.add_argument("--only", default="", help="comma-separated faults")
    ap.add_argument("--pg-restart", action="store_true", help="also restart PostgreSQL mid-run")
    args = ap.parse_args()
    faults = dict(FAULTS)
    if args.pg_restart:
        faults["pg-restart"] = {"harm": pg_restart, "bar": "0 duplicated", "pg": True}
    chosen = [f for f in faults if not args.only or f in args.only.split(",")]
    for k in list(os.environ):
        if k.startswith("CPMAIL_"):
            del os.environ[k]
    rng = random.Random(20261127)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            spec = faults[name]
            lost = twice = worst = 0
            codes: collections.Counter[int] = collections.Counter()
            for _ in range(args.trials):
                db, drop = pg_schema() if spec.get("pg") else ("", lambda: None)
                try:
                    lost_now, t, code = trial(
                        Path(tmp),
                        args.n,
                        spec["harm"],
                        rng,
                        settings=spec.get("settings"),
                        disk=spec.get("disk"),
                        db=db,
                    )
                finally:
                    drop()
                lost += lost_now
                twice += t
                worst = max(worst, t)
                codes[code] += 1
            exits = ", ".join(f"{c}×{n}" for c, n in sorted(codes.items()))
            rows.append(
                (name, args.trials, args.trials * args.n, lost, twice, worst, exits, spec["bar"])
            )
            print(f"  {name}: lost {lost}, duplicated {twice}, exit codes {exits}", file=sys.stderr)
    print(
        "| fault | trials | messages | lost | duplicated | most in one trial "
        "| exit codes (count) | bar |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
