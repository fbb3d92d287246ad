"""job-opened, status-changed and change-order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from cpmail.store.schema import (
    change_orders,
    clients,
    job_status_codes,
    job_status_history,
    jobs,
    staff,
)
from cpmail.triggers import Notification, Run, key_of, money, split_cell

JOB_COLUMNS = (
    jobs.c.id.label("job_id"),
    jobs.c.title.label("job_title"),
    jobs.c.client_id,
    jobs.c.opened_at,
    jobs.c.production_status,
    jobs.c.billing_status,
    clients.c.name.label("client_name"),
)


def job_item(r: Any) -> dict[str, Any]:
    """The job and client as templates see them."""
    return {
        "job": {
            "id": r.job_id,
            "title": r.job_title,
            "opened_at": r.opened_at,
            "production_status": r.production_status,
            "billing_status": r.billing_status,
        },
        "client": {"id": r.client_id, "name": r.client_name},
    }


def _from_jobs() -> Any:
    return jobs.join(clients, clients.c.id == jobs.c.client_id)


def job_opened(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """New jobs; the opening production status code's notify list wins over the default.

    The opening status is the old value of the job's earliest production status
    change (the job may have moved on since), else its production status now.
    """
    h = job_status_history.c
    first_change = (
        sa.select(h.old_value)
        .where(h.job_id == jobs.c.id, h.field == "production_status")
        .order_by(h.changed_at, h.id)
        .limit(1)
        .correlate(jobs)
        .scalar_subquery()
    )
    codes = {
        r.code: r
        for r in conn.execute(
            sa.select(job_status_codes).where(job_status_codes.c.kind == "production")
        )
    }
    q = (
        sa.select(*JOB_COLUMNS, first_change.label("first_old"))
        .select_from(_from_jobs())
        .where(run.in_window(jobs.c.opened_at))
    )
    for r in conn.execute(q.order_by(jobs.c.opened_at, jobs.c.id)):
        opening = r.first_old if r.first_old is not None else r.production_status
        code = codes.get(opening) if opening else None
        notify = split_cell(code.notify) if code is not None else []
        item = job_item(r)
        item["job"]["opening_status"] = opening
        item["job"]["opening_description"] = code.description if code is not None else None
        yield Notification(
            event="job-opened",
            key=key_of("job-opened", r.job_id),
            item=item,
            client_id=r.client_id,
            listed=notify,
            rules=("listed",) if notify else None,
            thread=f"job:{r.job_id}",
        )


_KIND = {"production_status": "production", "billing_status": "billing"}


def status_changed(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    h = job_status_history.c
    codes = {(r.kind, r.code): r for r in conn.execute(sa.select(job_status_codes))}
    who = staff.alias("who")
    q = (
        sa.select(
            *JOB_COLUMNS,
            h.id.label("hid"),
            h.field,
            h.old_value,
            h.new_value,
            h.changed_at,
            h.changed_by,
            who.c.name.label("changed_by_name"),
        )
        .select_from(
            job_status_history.join(jobs, jobs.c.id == h.job_id)
            .join(clients, clients.c.id == jobs.c.client_id)
            .outerjoin(who, who.c.id == h.changed_by)
        )
        .where(run.in_window(h.changed_at))
        .order_by(h.changed_at, h.id)
    )
    for r in conn.execute(q):
        kind = _KIND.get(r.field, r.field.removesuffix("_status"))
        new = codes.get((kind, r.new_value))
        old = codes.get((kind, r.old_value))
        notify = split_cell(new.notify) if new is not None else []
        item = job_item(r)
        item.update(
            change={
                "field": r.field,
                "kind": kind,
                "old": r.old_value,
                "new": r.new_value,
                "old_description": old.description if old is not None else None,
                "new_description": new.description if new is not None else None,
                "at": r.changed_at,
                "by": r.changed_by_name or r.changed_by,
            }
        )
        yield Notification(
            event="status-changed",
            key=key_of("status-changed", str(r.hid)),
            item=item,
            client_id=r.client_id,
            listed=notify,
            rules=("listed",) if notify else None,
            people={"entered-by": r.changed_by},
            thread=f"job:{r.job_id}",
        )


def change_order(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    c = change_orders.c
    who = staff.alias("who")
    q = (
        sa.select(
            *JOB_COLUMNS,
            c.id.label("co_id"),
            c.description,
            c.amount,
            c.entered_by,
            c.entered_at,
            who.c.name.label("entered_by_name"),
        )
        .select_from(
            change_orders.join(jobs, jobs.c.id == c.job_id)
            .join(clients, clients.c.id == jobs.c.client_id)
            .outerjoin(who, who.c.id == c.entered_by)
        )
        .where(run.in_window(c.entered_at))
        .order_by(c.entered_at, c.id)
    )
    for r in conn.execute(q):
        item = job_item(r)
        item["change_order"] = {
            "id": r.co_id,
            "description": r.description,
            "amount": money(r.amount),
            "entered_at": r.entered_at,
            "entered_by": r.entered_by_name or r.entered_by,
        }
        yield Notification(
            event="change-order",
            key=key_of("change-order", r.co_id),
            item=item,
            client_id=r.client_id,
            people={"entered-by": r.entered_by},
            thread=f"job:{r.job_id}",
        )
