"""Send at the provider's pace: so many messages a minute and a day per sending account.

Gmail and Microsoft 365 limit each mailbox. Sending faster only earns
refusals that turn into deferrals and backoff, so mail dribbles out over
hours; keeping to the pace sends it all in the least time. The limits are
``[mail.pace] per_minute`` and ``per_day``; left unset, the provider's
published limits apply (``PRESETS``); set to 0, there is no limit.

Sources of the presets:

- Exchange Online (Microsoft 365, by Graph or smtp.office365.com): "Message
  rate limit: 30 messages per minute" and "Recipient rate limit: 10,000
  recipients per day" (Exchange Online limits, sending limits).
- Gmail API: 15,000 quota units per user per minute, ``messages.send`` costs
  100 (150 a minute); Google Workspace sends at most 2,000 messages a day
  per user ("Gmail sending limits in Google Workspace"); a free account 500.
- smtp.gmail.com: the same 2,000 a day; Google states no rate a minute, so
  the API's 150 is used.

A throttling answer (Exchange ``4.3.2``/``STOREDRV.ClientSubmit``, Gmail
``4.7.28``, an API's 429) pauses the account for at least the time the
answer asked (Retry-After), else 2 seconds, and slows it by a quarter; the
account gives up its turn so that other accounts' mail goes meanwhile, and
it goes on once the pause is over. A daily limit answer (Gmail ``5.4.5``,
"daily user sending limit exceeded") stops the account until the next day.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

PRESETS: dict[str, tuple[int, int]] = {  # name -> (per_minute, per_day)
    "microsoft": (30, 10_000),
    "gmail": (150, 2_000),
    "smtp.office365.com": (30, 10_000),
    "smtp-mail.outlook.com": (30, 10_000),
    "smtp.gmail.com": (150, 2_000),
}

_THROTTLED = re.compile(
    r"\b4\.3\.2\b|storedrv\.clientsubmit|\b4\.7\.28\b|rate.?limit|too many (messages|requests)|"
    r"\b429\b|"
    r"try again later.{0,40}(rate|limit)|throttl|limiting the rate",
    re.IGNORECASE,
)
_DAILY = re.compile(
    r"\b5\.4\.5\b|daily (user )?sending (quota|limit)|daily limit|sending limit exceeded|"
    r"\b5\.2\.0\b.{0,40}(quota|limit)",
    re.IGNORECASE,
)


def limits(settings: object) -> tuple[int, int]:
    """(per_minute, per_day) for this home: the settings, else the provider's preset."""
    from cpmail.settings import Settings

    assert isinstance(settings, Settings)
    transport = settings["mail.transport"]
    key = transport if transport in ("gmail", "microsoft") else ""
    if transport == "smtp":
        key = settings["mail.smtp.host"].strip().lower()
    preset = PRESETS.get(key, (0, 0))
    per_minute = (
        preset[0]
        if settings.source("mail.pace.per_minute") == "default"
        else settings["mail.pace.per_minute"]
    )
    per_day = (
        preset[1]
        if settings.source("mail.pace.per_day") == "default"
        else settings["mail.pace.per_day"]
    )
    return per_minute, per_day


def throttled(words: str) -> bool:
    """True for an answer that says: slower, please."""
    return bool(_THROTTLED.search(words))


def daily_limit(words: str) -> bool:
    """True for an answer that says: no more today."""
    return bool(_DAILY.search(words))


@dataclass
class Pace:
    """One sending account's pace in one run.

    ``sent_today`` and ``sent_last_minute`` come from the log, so runs that
    follow each other share the account's limits; runs side by side share the
    day's (the delivery pass reads the log again as it sends).
    """

    per_minute: int
    per_day: int
    sent_today: int = 0
    sent_last_minute: int = 0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stopped_for_today: bool = False
    # Set by a throttling answer: the account gives up its turn until ``resume_at``.
    paused: bool = False
    _next: float = 0.0
    _interval: float = 0.0

    def __post_init__(self) -> None:
        # 1 % under the limit: a message is counted by the server when it is
        # accepted, a moment after it was let go here.
        self._interval = 60.0 / self.per_minute * 1.01 if self.per_minute else 0.0
        # A minute already used up (by an earlier run) is waited out first.
        used = min(self.sent_last_minute, self.per_minute)
        self._next = self.clock() + max(0.0, self._interval * (used + 1) - 60.0)

    @property
    def day_full(self) -> bool:
        return self.stopped_for_today or (0 < self.per_day <= self.sent_today)

    def admit(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait until the next message may go; False when none may go today (or ``stop``)."""
        if self.day_full or self.paused:
            return False
        while self._interval:
            wait = self._next - self.clock()
            if wait <= 0:
                break
            if stop():
                return False
            self.sleep(min(wait, 0.25))
        # Never catch up after a pause: two at once could make one minute hold too many.
        self._next = max(self._next, self.clock()) + self._interval
        self.sent_today += 1
        return True

    def slow_down(self, wait: float | None = None) -> None:
        """The provider said too fast: pause (``wait`` seconds if it said), then go slower.

        The account's turn ends (``paused``) until ``resume_at``; ``resume``
        takes it up again.
        """
        if self._interval:
            self._interval *= 1.25
        else:
            self._interval = 1.0  # no limit was set: one message a second from now on
        self._next = max(self._next, self.clock() + max(self._interval, 2.0, wait or 0.0))
        self.paused = True

    @property
    def resume_at(self) -> float:
        """When the next message may go (on ``clock``)."""
        return self._next

    def resume(self) -> None:
        self.paused = False

    def stop_for_today(self) -> None:
        self.stopped_for_today = True


def day_zone(settings: object) -> dt.tzinfo:
    """The time zone whose midnight starts a new day of the sending limit.

    Gmail counts its daily limit in Pacific time (as its own retry hints say);
    otherwise the agency's day.
    """
    from cpmail.settings import Settings

    assert isinstance(settings, Settings)
    transport = settings["mail.transport"]
    host = settings["mail.smtp.host"].strip().lower() if transport == "smtp" else ""
    if transport == "gmail" or host == "smtp.gmail.com":
        import zoneinfo

        return zoneinfo.ZoneInfo("America/Los_Angeles")
    return settings.tz()


def next_day_start(tz: dt.tzinfo, now: dt.datetime | None = None) -> dt.datetime:
    """The next local midnight, as naive UTC (when a day's limit starts again)."""
    return day_start(tz, now, days=1)


def day_start(tz: dt.tzinfo, now: dt.datetime | None = None, *, days: int = 0) -> dt.datetime:
    """Today's local midnight (``days`` later), as naive UTC: where a day's count begins.

    Each midnight is found on its own date: a day the clocks change is 23 or 25 hours
    long, so today's midnight is not the next one less 24 hours.
    """
    local = (now or dt.datetime.now(dt.UTC)).astimezone(tz)
    midnight = dt.datetime.combine(local.date() + dt.timedelta(days=days), dt.time(), tz)
    return midnight.astimezone(dt.UTC).replace(tzinfo=None)
