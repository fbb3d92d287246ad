"""iCalendar (.ics) invitations for calendar reminders, built with ``icalendar``.

A reminder's attachment is an invitation (``METHOD:REQUEST``, RFC 5546) that a
mail program shows as one: the event's UID (stable, so that a later reminder
for the same entry updates it instead of adding a copy), DTSTAMP, DTSTART and
DTEND in UTC, the ORGANIZER and one ATTENDEE per person it goes to.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence

from cpmail import __version__
from cpmail.addresses import ascii_domain, mailbox_key, normal_address, valid_address


def _utc(t: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """A naive time is in ``tz`` (the agency's); the result is in UTC, whole seconds."""
    return (t if t.tzinfo else t.replace(tzinfo=tz)).astimezone(dt.UTC).replace(microsecond=0)


# Control characters RFC 5545 allows in no TEXT value (C0 but tab and line feed, DEL,
# C1), and the Unicode line and paragraph separators some programs break lines at.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _text(value: str) -> str:
    """A TEXT value as a person typed it, without control characters (each a space)."""
    return _CONTROL.sub(" ", value.replace("\r\n", "\n").replace("\r", "\n"))


def _line(value: str) -> str:
    """One line of text, for a name or a title: line ends are spaces too."""
    return " ".join(_text(value).split("\n")).strip()


def _name(value: str) -> str:
    """A CN parameter: one line, and no double quote (a parameter value cannot hold one)."""
    return _line(value).replace('"', "'")


def uid_for(seed: str, domain: str = "cpmail") -> str:
    return f"{hashlib.sha256(seed.encode('utf-8')).hexdigest()[:24]}@{domain}"


def event_ics(
    *,
    uid_seed: str,
    title: str,
    starts_at: dt.datetime,
    ends_at: dt.datetime | None,
    location: str | None,
    notes: str | None,
    tz: dt.tzinfo,
    organizer: tuple[str, str] | None = None,
    attendees: Sequence[tuple[str, str]] = (),
    domain: str = "cpmail",
    stamp: dt.datetime | None = None,
) -> bytes:
    """One VEVENT in a VCALENDAR with METHOD:REQUEST.

    ``organizer`` and each of ``attendees`` is (address, name); naive times are
    in ``tz``. An event without an end lasts an hour.
    """
    import icalendar

    cal = icalendar.Calendar()
    cal.add("prodid", f"-//cpmail//cpmail {__version__}//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "REQUEST")
    ev = icalendar.Event()
    ev.add("uid", uid_for(uid_seed, domain))
    ev.add("dtstamp", _utc(stamp or dt.datetime.now(dt.UTC), dt.UTC))
    ev.add("sequence", 0)
    ev.add("status", "CONFIRMED")
    ev.add("summary", _line(title))
    start = _utc(starts_at, tz)
    end = _utc(ends_at, tz) if ends_at else start + dt.timedelta(hours=1)
    ev.add("dtstart", start)
    ev.add("dtend", max(end, start))
    if location:
        ev.add("location", _line(location))
    if notes:
        ev.add("description", _text(notes))
    if organizer is not None and valid_address(organizer[0]):
        address, name = organizer
        org = icalendar.vCalAddress(_mailto(address))
        if name:
            org.params["CN"] = icalendar.vText(_name(name))
        ev.add("organizer", org)
    seen: set[str] = set()
    for address, name in attendees:
        if not valid_address(address) or mailbox_key(address) in seen:
            continue
        seen.add(mailbox_key(address))
        att = icalendar.vCalAddress(_mailto(address))
        if name:
            att.params["CN"] = icalendar.vText(_name(name))
        att.params["CUTYPE"] = icalendar.vText("INDIVIDUAL")
        att.params["ROLE"] = icalendar.vText("REQ-PARTICIPANT")
        att.params["PARTSTAT"] = icalendar.vText("NEEDS-ACTION")
        att.params["RSVP"] = icalendar.vText("FALSE")
        ev.add("attendee", att, encode=False)
    cal.add_component(ev)
    return bytes(cal.to_ical())


def _mailto(address: str) -> str:
    """A mailto: URI (RFC 6068): the domain in ASCII, the rest of the local part escaped."""
    import urllib.parse

    local, _, domain = normal_address(address).rpartition("@")
    return f"mailto:{urllib.parse.quote(local, safe=_ATEXT)}@{ascii_domain(domain)}"


# What a local part may hold as it is in a mailto: URI (RFC 6068 section 2): the
# unreserved characters, which quote() always keeps, and of RFC 5322's atext those
# a URI allows where they stand. "#", "&", "=", "^", "`", "{", "|" and "}" are escaped:
# raw, they end the address ("#" starts a fragment) or are no URI at all.
_ATEXT = "!$'*+"
