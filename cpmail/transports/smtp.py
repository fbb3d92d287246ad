"""Send mail through an SMTP server with aiosmtplib: a few connections, many messages each.

Settings (``[mail.smtp]``): ``host``, ``port``, ``security`` (``starttls``,
``ssl`` or ``none``), ``timeout``, ``verify``, ``connections`` and ``ca_file``.

An envelope's ``account`` selects the passcode (``passcode.<account>`` in the
secrets store). With a passcode the connection logs in as the envelope's
sender (``mail_from``); without one, mail is sent without AUTH, as to a relay
that accepts the agency's machines. Messages that log in the same way share
connections; at most ``connections`` are open at once.

What the server says becomes an ``Outcome`` per message (temporary or
permanent, per recipient where the server answered per recipient). A server
that cannot be reached at all raises ``Unreachable``; a refused login raises
``AuthError``. Both stop the run; messages not yet reported stay in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import aiosmtplib

from cpmail import interrupt
from cpmail.errors import (
    RESENT,
    AuthError,
    ConfigError,
    CpmailError,
    NoAnswer,
    PermanentFailure,
    TemporaryFailure,
    Unreachable,
)
from cpmail.scrub import Scrubber, login_scrubber
from cpmail.secrets import Secret, passcode_name
from cpmail.sizes import size_pair
from cpmail.transports.base import UPLOAD_BYTES_PER_SECOND, Envelope, Outcome, Report, Transport
from cpmail.transports.smtp_wire import Answer, Wire
from cpmail.transports.smtp_words import (
    Login,
    account_flag,
    account_refusal,
    auth_failure_message,
    failure,
    provider_of,
    refused_account,
    timed_out,
    unreachable,
    who,
    words_of,
)

if TYPE_CHECKING:
    from cpmail.settings import Settings

log = logging.getLogger(__name__)

Security = Literal["starttls", "ssl", "none"]

_MESSAGES_PER_EXTRA_CONNECTION = 4
# What a digest is composed to fit when the server cannot be asked for its SIZE: Postfix's
# default message_size_limit, below what Exchange Online and Gmail take.
_UNASKED_SIZE = 10_240_000
# Outcomes are written at the latest this long after they come (seconds), together
# with any that come meanwhile; sooner when a connection needs one on record.
_WRITE_WITHIN = 0.002
# Consecutive messages without an answer in time after which the server counts as
# stalled: the run ends and the rest stay queued, instead of each waiting its timeout.
_STALLED_AFTER = 3


@dataclass(frozen=True)
class SMTPConfig:
    """The ``[mail.smtp]`` settings, checked."""

    host: str
    port: int
    security: Security
    timeout: float
    verify: bool
    connections: int
    ca_file: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SMTPConfig:
        """Read and check ``mail.smtp.*``; raise ConfigError naming the key to fix."""
        host = settings["mail.smtp.host"].strip()
        if not host:
            raise ConfigError(
                "mail.smtp.host is not set; run `cpmail config smtp --host HOST --port PORT "
                "--security starttls|ssl|none`."
            )
        security = settings["mail.smtp.security"]
        if security not in ("starttls", "ssl", "none"):  # pragma: no cover - settings checks it
            raise ConfigError(f"mail.smtp.security: unknown mode {security!r}.")
        ca_file = settings["mail.smtp.ca_file"].strip()
        if ca_file:
            path = Path(ca_file).expanduser()
            if not path.is_absolute():
                path = settings.home / path
            if not path.is_file():
                raise ConfigError(
                    f"mail.smtp.ca_file: {path} does not exist; give the PEM file of the "
                    "CA that signed the server's certificate, or '' for the system's CAs."
                )
            ca_file = str(path)
        return cls(
            host=host,
            port=settings["mail.smtp.port"],
            security=cast(Security, security),
            timeout=settings["mail.smtp.timeout"],
            verify=settings["mail.smtp.verify"],
            connections=settings["mail.smtp.connections"],
            ca_file=ca_file,
        )

    @functools.cached_property
    def address(self) -> str:
        """``host:port`` as a person would type it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        """Return the client TLS context, or None when the connection stays in plain text."""
        if self.security == "none":
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"mail.smtp.ca_file: {self.ca_file} is not a PEM file of certificates ({e})."
            ) from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


# ---- one connection


class _Resend(Exception):
    """The connection is gone before any of the message was sent: send it on a new one."""

    def __init__(self, words: str) -> None:
        super().__init__(words)
        self.words = words


@dataclass
class _Group:
    """Envelopes that log in the same way (or not at all), so may share a connection."""

    login: Login | None
    pending: deque[Envelope] = field(default_factory=deque)
    workers: int = 0
    proven: bool = False
    delivered: bool = False  # the server accepted a message of this group
    # Each text goes with the next message's MAIL, RCPT and DATA (``_Connection.ahead``),
    # until those are answered once otherwise than "go on", or not at all.
    lookahead: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Connection:
    """One SMTP session: open (greeting, TLS, login), send messages, quit."""

    def __init__(
        self,
        cfg: SMTPConfig,
        tls: ssl.SSLContext | None,
        group: _Group,
        local_hostname: str,
    ) -> None:
        self.cfg = cfg
        self.tls = tls
        self.group = group
        self.local_hostname = local_hostname
        login = group.login
        self.scrub = login_scrubber(login.user, login.passcode.reveal()) if login else Scrubber(())
        self.smtp: aiosmtplib.SMTP | None = None  # opened the connection: greeting, TLS, login
        self.wire: Wire | None = None  # carries the mail transactions once it is open
        self.extensions: frozenset[str] = frozenset()
        self.pipelining = False
        self.size_limit = 0
        self.previous: int | None = None  # the last message this connection delivered
        self.settle: Callable[[int], Awaitable[None]] | None = None
        self.blocked: Callable[[], bool] = lambda: False
        # The next message this connection may send, taken from its group (None: none now).
        self.next_for: Callable[[], Envelope | None] = lambda: None
        # A message whose MAIL, RCPT and DATA went with the last text, and what they were:
        # the connection sends it next, or gives it back (``unprime``).
        self.ahead: tuple[Envelope, tuple[str, str, bytes]] | None = None

    @property
    def connected(self) -> bool:
        return self.wire is not None and self.wire.open

    async def open(self) -> None:
        """Connect, say hello, upgrade to TLS, log in; raise Unreachable or AuthError."""
        cfg = self.cfg
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            local_hostname=self.local_hostname,
            timeout=cfg.timeout,
            use_tls=cfg.security == "ssl",
            # STARTTLS is done by hand below: aiosmtplib's start_tls=True would
            # fail with a generic error, and we must say it was not offered.
            start_tls=False,
            tls_context=self.tls,
        )
        # (with ssl, the TLS handshake is part of connecting, before the greeting)
        stage = "the TLS handshake or the greeting" if cfg.security == "ssl" else "the greeting"
        try:
            await smtp.connect()
            stage = "EHLO"
            await self._hello(smtp)
            if cfg.security == "starttls":
                if not smtp.supports_extension("starttls"):
                    raise Unreachable(
                        f"the SMTP server {cfg.address} did not offer STARTTLS, so nothing "
                        "was sent in plain text; if it expects TLS from the start (usually "
                        "port 465) run `cpmail config set mail.smtp.security ssl`, otherwise "
                        "ask its administrator to enable STARTTLS."
                    )
                stage = "STARTTLS"
                await smtp.starttls()
                stage = "EHLO"
                await self._hello(smtp)
            if self.group.login is not None:
                stage = "the login"
                await self._login(smtp, self.group.login)
            if smtp.transport is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        except BaseException as e:
            smtp.close()
            if isinstance(e, CpmailError) or not isinstance(e, Exception):
                raise
            raise self._unreachable(e, stage) from None
        self.smtp = smtp
        self.wire = Wire.take(smtp.transport)
        self.extensions = frozenset(smtp.esmtp_extensions)
        self.pipelining = "pipelining" in self.extensions
        size = smtp.esmtp_extensions.get("size", "").strip()
        self.size_limit = int(size) if size.isdigit() else 0

    async def _hello(self, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.is_ehlo_or_helo_needed:
            return
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            # A server from before ESMTP: it will not offer STARTTLS or AUTH,
            # which the checks that follow report clearly.
            if not smtp.is_connected:
                raise
            await smtp.helo()

    async def _login(self, smtp: aiosmtplib.SMTP, login: Login) -> None:
        cfg = self.cfg
        methods = smtp.server_auth_methods
        # Try one mechanism only: every failed attempt counts towards the
        # server's lock-out, so a wrong passcode must cost one attempt, not three.
        method = next((m for m in ("plain", "login", "cram-md5") if m in methods), None)
        if not smtp.supports_extension("auth") or method is None:
            hint = (
                "; many servers offer it only over TLS, so check mail.smtp.security"
                if cfg.security == "none"
                else ""
            )
            raise AuthError(
                f"the SMTP server {cfg.address} does not offer a login (AUTH PLAIN or LOGIN) "
                f"but a passcode is set for {who(login.account)}{hint}; to send without "
                "logging in, forget the passcode with "
                f"`cpmail staff passcode {account_flag(login.account)} --delete`."
            )
        auth = {
            "plain": smtp.auth_plain,
            "login": smtp.auth_login,
            "cram-md5": smtp.auth_crammd5,
        }[method]
        try:
            await auth(login.user, login.passcode.reveal())
        except aiosmtplib.SMTPAuthenticationError as e:
            raise AuthError(
                auth_failure_message(
                    cfg.address,
                    cfg.host,
                    login.account,
                    login.user,
                    e.code,
                    " ".join(self.scrub(e.message).split()),
                )
            ) from None

    def _unreachable(self, e: BaseException, stage: str) -> Unreachable:
        return unreachable(e, stage, self.cfg, self.scrub)

    async def close(self) -> None:
        """Say QUIT if the connection is still there; never raise."""
        wire, self.wire = self.wire, None
        smtp, self.smtp = self.smtp, None
        if wire is not None:
            # The messages are already sent; a rude goodbye does no harm.
            with contextlib.suppress(Exception):
                await wire.quit(min(self.cfg.timeout, 5.0))
        if smtp is not None:
            smtp.close()

    async def send(self, env: Envelope) -> Outcome:
        """Run one mail transaction; raise _Resend when nothing was sent and the line is gone.

        Recipients over the server's limit for one transaction ("452 4.5.3 too
        many recipients") get the message in the next transactions, on this
        connection, as RFC 5321 4.5.3.1.10 says; the outcome covers them all.
        """
        outcome = await self._send_once(env)
        taken = outcome.accepted
        while taken and outcome.error is None and outcome.deferred:
            rest = tuple(r for r, words in outcome.deferred.items() if _too_many(words))
            stopping = interrupt.requested() is not None or self.blocked()
            # (with the next message's commands in, the rest wait too)
            if not rest or stopping or not self.connected or self.ahead is not None:
                break  # the rest wait in the outbox, deferred, as any deferred recipient
            try:
                more = await self._send_once(replace(env, rcpt_to=rest), prime=False)
            except (_Resend, AuthError) as e:
                # Some have the message already: the others wait, never all again.
                more = Outcome(env.id, error=TemporaryFailure(str(e)))
            outcome = _joined(outcome, rest, more)
            taken = more.accepted
        return outcome

    async def _send_once(self, env: Envelope, *, prime: bool = True) -> Outcome:
        try:
            return await self._transact(env, prime)
        except UnicodeEncodeError as e:
            # Nothing was written: the commands are encoded before they go.
            return Outcome(
                env.id, error=PermanentFailure(f"cannot send this message: {e}."), local=True
            )
        except (aiosmtplib.SMTPException, OSError) as e:
            # An answer that makes no sense leaves the session in an unknown
            # state: give it up; the next message opens a fresh connection.
            self._hang_up()
            detail = " ".join(self.scrub(str(getattr(e, "message", e))).split())
            return Outcome(
                env.id,
                error=TemporaryFailure(
                    f"the SMTP server {self.cfg.address} broke off the message "
                    f"({detail or type(e).__name__}){RESENT}."
                ),
            )

    async def _transact(self, env: Envelope, prime: bool = True) -> Outcome:
        """One mail transaction: the checks, MAIL, RCPT, then DATA; an Outcome at any step.

        Under PIPELINING the MAIL, RCPT and DATA commands go out in one write
        and their answers are read in order; otherwise each waits for the
        answer to the one before. A message's commands may have gone already,
        with the text of the one before (``ahead``); with ``prime`` this
        message's text takes the next one's commands along.
        """
        ahead, self.ahead = self.ahead, None
        wire = self.wire
        assert wire is not None
        if ahead is not None:
            assert ahead[0] is env  # (the worker sends next what was announced)
            options, encoding, body = ahead[1]
            rcpts = _rcpt_commands(env, encoding)
            await wire.ready(len(rcpts) + 2, self.cfg.timeout)
            if not _as_expected(wire.codes(len(rcpts) + 2), len(rcpts)):
                # Commands sent ahead, answered otherwise than "go on" (or not at all):
                # an answer out of step (one too many after the text) would be taken
                # for another, and a refusal cannot be told from it. Nothing of this
                # message went: it goes again on a new line, on its own, and the
                # group's texts take no commands along from now on.
                self.group.lookahead = False
                self._hang_up()
                raise _Resend(
                    f"the SMTP server {self.cfg.address} answered the commands sent with "
                    "the last text otherwise than expected"
                )
        else:
            checked = self._options(env)
            if isinstance(checked, Outcome):
                return checked
            options, encoding, body = checked
            if wire.unread:
                # The server said something nobody asked for (a line too many with the
                # last answer): read now, it would pass for this message's answers.
                raise self._lost_step("the last message", 0, "an answer too many")
            mail = _mail_command(env, options, encoding)
            rcpts = _rcpt_commands(env, encoding)
            if self.pipelining:
                wire.write(b"".join((mail, *rcpts, b"DATA\r\n")))
                await wire.ready(len(rcpts) + 2, self.cfg.timeout)
            else:
                wire.write(mail)
        refused_sender = await self._mail(env)
        if refused_sender is not None:
            return refused_sender
        answered = await self._rcpt(env, rcpts)
        if isinstance(answered, Outcome):
            return answered
        return await self._data(env, body, *answered, prime=prime and len(env.rcpt_to) == 1)

    def _prime(self) -> bytes:
        """The next message's MAIL, RCPT and DATA, to go in one write with this text, or b"".

        RFC 2920 3.1 lets a message's content start a group of pipelined commands:
        one write and one read a message instead of two. Only the commands go: the
        next text goes once this message's outcome is on record, as ever.
        """
        if not self.pipelining or not self.group.lookahead:
            return b""
        env = self.next_for()
        if env is None:
            return b""
        checked = self._options(env)
        if not isinstance(checked, Outcome):
            options, encoding, _ = checked
            try:
                mail = _mail_command(env, options, encoding)
                commands = b"".join((mail, *_rcpt_commands(env, encoding), b"DATA\r\n"))
            except UnicodeEncodeError:
                pass
            else:
                self.ahead = (env, checked)
                return commands
        self.group.pending.appendleft(env)  # it goes on its own, and fails there
        return b""

    def unprime(self) -> Envelope | None:
        """Give back the message announced ahead, if any: the server waits for its text,
        which will not come now, so the line is ended without a word (a QUIT would be
        taken for the text)."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return None
        self._hang_up()
        return ahead[0]

    def _options(self, env: Envelope) -> Outcome | tuple[str, str, bytes]:
        """MAIL's options, the encoding of the commands and the body as sent, or why not."""
        where = self.cfg.address
        size, body = _as_sent(env.raw)
        if self.size_limit and size > self.size_limit:
            return Outcome(
                env.id,
                local=True,
                error=PermanentFailure(
                    "the message is {}, larger than the {} the SMTP server {} accepts".format(
                        *size_pair(size, self.size_limit), where
                    )
                ),
            )
        addresses = (env.mail_from, *env.rcpt_to)
        bad = next((a for a in addresses if _unsafe_address(a)), None)
        if bad is not None:
            return Outcome(
                env.id,
                local=True,
                error=PermanentFailure(f"the address {bad!r} cannot be used in SMTP."),
            )
        options = ""
        if "size" in self.extensions:
            options += f" SIZE={size}"
        # UTF-8 in an address or in the headers (an international Reply-To, say:
        # RFC 6532) needs SMTPUTF8; UTF-8 only in the body needs 8BITMIME.
        head_end = env.raw.find(b"\r\n\r\n")
        international = (
            not all(a.isascii() for a in addresses)
            or not env.raw[: head_end if head_end >= 0 else len(env.raw)].isascii()
        )
        if international:
            if "smtputf8" not in self.extensions:
                return Outcome(
                    env.id,
                    local=True,
                    error=PermanentFailure(
                        f"the SMTP server {where} does not accept international addresses "
                        "(no SMTPUTF8)."
                    ),
                )
            options += " SMTPUTF8"
        if not env.raw.isascii() and "8bitmime" in self.extensions:
            options += " BODY=8BITMIME"
        return options, "utf-8" if international else "ascii", body

    async def _answer(self, env: Envelope, step: str) -> Answer | Outcome:
        """The next answer, or the Outcome when none came in time (the line is then closed)."""
        assert self.wire is not None
        try:
            return await self.wire.answer(self.cfg.timeout)
        except aiosmtplib.SMTPTimeoutError:
            self._hang_up()
            return Outcome(env.id, error=timed_out(self.cfg.address, self.cfg.timeout, step))

    async def _skip(self, count: int) -> None:
        """Read the answers to commands already sent that no longer matter, then RSET."""
        wire = self.wire
        assert wire is not None
        if self.pipelining:
            try:
                for _ in range(count):
                    if (await wire.answer(self.cfg.timeout)).code == 354:
                        # The server took DATA with no recipient: end the empty message.
                        wire.write(b".\r\n")
                        await wire.answer(self.cfg.timeout)
            except (aiosmtplib.SMTPException, OSError):
                self._hang_up()
        await self._rset()

    async def _mail(self, env: Envelope) -> Outcome | None:
        """MAIL FROM's answer; None when the server took the sender.

        Nothing of the message is sent yet, so a lost line means "send it again
        on a new connection" (_Resend), never a duplicate.
        """
        where = self.cfg.address
        try:
            answer = await self._answer(env, "MAIL FROM")
        except aiosmtplib.SMTPServerDisconnected:
            raise _Resend(f"the SMTP server {where} closed the connection") from None
        if isinstance(answer, Outcome) or answer.code == 250:
            return answer if isinstance(answer, Outcome) else None
        words = self.scrub(words_of(*answer))
        if answer.code == 421:
            self._hang_up()
            raise _Resend(f"the SMTP server {where} closed the connection: {words}")
        if _out_of_step(answer.code):
            raise self._lost_step("MAIL FROM", answer.code)
        provider = provider_of(self.cfg.host, words)
        if account_refusal(answer.code, words) or (provider == "microsoft" and "5.7.30" in words):
            # Every message would meet the same answer: stop the run and say why.
            raise self._refused_account(env, words)
        await self._skip(len(env.rcpt_to) + 1)
        return Outcome(env.id, error=failure(answer.code, f"refused the sender: {words}", where))

    async def _rcpt(
        self, env: Envelope, commands: list[bytes]
    ) -> Outcome | tuple[list[str], dict[str, str], dict[str, str]]:
        """RCPT TO's answers: (accepted, deferred, refused), or the Outcome when none."""
        wire = self.wire
        assert wire is not None
        where = self.cfg.address
        accepted: list[str] = []
        deferred: dict[str, str] = {}
        refused: dict[str, str] = {}
        for rcpt, command in zip(env.rcpt_to, commands, strict=True):
            try:
                if not self.pipelining:
                    wire.write(command)
                answer = await self._answer(env, "RCPT TO")
            except aiosmtplib.SMTPServerDisconnected:
                raise _Resend(f"the SMTP server {where} closed the connection") from None
            if isinstance(answer, Outcome):
                return answer
            if answer.code in (250, 251):
                accepted.append(rcpt)
                continue
            words = self.scrub(words_of(*answer))
            if answer.code == 421:
                self._hang_up()
                raise _Resend(f"the SMTP server {where} closed the connection: {words}")
            if _out_of_step(answer.code):
                raise self._lost_step("RCPT TO", answer.code)
            # 552 to RCPT is temporary (RFC 5321 4.5.3.1.10: RFC 821's "too many
            # recipients", or a full mailbox), as Postfix takes it: tried again later.
            temporary = 400 <= answer.code < 500 or answer.code == 552
            (deferred if temporary else refused)[rcpt] = words
        if accepted:
            return accepted, deferred, refused
        await self._skip(1)  # DATA, when it went with the rest
        if (
            refused
            and not deferred
            and not self.group.delivered
            and all(account_refusal(int(w[:3]), w) for w in refused.values() if w[:3].isdigit())
        ):
            # Nothing from this account got through yet and the server refuses
            # it for reasons of who sends (relay denied, login required): the
            # mail stays queued and the run says how to fix the account.
            raise self._refused_account(env, next(iter(refused.values())))
        return Outcome(env.id, deferred=deferred, refused=refused)

    async def _data(
        self,
        env: Envelope,
        body: bytes,
        accepted: list[str],
        deferred: dict[str, str],
        refused: dict[str, str],
        *,
        prime: bool = False,
    ) -> Outcome:
        """DATA, then the message: from then on the server may have it even if we never hear."""
        wire = self.wire
        assert wire is not None
        where = self.cfg.address
        try:
            if not self.pipelining:
                wire.write(b"DATA\r\n")
            answer = await self._answer(env, "the message")
            if isinstance(answer, Outcome):
                return answer
            if wire.unread:
                # More answers than commands: which answer is whose is not known.
                raise self._lost_step("DATA", answer.code, "one answer too many")
            if answer.code != 354:
                if _out_of_step(answer.code):
                    raise self._lost_step("DATA", answer.code)
                words = self.scrub(words_of(*answer))
                await self._rset()
                return Outcome(
                    env.id, error=failure(answer.code, f"refused the message: {words}", where)
                )
            # Hand over the message only once the last one delivered on this
            # connection is on record: a hard kill can then leave at most one
            # accepted message per connection unrecorded (and sent again later).
            if self.previous is not None and self.settle is not None:
                await self.settle(self.previous)
            if self.blocked():
                # The run's claim lapsed (or outcomes cannot be written): the
                # text stays here; the message stays in the outbox.
                self._hang_up()
                raise _Resend("the run may no longer send")
            wire.write(body + self._prime() if prime else body)
        except aiosmtplib.SMTPServerDisconnected:
            # Gone before any of the text went: send it again on a new connection.
            raise _Resend(f"the SMTP server {where} closed the connection") from None
        try:
            answer = await wire.answer(self.cfg.timeout + len(body) / UPLOAD_BYTES_PER_SECOND)
        except aiosmtplib.SMTPTimeoutError:
            self._hang_up()
            error = timed_out(where, self.cfg.timeout, "the message")
            error.maybe_sent = True  # all of it went: the server may have it
            return Outcome(env.id, error=error)
        except aiosmtplib.SMTPServerDisconnected:
            # The server may or may not have the message: a temporary failure (sent again later).
            return Outcome(
                env.id,
                error=TemporaryFailure(
                    f"the SMTP server {where} closed the connection while the message was "
                    f"being sent{RESENT}.",
                    maybe_sent=True,
                ),
            )
        except aiosmtplib.SMTPResponseException as e:
            # All of it went, and the answer is no SMTP answer: the server may have it.
            self._hang_up()
            return Outcome(
                env.id,
                error=TemporaryFailure(
                    f"the SMTP server {where} answered the message with words that are not "
                    f"an SMTP answer ({self.scrub(e.message)}){RESENT}.",
                    maybe_sent=True,
                ),
            )
        if answer.code != 250:
            if _out_of_step(answer.code):  # it may have the message: sent again, said so
                self._hang_up()
                return Outcome(
                    env.id,
                    error=TemporaryFailure(
                        f"the SMTP server {where} answered the message with {answer.code}, "
                        f"an answer out of step{RESENT}.",
                        maybe_sent=True,
                    ),
                )
            words = self.scrub(words_of(*answer))
            if self.ahead is None:  # (the next message's commands are in: the text's answer
                await self._rset()  # ended this transaction)
            return Outcome(
                env.id, error=failure(answer.code, f"refused the message: {words}", where)
            )
        self.previous = env.id
        return Outcome(env.id, accepted=tuple(accepted), deferred=deferred, refused=refused)

    def _lost_step(self, command: str, code: int, what: str = "an answer") -> _Resend:
        """An answer no refusal is (a 250 or 354 where one was not due), or one too many:
        the server's answers are out of step with the commands. Nothing of the message
        went; a new line it is."""
        self._hang_up()
        said = f"with {code}, " if code else ""
        return _Resend(
            f"the SMTP server {self.cfg.address} answered {command} {said}{what} "
            "out of step with the commands"
        )

    def _refused_account(self, env: Envelope, words: str) -> AuthError:
        return refused_account(env, words, self.cfg, self.group.login)

    def _hang_up(self) -> None:
        """End the line without a word: the next message opens a fresh connection."""
        if self.wire is not None:
            self.wire.close()

    async def _rset(self) -> None:
        """Clear a half-done transaction so the connection can carry the next message."""
        if not self.connected:
            return
        assert self.wire is not None
        try:
            await self.wire.command(b"RSET\r\n", self.cfg.timeout)
        except (aiosmtplib.SMTPException, OSError):
            # The next message notices the broken connection and opens a new one.
            self._hang_up()


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")

# A recipient turned away because the transaction has as many as the server takes
# (RFC 5321 4.5.3.1.10: 452, or 552 from older servers; RFC 3463 X.5.3).
_TOO_MANY = re.compile(r"^[45]52\b.*?(\b[45]\.5\.3\b|too many recipients)", re.IGNORECASE)


def _as_expected(codes: list[int], recipients: int) -> bool:
    """The answers to MAIL, each RCPT and DATA say "go on": 250, 250 or 251, 354."""
    return (
        len(codes) == recipients + 2
        and codes[0] == 250
        and all(c in (250, 251) for c in codes[1:-1])
        and codes[-1] == 354
    )


def _mail_command(env: Envelope, options: str, encoding: str) -> bytes:
    return f"MAIL FROM:<{env.mail_from}>{options}\r\n".encode(encoding)


def _rcpt_commands(env: Envelope, encoding: str) -> list[bytes]:
    return [f"RCPT TO:<{r}>\r\n".encode(encoding) for r in env.rcpt_to]


def _too_many(words: str) -> bool:
    return _TOO_MANY.search(words) is not None


def _joined(outcome: Outcome, rest: tuple[str, ...], more: Outcome) -> Outcome:
    """``outcome`` with what became of ``rest`` in the transaction after it (``more``)."""
    deferred = {r: w for r, w in outcome.deferred.items() if r not in rest}
    refused = dict(outcome.refused)
    if more.error is not None:
        # The message as a whole is this one's matter, not theirs: it reached some.
        words = str(more.error)
        (deferred if isinstance(more.error, TemporaryFailure) else refused).update(
            dict.fromkeys(rest, words)
        )
    else:
        deferred.update(more.deferred)
        refused.update(more.refused)
    return replace(
        outcome,
        accepted=(*outcome.accepted, *more.accepted),
        deferred=deferred,
        refused=refused,
        # (the text went whole for them and no answer came: they may have it already)
        unsure=outcome.unsure or more.maybe_sent,
    )


def _out_of_step(code: int) -> bool:
    """Not an answer a refusal is (4xx, 5xx): where a refusal is all that can differ from
    the answer due, anything else means the answers are out of step."""
    return not 400 <= code < 600


def _as_sent(raw: bytes) -> tuple[int, bytes]:
    """The size SIZE counts (CRLF line ends) and the message as DATA carries it.

    DATA's form has CRLF line ends, a dot doubled at the start of a line, and
    the final dot line.
    """
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
        raw = _LINE_ENDS.sub(b"\r\n", raw)
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    size = len(raw)
    if raw.startswith(b"."):
        raw = b"." + raw
    if b"\r\n." in raw:  # (looked for first: most texts have none, and a search is quicker)
        raw = raw.replace(b"\r\n.", b"\r\n..")
    return size, raw + b".\r\n"


# What cannot stand in a command's <address>: spaces of any kind, angle brackets,
# quotes, control characters.
_UNSAFE = re.compile(r'[\s<>"\x00-\x1f\x7f]')


def _unsafe_address(address: str) -> bool:
    return not address or _UNSAFE.search(address) is not None


# ---- the transport


class SMTPTransport(Transport):
    """Deliver over SMTP, reusing a few connections for many messages."""

    name = "smtp"

    def deliver(self, envelopes: Iterable[Envelope], report: Report) -> None:
        """Send every envelope and report each outcome; raise Unreachable or AuthError to stop.

        Envelopes are taken from ``envelopes`` a few at a time, as connections
        are ready for them: the outbox claims them just before they are sent,
        and a stop signal leaves the rest unclaimed.
        """
        source = iter(envelopes)
        first = next(source, None)
        if first is None:
            return
        cfg = SMTPConfig.from_settings(self.settings)
        tls = cfg.tls_context()
        pacing = getattr(report, "pacing", None)
        intake = _Intake(self, first, source, pacing)
        run = _Run(cfg, tls, intake, report)
        asyncio.run(run.go(cfg.connections))

    def size_limit(self) -> int:
        """The SIZE the server announces (RFC 1870), asked over a connection of its own
        without logging in, when it is less than ``max_message_bytes``.

        A server that announces none leaves ``max_message_bytes``. One that cannot be
        asked now (sending then meets whatever stopped the asking) gets at most
        ``_UNASKED_SIZE``: the digest is queued now and may go to it later.
        """
        cfg = SMTPConfig.from_settings(self.settings)

        async def ask() -> int:
            async with _opened(cfg, None) as conn:
                return conn.size_limit

        try:
            announced = asyncio.run(ask())
        except (CpmailError, OSError):
            return min(_UNASKED_SIZE, self.max_message_bytes)
        return min(announced, self.max_message_bytes) if announced else self.max_message_bytes

    def login_for(self, env: Envelope, cache: dict[str, Secret | None]) -> Login | None:
        """How ``env`` logs in: its account's passcode as its sender, or not at all."""
        if not env.account:
            return None
        if env.account not in cache:
            secret = self.secrets.get(passcode_name(env.account))
            cache[env.account] = secret if secret and secret.reveal() else None
        passcode = cache[env.account]
        return Login(env.account, env.mail_from, passcode) if passcode else None


class _Intake:
    """Sorts envelopes into groups that log in the same way, taking more only when needed."""

    def __init__(
        self,
        transport: SMTPTransport,
        first: Envelope,
        source: Iterator[Envelope],
        pacing: Callable[[], bool] | None = None,
    ) -> None:
        self.transport = transport
        self.source: Iterator[Envelope] | None = source
        self.stopped = False  # by ``stop``: what is left in hand is not sent
        self.passcodes: dict[str, Secret | None] = {}
        self.groups: dict[tuple[str, str] | None, _Group] = {}
        # Taken while the account was not paced: if it becomes paced (a throttling
        # answer), these wait for their slot before they go.
        self.unpaced: set[int] = set()
        self.pacing: Callable[[], bool] = pacing or (lambda: False)
        self._add(first)

    def _add(self, env: Envelope) -> None:
        login = self.transport.login_for(env, self.passcodes)
        key = (login.account, login.user) if login else None
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(login)
        group.pending.append(env)
        if not self.pacing():
            self.unpaced.add(env.id)

    def fill(self, want: int) -> None:
        """Take envelopes until ``want`` are waiting (or there are no more)."""
        while self.source is not None and self.waiting < want:
            env = next(self.source, None)
            if env is None:
                self.source = None
                return
            self._add(env)

    def stop(self) -> None:
        """Take no more envelopes: what is not taken stays in the outbox."""
        self.source = None
        self.stopped = True

    @property
    def waiting(self) -> int:
        return sum(len(g.pending) for g in self.groups.values())


class _Run:
    """One ``deliver`` call: a few workers, each holding one connection at a time."""

    def __init__(
        self,
        cfg: SMTPConfig,
        tls: ssl.SSLContext | None,
        intake: _Intake,
        report: Report,
    ) -> None:
        self.cfg = cfg
        self.tls = tls
        self.intake = intake
        self.report = report
        self.fatal: BaseException | None = None
        self.live = 0  # connections open right now, across workers
        self.resent: set[int] = set()
        self.local_hostname = "localhost"
        self.timeouts = 0  # consecutive messages the server did not answer in time
        # Workers whose last message got no answer in time, since the last answer that came.
        # Each waits for an answer to come to another before it hands over one more; when all
        # wait, one at a time does. So a server that stops answering is handed one message
        # per connection, or _STALLED_AFTER with fewer connections, before the run ends.
        self.unanswered: set[int] = set()
        self.running: set[int] = set()  # workers in their loop
        self.answered: asyncio.Event | None = None  # set when a worker may go on
        # A recorder that can take outcomes now and write them together later.
        self.settled: Callable[[int], bool] | None = getattr(report, "settled", None)
        self.take: Callable[[Outcome], None] | None = getattr(report, "take", None)
        self.write: Callable[[], None] | None = getattr(report, "write", None)
        self.due: asyncio.TimerHandle | None = None  # the write of outcomes taken so far
        self.written: asyncio.Future[None] | None = None  # done when the next write is over
        self.settling = 0  # connections waiting for their last outcome to be written

    @property
    def groups(self) -> list[_Group]:
        return list(self.intake.groups.values())

    def _want(self) -> int:
        # Enough for every connection to have a few in hand, no more: the rest
        # stay in the outbox, unclaimed, until a connection is ready for them.
        # A paced account takes one at a time: the pace is kept when it is sent.
        pacing = getattr(self.report, "pacing", None)
        if pacing is not None and pacing():
            return 1
        return self.cfg.connections * _MESSAGES_PER_EXTRA_CONNECTION * 2

    def _admitted(self, env: Envelope) -> bool:
        """A message taken before its account became paced waits for its slot now."""
        if env.id not in self.intake.unpaced:
            return True
        admit = getattr(self.report, "admit", None)
        if admit is None or not self.intake.pacing() or admit():
            self.intake.unpaced.discard(env.id)
            return True
        return False

    def _blocked(self) -> bool:
        """The recorder says send no more (outcomes cannot be written, or the claim lapsed)."""
        return bool(getattr(self.report, "blocked", False))

    def _stopping(self) -> bool:
        if interrupt.requested() is not None or self._blocked():
            self.intake.stop()
            return True
        return False

    async def go(self, workers: int) -> None:
        self.local_hostname = await asyncio.to_thread(_local_hostname)
        try:
            await self._go(workers)
        finally:
            self._write()  # what the last answers brought

    def _report(self, outcome: Outcome) -> None:
        """Hand ``outcome`` to the recorder; outcomes that come close together are written together.

        A recorder that can take outcomes and write later (``take``/``write``)
        writes as soon as a connection needs its last message on record to go
        on (``settle``), and otherwise within _WRITE_WITHIN seconds.
        """
        if self.take is None or self.settled is None:
            self.report(outcome)
            return
        self.take(outcome)
        if self.due is None:  # (one set earlier and not fired yet writes sooner: no harm)
            self.due = asyncio.get_running_loop().call_later(_WRITE_WITHIN, self._due)

    def _due(self) -> None:
        self.due = None
        try:
            self._write()
        except interrupt.Stopped as e:
            # A second signal that waited for this write (see interrupt.shielded): the run
            # ends here, as it would had a connection made the write (a timer's callback
            # cannot raise it: the event loop would only log it).
            if self.fatal is None:
                self.fatal = e
            self._wake()

    def _write(self) -> None:
        written, self.written = self.written, None
        try:
            if self.write is not None:
                self.write()
        finally:
            if written is not None and not written.done():
                written.set_result(None)

    async def settle(self, message_id: int) -> None:
        """Make sure the outcome of ``message_id`` is on record before this returns.

        Writing is most of what a message costs beyond SMTP, so one write records the
        outcomes of every connection: it is made once each open connection waits for
        its own (its next text held back), or within _WRITE_WITHIN seconds.
        """
        if self.settled is None or self.write is None or self.settled(message_id):
            return
        self.settling += 1
        try:
            while not self.settled(message_id):
                if self.settling >= self.live:
                    self._write()  # every connection waits: nothing more will come first
                    continue
                if self.due is None:
                    self.due = asyncio.get_running_loop().call_later(_WRITE_WITHIN, self._due)
                if self.written is None:
                    self.written = asyncio.get_running_loop().create_future()
                await self.written
        finally:
            self.settling -= 1

    async def _go(self, workers: int) -> None:
        self.intake.fill(self._want())
        while True:
            workers = max(1, min(self.cfg.connections, self.intake.waiting))
            await asyncio.gather(*(self._worker(n) for n in range(workers)))
            if self.fatal is not None:
                raise self.fatal
            if self._stopping() or self.intake.stopped:
                return
            self.intake.fill(self._want())
            if not self.intake.waiting:
                return
            # A worker that was turned away left mail behind just as the others
            # finished: start again. With no connection open, the next refusal
            # is fatal, so this cannot go round for ever.

    def _note(self, n: int, outcome: Outcome) -> None:
        """Count answers: a server that stops answering ends the run (the rest stay queued)."""
        if outcome.local:  # nothing went to the server: no answer, and no silence
            return
        if not isinstance(outcome.error, NoAnswer):
            self.timeouts = 0
            self.unanswered.clear()
            self._wake()
            return
        self.timeouts += 1
        self.unanswered.add(n)
        if self.timeouts >= _STALLED_AFTER and self.fatal is None:
            self.fatal = Unreachable(
                f"the SMTP server {self.cfg.address} stopped answering ({self.timeouts} "
                f"messages in a row got no answer within {self.cfg.timeout:g} s); the rest "
                "stay in the outbox for the next run."
            )
        self._wake()

    def _wake(self) -> None:
        if self.answered is not None:
            self.answered.set()
            self.answered = None

    def _may_send(self, n: int) -> bool:
        """Whether worker ``n`` may hand over a message: its last one was answered (or
        another was since), or every worker waits and it is the one to try again."""
        if n not in self.unanswered:
            return True
        return self.running <= self.unanswered and n == min(self.running)

    async def _until_answered(self, n: int) -> None:
        """Wait until worker ``n`` may hand over a message, or the run ends."""
        while not self._may_send(n) and self.fatal is None and not self._stopping():
            if self.answered is None:
                self.answered = asyncio.Event()
            answered = self.answered
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), 0.5)  # and look at stopping again

    def _pick(self, current: _Group | None) -> _Group | None:
        """Stay with the current group while it has mail; else join the neediest one."""
        if current is not None and current.pending:
            return current
        best: _Group | None = None
        for g in self.groups:
            # Open another connection only when it will carry a few messages:
            # a TLS handshake and a login cost more than sending one message.
            if len(g.pending) > g.workers * _MESSAGES_PER_EXTRA_CONNECTION and (
                best is None or (g.workers, -len(g.pending)) < (best.workers, -len(best.pending))
            ):
                best = g
        return best

    # Complexity above 15 on purpose: a worker's loop: pick a group, (re)connect, send, hand over
    # the outcome.
    async def _worker(self, n: int) -> None:  # noqa: C901
        conn: _Connection | None = None
        current: _Group | None = None
        last: int | None = None  # the last message accepted on this worker's lines
        self.running.add(n)
        try:
            while self.fatal is None and not self._stopping():
                self.intake.fill(self._want())
                primed = conn is not None and conn.ahead is not None
                group = current if primed else self._pick(current)
                if group is not current:
                    if conn is not None:
                        last = conn.previous or last
                        await self._drop(conn)
                        conn = None
                    if current is not None:
                        current.workers -= 1
                    current = group
                    if group is not None:
                        group.workers += 1
                if group is None:
                    return
                if n in self.unanswered:  # its last message got no answer: wait for one
                    await self._until_answered(n)
                    if self.fatal is not None or self._stopping():
                        break
                if conn is None or not conn.connected:
                    if conn is not None:
                        last = conn.previous or last
                        await self._drop(conn)
                    conn = await self._connect(group)
                    if conn is None:
                        return
                    # Its first text, too, waits until the last one accepted is on record.
                    conn.previous = last
                if conn.ahead is None and not group.pending:
                    continue
                if self.fatal is not None or self._stopping():
                    break  # decided while this worker was connecting: hand over nothing more
                # (a message whose commands went with the last text comes first)
                env = conn.ahead[0] if conn.ahead is not None else group.pending.popleft()
                if not self._admitted(env):
                    # The run stops or the account is paused: it stays claimed, unsent,
                    # for the account's next turn or the outbox.
                    if conn.ahead is None:
                        group.pending.appendleft(env)
                    self.intake.stop()
                    return  # (one announced goes back as the connection is dropped)
                with interrupt.shielded():  # until the answer is taken for the record
                    try:
                        outcome = await conn.send(env)
                    except _Resend as e:
                        if env.id in self.resent:
                            outcome = Outcome(env.id, error=TemporaryFailure(e.words))
                        else:
                            log.info(
                                "connection %d lost before message %d; sending again", n, env.id
                            )
                            self.resent.add(env.id)
                            group.pending.appendleft(env)
                            continue
                    except AuthError:
                        group.pending.appendleft(env)  # not sent: it stays in the outbox
                        raise
                    self._report(outcome)
                self._note(n, outcome)
                if outcome.accepted:
                    group.delivered = True
        except BaseException as e:
            if self.fatal is None:
                self.fatal = e
            if not isinstance(e, Exception):
                raise
        finally:
            self.running.discard(n)
            self.unanswered.discard(n)
            self._wake()  # those left may all be waiting now: one of them goes on
            if current is not None:
                current.workers -= 1
            if conn is not None:
                await self._drop(conn)

    async def _connect(self, group: _Group) -> _Connection | None:
        """Open a connection for ``group``; None when this worker should stop quietly."""
        if not group.proven:
            # The first connection of a group opens alone: a wrong passcode must
            # fail one login, not one per parallel connection.
            async with group.lock:
                if self.fatal is not None:
                    return None
                if not group.proven:
                    conn = await self._open(group)
                    group.proven = conn is not None
                    return conn
        return await self._open(group)

    async def _open(self, group: _Group) -> _Connection | None:
        conn = _Connection(self.cfg, self.tls, group, self.local_hostname)
        conn.settle = self.settle
        conn.blocked = self._blocked
        conn.next_for = lambda: self._next_for(group)
        try:
            await conn.open()
        except Unreachable:
            if self.live > 0:
                # Others are connected, so the server is there: it limits
                # connections or is busy. Leave the mail to the others.
                log.info("extra connection to %s refused; carrying on", self.cfg.address)
                return None
            raise
        self.live += 1
        return conn

    async def _drop(self, conn: _Connection) -> None:
        ahead = conn.unprime()
        if ahead is not None:  # (not sent: it waits for the next connection)
            conn.group.pending.appendleft(ahead)
        if conn.smtp is not None:
            self.live -= 1
        await conn.close()

    def _next_for(self, group: _Group) -> Envelope | None:
        """The message a connection of ``group`` sends next, taken now so that its commands
        can go with the text in hand; None when none is in hand (claims are the worker
        loop's, not made while a text is on its way), the run stops or the account is
        paced (a paced message is let go only just before it is sent)."""
        if not group.pending or self.intake.pacing() or self.fatal is not None:
            return None
        return None if self._stopping() else group.pending.popleft()


def probe(settings: Settings, login: Login | None, address: str) -> None:
    """Connect, say hello, upgrade to TLS and log in as ``login``, sending nothing.

    Without a login (a relay), ask with MAIL FROM whether the server takes mail
    from ``address``, then take it back (RSET). Raise Unreachable or AuthError
    with the sentence a person reads, as a real delivery would. An ``address``
    that is not one valid address (one written into the database by hand) is
    an InputError before anything is said to the server: it is never written
    into a command, where a line break in it would start commands of its own.
    """
    from cpmail.addresses import check_address

    cfg = SMTPConfig.from_settings(settings)
    if login is None and address:
        address = check_address(address, where="the address the account sends from")

    async def go() -> None:
        async with _opened(cfg, login) as conn:
            if login is None and address and conn.wire is not None:
                options = ""
                if not address.isascii():  # as a delivery asks for it (RFC 6531)
                    if "smtputf8" not in conn.extensions:
                        raise AuthError(
                            f"the SMTP server {cfg.address} does not accept international "
                            f"addresses (no SMTPUTF8), so mail from {address} cannot be sent."
                        )
                    options = " SMTPUTF8"
                command = f"MAIL FROM:<{address}>{options}\r\n".encode()
                answer = await conn.wire.command(command, cfg.timeout)
                if answer.code != 250:
                    raise AuthError(
                        f"the SMTP server {cfg.address} refuses mail from {address}: "
                        f"{words_of(*answer)}"
                    )
                await conn.wire.command(b"RSET\r\n", cfg.timeout)

    asyncio.run(go())


@contextlib.asynccontextmanager
async def _opened(cfg: SMTPConfig, login: Login | None) -> AsyncIterator[_Connection]:
    """One connection, greeted, upgraded to TLS and logged in as ``login`` (or not at all),
    closed when the block ends; Unreachable or AuthError as a delivery would raise them."""
    conn = _Connection(cfg, cfg.tls_context(), _Group(login), _local_hostname())
    await conn.open()
    try:
        yield conn
    finally:
        await conn.close()


def _local_hostname() -> str:
    """The name to give in EHLO: this machine's FQDN when it is usable."""
    name = socket.getfqdn().strip()
    if not name or not name.isascii() or any(c.isspace() or ord(c) < 32 for c in name):
        return "localhost"
    return name
