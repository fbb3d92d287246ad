"""Task reminders (due today, due next workday, overdue), budgets and hours."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cpmail.people import parse_workdays
from cpmail.store.schema import (
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
from cpmail.triggers import Notification, Run, hours, money

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
            "task-due-today", f"task-due-today:{r.task_id}:{run.date.isoformat()}", r
        )


def due_tomorrow(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """Open tasks due after the run date, up to and including the assignee's next workday."""
    horizon = run.date + dt.timedelta(days=21)
    q = (
        sa.select(*TASK_COLUMNS, assignee.c.workdays)
        .select_from(_from_tasks())
        .where(tasks.c.due_date > run.date, tasks.c.due_date <= horizon, _open_on(run))
        .order_by(tasks.c.due_date, tasks.c.job_id, tasks.c.id)
    )
    rows = conn.execute(q).all()
    if not rows:
        return
    off: dict[str, set[dt.date]] = {}
    for o in conn.execute(
        sa.select(time_off.c.staff_id, time_off.c.date).where(
            time_off.c.date > run.date, time_off.c.date <= horizon
        )
    ):
        off.setdefault(o.staff_id, set()).add(o.date)
    next_day: dict[str | None, dt.date | None] = {}
    for r in rows:
        if r.assignee_id not in next_day:
            days = parse_workdays(r.workdays or "mon-fri")
            next_day[r.assignee_id] = run.calendar.next_workday(
                run.date, days, off.get(r.assignee_id or "", ())
            )
        n = next_day[r.assignee_id]
        if n is not None and r.due_date <= n:
            yield _task_notification(
                "task-due-tomorrow", f"task-due-tomorrow:{r.task_id}:{r.due_date.isoformat()}", r
            )


def overdue(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    end = dt.datetime.combine(run.date + dt.timedelta(days=1), dt.time())
    base = sa.select(*TASK_COLUMNS).select_from(_from_tasks()).where(tasks.c.due_date < run.date)
    # Two queries, not one OR: the first uses the partial index of open tasks, so the
    # finished history is never scanned; the second only matters for a run in the past.
    rows = [
        *conn.execute(base.where(tasks.c.completed_at.is_(None))),
        *conn.execute(base.where(tasks.c.completed_at >= end)),
    ]
    rows.sort(key=lambda r: (r.due_date, r.job_id, r.task_id))
    for r in rows:
        late = (run.date - r.due_date).days
        yield _task_notification(
            "task-overdue", f"task-overdue:{r.task_id}:{run.date.isoformat()}", r, days_late=late
        )


def _not_in_ledger(prefix: str) -> Any:
    key = sa.literal(prefix) + tasks.c.id
    return ~sa.exists().where(ledger.c.key == key)


def over_budget(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """Tasks whose job costs plus time amounts exceed the budget (once per task)."""
    costs = (
        sa.select(job_costs.c.task_id, sa.func.sum(job_costs.c.amount).label("amount"))
        .where(job_costs.c.task_id.is_not(None))
        .group_by(job_costs.c.task_id)
        .subquery()
    )
    time = (
        sa.select(time_entries.c.task_id, sa.func.sum(time_entries.c.amount).label("amount"))
        .where(time_entries.c.task_id.is_not(None))
        .group_by(time_entries.c.task_id)
        .subquery()
    )
    actual = sa.func.coalesce(costs.c.amount, 0) + sa.func.coalesce(time.c.amount, 0)
    q = (
        sa.select(
            *TASK_COLUMNS,
            sa.func.coalesce(costs.c.amount, 0).label("costs"),
            sa.func.coalesce(time.c.amount, 0).label("time_amount"),
        )
        .select_from(
            _from_tasks()
            .outerjoin(costs, costs.c.task_id == tasks.c.id)
            .outerjoin(time, time.c.task_id == tasks.c.id)
        )
        .where(
            tasks.c.budget_amount.is_not(None),
            actual > tasks.c.budget_amount,
            _not_in_ledger("task-over-budget:"),
        )
        .order_by(tasks.c.job_id, tasks.c.id)
    )
    for r in conn.execute(q):
        total = Decimal(r.costs) + Decimal(r.time_amount)
        budget = Decimal(r.budget_amount)
        yield _task_notification(
            "task-over-budget",
            f"task-over-budget:{r.task_id}",
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
    spent = (
        sa.select(time_entries.c.task_id, sa.func.sum(time_entries.c.hours).label("hours"))
        .where(time_entries.c.task_id.is_not(None))
        .group_by(time_entries.c.task_id)
        .subquery()
    )
    q = (
        sa.select(*TASK_COLUMNS, spent.c.hours.label("spent"))
        .select_from(_from_tasks().join(spent, spent.c.task_id == tasks.c.id))
        .where(
            tasks.c.estimated_hours.is_not(None),
            spent.c.hours > tasks.c.estimated_hours,
            _not_in_ledger("hours-exceeded:"),
        )
        .order_by(tasks.c.job_id, tasks.c.id)
    )
    for r in conn.execute(q):
        yield _task_notification(
            "hours-exceeded",
            f"hours-exceeded:{r.task_id}",
            r,
            hours={
                "estimated": hours(r.estimated_hours),
                "entered": hours(r.spent),
                "over": hours(Decimal(r.spent) - Decimal(r.estimated_hours)),
            },
        )


def budget_alert(conn: sa.Connection, run: Run) -> Iterator[Notification]:
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
            key=f"budget-alert:{r.id}",
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
