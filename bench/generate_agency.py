"""A large generated agency in a cpmail home, for `bench/check_bench.py`.

Deterministic for a seed, and fast: the rows go straight into the SQLite file
that `cpmail init` made, with ``executemany`` through the raw sqlite3
connection (indexes dropped while the big tables fill, then made again from
the schema's own definitions).

The agency has three parts:

* **History** (scaled by ``--scale``; 1.0 = 1,000 staff, 200 clients, 100,000
  jobs, 1,000,000 tasks, about 5,000,000 time entries, and job costs,
  billings, payments, status changes, diary, homebase, change orders and
  calendar entries in proportion). It ends a month before the run date, is
  finished (every task completed), marked checked (``cpmail_checked = 'y'``)
  and has its ledger keys and its log of sent messages, as after five years
  of daily checks. Staff beyond the first 100 also entered their time for the
  last month (so they are never missing time).
* **Current work** (the same at every scale): 300 jobs of the first 20
  clients opened in the last month, their 3,000 tasks (some still open, some
  overdue), the first 100 staff's time for the last month, and the month's
  billings, payments, alerts, entries and calendar. Nothing of it is checked
  yet: the first `cpmail check` (on the day before the run date) looks at it.
* **The day** (``--day``; the same at every scale): 10,000 rows entered since
  that check — time entries, new jobs and tasks, task updates, status
  changes, costs, billings, payments, alerts, diary, homebase, change
  orders, calendar reminders and time off — touching only the first 100
  staff and 20 clients.

So two agencies of different scales differ in their history (and in the
staff and clients that appear only in it), and a check of the day has the
same work to do in both.

    python bench/generate_agency.py /tmp/agency --scale 1 --seed 1
    python bench/generate_agency.py /tmp/agency --day        # add the day's rows
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CPMAIL, user_env

RUN_DATE = dt.date(2026, 11, 18)  # a Wednesday; the day before is a workday too
SHARED_STAFF = 100  # staff the current work and the day touch
SHARED_CLIENTS = 20
CURRENT_JOBS = 300
TASKS_PER_JOB = 10
ENTRIES_PER_DAY = 4  # time entries per staff member per workday
ROLES = ("ae", "creative", "production", "media", "creative")
Row = tuple[str | int | float | None, ...]  # one row for ``Db.insert``
TEAM = 5  # client c's team: staff 5c … 5c+4 (modulo the staff count)
PRODUCTION = ("open", "in-progress", "on-hold", "review", "done")
BILLING = ("unbilled", "partial", "billed", "paid")
DAY_ROWS = {
    "time_entries": 5100,
    "tasks": 2000,  # 1,500 new, 500 changed
    "jobs": 200,
    "job_status_history": 500,
    "job_costs": 600,
    "billings": 300,
    "payments": 200,
    "budget_alerts": 100,
    "diary_entries": 300,
    "homebase_entries": 100,
    "change_orders": 200,
    "calendar_entries": 300,
    "time_off": 100,
}
assert sum(DAY_ROWS.values()) == 10_000


def ts(d: dt.date, hour: int = 9, minute: int = 0) -> str:
    """A timestamp as SQLAlchemy stores it in SQLite."""
    return f"{d.isoformat()} {hour:02d}:{minute:02d}:00.000000"


def workdays_back(end: dt.date, n: int) -> list[dt.date]:
    """The ``n`` Monday-to-Friday dates up to and including ``end``, oldest first."""
    out: list[dt.date] = []
    d = end
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d -= dt.timedelta(days=1)
    return out[::-1]


def workdays_between(start: dt.date, end: dt.date) -> list[dt.date]:
    days = (end - start).days + 1
    return [start + dt.timedelta(days=i) for i in range(days) if (start.weekday() + i) % 7 < 5]


# ------------------------------------------------------------------ the database


class Db:
    """The home's SQLite file, opened for bulk writing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("PRAGMA cache_size=-262144")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.rows: dict[str, int] = {}

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        before = self.conn.total_changes
        self.conn.executemany(sql, rows)
        self.rows[table] = self.rows.get(table, 0) + self.conn.total_changes - before

    def indexes(self, tables: Sequence[str]) -> list[str]:
        marks = ", ".join("?" * len(tables))
        return [
            r[0]
            for r in self.conn.execute(
                f"SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                f"AND tbl_name IN ({marks})",
                tuple(tables),
            )
        ]

    def close(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()


# ------------------------------------------------------------------ staff and clients


def staff_rows(n: int) -> Iterator[tuple[Any, ...]]:
    """Staff i's attributes depend on i alone, so the first 100 are the same at every scale."""
    for i in range(n):
        sup = None if i == 0 else f"S{(i // 10) * 10:04d}" if i % 10 else "S0000"
        yield (
            f"S{i:04d}",
            f"Staff{i:04d} Person{i % 37}",
            f"s{i:04d}@agency.test",
            None,
            sup,
            0.0 if i % 50 == 49 else 8.0,
            "mon-fri",
            ROLES[i % len(ROLES)],
            "cash-flow" if i % 100 == 0 else None,
            0 if i % 97 == 96 else 1,
        )


STAFF_COLUMNS = (
    "id",
    "name",
    "work_email",
    "username",
    "supervisor_id",
    "planned_hours",
    "workdays",
    "role",
    "access",
    "active",
)


def team_of(c: int, n_staff: int) -> list[tuple[str, str, str | None]]:
    """(staff, role, events) of client c's team."""
    out = []
    for k in range(TEAM):
        events = "job-opened,billing-created,status-changed" if k == 3 else None
        out.append((f"S{(TEAM * c + k) % n_staff:04d}", ROLES[k], events))
    return out


def rate(staff: int) -> float:
    return 100.0 + 15 * (staff % 10)


def base_rows(db: Db, n_staff: int, n_clients: int, n_vendors: int) -> None:
    db.insert("staff", STAFF_COLUMNS, staff_rows(n_staff))
    db.insert(
        "staff_opt_out",
        ("staff_id", "event"),
        [(f"S{i:04d}", "homebase-entry") for i in range(7, n_staff, 25)],
    )
    db.insert(
        "clients",
        ("id", "name", "billing_email"),
        [(f"C{c:03d}", f"Client {c}", f"ap@client{c}.test") for c in range(n_clients)],
    )
    db.insert(
        "vendors",
        ("id", "name", "email"),
        [(f"V{v:03d}", f"Vendor {v}", f"sales@vendor{v}.test") for v in range(n_vendors)],
    )
    db.insert(
        "client_team",
        ("client_id", "staff_id", "role", "events"),
        [(f"C{c:03d}", *m) for c in range(n_clients) for m in team_of(c, n_staff)],
    )
    codes: list[tuple[str, str, str, str | None]] = [
        (c, "production", c.replace("-", " ").title(), None) for c in PRODUCTION
    ]
    codes[2] = ("on-hold", "production", "On hold", "team:ae,team:production")
    codes += [(c, "billing", c.title(), None) for c in BILLING]
    db.insert("job_status_codes", ("code", "kind", "description", "notify"), codes)


# ------------------------------------------------------------------ history


# Complexity above 15 on purpose: generated history: one branch per kind of row.
def history(db: Db, scale: float, seed: int, date: dt.date) -> None:  # noqa: C901
    rng = random.Random(f"{seed}:history:{scale}")
    n_staff = max(SHARED_STAFF, round(1000 * scale))
    n_clients = max(SHARED_CLIENTS, round(200 * scale))
    n_jobs = round(100_000 * scale)
    n_entries = round(5_000_000 * scale)
    base_rows(db, n_staff, n_clients, max(5, round(50 * scale)))

    end = date - dt.timedelta(days=31)  # history ends a month before the run date
    days = workdays_back(end, round(n_entries / (n_staff * ENTRIES_PER_DAY)))
    # Jobs open from 60 days before the first time entry to 60 days before the end, so
    # that their tasks are due, done and billed before the history ends.
    first = days[0] - dt.timedelta(days=60)
    last = end - dt.timedelta(days=60)
    job_span = (last - first).days
    opened = [first + dt.timedelta(days=j * job_span // n_jobs) for j in range(n_jobs)]
    client = [rng.randrange(n_clients) for _ in range(n_jobs)]
    y = "y"

    db.insert(
        "jobs",
        ("id", "client_id", "title", "opened_at", "production_status", "billing_status"),
        (
            (f"J{j:06d}", f"C{client[j]:03d}", f"Job {j} campaign", ts(opened[j]), "done", "paid")
            for j in range(n_jobs)
        ),
    )

    def status_rows() -> Iterator[tuple[Any, ...]]:
        for j in range(n_jobs):
            team = team_of(client[j], n_staff)
            for n, (old, new, after) in enumerate(
                (("open", "in-progress", 3), ("in-progress", "done", 55))
            ):
                at = ts(opened[j] + dt.timedelta(days=after), 11)
                yield (f"H{j:06d}{n}", f"J{j:06d}", "production_status", old, new, at, team[0][0])

    db.insert(
        "job_status_history",
        ("id", "job_id", "field", "old_value", "new_value", "changed_at", "changed_by"),
        status_rows(),
    )

    def task_rows() -> Iterator[tuple[Any, ...]]:
        for j in range(n_jobs):
            team = team_of(client[j], n_staff)
            for k in range(TASKS_PER_JOB):
                due = opened[j] + dt.timedelta(days=7 + 5 * k)
                done = due - dt.timedelta(days=rng.randrange(4))
                yield (
                    f"K{j:06d}{k}",
                    f"J{j:06d}",
                    f"Task {k} of job {j}",
                    team[k % TEAM][0],
                    due.isoformat(),
                    ts(done, 16),
                    float(500 + 250 * rng.randrange(20)),
                    float(4 + 2 * rng.randrange(18)),
                    y,
                )

    db.insert(
        "tasks",
        (
            "id",
            "job_id",
            "name",
            "assignee_id",
            "due_date",
            "completed_at",
            "budget_amount",
            "estimated_hours",
            "cpmail_checked",
        ),
        task_rows(),
    )

    def job_at(d: dt.date) -> int:
        """The index of the first job opened on or after d."""
        return min(n_jobs - 1, max(0, -(-(d - first).days * n_jobs // job_span)))

    def jobs_open_on(d: dt.date) -> tuple[int, int]:
        """Indexes of the jobs opened 7 to 60 days before d (the newest, after the end)."""
        lo = job_at(min(d, end) - dt.timedelta(days=60))
        hi = job_at(min(d - dt.timedelta(days=7), last))
        return lo, max(hi, lo + 1)

    hours = ((2.0, 2.0, 2.0, 2.0), (1.5, 2.5, 2.0, 2.0), (3.0, 1.0, 2.5, 1.5))

    def entry_rows() -> Iterator[tuple[Any, ...]]:
        n = 0
        recent = workdays_between(end + dt.timedelta(days=1), date - dt.timedelta(days=1))
        for d in days + recent:
            lo, hi = jobs_open_on(d)
            wd = d.isoformat()
            staff_range = range(n_staff) if d <= end else range(SHARED_STAFF, n_staff)
            for s in staff_range:
                sid = f"S{s:04d}"
                r = rate(s)
                for h in hours[rng.randrange(3)]:
                    j = rng.randrange(lo, hi)
                    n += 1
                    yield (
                        f"T{n:08d}",
                        sid,
                        f"J{j:06d}",
                        f"K{j:06d}{rng.randrange(TASKS_PER_JOB)}",
                        wd,
                        h,
                        h * r,
                        y,
                    )

    db.insert(
        "time_entries",
        ("id", "staff_id", "job_id", "task_id", "work_date", "hours", "amount", "cpmail_checked"),
        entry_rows(),
    )

    def cost_rows() -> Iterator[tuple[Any, ...]]:
        for j in range(n_jobs):
            for n in range(3):
                k = rng.randrange(TASKS_PER_JOB)
                at = ts(opened[j] + dt.timedelta(days=10 + 10 * n), 14)
                yield (
                    f"X{j:06d}{n}",
                    f"J{j:06d}",
                    f"K{j:06d}{k}",
                    "order" if n == 0 else "cost",
                    float(50 + 10 * rng.randrange(100)),
                    team_of(client[j], n_staff)[2][0],
                    at,
                    y,
                )

    db.insert(
        "job_costs",
        ("id", "job_id", "task_id", "kind", "amount", "entered_by", "entered_at", "cpmail_checked"),
        cost_rows(),
    )
    db.insert(
        "budget_alerts",
        ("id", "job_id", "task_id", "source", "message", "entered_by", "entered_at"),
        (
            (
                f"A{j:06d}",
                f"J{j:06d}",
                f"K{j:06d}0",
                "estimate",
                "Estimate nearly spent",
                team_of(client[j], n_staff)[0][0],
                ts(opened[j] + dt.timedelta(days=20), 10),
            )
            for j in range(0, n_jobs, 10)
        ),
    )
    db.insert(
        "billings",
        ("id", "job_id", "client_id", "number", "amount", "created_at", "due_date"),
        (
            (
                f"B{j:06d}",
                f"J{j:06d}",
                f"C{client[j]:03d}",
                f"INV-{j:06d}",
                float(1000 + 100 * rng.randrange(200)),
                ts(opened[j] + dt.timedelta(days=45), 15),
                (opened[j] + dt.timedelta(days=75)).isoformat(),
            )
            for j in range(n_jobs)
        ),
    )
    db.insert(
        "payments",
        ("id", "client_id", "billing_id", "amount", "received_at"),
        (
            (
                f"P{j:06d}",
                f"C{client[j]:03d}",
                f"B{j:06d}",
                1000.0,
                ts(opened[j] + dt.timedelta(days=58), 12),
            )
            for j in range(n_jobs)
            if j % 10
        ),
    )
    db.insert(
        "diary_entries",
        ("id", "kind", "party_id", "subject", "body", "entered_by", "entered_at", "notify"),
        (
            (
                f"D{j:06d}",
                "client",
                f"C{client[j]:03d}",
                f"Call about job {j}",
                "Notes of the call.",
                team_of(client[j], n_staff)[0][0],
                ts(opened[j] + dt.timedelta(days=5), 10),
                ",".join(m[0] for m in team_of(client[j], n_staff)[:2]),
            )
            for j in range(0, n_jobs, 2)
        ),
    )
    db.insert(
        "homebase_entries",
        ("id", "subject", "body", "entered_by", "entered_at", "notify"),
        (
            (
                f"M{j:06d}",
                f"Notice {j}",
                "Office notice.",
                f"S{j % n_staff:04d}",
                ts(opened[j], 8),
                f"S{(j + 1) % n_staff:04d},S{(j + 2) % n_staff:04d}",
            )
            for j in range(0, n_jobs, 10)
        ),
    )
    db.insert(
        "change_orders",
        ("id", "job_id", "description", "amount", "entered_by", "entered_at"),
        (
            (
                f"O{j:06d}",
                f"J{j:06d}",
                "Extra round of changes",
                750.0,
                team_of(client[j], n_staff)[0][0],
                ts(opened[j] + dt.timedelta(days=30), 13),
            )
            for j in range(0, n_jobs, 5)
        ),
    )
    db.insert(
        "calendar_entries",
        ("id", "title", "starts_at", "ends_at", "remind_at", "location", "notes", "attendees"),
        (
            (
                f"E{j:06d}",
                f"Review of job {j}",
                ts(opened[j] + dt.timedelta(days=15), 14),
                ts(opened[j] + dt.timedelta(days=15), 15),
                ts(opened[j] + dt.timedelta(days=15), 9),
                "Room 2",
                None,
                ",".join(m[0] for m in team_of(client[j], n_staff)[:3]),
            )
            for j in range(0, n_jobs, 2)
        ),
    )
    db.insert(
        "time_off",
        ("staff_id", "date"),
        (
            (f"S{s:04d}", d.isoformat())
            for s in range(n_staff)
            for d in days[s % 17 :: 17]  # about 15 days a year
        ),
    )
    history_log(db, n_jobs, n_staff, client, opened)


def history_log(
    db: Db, n_jobs: int, n_staff: int, client: list[int], opened: list[dt.date]
) -> None:
    """The ledger keys and the log of sent messages that five years of checks left."""

    def keys() -> Iterator[tuple[str, str, str]]:
        for j in range(n_jobs):
            at = ts(opened[j], 6)
            yield f"job-opened:J{j:06d}", "job-opened", at
            yield f"billing-created:B{j:06d}", "billing-created", at
            if j % 10:
                yield f"payment-received:P{j:06d}", "payment-received", at
            yield f"status-changed:H{j:06d}0", "status-changed", at
            yield f"status-changed:H{j:06d}1", "status-changed", at
            for k in range(TASKS_PER_JOB):
                due = (opened[j] + dt.timedelta(days=7 + 5 * k)).isoformat()
                yield f"task-due-today:K{j:06d}{k}:{due}", "task-due-today", at
            if j % 2 == 0:
                yield f"diary-entry:D{j:06d}", "diary-entry", at
                remind = (opened[j] + dt.timedelta(days=15)).isoformat()
                yield f"calendar-reminder:E{j:06d}:{remind}T09:00", "calendar-reminder", at
            if j % 5 == 0:
                yield f"change-order:O{j:06d}", "change-order", at
            if j % 10 == 0:
                yield f"budget-alert:A{j:06d}", "budget-alert", at
                yield f"homebase-entry:M{j:06d}", "homebase-entry", at

    db.insert("ledger", ("key", "event", "created_at"), keys())

    def log() -> Iterator[tuple[Any, ...]]:
        n = 0
        for j in range(n_jobs):
            at = ts(opened[j], 6)
            for m in range(5):
                n += 1
                to = f"s{(TEAM * client[j] + m) % n_staff:04d}@agency.test"
                yield (
                    f"job-opened:J{j:06d}",
                    "job-opened",
                    "",
                    "cpmail@agency.test",
                    to,
                    "",
                    f"[C&P] New job {j}: Job {j} campaign",
                    f"<{n:032x}@agency.test>",
                    4000,
                    "sent",
                    1,
                    at,
                    at,
                    at,
                    f"{j:012x}",
                )

    db.insert(
        "messages",
        (
            "ledger_key",
            "event",
            "account",
            "from_addr",
            "to_addrs",
            "pending_rcpts",
            "subject",
            "message_id",
            "size",
            "status",
            "attempts",
            "created_at",
            "queued_at",
            "sent_at",
            "run_id",
        ),
        log(),
    )


# ------------------------------------------------------------------ current work


def current(db: Db, seed: int, date: dt.date) -> None:
    """The last month's work of the first 20 clients: the same at every scale."""
    rng = random.Random(f"{seed}:current")
    n_staff = db.conn.execute("SELECT count(*) FROM staff").fetchone()[0]
    month = workdays_between(date - dt.timedelta(days=30), date - dt.timedelta(days=1))
    jobs = []
    for j in range(CURRENT_JOBS):
        c = j % SHARED_CLIENTS
        jobs.append((f"JC{j:04d}", c, month[j * len(month) // CURRENT_JOBS]))
    db.insert(
        "jobs",
        ("id", "client_id", "title", "opened_at", "production_status", "billing_status"),
        [
            (jid, f"C{c:03d}", f"Current job {jid}", ts(o, 10), "in-progress", "unbilled")
            for jid, c, o in jobs
        ],
    )
    tasks = []  # (id, job, client, assignee index, due, completed)
    for jid, c, o in jobs:
        team = team_of(c, n_staff)
        for k in range(TASKS_PER_JOB):
            due = o + dt.timedelta(days=2 + rng.randrange(29))
            done = None
            if due < date - dt.timedelta(days=3) and rng.random() < 0.85:
                done = ts(min(due, date - dt.timedelta(days=2)), 16)
            tasks.append((f"{jid.replace('JC', 'KC')}{k}", jid, c, team[k % TEAM][0], due, done))
    db.insert(
        "tasks",
        (
            "id",
            "job_id",
            "name",
            "assignee_id",
            "due_date",
            "completed_at",
            "budget_amount",
            "estimated_hours",
        ),
        [
            (
                tid,
                jid,
                f"Task {tid}",
                a,
                due.isoformat(),
                done,
                float(1000 + 250 * rng.randrange(20)),
                float(8 + 2 * rng.randrange(12)),
            )
            for tid, jid, _c, a, due, done in tasks
        ],
    )
    opened = {jid: o for jid, _c, o in jobs}
    by_staff: dict[str, list[tuple[str, str, dt.date]]] = {}
    for tid, jid, _c, a, _due, _done in tasks:
        by_staff.setdefault(a, []).append((tid, jid, opened[jid]))
    entries = []
    n = 0
    for d in month[:-1]:  # the day before the run date comes with the day
        for s in range(SHARED_STAFF):
            sid = f"S{s:04d}"
            mine = [t for t in by_staff.get(sid, []) if t[2] <= d] or by_staff.get(sid, [])
            for h in (2.0, 2.0, 2.5, 1.5):
                tid, jid, _ = mine[rng.randrange(len(mine))]
                n += 1
                entries.append((f"TC{n:06d}", sid, jid, tid, d.isoformat(), h, h * rate(s)))
    db.insert(
        "time_entries",
        ("id", "staff_id", "job_id", "task_id", "work_date", "hours", "amount"),
        entries,
    )
    events(db, rng, "C", jobs, tasks, month, n_staff, counts=CURRENT_COUNTS)


CURRENT_COUNTS = {
    "job_costs": 1000,
    "job_status_history": 300,
    "billings": 100,
    "payments": 60,
    "budget_alerts": 30,
    "diary_entries": 60,
    "homebase_entries": 20,
    "change_orders": 40,
    "calendar_entries": 60,
    "time_off": 50,
}


def events(
    db: Db,
    rng: random.Random,
    tag: str,
    jobs: Sequence[tuple[str, int, dt.date]],
    tasks: Sequence[tuple[str, str, int, str, dt.date, str | None]],
    dates: Sequence[dt.date],
    n_staff: int,
    counts: dict[str, int],
    *,
    remind: Sequence[dt.date] = (),
) -> None:
    """Costs, status changes, billings, payments, alerts, entries, calendar and time off."""

    def when() -> str:
        return ts(dates[rng.randrange(len(dates))], 8 + rng.randrange(10), rng.randrange(60))

    def member(c: int, k: int | None = None) -> str:
        return team_of(c, n_staff)[rng.randrange(TEAM) if k is None else k][0]

    rows: list[Row] = []
    for n in range(counts["job_costs"]):
        tid, jid, c, *_ = tasks[rng.randrange(len(tasks))]
        amount = float(100 + 50 * rng.randrange(40))
        rows.append((f"X{tag}{n:05d}", jid, tid, "cost", amount, member(c, 2), when()))
    db.insert(
        "job_costs",
        ("id", "job_id", "task_id", "kind", "amount", "entered_by", "entered_at"),
        rows,
    )
    rows = []
    status: dict[tuple[str, str], str] = {}
    for n in range(counts["job_status_history"]):
        jid, c, _ = jobs[rng.randrange(len(jobs))]
        if n % 4 == 3:
            old = status.get((jid, "b"), "unbilled")
            new = BILLING[(BILLING.index(old) + 1) % len(BILLING)]
            status[(jid, "b")] = new
            fld = "billing_status"
        else:
            old = status.get((jid, "p"), "in-progress")
            new = PRODUCTION[(PRODUCTION.index(old) + 1) % len(PRODUCTION)]
            status[(jid, "p")] = new
            fld = "production_status"
        rows.append((f"H{tag}{n:05d}", jid, fld, old, new, when(), member(c, 0)))
    db.insert(
        "job_status_history",
        ("id", "job_id", "field", "old_value", "new_value", "changed_at", "changed_by"),
        rows,
    )
    for (jid, which), value in status.items():
        col = "billing_status" if which == "b" else "production_status"
        db.conn.execute(f"UPDATE jobs SET {col} = ? WHERE id = ?", (value, jid))
    bills = []
    for n in range(counts["billings"]):
        jid, c, _ = jobs[rng.randrange(len(jobs))]
        at = when()
        due = (dt.date.fromisoformat(at[:10]) + dt.timedelta(days=30)).isoformat()
        bills.append((f"B{tag}{n:05d}", jid, f"C{c:03d}", f"INV-{tag}{n:05d}", 2500.0, at, due))
    db.insert(
        "billings",
        ("id", "job_id", "client_id", "number", "amount", "created_at", "due_date"),
        bills,
    )
    db.insert(
        "payments",
        ("id", "client_id", "billing_id", "amount", "received_at"),
        [
            (f"P{tag}{n:05d}", b[2], b[0], 2500.0, when())
            for n, b in enumerate(bills[: counts["payments"]])
        ],
    )
    rows = []
    for n in range(counts["budget_alerts"]):
        tid, jid, c, *_ = tasks[rng.randrange(len(tasks))]
        rows.append((f"A{tag}{n:05d}", jid, tid, "time", "Hours nearly spent", member(c), when()))
    db.insert(
        "budget_alerts",
        ("id", "job_id", "task_id", "source", "message", "entered_by", "entered_at"),
        rows,
    )
    rows = []
    for n in range(counts["diary_entries"]):
        c = rng.randrange(SHARED_CLIENTS)
        notify = ",".join(dict.fromkeys(member(c) for _ in range(1 + rng.randrange(3))))
        rows.append(
            (
                f"D{tag}{n:05d}",
                "client",
                f"C{c:03d}",
                f"Call with client {c}",
                "They want the launch moved.",
                member(c, 0),
                when(),
                notify,
            )
        )
    db.insert(
        "diary_entries",
        ("id", "kind", "party_id", "subject", "body", "entered_by", "entered_at", "notify"),
        rows,
    )
    rows = []
    for n in range(counts["homebase_entries"]):
        who = [f"S{rng.randrange(SHARED_STAFF):04d}" for _ in range(2 + rng.randrange(4))]
        rows.append(
            (
                f"M{tag}{n:05d}",
                f"Notice {tag}{n}",
                "The studio is closed on Friday afternoon.",
                who[0],
                when(),
                ",".join(dict.fromkeys(who)),
            )
        )
    db.insert(
        "homebase_entries",
        ("id", "subject", "body", "entered_by", "entered_at", "notify"),
        rows,
    )
    rows = []
    for n in range(counts["change_orders"]):
        jid, c, _ = jobs[rng.randrange(len(jobs))]
        rows.append(
            (f"O{tag}{n:05d}", jid, "Client asked for a new cut", 1200.0, member(c), when())
        )
    db.insert(
        "change_orders",
        ("id", "job_id", "description", "amount", "entered_by", "entered_at"),
        rows,
    )
    rows = []
    for n in range(counts["calendar_entries"]):
        c = rng.randrange(SHARED_CLIENTS)
        day = remind[n % len(remind)] if remind else dates[rng.randrange(len(dates))]
        start = day + dt.timedelta(days=rng.randrange(3))
        attendees = ",".join(dict.fromkeys(member(c) for _ in range(2 + rng.randrange(3))))
        rows.append(
            (
                f"E{tag}{n:05d}",
                f"Meeting {tag}{n} with client {c}",
                ts(start, 14),
                ts(start, 15),
                ts(day, 8 + rng.randrange(4)),
                "Room 1",
                "Bring the boards.",
                attendees,
            )
        )
    db.insert(
        "calendar_entries",
        ("id", "title", "starts_at", "ends_at", "remind_at", "location", "notes", "attendees"),
        rows,
    )
    # One day off each for different staff: in the past month (current work) or in the
    # next two weeks (the day: some next workdays move).
    pick = [dates[-1] + dt.timedelta(days=2 + n) for n in range(14)] if remind else dates
    db.insert(
        "time_off",
        ("staff_id", "date"),
        [(f"S{n:04d}", pick[(7 * n) % len(pick)].isoformat()) for n in range(counts["time_off"])],
    )


# ------------------------------------------------------------------ the day


def day(db: Db, seed: int, date: dt.date) -> dict[str, int]:
    """The rows entered between the check of the day before and the check of ``date``."""
    rng = random.Random(f"{seed}:day")
    before = dict(db.rows)
    n_staff = db.conn.execute("SELECT count(*) FROM staff").fetchone()[0]
    prior = date - dt.timedelta(days=1)
    n_new_jobs = DAY_ROWS["jobs"]
    jobs = [(f"JD{j:04d}", j % SHARED_CLIENTS, prior) for j in range(n_new_jobs)]
    db.conn.execute("BEGIN")
    db.insert(
        "jobs",
        ("id", "client_id", "title", "opened_at", "production_status", "billing_status"),
        [(jid, f"C{c:03d}", f"New job {jid}", ts(o, 15), "open", "unbilled") for jid, c, o in jobs],
    )
    current_jobs = [
        (r[0], int(r[1][1:]), dt.date.fromisoformat(r[2][:10]))
        for r in db.conn.execute(
            "SELECT id, client_id, opened_at FROM jobs WHERE id LIKE 'JC%' ORDER BY id"
        )
    ]
    open_tasks = [
        (r[0], r[1], int(r[2][2:]) % SHARED_CLIENTS, r[3], dt.date.fromisoformat(r[4]), r[5])
        for r in db.conn.execute(
            "SELECT id, job_id, job_id, assignee_id, due_date, completed_at FROM tasks "
            "WHERE id LIKE 'KC%' ORDER BY id"
        )
    ]
    # 1,500 new tasks (100 due today, 100 on the next workday, the rest later) …
    new_tasks = []
    for n in range(1500):
        jid, c, _ = jobs[n % n_new_jobs] if n < 1000 else current_jobs[n % len(current_jobs)]
        due = date + dt.timedelta(
            days=0 if n % 15 == 0 else 1 if n % 15 == 1 else 2 + rng.randrange(20)
        )
        new_tasks.append((f"KD{n:05d}", jid, c, team_of(c, n_staff)[n % TEAM][0], due, None))
    # … and 500 changed: 200 completed, 150 moved to today, 150 with a smaller budget.
    changed = rng.sample([t for t in open_tasks if t[5] is None], 500)
    db.insert(
        "tasks",
        (
            "id",
            "job_id",
            "name",
            "assignee_id",
            "due_date",
            "completed_at",
            "budget_amount",
            "estimated_hours",
        ),
        [
            (
                tid,
                jid,
                f"Task {tid}",
                a,
                due.isoformat(),
                None,
                float(1000 + 250 * rng.randrange(20)),
                float(8 + 2 * rng.randrange(12)),
            )
            for tid, jid, _c, a, due, _ in new_tasks
        ],
    )
    for n, t in enumerate(changed):
        value: str | float
        if n < 200:
            sql, value = "completed_at = ?", ts(prior, 17)
        elif n < 350:
            sql, value = "due_date = ?", date.isoformat()
        else:
            sql, value = "budget_amount = ?", 600.0
        db.conn.execute(
            f"UPDATE tasks SET {sql}, cpmail_checked = NULL WHERE id = ?", (value, t[0])
        )
    db.rows["tasks"] += len(changed)
    # Time: the day before for the first 100 staff (one in ten short), and late entries.
    all_tasks = [*open_tasks, *new_tasks]
    by_staff: dict[str, list[tuple[str, str]]] = {}
    for t in all_tasks:
        by_staff.setdefault(t[3], []).append((t[0], t[1]))
    entries = []
    n = 0
    for s in range(SHARED_STAFF):
        sid = f"S{s:04d}"
        split = (2.0, 2.0, 1.0) if s % 10 == 3 else (2.0, 2.0, 2.5, 1.5)
        for h in split:
            tid, jid = by_staff[sid][rng.randrange(len(by_staff[sid]))]
            n += 1
            entries.append((f"TD{n:05d}", sid, jid, tid, prior.isoformat(), h, h * rate(s)))
    late = workdays_back(prior - dt.timedelta(days=1), 10)
    while n < DAY_ROWS["time_entries"]:
        s = rng.randrange(SHARED_STAFF)
        sid = f"S{s:04d}"
        tid, jid = by_staff[sid][rng.randrange(len(by_staff[sid]))]
        h = float(1 + rng.randrange(4))
        n += 1
        entries.append(
            (
                f"TD{n:05d}",
                sid,
                jid,
                tid,
                late[rng.randrange(len(late))].isoformat(),
                h,
                h * rate(s),
            )
        )
    db.insert(
        "time_entries",
        ("id", "staff_id", "job_id", "task_id", "work_date", "hours", "amount"),
        entries,
    )
    counts = {k: DAY_ROWS[k] for k in CURRENT_COUNTS}
    tasks = [*[t for t in open_tasks if t[5] is None], *new_tasks]
    events(
        db,
        rng,
        "D",
        [*jobs, *current_jobs],
        tasks,
        [prior],
        n_staff,
        counts,
        remind=[date],
    )
    db.conn.execute("COMMIT")
    return {t: db.rows.get(t, 0) - before.get(t, 0) for t in db.rows}


# ------------------------------------------------------------------ the home


def cli(home: Path, *args: str) -> None:
    proc = subprocess.run(
        [CPMAIL, "--home", str(home), *args], env=user_env(), capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"cpmail {' '.join(args)}: {proc.stderr.decode(errors='replace')}")


BIG_TABLES = (
    "jobs",
    "job_status_history",
    "tasks",
    "time_entries",
    "job_costs",
    "budget_alerts",
    "billings",
    "payments",
    "diary_entries",
    "homebase_entries",
    "change_orders",
    "calendar_entries",
    "time_off",
    "ledger",
    "messages",
)


def generate(home: Path, scale: float, seed: int, date: dt.date) -> dict[str, int]:
    """A new home with the history and the current work (not the day); return rows per table."""
    cli(home, "init")
    cli(home, "config", "set", "agency.name", "Generated Agency")
    cli(home, "config", "set", "agency.timezone", "America/New_York")
    cli(home, "config", "manager", "--name", "Office Manager", "--email", "office@agency.test")
    db = Db(home / "cpmail.db")
    made = db.indexes(BIG_TABLES)
    for sql in made:
        name = sql.split(" ON ")[0].split()[-1]
        db.conn.execute(f"DROP INDEX {name}")
    db.conn.execute("BEGIN")
    history(db, scale, seed, date)
    current(db, seed, date)
    db.conn.execute("COMMIT")
    for sql in made:
        db.conn.execute(sql)
    rows = dict(db.rows)
    db.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("home", type=Path, help="a new cpmail home (made with `cpmail init`)")
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 1,000 staff, 100k jobs …")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--date", type=dt.date.fromisoformat, default=RUN_DATE, help="run date")
    ap.add_argument("--day", action="store_true", help="add the day's 10,000 rows to the home")
    args = ap.parse_args()
    start = time.perf_counter()
    if args.day:
        db = Db(args.home / "cpmail.db")
        rows = day(db, args.seed, args.date)
        db.close()
    else:
        if (args.home / "cpmail.db").exists():
            raise SystemExit(f"{args.home} holds a database already; give a new folder.")
        rows = generate(args.home, args.scale, args.seed, args.date)
    for table, n in rows.items():
        print(f"  {table:<20} {n:>10,}")
    print(f"  {'total':<20} {sum(rows.values()):>10,}   in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
