"""iCalendar (.ics) attachments for calendar reminders, built with ``icalendar``."""

from __future__ import annotations

import datetime as dt
import hashlib

from cpmail import __version__


def event_ics(
    *,
    uid_seed: str,
    title: str,
    starts_at: dt.datetime,
    ends_at: dt.datetime | None,
    location: str | None,
    notes: str | None,
    tz: dt.tzinfo,
    domain: str = "cpmail",
) -> bytes:
    """One VEVENT in a VCALENDAR (METHOD:PUBLISH); naive times are in ``tz``."""
    import icalendar

    def aware(t: dt.datetime) -> dt.datetime:
        return (t if t.tzinfo else t.replace(tzinfo=tz)).astimezone(dt.UTC)

    cal = icalendar.Calendar()
    cal.add("prodid", f"-//cpmail//cpmail {__version__}//EN")
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    ev = icalendar.Event()
    digest = hashlib.sha256(uid_seed.encode("utf-8")).hexdigest()[:24]
    ev.add("uid", f"{digest}@{domain}")
    ev.add("dtstamp", dt.datetime.now(dt.UTC).replace(microsecond=0))
    ev.add("summary", title)
    start = aware(starts_at)
    ev.add("dtstart", start)
    ev.add("dtend", aware(ends_at) if ends_at else start + dt.timedelta(hours=1))
    if location:
        ev.add("location", location)
    if notes:
        ev.add("description", notes)
    cal.add_component(ev)
    return bytes(cal.to_ical())
