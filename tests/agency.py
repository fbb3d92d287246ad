"""Small hand-made agency data for trigger tests, inserted straight into the tables."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cpmail.store import schema

D = dt.date(2026, 11, 24)  # a Tuesday; Monday 23 is the prior workday
# The same day fifty years on: an event then has not begun whenever the tests run
# (a reminder queued by today's check is dropped once its event has begun).
LATER = D.replace(year=D.year + 50)


def at(day: dt.date, hour: int = 9, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


def insert(engine: sa.Engine, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert rows one by one (they may name different columns)."""
    t = schema.metadata.tables[table]
    with engine.begin() as conn:
        for r in rows:
            conn.execute(t.insert().values(**r))


def base_agency(engine: sa.Engine) -> None:
    """Four staff, one client with a team, one job: enough for most triggers."""
    insert(
        engine,
        "staff",
        [
            dict(
                id="AE",
                name="Alice Evans",
                work_email="alice@agency.test",
                role="ae",
                planned_hours=Decimal(8),
                access="cash-flow",
            ),
            dict(
                id="CR",
                name="Carl Reed",
                work_email="carl@agency.test",
                role="creative",
                planned_hours=Decimal(8),
                supervisor_id="AE",
            ),
            dict(
                id="PR",
                name="Pia Ross",
                work_email="pia@agency.test",
                role="production",
                planned_hours=Decimal(0),
            ),
            dict(
                id="NO",
                name="Nora Old",
                work_email="nora@agency.test",
                role="creative",
                planned_hours=Decimal(8),
                active=False,
            ),
        ],
    )
    insert(engine, "clients", [dict(id="C1", name="Acme Foods", billing_email="ap@acme.test")])
    insert(
        engine,
        "client_team",
        [
            dict(client_id="C1", staff_id="AE", role="ae", events=None),
            dict(client_id="C1", staff_id="CR", role="creative", events="job-opened"),
            dict(client_id="C1", staff_id="PR", role="production", events=None),
        ],
    )
    insert(
        engine,
        "jobs",
        [
            dict(
                id="J100",
                client_id="C1",
                title="Winter catalog",
                opened_at=at(D - dt.timedelta(days=30)),
                production_status="WIP",
            )
        ],
    )
