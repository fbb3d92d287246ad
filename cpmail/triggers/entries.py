"""diary-entry, homebase-entry and calendar-reminder: entries that name who to tell."""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa

from cpmail.ics import event_ics
from cpmail.store.schema import (
    calendar_entries,
    clients,
    diary_entries,
    homebase_entries,
    staff,
    vendors,
)
from cpmail.triggers import Notification, Run, split_cell


def diary_entry(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    d = diary_entries.c
    who = staff.alias("who")
    q = (
        sa.select(
            d.id,
            d.kind,
            d.party_id,
            d.subject,
            d.body,
            d.entered_by,
            d.entered_at,
            d.notify,
            who.c.name.label("entered_by_name"),
            clients.c.name.label("client_name"),
            vendors.c.name.label("vendor_name"),
        )
        .select_from(
            diary_entries.outerjoin(who, who.c.id == d.entered_by)
            .outerjoin(clients, sa.and_(d.kind == "client", clients.c.id == d.party_id))
            .outerjoin(vendors, sa.and_(d.kind == "vendor", vendors.c.id == d.party_id))
        )
        .where(run.in_window(d.entered_at))
        .order_by(d.entered_at, d.id)
    )
    for r in conn.execute(q):
        party = r.client_name if r.kind == "client" else r.vendor_name
        yield Notification(
            event="diary-entry",
            key=f"diary-entry:{r.id}",
            item={
                "entry": {
                    "id": r.id,
                    "kind": r.kind,
                    "subject": r.subject or "(no subject)",
                    "body": r.body or "",
                    "entered_at": r.entered_at,
                    "entered_by": r.entered_by_name or r.entered_by,
                },
                "party": {"id": r.party_id, "name": party or r.party_id, "kind": r.kind},
            },
            people={"entered-by": r.entered_by},
            client_id=r.party_id if r.kind == "client" else None,
            listed=split_cell(r.notify),
        )


def homebase_entry(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    h = homebase_entries.c
    who = staff.alias("who")
    q = (
        sa.select(
            h.id,
            h.subject,
            h.body,
            h.entered_by,
            h.entered_at,
            h.notify,
            who.c.name.label("entered_by_name"),
        )
        .select_from(homebase_entries.outerjoin(who, who.c.id == h.entered_by))
        .where(run.in_window(h.entered_at))
        .order_by(h.entered_at, h.id)
    )
    for r in conn.execute(q):
        yield Notification(
            event="homebase-entry",
            key=f"homebase-entry:{r.id}",
            item={
                "entry": {
                    "id": r.id,
                    "subject": r.subject or "(no subject)",
                    "body": r.body or "",
                    "entered_at": r.entered_at,
                    "entered_by": r.entered_by_name or r.entered_by,
                }
            },
            people={"entered-by": r.entered_by},
            listed=split_cell(r.notify),
        )


def calendar_reminder(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    """Reminders due on the run date, or earlier in the lookback window and not yet sent."""
    c = calendar_entries.c
    q = sa.select(calendar_entries).where(run.in_window(c.remind_at)).order_by(c.remind_at, c.id)
    for r in conn.execute(q):
        when = r.remind_at.isoformat(timespec="minutes")
        ics = event_ics(
            uid_seed=f"calendar:{r.id}",
            title=r.title,
            starts_at=r.starts_at,
            ends_at=r.ends_at,
            location=r.location,
            notes=r.notes,
            tz=run.tz,
        )
        yield Notification(
            event="calendar-reminder",
            key=f"calendar-reminder:{r.id}:{when}",
            item={
                "entry": {
                    "id": r.id,
                    "title": r.title,
                    "starts_at": r.starts_at,
                    "ends_at": r.ends_at,
                    "location": r.location,
                    "notes": r.notes,
                    "remind_at": r.remind_at,
                }
            },
            listed=split_cell(r.attendees),
            attachments=[(f"{_slug(r.title)}.ics", ics, "text/calendar")],
        )


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "event"
