"""Delivery end to end: `cpmail check` turns N due tasks into N messages and sends them.

What is timed is what a user runs: ``cpmail check --date D`` as a process, on a
home whose agency has N staff with one task each due on D (so N
``task-due-today`` notifications, one message each), sending over SMTP to
Postfix's ``smtp-sink`` on 127.0.0.1 with ``mail.smtp.connections`` sessions.
The clock runs from the start of the process to its exit, after the last
message was accepted and recorded.

Side by side, in the same rounds, on the same smtp-sink:

* Postfix's C load generator ``smtp-source`` with as many sessions (``-s``),
  each session reused (``-d``), messages of the same size (``-l``);
* the standard library's ``smtplib`` opening one connection per message
  (fewer messages, as it is slow; its rate is what counts).

Rates are messages per second; ratios are taken within each round and the
median over rounds is reported. ``--profile`` records one more run with py-spy
and prints where the time went (triggers, compose, queue, deliver).

    python bench/delivery.py                    # 10,000 messages, 3 rounds
    python bench/delivery.py -n 2000 --rounds 5 --profile
"""

from __future__ import annotations

import argparse
import collections
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CPMAIL, free_port, median, need, smtp_sink, timed, user_env

DATE = "2026-11-24"  # a Tuesday
SENDER = "ops@agency.test"


def cli(home: Path, *args: str) -> None:
    proc = subprocess.run(
        [CPMAIL, "--home", str(home), *args], env=user_env(), capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"cpmail {' '.join(args)}: {proc.stderr.decode(errors='replace')}")


def build_home(base: Path, n: int, port: int, connections: int) -> Path:
    """A home sending through smtp-sink, with N staff and one task due on DATE for each.

    The settings are made with the CLI; the rows go straight into the tables
    (the import command has a benchmark of its own).
    """
    import datetime as dt

    import sqlalchemy as sa

    from cpmail.store import make_engine
    from cpmail.store.schema import clients, jobs, staff, tasks

    home = base / "template"
    cli(home, "init")
    cli(home, "config", "smtp", "--host", "127.0.0.1", "--port", str(port), "--security", "none")
    cli(home, "config", "set", "mail.smtp.connections", str(connections))
    cli(home, "config", "set", "check.holidays", "")
    due = dt.date.fromisoformat(DATE)
    engine = make_engine(f"sqlite:///{home / 'cpmail.db'}")
    with engine.begin() as conn:
        conn.execute(sa.insert(clients), [{"id": "C1", "name": "Acme", "billing_email": None}])
        conn.execute(
            sa.insert(jobs),
            [
                {
                    "id": "J1",
                    "client_id": "C1",
                    "title": "Winter catalog",
                    "opened_at": dt.datetime(2026, 1, 5, 9),
                }
            ],
        )
        people = [{"id": "OPS", "name": "Operations", "work_email": SENDER, "planned_hours": 0}]
        people += [
            {
                "id": f"S{i:05d}",
                "name": f"Person {i:05d}",
                "work_email": f"p{i:05d}@agency.test",
                "planned_hours": 0,
            }
            for i in range(n)
        ]
        conn.execute(sa.insert(staff), people)
        conn.execute(
            sa.insert(tasks),
            [
                {
                    "id": f"T{i:05d}",
                    "job_id": "J1",
                    "name": f"Proofread page {i}",
                    "assignee_id": f"S{i:05d}",
                    "due_date": due,
                }
                for i in range(n)
            ],
        )
    engine.dispose()
    cli(home, "config", "set", "user.staff", "OPS")
    return home


def fresh_copy(template: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(template, dest)
    return dest


def outcome(home: Path) -> tuple[int, int, float]:
    """(sent, not sent, mean message size) from the home's database."""
    with sqlite3.connect(home / "cpmail.db") as db:
        sent, other, size = db.execute(
            "SELECT sum(status = 'sent'), sum(status != 'sent'), avg(size) FROM messages"
        ).fetchone()
    return int(sent or 0), int(other or 0), float(size or 0)


def run_cpmail(home: Path) -> float:
    return timed([CPMAIL, "--home", str(home), "check", "--date", DATE])


def run_smtp_source(port: int, n: int, sessions: int, size: int) -> float:
    cmd = [need("smtp-source"), "-d", "-s", str(sessions), "-m", str(n), "-l", str(size)]
    cmd += ["-f", SENDER, "-t", "p00001@agency.test", f"127.0.0.1:{port}"]
    return timed(cmd)


def run_smtplib(port: int, n: int, size: int) -> float:
    """One connection per message, in this process (no interpreter start-up counted)."""
    body = b"x" * 76 + b"\r\n"
    raw = b"From: ops@agency.test\r\nTo: p00001@agency.test\r\nSubject: Test\r\n\r\n" + body * max(
        1, size // len(body)
    )
    start = time.perf_counter()
    for _ in range(n):
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.sendmail(SENDER, ["p00001@agency.test"], raw)
    return time.perf_counter() - start


def split(home: Path) -> None:
    """Run ``run_check`` in this process with a clock on each part (nested parts shown apart)."""
    import datetime as dt

    import cpmail.check as check
    import cpmail.outbox as outbox
    import cpmail.transports.smtp as smtp
    from cpmail.secrets import SecretStore
    from cpmail.settings import Settings
    from cpmail.store import connect
    from cpmail.triggers import finders

    spent: collections.Counter[str] = collections.Counter()

    def clock(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed_call(*a: object, **k: object) -> object:
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t

        setattr(owner, name, timed_call)

    table = finders()
    check.finders = lambda: {ev: _clocked(fn, spent) for ev, fn in table.items()}  # type: ignore[assignment]
    clock(check, "_route", "routing")
    clock(check, "_plan", "compose: render + build")
    clock(check.Renderer, "message", "  of which render")
    clock(check, "record_keys", "queue: ledger keys")
    clock(check, "queue_many", "queue: outbox rows")
    clock(check, "deliver", "deliver (all)")
    clock(outbox, "claim", "  deliver: claim")
    clock(outbox._Recorder, "flush", "  deliver: record outcomes")
    clock(smtp.SMTPTransport, "deliver", "  deliver: SMTP transport")
    settings = Settings.load(home)
    engine = connect(settings.db_url, where=str(home))
    t0 = time.perf_counter()
    result = check.run_check(
        engine, settings, SecretStore(home), home, date=dt.date.fromisoformat(DATE)
    )
    total = time.perf_counter() - t0
    sent = result.delivery.count("sent") if result.delivery else 0
    print(f"\nrun_check in one process: {sent} sent in {total:.2f} s ({sent / total:,.0f}/s)")
    for label, secs in spent.items():
        print(f"  {label:<32} {secs:6.2f} s  {1e6 * secs / max(sent, 1):7.0f} us/message")


def _clocked(fn: Any, spent: collections.Counter[str]) -> Any:
    def run(*a: object, **k: object) -> list[object]:
        t = time.perf_counter()
        out = list(fn(*a, **k))
        spent["triggers"] += time.perf_counter() - t
        return out

    return run


def profile(home: Path, out: Path) -> None:
    """Record `cpmail check` with py-spy (idle time included: waiting is time too)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed (pip install py-spy): no profile.")
        return
    cmd = [spy, "record", "--idle", "--threads", "--rate", "250", "--format", "raw"]
    cmd += ["-o", str(out), "--"]
    cmd += [CPMAIL, "--home", str(home), "check", "--date", DATE]
    subprocess.run(cmd, env=user_env(), capture_output=True, check=True)
    report_profile(out)


# Which part of the run a stack belongs to: the first marker found, innermost first.
PARTS = [
    ("deliver: SMTP (asyncio, aiosmtplib)", ("transports/smtp.py",)),
    ("deliver: record outcomes", ("_Recorder",)),
    ("deliver: claim", ("claim (cpmail/outbox.py",)),
    ("compose: render templates", ("cpmail/render.py",)),
    ("compose: build message", ("build_message", "to_bytes", "(cpmail/compose.py")),
    ("queue: ledger and outbox rows", ("queue (cpmail/outbox.py", "_insert_ledger", "_link_keys")),
    ("deliver: other", ("deliver (cpmail/outbox.py",)),
    ("triggers", ("cpmail/triggers/",)),
    ("routing", ("cpmail/routing.py", "_route (cpmail/check.py")),
    ("start-up and imports", ("_find_and_load",)),
]


def report_profile(raw: Path) -> None:
    """Share of the main thread's samples per part (helper threads only wait)."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    main_thread = next((f[0] for f, _ in stacks if any("(cpmail:" in x for x in f)), None)
    parts: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, n in stacks:
        if frames[0] != main_thread:
            continue
        total += n
        label = "other"
        for frame in reversed(frames):
            hit = next((name for name, marks in PARTS if any(m in frame for m in marks)), None)
            if hit:
                label = hit
                break
        parts[label] += n
    print(f"\nWhere the time of one `cpmail check` went (py-spy, main thread, {total} samples):")
    for name, n in parts.most_common():
        print(f"  {name:<42} {100 * n / total:5.1f} %")
    print(f"  (raw stacks: {raw})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--messages", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=3, help="mail.smtp.connections (default 3)")
    ap.add_argument("--smtplib-messages", type=int, default=1000)
    ap.add_argument("--profile", action="store_true", help="also record one run with py-spy")
    ap.add_argument("--split", action="store_true", help="also time the parts of one run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    need("smtp-sink")
    need("smtp-source")
    base = Path(tempfile.mkdtemp(prefix="cpmail-bench-"))
    port = free_port()
    try:
        with smtp_sink(port):
            t0 = time.perf_counter()
            template = build_home(base, args.messages, port, args.connections)
            print(
                f"set-up: {args.messages} staff and due tasks in {time.perf_counter() - t0:.1f} s"
            )
            # warm-up: bytecode written, caches filled
            run_cpmail(fresh_copy(template, base / "warm"))
            sent, other, size = outcome(base / "warm")
            if sent != args.messages or other:
                raise SystemExit(f"warm-up run sent {sent}, left {other}: expected {args.messages}")
            size_i = round(size)
            rates: dict[str, list[float]] = collections.defaultdict(list)
            ratios: dict[str, list[float]] = collections.defaultdict(list)
            for r in range(args.rounds):
                home = fresh_copy(template, base / f"round{r}")
                t_cp = run_cpmail(home)
                sent, other, _ = outcome(home)
                if sent != args.messages or other:
                    raise SystemExit(f"round {r}: sent {sent}, left {other}")
                t_src = run_smtp_source(port, args.messages, args.connections, size_i)
                t_lib = run_smtplib(port, args.smtplib_messages, size_i)
                cp, src, lib = (
                    args.messages / t_cp,
                    args.messages / t_src,
                    args.smtplib_messages / t_lib,
                )
                rates["cpmail check"].append(cp)
                rates["smtp-source"].append(src)
                rates["smtplib"].append(lib)
                ratios["cpmail / smtp-source"].append(cp / src)
                ratios["cpmail / smtplib"].append(cp / lib)
                print(
                    f"round {r + 1}: cpmail {t_cp:.2f} s ({cp:,.0f}/s), smtp-source {t_src:.2f} s "
                    f"({src:,.0f}/s), smtplib {lib:,.0f}/s"
                )
            print(
                f"\n{args.messages} messages of {size_i} bytes, "
                f"{args.connections} SMTP sessions, {args.rounds} rounds (medians):"
            )
            for name, values in rates.items():
                print(f"  {name:<24} {median(values):>9,.0f} messages/s")
            targets = {"cpmail / smtp-source": 0.25, "cpmail / smtplib": 3.0}
            for name, values in ratios.items():
                m = median(values)
                verdict = "met" if m >= targets[name] else "NOT met"
                print(f"  {name:<24} {m:>9.2f} x   (target >= {targets[name]} x: {verdict})")
            if args.split:
                split(fresh_copy(template, base / "split"))
            if args.profile:
                profile(fresh_copy(template, base / "profile"), base / "profile.txt")
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
