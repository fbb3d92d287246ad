"""PIPELINING (RFC 2920): a message's MAIL, RCPT and DATA in one write, against real servers.

Real Postfix checks the order and the answers of pipelined commands as it
does in production; the aiosmtpd test server shows what was written together.
"""

from __future__ import annotations

from pathlib import Path

from cpmail.errors import PermanentFailure, TemporaryFailure
from cpmail.transports.base import Envelope, Outcome
from cpmail.transports.smtp import SMTPTransport
from tests.postfix import Postfix, postfix
from tests.smtpserver import SMTPTestServer, smtp_ca, smtp_server, smtp_server_factory
from tests.test_smtp_transport import deliver, envelope, message, transport

__all__ = ["postfix", "smtp_ca", "smtp_server", "smtp_server_factory"]  # fixtures

ANN, BOB = "ann@agency.test", "bob@agency.test"


def together(reads: list[bytes]) -> list[bytes]:
    """The reads that carried a MAIL FROM together with DATA: pipelined transactions."""
    return [r for r in reads if b"MAIL FROM:" in r and b"DATA\r\n" in r]


def test_the_commands_of_a_message_go_out_in_one_write_when_pipelining_is_offered(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    envelopes = [envelope(n, to=(ANN, BOB)) for n in range(1, 4)]

    outcomes = deliver(transport(home, smtp_server, connections=1), envelopes)

    assert outcomes == [Outcome(n, accepted=(ANN, BOB)) for n in range(1, 4)]
    assert [m.data for m in smtp_server.messages] == [e.raw for e in envelopes]
    sent = together(smtp_server.reads)
    assert len(sent) == 3
    assert all(r.count(b"RCPT TO:") == 2 for r in sent)


def test_without_pipelining_each_command_waits_for_its_answer(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.offer_pipelining = False
    envelopes = [envelope(n, to=(ANN, BOB)) for n in range(1, 4)]

    outcomes = deliver(transport(home, smtp_server, connections=1), envelopes)

    assert outcomes == [Outcome(n, accepted=(ANN, BOB)) for n in range(1, 4)]
    assert together(smtp_server.reads) == []
    assert not [r for r in smtp_server.reads if b"MAIL FROM:" in r and b"RCPT TO:" in r]


def test_each_text_carries_the_next_messages_commands_but_never_its_text(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    """RFC 2920 3.1: a message's content may start a group. The next message's text
    still waits until the last outcome is on record: when an outcome is reported, the
    server has that message and no more."""
    envelopes = [envelope(n, to=(ANN,)) for n in range(1, 6)]
    held: list[int] = []  # messages the server had as each outcome was reported

    def report(outcome: Outcome) -> None:
        held.append(len(smtp_server.messages))

    transport(home, smtp_server, connections=1).deliver(envelopes, report)

    assert held == [1, 2, 3, 4, 5]
    assert [m.data for m in smtp_server.messages] == [e.raw for e in envelopes]
    carried = [r for r in smtp_server.reads if b"\r\n.\r\nMAIL FROM:<" in r]
    assert len(carried) == 4
    assert all(r.count(b"\r\n.\r\n") == 1 and r.endswith(b"DATA\r\n") for r in carried)


def test_a_message_of_several_recipients_takes_no_commands_along(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    """Recipients over the server's limit get the text in a further transaction on the
    same connection: nothing else may be under way there."""
    envelopes = [envelope(1, to=(ANN, BOB)), envelope(2, to=(ANN,)), envelope(3, to=(BOB,))]

    outcomes = deliver(transport(home, smtp_server, connections=1), envelopes)

    assert [o.accepted for o in outcomes] == [(ANN, BOB), (ANN,), (BOB,)]
    carried = [r for r in smtp_server.reads if b"\r\n.\r\nMAIL FROM:<" in r]
    assert len(carried) == 1  # message 2's text, with message 3's commands


def test_a_server_that_reads_no_command_after_a_text_gets_each_transaction_on_its_own(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    """The commands that went with a text go unanswered: that message goes again on a
    new connection, once, and no further text takes commands along."""
    smtp_server.ignore_after_data = True
    envelopes = [envelope(n, to=(ANN,)) for n in range(1, 5)]

    outcomes = deliver(transport(home, smtp_server, connections=1, timeout=1), envelopes)

    assert sorted(o.id for o in outcomes if o.accepted == (ANN,)) == [1, 2, 3, 4]
    assert [m.data for m in smtp_server.messages] == [e.raw for e in envelopes]
    carried = [r for r in smtp_server.reads if b"\r\n.\r\nMAIL FROM:<" in r]
    assert len(carried) == 1  # message 1's text, with message 2's unread commands
    assert len({m.connection for m in smtp_server.messages}) == 2


# ---- real Postfix


def through(home: Path, postfix: Postfix, connections: int) -> SMTPTransport:
    return transport(
        home, host=postfix.host, port=postfix.port, security="none", connections=connections
    )


def arrived(server: SMTPTestServer, n: int) -> list[bytes]:
    """What reached the server behind Postfix of message ``n``."""
    mark = f"Message-ID: <job-opened.{n}@cpmail.test>".encode()
    return [m.data for m in server.messages if mark in m.data]


def same(received: bytes, sent: bytes) -> bool:
    """The same message, give or take what Postfix adds (its Received line, a missing Date)."""
    head, body = received.split(b"\r\n\r\n", 1)
    sent_head, sent_body = sent.split(b"\r\n\r\n", 1)
    return body == sent_body and sent_head in head


def test_postfix_takes_pipelined_transactions_and_every_answer_lands_on_its_message(
    home: Path, postfix: Postfix
) -> None:
    def subject(n: int, text: str) -> Envelope:
        raw = message(n).replace(f"Subject: [C&P] Job {n} opened".encode(), text.encode())
        return Envelope(n, "", "jd@agency.test", (ANN,), raw)

    envelopes = [
        envelope(1, to=(ANN, BOB)),
        envelope(2, to=(ANN, "refused@agency.test", "later@agency.test")),
        envelope(3, sender="blocked@agency.test"),
        envelope(4, to=("refused@agency.test",)),  # no recipient left: DATA is refused
        subject(5, "Subject: Refuse me, please"),  # refused at the end of DATA
        envelope(6, to=(BOB,)),
    ]
    before = len(postfix.target.messages)

    outcomes = {o.id: o for o in deliver(through(home, postfix, connections=1), envelopes)}

    assert outcomes[1] == Outcome(1, accepted=(ANN, BOB))
    assert outcomes[2].accepted == (ANN,)
    assert "554 5.7.1" in outcomes[2].refused["refused@agency.test"]
    assert "450 4.7.1" in outcomes[2].deferred["later@agency.test"]
    assert isinstance(outcomes[3].error, TemporaryFailure)
    assert "refused the sender: 450 4.7.1" in str(outcomes[3].error)
    assert outcomes[4].accepted == () and outcomes[4].error is None
    assert "554 5.7.1" in outcomes[4].refused["refused@agency.test"]
    assert isinstance(outcomes[5].error, PermanentFailure)
    assert "refused the message: 550 5.7.1 this looks like spam" in str(outcomes[5].error)
    assert outcomes[6] == Outcome(6, accepted=(BOB,))

    postfix.wait_for(before + 3)
    for n in (1, 2, 6):
        [received] = arrived(postfix.target, n)
        assert same(received, envelopes[n - 1].raw)
    assert arrived(postfix.target, 3) == arrived(postfix.target, 4) == []
    assert arrived(postfix.target, 5) == []


def test_postfix_gets_many_messages_over_several_pipelined_connections_each_once(
    home: Path, postfix: Postfix
) -> None:
    envelopes = [envelope(n, to=(ANN,)) for n in range(100, 400)]
    before = len(postfix.target.messages)

    outcomes = deliver(through(home, postfix, connections=3), envelopes)

    assert sorted(o.id for o in outcomes if o.accepted == (ANN,)) == list(range(100, 400))
    postfix.wait_for(before + 300)
    for n in (100, 250, 399):
        [received] = arrived(postfix.target, n)
        assert same(received, envelopes[n - 100].raw)
    ids = [m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in postfix.target.messages]
    assert len(ids) == len(set(ids))
    assert "improper command pipelining" not in postfix.log()
    assert "protocol synchronization" not in postfix.log()
