"""missing-time: staff who entered fewer hours than planned on their prior workday."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import sqlalchemy as sa

from cpmail.store.schema import staff, time_entries, time_off
from cpmail.triggers import Notification, Run, hours, key_of
from cpmail.workdays import SEARCH_DAYS


def missing_time(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """Active staff with planned hours whose prior workday P has fewer hours than planned."""
    s = staff.c
    people = conn.execute(
        sa.select(s.id, s.name, s.planned_hours, s.workdays, s.supervisor_id).where(
            s.active.is_(True), s.planned_hours > 0
        )
    ).all()
    if not people:
        return
    # All the time off the search for the prior workday may step over (a long leave).
    earliest = run.date - dt.timedelta(days=SEARCH_DAYS)
    off: dict[str, set[dt.date]] = {}
    for r in conn.execute(
        sa.select(time_off.c.staff_id, time_off.c.date).where(
            time_off.c.date >= earliest, time_off.c.date < run.date
        )
    ):
        off.setdefault(r.staff_id, set()).add(r.date)
    prior: dict[str, dt.date] = {}
    for p in people:
        day = run.prior_workday(p.workdays, frozenset(off.get(p.id, ())))
        if day is not None:
            prior[p.id] = day
    if not prior:
        return
    t = time_entries.c
    entered: dict[tuple[str, dt.date], Decimal] = {}
    days = sorted(set(prior.values()))
    for r in conn.execute(
        sa.select(t.staff_id, t.work_date, sa.func.sum(t.hours).label("hours"))
        .where(t.work_date.in_(days))
        .group_by(t.staff_id, t.work_date)
    ):
        entered[(r.staff_id, r.work_date)] = Decimal(r.hours or 0)
    for p in people:
        day = prior.get(p.id)
        if day is None:
            continue
        got = entered.get((p.id, day), Decimal(0))
        planned = Decimal(p.planned_hours)
        if got >= planned:
            continue
        yield Notification(
            event="missing-time",
            key=key_of("missing-time", p.id, when=day.isoformat()),
            item={
                "staff": {"id": p.id, "name": p.name},
                "date": day,
                "entered": hours(got),
                "planned": hours(planned),
                "missing": hours(planned - got),
            },
            people={"staff": p.id, "supervisor": p.supervisor_id},
        )
