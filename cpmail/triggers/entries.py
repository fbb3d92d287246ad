"""diary-entry, homebase-entry and calendar-reminder: entries that name who to tell."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import sqlalchemy as sa

from cpmail.store.schema import (
    calendar_entries,
    clients,
    diary_entries,
    homebase_entries,
    staff,
    vendors,
)
from cpmail.triggers import Invitation, Notification, Run, key_of, split_cell


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
            key=key_of("diary-entry", r.id),
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
            key=key_of("homebase-entry", r.id),
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
    """Reminders whose time has come for events that have not begun.

    ``remind_at`` is at or before the run moment (now, for today's run; the end
    of the day for another date) and no earlier than the lookback window or the
    day before; the event starts after the run moment. A reminder of today's (or
    a later date's) run that waited in the outbox past the event's start is
    dropped there (``not_after``); a run for a past date was asked for that
    day's reminders as they stood then, and sends them.
    """
    c = calendar_entries.c
    moment = run.moment
    # A reminder missed (cpmail was not running) still goes while its event is ahead:
    # set in the lookback window, or in the day before the run moment, whichever is
    # longer (a reminder at 23:58 for a meeting at 00:30 is not lost at midnight).
    since = min(run.window_start, moment - dt.timedelta(days=1))
    past = run.date < run.present.date()  # a run for a past date, as of that day
    q = (
        sa.select(calendar_entries)
        .where(c.remind_at >= since, c.remind_at <= moment, c.starts_at > moment)
        .order_by(c.remind_at, c.id)
    )
    rows = list(conn.execute(q))
    if not rows:
        return
    for r in rows:
        when = r.remind_at.isoformat(timespec="minutes")
        listed = split_cell(r.attendees)
        invitation = Invitation(
            filename=f"{_slug(r.title)}.ics",
            event={
                "uid_seed": f"calendar:{r.id}",
                "title": r.title,
                "starts_at": r.starts_at,
                "ends_at": r.ends_at,
                "location": r.location,
                "notes": r.notes,
                "tz": run.tz,
            },
        )
        yield Notification(
            event="calendar-reminder",
            key=key_of("calendar-reminder", r.id, when=when),
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
            listed=listed,
            invitation=invitation,  # its attendees: the people routing sends it to
            # Held back (the send window, a server away) until the event began: not sent.
            not_after=None
            if past
            else r.starts_at.replace(tzinfo=run.tz).astimezone(dt.UTC).replace(tzinfo=None),
        )


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "event"
