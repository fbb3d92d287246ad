"""`cpmail check` on a large agency: a day of 10,000 new rows against the bare SQL for them.

The agency comes from `bench/generate_agency.py` (history, current work, the
day; see there), made once per scale and seed and kept in ``--cache``. Each
run of this script then:

1. copies the cached agency, runs ``cpmail check --date D-1`` on it as a
   process (the **first run**: the month of current work seen for the first
   time; history is marked checked and in the ledger already; ``--first-runs``
   interleaved rounds, on fresh copies), and adds the day's 10,000 rows to
   the last copy: the **day** agency, which is never changed afterwards;
2. measures, in interleaved rounds, in this one process and on the same
   SQLite file:

   * **bare SQL**: for each trigger, the minimal SELECTs that fetch its rows
     with Python's ``sqlite3`` (``fetchall``): the lookback window's rows
     with the names a message shows, the tasks due, the open overdue tasks,
     and for the changed tasks their cost, time and hour totals; no ledger,
     no routing, no rendering, no queueing;
   * **triggers**: cpmail's trigger queries (every finder, then the ledger
     look-up that drops what was told before), read-only;
   * **dry run**: ``run_check(dry_run=True)``: triggers, routing, rendering
     and composing every message; nothing written;
   * **check**: ``run_check`` with the ``file`` transport on a fresh copy of
     the day agency: all of the above, ledger keys and outbox rows written,
     the state triggers' rows marked, every message written as an ``.eml``
     file (each one fsync'ed) and marked sent.

   Ratios are taken within each round (a noisy machine slows all alike) and
   the median over rounds is printed. The first round is a warm-up
   (templates compiled, modules imported) and is not counted.

With two scales (default 1 and 0.1: the same day on an agency with a tenth of
the history), the check's time at scale 1 over its time at scale 0.1 shows
whether the cost follows the day's changes or the size of the history.

    python bench/check_bench.py --cache /tmp/cpmail-bench           # 5 rounds
    python bench/check_bench.py --cache /tmp/cpmail-bench --rounds 3 --scales 1
    python bench/check_bench.py --cache /tmp/cpmail-bench --profile  # + py-spy of one check
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import gc
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import generate_agency as gen
from bench.common import CPMAIL, ROOT, median, timed, user_env

TARGET = 1.5
DATE = gen.RUN_DATE


# ------------------------------------------------------------------ homes


def cached_agency(cache: Path, scale: float, seed: int) -> Path:
    """The generated home (history and current work) for a scale and seed, made once."""
    # Made again when the generator or the schema changes.
    migrations = sorted((ROOT / "cpmail/store/migrations/versions").glob("*.py"))
    source = b"".join(p.read_bytes() for p in [Path(gen.__file__), *migrations])
    tag = hashlib.sha256(source + f"{scale}:{seed}:{DATE}".encode()).hexdigest()[:10]
    home = cache / f"agency-{scale:g}-{seed}-{tag}"
    if not (home / "done").exists():
        shutil.rmtree(home, ignore_errors=True)
        start = time.perf_counter()
        print(f"generating the agency at scale {scale:g} in {home} …", flush=True)
        rows = gen.generate(home, scale, seed, DATE)
        took = time.perf_counter() - start
        (home / "done").write_text(f"{sum(rows.values())} rows in {took:.1f} s\n")
    return home


def copy_home(src: Path, dst: Path) -> Path:
    """Copy a home, its database written out to disk: else the first fsync of the check
    (its commit) would pay for writing the whole fresh copy."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("mail", "done"))
    fd = os.open(dst / "cpmail.db", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dst


def first_run(agency: Path, work: Path) -> tuple[Path, float, int]:
    """Copy the agency and run its first check (the day before) as a process, timed."""
    home = copy_home(agency, work / "day")
    prior = (DATE - dt.timedelta(days=1)).isoformat()
    took = timed([CPMAIL, "-q", "--home", str(home), "check", "--date", prior], env=user_env())
    mails = len(list((home / "mail").glob("*.eml")))
    shutil.rmtree(home / "mail", ignore_errors=True)
    return home, took, mails


def add_day(home: Path, seed: int) -> None:
    db = gen.Db(home / "cpmail.db")
    gen.day(db, seed, DATE)
    db.close()


# ------------------------------------------------------------------ bare SQL

WINDOW_QUERIES = {
    "job-opened": """
        SELECT j.id, j.title, j.opened_at, j.production_status, j.billing_status,
               j.client_id, c.name
        FROM jobs j JOIN clients c ON c.id = j.client_id
        WHERE j.opened_at >= :start AND j.opened_at < :end""",
    "billing-created": """
        SELECT b.id, b.number, b.amount, b.created_at, b.due_date, b.job_id, b.client_id,
               c.name, j.title
        FROM billings b JOIN clients c ON c.id = b.client_id LEFT JOIN jobs j ON j.id = b.job_id
        WHERE b.created_at >= :start AND b.created_at < :end""",
    "payment-received": """
        SELECT p.id, p.amount, p.received_at, p.client_id, p.billing_id, c.name, b.number,
               b.amount, b.job_id
        FROM payments p JOIN clients c ON c.id = p.client_id
        LEFT JOIN billings b ON b.id = p.billing_id
        WHERE p.received_at >= :start AND p.received_at < :end""",
    "status-changed": """
        SELECT h.id, h.field, h.old_value, h.new_value, h.changed_at, h.changed_by, w.name,
               j.id, j.title, j.client_id, c.name, n.notify
        FROM job_status_history h JOIN jobs j ON j.id = h.job_id
        JOIN clients c ON c.id = j.client_id LEFT JOIN staff w ON w.id = h.changed_by
        LEFT JOIN job_status_codes n
          ON n.code = h.new_value AND n.kind || '_status' = h.field
        WHERE h.changed_at >= :start AND h.changed_at < :end""",
    "budget-alert": """
        SELECT a.id, a.source, a.message, a.entered_by, a.entered_at, a.task_id, w.name,
               t.name, j.id, j.title, j.client_id, c.name
        FROM budget_alerts a JOIN jobs j ON j.id = a.job_id JOIN clients c ON c.id = j.client_id
        LEFT JOIN tasks t ON t.id = a.task_id LEFT JOIN staff w ON w.id = a.entered_by
        WHERE a.entered_at >= :start AND a.entered_at < :end""",
    "diary-entry": """
        SELECT d.id, d.kind, d.party_id, d.subject, d.body, d.entered_by, d.entered_at,
               d.notify, w.name, c.name, v.name
        FROM diary_entries d LEFT JOIN staff w ON w.id = d.entered_by
        LEFT JOIN clients c ON d.kind = 'client' AND c.id = d.party_id
        LEFT JOIN vendors v ON d.kind = 'vendor' AND v.id = d.party_id
        WHERE d.entered_at >= :start AND d.entered_at < :end""",
    "homebase-entry": """
        SELECT h.id, h.subject, h.body, h.entered_by, h.entered_at, h.notify, w.name
        FROM homebase_entries h LEFT JOIN staff w ON w.id = h.entered_by
        WHERE h.entered_at >= :start AND h.entered_at < :end""",
    "change-order": """
        SELECT o.id, o.description, o.amount, o.entered_by, o.entered_at, w.name,
               j.id, j.title, j.client_id, c.name
        FROM change_orders o JOIN jobs j ON j.id = o.job_id JOIN clients c ON c.id = j.client_id
        LEFT JOIN staff w ON w.id = o.entered_by
        WHERE o.entered_at >= :start AND o.entered_at < :end""",
    "calendar-reminder": """
        SELECT * FROM calendar_entries WHERE remind_at >= :start AND remind_at < :end""",
}

TASK_COLUMNS = """t.id, t.name, t.due_date, t.budget_amount, t.estimated_hours, t.assignee_id,
    s.name, s.workdays, j.id, j.title, j.client_id, c.name
    FROM tasks t JOIN jobs j ON j.id = t.job_id JOIN clients c ON c.id = j.client_id
    LEFT JOIN staff s ON s.id = t.assignee_id"""

TASK_QUERIES = {
    "task-due-today": f"""SELECT {TASK_COLUMNS}
        WHERE t.due_date = :day AND (t.completed_at IS NULL OR t.completed_at >= :end)""",
    "task-due-tomorrow": f"""SELECT {TASK_COLUMNS}
        WHERE t.due_date > :day AND t.due_date <= :horizon
          AND (t.completed_at IS NULL OR t.completed_at >= :end)""",
    "time off ahead": """
        SELECT staff_id, date FROM time_off WHERE date > :day AND date <= :horizon""",
    "task-overdue": f"""SELECT {TASK_COLUMNS}
        WHERE t.due_date < :day AND t.completed_at IS NULL""",
    # task-over-budget and hours-exceeded: the totals of the tasks whose rows changed.
    "changed task totals": """
        WITH changed AS (
            SELECT id AS task_id FROM tasks WHERE cpmail_checked IS NOT 'y'
            UNION SELECT task_id FROM time_entries
                  WHERE cpmail_checked IS NOT 'y' AND task_id IS NOT NULL
            UNION SELECT task_id FROM job_costs
                  WHERE cpmail_checked IS NOT 'y' AND task_id IS NOT NULL)
        SELECT t.id, t.name, t.due_date, t.budget_amount, t.estimated_hours, t.assignee_id,
            s.name, j.id, j.title, j.client_id, c.name,
            (SELECT sum(amount) FROM job_costs k WHERE k.task_id = t.id),
            (SELECT sum(amount) FROM time_entries e WHERE e.task_id = t.id),
            (SELECT sum(hours) FROM time_entries e WHERE e.task_id = t.id)
        FROM changed JOIN tasks t ON t.id = changed.task_id JOIN jobs j ON j.id = t.job_id
        JOIN clients c ON c.id = j.client_id LEFT JOIN staff s ON s.id = t.assignee_id""",
    "missing-time staff": """
        SELECT id, name, planned_hours, workdays, supervisor_id FROM staff
        WHERE active AND planned_hours > 0""",
    "missing-time days off": """
        SELECT staff_id, date FROM time_off WHERE date >= :month AND date < :day""",
}


def bare_sql(db: Path, days: list[str]) -> int:
    """Fetch every trigger's rows with sqlite3 alone; return the number of rows."""
    start = dt.datetime.combine(DATE - dt.timedelta(days=7), dt.time())
    end = dt.datetime.combine(DATE + dt.timedelta(days=1), dt.time())
    params = {
        "start": start.isoformat(" ", "microseconds"),
        "end": end.isoformat(" ", "microseconds"),
        "day": DATE.isoformat(),
        "horizon": (DATE + dt.timedelta(days=21)).isoformat(),
        "month": (DATE - dt.timedelta(days=31)).isoformat(),
    }
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    n = 0
    try:
        for sql in [*WINDOW_QUERIES.values(), *TASK_QUERIES.values()]:
            n += len(conn.execute(sql, params).fetchall())
        marks = ", ".join("?" * len(days))
        n += len(
            conn.execute(
                "SELECT staff_id, work_date, sum(hours) FROM time_entries "
                f"WHERE work_date IN ({marks}) GROUP BY staff_id, work_date",
                days,
            ).fetchall()
        )
    finally:
        conn.close()
    return n


def prior_workdays(home: Path) -> list[str]:
    """The distinct prior workdays missing-time asks about (as cpmail works them out)."""
    from cpmail.settings import Settings
    from cpmail.workdays import WorkCalendar, parse_workdays

    cal = WorkCalendar.from_settings(Settings.load(home))
    conn = sqlite3.connect(home / "cpmail.db")
    off: dict[str, set[dt.date]] = collections.defaultdict(set)
    for sid, d in conn.execute("SELECT staff_id, date FROM time_off"):
        off[sid].add(dt.date.fromisoformat(d))
    days = set()
    for sid, workdays in conn.execute(
        "SELECT id, workdays FROM staff WHERE active AND planned_hours > 0"
    ):
        p = cal.prior_workday(DATE, parse_workdays(workdays or "mon-fri"), off[sid])
        if p is not None:
            days.add(p.isoformat())
    conn.close()
    return sorted(days)


# ------------------------------------------------------------------ cpmail in this process


class Cpmail:
    """cpmail's own functions, imported once (as one long-lived process would)."""

    def __init__(self) -> None:
        from cpmail.check import run_check
        from cpmail.secrets import SecretStore
        from cpmail.settings import Settings
        from cpmail.store import connect

        self.run_check = run_check
        self.secrets = SecretStore
        self.settings = Settings
        self.connect = connect

    def open(self, home: Path) -> tuple[Any, Any, Any]:
        """Settings, engine and secrets of a home (the schema revision checked, as the CLI does)."""
        s = self.settings.load(home)
        engine = self.connect(f"sqlite:///{home / 'cpmail.db'}", where=str(home))
        return s, engine, self.secrets(home, s["secrets.backend"])

    def triggers(self, home: Path) -> Callable[[], int]:
        """Every finder and the ledger look-up, as `run_check` does them; nothing written."""
        from cpmail.check import _unrecorded
        from cpmail.triggers import Run, finders
        from cpmail.workdays import WorkCalendar

        s, engine, _ = self.open(home)

        def run() -> int:
            run = Run(date=DATE, settings=s, calendar=WorkCalendar.from_settings(s), tz=s.tz())
            try:
                with engine.connect() as conn:
                    found = [n for f in finders().values() for n in f(conn, run)]
                    return len(_unrecorded(conn, found))
            finally:
                engine.dispose()

        return run

    def check(self, home: Path, *, dry_run: bool = False) -> Callable[[], tuple[int, int]]:
        """One `cpmail check --date D`; it returns (notifications, messages)."""
        s, engine, secrets = self.open(home)

        def run() -> tuple[int, int]:
            try:
                r = self.run_check(engine, s, secrets, home, date=DATE, dry_run=dry_run)
            finally:
                engine.dispose()
            if not dry_run:
                assert r.delivery is not None and not r.delivery.undelivered, "not delivered"
            return sum(x.found for x in r.summary.values()), len(r.planned)

        return run


def clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ------------------------------------------------------------------ main

PARTS = ("bare SQL", "triggers", "dry run", "check")


def preparers(
    cpmail: Cpmail, home: Path, fresh: Path, prior: list[str]
) -> dict[str, Callable[[], Callable[[], Any]]]:
    """For each part, what readies its timed call (outside the clock)."""
    return {
        "bare SQL": lambda: lambda: bare_sql(home / "cpmail.db", prior),
        "triggers": lambda: cpmail.triggers(home),
        "dry run": lambda: cpmail.check(home, dry_run=True),
        "check": lambda: cpmail.check(fresh),
    }


def split(home: Path, work: Path, scale: float) -> None:
    """Run one check in this process on a fresh copy; print the time inside each part."""
    import sqlalchemy as sa

    import cpmail.check as check
    from cpmail.triggers import Finder, Notification, Run, finders

    spent: dict[str, float] = collections.defaultdict(float)
    saved: list[tuple[object, str, object]] = []

    def swap(owner: object, name: str, value: object) -> None:
        """Put ``value`` in the place of ``owner.name`` until the check has run."""
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def clock(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name, None)
        if inner is None:  # not a part of this version of run_check
            return

        def timed_call(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t

        swap(owner, name, timed_call)

    table = finders()

    def finder(fn: Finder) -> Finder:
        def run_to_end(conn: sa.Connection, run: Run) -> list[Notification]:
            t = time.perf_counter()
            out = list(fn(conn, run))
            spent["triggers"] += time.perf_counter() - t
            return out

        return run_to_end

    # run_check calls the finders through its own module's name for them.
    swap(check, "finders", lambda: {ev: finder(fn) for ev, fn in table.items()})
    clock(check, "stamp_state_rows", "claim the state rows")
    clock(check, "Directory", "staff, teams, opt-outs")
    clock(check, "_unrecorded", "triggers")
    clock(check, "_route", "routing")
    clock(check, "_plan", "render and compose")
    clock(check, "record_keys", "ledger keys")
    clock(check, "queue_many", "outbox rows")
    clock(check, "settle_state_rows", "mark the state rows checked")
    clock(check, "deliver", "deliver (.eml files, outcomes)")
    fresh = copy_home(home, work / "split")
    try:
        run = Cpmail().check(fresh)
        t0 = time.perf_counter()
        _, messages = run()
        total = time.perf_counter() - t0
    finally:
        for owner, name, inner in reversed(saved):
            setattr(owner, name, inner)
        shutil.rmtree(fresh, ignore_errors=True)
    print(f"\nscale {scale:g}, one check in this process: {total:.2f} s, {messages} messages")
    for label, t in sorted(spent.items(), key=lambda item: item[1], reverse=True):
        print(f"  {label:<36} {t:6.2f} s  {1e6 * t / messages:6.0f} us/message")
    rest = total - sum(spent.values())
    print(f"  {'the rest (commits, summary…)':<36} {rest:6.2f} s")


def profile(home: Path, work: Path) -> None:
    """One `cpmail check` process under py-spy; print where its time went."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        print("  (py-spy is not installed: pip install py-spy)")
        return
    target = copy_home(home, work / "profile")
    out = work / "profile.txt"
    check = [CPMAIL, "-q", "--home", str(target), "check", "--date", DATE.isoformat()]
    subprocess.run(
        [str(spy), "record", "-r", "250", "-f", "raw", "-o", str(out), "--", *check],
        env=user_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    print_profile(out)


def print_profile(path: Path) -> None:
    """Samples per step of run_check (its callees), from py-spy's collapsed stacks."""
    steps: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        step = "start-up and output"
        for i, f in enumerate(frames):
            if f.startswith("run_check ("):
                rest = [g for g in frames[i + 1 :] if "<listcomp>" not in g]
                step = rest[0].split(" (")[0] if rest else "run_check"
                break
        steps[step] += n
    print(f"  py-spy, one `cpmail check` process: {total} samples (250 a second, CPU only)")
    for step, n in steps.most_common(16):
        print(f"    {100 * n / total:5.1f} %  {step}")


# Complexity above 15 on purpose: a benchmark's command line: one branch per option.
def main() -> None:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cpmail-bench")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scales", default="1,0.1", help="comma-separated; the first is the target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--first-runs", type=int, default=3, help="rounds of the first run")
    ap.add_argument("--profile", action="store_true", help="py-spy one check per scale")
    ap.add_argument("--split", action="store_true", help="time the parts of one check per scale")
    ap.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}"
    )
    args = ap.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    parts = [p for p in PARTS if p in args.parts.split(",")]
    if "bare SQL" not in parts:
        parts.insert(0, "bare SQL")
    args.cache.mkdir(parents=True, exist_ok=True)
    cpmail = Cpmail()
    days: dict[float, Path] = {}
    prior: dict[float, list[str]] = {}
    with tempfile.TemporaryDirectory(dir=args.cache, prefix="work-") as tmp:
        work = Path(tmp)
        agencies = {scale: cached_agency(args.cache, scale, args.seed) for scale in scales}
        firsts: dict[float, list[float]] = {scale: [] for scale in scales}
        mails = 0
        for _ in range(args.first_runs):
            for scale in scales:
                w = work / f"scale-{scale:g}"
                w.mkdir(exist_ok=True)
                days[scale], took, mails = first_run(agencies[scale], w)
                firsts[scale].append(took)
        for scale in scales:
            add_day(days[scale], args.seed)
            prior[scale] = prior_workdays(days[scale])
            size = (days[scale] / "cpmail.db").stat().st_size / 2**30
            print(
                f"scale {scale:g} ({size:.2f} GiB): first run `cpmail check --date D-1` "
                f"(a process, {mails} messages): median {median(firsts[scale]):.2f} s "
                f"({', '.join(f'{t:.2f}' for t in firsts[scale])})"
            )
        if len(scales) > 1:
            ratios = [a / b for a, b in zip(firsts[scales[0]], firsts[scales[1]], strict=True)]
            print(f"first run, scale {scales[0]:g} / scale {scales[1]:g}: {median(ratios):.2f} x")
        if args.split:
            for scale in scales:
                split(days[scale], work, scale)
        times: dict[float, dict[str, list[float]]] = {s: {p: [] for p in parts} for s in scales}
        counts: dict[float, dict[str, Any]] = {s: {} for s in scales}
        for r in range(args.rounds + 1):
            for scale in scales:
                home = days[scale]
                fresh = copy_home(home, work / "check") if "check" in parts else home
                prepare = preparers(cpmail, home, fresh, prior[scale])
                order = parts if r % 2 else parts[::-1]
                for part in order:
                    took, out = clock(prepare[part]())
                    counts[scale][part] = out
                    if r:
                        times[scale][part].append(took)
                if fresh != home:
                    shutil.rmtree(fresh)
            if r:
                last = parts[-1]
                print(
                    f"  round {r}: "
                    + ", ".join(f"scale {s:g} {last} {times[s][last][-1]:.2f} s" for s in scales),
                    flush=True,
                )
        report(scales, parts, times, counts, args.rounds)
        if args.profile:
            for scale in scales:
                print(f"scale {scale:g}:")
                profile(days[scale], work)


def report(
    scales: list[float],
    parts: list[str],
    times: dict[float, dict[str, list[float]]],
    counts: dict[float, dict[str, Any]],
    rounds: int,
) -> None:
    for scale in scales:
        t = times[scale]
        what = f"bare SQL {counts[scale]['bare SQL']} rows"
        if "check" in counts[scale] or "dry run" in counts[scale]:
            found, messages = counts[scale].get("check") or counts[scale]["dry run"]
            what += f"; {found} notifications, {messages} messages"
        print(f"\nscale {scale:g}: {rounds} rounds, medians ({what})")
        for part in parts:
            ratios = [x / b for x, b in zip(t[part], t["bare SQL"], strict=True)]
            print(
                f"  {part:<10} {1000 * median(t[part]):9.1f} ms  {median(ratios):7.2f} x bare SQL"
            )
        if "check" in parts:
            ratio = median([c / b for c, b in zip(t["check"], t["bare SQL"], strict=True)])
            verdict = "met" if ratio <= TARGET else "NOT met"
            print(f"  check / bare SQL {ratio:.2f} x   (target <= {TARGET} x: {verdict})")
    if len(scales) > 1:
        a, b = scales[0], scales[1]
        print(f"\nscale {a:g} / scale {b:g}, same day (near 1: the cost follows the day):")
        for part in parts:
            ratios = [x / y for x, y in zip(times[a][part], times[b][part], strict=True)]
            print(f"  {part:<10} {median(ratios):6.2f} x")


if __name__ == "__main__":
    main()
