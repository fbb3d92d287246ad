"""International addresses outside the envelope: a Reply-To over SMTP, To over the APIs."""

from __future__ import annotations

from pathlib import Path

from cpmail.compose import Mailbox, build_message, to_bytes
from cpmail.transports.api import with_missing_bcc
from cpmail.transports.base import Envelope
from tests.smtpserver import SMTPTestServer
from tests.test_smtp_transport import deliver, transport


def raw_with(reply_to: str, to: str = "ann@agency.test") -> bytes:
    msg = build_message(
        sender=Mailbox("jd@agency.test", "Jane Doe"),
        to=[Mailbox(to, "Ann")],
        reply_to=Mailbox(reply_to, "Jürgen"),
        subject="Job J1030 opened",
        text="Hello",
        event="job-opened",
        key="intl:1",
    )
    return to_bytes(msg)


def test_an_international_reply_to_is_sent_with_smtputf8(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    raw = raw_with("jürgen@bücher.example")
    assert "jürgen@bücher.example".encode() in raw  # as written, not an encoded-word
    env = Envelope(1, "", "jd@agency.test", ("ann@agency.test",), raw)
    [outcome] = deliver(transport(home, smtp_server), [env])
    assert outcome.accepted == ("ann@agency.test",)
    [got] = smtp_server.messages
    assert "SMTPUTF8" in got.mail_options
    assert got.rcpt_tos == ("ann@agency.test",)


def test_an_api_message_to_an_international_address_gets_no_extra_bcc() -> None:
    raw = raw_with("kate@agency.test", to="üser@agency.test")
    assert with_missing_bcc(raw, ("üser@agency.test",)) == raw
    added = with_missing_bcc(raw, ("üser@agency.test", "other@agency.test"))
    assert added.startswith(b"Bcc: other@agency.test\r\n") and added.endswith(raw)
