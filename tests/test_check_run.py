"""The run around the triggers: send window, failure summary, --as, templates, the demo."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import cpmail
from cpmail.settings import Settings
from cpmail.store import connect
from tests.agency import D, at, base_agency, insert
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp


def _agency(cli: Cli, home: Path, server: SMTPTestServer) -> sa.Engine:
    setup_smtp(cli, server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    engine = connect(Settings.load(home).db_url, where="test")
    base_agency(engine)
    insert(
        engine, "jobs", [dict(id="J200", client_id="C1", title="Spring launch", opened_at=at(D))]
    )
    return engine


def _window_without_now() -> str:
    now = dt.datetime.now()
    start = (now + dt.timedelta(hours=2)).strftime("%H:00")
    end = (now + dt.timedelta(hours=3)).strftime("%H:00")
    return f"{start}-{end}"


def test_send_window_keeps_mail_until_it_opens(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    _agency(cli, home, smtp_server)
    assert cli("config", "set", "mail.send_window", _window_without_now()).exit_code == 0
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 0, r.output
    assert "send window" in r.stderr
    assert smtp_server.messages == []
    waiting = json.loads(cli("outbox", "--json").stdout)
    assert len(waiting) == 3 and {w["status"] for w in waiting} == {"queued"}
    # Again, as a real run and as a dry run: both wait for the window, exit 0, and say
    # when it opens (the dry run said exit 1, "it goes with the next check").
    opens = _window_without_now()[:5]
    for dry in ((), ("--dry-run",)):
        r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--json", *dry)
        assert r.exit_code == 0, (dry, r.output)
        out = json.loads(r.stdout)
        assert out["exit_code"] == 0 and out["waiting"]["count"] == 3, (dry, out)
        assert out["waiting"]["next_try"] and opens in out["waiting"]["next_try"], (dry, out)
        r = cli("check", "--date", D.isoformat(), "--only", "job-opened", *dry)
        assert r.exit_code == 0 and "next `cpmail check`" not in r.stderr, (dry, r.output)
    assert cli("config", "set", "mail.send_window", "").exit_code == 0
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 0, r.output
    assert len(smtp_server.messages) == 3
    assert json.loads(cli("outbox", "--json").stdout) == []


def test_a_test_message_outside_the_send_window_is_said_to_have_failed(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """A test message is sent at once or not at all: with the window closed it failed for
    good, and saying it "waits in the outbox" would be untrue (the outbox is empty)."""
    _agency(cli, home, smtp_server)
    assert cli("config", "set", "mail.send_window", _window_without_now()).exit_code == 0
    for args in (("staff", "test", "JD"), ("config", "test")):
        r = cli(*args)
        assert r.exit_code == 1, r.output
        assert "waits" not in r.stderr and "failed" in r.stderr, r.stderr
        assert "send window" in r.stderr and "at once or not at all" in r.stderr, r.stderr
    assert smtp_server.messages == []
    assert json.loads(cli("outbox", "--json").stdout) == []


def test_a_digest_takes_in_mail_to_a_persons_mailbox_written_as_an_email_rule(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """`email:Alice@Agency.test` is Alice's own mailbox: with the digest on, what it brings
    her joins what reaches her as staff, in one message (she got two)."""
    _agency(cli, home, smtp_server)
    assert cli("config", "set", "mail.digest", "true").exit_code == 0
    rule = "email:Alice@Agency.test"
    assert cli("config", "set", "events.job-opened.notify", rule).exit_code == 0
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened,missing-time")
    assert r.exit_code == 0, r.output
    got = [message_from_bytes(m.data, policy=policy.default) for m in smtp_server.messages]
    to_alice = [m for m in got if m["To"].addresses[0].addr_spec.lower() == "alice@agency.test"]
    assert len(to_alice) == 1, [m["Subject"] for m in to_alice]
    text = to_alice[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "J200" in text and "Spring launch" in text, text


def test_a_reminder_held_back_until_its_event_began_is_dropped_not_sent(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """The send window kept it; by the time it opens the meeting has begun: nobody is told."""
    engine = _agency(cli, home, smtp_server)
    # It begins a few seconds from now, before the window opens (a check never reminds
    # of an event that has begun, so it has to be ahead when the reminder is queued).
    now = dt.datetime.now(Settings.load(home).tz()).replace(tzinfo=None)
    begins = now + dt.timedelta(seconds=6)
    insert(
        engine,
        "calendar_entries",
        [
            dict(
                id="CAL1",
                title="Client review",
                starts_at=begins,
                remind_at=now - dt.timedelta(minutes=1),
                attendees="AE",
            )
        ],
    )
    assert cli("config", "set", "mail.send_window", _window_without_now()).exit_code == 0
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 0, r.output
    r = cli("check", "--today", "--only", "calendar-reminder")  # (held back: today's run)
    assert r.exit_code == 0, r.output
    assert smtp_server.messages == []
    assert dt.datetime.now(Settings.load(home).tz()).replace(tzinfo=None) < begins
    time.sleep(
        max(
            0.0,
            (
                begins - dt.datetime.now(Settings.load(home).tz()).replace(tzinfo=None)
            ).total_seconds(),
        )
        + 0.5
    )
    assert cli("config", "set", "mail.send_window", "").exit_code == 0
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 0, r.output
    # the run says so: its recipient never got it
    assert "1 dropped (what it reminds of had begun)" in r.output, r.output
    sent = [message_from_bytes(m.data, policy=policy.default) for m in smtp_server.messages]
    assert sent and all(m["X-Cpmail-Event"] == "job-opened" for m in sent)  # the rest still go
    [dropped] = json.loads(cli("log", "--json", "--status", "dropped").stdout)
    assert dropped["event"] == "calendar-reminder"
    assert "began before it could go" in dropped["last_error"]
    assert json.loads(cli("outbox", "--json").stdout) == []


def test_manager_gets_one_summary_when_mail_fails_for_good(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    _agency(cli, home, smtp_server)
    cli("config", "manager", "--name", "Mary Manager", "--email", "mary@agency.test")
    smtp_server.fail_rcpt = {
        "alice@agency.test": "550 5.1.1 mailbox unavailable",
        "pia@agency.test": "550 5.1.1 mailbox unavailable",
    }
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--json")
    assert r.exit_code == 1
    assert "outbox retry" in r.stderr
    got = [message_from_bytes(m.data, policy=policy.default) for m in smtp_server.messages]
    # the summary to the manager is this run's mail too: the totals count what went out
    doc = json.loads(r.stdout)
    assert doc["totals"]["sent"] == len(got) and doc["totals"]["failed"] == 2, doc["totals"]
    assert doc["outbox"]["sent"] == len(got) and doc["outbox"]["failed"] == 2, doc["outbox"]
    # nothing waits: the last line says what failed, not that mail is waiting
    assert "mail is waiting" not in r.stderr and "failed mail is not tried again" in r.stderr
    assert {"event": "failure-summary"}.items() <= doc["summary"][-1].items()
    summary = [m for m in got if m["X-Cpmail-Event"] == "failure-summary"]
    assert len(summary) == 1
    assert summary[0]["To"].addresses[0].addr_spec == "mary@agency.test"
    text = str(summary[0].get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "2 messages" in summary[0]["Subject"]
    assert "alice@agency.test" in text and "mailbox unavailable" in text
    assert [a.addr_spec for m in got for a in m["To"].addresses].count("carl@agency.test") == 1


@pytest.mark.parametrize(
    ("body", "sent_before"),
    [
        ("{{ 1/0 }}", False),  # fails on any failure: found before anything is sent
        # fails only on this run's failure (not on the example): said, not hidden
        ('{{ 1 / ("mailbox unavailable" not in failures[0].error)|int }}', True),
    ],
)
def test_a_failure_summary_that_cannot_be_written_never_hides_what_was_sent(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, body: str, sent_before: bool
) -> None:
    """Exit 2 means nothing was sent: a broken summary template must not be said after
    the run sent mail. It is found at the start, or said beside the run's own report."""
    engine = _agency(cli, home, smtp_server)
    cli("config", "manager", "--name", "Mary Manager", "--email", "mary@agency.test")
    (home / "templates" / "email").mkdir(parents=True)
    builtin = Path(cpmail.__file__).parent / "templates" / "email" / "failure-summary.txt"
    text = builtin.read_text(encoding="utf-8").replace(
        "{% block body %}", "{% block body %}" + body
    )
    assert text != builtin.read_text(encoding="utf-8")
    (home / "templates" / "email" / "failure-summary.txt").write_text(text, encoding="utf-8")
    if not sent_before:
        assert "failure-summary.txt" in cli("check", "--dry-run", "--date", D.isoformat()).stderr
    smtp_server.fail_rcpt = {"alice@agency.test": "550 5.1.1 mailbox unavailable"}
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--json")
    with engine.connect() as conn:
        sent = conn.execute(
            sa.text("SELECT count(*) FROM messages WHERE status = 'sent'")
        ).scalar_one()
    if not sent_before:
        assert r.exit_code == 2 and "failure-summary.txt" in r.stderr, r.output
        assert smtp_server.messages == [] and sent == 0
        return
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["totals"]["sent"] == len(smtp_server.messages) == sent > 0, doc["totals"]
    assert doc["totals"]["failed"] == 1
    assert "summary of failed mail was not sent to the manager" in r.stderr, r.stderr
    assert any("summary of failed mail" in n for n in doc["notes"]), doc["notes"]
    assert "failure-summary.txt" in r.stderr


def test_the_failure_summary_can_be_previewed_like_an_event(cli: Cli, home: Path) -> None:
    """The docs say to try a template with `templates preview`: the manager's summary too."""
    assert cli("init").exit_code == 0
    r = cli("templates", "preview", "failure-summary")
    assert r.exit_code == 0, r.output
    assert "Subject: [C&P] 1 message could not be delivered" in r.stdout, r.stdout
    assert "550 5.1.1 no such user" in r.stdout
    (home / "templates" / "email").mkdir(parents=True)
    builtin = Path(cpmail.__file__).parent / "templates" / "email" / "failure-summary.txt"
    text = builtin.read_text(encoding="utf-8").replace(
        "{% block body %}", "{% block body %}{{ 1/0 }}"
    )
    (home / "templates" / "email" / "failure-summary.txt").write_text(text, encoding="utf-8")
    r = cli("templates", "preview", "failure-summary")
    assert r.exit_code == 2 and "failure-summary.txt, line" in r.stderr, r.output


def test_a_preview_never_writes_to_the_database_the_environment_names(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`templates preview` loads the demo agency into a home of its own: with the agency's
    database named by CPMAIL_DATABASE_URL (as a server's unit file does), it was loaded
    there, replacing staff whose ids the demo shares."""
    db = tmp_path / "agency.db"
    monkeypatch.setenv("CPMAIL_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("CPMAIL_MAIL_TRANSPORT", "smtp")
    assert cli("init").exit_code == 0
    r = cli("staff", "add", "KM", "--name", "Real Karen", "--work-email", "karen@agency.test")
    assert r.exit_code == 0, r.output
    import sqlite3

    def dump() -> list[str]:
        with sqlite3.connect(db) as conn:
            return list(conn.iterdump())

    before = dump()
    for event in ("job-opened", "digest", "failure-summary"):
        r = cli("templates", "preview", event)
        assert r.exit_code == 0 and "Subject:" in r.stdout, r.output
    assert dump() == before
    [km] = json.loads(cli("staff", "list", "--json").stdout)
    assert (km["id"], km["name"]) == ("KM", "Real Karen")


def test_mail_given_up_after_max_age_is_counted_said_and_told_to_the_manager(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Failing for good by age (not by attempts) was silent: exit 0, no line, no summary."""
    engine = _agency(cli, home, smtp_server)
    smtp_server.fail_rcpt = {"alice@agency.test": "451 4.3.0 try again later"}
    assert cli("check", "--date", D.isoformat(), "--only", "job-opened").exit_code == 1
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=100)
    with engine.begin() as conn:
        n = conn.execute(
            sa.text(
                "UPDATE messages SET queued_at = :old, next_attempt_at = :old "
                "WHERE status = 'deferred'"
            ),
            {"old": old},
        ).rowcount
    assert n == 1
    smtp_server.fail_rcpt = {}
    before = len(smtp_server.messages)
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["outbox"]["earlier"] == {"failed": 1}, doc["outbox"]
    got = [message_from_bytes(m.data, policy=policy.default) for m in smtp_server.messages]
    assert [m["X-Cpmail-Event"] for m in got[before:]] == ["failure-summary"]
    text = str(got[-1].get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "gave up after 72 hours in the outbox" in text


def test_as_sends_from_another_staff_member(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    _agency(cli, home, smtp_server)
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--as", "AE")
    assert r.exit_code == 0, r.output
    assert {m.mail_from for m in smtp_server.messages} == {"alice@agency.test"}
    r = cli("check", "--as", "ZZ")
    assert r.exit_code == 2 and "ZZ" in r.stderr


def test_no_sender_for_smtp_is_a_usage_error(cli: Cli, smtp_server: SMTPTestServer) -> None:
    setup_smtp(cli, smtp_server)
    cli("config", "set", "user.staff", "")
    r = cli("check", "--date", D.isoformat())
    assert r.exit_code == 2
    assert "--as" in r.stderr and "user.staff" in r.stderr
    assert smtp_server.messages == []


def test_templates_list_export_and_override(cli: Cli, home: Path, tmp_path: Path) -> None:
    assert cli("init").exit_code == 0
    rows = json.loads(cli("templates", "list", "--json").stdout)
    names = {r["template"] for r in rows}
    assert "email/job-opened.txt" in names and "email/digest.html" in names
    out = tmp_path / "mine"
    assert cli("templates", "export", str(out)).exit_code == 0
    assert (out / "email" / "job-opened.txt").read_text().startswith("{% extends")
    r = cli("templates", "export", str(out))
    assert r.exit_code == 2 and "--force" in r.stderr
    r = cli("templates", "preview", "job-opened")
    assert r.exit_code == 0, r.output
    assert "Subject: [C&P] Job J10" in r.stdout and "Northwind Creative" in r.stdout
    custom = home / "templates" / "email"
    custom.mkdir(parents=True)
    text = (out / "email" / "job-opened.txt").read_text()
    (custom / "job-opened.txt").write_text(text.replace("A new job was opened", "NEW WORK for"))
    r = cli("templates", "preview", "job-opened")
    assert "NEW WORK for" in r.stdout
    html = cli("templates", "preview", "task-due-today", "--html")
    assert html.exit_code == 0 and "<table" in html.stdout
    (custom / "job-opened.txt").write_text("{% block subject %}{{ oops( }}{% endblock %}")
    r = cli("templates", "preview", "job-opened")
    assert r.exit_code == 2 and "job-opened.txt" in r.stderr and "line 1" in r.stderr
    # Compiled templates are kept for the process: an edit is still seen, each time.
    for words in ("FRESH WORK for", "NEW WORK for"):
        (custom / "job-opened.txt").write_text(text.replace("A new job was opened", words))
        r = cli("templates", "preview", "job-opened")
        assert r.exit_code == 0 and words in r.stdout, r.output


def test_demo_fires_every_trigger_and_refuses_a_second_time(cli: Cli, home: Path) -> None:
    r = cli("demo", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    assert "Northwind Creative" in r.stdout and str(home / "mail") in r.stdout
    r = cli("log", "--json", "--all")
    events = {row["event"] for row in json.loads(r.stdout)}
    from cpmail.settings import EVENTS

    assert events == set(EVENTS)
    emls = list((home / "mail").glob("*.eml"))
    assert len(emls) == len(json.loads(r.stdout))
    for path in emls:
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert not msg.defects and all(not p.defects for p in msg.walk())
    r = cli("demo")
    assert r.exit_code == 2 and "--force" in r.stderr
    r = cli("demo", "--force", "--date", "2026-11-30")
    assert r.exit_code == 0, r.output


def test_what_waits_is_said_truly_when_sending_is_off_in_a_dry_run_and_outside_the_window(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    _agency(cli, home, smtp_server)
    smtp_server.fail_data = "451 4.3.0 try later"
    assert cli("check", "--date", D.isoformat(), "--only", "job-opened").exit_code == 1
    smtp_server.fail_data = None
    # a dry run changes nothing, but says that a real run would send what waits
    r = cli("check", "--date", D.isoformat(), "--dry-run")
    assert r.exit_code == 1 and "3 message(s) wait in the outbox" in r.stderr, r.output
    assert smtp_server.messages == []
    # sending off: exit 0, and no promise that the next check tries them
    assert cli("config", "disable").exit_code == 0
    r = cli("check", "--date", D.isoformat())
    assert r.exit_code == 0, r.output
    assert "sending is off" in r.stderr and "tried again" not in r.stderr, r.stderr
    assert smtp_server.messages == []
    assert cli("config", "enable").exit_code == 0
    # outside the send window: no stray full stop on a line of its own
    assert cli("config", "set", "mail.send_window", _window_without_now()).exit_code == 0
    for _ in range(2):
        r = cli("check", "--date", D.isoformat())
        assert all(line.strip(" .") for line in r.output.splitlines()), r.output


def test_a_dry_run_exits_1_for_mail_that_waits_which_the_real_run_then_sends(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Mail the send window held: the dry run says it waits and exits 1; the real run
    sends it and ends 0 (check.md says both)."""
    _agency(cli, home, smtp_server)
    assert cli("config", "set", "mail.send_window", _window_without_now()).exit_code == 0
    assert cli("check", "--date", D.isoformat(), "--only", "job-opened").exit_code == 0
    assert cli("config", "set", "mail.send_window", "").exit_code == 0
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--dry-run")
    assert r.exit_code == 1 and "3 message(s) wait in the outbox" in r.stderr, r.output
    assert "Nothing new to send" in r.stdout and smtp_server.messages == []
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 0, r.output
    assert "From the outbox (earlier runs): 3 sent" in r.stdout, r.output
    assert len(smtp_server.messages) == 3


def test_a_check_that_keeps_failing_is_not_healthy(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    engine = _agency(cli, home, smtp_server)
    insert(engine, "tasks", [dict(id="T1", job_id="J200", name="Layout", assignee_id="CR")])
    broken = home / "templates" / "email" / "job-opened.txt"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("{% block subject %}{{ oops( {% endblock %}\n", encoding="utf-8")
    with sqlite3.connect(home / "cpmail.db") as db:
        before = list(db.iterdump())
    r = cli("check", "--date", D.isoformat())  # every event: the state rows are looked at
    assert r.exit_code == 2, r.output
    assert not r.stderr.rstrip().endswith(".."), r.stderr
    with sqlite3.connect(home / "cpmail.db") as db:  # nothing changed but the run's own row
        after = list(db.iterdump())
    assert [x for x in after if x not in before and not x.startswith('INSERT INTO "runs"')] == []
    r = cli("status", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 3, r.stdout
    assert any("the last check failed (exit 2" in p for p in doc["problems"]), doc["problems"]


def test_a_dry_run_says_what_the_real_run_would_do(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """With sending off it records, it does not send; with the window closed it queues:
    the dry run said "Would send" either way, and counted no suppressed."""
    _agency(cli, home, smtp_server)
    assert cli("config", "disable").exit_code == 0
    dry = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--dry-run", "--json")
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--dry-run")
    assert "Would send" not in r.output and "Sending is off: would record 3" in r.output, r.output
    assert r.output.count("  alice@agency.test ") == 1, r.output  # each message listed
    real = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--json")
    assert smtp_server.messages == []
    assert json.loads(dry.stdout)["totals"]["suppressed"] == 1
    assert json.loads(real.stdout)["totals"]["suppressed"] == 1
    assert cli("config", "enable").exit_code == 0
    assert cli("config", "set", "mail.send_window", _window_without_now()).exit_code == 0
    insert(
        sa.create_engine(f"sqlite:///{home / 'cpmail.db'}"),
        "jobs",
        [dict(id="J201", client_id="C1", title="Summer launch", opened_at=at(D))],
    )
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--dry-run")
    assert "Would send" not in r.output, r.output
    assert "Would queue 3 message(s)" in r.output and "send window" in r.output, r.output
    assert r.output.count("  alice@agency.test ") == 1, r.output


def test_a_one_off_command_is_not_judged_by_other_mail_given_up_on(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Mail past max_age_hours fails when any pass starts; `staff test` said its own
    message failed ("gave up after 72 hours") and exited 1 for someone else's."""
    engine = _agency(cli, home, smtp_server)
    smtp_server.fail_rcpt = {"alice@agency.test": "451 4.3.0 try again later"}
    assert cli("check", "--date", D.isoformat(), "--only", "job-opened").exit_code == 1
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=100)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE messages SET queued_at = :old WHERE status = 'deferred'"),
            {"old": old},
        )
    smtp_server.fail_rcpt = {}
    r = cli("staff", "test", "JD")
    assert r.exit_code == 0 and "Sent a test message" in r.stdout, r.output
    # nor does it end that mail unseen: the next check does, and says so
    assert json.loads(cli("log", "--json", "--status", "failed").stdout) == []
    before = len(smtp_server.messages)
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["outbox"]["earlier"] == {"failed": 1}
    [row] = json.loads(cli("log", "--json", "--status", "failed").stdout)
    assert "gave up after 72 hours" in row["last_error"]
    got = [message_from_bytes(m.data, policy=policy.default) for m in smtp_server.messages]
    assert [m["X-Cpmail-Event"] for m in got[before:]] == ["failure-summary"]
    # status accounts for that run's exit 1: the earlier mail it ended is in its counts
    last = json.loads(cli("status", "--json").stdout)["last_check"]
    assert last["exit_code"] == 1 and last["counts"]["earlier"] == {"failed": 1}, last
    assert "from the outbox: 1 failed" in cli("status").stdout


def test_a_digest_of_reminders_goes_while_any_of_its_events_is_ahead(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Held back by the send window past the first event's start: the digest that also
    reminds of next week's event is sent (it was dropped whole, and next week's reminder
    lost for good)."""
    engine = _agency(cli, home, smtp_server)
    assert cli("staff", "edit", "AE", "--digest", "on").exit_code == 0
    tz = Settings.load(home).tz()
    begins = dt.datetime.now(tz).replace(tzinfo=None) + dt.timedelta(seconds=6)
    insert(
        engine,
        "calendar_entries",
        [
            dict(id="CA", title="Stand-up", starts_at=begins, remind_at=at(D, 18), attendees="AE"),
            dict(
                id="CB",
                title="Client pitch",
                starts_at=begins + dt.timedelta(days=7),
                remind_at=at(D, 18),
                attendees="AE",
            ),
        ],
    )
    assert cli("config", "set", "mail.send_window", _window_without_now()).exit_code == 0
    r = cli("check", "--date", D.isoformat(), "--only", "calendar-reminder")
    assert r.exit_code == 0 and smtp_server.messages == [], r.output
    time.sleep(max(0.0, (begins - dt.datetime.now(tz).replace(tzinfo=None)).total_seconds()) + 0.5)
    assert cli("config", "set", "mail.send_window", "").exit_code == 0
    r = cli("check", "--date", D.isoformat(), "--only", "calendar-reminder")
    assert r.exit_code == 0, r.output
    [msg] = [message_from_bytes(m.data, policy=policy.default) for m in smtp_server.messages]
    text = str(msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "Client pitch" in text, text


def test_a_dry_run_splits_a_digest_as_the_real_run_does(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """The dry run listed one message larger than the transport takes; the real run sends
    it in parts, each within the limit."""
    engine = _agency(cli, home, smtp_server)
    assert cli("staff", "edit", "AE", "--digest", "on").exit_code == 0
    assert cli("config", "set", "mail.transport", "microsoft").exit_code == 0  # 3 MB a message
    insert(
        engine,
        "homebase_entries",
        [
            dict(
                id=f"H{i}",
                subject=f"Note {i}",
                body="x" * 12000,
                entered_by="CR",
                entered_at=at(D, 9),
                notify="AE",
            )
            for i in range(400)
        ],
    )
    r = cli("check", "--date", D.isoformat(), "--only", "homebase-entry", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    mine = [m for m in json.loads(r.stdout)["messages"] if m["to"] == "alice@agency.test"]
    assert len(mine) > 1, [m["subject"] for m in mine]
    assert all(len(m["text"]) < 3 * 1024 * 1024 for m in mine)


def test_a_digest_larger_than_the_server_takes_goes_in_parts_it_takes(
    cli: Cli, home: Path, smtp_server_factory: Any
) -> None:
    """The SMTP server announces a SIZE far below what the transport could carry: a
    digest is split to fit it, every note arrives, and nothing fails for size."""
    server = smtp_server_factory(size_limit=20_000)
    engine = _agency(cli, home, server)
    assert cli("staff", "edit", "AE", "--digest", "on").exit_code == 0
    notes = [f"Note {i:02d}" for i in range(12)]
    insert(
        engine,
        "homebase_entries",
        [
            dict(
                id=f"H{i}",
                subject=subject,
                body="words " * 500,
                entered_by="CR",
                entered_at=at(D, 9),
                notify="AE",
            )
            for i, subject in enumerate(notes)
        ],
    )
    r = cli("check", "--date", D.isoformat(), "--only", "homebase-entry", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["totals"]["failed"] == 0, r.stdout
    mine = [m for m in server.messages if "alice@agency.test" in m.rcpt_tos]
    assert len(mine) > 1 and all(len(m.data) <= 20_000 for m in mine), [len(m.data) for m in mine]
    texts = [
        str(message_from_bytes(m.data, policy=policy.default).get_body(("plain",)).get_content())  # type: ignore[union-attr]
        for m in mine
    ]
    # each note in exactly one of the parts
    assert {n: sum(n in t for t in texts) for n in notes} == dict.fromkeys(notes, 1)


def test_the_last_line_says_which_failures_were_earlier_runs_mail(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Mail queued by an earlier run fails in this one: the table counts this run's own
    notifications (none), so the last line must not leave six failures unexplained."""
    from tests.test_faults import queue_messages

    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0  # nothing new
    queue_messages(home, 6)
    smtp_server.fail_data = "554 5.6.0 rejected"
    r = cli("check", "--date", D.isoformat(), "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    # this run's own: the summary of failures to the manager, refused as well
    assert doc["totals"]["failed"] == 1 and doc["outbox"]["earlier"]["failed"] == 6, doc
    assert "7 failed in this run (0 deferred and 6 failed of them queued by earlier runs" in (
        r.stderr
    ), r.stderr


@pytest.mark.parametrize("how", ["test message", "attempts used up", "too long in the outbox"])
def test_mail_that_ends_failed_never_says_it_will_be_sent_again(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, how: str
) -> None:
    """The words a temporary failure is recorded with promise another try; once the
    message failed for good, the log and status must not keep the promise."""
    from tests.test_faults import queue_messages

    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0  # nothing new
    smtp_server.drop_during_data = True  # "broke off the message; it will be sent again"
    if how == "test message":
        assert cli("config", "test").exit_code == 1
    else:
        queue_messages(home, 2)
        if how == "attempts used up":
            assert cli("config", "set", "outbox.max_attempts", "1").exit_code == 0
        else:
            r = cli("check", "--date", D.isoformat())
            assert r.exit_code == 1  # deferred, with it; and said to have maybe arrived
            assert "2 of the deferred may have arrived already" in " ".join(r.stderr.split())
            engine = connect(Settings.load(home).db_url, where="test")
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE messages SET queued_at = '2000-01-01 00:00:00'"))
            engine.dispose()
        assert cli("check", "--date", D.isoformat()).exit_code == 1
    r = cli("log", "--status", "failed", "--json")
    failed = json.loads(r.stdout)
    assert failed, r.stdout
    said = [row["last_error"] for row in failed]
    assert all(s and "sent again" not in s for s in said), said
    if how == "test message":  # nothing else waits: status shows the account's last error
        assert "sent again" not in cli("status").stdout


def test_an_event_whose_settings_name_someone_not_on_staff_waits_and_loses_nothing(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """`staff:NOPE` typed into cpmail.toml (config set refuses it), or a person removed
    since: the job's notification reached nobody and was recorded as done, so it was never
    sent once mended. Now that event is held back, said, exit 1; the others go on."""
    engine = _agency(cli, home, smtp_server)
    path = home / "cpmail.toml"
    good = path.read_text(encoding="utf-8")
    path.write_text(good + '\n[events.job-opened]\nnotify = ["staff:NOPE"]\n', encoding="utf-8")
    said = "events.job-opened.notify names 'NOPE', who is not in the staff table"
    for dry in (("--dry-run",), ()):
        r = cli("check", "--date", D.isoformat(), *dry)
        assert r.exit_code == 1, r.output
        assert said in " ".join(r.stderr.split()), r.stderr
    with engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT key FROM ledger")).scalars().all()
    assert keys and not [k for k in keys if k.startswith("job-opened:")], keys  # others went
    # a person removed since is the same: held back, not lost
    assert (
        cli("staff", "add", "ZZ", "--name", "Zed", "--work-email", "zz@agency.test").exit_code == 0
    )
    path.write_text(good + '\n[events.job-opened]\nnotify = ["staff:ZZ"]\n', encoding="utf-8")
    assert cli("staff", "remove", "ZZ").exit_code == 0
    assert cli("check", "--date", D.isoformat(), "--only", "job-opened").exit_code == 1
    # a disabled event, or another --only, is not held up by it
    assert cli("check", "--date", D.isoformat(), "--only", "missing-time").exit_code == 0
    path.write_text(good + '\n[events.job-opened]\nnotify = ["staff:JD"]\n', encoding="utf-8")
    r = cli("check", "--date", D.isoformat(), "--only", "job-opened")
    assert r.exit_code == 0, r.output
    assert ("jd@agency.test",) in [m.rcpt_tos for m in smtp_server.messages]


def test_the_scheduled_cash_flow_report_can_be_previewed_like_an_event(
    cli: Cli, home: Path
) -> None:
    """`check` sends the cash-flow report with templates of its own (cash-flow.txt and
    .html, as `templates export` copies them): `templates preview cash-flow` shows them."""
    assert cli("init").exit_code == 0
    r = cli("templates", "preview", "cash-flow")
    assert r.exit_code == 0, r.output
    assert "Subject: [C&P] Cash flow report as of" in r.stdout, r.stdout
    html = cli("templates", "preview", "cash-flow", "--html")
    assert html.exit_code == 0 and "<html" in html.stdout, html.output
    custom = home / "templates" / "email"
    custom.mkdir(parents=True)
    builtin = Path(cpmail.__file__).parent / "templates" / "email" / "cash-flow.txt"
    text = builtin.read_text(encoding="utf-8").replace(
        "{% block body %}", "{% block body %}MONEY NEWS "
    )
    (custom / "cash-flow.txt").write_text(text, encoding="utf-8")
    r = cli("templates", "preview", "cash-flow")
    assert r.exit_code == 0 and "MONEY NEWS" in r.stdout, r.output
