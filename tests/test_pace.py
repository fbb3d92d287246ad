"""Sending at the provider's pace: no refusals, no time lost, the day's limit kept."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cpmail.pace import Pace, daily_limit, day_zone, next_day_start, throttled
from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store.schema import messages
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
    # a few are refused before the pace drops; after a pause they go, slower, in the same run
    assert r.exit_code == 0, r.output
    assert 0 < smtp_server.throttled <= 6
    assert Counter(received(smtp_server)) == Counter(ids)  # each once
    assert time.monotonic() - started < 30
    assert statuses(home)["sent"] == 12
    # a throttling answer used up none of a message's attempts: each went on its first
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.connect() as conn:
        attempts = conn.execute(sa.select(messages.c.attempts)).scalars().all()
    engine.dispose()
    assert sorted(attempts) == [1] * 12, attempts


def test_past_the_days_limit_mail_waits_for_tomorrow(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    prepare(cli, smtp_server, **{"mail.pace.per_day": "5", "agency.timezone": "Australia/Sydney"})
    queue_messages(home, 8)
    settings = Settings.load(home)
    r = cli("check", "--date", DATE)
    assert r.exit_code == 1, r.output
    assert len(smtp_server.messages) == 5
    said = " ".join(r.stderr.split())
    # the limit's new day, named in the agency's time
    starts = next_day_start(day_zone(settings)).replace(tzinfo=dt.UTC).astimezone(settings.tz())
    assert f"3 message(s) of account JD wait until {starts:%Y-%m-%d %H:%M %Z}," in said, said
    assert "when the daily limit starts again: account JD reached its daily" in said, said
    s = statuses(home)
    assert s["sent"] == 5 and s["deferred"] == 3 and s["sending"] == 0
    # and says when they go: not "by the next check, or at once with outbox retry"
    assert "tried again by the first `cpmail check` from" in r.stderr, r.stderr
    assert "outbox retry" not in r.stderr, r.stderr
    # a second run the same day sends nothing more
    assert cli("check", "--date", DATE).exit_code == 1
    assert len(smtp_server.messages) == 5
    # nor does a retry: the 3 are put back unsent, and not counted as deferred besides
    r = cli("outbox", "retry", "--all")
    assert "Sent 0, deferred 0, failed 0, put back unsent 3." in r.stdout, r.output
    assert len(smtp_server.messages) == 5


def test_a_daily_limit_refusal_makes_the_mail_wait_for_tomorrow_not_fail(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Gmail's 550 5.4.5 refuses the account for the day: nothing fails, nothing more goes."""
    prepare(cli, smtp_server)
    queue_messages(home, 5)
    smtp_server.fail_data = "550 5.4.5 Daily user sending limit exceeded. - gsmtp"  # every one
    zone = day_zone(Settings.load(home))
    before = next_day_start(zone)
    r = cli("check", "--date", DATE)
    after = next_day_start(zone)
    assert r.exit_code == 1, r.output
    assert "when the daily limit starts again" in r.stderr, r.stderr
    s = statuses(home)
    assert s["deferred"] == 5 and s["failed"] == 0 and s["sent"] == 0, s
    # nor is the manager told of failures from the exhausted account (there are none)
    assert smtp_server.messages == []
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.connect() as conn:
        soonest = conn.execute(sa.select(sa.func.min(messages.c.next_attempt_at))).scalar_one()
    engine.dispose()
    assert soonest in (before, after)  # the next day's start, where its limit counts


def test_a_daily_limit_deferring_one_recipient_waits_for_tomorrow_like_the_account(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """A 4xx daily-limit answer for one recipient: the account stops for the day and so
    does that message (not retried in minutes, no attempt of its own used up)."""
    prepare(cli, smtp_server)
    queue_messages(home, 4)
    smtp_server.fail_rcpt = {"person0@agency.test": "452 4.5.3 Daily sending quota exceeded"}
    zone = day_zone(Settings.load(home))
    before = next_day_start(zone)
    r = cli("check", "--date", DATE)
    after = next_day_start(zone)
    assert r.exit_code == 1, r.output
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                messages.c.status,
                messages.c.to_addrs,
                messages.c.next_attempt_at,
                messages.c.attempts,
            )
        ).all()
    engine.dispose()
    waiting = [x for x in rows if x.status != "sent"]
    assert any(x.to_addrs == "person0@agency.test" for x in waiting), rows
    for x in waiting:  # whatever the account had not sent yet waits for the next day
        assert x.status == "deferred" and x.next_attempt_at in (before, after), x
        assert x.attempts == 0, x


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
    assert not p.admit() and p.paused  # the account's turn ends until it is taken up again
    assert abs(p.resume_at - 2.02 - 2.525) < 1e-9
    p.resume()
    assert p.admit() and abs(now[0] - 2.02 - 2.525) < 1e-9
    assert not p.admit()  # the day's 3 are used
    # a server that said how long to wait is given at least that
    r = Pace(per_minute=30, per_day=0, clock=lambda: now[0], sleep=sleep)
    r.slow_down(40.0)
    assert abs(r.resume_at - now[0] - 40.0) < 1e-9
    r.resume()
    start = now[0]
    assert r.admit() and abs(now[0] - start - 40.0) < 1e-9
    # an earlier run used the last minute up: the first message waits one interval
    q = Pace(per_minute=30, per_day=0, sent_last_minute=30, clock=lambda: now[0], sleep=sleep)
    start = now[0]
    assert q.admit() and abs(now[0] - start - 2.02 * 31 + 60) < 1e-9
    assert throttled("452 4.3.2 Submission quota exceeded. STOREDRV.ClientSubmit")
    assert throttled("421 4.7.28 Our system has detected an unusual rate")
    assert daily_limit("550 5.4.5 Daily user sending limit exceeded.")
    assert throttled("Microsoft is limiting the rate (ApplicationThrottled: busy).")
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


def _two_graph_accounts(home: Path, fake: Any) -> tuple[Any, sa.Engine]:
    """A Microsoft home with JD and MK signed in, 3 messages queued from each."""
    from cpmail.compose import Draft, Mailbox, build_message
    from cpmail.outbox import new_run_id, queue
    from cpmail.settings import Settings
    from cpmail.store import connect
    from tests.fakeapi import MS_CLIENT_ID
    from tests.test_microsoft import sign_in

    settings = Settings.load(home)
    for key, value in {
        "mail.transport": "microsoft",
        "mail.microsoft.client_id": MS_CLIENT_ID,
        "mail.microsoft.authority_base": fake.base,
        "mail.microsoft.api_base": fake.base,
        "mail.sender": "office@agency.example",
        "mail.pace.per_minute": "0",  # no pace of its own: only the answer slows it
    }.items():
        settings.set(key, value)
    settings.save()
    for account in ("JD", "MK"):
        fake.ms_user = f"{account.lower()}@agency.example"
        sign_in(home, account)
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    run_id = new_run_id()
    with engine.begin() as conn:
        for account in ("JD", "MK"):
            for i in range(3):
                key = f"pace:{account}:{i}"
                msg = build_message(
                    sender=Mailbox(f"{account.lower()}@agency.example"),
                    to=[Mailbox(f"person{i}@agency.example")],
                    subject=f"{account} {i}",
                    text="A line.",
                    event="message",
                    key=key,
                )
                draft = Draft.from_message(
                    msg,
                    event="message",
                    key=key,
                    account=account,
                    envelope_from=f"{account.lower()}@agency.example",
                )
                queue(conn, draft, run_id=run_id)
    return settings, engine


def _throttled_run(home: Path, fake: Any, retry_after: str) -> tuple[Any, sa.Engine, float]:
    """JD's first message is answered 429 with ``retry_after``; one delivery pass."""
    from cpmail.outbox import deliver, new_run_id
    from cpmail.secrets import SecretStore
    from cpmail.transports.base import get_transport
    from tests.fakeapi import Reply
    from tests.test_microsoft import graph_error

    settings, engine = _two_graph_accounts(home, fake)
    throttled = Reply(
        429, graph_error("ApplicationThrottled", "Too many requests"), {"Retry-After": retry_after}
    )
    fake.script("/v1.0/me/sendMail", throttled)
    started = time.monotonic()
    transport = get_transport(settings, SecretStore(home, settings["secrets.backend"]))
    return deliver(engine, transport, settings, run_id=new_run_id()), engine, started


def test_a_retry_after_pauses_only_its_account_and_the_rest_go_meanwhile(
    cli: Cli, home: Path
) -> None:
    """Graph's 429 with Retry-After: that account waits as long as asked, the others do not."""
    from tests.fakeapi import FakeAPI

    assert cli("init").exit_code == 0
    with FakeAPI() as fake:
        result, engine, started = _throttled_run(home, fake, "2")
        engine.dispose()
    statuses = sorted(result.status.values())
    assert statuses == ["sent"] * 6, result.errors
    by = {
        a: [s.at - started for s in fake.sent if s.user.startswith(a.lower())] for a in ("jd", "mk")
    }
    assert len(by["jd"]) == 3 and len(by["mk"]) == 3
    # JD was refused first and waited the 2 s it was asked to; MK's mail went meanwhile.
    assert min(by["jd"]) >= 2.0, by
    assert max(by["mk"]) < 2.0, by
    assert sum(1 for r in fake.requests if r.path == "/v1.0/me/sendMail") == 7


def test_a_long_retry_after_leaves_the_accounts_mail_for_a_later_run(cli: Cli, home: Path) -> None:
    """Past MAX_PAUSE the run does not wait: the account's mail is due when the server said."""
    from cpmail.store.schema import messages
    from tests.fakeapi import FakeAPI

    assert cli("init").exit_code == 0
    with FakeAPI() as fake:
        result, engine, started = _throttled_run(home, fake, "3600")
        elapsed = time.monotonic() - started
        with engine.connect() as conn:
            rows = list(
                conn.execute(
                    sa.select(
                        messages.c.account,
                        messages.c.status,
                        messages.c.next_attempt_at,
                        messages.c.claimed_by,
                    )
                )
            )
        engine.dispose()
    assert elapsed < 30
    assert {s.user for s in fake.sent} == {"mk@agency.example"} and len(fake.sent) == 3
    jd = [r for r in rows if r.account == "JD"]
    assert [r.status for r in jd] == ["deferred"] * 3 and all(r.claimed_by is None for r in jd)
    soonest = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=55)
    assert all(r.next_attempt_at > soonest for r in jd), jd
    assert sorted(result.status.values()) == ["deferred"] * 3 + ["sent"] * 3


def test_a_daily_limit_for_one_recipient_leaves_another_refused_for_good(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Only the recipients the daily-limit answer names wait for tomorrow."""
    from cpmail.compose import Draft, Mailbox, build_message
    from cpmail.outbox import new_run_id, queue

    prepare(cli, smtp_server)
    msg = build_message(
        sender=Mailbox("jd@agency.test"),
        to=[Mailbox("gone@agency.test"), Mailbox("busy@agency.test")],
        subject="Two",
        text="A line.",
        event="message",
        key="two",
    )
    draft = Draft.from_message(
        msg, event="message", key="two", account="JD", envelope_from="jd@agency.test"
    )
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:
        queue(conn, draft, run_id=new_run_id())
    smtp_server.fail_rcpt = {
        "gone@agency.test": "550 5.1.1 no such user",
        "busy@agency.test": "550 5.4.5 Daily user sending limit exceeded",
    }
    cli("check", "--date", DATE)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(messages.c.status, messages.c.pending_rcpts, messages.c.refused_rcpts)
        ).one()
    engine.dispose()
    assert row.status == "deferred", row
    assert row.pending_rcpts == "busy@agency.test" and row.refused_rcpts == "gone@agency.test"
