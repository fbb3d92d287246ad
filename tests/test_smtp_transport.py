"""The SMTP transport against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import time
import traceback
from base64 import b64encode
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import pytest

from cpmail.errors import (
    AuthError,
    ConfigError,
    PermanentFailure,
    TemporaryFailure,
    Unreachable,
)
from cpmail.secrets import SHARED, SecretStore, passcode_name
from cpmail.settings import Settings
from cpmail.transports.base import Envelope, Outcome
from cpmail.transports.smtp import SMTPTransport
from cpmail.transports.smtp_words import auth_failure_message
from tests.smtpserver import (
    SMTPTestServer,
    closed_port,
    smtp_ca,
    smtp_server,
    smtp_server_factory,
)

__all__ = ["closed_port", "smtp_ca", "smtp_server", "smtp_server_factory"]  # fixtures

Factory = Callable[..., SMTPTestServer]

JD = "jd@agency.test"
PASSCODE = "correct-horse-battery-9"


@pytest.fixture(autouse=True, params=[True, False], ids=["pipelining", "one-by-one"])
def pipelining(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test here twice: the server offers PIPELINING (as most do), then it does not."""
    offered: bool = request.param
    monkeypatch.setattr(SMTPTestServer, "offer_pipelining", offered)
    return offered


def message(n: int, sender: str = JD, to: tuple[str, ...] = ("ann@agency.test",)) -> bytes:
    """A real RFC 5322 message, with lines that test dot-stuffing and 8-bit text."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"[C&P] Job {n} opened"
    msg["Message-ID"] = f"<job-opened.{n}@cpmail.test>"
    msg.set_content(f"Job {n} was opened for Café Brûlé.\n.\n..leading dots stay\nBye.\n")
    return msg.as_bytes()


def envelope(
    n: int,
    *,
    account: str = "",
    sender: str = JD,
    to: tuple[str, ...] = ("ann@agency.test",),
) -> Envelope:
    return Envelope(n, account, sender, to, message(n, sender, to))


def transport(
    home: Path,
    server: SMTPTestServer | None = None,
    *,
    passcodes: dict[str, str] | None = None,
    **keys: Any,
) -> SMTPTransport:
    """Build the transport from real Settings and a real SecretStore in ``home``."""
    settings = Settings.load(home)
    values: dict[str, Any] = server.settings() if server is not None else {}
    values["mail.smtp.timeout"] = 2
    values.update({f"mail.smtp.{k}": v for k, v in keys.items()})
    for key, value in values.items():
        settings.set(key, value)
    secrets = SecretStore(home)
    for account, passcode in (passcodes or {}).items():
        secrets.set(passcode_name(account), passcode)
    return SMTPTransport(settings, secrets)


def deliver(t: SMTPTransport, envelopes: list[Envelope]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    t.deliver(envelopes, outcomes.append)
    return outcomes


def fatal(t: SMTPTransport, envelopes: list[Envelope]) -> tuple[Exception, list[Outcome]]:
    """Deliver, expecting the run to stop; return the error and what was reported first."""
    outcomes: list[Outcome] = []
    with pytest.raises((AuthError, Unreachable)) as info:
        t.deliver(envelopes, outcomes.append)
    assert info.value.exit_code == 3
    return info.value, outcomes


# ---- security modes and logging in


@pytest.mark.parametrize("tls", ["none", "starttls", "ssl"])
def test_each_security_mode_delivers_the_exact_bytes(
    home: Path, smtp_server_factory: Factory, tls: str
) -> None:
    server = smtp_server_factory(tls=tls)
    env = envelope(1, to=("ann@agency.test", "bob@agency.test"))

    outcomes = deliver(transport(home, server), [env])

    assert outcomes == [Outcome(1, accepted=("ann@agency.test", "bob@agency.test"))]
    [got] = server.messages
    assert got.data == env.raw
    assert got.mail_from == JD
    assert got.rcpt_tos == ("ann@agency.test", "bob@agency.test")
    assert got.tls is (tls != "none")
    assert got.login is None
    assert "BODY=8BITMIME" in got.mail_options
    assert f"SIZE={len(env.raw)}" in got.mail_options
    assert server.auth_attempts == []


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_a_passcode_logs_in_as_the_sender_over_tls(
    home: Path, smtp_server_factory: Factory, tls: str
) -> None:
    server = smtp_server_factory(tls=tls, users={JD: PASSCODE})
    t = transport(home, server, passcodes={"JD": PASSCODE})

    outcomes = deliver(t, [envelope(1, account="JD"), envelope(2, account="JD")])

    assert [o.error for o in outcomes] == [None, None]
    assert [m.login for m in server.messages] == [JD, JD]
    assert all(m.tls for m in server.messages)
    assert [(a.login, a.ok, a.tls) for a in server.auth_attempts] == [(JD, True, True)]


def test_the_shared_account_logs_in_with_its_own_passcode(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls", users={"office@agency.test": "shared-pass"})
    t = transport(home, server, passcodes={SHARED: "shared-pass"})

    outcomes = deliver(t, [envelope(1, account=SHARED, sender="office@agency.test")])

    assert outcomes[0].error is None
    assert server.messages[0].login == "office@agency.test"


def test_an_account_without_passcode_sends_without_login(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls", users={JD: PASSCODE})

    outcomes = deliver(transport(home, server), [envelope(1, account="JD")])

    assert outcomes[0].accepted == ("ann@agency.test",)
    assert server.auth_attempts == []
    assert server.messages[0].login is None


def test_messages_of_several_accounts_each_log_in_as_their_sender(
    home: Path, smtp_server_factory: Factory
) -> None:
    users = {f"{s.lower()}@agency.test": f"pass-{s}" for s in ("JD", "AB", "CD")}
    server = smtp_server_factory(tls="starttls", users=users)
    t = transport(
        home,
        server,
        connections=2,
        passcodes={s: f"pass-{s}" for s in ("JD", "AB", "CD")},
    )
    envs = [
        envelope(n, account=acct, sender=f"{acct.lower() or 'robot'}@agency.test")
        for n, acct in enumerate(["JD", "AB", "CD", ""] * 15)
    ]

    outcomes = deliver(t, envs)

    assert sorted(o.id for o in outcomes) == list(range(60))
    assert all(o.error is None for o in outcomes)
    assert len(server.messages) == 60
    for got in server.messages:
        expected = None if got.mail_from == "robot@agency.test" else got.mail_from
        assert got.login == expected
    assert server.max_parallel <= 2
    assert all(a.ok for a in server.auth_attempts)


# ---- refused logins


def test_a_wrong_passcode_stops_the_run_after_one_attempt(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls", users={JD: "another"})
    t = transport(home, server, passcodes={"JD": PASSCODE}, connections=3)

    error, outcomes = fatal(t, [envelope(n, account="JD") for n in range(10)])

    assert isinstance(error, AuthError)
    text = str(error)
    assert f"127.0.0.1:{server.port}" in text
    assert "refused the login of jd@agency.test (staff JD)" in text
    assert "535" in text
    assert "cpmail staff passcode JD" in text
    assert outcomes == []
    assert server.messages == []
    # Parallel connections must not multiply failed logins (lock-outs).
    assert len(server.auth_attempts) == 1


def test_a_microsoft_answer_points_to_sign_in_with_microsoft(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls", users={JD: PASSCODE})
    server.fail_auth = "535 5.7.30 Basic authentication is not supported for Client Submission"
    t = transport(home, server, passcodes={"JD": PASSCODE})

    error, _ = fatal(t, [envelope(1, account="JD")])

    assert isinstance(error, AuthError)
    assert "5.7.30 Basic authentication is not supported" in str(error)
    assert '"Sign in with Microsoft"' in str(error)
    assert "cpmail config microsoft" in str(error)
    assert "cpmail staff signin JD" in str(error)


@pytest.mark.parametrize(
    ("host", "answer", "needs"),
    [
        ("smtp.gmail.com", "5.7.8 Username and Password not accepted", "Google"),
        ("smtp.googlemail.com", "5.7.0 Authentication Required", "Google"),
        ("smtp.office365.com", "5.7.3 Authentication unsuccessful", "Microsoft"),
        ("outlook.office365.com", "5.7.139 Authentication unsuccessful", "Microsoft"),
        ("mail.agency.test", "5.7.139 Authentication unsuccessful, SmtpClientAuth", "Microsoft"),
    ],
)
def test_provider_hosts_and_answers_name_the_sign_in_to_use(
    host: str, answer: str, needs: str
) -> None:
    text = auth_failure_message(f"{host}:587", host, "JD", JD, 535, answer)

    assert answer in text
    assert f'"Sign in with {needs}"' in text
    assert f"cpmail config {'gmail' if needs == 'Google' else 'microsoft'}" in text
    assert "cpmail staff signin JD" in text


def test_a_generic_5_7_8_mentions_both_sign_ins_and_the_passcode() -> None:
    text = auth_failure_message(
        "mail.agency.test:587", "mail.agency.test", SHARED, "office@agency.test", 535, "5.7.8 no"
    )

    assert "cpmail staff passcode --shared" in text
    assert '"Sign in with Google/Microsoft"' in text
    assert "cpmail config gmail" in text and "cpmail config microsoft" in text


def test_an_unknown_server_gets_no_provider_advice() -> None:
    text = auth_failure_message(
        "mail.agency.test:587", "mail.agency.test", "JD", JD, 535, "5.7.0 bad password"
    )

    assert "Sign in" not in text
    assert "cpmail staff passcode JD" in text


def test_the_passcode_never_shows_in_an_error(home: Path, smtp_server_factory: Factory) -> None:
    server = smtp_server_factory(tls="starttls", users={JD: "x"})
    plain = b64encode(f"\0{JD}\0{PASSCODE}".encode()).decode()
    # A careless (or hostile) server echoes what it was given.
    server.fail_auth = f"535 5.7.8 bad credentials {PASSCODE} {plain}"
    t = transport(home, server, passcodes={"JD": PASSCODE})

    error, _ = fatal(t, [envelope(1, account="JD")])

    shown = "".join(traceback.format_exception(error)) + repr(error) + repr(error.args)
    assert "bad credentials" in shown
    assert PASSCODE not in shown
    assert plain not in shown
    assert b64encode(PASSCODE.encode()).decode() not in shown


def test_a_server_that_wants_a_login_says_how_to_set_a_passcode(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls", users={JD: PASSCODE})
    server.require_auth = True

    error, outcomes = fatal(transport(home, server), [envelope(1, account="JD")])

    assert isinstance(error, AuthError)
    assert "will not send mail from jd@agency.test without a login" in str(error)
    assert "530" in str(error)
    assert "cpmail staff passcode JD" in str(error)
    assert outcomes == []


def test_basic_auth_switched_off_at_mail_from_points_to_microsoft(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.fail_mail = "550 5.7.30 Basic authentication is not supported for Client Submission"

    error, outcomes = fatal(transport(home, smtp_server), [envelope(n) for n in range(3)])

    assert isinstance(error, AuthError)
    assert "550 5.7.30 Basic authentication is not supported" in str(error)
    assert '"Sign in with Microsoft"' in str(error)
    assert outcomes == []


def test_a_passcode_for_a_server_without_auth_is_an_error(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls")  # no users: AUTH is not offered

    error, _ = fatal(
        transport(home, server, passcodes={"JD": PASSCODE}), [envelope(1, account="JD")]
    )

    assert isinstance(error, AuthError)
    assert "does not offer a login" in str(error)
    assert server.messages == []


# ---- TLS and reaching the server


def test_starttls_not_offered_sends_nothing_in_plain_text(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="none", users={JD: PASSCODE})
    t = transport(home, server, security="starttls", passcodes={"JD": PASSCODE})

    error, outcomes = fatal(t, [envelope(1, account="JD")])

    assert isinstance(error, Unreachable)
    assert "did not offer STARTTLS" in str(error)
    assert "nothing was sent in plain text" in str(error)
    assert f"127.0.0.1:{server.port}" in str(error)
    assert outcomes == []
    assert server.messages == []
    assert server.auth_attempts == []


def test_starttls_stripped_from_a_tls_server_is_refused(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls")
    server.offer_starttls = False  # as a man in the middle would

    error, _ = fatal(transport(home, server), [envelope(1)])

    assert "did not offer STARTTLS" in str(error)
    assert server.messages == []


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_an_untrusted_certificate_is_refused(
    home: Path, smtp_server_factory: Factory, tls: str
) -> None:
    server = smtp_server_factory(tls=tls)

    error, outcomes = fatal(transport(home, server, ca_file=""), [envelope(1)])

    assert isinstance(error, Unreachable)
    assert "certificate" in str(error) and "could not be verified" in str(error)
    assert "mail.smtp.ca_file" in str(error)
    assert outcomes == []
    assert server.messages == []


def test_verify_false_accepts_an_untrusted_certificate(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls")

    outcomes = deliver(transport(home, server, ca_file="", verify=False), [envelope(1)])

    assert outcomes[0].error is None
    assert server.messages[0].tls


def test_ssl_against_a_plain_server_explains_the_handshake(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    error, _ = fatal(transport(home, smtp_server, security="ssl"), [envelope(1)])

    assert "TLS handshake" in str(error)
    assert "cpmail config set mail.smtp.security starttls" in str(error)


def test_starttls_against_an_implicit_tls_port_suggests_ssl(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="ssl")

    error, _ = fatal(transport(home, server, security="starttls", timeout=1), [envelope(1)])

    assert "cpmail config set mail.smtp.security ssl" in str(error)


def test_connection_refused(home: Path, closed_port: int) -> None:
    t = transport(home, host="127.0.0.1", port=closed_port, security="none")

    error, outcomes = fatal(t, [envelope(1)])

    assert isinstance(error, Unreachable)
    assert str(error) == (
        f"the SMTP server 127.0.0.1:{closed_port} refused the connection; check "
        "mail.smtp.host and mail.smtp.port, and that the server is running."
    )
    assert outcomes == []


@pytest.mark.parametrize("how", ["reset", "close", "ssl"])
def test_a_line_broken_off_before_the_greeting_is_not_called_unreachable(
    home: Path, how: str
) -> None:
    """The connection was made, then the server dropped it (a reset, as a firewall or a
    server over its limit does; or a plain close) before it greeted: that is no failure
    to connect, and the sentence says what happened."""
    import socket
    import struct
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if how == "ssl":  # reads the TLS ClientHello, then goes
                conn.recv(4096)
            if how in ("reset", "ssl"):  # RST, not FIN
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        security = "ssl" if how == "ssl" else "none"
        error, outcomes = fatal(
            transport(home, host="127.0.0.1", port=port, security=security), [envelope(1)]
        )
    finally:
        listener.close()
    assert isinstance(error, Unreachable) and outcomes == []
    said = str(error)
    assert said.startswith(f"the SMTP server 127.0.0.1:{port} ")
    assert "cannot connect" not in said and "refused the connection" not in said, said
    assert "the greeting" in said, said
    if how == "ssl":  # (the handshake is part of connecting: either may have been cut)
        assert "at the TLS handshake or the greeting" in said, said
        assert "check mail.smtp.security and mail.smtp.port" in said, said


def test_421_at_the_greeting_is_unreachable(home: Path, smtp_server: SMTPTestServer) -> None:
    smtp_server.greeting = "421 4.3.2 System not accepting network messages"

    error, _ = fatal(transport(home, smtp_server), [envelope(1)])

    assert isinstance(error, Unreachable)
    assert "421 4.3.2 System not accepting network messages" in str(error)
    assert "try again later" in str(error)


@pytest.mark.parametrize("tls", ["none", "starttls"])
def test_a_server_busy_at_ehlo_says_try_again_later(
    home: Path, smtp_server_factory: Factory, tls: str
) -> None:
    server = smtp_server_factory(tls=tls)
    server.fail_ehlo = "421 4.7.0 Too many connections from your host"

    error, outcomes = fatal(transport(home, server), [envelope(1)])

    assert "421 4.7.0 Too many connections from your host" in str(error)
    assert "try again later" in str(error)
    assert "mail.smtp.security" not in str(error)  # nothing to do with it
    assert outcomes == []
    assert server.messages == []


def test_a_server_that_never_answers_times_out(home: Path, smtp_server: SMTPTestServer) -> None:
    smtp_server.silent = True
    started = time.monotonic()

    error, _ = fatal(transport(home, smtp_server, timeout=1), [envelope(1)])

    assert time.monotonic() - started < 5
    assert isinstance(error, Unreachable)
    assert f"no answer from the SMTP server 127.0.0.1:{smtp_server.port} within 1 s" in str(error)


def test_a_missing_host_is_a_configuration_error(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"mail\.smtp\.host is not set"):
        deliver(transport(home), [envelope(1)])


def test_a_missing_ca_file_is_a_configuration_error(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls")
    t = transport(home, server, ca_file=str(home / "nowhere.pem"))

    with pytest.raises(ConfigError, match=r"mail\.smtp\.ca_file: .*nowhere\.pem does not exist"):
        deliver(t, [envelope(1)])


def test_nothing_to_send_opens_no_connection(home: Path, closed_port: int) -> None:
    t = transport(home, host="127.0.0.1", port=closed_port, security="none")

    assert deliver(t, []) == []


# ---- what the server says about one message


def test_a_disconnect_during_data_is_temporary_and_the_next_message_goes_through(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.drop_during_data = 1
    t = transport(home, smtp_server, connections=1)

    first, second = deliver(t, [envelope(1), envelope(2)])

    assert isinstance(first.error, TemporaryFailure)
    assert "closed the connection while the message was being sent" in str(first.error)
    assert second == Outcome(2, accepted=("ann@agency.test",))
    assert [m.data for m in smtp_server.messages] == [envelope(2).raw]
    assert smtp_server.connections == 2


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("451 4.3.0 Try again later", TemporaryFailure),
        ("421 4.3.2 Shutting down", TemporaryFailure),
        ("554 5.6.0 Message rejected as spam", PermanentFailure),
    ],
)
def test_an_answer_to_data_decides_the_message(
    home: Path, smtp_server: SMTPTestServer, answer: str, kind: type[Exception]
) -> None:
    smtp_server.fail_data = answer

    [outcome] = deliver(transport(home, smtp_server), [envelope(1)])

    assert type(outcome.error) is kind
    assert answer in str(outcome.error)
    assert outcome.accepted == ()
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("451 4.7.1 Greylisted, try again in 5 minutes", TemporaryFailure),
        ("421 4.7.0 Too many messages", TemporaryFailure),
        # (of this message; "sender not allowed" concerns the account: test_faults.py)
        ("552 5.3.4 Message size exceeds fixed maximum message size", PermanentFailure),
    ],
)
def test_an_answer_to_mail_from_decides_the_message(
    home: Path, smtp_server: SMTPTestServer, answer: str, kind: type[Exception]
) -> None:
    smtp_server.fail_mail = answer

    first, second = deliver(transport(home, smtp_server, connections=1), [envelope(1), envelope(2)])

    assert type(first.error) is kind
    assert answer in str(first.error)
    assert type(second.error) is kind
    assert smtp_server.messages == []


def test_a_garbled_answer_is_temporary_and_the_next_message_goes_through(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.fail_data = ["what?"]

    first, second = deliver(transport(home, smtp_server, connections=1), [envelope(1), envelope(2)])

    assert isinstance(first.error, TemporaryFailure)
    # (the whole text went: the server may have it, and says so)
    assert "not an SMTP answer" in str(first.error) and first.error.maybe_sent
    assert second == Outcome(2, accepted=("ann@agency.test",))
    assert smtp_server.connections == 2


def test_a_421_on_one_connection_is_retried_on_a_fresh_one(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    # Some providers cap the messages per connection and answer 421 to the next.
    smtp_server.fail_mail = ["421 4.7.0 Too many messages on this connection"]

    [outcome] = deliver(transport(home, smtp_server), [envelope(1)])

    assert outcome == Outcome(1, accepted=("ann@agency.test",))
    assert len(smtp_server.messages) == 1
    assert smtp_server.connections == 2


def test_one_refused_recipient_of_two(home: Path, smtp_server: SMTPTestServer) -> None:
    smtp_server.fail_rcpt = {"bob@agency.test": "550 5.1.1 No such user"}
    env = envelope(1, to=("ann@agency.test", "bob@agency.test"))

    [outcome] = deliver(transport(home, smtp_server), [env])

    assert outcome == Outcome(
        1,
        accepted=("ann@agency.test",),
        refused={"bob@agency.test": "550 5.1.1 No such user"},
    )
    [got] = smtp_server.messages
    assert got.rcpt_tos == ("ann@agency.test",)
    assert got.data == env.raw


def test_every_recipient_refused_is_reported_per_recipient(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.fail_rcpt = {
        "ann@agency.test": "452 4.2.2 Mailbox full",
        "bob@agency.test": "550 5.1.1 No such user",
    }
    env = envelope(1, to=("ann@agency.test", "bob@agency.test"))

    next_one = envelope(2, to=("cat@agency.test",))

    outcomes = deliver(transport(home, smtp_server), [env, next_one])

    assert outcomes[0] == Outcome(
        1,
        deferred={"ann@agency.test": "452 4.2.2 Mailbox full"},
        refused={"bob@agency.test": "550 5.1.1 No such user"},
    )
    # The same connection carries the next message.
    assert outcomes[1] == Outcome(2, accepted=("cat@agency.test",))
    assert [m.rcpt_tos for m in smtp_server.messages] == [("cat@agency.test",)]
    assert smtp_server.connections == 1


def test_each_answer_has_the_timeout_however_many_recipients_wait_for_theirs(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    # A server that checks every recipient answers each within the timeout (1 s),
    # all of them together in 2.4 s: pipelined or not, that is a server answering.
    smtp_server.rcpt_delay = 0.4
    to = tuple(f"r{i}@agency.test" for i in range(6))
    t = transport(home, smtp_server, timeout=1, connections=1)

    [outcome] = deliver(t, [envelope(1, to=to)])

    assert outcome == Outcome(1, accepted=to)
    [got] = smtp_server.messages
    assert got.rcpt_tos == to


def test_552_to_a_recipient_is_tried_again_not_failed(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    # RFC 5321 4.5.3.1.10: 552 to RCPT TO ("too many recipients" in RFC 821's
    # words, or a full mailbox) is to be taken as temporary, as Postfix does.
    smtp_server.fail_rcpt = {"bob@agency.test": "552 5.2.2 Mailbox full"}
    env = envelope(1, to=("ann@agency.test", "bob@agency.test"))

    [outcome] = deliver(transport(home, smtp_server), [env])

    assert outcome == Outcome(
        1,
        accepted=("ann@agency.test",),
        deferred={"bob@agency.test": "552 5.2.2 Mailbox full"},
    )


@pytest.mark.parametrize(
    "answer",
    [
        "452 4.5.3 Error: too many recipients",  # Postfix, Exchange, Gmail (RFC 5321)
        "552 5.5.3 Too many recipients",  # older servers (RFC 821's code)
        "452 Too many recipients received this hour",
    ],
)
def test_recipients_over_the_servers_limit_get_the_message_in_another_transaction(
    home: Path, smtp_server: SMTPTestServer, answer: str
) -> None:
    smtp_server.max_recipients = (2, answer)
    to = tuple(f"r{i}@agency.test" for i in range(5))
    env = envelope(1, to=to)
    t = transport(home, smtp_server, connections=1)

    outcomes = deliver(t, [env, envelope(2)])

    assert outcomes == [Outcome(1, accepted=to), Outcome(2, accepted=("ann@agency.test",))]
    got = smtp_server.messages
    assert [m.rcpt_tos for m in got] == [to[:2], to[2:4], to[4:], ("ann@agency.test",)]
    assert all(m.data == env.raw for m in got[:3])
    assert smtp_server.connections == 1


def test_recipients_over_the_limit_of_a_server_that_stops_taking_them_wait_for_later(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    # The first transaction goes; the second meets a server that takes nobody:
    # those recipients wait (deferred), those who got it are not sent it again.
    smtp_server.max_recipients = (2, "452 4.5.3 Error: too many recipients")
    smtp_server.rate_limit = (1, 60)  # one message a minute: the second MAIL is refused
    to = tuple(f"r{i}@agency.test" for i in range(3))

    [outcome] = deliver(transport(home, smtp_server, connections=1), [envelope(1, to=to)])

    assert outcome.error is None
    assert outcome.accepted == to[:2]
    assert list(outcome.deferred) == [to[2]]
    assert "452 4.3.2 Submission quota exceeded" in outcome.deferred[to[2]]
    assert [m.rcpt_tos for m in smtp_server.messages] == [to[:2]]


def test_an_answer_nobody_asked_for_is_never_taken_for_the_next_messages(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    # The answer to the first message comes with one more line, unasked: read as
    # the next message's answers, one recipient's refusal would pass for the
    # answer to DATA and fail the whole message for good.
    smtp_server.extra_answers = ["250 2.0.0 OK again"]
    smtp_server.fail_rcpt = {"bob@agency.test": "550 5.1.1 No such user"}
    second = envelope(2, to=("ann@agency.test", "bob@agency.test"))
    t = transport(home, smtp_server, connections=1)

    envelopes = [envelope(1), second, envelope(3)]
    outcomes = deliver(t, envelopes)

    assert outcomes == [
        Outcome(1, accepted=("ann@agency.test",)),
        Outcome(
            2,
            accepted=("ann@agency.test",),
            refused={"bob@agency.test": "550 5.1.1 No such user"},
        ),
        Outcome(3, accepted=("ann@agency.test",)),
    ]
    assert [m.data for m in smtp_server.messages] == [e.raw for e in envelopes]


def test_a_read_timeout_is_temporary_and_the_next_message_goes_through(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.stall_data = 1
    t = transport(home, smtp_server, timeout=1, connections=1)

    first, second = deliver(t, [envelope(1), envelope(2)])

    assert isinstance(first.error, TemporaryFailure)
    assert "did not answer the message within 1 s" in str(first.error)
    assert second.error is None
    assert len(smtp_server.messages) == 1


def test_a_message_over_the_servers_size_limit_fails_for_good(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(size_limit=200)

    [outcome] = deliver(transport(home, server), [envelope(1)])

    assert isinstance(outcome.error, PermanentFailure)
    assert "larger than" in str(outcome.error)
    assert server.messages == []


# ---- many messages, few connections


def test_many_messages_arrive_once_each_over_few_connections(
    home: Path, smtp_server_factory: Factory
) -> None:
    server = smtp_server_factory(tls="starttls", users={JD: PASSCODE})
    envs = [envelope(n, account="JD", to=(f"s{n % 7}@agency.test",)) for n in range(200)]
    t = transport(home, server, passcodes={"JD": PASSCODE}, connections=3)

    outcomes = deliver(t, envs)

    assert sorted(o.id for o in outcomes) == list(range(200))
    assert all(o.error is None for o in outcomes)
    assert sorted(m.data for m in server.messages) == sorted(e.raw for e in envs)
    assert server.connections <= 3
    assert server.max_parallel <= 3
    assert len(server.auth_attempts) == server.connections


def test_a_server_that_allows_fewer_connections_still_gets_everything(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.max_connections = 1
    envs = [envelope(n) for n in range(30)]

    outcomes = deliver(transport(home, smtp_server, connections=3), envs)

    assert all(o.error is None for o in outcomes)
    assert len(outcomes) == len(smtp_server.messages) == 30


def test_a_server_gone_mid_batch_stops_the_run_keeping_what_was_reported(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    reported: list[Outcome] = []

    def report(outcome: Outcome) -> None:
        reported.append(outcome)
        if len(reported) == 2:
            smtp_server.stop()

    t = transport(home, smtp_server, connections=1)
    with pytest.raises(Unreachable, match="refused the connection"):
        t.deliver([envelope(n) for n in range(5)], report)

    assert [o.id for o in reported][:2] == [0, 1]
    assert all(o.error is None for o in reported[:2])
    # The next message's commands may have gone with the last text and been answered
    # before the server went: its text found no one, and it is not said to be sent.
    assert [o.id for o in reported[2:]] in ([], [2])
    assert all(not o.accepted and o.error is not None for o in reported[2:])
    assert len(smtp_server.messages) == 2


def test_the_size_a_digest_is_composed_to_is_what_the_server_takes(
    home: Path, smtp_server_factory: Callable[..., SMTPTestServer], closed_port: int
) -> None:
    """The SIZE the server announces, asked without logging in and without sending; a
    server that cannot be asked now gets Postfix's default, not the transport's 35 MB."""
    server = smtp_server_factory(tls="starttls", users={JD: "right"}, size_limit=20_000)
    assert transport(home, server).size_limit() == 20_000
    assert server.messages == [] and server.auth_attempts == []
    down = transport(home, host="127.0.0.1", port=closed_port, security="none")
    assert down.size_limit() == 10_240_000 < down.max_message_bytes
