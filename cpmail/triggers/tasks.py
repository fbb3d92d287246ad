"""Task reminders (due today, due next workday, overdue), budgets and hours."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cpmail.errors import InputError
from cpmail.store.schema import (
    CHECKED,
    DONE,
    budget_alerts,
    clients,
    job_costs,
    jobs,
    ledger,
    staff,
    tasks,
    time_entries,
    time_off,
)
from cpmail.triggers import Notification, Run, hours, key_of, key_of_column, money
from cpmail.workdays import SEARCH_DAYS

assignee = staff.alias("assignee")

TASK_COLUMNS = (
    tasks.c.id.label("task_id"),
    tasks.c.name.label("task_name"),
    tasks.c.due_date,
    tasks.c.budget_amount,
    tasks.c.estimated_hours,
    tasks.c.assignee_id,
    assignee.c.name.label("assignee_name"),
    jobs.c.id.label("job_id"),
    jobs.c.title.label("job_title"),
    jobs.c.client_id,
    clients.c.name.label("client_name"),
)


def _from_tasks() -> Any:
    return (
        tasks.join(jobs, jobs.c.id == tasks.c.job_id)
        .join(clients, clients.c.id == jobs.c.client_id)
        .outerjoin(assignee, assignee.c.id == tasks.c.assignee_id)
    )


def task_item(r: Any) -> dict[str, Any]:
    return {
        "task": {
            "id": r.task_id,
            "name": r.task_name,
            "due_date": r.due_date,
            "assignee": r.assignee_name or r.assignee_id,
        },
        "job": {"id": r.job_id, "title": r.job_title},
        "client": {"id": r.client_id, "name": r.client_name},
    }


def _open_on(run: Run) -> Any:
    """Open on the run date: not completed, or completed after it."""
    end = dt.datetime.combine(run.date + dt.timedelta(days=1), dt.time())
    return sa.or_(tasks.c.completed_at.is_(None), tasks.c.completed_at >= end)


def _task_notification(event: str, key: str, r: Any, **extra: Any) -> Notification:
    item = task_item(r)
    item.update(extra)
    return Notification(
        event=event,
        key=key,
        item=item,
        people={"assignee": r.assignee_id},
        client_id=r.client_id,
        thread=f"job:{r.job_id}",
    )


def due_today(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    q = (
        sa.select(*TASK_COLUMNS)
        .select_from(_from_tasks())
        .where(tasks.c.due_date == run.date, _open_on(run))
        .order_by(tasks.c.job_id, tasks.c.id)
    )
    for r in conn.execute(q):
        yield _task_notification(
            "task-due-today", key_of("task-due-today", r.task_id, when=run.date.isoformat()), r
        )


def due_tomorrow(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """Open tasks due after the run date, up to and including the assignee's next workday."""
    # All the time off the search for the next workday may step over (a long leave).
    horizon = run.date + dt.timedelta(days=SEARCH_DAYS)
    off: dict[str, set[dt.date]] = {}
    for o in conn.execute(
        sa.select(time_off.c.staff_id, time_off.c.date).where(
            time_off.c.date > run.date, time_off.c.date <= horizon
        )
    ):
        off.setdefault(o.staff_id, set()).add(o.date)
    # The latest next workday of anyone (each pattern of workdays, and whoever has time
    # off): only tasks due up to it are read, not the three weeks ahead.
    patterns = {"mon-fri", *conn.execute(sa.select(staff.c.workdays).distinct()).scalars()}
    try:
        ahead = [run.next_workday(p, frozenset()) for p in patterns]
        if off:
            for r in conn.execute(
                sa.select(staff.c.id, staff.c.workdays).where(staff.c.id.in_(list(off)))
            ):
                ahead.append(run.next_workday(r.workdays, frozenset(off[r.id])))
        last = max((d for d in ahead if d is not None), default=None)
    except InputError:  # someone's workdays do not parse: the assignee's own row says so
        last = horizon
    if last is None:
        return
    q = (
        sa.select(*TASK_COLUMNS, assignee.c.workdays)
        .select_from(_from_tasks())
        .where(tasks.c.due_date > run.date, tasks.c.due_date <= last, _open_on(run))
        .order_by(tasks.c.due_date, tasks.c.job_id, tasks.c.id)
    )
    for r in conn.execute(q):
        n = run.next_workday(r.workdays, frozenset(off.get(r.assignee_id or "", ())))
        if n is not None and r.due_date <= n:
            yield _task_notification(
                "task-due-tomorrow",
                key_of("task-due-tomorrow", r.task_id, when=r.due_date.isoformat()),
                r,
            )


# Later than any completion: bounds the search for tasks completed after the run date.
_NEVER = dt.datetime(9999, 12, 31)


def overdue(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    end = dt.datetime.combine(run.date + dt.timedelta(days=1), dt.time())
    base = sa.select(*TASK_COLUMNS).select_from(_from_tasks()).where(tasks.c.due_date < run.date)
    # Two queries, not one OR: the first uses the partial index of open tasks, the second
    # (which only finds anything for a run in the past) the index of completion times, so
    # the finished history is never scanned. Its range is bounded on both sides so that
    # SQLite, which has no statistics, prefers it to the range of due dates.
    rows = [
        *conn.execute(base.where(tasks.c.completed_at.is_(None))),
        *conn.execute(base.where(tasks.c.completed_at >= end, tasks.c.completed_at < _NEVER)),
    ]
    rows.sort(key=lambda r: (r.due_date, r.job_id, r.task_id))
    for r in rows:
        late = (run.date - r.due_date).days
        yield _task_notification(
            "task-overdue",
            key_of("task-overdue", r.task_id, when=run.date.isoformat()),
            r,
            days_late=late,
        )


def _in_ledger(event: str) -> Any:
    return sa.exists().where(ledger.c.key == key_of_column(event, tasks.c.id))


# ---------------------------------------------------------------- state triggers
#
# task-over-budget and hours-exceeded compare a task's totals, whatever the dates of its
# entries, with its budget and estimate. Totals can only have changed for tasks whose
# row, time entries or job costs are not yet marked checked (see schema.CHECKED), so
# only those tasks are summed: a check costs what changed, not the whole history.
STATE_TABLES = (tasks, time_entries, job_costs)


def _unchecked(table: sa.Table) -> Any:
    return table.c[CHECKED].is_distinct_from(DONE)


def _changed_tasks() -> Any:
    """Ids of tasks whose totals or limits may have changed since they were last checked."""
    return sa.union(
        sa.select(tasks.c.id.label("task_id")).where(_unchecked(tasks)),
        sa.select(time_entries.c.task_id).where(
            _unchecked(time_entries), time_entries.c.task_id.is_not(None)
        ),
        sa.select(job_costs.c.task_id).where(
            _unchecked(job_costs), job_costs.c.task_id.is_not(None)
        ),
    ).subquery()


def stamp_state_rows(engine: sa.Engine, run_id: str) -> None:
    """Claim the unchecked rows for this run (a crashed run's claims are taken over)."""
    with engine.begin() as conn:
        for t in STATE_TABLES:
            conn.execute(t.update().where(_unchecked(t)).values({CHECKED: run_id}))


def unstamp_state_rows(engine: sa.Engine, run_id: str) -> None:
    """Give back this run's claims on rows (it queued nothing): they read as before it."""
    with engine.begin() as conn:
        for t in STATE_TABLES:
            conn.execute(t.update().where(t.c[CHECKED] == run_id).values({CHECKED: None}))


def settle_state_rows(engine: sa.Engine, run_id: str) -> None:
    """Mark this run's rows checked, once its notifications are safely queued."""
    with engine.begin() as conn:
        for t in STATE_TABLES:
            # "Unchecked" as well (which the run id implies) lets the database find the
            # rows through the partial index of unchecked rows instead of scanning history.
            conn.execute(
                t.update().where(_unchecked(t), t.c[CHECKED] == run_id).values({CHECKED: DONE})
            )


def _state_rows(conn: sa.Connection, run: Run) -> list[Any]:
    """Changed tasks over their budget or their estimated hours, with their totals.

    Read once per run for both state triggers: the changed tasks, their job costs, and
    one pass over their time entries for both the amounts and the hours.
    """
    rows: list[Any] | None = run.shared.get("state")
    if rows is not None:
        return rows
    changed = sa.select(_changed_tasks().c.task_id)
    costs = (
        sa.select(job_costs.c.task_id, sa.func.sum(job_costs.c.amount).label("total"))
        .where(job_costs.c.task_id.in_(changed))
        .group_by(job_costs.c.task_id)
        .subquery()
    )
    time = (
        sa.select(
            time_entries.c.task_id,
            sa.func.sum(time_entries.c.amount).label("amount"),
            sa.func.sum(time_entries.c.hours).label("hours"),
        )
        .where(time_entries.c.task_id.in_(changed))
        .group_by(time_entries.c.task_id)
        .subquery()
    )
    # Sums compared at the columns' two decimals: SQLite adds its numbers as binary
    # floats, and 1.1 + 2.2 h is more than an estimate of 3.3 h there.
    actual = _two(sa.func.coalesce(costs.c.total, 0) + sa.func.coalesce(time.c.amount, 0))
    budget = _two(tasks.c.budget_amount)
    over = sa.and_(tasks.c.budget_amount.is_not(None), actual > budget)
    exceeded = sa.and_(
        tasks.c.estimated_hours.is_not(None), _two(time.c.hours) > _two(tasks.c.estimated_hours)
    )
    lowest = min(thresholds(run), default=None)
    reached: Any = sa.false()
    if lowest is not None:  # the lowest budget-alert threshold is reached
        reached = sa.and_(budget > 0, _two(actual * 100) >= _two(budget * lowest))
    q = (
        sa.select(
            *TASK_COLUMNS,
            sa.func.coalesce(costs.c.total, 0).label("costs"),
            sa.func.coalesce(time.c.amount, 0).label("time_amount"),
            time.c.hours.label("spent"),
            over.label("over"),
            exceeded.label("exceeded"),
            reached.label("reached"),
            _in_ledger("task-over-budget").label("told_over"),
            _in_ledger("hours-exceeded").label("told_exceeded"),
        )
        .select_from(
            _from_tasks()
            .outerjoin(costs, costs.c.task_id == tasks.c.id)
            .outerjoin(time, time.c.task_id == tasks.c.id)
        )
        .where(tasks.c.id.in_(changed), sa.or_(over, exceeded, reached))
        .order_by(tasks.c.job_id, tasks.c.id)
    )
    rows = list(conn.execute(q))
    run.shared["state"] = rows
    return rows


def _two(value: Any) -> Any:
    """``value`` rounded in SQL to two decimals, the scale of money and hours."""
    return sa.func.round(value, 2)


CENT = Decimal("0.01")


def _dec(value: Any) -> Decimal:
    """A money or hours value as read (a float on SQLite), exact at two decimals."""
    return Decimal(str(value)).quantize(CENT)


def over_budget(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """Tasks whose job costs plus time amounts exceed the budget (once per task)."""
    for r in _state_rows(conn, run):
        if not r.over or r.told_over:
            continue
        total = _dec(r.costs) + _dec(r.time_amount)
        budget = _dec(r.budget_amount)
        yield _task_notification(
            "task-over-budget",
            key_of("task-over-budget", r.task_id),
            r,
            budget={
                "budget": money(budget),
                "actual": money(total),
                "costs": money(r.costs),
                "time": money(r.time_amount),
                "over": money(total - budget),
            },
        )


def hours_exceeded(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """Tasks with more hours entered than estimated (once per task)."""
    for r in _state_rows(conn, run):
        if not r.exceeded or r.told_exceeded:
            continue
        yield _task_notification(
            "hours-exceeded",
            key_of("hours-exceeded", r.task_id),
            r,
            hours={
                "estimated": hours(r.estimated_hours),
                "entered": hours(r.spent),
                "over": hours(_dec(r.spent) - _dec(r.estimated_hours)),
            },
        )


def thresholds(run: Run) -> list[int]:
    """``[events.budget-alert] thresholds``: percentages of a task's budget (sorted)."""
    if not run.settings.event_enabled("budget-alert"):
        return []
    return sorted(run.settings["events.budget-alert.thresholds"])


def budget_alert(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """Alerts entered in the agency system, then the budget thresholds tasks reached."""
    yield from _relayed_alerts(conn, run)
    yield from _threshold_alerts(conn, run)


def _threshold_alerts(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """Per task, once per percentage of ``thresholds`` its actual cost has reached.

    Like task-over-budget this looks only at tasks whose totals may have changed
    since they were last checked, whatever the dates of their entries.
    """
    pcts = thresholds(run)
    if not pcts:
        return
    rows = [r for r in _state_rows(conn, run) if r.reached]
    if not rows:
        return
    wanted = [key_of("budget-alert", r.task_id, when=str(p)) for r in rows for p in pcts]
    told: set[str] = set()
    for i in range(0, len(wanted), 500):
        told.update(
            conn.execute(
                sa.select(ledger.c.key).where(ledger.c.key.in_(wanted[i : i + 500]))
            ).scalars()
        )
    for r in rows:
        budget = _dec(r.budget_amount)
        total = _dec(r.costs) + _dec(r.time_amount)
        due = [
            p
            for p in pcts
            if total * 100 >= budget * p
            and key_of("budget-alert", r.task_id, when=str(p)) not in told
        ]
        if not due:
            continue
        entries = _task_entries(conn, r.task_id)
        for p in due:
            cause = _crossing(entries, budget * p / 100)
            used = int(total * 100 / budget)
            item = task_item(r)
            item.update(
                alert={
                    "id": f"{r.task_id}:{p}",
                    "source": cause.source if cause else None,
                    "message": (
                        f"{p}% of the budget reached: {money(total)} of {money(budget)} ({used}%)"
                    ),
                    "entered_at": cause.at if cause else None,
                    "entered_by": (cause.name or cause.who) if cause else None,
                },
                threshold={
                    "percent": p,
                    "used": used,
                    "actual": money(total),
                    "budget": money(budget),
                    "costs": money(r.costs),
                    "time": money(r.time_amount),
                },
            )
            yield Notification(
                event="budget-alert",
                key=key_of("budget-alert", r.task_id, when=str(p)),
                item=item,
                people={"entered-by": cause.who if cause else None, "assignee": r.assignee_id},
                client_id=r.client_id,
                thread=f"job:{r.job_id}",
            )


@dataclass(frozen=True)
class _Entry:
    fresh: bool  # entered since the task was last checked
    at: dt.datetime | None  # (a job cost's entered_at may be empty)
    amount: Decimal
    source: str  # "an order", "a job cost", "a time entry"
    who: str | None
    name: str | None


def _task_entries(conn: sa.Connection, task_id: str) -> list[_Entry]:
    """A task's job costs and time entries with amounts, in the order they counted.

    Those already checked by an earlier run came first; then the new ones, by date
    (within each, a job cost without a date before those with one).
    """
    who = staff.alias("who")
    c = job_costs.c
    t = time_entries.c
    out = [
        _Entry(
            bool(r.fresh),
            r.entered_at,
            _dec(r.amount),
            "an order" if r.kind == "order" else "a job cost",
            r.entered_by,
            r.name,
        )
        for r in conn.execute(
            sa.select(
                c.entered_at,
                c.amount,
                c.kind,
                c.entered_by,
                who.c.name,
                _unchecked(job_costs).label("fresh"),
            )
            .select_from(job_costs.outerjoin(who, who.c.id == c.entered_by))
            .where(c.task_id == task_id, c.amount.is_not(None))
        )
    ]
    out += [
        _Entry(
            bool(r.fresh),
            dt.datetime.combine(r.work_date, dt.time()),
            _dec(r.amount),
            "a time entry",
            r.staff_id,
            r.name,
        )
        for r in conn.execute(
            sa.select(
                t.work_date,
                t.amount,
                t.staff_id,
                who.c.name,
                _unchecked(time_entries).label("fresh"),
            )
            .select_from(time_entries.outerjoin(who, who.c.id == t.staff_id))
            .where(t.task_id == task_id, t.amount.is_not(None))
        )
    ]
    out.sort(key=lambda e: (e.fresh, e.at is not None, e.at or dt.datetime.min))
    return out


def _crossing(entries: list[_Entry], limit: Decimal) -> _Entry | None:
    """The entry that brought the running total to ``limit``."""
    total = Decimal(0)
    for e in entries:
        total += e.amount
        if total >= limit:
            return e
    return None


def _relayed_alerts(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """``budget_alerts`` rows entered within the lookback window."""
    a = budget_alerts.c
    who = staff.alias("who")
    q = (
        sa.select(
            a.id,
            a.source,
            a.message,
            a.entered_by,
            a.entered_at,
            a.task_id,
            who.c.name.label("entered_by_name"),
            tasks.c.name.label("task_name"),
            jobs.c.id.label("job_id"),
            jobs.c.title.label("job_title"),
            jobs.c.client_id,
            clients.c.name.label("client_name"),
        )
        .select_from(
            budget_alerts.join(jobs, jobs.c.id == a.job_id)
            .join(clients, clients.c.id == jobs.c.client_id)
            .outerjoin(tasks, tasks.c.id == a.task_id)
            .outerjoin(who, who.c.id == a.entered_by)
        )
        .where(run.in_window(a.entered_at))
        .order_by(a.entered_at, a.id)
    )
    for r in conn.execute(q):
        yield Notification(
            event="budget-alert",
            key=key_of("budget-alert", r.id),
            item={
                "alert": {
                    "id": r.id,
                    "source": r.source,
                    "message": r.message,
                    "entered_at": r.entered_at,
                    "entered_by": r.entered_by_name or r.entered_by,
                },
                "task": {"id": r.task_id, "name": r.task_name} if r.task_id else None,
                "job": {"id": r.job_id, "title": r.job_title},
                "client": {"id": r.client_id, "name": r.client_name},
            },
            people={"entered-by": r.entered_by},
            client_id=r.client_id,
            thread=f"job:{r.job_id}",
        )
