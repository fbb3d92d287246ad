"""A text with the next message's commands (RFC 2920 3.1), under faults: every message once.

Each test delivers through a real test server with a recorder shaped like the
outbox's (outcomes taken now, written later, a message ``settled`` once
written) and checks the same things:

- no message reaches a recipient twice, and none is reported twice;
- every message the server has is reported accepted or "may have arrived";
- a message reported otherwise (refused, deferred) never reached the server;
- the server never holds more accepted, unrecorded messages than there are
  connections (what a hard kill could send twice).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpmail import interrupt
from cpmail.errors import AuthError
from cpmail.transports.base import Envelope, Outcome
from tests import smtpserver
from tests.smtpserver import SMTPTestServer, smtp_ca, smtp_server, smtp_server_factory
from tests.test_smtp_transport import envelope, transport

__all__ = ["smtp_ca", "smtp_server", "smtp_server_factory"]  # fixtures

ANN, BOB, CAT = "ann@agency.test", "bob@agency.test", "cat@agency.test"


class Recorder:
    """Like the outbox's recorder: take now, write later, settled once written."""

    def __init__(self, server: SMTPTestServer, connections: int) -> None:
        self.server = server
        self.connections = connections
        self.pending: list[Outcome] = []
        self.written: list[Outcome] = []
        self.keep: set[int] = set()
        self.blocked = False
        self.violations: list[str] = []
        self.on_take: Callable[[Recorder], None] | None = None

    @property
    def outcomes(self) -> list[Outcome]:
        return self.written + self.pending

    def _check(self, where: str) -> None:
        got = {msgid(m.data) for m in list(self.server.messages)}
        unrecorded = got - {o.id for o in self.written}
        if len(unrecorded) > self.connections:
            self.violations.append(f"{where}: the server has unrecorded {sorted(unrecorded)}")

    def __call__(self, outcome: Outcome) -> None:
        self.take(outcome)
        self.write()

    def take(self, outcome: Outcome) -> None:
        self._check("take")
        self.pending.append(outcome)
        if outcome.accepted or outcome.error is None:
            self.keep.add(outcome.id)
        if self.on_take is not None:
            self.on_take(self)

    def settled(self, id_: int) -> bool:
        return id_ not in self.keep

    def write(self) -> None:
        self._check("write")
        batch, self.pending = self.pending, []
        self.written.extend(batch)
        for o in batch:
            self.keep.discard(o.id)


def msgid(data: bytes) -> int:
    return int(data.split(b"Message-ID: <job-opened.")[1].split(b"@")[0])


def run(
    home: Path,
    server: SMTPTestServer,
    envs: list[Envelope],
    *,
    connections: int = 3,
    timeout: float = 1,
    rec: Recorder | None = None,
) -> Recorder:
    """Deliver in a thread of its own, so that a run that hangs fails the test."""
    rec = rec or Recorder(server, connections)
    t = transport(home, server, connections=connections, timeout=timeout)
    done = threading.Event()
    error: list[BaseException] = []

    def go() -> None:
        try:
            t.deliver(envs, rec)
        except BaseException as e:
            error.append(e)
        finally:
            done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(60), "the delivery hung"
    if error:
        raise error[0]
    return rec


def check(
    rec: Recorder, server: SMTPTestServer, envs: list[Envelope], *, all_reported: bool = True
) -> None:
    ids = Counter(o.id for o in rec.outcomes)
    assert [i for i, c in ids.items() if c > 1] == [], "reported twice"
    pairs = Counter((msgid(m.data), r) for m in server.messages for r in m.rcpt_tos)
    assert sorted({i for (i, _), c in pairs.items() if c > 1}) == [], "sent twice"
    by_id = {o.id: o for o in rec.outcomes}
    got = {msgid(m.data) for m in server.messages}
    for i in got:
        o = by_id.get(i)
        assert o is not None, f"the server has {i}, never reported"
        assert o.accepted or o.maybe_sent, f"the server has {i}, reported {o}"
    raws = {e.raw for e in envs}
    assert all(m.data in raws for m in server.messages), "a message with other content"
    if all_reported:
        assert set(ids) == {e.id for e in envs}
    assert rec.violations == []


def singles(n: int) -> list[Envelope]:
    return [envelope(i, to=(ANN,)) for i in range(1, n + 1)]


def each_once(home: Path, server: SMTPTestServer, n: int, connections: int = 1) -> Recorder:
    """Deliver ``n`` messages of one recipient each, and ``check`` what became of them."""
    envs = singles(n)
    rec = run(home, server, envs, connections=connections)
    check(rec, server, envs)
    return rec


def nth_mail(monkeypatch: pytest.MonkeyPatch, answer: Callable[[int], str | None]) -> None:
    """Answer the server's n-th MAIL FROM (counting from 1) with ``answer(n)``, if any."""
    original = smtpserver._Handler.handle_MAIL
    seen = [0]

    async def handle_MAIL(self: Any, *args: Any) -> str:
        seen[0] += 1
        said = answer(seen[0])
        return said if said is not None else await original(self, *args)

    monkeypatch.setattr(smtpserver._Handler, "handle_MAIL", handle_MAIL)


@pytest.mark.parametrize("connections", [1, 3])
def test_every_message_once_with_commands_ahead(
    home: Path, smtp_server: SMTPTestServer, connections: int
) -> None:
    rec = each_once(home, smtp_server, 40, connections)
    assert all(o.accepted == (ANN,) for o in rec.outcomes)


def test_refused_texts_leave_the_commands_ahead_in_step(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.fail_data = ["554 5.7.1 no", "451 4.3.0 later", "550 5.7.1 no"]
    rec = each_once(home, smtp_server, 20, 1)
    assert sum(1 for o in rec.outcomes if o.accepted == (ANN,)) == 17
    # (the text's answer ended its transaction: nothing to reset with commands ahead)
    assert [r for r in smtp_server.reads if r.startswith(b"RSET")] == []


@pytest.mark.parametrize("connections", [1, 3])
def test_a_line_cut_after_a_text_sends_nothing_twice(
    home: Path, smtp_server: SMTPTestServer, connections: int
) -> None:
    smtp_server.drop_during_data = 3
    each_once(home, smtp_server, 20, connections)


def test_a_text_left_unanswered(home: Path, smtp_server: SMTPTestServer) -> None:
    smtp_server.stall_data = 2
    each_once(home, smtp_server, 12, 1)


def test_commands_after_a_text_unread_on_three_connections(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.ignore_after_data = True
    rec = each_once(home, smtp_server, 20, 3)
    assert all(o.accepted == (ANN,) for o in rec.outcomes)


def test_a_server_that_reads_only_the_mail_after_a_text(
    home: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It answers the MAIL that came with a text but drops RCPT and DATA: the message
    goes again on a new line, and no further text takes commands along."""
    original = smtpserver._Session.data_received

    def data_received(self: Any, data: bytes) -> None:
        end = data.find(b"\r\n.\r\n")
        if end >= 0 and b"MAIL FROM" in data[end:]:
            rest = data[end + 5 :]
            data = data[: end + 5] + rest[: rest.find(b"\r\n") + 2]
        original(self, data)

    monkeypatch.setattr(smtpserver._Session, "data_received", data_received)
    rec = each_once(home, smtp_server, 8, 1)
    assert all(o.accepted == (ANN,) for o in rec.outcomes)


def test_refused_recipients_and_senders_with_commands_ahead(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.fail_rcpt = {BOB: "550 5.1.1 no such user", CAT: "450 4.2.0 later"}
    envs = [envelope(i, to=((ANN,), (BOB,), (CAT,), (ANN, BOB))[i % 4]) for i in range(1, 30)]
    rec = run(home, smtp_server, envs, connections=2)
    check(rec, smtp_server, envs)
    by_id = {o.id: o for o in rec.outcomes}
    assert all("550 5.1.1" in by_id[i].refused[BOB] for i in range(1, 30) if i % 4 == 1)
    assert all("450 4.2.0" in by_id[i].deferred[CAT] for i in range(1, 30) if i % 4 == 2)


def test_recipients_over_the_limit_still_get_their_transaction(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    smtp_server.max_recipients = (1, "452 4.5.3 Error: too many recipients")
    envs = [envelope(i, to=((ANN,), (ANN, BOB, CAT))[i % 2]) for i in range(1, 20)]
    rec = run(home, smtp_server, envs, connections=1)
    check(rec, smtp_server, envs)
    assert all(not o.deferred and o.error is None for o in rec.outcomes)


@pytest.mark.parametrize("extra", [["250 2.0.0 OK"], ["451 4.3.0 oops"]])
def test_an_answer_too_many_after_a_text_is_never_taken_for_another(
    home: Path, smtp_server: SMTPTestServer, extra: list[str]
) -> None:
    """The line too many would pass for the next message's MAIL answer, every answer
    after it one off: that message goes again on a new line instead."""
    smtp_server.extra_answers = extra
    rec = each_once(home, smtp_server, 6, 1)
    assert all(o.accepted == (ANN,) for o in rec.outcomes)
    assert [r for r in smtp_server.reads if r.startswith(b"RSET")] == []


def test_an_answer_too_many_and_a_slow_354_refuse_no_one_wrongly(
    home: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message 2's commands went with message 1's text; the line too many after that text
    would be read as 2's MAIL answer and bob's 550 as the answer to DATA, before the 354
    that shows answers out of step had come."""
    original = smtpserver._Session.smtp_DATA

    async def smtp_DATA(self: Any, arg: str) -> None:
        if self.envelope.rcpt_tos:
            await asyncio.sleep(0.05)
        await original(self, arg)

    monkeypatch.setattr(smtpserver._Session, "smtp_DATA", smtp_DATA)
    smtp_server.extra_answers = ["250 2.0.0 OK again"]
    smtp_server.fail_rcpt = {BOB: "550 5.1.1 No such user"}
    envs = [envelope(1), envelope(2, to=(ANN, BOB)), envelope(3)]
    outcomes: list[Outcome] = []
    transport(home, smtp_server, connections=1).deliver(envs, outcomes.append)
    by_id = {o.id: o for o in outcomes}
    assert by_id[2] == Outcome(2, accepted=(ANN,), refused={BOB: "550 5.1.1 No such user"})
    assert by_id[1].accepted and by_id[3].accepted


def test_the_run_blocked_gives_back_the_message_announced(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    envs = singles(20)
    rec = Recorder(smtp_server, 2)

    def on_take(r: Recorder) -> None:
        if len(r.outcomes) == 5:
            r.blocked = True

    rec.on_take = on_take
    run(home, smtp_server, envs, connections=2, rec=rec)
    check(rec, smtp_server, envs, all_reported=False)
    assert len(smtp_server.messages) <= 7  # (each connection's text in hand went)


def test_a_stop_gives_back_the_message_announced(
    home: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    envs = singles(20)
    rec = Recorder(smtp_server, 2)

    def on_take(r: Recorder) -> None:
        if len(r.outcomes) == 5:
            monkeypatch.setattr(interrupt, "_requested", 15)

    rec.on_take = on_take
    run(home, smtp_server, envs, connections=2, rec=rec)
    check(rec, smtp_server, envs, all_reported=False)
    assert len(rec.outcomes) < 20


def test_a_new_line_waits_for_the_record_of_the_last_message_accepted(
    home: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message 1 is accepted; message 2's MAIL, sent with 1's text, meets 421, so 2 goes
    on a new connection. Its text waits until 1 is on record, as on the old line."""
    nth_mail(monkeypatch, lambda n: "421 4.7.0 go away" if n == 2 else None)
    each_once(home, smtp_server, 4, 1)


def test_an_account_refused_at_the_mail_sent_ahead(
    home: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    nth_mail(monkeypatch, lambda n: "530 5.7.0 Authentication required" if n >= 2 else None)
    envs = singles(4)
    rec = Recorder(smtp_server, 1)
    with pytest.raises(AuthError):
        transport(home, smtp_server, connections=1).deliver(envs, rec)
    check(rec, smtp_server, envs, all_reported=False)
    assert [o.id for o in rec.outcomes] == [1]


def test_throttled_at_the_mail_sent_ahead(
    home: Path, smtp_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    throttled = "452 4.3.2 Submission quota exceeded. STOREDRV.ClientSubmit"
    nth_mail(monkeypatch, lambda n: throttled if n == 3 else None)
    each_once(home, smtp_server, 8, 1)


def test_paced_after_an_answer_lets_the_message_announced_wait(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    """The account becomes paced (and its next slot never comes) after the 3rd outcome:
    the message whose commands went ahead is not sent, goes back, is not reported."""
    envs = singles(10)
    rec = Recorder(smtp_server, 2)
    paced = [False]
    rec.pacing = lambda: paced[0]  # type: ignore[attr-defined]
    rec.admit = lambda: False  # type: ignore[attr-defined]

    def on_take(r: Recorder) -> None:
        if len(r.outcomes) == 3:
            paced[0] = True

    rec.on_take = on_take
    run(home, smtp_server, envs, connections=2, rec=rec)
    check(rec, smtp_server, envs, all_reported=False)
    assert len(rec.outcomes) < 10


@pytest.mark.parametrize("connections", [1, 3])
def test_without_pipelining_nothing_goes_ahead(
    home: Path, smtp_server: SMTPTestServer, connections: int
) -> None:
    smtp_server.offer_pipelining = False
    smtp_server.fail_data = ["554 5.7.1 no"]
    each_once(home, smtp_server, 15, connections)
    assert [r for r in smtp_server.reads if b"\r\n.\r\nMAIL FROM:<" in r] == []


def test_a_stop_that_waited_for_a_write_made_by_the_timer_ends_the_run(
    home: Path, smtp_server: SMTPTestServer
) -> None:
    """A second signal held back while answers were awaited takes effect once the write
    that records them is over, here one the 2 ms timer made (as ``interrupt.shielded``
    raises on leaving): the run ends there, it is not lost in the event loop."""

    class TimedWrites:
        def __init__(self) -> None:
            self.pending: list[Outcome] = []
            self.written: list[Outcome] = []
            self.stopped = False

        def take(self, outcome: Outcome) -> None:
            self.pending.append(outcome)

        def settled(self, id_: int) -> bool:
            return True  # never waited for: every write is the timer's (or the last one)

        def write(self) -> None:
            batch, self.pending = self.pending, []
            self.written.extend(batch)
            if batch and not self.stopped:
                self.stopped = True
                raise interrupt.Stopped(15)

        def __call__(self, outcome: Outcome) -> None:  # pragma: no cover - take/write used
            self.take(outcome)
            self.write()

    rec = TimedWrites()
    smtp_server.accept_delay = 0.01  # (the timer fires between two messages)
    with pytest.raises(interrupt.Stopped):
        transport(home, smtp_server, connections=1).deliver(singles(20), rec)
    assert len(smtp_server.messages) < 20
    assert {o.id for o in rec.written + rec.pending} == {
        msgid(m.data) for m in smtp_server.messages
    }


_LINE = st.sampled_from(
    [b"", b".", b"..", b"...", b". ", b".x", b"x.", b"hello", b"\xc3\xa9t\xc3\xa9", b" ."]
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(bodies=st.lists(st.lists(_LINE, max_size=8), min_size=1, max_size=4))
def test_every_text_arrives_byte_for_byte_with_commands_ahead(
    home: Path, smtp_server: SMTPTestServer, bodies: list[list[bytes]]
) -> None:
    """Generated texts of dotted lines (a lone dot, leading dots, a text that ends in one),
    several to a connection so that each takes the next one's commands along: the
    server reads each exactly as it was written, nothing more and nothing less."""
    smtp_server.reset()
    envs = []
    for n, lines in enumerate(bodies, start=1):
        head = f"From: {ANN}\r\nTo: {BOB}\r\nMessage-ID: <job-opened.{n}@cpmail.test>\r\n\r\n"
        raw = head.encode() + b"".join(line + b"\r\n" for line in lines)
        envs.append(Envelope(n, "", ANN, (BOB,), raw))
    rec = run(home, smtp_server, envs, connections=1)
    check(rec, smtp_server, envs)
    assert [m.data for m in smtp_server.messages] == [e.raw for e in envs]
