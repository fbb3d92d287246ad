"""Alerts through Apprise, received by a real local HTTP server (json://127.0.0.1:PORT).

Each condition is alerted once, never again while it lasts, and "resolved" once
when it clears: a revoked Google sign-in (the fake token endpoint answers
invalid_grant), an SMTP relay that refuses, a database that is down, mail that
waits too long, mail that failed for good, a sign-in about to lapse.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cpmail.alerts import after_check, evaluate
from cpmail.oauth import google
from cpmail.secrets import SecretStore
from cpmail.settings import Settings
from cpmail.store import connect, utcnow
from cpmail.store.schema import message_bodies, messages
from tests.agency import D, at, base_agency, insert
from tests.conftest import Cli
from tests.fakeapi import GOOGLE_CLIENT_SECRET, FakeAPI, google_client
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp
from tests.test_gmail import store_signin


class Receiver:
    """An HTTP server that keeps every JSON body Apprise posts to it."""

    def __init__(self, status: int = 200) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.posts.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"json://127.0.0.1:{self.port}/alerts"
        self._thread = threading.Thread(
            # shutdown() waits for the next poll: 0.5 s by default, for every test
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take(self) -> list[dict[str, Any]]:
        """The posts received since the last call."""
        got, self.posts = self.posts, []
        return got


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def set_urls(cli: Cli, *urls: str) -> None:
    r = cli("config", "set", "alerts.urls", json.dumps(list(urls)))
    assert r.exit_code == 0, r.output


def one_alert(receiver: Receiver) -> dict[str, Any]:
    posts = receiver.take()
    assert len(posts) == 1, posts
    return posts[0]


def agency(home: Path) -> None:
    engine = connect(Settings.load(home).db_url, where="test")
    base_agency(engine)
    engine.dispose()


def new_job(home: Path, job: str) -> None:
    """A job opened on D: the next check notifies its team (three messages)."""
    engine = connect(Settings.load(home).db_url, where="test")
    insert(engine, "jobs", [dict(id=job, client_id="C1", title="Spring launch", opened_at=at(D))])
    engine.dispose()


def check(cli: Cli) -> int:
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code in (0, 1, 3), r.output
    return r.exit_code


def status_json(cli: Cli, *args: str) -> tuple[int, dict[str, Any]]:
    r = cli("status", "--json", *args)
    doc: dict[str, Any] = json.loads(r.stdout)
    assert doc["exit_code"] == r.exit_code
    return r.exit_code, doc


# ---------------------------------------------------------------- a revoked Google sign-in


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as f:
        yield f


def setup_gmail(cli: Cli, home: Path, fake: FakeAPI) -> None:
    assert cli("init").exit_code == 0
    settings = Settings.load(home)
    settings.set("mail.transport", "gmail")
    settings.set("mail.gmail.client_secrets", google.STORED_CLIENT)
    settings.set("mail.gmail.api_base", fake.base)
    settings.set("user.staff", "JD")
    settings.save()
    SecretStore(home).set(google.GOOGLE_CLIENT_SECRET, json.dumps(google_client(fake.base)))
    r = cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.example")
    assert r.exit_code == 0, r.output


def test_revoked_google_signin_alerts_once_then_resolves(
    cli: Cli, home: Path, fake: FakeAPI, receiver: Receiver
) -> None:
    setup_gmail(cli, home, fake)
    now = dt.datetime.now(dt.UTC)
    store_signin(home, fake, "JD", "jd@agency.example", expiry=now + dt.timedelta(hours=1))
    set_urls(cli, receiver.url)
    agency(home)
    new_job(home, "J1")
    assert check(cli) == 0
    after_check(home, 0)
    assert receiver.take() == []  # healthy: nothing to say
    assert status_json(cli)[0] == 0

    # Google revokes the sign-in; the access token has run out, so cpmail must renew it.
    store_signin(home, fake, "JD", "jd@agency.example", expiry=now - dt.timedelta(hours=1))
    fake.revoke_refresh_tokens()
    new_job(home, "J2")
    assert check(cli) == 3
    after_check(home, 3)
    alert = one_alert(receiver)
    assert alert["type"] == "failure"
    assert "cpmail check ended with exit 3" in alert["message"]
    assert "Account JD (jd@agency.example) cannot send" in alert["message"]
    assert "invalid_grant" in alert["message"]
    assert "cpmail staff signin JD" in alert["message"]
    assert "1//refresh" not in alert["message"] and "ya29" not in alert["message"]
    assert GOOGLE_CLIENT_SECRET not in json.dumps(alert)

    for _ in range(3):  # the next cron runs: the same trouble, nothing repeated
        after_check(home, 3)
    assert receiver.take() == []

    code, doc = status_json(cli)
    assert code == 3
    jd = doc["accounts"][0]
    assert jd["account"] == "JD" and jd["signed_in"] is True
    assert "invalid_grant" in jd["problem"]
    assert doc["outbox"]["waiting"] == 3
    human = cli("status")
    assert human.exit_code == 3
    assert "CANNOT SEND" in human.stdout and "Account JD" in human.stdout

    # --probe asks Google itself: still refused
    code, doc = status_json(cli, "--probe")
    assert code == 3 and doc["accounts"][0]["probe"] != "ok"

    # The manager signs in again; the next check sends what waited.
    store_signin(home, fake, "JD", "jd@agency.example", expiry=now + dt.timedelta(hours=1))
    code, doc = status_json(cli, "--probe")
    assert doc["accounts"][0]["probe"] == "ok" and doc["accounts"][0]["problem"] is None
    assert code == 1  # the messages still wait
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert check(cli) == 0
    after_check(home, 0)
    alert = one_alert(receiver)
    assert alert["type"] == "success"
    assert alert["message"].count("RESOLVED") == 2 and "PROBLEM" not in alert["message"]
    after_check(home, 0)
    assert receiver.take() == []
    assert status_json(cli)[0] == 0


def test_signin_about_to_lapse_alerts_once(
    cli: Cli, home: Path, fake: FakeAPI, receiver: Receiver
) -> None:
    setup_gmail(cli, home, fake)
    set_urls(cli, receiver.url)
    # Last renewed almost six months ago: Google ends a sign-in unused that long.
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=179)
    store_signin(home, fake, "JD", "jd@agency.example", expiry=long_ago)
    code, doc = status_json(cli)
    assert code == 0
    lapses = dt.datetime.fromisoformat(doc["accounts"][0]["signin_lapses"])
    assert dt.timedelta(days=2) < lapses - dt.datetime.now(dt.UTC) < dt.timedelta(days=4)
    assert cli("config", "set", "alerts.token_days", "1").exit_code == 0
    after_check(home, 0)
    assert receiver.take() == []
    assert cli("config", "set", "alerts.token_days", "7").exit_code == 0
    after_check(home, 0)
    alert = one_alert(receiver)
    assert "The sign-in of account JD (jd@agency.example) ends on" in alert["message"]
    after_check(home, 0)
    assert receiver.take() == []
    # Sending renews the sign-in: the condition clears.
    assert cli("staff", "test", "JD").exit_code == 0
    after_check(home, 0)
    assert "RESOLVED" in one_alert(receiver)["message"]


# ---------------------------------------------------------------- an SMTP relay that refuses


def test_relay_refusing_alerts_once_then_resolves(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, receiver: Receiver
) -> None:
    setup_smtp(cli, smtp_server)
    set_urls(cli, receiver.url)
    agency(home)
    smtp_server.require_auth = True  # "530 authentication required": this machine may not relay
    new_job(home, "J1")
    assert check(cli) == 3
    after_check(home, 3)
    alert = one_alert(receiver)
    assert "Account JD (jd@agency.test) cannot send" in alert["message"]
    assert "without a login" in alert["message"]
    after_check(home, 3)
    assert receiver.take() == []

    code, doc = status_json(cli)
    assert code == 3
    assert doc["accounts"][0]["login"] == "no login (relay)"
    code, doc = status_json(cli, "--probe")
    assert code == 3 and "530" in doc["accounts"][0]["probe"]
    assert smtp_server.messages == []  # the probe sent nothing

    smtp_server.require_auth = False
    code, doc = status_json(cli, "--probe")
    assert code == 1 and doc["accounts"][0]["probe"] == "ok"
    assert smtp_server.messages == []
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert check(cli) == 0
    assert len(smtp_server.messages) == 3
    after_check(home, 0)
    assert one_alert(receiver)["message"].count("RESOLVED") == 2
    after_check(home, 0)
    assert receiver.take() == []


# ---------------------------------------------------------------- the database down


def test_database_down_alerts_once_without_its_password(
    cli: Cli, home: Path, receiver: Receiver, closed_port: int
) -> None:
    assert cli("init").exit_code == 0
    set_urls(cli, receiver.url)
    url = f"postgresql+psycopg://cpmail:Pa55word-x9@127.0.0.1:{closed_port}/cpmail"
    assert cli("config", "set", "database.url", url).exit_code == 0
    started = time.monotonic()
    after_check(home, 3)
    assert time.monotonic() - started < 15
    alert = one_alert(receiver)
    assert "The database cannot be used" in alert["message"]
    assert "Pa55word-x9" not in json.dumps(alert)
    after_check(home, 3)
    after_check(home, 3)
    assert receiver.take() == []

    code, doc = status_json(cli)
    assert code == 3
    assert doc["database"]["reachable"] is False and doc["outbox"] is None
    human = cli("status")
    assert human.exit_code == 3 and "CANNOT BE USED" in human.stdout
    assert "Pa55word-x9" not in human.output + json.dumps(doc)

    assert cli("config", "set", "database.url", "").exit_code == 0
    after_check(home, 0)
    alert = one_alert(receiver)
    assert (
        alert["type"] == "success" and "RESOLVED: The database cannot be used" in alert["message"]
    )
    after_check(home, 0)
    assert receiver.take() == []


def test_damaged_database_file_is_exit_3(cli: Cli, home: Path) -> None:
    assert cli("init").exit_code == 0
    db = home / "cpmail.db"
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    # In a process of its own: SQLite shares what it knows of a file between the
    # connections of one process, and earlier commands of this test ran in this one.
    r = subprocess.run(
        [sys.executable, "-m", "cpmail", "status", "--json"],
        env={**os.environ, "CPMAIL_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = json.loads(r.stdout)
    assert r.returncode == 3 and doc["database"]["usable"] is False


# ---------------------------------------------------------------- mail waiting, mail failed


def _queue(home: Path, *, status: str, hours_ago: float, error: str | None = None) -> int:
    engine = connect(Settings.load(home).db_url, where="test")
    now = utcnow()
    queued = now - dt.timedelta(hours=hours_ago)
    with engine.begin() as conn:
        id_ = conn.execute(
            messages.insert().values(
                event="job-opened",
                account="JD",
                from_addr="jd@agency.test",
                to_addrs="pat@agency.test",
                pending_rcpts="pat@agency.test",
                subject="[C&P] Job 1234 opened",
                message_id="<x@agency.test>",
                status=status,
                attempts=2,
                created_at=queued,
                queued_at=queued,
                next_attempt_at=now + dt.timedelta(minutes=30) if status == "deferred" else None,
                failed_at=queued if status == "failed" else None,
                last_error=error,
            )
        ).inserted_primary_key
        assert id_ is not None
        text = b"Subject: secret body text\r\n\r\nconfidential words\r\n"
        conn.execute(message_bodies.insert().values(message_id=id_[0], raw=text))
    engine.dispose()
    return int(id_[0])


def _set(home: Path, id_: int, **values: Any) -> None:
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == id_).values(**values))
    engine.dispose()


def test_mail_waiting_past_the_limit_alerts_once(
    initialised: Cli, home: Path, receiver: Receiver
) -> None:
    cli = initialised
    set_urls(cli, receiver.url)
    id_ = _queue(home, status="deferred", hours_ago=1, error="451 4.3.0 try again later")
    code, doc = status_json(cli)
    assert code == 1
    assert doc["outbox"]["waiting"] == 1 and doc["outbox"]["next_try"]
    after_check(home, 0)
    assert receiver.take() == []  # one hour: within waiting_hours

    _set(home, id_, queued_at=utcnow() - dt.timedelta(hours=5))
    after_check(home, 0)
    alert = one_alert(receiver)
    assert "1 message(s) waiting in the outbox" in alert["message"]
    assert "over 4 hours" in alert["message"]
    assert "confidential" not in json.dumps(alert) and "secret body" not in json.dumps(alert)
    _set(home, id_, queued_at=utcnow() - dt.timedelta(hours=9))
    after_check(home, 0)
    assert receiver.take() == []
    # the send window closes: the wait is not counted then, but nothing was resolved either
    now = dt.datetime.now(Settings.load(home).tz())
    closed = f"{(now + dt.timedelta(hours=2)):%H}:00-{(now + dt.timedelta(hours=3)):%H}:00"
    assert cli("config", "set", "mail.send_window", closed).exit_code == 0
    after_check(home, 0)
    assert receiver.take() == []
    assert cli("config", "set", "mail.send_window", "").exit_code == 0
    after_check(home, 0)
    assert receiver.take() == []  # still the same problem: not raised again

    _set(home, id_, status="sent", sent_at=utcnow(), next_attempt_at=None, last_error=None)
    after_check(home, 0)
    assert "RESOLVED: 1 message(s) waiting" in one_alert(receiver)["message"]
    after_check(home, 0)
    assert receiver.take() == []
    assert status_json(cli)[0] == 0


def test_waiting_for_the_send_window_is_not_news(initialised: Cli, home: Path) -> None:
    cli = initialised
    now = dt.datetime.now()
    closed = f"{(now + dt.timedelta(hours=2)):%H}:00-{(now + dt.timedelta(hours=3)):%H}:00"
    assert cli("config", "set", "mail.send_window", closed).exit_code == 0
    _queue(home, status="queued", hours_ago=10)
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:
        conn.execute(messages.update().values(attempts=0))
    engine.dispose()
    code, doc = status_json(cli)
    assert code == 0, doc
    assert doc["outbox"]["held_by_window"] == 1 and doc["mail"]["window_open"] is False
    assert "(closed now)" in cli("status").stdout


def test_mail_failed_for_good_alerts_once(initialised: Cli, home: Path, receiver: Receiver) -> None:
    cli = initialised
    set_urls(cli, receiver.url)
    id_ = _queue(home, status="failed", hours_ago=2, error="550 5.1.1 no such user")
    code, doc = status_json(cli)
    assert code == 1 and doc["outbox"]["failed_7_days"] == 1
    after_check(home, 1)
    alert = one_alert(receiver)
    assert "1 message(s) failed for good" in alert["message"]
    assert "cpmail check ended with exit 1" in alert["message"]
    after_check(home, 1)
    assert receiver.take() == []
    # exit 1 -> 3 is news; 3 -> 3 is not
    after_check(home, 3)
    assert "ended with exit 3" in one_alert(receiver)["message"]
    after_check(home, 3)
    assert receiver.take() == []
    assert cli("outbox", "drop", str(id_)).exit_code == 0
    after_check(home, 0)
    alert = one_alert(receiver)
    assert alert["message"].count("RESOLVED") == 2
    assert status_json(cli)[0] == 0


# ---------------------------------------------------------------- never in the check's way


def test_an_alert_url_that_is_down_is_tried_again_later(
    initialised: Cli, home: Path, receiver: Receiver, closed_port: int, capsys: Any
) -> None:
    cli = initialised
    set_urls(cli, f"json://127.0.0.1:{closed_port}/down")
    _queue(home, status="failed", hours_ago=1, error="550 no")
    started = time.monotonic()
    after_check(home, 1)
    assert time.monotonic() - started < 15
    assert "alerts:" in capsys.readouterr().err
    set_urls(cli, receiver.url)
    after_check(home, 1)  # nobody heard it the first time: it is sent now
    assert "failed for good" in one_alert(receiver)["message"]


def test_after_check_never_raises(home: Path, receiver: Receiver, capsys: Any) -> None:
    home.mkdir(parents=True)
    (home / "cpmail.toml").write_text("[mail\nbroken = ", encoding="utf-8")
    after_check(home, 3)  # a broken settings file: no exception, and no second word of it
    assert capsys.readouterr().err == ""  # (the check said why it stopped)
    after_check(home / "nowhere", 3)  # no home at all: nothing configured, nothing to do


def test_no_urls_means_nothing_is_evaluated(initialised: Cli, home: Path) -> None:
    _queue(home, status="failed", hours_ago=1, error="550 no")
    assert evaluate(home, 1) == []
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alert_state")).scalar_one() == 0
    engine.dispose()


# ---------------------------------------------------------------- cpmail alerts test


def test_alerts_test_says_which_url_worked(
    initialised: Cli, receiver: Receiver, closed_port: int
) -> None:
    cli = initialised
    r = cli("alerts", "test")
    assert r.exit_code == 2 and "no alert URLs" in r.stderr
    set_urls(cli, receiver.url)
    r = cli("alerts", "test")
    assert r.exit_code == 0, r.output
    assert "1 of 1" in r.stdout
    assert one_alert(receiver)["title"].endswith("test alert")
    # the secret of a webhook is as often its path as its password
    secret_url = f"json://alice:S3cr3t-token@127.0.0.1:{closed_port}/hooks/PathTok3n99?k=Qu3ry"
    set_urls(cli, receiver.url, secret_url)
    r = cli("alerts", "test")
    assert r.exit_code == 1
    assert "1 of 2" in r.stdout and "FAILED" in r.stdout
    for secret in ("S3cr3t-token", "PathTok3n99", "Qu3ry"):
        assert secret not in r.output, r.output
    assert f"127.0.0.1:{closed_port}/…" in r.stdout
    assert len(receiver.take()) == 1
    r = cli("alerts", "test", "--json")
    assert r.exit_code == 1
    assert [x["ok"] for x in json.loads(r.stdout)] == [True, False]


@pytest.mark.parametrize("topic", ["Tq7Topic%2Dxyz", "Tq7"])
def test_a_refused_alert_never_quotes_its_topic(initialised: Cli, topic: str) -> None:
    """Apprise's words name an ntfy topic decoded ('Tq7Topic-xyz'), and a short one too:
    the topic is the secret of an ntfy URL."""
    refusing = Receiver(status=500)
    try:
        set_urls(initialised, f"ntfy://127.0.0.1:{refusing.port}/{topic}")
        r = initialised("alerts", "test")
    finally:
        refusing.stop()
    assert r.exit_code == 1 and "FAILED" in r.stdout, r.output
    for secret in {topic, urllib.parse.unquote(topic)}:
        assert secret not in r.output, r.output


def test_help_does_not_import_apprise_or_the_status_code() -> None:
    code = (
        "import sys\n"
        "from cpmail.cli.app import app\n"
        "for args in (['--help'], ['status', '--help'], ['alerts', 'test', '--help']):\n"
        "    try:\n"
        "        app(args, prog_name='cpmail')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "names = ('apprise', 'cpmail.alerts', 'cpmail.status')\n"
        "print('HEAVY', [m for m in names if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout


# ---------------------------------------------------------------- several machines, one database


@pytest.mark.postgres
def test_two_machines_on_one_database_alert_once(
    cli: Cli, home: Path, tmp_path: Path, pg_url: str, receiver: Receiver
) -> None:
    other = Cli(tmp_path / "other-machine")
    for c in (cli, other):
        assert c("config", "set", "database.url", pg_url).exit_code == 0
        assert c("init").exit_code == 0
        set_urls(c, receiver.url)
    _queue(home, status="failed", hours_ago=1, error="550 5.1.1 no such user")
    assert status_json(other)[1]["outbox"]["failed_7_days"] == 1
    threads = [threading.Thread(target=after_check, args=(h, 1)) for h in (home, other.home) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "failed for good" in one_alert(receiver)["message"]
    engine = connect(pg_url, where="test")
    with engine.begin() as conn:
        conn.execute(messages.delete())
    engine.dispose()
    after_check(other.home, 0)
    after_check(home, 0)
    assert one_alert(receiver)["message"].count("RESOLVED") == 2


def test_runs_at_the_same_time_alert_once(initialised: Cli, home: Path, receiver: Receiver) -> None:
    set_urls(initialised, receiver.url)
    _queue(home, status="failed", hours_ago=1, error="550 5.1.1 no such user")
    threads = [threading.Thread(target=after_check, args=(home, 1)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "failed for good" in one_alert(receiver)["message"]


def test_a_sign_in_as_another_mailbox_is_a_problem(cli: Cli, home: Path, fake: FakeAPI) -> None:
    """Mail would leave as someone.else@, not as the sender cpmail names: status says so."""
    setup_gmail(cli, home, fake)
    now = dt.datetime.now(dt.UTC)
    store_signin(
        home, fake, "JD", "someone.else@agency.example", expiry=now + dt.timedelta(hours=1)
    )
    code, doc = status_json(cli)
    assert code == 3, doc
    [problem] = [p for p in doc["problems"] if "signed in as" in p]
    assert "someone.else@agency.example but sends as jd@agency.example" in problem
    store_signin(home, fake, "JD", "jd@agency.example", expiry=now + dt.timedelta(hours=1))
    assert status_json(cli)[0] == 0


def test_a_retry_by_hand_keeps_a_deferred_messages_wait_and_restarts_a_failed_one(
    initialised: Cli, home: Path
) -> None:
    """Status's "waiting since" (and the waiting alert) must not reset when nothing went."""
    from cpmail.outbox import retry

    deferred = _queue(home, status="deferred", hours_ago=6, error="451 4.3.0 later")
    failed = _queue(home, status="failed", hours_ago=6, error="550 5.1.1 no such user")
    engine = connect(Settings.load(home).db_url, where="test")
    assert retry(engine, None) == (2, {})
    with engine.connect() as conn:
        rows = {
            r.id: r.queued_at for r in conn.execute(sa.select(messages.c.id, messages.c.queued_at))
        }
    engine.dispose()
    now = utcnow()
    assert now - rows[deferred] > dt.timedelta(hours=5)  # waiting since it was queued
    assert now - rows[failed] < dt.timedelta(minutes=5)  # in the queue again from now


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("ntfy://agency-alerts-Q7x9Kp2", "Q7x9Kp2"),
        ("ntfys://ntfy.example.com/topicQ7x9Kp2", "Q7x9Kp2"),
        ("goalert://TOKENQ7x9Kp2abc", "Q7x9Kp2"),
        ("dot://TOKENQ7x9Kp2abc", "Q7x9Kp2"),
        ("json://127.0.0.1:8080/hook/SECRETQ7x9Kp2", "Q7x9Kp2"),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "JHMHI8qBe7"),
        ("mailto://user:pwQ7x9Kp2@example.com", "Q7x9Kp2"),
        ("gotify://hostname/tokenQ7x9Kp2", "Q7x9Kp2"),
    ],
)
def test_an_alert_url_is_shown_without_its_secret_wherever_it_sits(url: str, secret: str) -> None:
    """As `alerts test` and status show one: the topic or token may stand where the host
    goes (ntfy's cloud form, goalert, dot), not only in the path."""
    import apprise

    from cpmail.alerts import _shown

    plugin = apprise.Apprise.instantiate(url)
    assert plugin is not None
    shown = _shown(str(plugin.url(privacy=True)))  # type: ignore[no-untyped-call]
    assert secret not in shown, shown
    assert shown.startswith(url.split("://")[0][:4]), shown


def test_an_alert_nobody_heard_in_time_is_sent_by_the_next_run(
    initialised: Cli, home: Path, receiver: Receiver
) -> None:
    """Alert services that take the connection and never answer use up the time alerts
    have: what was to be said is not on record as said, and the next run says it."""
    import socket

    cli = initialised
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections are taken by the system, and never answered
    try:
        set_urls(cli, *[f"json://127.0.0.1:{silent.getsockname()[1]}/hook{i}" for i in range(3)])
        _queue(home, status="failed", hours_ago=1, error="550 5.1.1 no such user")
        started = time.monotonic()
        assert evaluate(home, 1, until=time.monotonic() + 2) == []
        assert time.monotonic() - started < 6
    finally:
        silent.close()
    set_urls(cli, receiver.url)
    after_check(home, 1)
    assert "failed for good" in one_alert(receiver)["message"]


def test_an_alert_that_cannot_be_recorded_is_sent_all_the_same(
    cli: Cli, home: Path, receiver: Receiver, closed_port: int
) -> None:
    """The database is down and its condition cannot be written beside the settings (a
    full disk): the alert goes all the same, saying it will come again."""
    from cpmail.alerts import STATE_FILE

    assert cli("init").exit_code == 0
    set_urls(cli, receiver.url)
    url = f"postgresql+psycopg://cpmail@127.0.0.1:{closed_port}/cpmail"
    assert cli("config", "set", "database.url", url).exit_code == 0
    (home / STATE_FILE).mkdir()  # where the state goes, nothing can be written
    after_check(home, 3)
    alert = one_alert(receiver)
    assert "The database cannot be used" in alert["message"]
    assert "could not record that it sent this alert" in alert["message"]


def test_mail_waiting_for_days_stays_one_problem_each_morning(
    initialised: Cli, home: Path, receiver: Receiver
) -> None:
    """Queued at 09:00 inside a 07:00-19:00 window and still waiting: over the limit the
    same day, and still so the next morning, not "resolved" when the window opens again."""
    cli = initialised
    set_urls(cli, receiver.url)
    assert cli("config", "set", "agency.timezone", "UTC").exit_code == 0
    assert cli("config", "set", "mail.send_window", "07:00-19:00").exit_code == 0
    day1 = dt.datetime(2026, 11, 24)
    id_ = _queue(home, status="deferred", hours_ago=1, error="451 4.3.0 try again later")
    _set(home, id_, queued_at=day1.replace(hour=9), next_attempt_at=day1 + dt.timedelta(days=9))
    evaluate(home, None, now=day1.replace(hour=14))
    alert = one_alert(receiver)
    assert "waiting in the outbox, the oldest since 2026-11-24 09:00" in alert["message"], alert
    for hour in (20, 24 + 8, 24 + 12, 48 + 7, 48 + 10):  # closed, then open again each day
        evaluate(home, None, now=day1 + dt.timedelta(hours=hour))
        assert receiver.take() == [], hour


def test_mail_queued_at_night_waits_from_the_morning(initialised: Cli, home: Path) -> None:
    from cpmail.status import waiting_counted_from

    cli = initialised
    assert cli("config", "set", "agency.timezone", "UTC").exit_code == 0
    assert cli("config", "set", "mail.send_window", "07:00-19:00").exit_code == 0
    settings = Settings.load(home)
    day = dt.datetime(2026, 11, 24)
    opened = day.replace(hour=7)
    assert waiting_counted_from(settings, day.replace(hour=2), opened) == opened
    assert waiting_counted_from(settings, day - dt.timedelta(hours=3), opened) == opened
    yesterday_9 = day - dt.timedelta(hours=15)
    assert waiting_counted_from(settings, yesterday_9, opened) == yesterday_9
    three_nights_ago = day - dt.timedelta(days=3, hours=2)  # 22:00, closed
    assert waiting_counted_from(settings, three_nights_ago, opened) == day - dt.timedelta(
        days=2, hours=17
    )


@pytest.mark.parametrize(
    "args", [("--date", "2026-13-01"), ("--date", "tomorrow"), ("--today", "--date", "2026-11-24")]
)
def test_a_mistake_typed_at_the_terminal_is_no_state_of_mail(
    initialised: Cli, receiver: Receiver, args: tuple[str, ...]
) -> None:
    """A hand-run check with a wrong argument is told so (exit 2); no alert goes to the
    second channel and status does not call the machine unable to send."""
    cli = initialised
    set_urls(cli, receiver.url)
    r = cli("check", *args)
    assert r.exit_code == 2, r.output
    assert receiver.take() == []
    code, doc = status_json(cli)
    assert code == 0 and doc["last_check"] is None and doc["problems"] == [], doc


def test_a_check_whose_sender_is_gone_is_alerted(initialised: Cli, receiver: Receiver) -> None:
    """`--as` naming nobody may be a cron line a staff change broke, not a typing mistake:
    every run would fail the same way, so the second channel hears of it."""
    cli = initialised
    set_urls(cli, receiver.url)
    r = cli("check", "--as", "ZZ")
    assert r.exit_code == 2, r.output
    assert "ended with exit 2" in one_alert(receiver)["message"]


def _kill_a_check_mid_run(home: Path, server: SMTPTestServer) -> None:
    """A `cpmail check` of its own process, killed with SIGKILL once the server took one of
    its three messages (it takes each slowly)."""
    server.accept_delay = 0.3
    sent = len(server.messages)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpmail", "check", "--date", D.isoformat(), "--only", "job-opened"],
        env={**os.environ, "CPMAIL_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(server.messages) == sent and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    server.accept_delay = 0
    assert len(server.messages) == sent + 1, "the check must die in the middle of its run"


def _age_claims(home: Path) -> None:
    """A dead run's claims, 16 minutes older: the next check takes them up."""
    from tests.test_crash import _age

    engine = connect(Settings.load(home).db_url, where="test")
    _age(engine, dt.timedelta(minutes=16))
    engine.dispose()


def test_a_check_killed_mid_run_is_said_once_and_so_is_the_next_one_that_finishes(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, receiver: Receiver
) -> None:
    setup_smtp(cli, smtp_server)
    set_urls(cli, receiver.url)
    agency(home)
    new_job(home, "J1")
    _kill_a_check_mid_run(home, smtp_server)
    code, doc = status_json(cli)
    assert code == 1 and any("did not finish" in w for w in doc["warnings"]), doc
    # The next check finds again what the dead one left, but its claimed mail waits out
    # the stale limit: exit 1. It did its work: the death is said, and its end with it.
    assert check(cli) == 1
    alert = one_alert(receiver)
    said = [x for x in alert["message"].splitlines() if "did not finish" in x]
    assert len(said) == 1 and said[0].startswith("RESOLVED: The cpmail check started at"), alert
    assert "(killed, or its machine stopped)" in said[0], said
    assert said[0].endswith("found again what it left (exit 1)."), said
    code, doc = status_json(cli)
    assert not any("did not finish" in w for w in doc["warnings"]), doc
    assert check(cli) == 1
    assert receiver.take() == []  # said once
    _age_claims(home)
    assert check(cli) == 0
    alert = one_alert(receiver)
    assert "did not finish" not in alert["message"], alert
    code, doc = status_json(cli)  # (one reading: two differ in their time)
    assert code == 0 and not doc["warnings"], doc
    assert len(smtp_server.messages) in (3, 4)  # (one may go twice: accepted as it was killed)

    # Killed again; this time the very next check ends well: one alert says both.
    new_job(home, "J2")
    _kill_a_check_mid_run(home, smtp_server)
    _age_claims(home)
    assert check(cli) == 0
    alert = one_alert(receiver)
    said = [x for x in alert["message"].splitlines() if "did not finish" in x]
    assert len(said) == 1 and "found again what it left (exit 0)" in said[0], alert
    assert status_json(cli)[0] == 0
    for _ in range(2):
        assert check(cli) == 0
    assert receiver.take() == []
