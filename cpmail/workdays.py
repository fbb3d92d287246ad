"""Which days are workdays: per-staff weekdays, public holidays, extra holidays, time off."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from functools import cache

from cpmail.errors import InputError
from cpmail.settings import Settings

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_workdays(text: str) -> frozenset[int]:
    """'mon-fri', 'mon,wed,fri', 'mon-thu,sat' -> weekday numbers (Monday = 0)."""
    days: set[int] = set()
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        a, _, b = part.partition("-")
        if a[:3] not in DAYS or (b and b[:3] not in DAYS):
            raise InputError(
                f"workdays {text!r}: use day names such as 'mon-fri' or 'mon,wed,fri'."
            )
        i, j = DAYS.index(a[:3]), DAYS.index((b or a)[:3])
        days.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
    return frozenset(days)


WEEKDAYS = frozenset(range(5))
_MAX_STEPS = 400  # a staff member with no workdays at all must not loop forever
# How far a workday is looked for: time off that far away can matter (long leave).
SEARCH_DAYS = _MAX_STEPS


class WorkCalendar:
    """Public holidays of ``[check] holidays`` plus ``extra_holidays``."""

    def __init__(self, country: str, extra: Collection[str] = ()) -> None:
        self.country = country
        self.extra = frozenset(dt.date.fromisoformat(d) for d in extra)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkCalendar:
        return cls(settings["check.holidays"], settings["check.extra_holidays"])

    def is_holiday(self, day: dt.date) -> bool:
        return day in self.extra or day in _holidays(self.country, day.year)

    def holiday_name(self, day: dt.date) -> str | None:
        if day in self.extra:
            return "extra holiday"
        return _holidays(self.country, day.year).get(day)

    def is_workday(
        self,
        day: dt.date,
        workdays: frozenset[int] = WEEKDAYS,
        time_off: Collection[dt.date] = (),
    ) -> bool:
        return day.weekday() in workdays and not self.is_holiday(day) and day not in time_off

    def prior_workday(
        self,
        day: dt.date,
        workdays: frozenset[int] = WEEKDAYS,
        time_off: Collection[dt.date] = (),
    ) -> dt.date | None:
        """The last workday strictly before ``day`` (None if there is none within a year)."""
        return self._step(day, -1, workdays, time_off)

    def next_workday(
        self,
        day: dt.date,
        workdays: frozenset[int] = WEEKDAYS,
        time_off: Collection[dt.date] = (),
    ) -> dt.date | None:
        """The first workday strictly after ``day``."""
        return self._step(day, 1, workdays, time_off)

    def _step(
        self, day: dt.date, step: int, workdays: frozenset[int], time_off: Collection[dt.date]
    ) -> dt.date | None:
        d = day
        for _ in range(_MAX_STEPS):
            d += dt.timedelta(days=step)
            if self.is_workday(d, workdays, time_off):
                return d
        return None


@cache
def _holidays(country: str, year: int) -> dict[dt.date, str]:
    if not country:
        return {}
    import holidays

    return dict(holidays.country_holidays(country, years=year).items())
