"""The mail transactions of one SMTP connection, once aiosmtplib has opened it.

aiosmtplib connects, greets, upgrades to TLS and logs in; then the connection's
transport is handed to a ``Wire`` (asyncio's ``set_protocol``), which speaks
MAIL, RCPT, DATA, RSET and QUIT. It reads answers in order however they
arrive, so when the server offers PIPELINING (RFC 2920) a message's MAIL, RCPT
and DATA commands go out in one write and their answers are read back
together: one round trip instead of three. aiosmtplib's own reader expects one
answer per command written and drops the rest, so it cannot do this.

Failures use aiosmtplib's exceptions, so the connection reports them in one
way whichever layer met them: ``SMTPServerDisconnected`` when the line is
gone, ``SMTPReadTimeoutError`` when an answer did not come in time (the
connection is closed then: a late answer would be paired with the wrong
command), ``SMTPResponseException`` for an answer that is not SMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import NamedTuple

from aiosmtplib import SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected

# An answer line longer than this, or a buffer this full without a line end, is
# not an SMTP server talking (RFC 5321 allows 512 octets a reply line).
_MAX_LINE = 8192


class Answer(NamedTuple):
    """One reply: its code and its text (the lines of a multi-line reply joined by "\\n")."""

    code: int
    message: str


class Wire(asyncio.Protocol):
    """Commands out, answers in, in order; the connection's only reader once it has it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the lines so far of a multi-line reply
        self._answers: deque[Answer] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failure: Exception | None = None
        self._wanted = 1  # answers the waiter waits for
        self._timeout = 0.0  # seconds each answer may take, from the one before it
        self._heard = 0.0  # (loop time) when the last answer came, or the wait began
        # Looks at the wait in hand when it fires, and is set again while one lasts: a
        # connection keeps one timer however many answers it waits for (a timer set
        # and cancelled for each wait cost as much as reading the answers).
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def take(cls, transport: asyncio.BaseTransport) -> Wire:
        """Become the protocol of ``transport``, which must be between commands."""
        wire = cls(transport)  # type: ignore[arg-type]
        transport.set_protocol(wire)
        return wire

    # ---- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.rfind(b"\n")
        if end < 0:
            if len(buffer) > _MAX_LINE:
                self._fail(SMTPResponseException(-1, "Response too long"))
            return
        whole = bytes(buffer[: end + 1])  # the lines that came whole, read together
        del buffer[: end + 1]
        answered = False
        for line in whole.split(b"\n")[:-1]:
            if len(line) >= _MAX_LINE or not line[:3].isdigit():
                text = line.decode("utf-8", "replace").strip()
                self._fail(SMTPResponseException(-1, f"Malformed SMTP response line: {text}"))
                return
            if line[3:4] == b"-":
                self._lines.append(line)
                continue
            said = line[4:].strip(b" \t\r")
            if self._lines:
                lines, self._lines = self._lines, []
                said = b"\n".join([*(x[4:].strip(b" \t\r") for x in lines), said])
            self._answers.append(Answer(int(line[:3]), said.decode("utf-8", "surrogateescape")))
            answered = True
        if len(buffer) > _MAX_LINE:
            self._fail(SMTPResponseException(-1, "Response too long"))
        if answered:
            self._heard = self._loop.time()
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        error = SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)

    # ---- use

    @property
    def open(self) -> bool:
        return self._failure is None and not self.transport.is_closing()

    @property
    def unread(self) -> bool:
        """Something came that no command has read: an answer, or part of one."""
        return bool(self._answers or self._lines or self._buffer)

    def codes(self, count: int) -> list[int]:
        """The codes of the first ``count`` answers not read yet (fewer if fewer came)."""
        return [a.code for a in list(self._answers)[:count]]

    def write(self, data: bytes) -> None:
        if not self.open:
            raise self._failure or SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def answer(self, timeout: float) -> Answer:
        """The next answer; raise if the line is gone or it did not come within ``timeout``."""
        await self.ready(1, timeout)
        if self._answers:
            return self._answers.popleft()
        raise self._failure or SMTPServerDisconnected("Connection lost")

    async def ready(self, count: int, timeout: float) -> None:
        """Wait until ``count`` answers are in, the line fails, or an answer is late.

        For pipelined commands: their answers are read back together, however
        they arrive. Each answer has ``timeout`` from the one before it, as it
        would with one command at a time: a server that takes its time over
        every recipient still answers in time. Raises nothing: ``answer`` then
        hands out what came and raises at the first that did not (a timeout
        closes the line).
        """
        if len(self._answers) >= count or self._failure is not None:
            return
        # One wait for them all; each answer that comes moves the deadline on (the timer,
        # when it fires, waits on for what is left of ``timeout`` since the last answer).
        self._wanted = count
        self._timeout = timeout
        self._heard = now = self._loop.time()
        waiter = self._waiter = self._loop.create_future()
        timer = self._timer
        if timer is not None and timer.when() > now + timeout:  # (set for a longer wait)
            timer.cancel()
            timer = None
        if timer is None:
            self._timer = self._loop.call_later(timeout, self._expire)
        try:
            await waiter
        finally:
            self._waiter = None
            self._wanted = 1

    async def command(self, line: bytes, timeout: float) -> Answer:
        self.write(line)
        return await self.answer(timeout)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.transport.is_closing():
            self.transport.close()
        if self._failure is None:
            self._failure = SMTPServerDisconnected("Connection closed")

    async def quit(self, timeout: float) -> None:
        """Say QUIT and close; a server that does not answer is left anyway."""
        if self.open:
            with contextlib.suppress(SMTPResponseException, SMTPServerDisconnected, OSError):
                await self.command(b"QUIT\r\n", timeout)
        self.close()

    # ---- inside

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nothing is awaited: the next wait sets the timer again
        left = self._heard + self._timeout - self._loop.time()
        if left > 0:  # the wait began, or an answer came, since the timer was set
            self._timer = self._loop.call_later(left, self._expire)
            return
        # A late answer would be taken for the next command's: end the line.
        self._failure = SMTPReadTimeoutError("Timed out waiting for server response")
        self.transport.close()
        waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._failure is None:
            self._failure = error
        if isinstance(error, SMTPResponseException) and not self.transport.is_closing():
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        enough = len(self._answers) >= self._wanted or self._failure is not None
        if waiter is not None and not waiter.done() and enough:
            waiter.set_result(None)
