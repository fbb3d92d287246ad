"""Sending at the provider's pace: no refusals, no time lost, the day's limit kept."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from cpmail.pace import Pace, daily_limit, throttled
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_faults import DATE, prepare, queue_messages, received, statuses


@pytest.mark.serial
def test_a_paced_account_is_never_refused_and_loses_no_time(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    # An Exchange-like limit at a scale a test can wait for: 10 a second (600 a minute).
    smtp_server.rate_limit = (10, 1.0)
    prepare(cli, smtp_server, **{"mail.pace.per_minute": "540"})
    ids = queue_messages(home, 30)
    r = cli("check", "--date", DATE)
    assert r.exit_code == 0, r.output
    assert smtp_server.throttled == 0
    assert set(received(smtp_server)) == ids and len(smtp_server.messages) == 30
    first, last = smtp_server._accepted_at[0], smtp_server._accepted_at[-1]
    allowed = 29 * 60 / 540
    assert last - first <= 1.05 * allowed + 0.75, f"{last - first:.2f} s for {allowed:.2f} s"


@pytest.mark.serial
def test_without_a_pace_a_throttling_answer_slows_the_account(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.rate_limit = (5, 1.0)
    prepare(cli, smtp_server)
    ids = queue_messages(home, 12)
    started = time.monotonic()
    r = cli("check", "--date", DATE)
    # a few are refused before the pace drops, then it keeps going, slower
    assert r.exit_code == 1, r.output
    assert 0 < smtp_server.throttled <= 6
    # each message was accepted or refused once: after the slow-down none was refused
    assert len(smtp_server.messages) + smtp_server.throttled == 12
    assert time.monotonic() - started < 30
    smtp_server.rate_limit = None
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert set(received(smtp_server)) == ids


def test_past_the_days_limit_mail_waits_for_tomorrow(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    prepare(cli, smtp_server, **{"mail.pace.per_day": "5"})
    queue_messages(home, 8)
    r = cli("check", "--date", DATE)
    assert r.exit_code == 1, r.output
    assert len(smtp_server.messages) == 5
    assert "3 message(s) of account JD wait for tomorrow" in r.stderr
    s = statuses(home)
    assert s["sent"] == 5 and s["deferred"] == 3 and s["sending"] == 0
    # a second run the same day sends nothing more
    assert cli("check", "--date", DATE).exit_code == 1
    assert len(smtp_server.messages) == 5


def test_pace_spacing_and_answers() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    p = Pace(per_minute=30, per_day=3, clock=lambda: now[0], sleep=sleep)
    assert p.admit() and now[0] == 0.0
    assert p.admit() and abs(now[0] - 2.02) < 1e-9  # 1 % under the limit
    p.slow_down()  # a pause of a quarter more than the interval, then that pace
    assert p.admit() and abs(now[0] - 2.02 - 2.525) < 1e-9
    assert not p.admit()  # the day's 3 are used
    # an earlier run used the last minute up: the first message waits one interval
    q = Pace(per_minute=30, per_day=0, sent_last_minute=30, clock=lambda: now[0], sleep=sleep)
    start = now[0]
    assert q.admit() and abs(now[0] - start - 2.02 * 31 + 60) < 1e-9
    assert throttled("452 4.3.2 Submission quota exceeded. STOREDRV.ClientSubmit")
    assert throttled("421 4.7.28 Our system has detected an unusual rate")
    assert daily_limit("550 5.4.5 Daily user sending limit exceeded.")
    assert not throttled("550 5.1.1 no such user") and not daily_limit("451 4.3.0 later")


@pytest.mark.parametrize(
    ("transport", "host", "zone"),
    [
        ("gmail", "", "America/Los_Angeles"),
        ("smtp", "smtp.gmail.com", "America/Los_Angeles"),
        ("smtp", "smtp.office365.com", "Europe/Berlin"),
        ("microsoft", "", "Europe/Berlin"),
    ],
)
def test_a_gmail_day_ends_at_midnight_pacific(
    initialised: Cli, home: Path, transport: str, host: str, zone: str
) -> None:
    """Gmail counts its daily limit in Pacific time; other providers in the agency's day."""
    import zoneinfo

    from cpmail import pace
    from cpmail.settings import Settings

    settings = Settings.load(home)
    settings.set("agency.timezone", "Europe/Berlin")
    settings.set("mail.transport", transport)
    settings.set("mail.smtp.host", host)
    settings.save()
    assert pace.day_zone(Settings.load(home)) == zoneinfo.ZoneInfo(zone)
    now = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
    start = pace.next_day_start(zoneinfo.ZoneInfo(zone), now)
    expected = {"America/Los_Angeles": dt.datetime(2026, 11, 29, 8, 0)}
    assert start == expected.get(zone, dt.datetime(2026, 11, 28, 23, 0))
