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
  (fewer messages, as it is slow; its rate is what counts);
* a floor: the least any Python sender does (asyncio, prepared bytes,
  pipelined, sessions reused), to show what Python itself reaches here.

cpmail is timed twice: finding, composing, queueing and sending N new
notifications (``cpmail``), and sending N messages already in the outbox,
queued by an earlier check while the send window was closed (``queued``: the
check finds nothing new and delivers them, as at 7:00 after a night).

Rates are messages per second; ratios are taken within each round and the
median over rounds is reported. ``--profile`` records one more run with py-spy
and prints where the time went (triggers, compose, queue, deliver).

    python bench/delivery.py                    # 10,000 messages, 3 rounds
    python bench/delivery.py -n 2000 --rounds 5 --profile
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
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


def queued_home(template: Path, dest: Path) -> Path:
    """A copy of ``template`` whose N messages were queued by a check with the send window
    closed (as overnight): the check timed on it finds nothing new and delivers them."""
    home = fresh_copy(template, dest)
    later = dt.datetime.now() + dt.timedelta(hours=2)
    cli(home, "config", "set", "mail.send_window", f"{later:%H}:00-{later:%H}:30")
    proc = subprocess.run(
        [CPMAIL, "--home", str(home), "check", "--date", DATE],
        env=user_env(),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"queueing with the window closed: {proc.stderr.decode(errors='replace')}")
    cli(home, "config", "set", "mail.send_window", "")
    return home


def run_smtp_source(port: int, n: int, sessions: int, size: int, *, reuse: bool) -> float:
    """Postfix's load generator: ``sessions`` in parallel, each reused (``-d``) or not."""
    cmd = [need("smtp-source"), "-s", str(sessions), "-m", str(n), "-l", str(size)]
    if reuse:
        cmd.insert(1, "-d")
    cmd += ["-f", SENDER, "-t", "p00001@agency.test", f"127.0.0.1:{port}"]
    return timed(cmd)


TEXT = "Hi Person,\n\nThis task is due today, Tue Nov 24, 2026:\n\n  - Proofread page 1\n" * 5
HTML = '<p style="margin:0 0 14px 0;">Hi Person, this task is due today.</p>\n' * 36


def run_smtplib(port: int, n: int, size: int, *, build: bool) -> float:
    """Standard-library smtplib, a new connection per message, one message at a time.

    With ``build`` each message is first built as an EmailMessage (text and
    HTML alternatives, about ``size`` bytes), as a plain script would;
    without it the same prepared bytes are sent each time (transport only).
    """
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    line = b"x" * 76 + b"\r\n"
    prepared = b"From: ops@agency.test\r\nTo: p00001@agency.test\r\nSubject: Test\r\n\r\n"
    prepared += line * max(1, size // len(line))
    start = time.perf_counter()
    for i in range(n):
        raw = prepared
        if build:
            msg = EmailMessage()
            msg["From"] = "Operations <ops@agency.test>"
            msg["To"] = f"Person {i} <p{i:05d}@agency.test>"
            msg["Subject"] = f"[C&P] Task due today: Proofread page {i} (job J1)"
            msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
            msg["Message-ID"] = make_msgid(domain="agency.test")
            msg.set_content(TEXT)
            msg.add_alternative(HTML, subtype="html")
            raw = msg.as_bytes()
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail(SENDER, [f"p{i:05d}@agency.test"], raw)
    return time.perf_counter() - start


def run_floor(port: int, n: int, sessions: int, size: int) -> float:
    """The least any Python sender does: what bounds cpmail from below on this machine.

    asyncio streams, ``sessions`` connections reused, prepared bytes (nothing
    rendered, composed, queued or recorded), MAIL, RCPT and DATA in one write,
    each answer read but only its last line looked at.
    """
    import asyncio

    line = b"x" * 76 + b"\r\n"
    body = b"From: ops@agency.test\r\nTo: p00001@agency.test\r\nSubject: Test\r\n\r\n"
    body += line * max(1, size // len(line)) + b".\r\n"

    async def answer(reader: asyncio.StreamReader) -> bytes:
        while True:
            got = await reader.readline()
            if got[3:4] != b"-":
                if not got.startswith((b"2", b"3")):
                    raise SystemExit(f"smtp-sink answered {got!r}")
                return got

    async def session(first: int, count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await answer(reader)
        writer.write(b"EHLO bench.agency.test\r\n")
        await answer(reader)
        for i in range(first, first + count):
            writer.write(
                b"MAIL FROM:<%s>\r\nRCPT TO:<p%05d@agency.test>\r\nDATA\r\n" % (SENDER.encode(), i)
            )
            for _ in range(3):
                await answer(reader)
            writer.write(body)
            await answer(reader)
        writer.write(b"QUIT\r\n")
        await answer(reader)
        writer.close()
        await writer.wait_closed()

    async def run() -> None:
        share = -(-n // sessions)
        await asyncio.gather(
            *(session(k * share, min(share, n - k * share)) for k in range(sessions))
        )

    start = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - start


def split(home: Path) -> None:
    """Run ``run_check`` in this process and print when each part began and ended."""
    import cpmail.check as check
    import cpmail.outbox as outbox
    import cpmail.transports.smtp as smtp
    from cpmail.secrets import SecretStore
    from cpmail.settings import Settings
    from cpmail.store import connect
    from cpmail.triggers import finders

    spent: dict[str, float] = collections.defaultdict(float)
    cpu: dict[str, float] = collections.defaultdict(float)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    t0 = time.perf_counter()

    def clock(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed_call(*a: Any, **k: Any) -> Any:
            t, c = time.perf_counter(), time.thread_time()
            first.setdefault(label, t - t0)
            try:
                return inner(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t
                cpu[label] += time.thread_time() - c
                last[label] = time.perf_counter() - t0

        swap(owner, name, timed_call)

    table = finders()
    swap(check, "finders", lambda: {ev: _clocked(fn, clock) for ev, fn in table.items()})
    clock(check, "_route", "routing")
    clock(check, "record_keys", "ledger keys")
    clock(check, "_plan", "compose")
    clock(check, "queue_many", "queue (outbox rows)")
    clock(check, "deliver", "deliver")
    clock(outbox._Recorder, "write", "record outcomes")
    clock(smtp.SMTPTransport, "deliver", "SMTP transport")
    settings = Settings.load(home)
    engine = connect(settings.db_url, where=str(home))
    t0 = time.perf_counter()
    result = check.run_check(
        engine, settings, SecretStore(home), home, date=dt.date.fromisoformat(DATE)
    )
    total = time.perf_counter() - t0
    sent = result.delivery.count("sent") if result.delivery else 0
    print(f"\nrun_check in one process: {sent} sent in {total:.2f} s ({sent / total:,.0f}/s)")
    print(f"  {'part':<32} {'from':>6} {'to':>6} {'busy':>6}  us/message  CPU us/message")
    for label in first:
        print(
            f"  {label:<32} {first[label]:6.2f} {last[label]:6.2f} {spent[label]:6.2f}"
            f"  {1e6 * spent[label] / max(sent, 1):10.0f}  {1e6 * cpu[label] / max(sent, 1):14.0f}"
        )
    print(
        "  (from/to: seconds since the start of run_check; busy: time inside the part in this"
        "\n   process; CPU: the calling thread's CPU time in it, which a busy machine inflates"
        "\n   less; 'SMTP transport' includes 'record outcomes', written by the sending"
        "\n   loop; a big run composes half its messages in a child process, not counted here)"
    )


def swap(owner: object, name: str, value: object) -> None:
    """Replace ``owner.name`` with a timed version (this benchmark only)."""
    setattr(owner, name, value)


def _clocked(fn: Any, clock: Any) -> Any:
    """A finder (a generator) that runs to the end when called, so that it can be timed."""

    class Holder:
        @staticmethod
        def fn(*a: Any, **k: Any) -> list[Any]:
            return list(fn(*a, **k))

    clock(Holder, "fn", "triggers")
    return Holder.fn


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


# Which part of the run a stack belongs to: the first marker found, innermost frame first.
PARTS = [
    ("deliver: SMTP (asyncio, sockets)", ("transports/smtp.py",)),
    ("deliver: record outcomes", ("_Recorder",)),
    ("deliver: claim", ("claim (cpmail/outbox.py",)),
    ("compose: render templates (Jinja2)", ("cpmail/render.py",)),
    ("compose: build message bytes", ("cpmail/compose.py", "_plan (cpmail/check.py")),
    ("queue: ledger keys and outbox rows", ("queue_many (cpmail/", "record_keys (cpmail/")),
    ("deliver: other", ("deliver (cpmail/outbox.py",)),
    ("triggers", ("cpmail/triggers/",)),
    ("routing", ("cpmail/routing.py", "_route (cpmail/check.py", "_unrecorded (cpmail/")),
    ("start-up: imports", ("_find_and_load",)),
    ("check: commit, bookkeeping", ("run_check (cpmail/check.py",)),
    ("CLI: settings, database, summary", ("cpmail/cli/", "cpmail/store/")),
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
        if any("_find_and_load" in f for f in frames):
            label = "start-up: imports"  # module bodies would otherwise count as their part
        for frame in reversed(frames):
            if label != "other":
                break
            hit = next((name for name, marks in PARTS if any(m in frame for m in marks)), None)
            if hit:
                label = hit
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
            queued_template = queued_home(template, base / "queued-template")
            names = {
                "queued": "cpmail check sending N messages queued earlier",
                "src": "smtp-source -d (sessions reused)",
                "src1": "smtp-source (a connection per message)",
                "lib": "smtplib, a connection per message, building each EmailMessage",
                "raw": "smtplib, a connection per message, prepared bytes",
                "floor": "Python floor: asyncio, prepared bytes, pipelined, sessions reused",
            }
            rates: dict[str, list[float]] = collections.defaultdict(list)
            for r in range(args.rounds):
                home = fresh_copy(template, base / f"round{r}")
                n, m = args.messages, args.smtplib_messages
                got = {"cpmail": n / run_cpmail(home)}
                sent, other, _ = outcome(home)
                if sent != n or other:
                    raise SystemExit(f"round {r}: sent {sent}, left {other}")
                home = fresh_copy(queued_template, base / f"queued{r}")
                got["queued"] = n / run_cpmail(home)
                sent, other, _ = outcome(home)
                if sent != n or other:
                    raise SystemExit(f"round {r} (queued): sent {sent}, left {other}")
                got["src"] = n / run_smtp_source(port, n, args.connections, size_i, reuse=True)
                got["src1"] = n / run_smtp_source(port, n, args.connections, size_i, reuse=False)
                got["lib"] = m / run_smtplib(port, m, size_i, build=True)
                got["raw"] = m / run_smtplib(port, m, size_i, build=False)
                got["floor"] = n / run_floor(port, n, args.connections, size_i)
                for k, v in got.items():
                    rates[k].append(v)
                    if k not in ("cpmail", "queued"):
                        rates[f"ratio {k}"].append(got["cpmail"] / v)
                rates["queued ratio src"].append(got["queued"] / got["src"])
                rates["queued ratio lib"].append(got["queued"] / got["lib"])
                print(
                    f"round {r + 1}: "
                    + ", ".join(f"{k} {v:,.0f}/s" for k, v in got.items())
                    + f"; queued / src {got['queued'] / got['src']:.3f}"
                )
            print(
                f"\n{args.messages} messages of {size_i} bytes, {args.connections} SMTP sessions, "
                f"{args.rounds} rounds; medians of rates and of per-round ratios:"
            )
            print(
                f"  {'cpmail check (process start to exit)':<64} {median(rates['cpmail']):>7,.0f}/s"
            )
            for k, name in names.items():
                print(f"  {name:<64} {median(rates[k]):>7,.0f}/s")
            targets = {"src": 0.25, "lib": 3.0}  # the two relay targets
            for k, name in names.items():
                if k == "queued":
                    continue
                ratio = median(rates[f"ratio {k}"])
                verdict = ""
                if k in targets:
                    met = "met" if ratio >= targets[k] else "NOT met"
                    verdict = f"  (>= {targets[k]}: {met})"
                print(f"  cpmail / {name:<55} {ratio:6.2f} x{verdict}")
            for k, label in (("src", "smtp-source -d"), ("lib", "smtplib building messages")):
                ratio = median(rates[f"queued ratio {k}"])
                met = "met" if ratio >= targets[k] else "NOT met"
                print(
                    # (cut, not rounded, so that a ratio just under the target never reads as it)
                    f"  cpmail sending queued mail / {label:<33} {int(ratio * 1000) / 1000:6.3f} x"
                    f"  (>= {targets[k]}: {met})"
                )
            floor = median([f / s for f, s in zip(rates["floor"], rates["src"], strict=True)])
            print(f"  Python floor / smtp-source -d{'':<35} {floor:6.2f} x")
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
