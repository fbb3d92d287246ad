"""Delivery through a real SMTP server, end to end from the CLI: exit codes, outbox, log, retry."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cpmail.compose import Draft, Mailbox, build_message
from cpmail.secrets import SecretStore
from cpmail.sending import send_now
from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store.schema import messages
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer

Factory = Callable[..., SMTPTestServer]


def setup_smtp(
    cli: Cli, server: SMTPTestServer, *, security: str | None = None, db: str = "", **extra: Any
) -> None:
    """A home that sends through ``server`` as JD, on SQLite or the database URL ``db``."""
    if db:
        assert cli("config", "set", "database.url", db).exit_code == 0
    assert cli("init").exit_code == 0
    settings = {**server.settings(security), **extra}
    assert cli("config", "set", "mail.transport", "smtp").exit_code == 0
    for key, value in settings.items():
        r = cli("config", "set", key, str(value))
        assert r.exit_code == 0, r.output
    r = cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
    assert r.exit_code == 0, r.output
    assert cli("config", "set", "user.staff", "JD").exit_code == 0
    r = cli("config", "manager", "--name", "Max Manager", "--email", "max@agency.test")
    assert r.exit_code == 0, r.output


def send_one(cli: Cli) -> Any:
    """A message that stays in the outbox until it is delivered (unlike a test message)."""
    return cli("message", "manager", "The printer on floor 2 is out of toner.")


def log_rows(cli: Cli) -> list[dict[str, Any]]:
    r = cli("log", "--json")
    assert r.exit_code == 0, r.output
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


def test_staff_test_delivers_through_smtp(cli: Cli, smtp_server: SMTPTestServer) -> None:
    setup_smtp(cli, smtp_server)
    r = cli("staff", "test", "JD")
    assert r.exit_code == 0, r.output
    assert "Sent a test message" in r.stdout
    assert len(smtp_server.messages) == 1
    got = smtp_server.messages[0]
    assert got.mail_from == "jd@agency.test"
    assert got.rcpt_tos == ("jd@agency.test",)
    msg = message_from_bytes(got.data, policy=policy.default)
    assert msg["Auto-Submitted"] == "auto-generated"
    rows = log_rows(cli)
    assert [(x["status"], x["attempts"], x["message_id"]) for x in rows] == [
        ("sent", 1, msg["Message-ID"])
    ]


def test_starttls_with_login(cli: Cli, smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(tls="starttls", users={"jd@agency.test": "s3cret"})
    setup_smtp(cli, server)
    assert cli("staff", "passcode", "JD", "--stdin", input="s3cret\n").exit_code == 0
    r = cli("config", "test")
    assert r.exit_code == 0, r.output
    assert server.messages[0].tls and server.messages[0].login == "jd@agency.test"
    assert "s3cret" not in r.output


def test_wrong_passcode_is_exit_3_and_kept(cli: Cli, smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(tls="starttls", users={"jd@agency.test": "right"})
    setup_smtp(cli, server)
    assert cli("staff", "passcode", "JD", "--stdin", input="wrong-one\n").exit_code == 0
    r = send_one(cli)
    assert r.exit_code == 3
    assert "wrong-one" not in r.output
    assert "JD" in r.stderr or "jd@agency.test" in r.stderr
    assert server.messages == []
    rows = log_rows(cli)
    assert rows[0]["status"] == "deferred"
    # fix the passcode: a retry delivers it exactly once
    assert cli("staff", "passcode", "JD", "--stdin", input="right\n").exit_code == 0
    r = cli("outbox", "retry", "--all")
    assert r.exit_code == 0, r.output
    assert len(server.messages) == 1
    assert log_rows(cli)[0]["status"] == "sent"


def test_office365_basic_auth_refusal_points_to_microsoft(
    cli: Cli, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls", users={"jd@agency.test": "pw"})
    server.fail_auth = "535 5.7.30 Basic authentication is not supported for Client Submission"
    setup_smtp(cli, server)
    cli("staff", "passcode", "JD", "--stdin", input="pw\n")
    r = cli("staff", "test", "JD")
    assert r.exit_code == 3
    assert "cpmail config microsoft" in r.stderr


def test_connection_refused_is_exit_3(
    cli: Cli, smtp_server: SMTPTestServer, closed_port: int
) -> None:
    setup_smtp(cli, smtp_server, **{"mail.smtp.port": str(closed_port)})
    r = send_one(cli)
    assert r.exit_code == 3
    assert f"127.0.0.1:{closed_port}" in r.stderr
    assert log_rows(cli)[0]["status"] == "deferred"
    assert smtp_server.messages == []
    # the server is back (here: the right port): a retry delivers it exactly once
    assert cli("config", "set", "mail.smtp.port", str(smtp_server.port)).exit_code == 0
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert len(smtp_server.messages) == 1
    assert log_rows(cli)[0]["status"] == "sent"


def test_starttls_not_offered_never_sends_plain(cli: Cli, smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(tls="starttls")
    server.offer_starttls = False
    setup_smtp(cli, server)
    r = cli("staff", "test", "JD")
    assert r.exit_code == 3
    assert "STARTTLS" in r.stderr
    assert server.messages == []


def test_untrusted_certificate_is_exit_3(cli: Cli, smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(tls="ssl")
    setup_smtp(cli, server, **{"mail.smtp.ca_file": ""})
    r = cli("staff", "test", "JD")
    assert r.exit_code == 3
    assert server.messages == []


@pytest.mark.parametrize(
    "trouble",
    [
        {"fail_data": "451 4.3.0 try later"},
        {"fail_mail": "421 4.7.0 closing"},
        {"drop_during_data": True},
    ],
    ids=["451", "421", "disconnect-mid-data"],
)
def test_temporary_failure_defers_then_retry_delivers_once(
    cli: Cli, smtp_server: SMTPTestServer, trouble: dict[str, Any]
) -> None:
    setup_smtp(cli, smtp_server)
    for k, v in trouble.items():
        setattr(smtp_server, k, v)
    r = send_one(cli)
    assert r.exit_code == 1, r.output
    assert "outbox" in r.stderr
    for k in trouble:
        setattr(smtp_server, k, None if k != "drop_during_data" else False)
    row = log_rows(cli)[0]
    assert row["status"] == "deferred" and row["attempts"] == 1 and row["last_error"]
    out = json.loads(cli("outbox", "--json").stdout)
    assert [x["id"] for x in out] == [row["id"]]
    r = cli("outbox", "retry", str(row["id"]))
    assert r.exit_code == 0, r.output
    delivered = [m for m in smtp_server.messages if row["message_id"].encode() in m.data]
    assert len(delivered) == 1
    assert log_rows(cli)[0]["status"] == "sent"
    assert json.loads(cli("outbox", "--json").stdout) == []


def test_permanent_failure_is_failed_with_server_words(
    cli: Cli, smtp_server: SMTPTestServer
) -> None:
    setup_smtp(cli, smtp_server)
    smtp_server.fail_data = "554 5.7.1 message rejected as spam"
    r = cli("staff", "test", "JD")
    assert r.exit_code == 1
    row = log_rows(cli)[0]
    assert row["status"] == "failed"
    assert "rejected as spam" in row["last_error"]


def test_one_of_two_recipients_refused(cli: Cli, home: Any, smtp_server: SMTPTestServer) -> None:
    setup_smtp(cli, smtp_server)
    smtp_server.fail_rcpt = {"bad@agency.test": "550 5.1.1 no such user"}
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    msg = build_message(
        sender=Mailbox("jd@agency.test", "Jane Doe"),
        to=[Mailbox("good@agency.test"), Mailbox("bad@agency.test")],
        subject="Two recipients",
        text="hello",
        event="report",
        key="two-recipients",
        auto_generated=False,
    )
    draft = Draft.from_message(
        msg, event="report", key=None, account="JD", envelope_from="jd@agency.test"
    )
    ids, result = send_now(engine, settings, SecretStore(home), [draft])
    assert result.status[ids[0]] == "failed"
    assert len(smtp_server.messages) == 1
    assert smtp_server.messages[0].rcpt_tos == ("good@agency.test",)
    with engine.connect() as conn:
        row = conn.execute(sa.select(messages).where(messages.c.id == ids[0])).one()
    assert "bad@agency.test" in row.last_error and "no such user" in row.last_error
    assert "accepted for good@agency.test" in row.last_error
    assert row.pending_rcpts == "bad@agency.test"
    # a retry goes only to the one that was refused
    smtp_server.fail_rcpt = {}
    assert cli("outbox", "retry", str(ids[0])).exit_code == 0
    assert [m.rcpt_tos for m in smtp_server.messages] == [
        ("good@agency.test",),
        ("bad@agency.test",),
    ]


def test_a_recipient_refused_for_good_stays_on_record_after_the_others_get_it(
    cli: Cli, home: Any, smtp_server: SMTPTestServer
) -> None:
    """550 for one, 451 for another: once the deferred one is accepted the message is failed."""
    setup_smtp(cli, smtp_server)
    smtp_server.fail_rcpt = {
        "bad@agency.test": "550 5.1.1 no such user",
        "later@agency.test": "451 4.2.0 mailbox busy",
    }
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    msg = build_message(
        sender=Mailbox("jd@agency.test", "Jane Doe"),
        to=[Mailbox("good@agency.test"), Mailbox("later@agency.test"), Mailbox("bad@agency.test")],
        subject="Three recipients",
        text="hello",
        event="report",
        key="three-recipients",
        auto_generated=False,
    )
    draft = Draft.from_message(
        msg, event="report", key=None, account="JD", envelope_from="jd@agency.test"
    )
    [id_], result = send_now(engine, settings, SecretStore(home), [draft])

    def row() -> Any:
        with engine.connect() as conn:
            return conn.execute(sa.select(messages).where(messages.c.id == id_)).one()

    assert result.status[id_] == "deferred"
    assert (row().pending_rcpts, row().refused_rcpts) == ("later@agency.test", "bad@agency.test")
    assert "bad@agency.test: 550 5.1.1 no such user" in row().last_error
    smtp_server.fail_rcpt = {"bad@agency.test": "550 5.1.1 no such user"}
    r = cli("outbox", "retry", str(id_))
    assert r.exit_code == 1, r.output  # not everyone has it: not "sent"
    after = row()
    assert after.status == "failed"
    assert after.pending_rcpts == "bad@agency.test"
    assert "refused for good earlier: bad@agency.test" in after.last_error
    assert "accepted for later@agency.test" in after.last_error
    failed = json.loads(cli("log", "--status", "failed", "--json").stdout)
    assert [m["id"] for m in failed] == [id_]
    # put back by hand, the refused address is tried again; accepted now, the message is sent
    smtp_server.fail_rcpt = {}
    assert cli("outbox", "retry", str(id_)).exit_code == 0
    assert (row().status, row().refused_rcpts, row().last_error) == ("sent", "", None)
    assert [m.rcpt_tos for m in smtp_server.messages] == [
        ("good@agency.test",),
        ("later@agency.test",),
        ("bad@agency.test",),
    ]


def test_server_that_never_answers_times_out(cli: Cli, smtp_server: SMTPTestServer) -> None:
    setup_smtp(cli, smtp_server, **{"mail.smtp.timeout": "1"})
    smtp_server.silent = True
    r = send_one(cli)
    assert r.exit_code == 3
    assert log_rows(cli)[0]["status"] == "deferred"
    smtp_server.silent = False
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert len(smtp_server.messages) == 1
    assert log_rows(cli)[0]["status"] == "sent"


def test_master_switch_refuses_one_off_mail(cli: Cli, smtp_server: SMTPTestServer) -> None:
    setup_smtp(cli, smtp_server)
    assert cli("config", "disable").exit_code == 0
    r = cli("staff", "test", "JD")
    assert r.exit_code == 2
    assert "config enable" in r.stderr
    assert smtp_server.messages == [] and log_rows(cli) == []


def test_drop_keeps_it_in_the_log(cli: Cli, smtp_server: SMTPTestServer) -> None:
    setup_smtp(cli, smtp_server)
    smtp_server.fail_data = "451 4.3.0 later"
    assert cli("staff", "test", "JD").exit_code == 1
    row = log_rows(cli)[0]
    assert cli("outbox", "drop", str(row["id"])).exit_code == 0
    assert json.loads(cli("outbox", "--json").stdout) == []
    assert log_rows(cli)[0]["status"] == "dropped"
    r = cli("outbox", "drop", "999")
    assert r.exit_code == 2 and "999" in r.stderr


def test_one_senders_wrong_passcode_holds_back_only_their_mail(
    cli: Cli, home: Any, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(
        tls="starttls", users={"jd@agency.test": "right", "ae@agency.test": "also-right"}
    )
    setup_smtp(cli, server)
    cli("staff", "add", "AE", "--name", "Alice Evans", "--work-email", "ae@agency.test")
    cli("staff", "passcode", "JD", "--stdin", input="wrong\n")
    cli("staff", "passcode", "AE", "--stdin", input="also-right\n")
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    drafts = []
    for account, address in (("JD", "jd@agency.test"), ("AE", "ae@agency.test")):
        msg = build_message(
            sender=Mailbox(address),
            to=[Mailbox("x@agency.test")],
            subject=f"from {account}",
            text="hello",
            event="report",
            key=f"two-senders:{account}",
        )
        drafts.append(
            Draft.from_message(
                msg, event="report", key=None, account=account, envelope_from=address
            )
        )
    ids, result = send_now(engine, settings, SecretStore(home), drafts)
    assert result.stopped is not None and "jd@agency.test" in str(result.stopped)
    assert [result.status[i] for i in ids] == ["deferred", "sent"]
    assert [m.mail_from for m in server.messages] == ["ae@agency.test"]


def test_a_failed_test_message_is_never_sent_later(
    cli: Cli, smtp_server: SMTPTestServer, closed_port: int
) -> None:
    setup_smtp(cli, smtp_server, **{"mail.smtp.port": str(closed_port)})
    for command in (("staff", "test", "JD"), ("config", "test")):
        r = cli(*command)
        assert r.exit_code == 3
    rows = log_rows(cli)
    assert [row["status"] for row in rows] == ["failed", "failed"]
    assert "sent at once or not at all" in rows[0]["last_error"]
    # the server is back: neither a check nor a retry sends the stale tests
    assert cli("config", "set", "mail.smtp.port", str(smtp_server.port)).exit_code == 0
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert cli("check", "--today").exit_code == 0
    assert not any(b"Test message" in m.data for m in smtp_server.messages)
    assert cli("staff", "test", "JD").exit_code == 0
    assert sum(b"Test message" in m.data for m in smtp_server.messages) == 1


def test_a_test_message_refused_for_its_sender_is_not_said_to_stay_queued(
    cli: Cli, smtp_server: SMTPTestServer
) -> None:
    """A server that wants a login refuses the test message for who sends it: exit 3 with
    the fix named, and the words say what became of it: not sent, and not kept."""
    setup_smtp(cli, smtp_server)
    smtp_server.require_auth = True
    for command in (("staff", "test", "JD"), ("config", "test")):
        r = cli(*command)
        assert r.exit_code == 3, r.output
        assert "cpmail staff passcode JD" in r.stderr, r.stderr
        assert "stays in the outbox" not in r.stderr, r.stderr
        assert "sent at once or not at all" in r.stderr, r.stderr
    assert json.loads(cli("outbox", "--json").stdout) == []
    smtp_server.require_auth = False
    assert cli("check", "--today").exit_code == 0
    assert not any(b"Test message" in m.data for m in smtp_server.messages)


def test_a_refused_test_message_is_never_sent_later_and_listings_say_what_is(
    cli: Cli, smtp_server: SMTPTestServer
) -> None:
    setup_smtp(cli, smtp_server)
    smtp_server.fail_rcpt = {"jd@agency.test": "550 5.1.1 no such user"}
    assert cli("staff", "test", "JD").exit_code != 0
    smtp_server.fail_rcpt = {}
    assert cli("outbox", "retry", "--all").exit_code == 0
    assert smtp_server.messages == []  # sent at once or never
    assert json.loads(cli("outbox", "--json").stdout) == []  # nothing there to retry
    [failed] = log_rows(cli)
    assert failed["event"] == "test" and failed["status"] == "failed"
    # log --to names one mailbox exactly, not every address that ends like it
    assert cli("config", "manager", "--name", "Sam", "--email", "sam.jd@agency.test").exit_code == 0
    assert send_one(cli).exit_code == 0
    found = json.loads(cli("log", "--json", "--to", "jd@agency.test").stdout)
    assert [r["to"] for r in found] == [["jd@agency.test"]]
    # a staff member without an address got nothing: not every message
    engine = connect(Settings.load(cli.home).db_url, where="test")
    with engine.begin() as conn:  # (written by a data import: the CLI wants an address)
        conn.execute(sa.text("INSERT INTO staff (id, name, active) VALUES ('NA', 'No Address', 1)"))
    engine.dispose()
    assert json.loads(cli("log", "--json", "--to", "NA").stdout) == []
    # dropping a message that is not waiting says so
    sent = [r["id"] for r in log_rows(cli) if r["status"] == "sent"]
    r = cli("outbox", "drop", str(sent[0]))
    assert r.exit_code == 2 and r.stdout == ""
    assert f"message {sent[0]} cannot be dropped: it was sent; nothing was dropped" in r.stderr
    # nor does retrying one, nor dropping one twice
    r = cli("outbox", "retry", str(sent[0]), str(failed["id"]))
    assert r.exit_code == 2 and r.stdout == "", r.output
    assert (
        f"messages {sent[0]} (it was sent), {failed['id']} (its text is no longer kept) "
        "cannot be sent again; nothing was queued again" in r.stderr
    ), r.output
    now = dt.datetime.now()
    closed = f"{(now + dt.timedelta(hours=2)):%H}:00-{(now + dt.timedelta(hours=3)):%H}:00"
    assert cli("config", "set", "mail.send_window", closed).exit_code == 0
    send_one(cli)  # stays queued until the window opens
    [mine] = [x["id"] for x in json.loads(cli("outbox", "--json").stdout)]
    assert "Dropped 1" in cli("outbox", "drop", str(mine)).stdout
    r = cli("outbox", "drop", str(mine))
    assert "Dropped 0" in r.stdout and f"Message {mine} was not dropped: it is dropped" in r.stderr
    r = cli("outbox", "retry", str(mine))
    assert r.exit_code == 2 and f"message {mine} cannot be sent again: it was dropped" in r.stderr


def test_a_dropped_message_never_says_it_will_be_sent_again(
    cli: Cli, smtp_server: SMTPTestServer
) -> None:
    """Dropping a deferred message kept its "it will be sent again" in the log."""
    from cpmail.errors import RESENT

    setup_smtp(cli, smtp_server)
    smtp_server.drop_during_data = 1  # (the message may have arrived: said, and sent again)
    assert send_one(cli).exit_code == 1
    [row] = log_rows(cli)
    assert row["status"] == "deferred" and RESENT.strip(" ;.") in row["last_error"], row
    assert "Dropped 1" in cli("outbox", "drop", str(row["id"])).stdout
    [row] = log_rows(cli)
    assert row["status"] == "dropped", row
    assert RESENT.strip(" ;.") not in row["last_error"], row["last_error"]
    assert "dropped with `cpmail outbox drop`" in row["last_error"], row["last_error"]


@pytest.mark.parametrize(
    "fault",
    [
        {"drop_during_data": 1},  # hangs up before answering
        {"fail_data": ["hello, this is not SMTP"]},  # answers with words that are not SMTP
        {"fail_data": ["220 out of step"]},  # an answer that is not the one due
        {"stall_data": 1},  # never answers
    ],
    ids=["hang-up", "not-smtp", "out-of-step", "silent"],
)
def test_a_message_whose_answer_is_unknown_is_said_to_have_maybe_arrived(
    cli: Cli, smtp_server: SMTPTestServer, fault: dict[str, Any]
) -> None:
    """Once the whole text went, anything but a clear answer leaves the message's fate
    unknown: said so ("may have arrived … do not send it again yourself"), never "not
    accepted", which invites a copy by hand (a garbled answer said that)."""
    setup_smtp(cli, smtp_server, **{"mail.smtp.timeout": "1"})
    for k, v in fault.items():
        setattr(smtp_server, k, v)
    r = send_one(cli)
    assert r.exit_code == 1, r.output
    assert "may have arrived" in r.stderr and "do not send it again yourself" in r.stderr, r.stderr
    assert "not accepted" not in r.stderr, r.stderr
    [row] = log_rows(cli)
    assert row["status"] == "deferred", row


def test_a_message_some_recipients_took_never_says_it_was_not_accepted(
    cli: Cli, smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    """One recipient took it, one refused it for good, one was told to wait: "was not
    accepted yet" was untrue of the first, and "the next check tries again" of the second."""
    setup_smtp(cli, smtp_server)
    pdf = tmp_path / "March.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%%EOF\n")
    smtp_server.fail_rcpt = {
        "rita@agency.test": "550 5.1.1 no such user",
        "dan@agency.test": "451 4.3.0 try again later",
    }
    r = cli("send-report", str(pdf), "--to", "rita@agency.test,dan@agency.test,sam@agency.test")
    assert r.exit_code == 1, r.output
    said = " ".join(r.stderr.split())
    assert "not accepted" not in said and "reached some of its recipients, not all" in said, said
    assert "try later" in said and "`cpmail outbox retry` for every one not reached" in said, said
    assert [m.rcpt_tos for m in smtp_server.messages] == [("sam@agency.test",)]


# Each way a waiting message's recorded error says it will still go.
PROMISED = [
    "; it will be sent again",
    "; the mail waits and is tried again later",
    "; it is tried again later",
    "; it waits until the daily limit starts again",
    "; it waits for tomorrow",  # (as rows written by earlier versions say it)
]


@pytest.mark.parametrize("promise", PROMISED)
def test_no_promise_to_send_is_left_in_a_message_that_ended(
    cli: Cli, smtp_server: SMTPTestServer, promise: str
) -> None:
    """Each way a waiting message's error says it will go (sent again, tried later, waits
    for tomorrow) is taken out when it ends: dropped by hand, or failed for good."""
    from cpmail.errors import settled

    setup_smtp(cli, smtp_server)
    assert cli("config", "set", "mail.send_window", "03:00-03:01").exit_code == 0
    assert send_one(cli).exit_code == 1  # (held by the window: it waits, queued)
    [row] = log_rows(cli)
    engine = connect(Settings.load(cli.home).db_url, where="test")
    with engine.begin() as conn:
        conn.execute(
            messages.update()
            .where(messages.c.id == row["id"])
            .values(status="deferred", last_error=f"the server said no{promise}.")
        )
    engine.dispose()
    assert "Dropped 1" in cli("outbox", "drop", str(row["id"])).stdout
    [row] = log_rows(cli)
    assert not any(p in row["last_error"] for p in PROMISED), row["last_error"]
    assert row["last_error"].startswith("the server said no;"), row["last_error"]
    assert settled(f"it failed{promise}.") == "it failed."


@pytest.mark.parametrize("which", ["--all", "id"])
def test_a_retry_while_sending_was_off_is_sent_by_the_next_retry(
    cli: Cli, smtp_server: SMTPTestServer, which: str
) -> None:
    """Retried while sending was off, the message waits queued; once sending is on again, a
    retry sends it at once (it did nothing: 'Queued 0', and the mail waited for a check)."""
    setup_smtp(cli, smtp_server)
    smtp_server.fail_data = "451 4.3.0 try later"
    assert send_one(cli).exit_code == 1
    smtp_server.fail_data = None
    row = log_rows(cli)[0]
    arg = "--all" if which == "--all" else str(row["id"])
    assert cli("config", "disable").exit_code == 0
    r = cli("outbox", "retry", arg)
    assert r.exit_code == 0 and "Queued 1 message(s) again" in r.stdout, r.output
    assert smtp_server.messages == []
    assert cli("config", "enable").exit_code == 0
    r = cli("outbox", "retry", arg)
    assert r.exit_code == 0, r.output
    assert "Sent 1, deferred 0, failed 0." in r.stdout, r.output
    assert len(smtp_server.messages) == 1 and log_rows(cli)[0]["status"] == "sent"


def test_retry_or_drop_of_mail_that_cannot_be_is_exit_2_and_changes_nothing(
    cli: Cli, smtp_server: SMTPTestServer
) -> None:
    """`outbox retry` of a message sent already (or `drop` of one) cannot do what it is
    asked: exit 2 naming each such id, and nothing is queued again, sent or dropped, not
    even the other ids given with it."""
    setup_smtp(cli, smtp_server)
    assert send_one(cli).exit_code == 0
    smtp_server.fail_rcpt = {"max@agency.test": "550 5.1.1 no such user"}
    assert send_one(cli).exit_code == 1
    smtp_server.fail_rcpt = {}
    [sent, failed] = [r["id"] for r in log_rows(cli)]
    assert [r["status"] for r in log_rows(cli)] == ["sent", "failed"]
    for args in ([str(sent)], [str(failed), str(sent)], [str(sent), str(sent)]):
        r = cli("outbox", "retry", *args)
        assert r.exit_code == 2 and r.stdout == "", r.output
        assert r.stderr.startswith(f"cpmail: message {sent} cannot be sent again: it was sent;")
        assert "nothing was queued again" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert [r["status"] for r in log_rows(cli)] == ["sent", "failed"]
        assert len(smtp_server.messages) == 1
    r = cli("outbox", "drop", str(failed), str(sent))
    assert r.exit_code == 2 and r.stdout == "", r.output
    assert f"message {sent} cannot be dropped: it was sent; nothing was dropped" in r.stderr
    assert [r["status"] for r in log_rows(cli)] == ["sent", "failed"]
    r = cli("outbox", "retry", str(failed))  # what can be sent again is
    assert r.exit_code == 0 and "Sent 1, deferred 0, failed 0." in r.stdout, r.output
    assert [r["status"] for r in log_rows(cli)] == ["sent", "sent"]
    assert len(smtp_server.messages) == 2
