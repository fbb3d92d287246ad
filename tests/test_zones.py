"""Dates and times: the agency's time zone, its changes of summer time, the send window's
hours, and the day of a sending account's daily limit."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from pathlib import Path

import pytest

from cpmail.settings import Settings
from cpmail.store import connect, utcnow
from cpmail.store.schema import messages
from tests.conftest import Cli

ZONES = ("Europe/London", "America/New_York", "Australia/Sydney")


def _next_start(after_utc: dt.datetime, start: dt.time, tz: dt.tzinfo) -> dt.datetime:
    """The first ``start`` (local wall time in ``tz``) at or after ``after_utc``, naive UTC."""
    local = after_utc.replace(tzinfo=dt.UTC).astimezone(tz)
    day = local.date()
    while True:
        at = dt.datetime.combine(day, start, tzinfo=tz)
        if at.astimezone(dt.UTC).replace(tzinfo=None) >= after_utc:
            return at.astimezone(dt.UTC).replace(tzinfo=None)
        day += dt.timedelta(days=1)


@pytest.mark.parametrize("zone", ZONES)
def test_a_retry_due_while_the_send_window_is_closed_is_told_for_when_it_opens(
    initialised: Cli, home: Path, zone: str
) -> None:
    """The window is open now; a deferred message's retry falls after it closes. Nothing
    is tried until it opens again, so that is the next try `status` and `check` tell."""
    from tests.test_faults import queue_messages

    cli = initialised
    assert cli("config", "set", "agency.timezone", zone).exit_code == 0
    tz = zoneinfo.ZoneInfo(zone)
    now = dt.datetime.now(tz).replace(second=0, microsecond=0)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)
    window = f"{start:%H:%M}-{end:%H:%M}"  # open now, for two hours (maybe across midnight)
    assert cli("config", "set", "mail.send_window", window).exit_code == 0
    queue_messages(home, 1)
    retry = utcnow().replace(microsecond=0) + dt.timedelta(hours=3)  # the window is shut then
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:
        conn.execute(messages.update().values(status="deferred", attempts=1, next_attempt_at=retry))
    engine.dispose()
    expected = _next_start(retry, start.time(), tz)
    doc = json.loads(cli("status", "--json").stdout)
    told = dt.datetime.fromisoformat(doc["outbox"]["next_try"])
    assert told.astimezone(dt.UTC).replace(tzinfo=None) == expected, (window, retry, told)
    r = cli("check", "--date", "2026-11-24", "--json")
    assert r.exit_code == 1, r.output
    got = dt.datetime.fromisoformat(json.loads(r.stdout)["waiting"]["next_try"])
    assert got == told, (got, told)
    opens = expected.replace(tzinfo=dt.UTC).astimezone(tz)
    r = cli("check", "--date", "2026-11-24")
    assert f"from {opens:%Y-%m-%d %H:%M}" in r.stderr, r.stderr
