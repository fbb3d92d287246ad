"""Triggers: turn the agency's data into notifications. A trigger never sends.

Each event of SPEC §5 is one function ``find(conn, run) -> Iterable[Notification]``
in a module per family. A notification carries its ledger key, what the
message must say (``item``, for the templates), who is concerned (for the
recipient rules) and the default rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from cpmail import events
from cpmail.settings import Settings
from cpmail.workdays import WorkCalendar, parse_workdays

# The default recipient rules of SPEC §5 ("listed" = the entry's own notify/attendees list).
# Who hears of each event by default, and which events come as one list per
# person: both live in the one table of events (cpmail.events).
DEFAULT_RULES = events.DEFAULT_RULES
LIST_EVENTS = events.LIST_EVENTS


def key_of(event: str, *ids: str, when: str | None = None) -> str:
    """A ledger key: ``event:ID[:ID…][:WHEN]``, the same for the same notification, never for two.

    IDs come from the agency's data and may hold any character, so ``%`` and
    ``:`` in them are written ``%25`` and ``%3A``: then a task ``T3`` with a
    50 % threshold (``budget-alert:T3:50``) and an alert row whose id is
    ``T3:50`` (``budget-alert:T3%3A50``) cannot share a key, and one could
    never keep the other from being sent. ``when`` (a date or time cpmail
    wrote) comes last as it is. Keys of IDs without ``%`` or ``:`` are as they
    always were.
    """
    parts = [event, *(i.replace("%", "%25").replace(":", "%3A") for i in ids)]
    if when is not None:
        parts.append(when)
    return ":".join(parts)


def key_of_column(event: str, column: Any) -> Any:
    """``key_of(event, column)`` in SQL, for a key looked up in the database."""
    escaped = sa.func.replace(sa.func.replace(column, "%", "%25"), ":", "%3A")
    return sa.literal(f"{event}:") + escaped


@dataclass
class Invitation:
    """A calendar invitation (.ics) a notification carries, made once its recipients are known.

    ``event`` holds ``cpmail.ics.event_ics``'s fields but the organizer and
    attendees: those are the message's sender (or the system manager) and
    exactly the people routing sends it to (``attendees``, set by routing).
    """

    filename: str
    event: dict[str, Any]
    attendees: list[tuple[str, str]] = field(default_factory=list)  # (address, name)


@dataclass
class Notification:
    """Something one or more people must be told, once (``key`` is its ledger key)."""

    event: str
    key: str
    item: dict[str, Any]  # what the templates show
    people: dict[str, str | None] = field(default_factory=dict)  # staff, assignee, entered-by …
    client_id: str | None = None  # whose team `team` means
    listed: list[str] = field(default_factory=list)  # the entry's notify/attendees cell
    rules: tuple[str, ...] | None = None  # overrides DEFAULT_RULES (status code notify)
    thread: str | None = None  # e.g. "job:J100": messages about one job thread together
    attachments: list[tuple[str, bytes, str]] = field(default_factory=list)
    invitation: Invitation | None = None
    not_after: dt.datetime | None = None  # (UTC, naive) not sent after this: it no longer matters
    # Why it reaches nobody, known when it is found (a listed person without access):
    # counted as found and skipped, said once (its key is recorded like any other).
    unreachable: str | None = None


def local_time(when: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """An instant as a naive time in ``tz``, on the side of the times stored so.

    A stored local time in the hour the clocks repeat is the first time round
    (summer time; docs/data.md). During the second time round every such time
    is past: the instant is then the last one of that hour, not the first time
    round of its own wall time, which would be an hour before it (reminders of
    that hour would go an hour late).
    """
    local = when.astimezone(tz)
    naive = local.replace(tzinfo=None, fold=0)
    if not local.fold or not _ambiguous(naive, tz):
        return naive
    end = naive.replace(second=0, microsecond=0)
    while _ambiguous(end, tz):
        end += dt.timedelta(minutes=1)
    return end - dt.timedelta(microseconds=1)


def _ambiguous(naive: dt.datetime, tz: dt.tzinfo) -> bool:
    """Whether a wall time happens twice in ``tz`` (the hour the clocks go back)."""
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    return first.utcoffset() != second.utcoffset()


@dataclass
class Run:
    """The date a check runs for and what every trigger needs to know about it."""

    date: dt.date
    settings: Settings
    calendar: WorkCalendar
    tz: dt.tzinfo
    #: The run moment (naive, agency time zone); None: now for today's run, else the
    #: end of the run date (see ``moment``).
    now: dt.datetime | None = None
    # What several finders of one run share (read once, e.g. the state triggers' totals).
    shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def lookback_days(self) -> int:
        return self.settings["check.lookback_days"]

    @property
    def moment(self) -> dt.datetime:
        """The instant the run stands at (naive, agency time zone).

        For a run on today's date: now. For another date: the end of that day
        (its last instant), so that a check for a past or future
        date sees the whole day.
        """
        if self.now is not None:
            if self.now.tzinfo is not None:
                return local_time(self.now, self.tz)
            return self.now
        now = dt.datetime.now(self.tz)
        if now.date() == self.date:
            return local_time(now, self.tz)
        return self.window_end - dt.timedelta(microseconds=1)

    @property
    def present(self) -> dt.datetime:
        """The real now (naive, agency time zone): the run moment when it is given."""
        if self.now is not None:
            return self.moment
        return dt.datetime.now(self.tz).replace(tzinfo=None)

    @property
    def window_start(self) -> dt.datetime:
        """First instant of the lookback window (naive, agency time zone)."""
        start = self.date - dt.timedelta(days=self.lookback_days)
        return dt.datetime.combine(start, dt.time())

    @property
    def window_end(self) -> dt.datetime:
        """First instant after the window: the day after the run date."""
        return dt.datetime.combine(self.date + dt.timedelta(days=1), dt.time())

    def in_window(self, column: Any) -> Any:
        return sa.and_(column >= self.window_start, column < self.window_end)

    def next_workday(self, workdays: str | None, off: frozenset[dt.date]) -> dt.date | None:
        """The first workday after the run date for a staff member's workdays and time off."""
        return self._workday("next", workdays, off)

    def prior_workday(self, workdays: str | None, off: frozenset[dt.date]) -> dt.date | None:
        """The last workday before the run date for a staff member's workdays and time off."""
        return self._workday("prior", workdays, off)

    def _workday(self, way: str, workdays: str | None, off: frozenset[dt.date]) -> dt.date | None:
        # Most staff share their workdays and have no time off near the run date: one
        # answer serves them all.
        memo: dict[tuple[str, str, frozenset[dt.date]], dt.date | None]
        memo = self.shared.setdefault("workdays", {})
        key = (way, workdays or "mon-fri", off)
        if key not in memo:
            days = parse_workdays(key[1])
            step = self.calendar.next_workday if way == "next" else self.calendar.prior_workday
            memo[key] = step(self.date, days, off)
        return memo[key]


Finder = Callable[[sa.Connection, Run], Iterable[Notification]]


def finders() -> dict[str, Finder]:
    """Every event's finder, in the order of SPEC §5 (named in cpmail.events)."""
    import importlib

    table: dict[str, Finder] = {}
    for event in events.EVENT_TABLE:
        module, function = event.finder.split(":")
        table[event.name] = getattr(importlib.import_module(f"cpmail.triggers.{module}"), function)
    return table


def scheduled() -> dict[str, Finder]:
    """Reports `check` sends on a schedule (not events of the agency's data): name -> finder.

    Their notifications go through the same routing, ledger and outbox as the
    events'; a run adds a summary row per name.
    """
    from cpmail.triggers import cashflow

    return {cashflow.EVENT: cashflow.scheduled_cash_flow}


def split_cell(cell: str | None) -> list[str]:
    """A comma-separated list cell as a list of trimmed items."""
    return [p.strip() for p in (cell or "").split(",") if p.strip()]


def money(value: Any) -> str:
    """1234.5 -> '1,234.50' (templates show money this way)."""
    if value is None:
        return ""
    from decimal import Decimal

    return f"{Decimal(value):,.2f}"


def hours(value: Any) -> str:
    from decimal import Decimal

    d = Decimal(value or 0).normalize()
    return f"{d:f}"
