"""`cpmail status [--probe] [--json]`: what it shows and its exit code (0, 1, 3) in each state.

More states (a revoked sign-in, a refusing relay, the database down, mail
waiting or failed) are run through in tests/test_alerts.py together with
their alerts.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from cpmail.oauth.microsoft import microsoft_sign_in
from cpmail.secrets import SecretStore
from cpmail.settings import Settings
from cpmail.store import SCHEMA_REVISION, connect, utcnow
from cpmail.store.schema import messages, runs
from tests.conftest import Cli
from tests.fakeapi import MS_CLIENT_ID, FakeAPI
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp

Factory = Callable[..., SMTPTestServer]


def status(cli: Cli, *args: str) -> tuple[int, dict[str, Any]]:
    r = cli("status", "--json", *args)
    doc: dict[str, Any] = json.loads(r.stdout)
    assert doc["exit_code"] == r.exit_code, r.output
    return r.exit_code, doc


def add_run(home: Path, **values: Any) -> None:
    engine = connect(Settings.load(home).db_url, where="test")
    now = utcnow()
    row = {
        "id": f"run-{time.monotonic_ns()}",
        "command": "check",
        "host": "cron-box",
        "pid": 4242,
        "started_at": now - dt.timedelta(minutes=2),
        "heartbeat_at": now - dt.timedelta(minutes=1),
        **values,
    }
    with engine.begin() as conn:
        conn.execute(runs.insert().values(**row))
    engine.dispose()


def test_a_fresh_home_is_healthy(initialised: Cli, home: Path) -> None:
    code, doc = status(initialised)
    assert code == 0
    assert doc["status"] == "healthy" and doc["problems"] == [] and doc["warnings"] == []
    assert set(doc) >= {"transport", "accounts", "last_check", "outbox", "database", "mail"}
    assert doc["transport"]["name"] == "file"
    assert doc["last_check"] is None
    assert doc["outbox"] == {
        "waiting": 0,
        "oldest_waiting_since": None,
        "next_try": None,
        "held_by_window": 0,
        "held_by_stopped": 0,
        "taken_up_at": None,
        "failed_7_days": 0,
        "sending_now": 0,
        "overdue_since": None,
    }
    assert doc["database"]["usable"] and doc["database"]["revision"] == SCHEMA_REVISION
    assert doc["mail"] == {"enabled": True, "send_window": "", "window_open": True}
    r = initialised("status")
    assert r.exit_code == 0
    for label in ("Status", "Transport", "Last check", "Outbox", "Database", "Sending"):
        assert any(line.startswith(label) for line in r.stdout.splitlines()), label


def test_no_home_is_exit_3_naming_init(cli: Cli) -> None:
    code, doc = status(cli)
    assert code == 3
    assert "cpmail init" in doc["database"]["error"]


def test_last_check_is_shown_with_its_counts(initialised: Cli, home: Path) -> None:
    now = utcnow()
    counts = {"found": 4, "sent": 3, "deferred": 1, "failed": 0, "skipped": 0, "suppressed": 0}
    add_run(
        home,
        started_at=now - dt.timedelta(hours=1),
        heartbeat_at=now - dt.timedelta(hours=1),
        ended_at=now - dt.timedelta(minutes=59),
        run_date=dt.date(2026, 11, 24),
        exit_code=0,
        counts=json.dumps(counts),
    )
    code, doc = status(initialised)
    assert code == 0
    lc = doc["last_check"]
    assert lc["state"] == "finished" and lc["exit_code"] == 0 and lc["host"] == "cron-box"
    assert lc["run_date"] == "2026-11-24" and lc["counts"] == counts
    text = initialised("status").stdout
    assert "for 2026-11-24" in text and "exit 0" in text and "3 sent" in text


def test_of_checks_that_overlapped_the_one_that_ended_last_is_shown(
    initialised: Cli, home: Path
) -> None:
    """A long check began first and ended last, unable to send: a short one that began
    after it and ended before it must not hide that."""
    now = utcnow()
    long_ago = now - dt.timedelta(minutes=30)
    add_run(home, id="run-long", started_at=long_ago, heartbeat_at=now, ended_at=now, exit_code=3)
    add_run(
        home,
        id="run-short",
        started_at=long_ago + dt.timedelta(minutes=1),
        heartbeat_at=long_ago + dt.timedelta(minutes=2),
        ended_at=long_ago + dt.timedelta(minutes=2),
        exit_code=0,
    )
    code, doc = status(initialised)
    assert doc["last_check"]["exit_code"] == 3 and code == 3, doc["last_check"]


def test_a_check_that_died_is_said(initialised: Cli, home: Path) -> None:
    now = utcnow()
    add_run(home, started_at=now - dt.timedelta(hours=3), heartbeat_at=now - dt.timedelta(hours=3))
    code, doc = status(initialised)
    assert doc["last_check"]["state"] == "did not finish"
    # what it found and had not queued is nowhere: not healthy until a check finishes
    assert code == 1 and "did not finish" in doc["warnings"][0], doc["warnings"]
    assert "DID NOT FINISH" in initialised("status").stdout
    add_run(home, started_at=now, heartbeat_at=now)
    assert status(initialised)[1]["last_check"]["state"] == "running"
    # killed on this machine a moment ago: its heartbeat is fresh, its process gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    later = now + dt.timedelta(seconds=1)
    add_run(home, started_at=later, heartbeat_at=later, host=socket.gethostname(), pid=dead.pid)
    assert status(initialised)[1]["last_check"]["state"] == "did not finish"


def test_whether_a_check_runs_is_judged_by_its_own_limit(initialised: Cli, home: Path) -> None:
    """Homes on one database may set different stale limits: each run is judged by its own.

    As the outbox's "waiting" is: a run renews five times within its limit,
    and three missed beats mean it stopped.
    """
    now = utcnow()
    assert initialised("config", "set", "outbox.stale_claim_minutes", "1").exit_code == 0
    # a run with 15 minutes beats once a minute: 100 s since its last beat is alive
    beat = now - dt.timedelta(seconds=100)
    add_run(home, started_at=beat, heartbeat_at=beat, expires_at=beat + dt.timedelta(minutes=15))
    assert status(initialised)[1]["last_check"]["state"] == "running"
    assert initialised("config", "set", "outbox.stale_claim_minutes", "15").exit_code == 0
    # a run with a 3-second limit beats every 0.6 s: silent for 10 s, it stopped
    beat = now - dt.timedelta(seconds=10)
    add_run(
        home,
        started_at=beat + dt.timedelta(seconds=1),
        heartbeat_at=beat,
        expires_at=beat + dt.timedelta(seconds=3),
    )
    assert status(initialised)[1]["last_check"]["state"] == "did not finish"


def test_a_last_check_that_could_not_send_is_exit_3(initialised: Cli, home: Path) -> None:
    now = utcnow()
    add_run(home, ended_at=now, exit_code=3, note="the SMTP server refused the connection")
    code, doc = status(initialised)
    assert code == 3
    assert "the last check could not send" in doc["problems"][0]
    assert "refused the connection" in doc["problems"][0]
    add_run(home, started_at=now + dt.timedelta(seconds=1), ended_at=now, exit_code=0)
    assert status(initialised)[0] == 0


def test_switch_and_send_window(initialised: Cli) -> None:
    cli = initialised
    assert cli("config", "set", "mail.enabled", "false").exit_code == 0
    assert cli("config", "set", "mail.send_window", "00:00-24:00").exit_code == 0
    code, doc = status(cli)
    assert code == 0
    assert doc["mail"] == {"enabled": False, "send_window": "00:00-24:00", "window_open": True}
    text = cli("status").stdout
    assert "OFF" in text and "00:00-24:00 (open now)" in text


def test_status_uses_no_network_without_probe(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, closed_port: int
) -> None:
    setup_smtp(cli, smtp_server)
    assert cli("config", "set", "mail.smtp.port", str(closed_port)).exit_code == 0
    started = time.monotonic()
    code, doc = status(cli)
    assert time.monotonic() - started < 5
    assert code == 0 and doc["probed"] is False
    assert doc["accounts"][0]["account"] == "JD" and doc["accounts"][0]["probe"] is None
    code, doc = status(cli, "--probe")
    assert code == 3
    assert "refused the connection" in doc["accounts"][0]["probe"]


def test_smtp_without_a_server_is_exit_3(initialised: Cli) -> None:
    assert initialised("config", "set", "mail.transport", "smtp").exit_code == 0
    code, doc = status(initialised)
    assert code == 3 and "mail.smtp.host" in doc["transport"]["problem"]


def test_probe_logs_in_without_sending(cli: Cli, home: Path, smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(tls="starttls", users={"jd@agency.test": "right"})
    setup_smtp(cli, server)
    assert cli("staff", "passcode", "JD", "--stdin", input="wrong-one\n").exit_code == 0
    code, doc = status(cli, "--probe")
    assert code == 3
    jd = doc["accounts"][0]
    assert jd["login"] == "passcode" and "refused the login" in jd["probe"]
    assert "wrong-one" not in json.dumps(doc)
    assert cli("staff", "passcode", "JD", "--stdin", input="right\n").exit_code == 0
    code, doc = status(cli, "--probe")
    assert code == 0 and doc["accounts"][0]["probe"] == "ok"
    assert [a.ok for a in server.auth_attempts] == [False, True]
    assert server.messages == []
    assert "login test ok" in cli("status", "--probe").stdout


# What a staff row written into the database by hand may hold where the address goes.
_STORED_BY_HAND = st.sampled_from(
    [
        "jd@agency.test",
        ">",
        "\r\n",
        "\n",
        "\r",
        " ",
        "\x00",
        "jd@agency.test>\r\nRCPT TO:<evil@attacker.example>\r\nDATA\r\n\r\nstolen\r\n.\r\n"
        "MAIL FROM:<jd@agency.test",
        "jd@agency.test> SIZE=1\r\nRCPT TO:<evil@attacker.example>",
        "jd@agency.test\nRCPT TO:<evil@attacker.example>",
        "jd@agency.test\rRCPT TO:<evil@attacker.example>",
        "jd@agency.test\u2028RCPT TO:<evil@attacker.example>",
        "jd@agency.test, evil@attacker.example",
        "Jane <jd@agency.test>",
    ]
)


@hyp_settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(username=st.lists(_STORED_BY_HAND, min_size=1, max_size=6).map("".join))
def test_probe_never_writes_a_bad_stored_address_into_a_command(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, username: str
) -> None:
    """A relay is asked with MAIL FROM whether it takes the account's address; an address
    written into the database by hand that is not one valid address never reaches the
    server (a line break in it would start commands of its own: a message to anyone)."""
    from cpmail.addresses import valid_address
    from cpmail.store.schema import staff

    if not (home / "cpmail.toml").exists():
        setup_smtp(cli, smtp_server)
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:
        conn.execute(staff.update().where(staff.c.id == "JD").values(username=username))
    smtp_server.reset()
    code, doc = status(cli, "--probe")
    commands = b"".join(smtp_server.reads)
    assert smtp_server.messages == []
    assert commands.count(b"MAIL FROM:") <= 1 and b"RCPT TO" not in commands
    if valid_address(username):
        assert code == 0 and doc["accounts"][0]["probe"] == "ok", doc["accounts"]
    else:
        assert code == 3 and b"MAIL FROM" not in commands, commands
        assert repr(username) in doc["accounts"][0]["probe"], doc["accounts"]


def test_probe_asks_for_an_international_sender_with_smtputf8(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """As a delivery does (RFC 6531); a server without SMTPUTF8 cannot take its mail."""
    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--work-email", "jürgen@agency.test").exit_code == 0
    code, doc = status(cli, "--probe")
    assert code == 0, doc["accounts"]
    [mail] = [r for r in smtp_server.reads if b"MAIL FROM" in r]
    assert mail == "MAIL FROM:<jürgen@agency.test> SMTPUTF8\r\n".encode()
    smtp_server._controller.SMTP_kwargs["enable_SMTPUTF8"] = False  # (read per connection)
    code, doc = status(cli, "--probe")
    assert code == 3 and "no SMTPUTF8" in doc["accounts"][0]["probe"], doc["accounts"]


def test_mail_that_fails_after_a_long_pause_counts_as_failed_lately(
    cli: Cli, home: Path, smtp_server_factory: Factory
) -> None:
    """Queued before ten days without a run (a server off over a holiday), mail fails for
    good on the first run after them: a failure of today, not of ten days ago."""
    from tests.test_alerts import _queue

    setup_smtp(cli, smtp_server_factory())
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    _queue(home, status="deferred", hours_ago=240, error="451 4.3.0 try again later")
    r = cli("check", "--date", "2026-11-24")
    assert r.exit_code == 1 and "1 failed" in r.output, r.output
    code, doc = status(cli)
    assert code == 1 and doc["outbox"]["failed_7_days"] == 1, doc
    assert "451 4.3.0" in doc["accounts"][0]["last_error"], doc["accounts"]


# ---------------------------------------------------------------- Gmail and Microsoft sign-ins


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as f:
        yield f


def test_an_account_not_signed_in_is_exit_3(initialised: Cli, home: Path) -> None:
    cli = initialised
    assert cli("config", "set", "mail.transport", "gmail").exit_code == 0
    assert cli("config", "set", "mail.gmail.client_secrets", "client.json").exit_code == 0
    r = cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
    assert r.exit_code == 0, r.output
    assert cli("config", "set", "user.staff", "JD").exit_code == 0
    code, doc = status(cli)
    assert code == 3
    jd = doc["accounts"][0]
    assert jd["signed_in"] is False and "cpmail staff signin JD" in jd["problem"]


@pytest.fixture
def ms_cli(initialised: Cli, home: Path, fake: FakeAPI) -> Cli:
    add = ("staff", "add", "JD", "--name", "Jo Doe", "--work-email", "jd@agency.example")
    assert initialised(*add).exit_code == 0
    settings = Settings.load(home)
    settings.set("mail.transport", "microsoft")
    settings.set("mail.microsoft.client_id", MS_CLIENT_ID)
    settings.set("mail.microsoft.authority_base", fake.base)
    settings.set("mail.microsoft.api_base", fake.base)
    settings.set("user.staff", "JD")
    settings.save()
    microsoft_sign_in(
        Settings.load(home),
        SecretStore(home),
        "JD",
        device_code=True,
        open_browser=False,
        say=lambda _: None,
    )
    return initialised


def test_microsoft_sign_in_dates_and_revocation(ms_cli: Cli, fake: FakeAPI) -> None:
    code, doc = status(ms_cli)
    assert code == 0
    jd = doc["accounts"][0]
    assert jd["signed_in"] is True and jd["address"] == "jd@agency.example"
    assert jd["login"] == "Microsoft sign-in"
    now = dt.datetime.now(dt.UTC)
    token = dt.datetime.fromisoformat(jd["token_expires"])
    lapses = dt.datetime.fromisoformat(jd["signin_lapses"])
    assert dt.timedelta(minutes=50) < token - now < dt.timedelta(minutes=70)
    assert dt.timedelta(days=89) < lapses - now < dt.timedelta(days=91)

    code, doc = status(ms_cli, "--probe")
    assert code == 0 and doc["accounts"][0]["probe"] == "ok"
    assert fake.sent == []

    fake.revoke_refresh_tokens()  # the token endpoint now answers invalid_grant
    assert status(ms_cli)[0] == 0  # nothing local shows it yet
    code, doc = status(ms_cli, "--probe")
    assert code == 3
    assert "invalid_grant" in doc["accounts"][0]["probe"]
    assert "cpmail staff signin JD" in doc["accounts"][0]["problem"]
    assert not any(t in json.dumps(doc) for t in fake.issued)
    said = ms_cli("status", "--probe").stdout  # a refused sign-in is good until nothing
    assert "CANNOT SEND" in said and "good until" not in said, said


def test_mail_being_sent_by_a_live_run_is_not_waiting(initialised: Cli, home: Path) -> None:
    from tests.test_alerts import _queue, _set

    now = utcnow()
    add_run(home, id="run-alive", heartbeat_at=now, expires_at=now + dt.timedelta(minutes=15))
    id_ = _queue(home, status="sending", hours_ago=0.1)
    _set(home, id_, claimed_at=now, claimed_by="run-alive")
    code, doc = status(initialised)
    assert code == 0 and doc["outbox"]["sending_now"] == 1 and doc["outbox"]["waiting"] == 1
    assert "1 being sent now" in initialised("status").stdout
    # a long run: claimed two hours ago, its heartbeat still fresh
    _set(home, id_, claimed_at=now - dt.timedelta(hours=2))
    code, doc = status(initialised)
    assert code == 0 and doc["outbox"]["sending_now"] == 1
    # its run died: no heartbeat for an hour
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:
        conn.execute(
            runs.update().values(
                heartbeat_at=now - dt.timedelta(hours=1), expires_at=now - dt.timedelta(minutes=45)
            )
        )
    engine.dispose()
    code, doc = status(initialised)
    assert code == 1 and doc["outbox"]["sending_now"] == 0


def test_without_its_database_status_says_unknown_not_never(
    initialised: Cli, home: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that cannot be reached tells nothing: not "no check has run yet"."""
    monkeypatch.setenv("CPMAIL_DATABASE_URL", f"postgresql+psycopg://cp@127.0.0.1:{closed_port}/cp")
    r = initialised("status")
    assert r.exit_code == 3, r.output
    assert "no check has run yet" not in r.stdout and "(no address)" not in r.stdout, r.stdout
    assert "unknown (no database)" in r.stdout


def test_no_account_to_send_from_is_a_problem(initialised: Cli) -> None:
    """Every check would stop with "no sender" (exit 2): status must not say HEALTHY."""
    assert initialised("config", "smtp", "--host", "127.0.0.1", "--security", "none").exit_code == 0
    code, doc = status(initialised)
    assert code == 3 and any("no sender" in p for p in doc["problems"]), doc["problems"]
    assert initialised("config", "set", "user.staff", "JD").exit_code != 0  # no such staff
    add = ("staff", "add", "JD", "--name", "Jo Doe", "--work-email", "jd@agency.test")
    assert initialised(*add).exit_code == 0
    assert initialised("config", "set", "user.staff", "JD").exit_code == 0
    assert initialised("staff", "edit", "JD", "--inactive").exit_code == 0
    code, doc = status(initialised)
    assert code == 3 and any("inactive" in p for p in doc["problems"]), doc["problems"]


def test_an_account_known_only_from_the_log_is_not_this_machines_problem(
    ms_cli: Cli, home: Path
) -> None:
    """Two machines on one database, each signed in as its own account: both are HEALTHY."""
    engine = connect(Settings.load(home).db_url, where="test")
    now = utcnow()
    with engine.begin() as conn:  # mail the other machine sent, from KM
        conn.execute(
            messages.insert().values(
                event="job-opened",
                account="KM",
                from_addr="km@agency.test",
                to_addrs="pat@agency.test",
                subject="Job opened",
                message_id="<km@agency.test>",
                status="sent",
                created_at=now,
                queued_at=now,
                sent_at=now,
            )
        )
    engine.dispose()
    code, doc = status(ms_cli)
    assert code == 0, doc["problems"]
    km = next(a for a in doc["accounts"] if a["account"] == "KM")
    assert km["problem"] is None and "not on this machine" in km["login"]


def test_mail_held_by_a_stopped_run_says_when_it_is_taken_up(initialised: Cli, home: Path) -> None:
    """Not "next try at the next check", and not `outbox retry --all` (which cannot touch it)."""
    from cpmail.outbox import claim, new_run_id
    from tests.test_faults import queue_messages

    queue_messages(home, 2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now, run = utcnow(), new_run_id()
    add_run(
        home,
        id=run,
        host=socket.gethostname(),
        pid=dead.pid,
        started_at=now,
        heartbeat_at=now,
        expires_at=now + dt.timedelta(minutes=15),
    )
    engine = connect(Settings.load(home).db_url, where="test")
    assert len(claim(engine, run_id=run)) == 2
    engine.dispose()
    doc = status(initialised)[1]
    box = doc["outbox"]
    assert box["held_by_stopped"] == 2 and box["next_try"] is None, box
    taken = dt.datetime.fromisoformat(box["taken_up_at"]).astimezone(dt.UTC).replace(tzinfo=None)
    assert abs((taken - (now + dt.timedelta(minutes=15))).total_seconds()) < 2
    text = initialised("status").stdout
    assert "2 held by a run that stopped, taken up again at" in text, text
    assert "next try at the next check" not in text, text
    r = initialised("check", "--date", "2026-11-24")
    assert r.exit_code == 1, r.output
    assert "outbox retry --all" not in r.stderr and "taken up" in r.stderr, r.stderr


def test_the_next_try_is_never_before_the_send_window_opens(initialised: Cli, home: Path) -> None:
    from tests.test_faults import queue_messages

    queue_messages(home, 1)
    past = utcnow() - dt.timedelta(hours=5)
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:
        conn.execute(messages.update().values(status="deferred", attempts=1, next_attempt_at=past))
    engine.dispose()
    now = dt.datetime.now()
    window = f"{(now + dt.timedelta(hours=2)):%H}:00-{(now + dt.timedelta(hours=3)):%H}:00"
    assert initialised("config", "set", "mail.send_window", window).exit_code == 0
    nxt = dt.datetime.fromisoformat(status(initialised)[1]["outbox"]["next_try"])
    assert nxt > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=59), nxt
    r = initialised("check", "--date", "2026-11-24", "--json")
    got = dt.datetime.fromisoformat(json.loads(r.stdout)["waiting"]["next_try"])
    assert got == nxt, (got, nxt)


def test_mail_of_a_silent_run_is_held_not_also_being_sent(initialised: Cli, home: Path) -> None:
    """A run on another machine went silent 5 minutes ago (its claims are its own for 10
    more): its mail was counted both as being sent now and as held by a run that stopped."""
    from cpmail.outbox import claim, new_run_id
    from tests.test_faults import queue_messages

    queue_messages(home, 5)
    now, run = utcnow(), new_run_id()
    beat = now - dt.timedelta(minutes=5)
    add_run(
        home, id=run, started_at=beat, heartbeat_at=beat, expires_at=beat + dt.timedelta(minutes=15)
    )
    engine = connect(Settings.load(home).db_url, where="test")
    assert len(claim(engine, run_id=run)) == 5
    engine.dispose()
    queue_messages(home, 3)
    box = status(initialised)[1]["outbox"]
    assert box["waiting"] == 8 and box["held_by_stopped"] == 5, box
    assert box["sending_now"] == 0, box
    text = initialised("status").stdout
    assert "being sent now" not in text and "next try at the next check" in text, text


@given(
    start=st.integers(0, 24 * 60 - 1),
    length=st.integers(1, 24 * 60 - 1),
    day=st.sampled_from(
        [dt.datetime(2026, 3, 7), dt.datetime(2026, 10, 31), dt.datetime(2026, 6, 1)]
    ),
    minute=st.integers(0, 3 * 24 * 60),
)
@example(start=150, length=1050, day=dt.datetime(2026, 3, 7), minute=24 * 60 + 300)  # 02:30
@example(start=90, length=1110, day=dt.datetime(2026, 10, 31), minute=24 * 60 + 240)  # 01:30
@example(start=150, length=1390, day=dt.datetime(2026, 3, 7), minute=24 * 60 + 400)
@example(start=75, length=1435, day=dt.datetime(2026, 10, 31), minute=24 * 60 + 370)
@example(start=90, length=15, day=dt.datetime(2026, 10, 31), minute=24 * 60 + 345)
@hyp_settings(max_examples=150, deadline=None)
def test_the_send_window_opens_at_the_first_minute_in_it(
    start: int, length: int, day: dt.datetime, minute: int
) -> None:
    """Around the days the clocks change too (New York): what status and check call the
    window's opening is the first minute the sending itself finds the window open."""
    import tempfile

    from cpmail.outbox import in_send_window, window_opens

    end = (start + length) % (24 * 60)
    settings = Settings.load(Path(tempfile.mkdtemp()))
    settings.set("agency.timezone", "America/New_York")
    settings.set(
        "mail.send_window", f"{start // 60:02}:{start % 60:02}-{end // 60:02}:{end % 60:02}"
    )
    tz = settings.tz()
    now = day + dt.timedelta(minutes=minute)

    def open_at(t: dt.datetime) -> bool:
        return in_send_window(settings, t.replace(tzinfo=dt.UTC).astimezone(tz))

    opens = window_opens(settings, now)
    if open_at(now):
        assert opens is None
        return
    assert opens is not None and opens > now and open_at(opens), (now, opens)
    before = opens - dt.timedelta(minutes=1)
    assert before <= now or not open_at(before), (now, opens)


def test_a_database_another_process_holds_is_said_in_seconds(initialised: Cli, home: Path) -> None:
    """Another process holds SQLite's lock: status waits a few seconds, not the minute a
    command may wait to write, and says so (exit 3); alerts after a check use it too."""
    import sqlite3

    holder = sqlite3.connect(home / "cpmail.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        code, doc = status(initialised)
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert waited < 15, f"{waited:.1f} s"
    assert code == 3 and "locked" in json.dumps(doc["database"]), doc["database"]


def test_retry_and_drop_of_mail_a_stopped_run_holds_say_so(initialised: Cli, home: Path) -> None:
    """Claimed by a run that was killed, a message is not "being sent": it is taken up
    again once the claim lapses. retry and drop leave it, and say that."""
    from tests.test_alerts import _queue, _set

    now = utcnow()
    add_run(home, id="run-dead", started_at=now - dt.timedelta(hours=1), heartbeat_at=now)
    id_ = _queue(home, status="sending", hours_ago=1)
    _set(home, id_, claimed_at=now - dt.timedelta(hours=1), claimed_by="run-dead")
    for command in ("retry", "drop"):
        r = initialised("outbox", command, str(id_))
        assert r.exit_code == 0, r.output
        assert "a run has it claimed" in r.stderr and "stale_claim_minutes" in r.stderr, r.stderr
        assert "being sent" not in r.output and "it is sending" not in r.output


def test_the_next_try_is_never_said_while_sending_is_off(initialised: Cli, home: Path) -> None:
    from tests.test_alerts import _queue

    _queue(home, status="deferred", hours_ago=1, error="451 4.3.0 later")
    assert initialised("config", "disable").exit_code == 0
    text = initialised("status").stdout
    assert "nothing is sent until `cpmail config enable`" in text and "next try" not in text, text


def test_a_test_message_whose_command_was_killed_neither_waits_nor_is_being_sent(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """`staff test` killed while the server has its message: no run ever sends it (the
    next check fails it), so status counts it neither as waiting nor as on its way."""
    import os
    import signal

    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    engine = connect(Settings.load(home).db_url, where="test")

    def claimed() -> bool:
        with engine.connect() as conn:
            q = messages.select().where(messages.c.status == "sending")
            return conn.execute(q).first() is not None

    smtp_server.accept_delay = 3.0
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpmail", "staff", "test", "JD"],
        env={**os.environ, "CPMAIL_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not claimed() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert claimed()
        # while its command lives, it is on its way
        code, doc = status(cli)
        assert code == 0 and doc["outbox"]["sending_now"] == 1, doc["outbox"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    engine.dispose()
    code, doc = status(cli)
    box, jd = doc["outbox"], doc["accounts"][0]
    assert (box["waiting"], box["sending_now"], box["oldest_waiting_since"]) == (0, 0, None), box
    assert jd["waiting"] == 0, jd
    said = cli("status").stdout
    assert "being sent now" not in said and "nothing waiting" in said, said
    r = cli("check", "--date", "2026-11-24")  # and check says the same: nothing waits
    assert r.exit_code == 0 and "wait" not in r.stderr, r.output


@pytest.mark.parametrize(("code", "said"), [(3, "could not send"), (2, "failed (exit 2")])
def test_a_check_still_running_does_not_hide_what_the_last_finished_one_found(
    initialised: Cli, home: Path, code: int, said: str
) -> None:
    """A monitor polling while the next check runs must not see "healthy" in between:
    until that check ends, the last one that finished has the last word."""
    now = utcnow()
    before = now - dt.timedelta(minutes=5)
    add_run(home, started_at=before, heartbeat_at=before, ended_at=before, exit_code=code)
    add_run(
        home, started_at=now, heartbeat_at=now, expires_at=now + dt.timedelta(minutes=15)
    )  # running now, its outcome not known yet
    got, doc = status(initialised)
    assert doc["last_check"]["state"] == "running"
    assert got == 3 and any(said in p for p in doc["problems"]), doc["problems"]
    text = initialised("status").stdout
    assert "still running" in text and "CANNOT SEND" in text, text
    # it ends well: that is the last word now
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:
        conn.execute(
            runs.update().where(runs.c.started_at == now).values(ended_at=utcnow(), exit_code=0)
        )
    engine.dispose()
    assert status(initialised)[0] == 0


def test_an_error_before_the_last_message_sent_is_not_shown_as_the_accounts_state(
    cli: Cli, home: Path, smtp_server_factory: Factory
) -> None:
    """A test message that failed (the server down), then one that went: the account line
    says "ok", not the old error; --json keeps the error and when it came."""
    server = smtp_server_factory()
    setup_smtp(cli, server)
    server.stop()
    assert cli("staff", "test", "JD").exit_code == 3
    line = next(x for x in cli("status").stdout.splitlines() if x.startswith("Account JD"))
    assert "last error:" in line, line
    again = smtp_server_factory()
    assert cli("config", "set", "mail.smtp.port", str(again.port)).exit_code == 0
    assert cli("staff", "test", "JD").exit_code == 0
    line = next(x for x in cli("status").stdout.splitlines() if x.startswith("Account JD"))
    assert line.endswith(" · ok") and "last error" not in line, line
    _, doc = status(cli)
    [acct] = doc["accounts"]
    assert acct["last_error"] and acct["error_at"] and acct["error_at"] <= acct["last_sent"], acct


def test_a_window_inside_the_hour_the_clocks_skip_opens_the_day_after() -> None:
    """02:00-02:01 in New York on the day before the clocks go forward: it opens next not
    on that morning (there is no 02:00) but the morning after."""
    import tempfile

    from cpmail.outbox import window_opens

    settings = Settings.load(Path(tempfile.mkdtemp()))
    settings.set("agency.timezone", "America/New_York")
    settings.set("mail.send_window", "02:00-02:01")
    opens = window_opens(settings, dt.datetime(2026, 3, 7, 7, 1))  # 02:01 on Saturday
    assert opens == dt.datetime(2026, 3, 9, 6, 0), opens  # 02:00 EDT on Monday


def test_mail_sent_by_a_retry_after_a_check_that_could_not_send_clears_that_check(
    cli: Cli, home: Path, smtp_server_factory: Factory
) -> None:
    """The newest delivery has the word, whichever command made it: a check that could not
    reach the server (exit 3), then `outbox retry` that sent its mail, is healthy; a retry
    that cannot reach the server after a check that went well is not."""
    from tests.test_alerts import agency, check, new_job

    server = smtp_server_factory()
    setup_smtp(cli, server)
    agency(home)
    server.stop()
    new_job(home, "J1")
    assert check(cli) == 3
    code, doc = status(cli)
    # ... saying why: the run's own words, as the check said them
    why = f"could not send (exit 3): the SMTP server 127.0.0.1:{server.port}"
    assert code == 3 and any(why in p for p in doc["problems"]), doc
    assert doc["last_check"]["note"].startswith(why.split(": ", 1)[1]), doc["last_check"]
    again = smtp_server_factory()
    assert cli("config", "set", "mail.smtp.port", str(again.port)).exit_code == 0
    r = cli("outbox", "retry", "--all")
    assert r.exit_code == 0 and len(again.messages) == 3, r.output
    code, doc = status(cli)
    assert (code, doc["problems"], doc["warnings"]) == (0, [], []), doc
    assert doc["last_check"]["exit_code"] == 3  # the check itself is shown as it ended
    text = cli("status").stdout
    assert text.startswith("Status        HEALTHY (exit 0)"), text

    # and the other way round: a check that went well, then a message that could not go
    new_job(home, "J2")
    assert check(cli) == 0 and len(again.messages) == 6
    assert status(cli)[0] == 0
    again.stop()
    assert cli("message", "manager", "The printer is out of toner.").exit_code == 3
    code, doc = status(cli)
    said = "by `cpmail message` or `cpmail send-report`, could not send (exit 3): "
    said += f"the SMTP server 127.0.0.1:{again.port}"
    assert code == 3 and any(said in p for p in doc["problems"]), doc
    assert cli("outbox", "retry", "--all").exit_code == 3
    assert status(cli)[0] == 3
