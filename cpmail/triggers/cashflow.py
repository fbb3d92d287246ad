"""cash-flow: the cash-flow report, sent by `check` on the days ``[reports.cash-flow]`` names.

``days = ["mon"]`` and ``to = ["AM", …]``: on those days each listed staff member
who has ``cash-flow`` access gets the report as of the run date as a PDF; the
others are left out, counted as found and skipped, and named in the run's
summary. Key ``cash-flow:STAFF:D`` (``cash-flow:STAFF:D:left-out`` for one left
out): a run every few minutes sends it, or says it could not, once a day; given
access later that day, the person still gets that day's report.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import sqlalchemy as sa

from cpmail.settings import WEEKDAY_NAMES, Settings
from cpmail.store.schema import ledger, staff
from cpmail.triggers import Notification, Run, key_of, money, split_cell

EVENT = "cash-flow"
ACCESS = "cash-flow"
LEFT_OUT = "left-out"  # the end of the key of a report someone listed could not be sent


def is_report_day(settings: Settings, day: dt.date) -> bool:
    """Whether the scheduled cash-flow report goes on ``day`` (``reports.cash-flow.days``)."""
    return WEEKDAY_NAMES[day.weekday()] in settings["reports.cash-flow.days"]


def scheduled_cash_flow(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """One notification per listed staff member with access, on the report's days."""
    listed = list(dict.fromkeys(run.settings["reports.cash-flow.to"]))
    if not listed or not is_report_day(run.settings, run.date):
        return
    rows = {r.id: r for r in conn.execute(sa.select(staff).where(staff.c.id.in_(listed)))}
    day = run.date.isoformat()
    keys = {sid: key_of(EVENT, sid, when=day) for sid in listed}
    # Someone left out is said once a day under a key of its own: given access later that
    # day, they still get the day's report.
    left_keys = {sid: key_of(EVENT, sid, when=f"{day}:{LEFT_OUT}") for sid in listed}
    wanted = [*keys.values(), *left_keys.values()]
    told = set(conn.execute(sa.select(ledger.c.key).where(ledger.c.key.in_(wanted))).scalars())
    allowed = []
    for sid in listed:
        row = rows.get(sid)
        if row is None:
            why = f"{sid}: no staff member with that ID"
        elif ACCESS not in {a.lower() for a in split_cell(row.access)}:
            why = f"no cash-flow access: {sid} ({row.name})"
        else:
            if keys[sid] not in told:  # (else sent today already)
                allowed.append(row)
            continue
        if left_keys[sid] not in told:  # left out: a notification that reaches nobody
            yield Notification(event=EVENT, key=left_keys[sid], item={}, unreachable=why)
    if not allowed:
        return  # nobody (new) to send it to
    from cpmail.reports import cash_flow_report, render

    report = cash_flow_report(conn, run.date)
    pdf = render(report, run.settings)
    cf = report.context["doc"]
    summary = {
        "label": report.label,
        "as_of": run.date,
        "filename": report.filename,
        "cash": money(cf.cash_total),
        "receivable": money(cf.receivable.total),
        "payable": money(cf.payable.total),
        "net": money(cf.net),
    }
    for r in allowed:
        yield Notification(
            event=EVENT,
            key=keys[r.id],
            item={"report": summary, "staff": {"id": r.id, "name": r.name}},
            people={"staff": r.id},
            rules=("staff",),
            attachments=[(report.filename, pdf, "application/pdf")],
        )
