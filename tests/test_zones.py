"""Dates and times: the agency's time zone, its changes of summer time, the send window's
hours, and the day of a sending account's daily limit."""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cpmail.settings import Settings
from cpmail.store import connect, utcnow
from cpmail.store.schema import messages
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer

ZONES = ("Europe/London", "America/New_York", "Australia/Sydney")

HOUR = 3600
#: A zone whose clocks change today: (offset before, offset after, when, UTC naive) -> name.
ChangingZone = Callable[[int, int, dt.datetime], str]


def _tzif(before: int, after: int, at: int) -> bytes:
    """A TZif file (RFC 8536, version 1) of one change of offset: ``before`` seconds east
    of UTC until the Unix time ``at``, ``after`` from then on."""
    names = b"BEF\0AFT\0"
    counts = struct.pack(">6l", 0, 0, 0, 1, 2, len(names))
    data = struct.pack(">lB", at, 1) + struct.pack(">lBB", before, 0, 0)
    data += struct.pack(">lBB", after, 0, 4) + names
    return b"TZif" + b"\0" * 16 + counts + data


@pytest.fixture
def changing_zone(tmp_path: Path) -> Iterator[ChangingZone]:
    """Make time zones whose clocks change at a given moment (today's, as a test needs:
    a real zone changes on a few days of the year). Python finds them as any other zone
    (its TZPATH, as PYTHONTZPATH sets it), so the agency's timezone may name one."""
    folder = tmp_path / "zoneinfo"
    old = zoneinfo.TZPATH

    def make(before: int, after: int, at: dt.datetime) -> str:
        name = f"Test/Change_{uuid.uuid4().hex[:8]}"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_tzif(before, after, int(at.replace(tzinfo=dt.UTC).timestamp())))
        return name

    zoneinfo.reset_tzpath(to=[str(folder), *old])
    try:
        yield make
    finally:
        zoneinfo.reset_tzpath(to=old)


def _noon_offset(now: dt.datetime) -> int:
    """An offset (seconds, whole hours) at which ``now`` (naive UTC) is about noon."""
    hours = round(12 - now.hour - now.minute / 60)
    return (hours + 11) % 24 * HOUR - 11 * HOUR  # within -11 … +12 hours


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


@pytest.mark.parametrize("shift", [HOUR, -HOUR], ids=["clocks go forward", "clocks go back"])
def test_the_days_sending_limit_counts_from_the_days_own_midnight(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, changing_zone: ChangingZone, shift: int
) -> None:
    """On a day the clocks change, the day began 23 or 25 hours before the next midnight,
    not 24: mail sent before today's midnight is not counted as today's, and mail sent
    after it is."""
    from tests.test_faults import prepare, queue_messages, statuses

    now = utcnow()
    after = _noon_offset(now)
    zone = changing_zone(after - shift, after, now - dt.timedelta(hours=1))
    prepare(cli, smtp_server, **{"agency.timezone": zone, "mail.pace.per_day": "5"})
    tz = zoneinfo.ZoneInfo(zone)
    local = now.replace(tzinfo=dt.UTC).astimezone(tz)
    midnight = dt.datetime.combine(local.date(), dt.time(), tz).astimezone(dt.UTC)
    midnight = midnight.replace(tzinfo=None)
    assert midnight.replace(tzinfo=dt.UTC).astimezone(tz).time() == dt.time()
    # Three sent half an hour from midnight: the evening before (forward) or the small
    # hours of today (back), where a day taken as 24 hours long counts them wrongly.
    sent_at = midnight + dt.timedelta(minutes=-30 if shift > 0 else 30)
    queue_messages(home, 3)
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:
        conn.execute(messages.update().values(status="sent", attempts=1, sent_at=sent_at))
    engine.dispose()
    queue_messages(home, 4)
    r = cli("check", "--date", "2026-11-24")
    today = 0 if shift > 0 else 3  # of the three, sent today
    assert len(smtp_server.messages) == min(4, 5 - today), r.output
    assert statuses(home)["sent"] == 3 + min(4, 5 - today), r.output


def _zone_file(name: str) -> str:
    """The path of a zone's file in the system's time zone database."""
    for folder in zoneinfo.TZPATH:
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    pytest.skip("no system time zone database")


@pytest.mark.parametrize(
    ("tz", "zone"),
    [
        # a file, as POSIX and the C library take TZ (":path" or an absolute path)
        (lambda: ":" + _zone_file("America/New_York"), "America/New_York"),
        (lambda: _zone_file("Australia/Sydney"), "Australia/Sydney"),
        # a rule, as POSIX writes it: no file of that name
        (lambda: "GMT0BST,M3.5.0/1,M10.5.0", "Europe/London"),
        (lambda: "EST+5EDT,M3.2.0/2,M11.1.0/2", "America/New_York"),
        (lambda: "AEST-10AEDT,M10.1.0,M4.1.0/3", "Australia/Sydney"),
        (lambda: "<+0545>-5:45", "Asia/Kathmandu"),
        # summer time named without its dates: the C library's default (the US rule)
        (lambda: "XST5XDT", "America/New_York"),
    ],
    ids=[
        "colon-path",
        "path",
        "london-rule",
        "new-york-rule",
        "sydney-rule",
        "offset-rule",
        "rule-without-dates",
    ],
)
def test_the_machines_time_zone_is_read_from_tz_as_the_c_library_reads_it(
    initialised: Cli, home: Path, monkeypatch: pytest.MonkeyPatch, tz: Callable[[], str], zone: str
) -> None:
    """Without agency.timezone, TZ decides what "today" is, as it does for `date` and cron
    on the machine: a path to a zone file or a POSIX rule, not only a zone's name."""
    monkeypatch.setenv("TZ", tz())
    got = Settings.load(home).tz()
    real = zoneinfo.ZoneInfo(zone)
    for day in (dt.datetime(2027, 1, 15, 12), dt.datetime(2027, 7, 15, 12)):  # winter, summer
        assert day.replace(tzinfo=got).utcoffset() == day.replace(tzinfo=real).utcoffset(), day
    today = dt.datetime.now(real).date()
    r = initialised("check", "--today", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["date"] == today.isoformat()


@pytest.mark.parametrize("shift", [HOUR, -HOUR], ids=["clocks go forward", "clocks go back"])
def test_the_wait_for_gmails_new_day_is_counted_in_real_seconds(
    changing_zone: ChangingZone, shift: int
) -> None:
    """Midnight in a zone whose clocks change before it is an hour nearer (or further)
    than its wall clock says."""
    from cpmail.transports.gmail import seconds_until_midnight

    now = utcnow()
    after = _noon_offset(now)
    zone = changing_zone(after - shift, after, now + dt.timedelta(hours=1))
    local = now.replace(tzinfo=dt.UTC).astimezone(zoneinfo.ZoneInfo(zone))
    wall = 24 * HOUR - (local.hour * HOUR + local.minute * 60 + local.second)
    assert abs(seconds_until_midnight(zone) - (wall - shift)) < 5
