"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, TLS from trustme, AUTH, trouble on demand.

Fixtures (import them into a test module, or list this module in
``pytest_plugins`` of the top-level conftest)::

    from tests.smtpserver import closed_port, smtp_ca, smtp_server, smtp_server_factory

    def test_relay(smtp_server):                 # plain text, no AUTH, ready to use
        ...
        assert smtp_server.messages[0].rcpt_tos == ("jd@agency.test",)

    def test_login(smtp_server_factory):
        server = smtp_server_factory(tls="starttls", users={"jd@agency.test": "s3cret"})

- ``smtp_server_factory(tls="none"|"starttls"|"ssl", users=None, size_limit=...)``
  starts a server and stops it after the test. ``users`` maps login -> password;
  without it the server offers no AUTH (a relay). With TLS the certificate is
  for 127.0.0.1 and localhost, signed by a trustme CA whose PEM is at
  ``server.ca_file``.
- ``smtp_server``: ``smtp_server_factory()`` (plain text, no AUTH).
- ``smtp_ca``: the session's ``trustme.CA``; ``closed_port``: a port on
  127.0.0.1 where nothing listens (connection refused).
- ``SMTPTestServer`` may also be used directly: ``with SMTPTestServer(tls="ssl",
  ca=trustme.CA(), ca_file=path_of_its_pem) as server:`` (without the fixtures,
  a TLS server needs the CA and the path where its PEM was written).

What the server saw:

- ``server.messages``: list of ``Received`` with ``mail_from``, ``rcpt_tos``
  (tuple), ``data`` (the exact bytes of the message, CRLF line ends, dots
  un-stuffed), ``mail_options``, ``login`` (AUTH name or None), ``tls`` (was
  the session encrypted) and ``connection`` (serial number of the connection).
- ``server.auth_attempts``: list of ``AuthAttempt(login, ok, tls)``; passwords
  are never recorded.
- ``server.reads``: every piece of data as the server read it from a
  connection (commands written together by the client arrive together);
- ``server.connections``: client sessions that said EHLO/HELO;
  ``server.max_parallel``: most such sessions open at once.
- ``server.host``, ``server.port``, ``server.ca_file`` ('' without TLS),
  ``server.settings(security=None)`` -> the ``mail.smtp.*`` keys to reach it
  (host, port, security = the server's mode, ca_file, timeout = 5), for
  ``Settings.set`` or ``cpmail config set``; ``server.env(...)`` -> the same as
  ``CPMAIL_MAIL_SMTP_*`` variables; ``server.reset()`` forgets what was received.

Trouble, set on the object at any time (it applies to the next command):

- ``greeting = "421 4.3.2 busy"``: answer every connection with this and hang up.
- ``silent = True``: accept TCP connections but never say anything.
- ``greeting_delays = [0, 0.4, 0.8]``: the next connections wait this long each
  before the greeting (one value per connection, then none): they start apart.
- ``max_connections = n``: turn away connections beyond ``n`` open at once
  with ``421 4.7.0 too many connections``.
- ``offer_starttls = False``: keep STARTTLS out of the EHLO answer.
- ``fail_ehlo = "421 4.7.0 busy"``: answer EHLO with this instead (HELO too).
- ``offer_pipelining = False``: keep PIPELINING (RFC 2920) out of the EHLO
  answer. It is offered by default, as Postfix, Exchange and Gmail do; the
  server reads pipelined commands in order either way.
- ``fail_auth = "535 5.7.30 Basic authentication is not supported"``: refuse
  every login with this answer, whatever the password.
- ``require_auth = True``: answer MAIL with 530 until the session logged in.
- ``fail_mail`` / ``fail_data``: an answer such as ``"451 4.3.0 try later"``
  for every MAIL FROM / end of DATA, or a list of answers used one per
  transaction (then the server behaves again): ``["421 4.7.0 go away"]``.
- ``fail_rcpt = {"b@x.test": "550 5.1.1 no such user"}``: per-recipient answers.
- ``rcpt_delay = seconds``: wait this long before answering each RCPT TO (a
  server that checks every recipient, as recipient verification does).
- ``max_recipients = (n, "452 4.5.3 Error: too many recipients")``: take at
  most ``n`` recipients in one transaction, answering every further RCPT TO
  with the answer given.
- ``extra_answers = ["250 2.0.0 OK"]``: after the answer to a message's data,
  say this line too, unasked (a server whose answers get out of step with the
  commands); one line per message, then the server behaves again.
- ``ignore_after_data = True``: drop whatever comes in the same read after the
  end of a message's data (a server that reads no commands there, though RFC
  2920 allows them).
- ``drop_during_data``: hang up after the message data arrived, without
  answering (the message is not recorded). ``True`` for every message, a
  number ``n`` for the next ``n`` messages.
- ``stall_data``: like ``drop_during_data`` but never answer and never hang up
  (for read timeouts).
- ``stall_after = n``: accept the next ``n`` messages, then stall every later
  DATA like ``stall_data`` (a server that accepts, then stops answering).
- ``accept_delay = seconds``: wait this long before accepting each message
  (a slow or tarpitting server).
- ``rate_limit = (n, seconds)``: like Exchange Online, answer MAIL with
  ``452 4.3.2 … STOREDRV.ClientSubmit`` once ``n`` messages were accepted in
  the last ``seconds``; ``server.throttled`` counts those answers.

Any answer starting with ``421`` also closes the connection, as real servers do.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

# aiosmtpd warns about its own deprecated Session.login_data on every AUTH.
logging.getLogger("mail.log").setLevel(logging.ERROR)

TLSMode = Literal["none", "starttls", "ssl"]
Trouble = bool | int


@dataclass(frozen=True)
class Received:
    """One message as the server received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...]
    login: str | None
    tls: bool
    connection: int


@dataclass(frozen=True)
class AuthAttempt:
    """One AUTH command: the login name, whether it succeeded, whether over TLS."""

    login: str
    ok: bool
    tls: bool


def _take(value: Trouble) -> tuple[bool, Trouble]:
    """Return (applies now, value left): True always applies, a count runs down."""
    if value is True:
        return True, True
    if isinstance(value, int) and value > 0:
        return True, value - 1
    return False, value


class _Session(SMTP):
    """aiosmtpd's SMTP with the test server's trouble switches."""

    def __init__(self, owner: SMTPTestServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.serial = 0
        self.counted_tcp = False

    async def _handle_client(self) -> None:
        owner = self.owner
        with owner._lock:
            owner._open_tcp += 1
            self.counted_tcp = True
            crowded = owner.max_connections is not None and owner._open_tcp > owner.max_connections
        if crowded:
            await self.push("421 4.7.0 too many connections, try again later")
            return
        if owner.silent:
            await asyncio.Event().wait()  # until the client gives up and hangs up
        with owner._lock:
            delay = owner.greeting_delays.pop(0) if owner.greeting_delays else 0.0
        if delay:
            await asyncio.sleep(delay)
        if owner.greeting is not None:
            await self.push(owner.greeting)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def push(self, status: Any) -> None:
        await super().push(status)
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("421") and self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.owner._sessions.add(self)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.owner.reads.append(data)
        end = data.find(b"\r\n.\r\n")
        if self.owner.ignore_after_data and end >= 0:
            data = data[: end + 5]
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        self.owner._sessions.discard(self)
        with self.owner._lock:
            if self.serial:
                self.owner._open -= 1
                self.serial = 0
            if self.counted_tcp:
                self.owner._open_tcp -= 1
                self.counted_tcp = False
        super().connection_lost(error)

    def hello_seen(self) -> None:
        if not self.serial:
            self.serial = self.owner._count_connection()

    def encrypted(self) -> bool:
        return (
            self.transport is not None and self.transport.get_extra_info("sslcontext") is not None
        )


class _Handler:
    """aiosmtpd hooks: record what arrives, answer as the owner says."""

    def __init__(self, owner: SMTPTestServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self,
        server: _Session,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if self.owner.fail_ehlo is not None:
            return [self.owner.fail_ehlo]
        session.host_name = hostname
        server.hello_seen()
        out = []
        for line in responses:
            word = line[4:].split(" ")[0].upper()
            if word == "STARTTLS" and not self.owner.offer_starttls:
                continue
            if word == "AUTH" and not self.owner.users:
                continue
            out.append(line)
        if self.owner.offer_pipelining:
            out.insert(1, "250-PIPELINING")
        # The last line of a multi-line answer must use "250 ", not "250-".
        out[-1] = "250 " + out[-1][4:]
        return out

    async def handle_HELO(
        self, server: _Session, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        if self.owner.fail_ehlo is not None:
            return self.owner.fail_ehlo
        session.host_name = hostname
        server.hello_seen()
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: _Session,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        owner = self.owner
        if owner.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if owner.rate_limit is not None:
            n, window = owner.rate_limit
            with owner._lock:
                now = time.monotonic()
                recent = sum(1 for t in owner._accepted_at if now - t < window)
                if recent >= n:
                    owner.throttled += 1
                    return (
                        "452 4.3.2 Submission quota exceeded. "
                        "STOREDRV.ClientSubmit; sender thread limit exceeded"
                    )
        answer = owner._next_answer("fail_mail")
        if answer is not None:
            return answer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: _Session,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        owner = self.owner
        if owner.rcpt_delay:
            await asyncio.sleep(owner.rcpt_delay)
        answer = owner.fail_rcpt.get(address)
        if answer is not None:
            return answer
        if owner.max_recipients is not None and len(envelope.rcpt_tos) >= owner.max_recipients[0]:
            return owner.max_recipients[1]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: _Session, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        with owner._lock:
            drop, owner.drop_during_data = _take(owner.drop_during_data)
            stall, owner.stall_data = _take(owner.stall_data)
            if owner.stall_after is not None:
                stall = stall or owner.stall_after <= 0
                owner.stall_after -= 1
        if drop and server.transport is not None:
            server.transport.close()
        if drop or stall:
            await asyncio.Event().wait()  # cancelled when the connection goes
        if owner.accept_delay:
            await asyncio.sleep(owner.accept_delay)
        answer = owner._next_answer("fail_data")
        if answer is not None:
            return answer
        auth = session.auth_data
        login = auth.login.decode("utf-8") if isinstance(auth, LoginPassword) else None
        assert envelope.original_content is not None
        received = Received(
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content),
            mail_options=tuple(envelope.mail_options),
            login=login if session.authenticated else None,
            tls=server.encrypted(),
            connection=server.serial,
        )
        with owner._lock:
            owner.messages.append(received)
            owner._accepted_at.append(time.monotonic())
        extra = owner._next_answer("extra_answers")
        # Both lines go out in one write, as one packet.
        return "250 2.0.0 OK queued" + (f"\r\n{extra}" if extra is not None else "")


class _Controller(Controller):
    """A Controller that listens on port 0 and learns the real port before probing it."""

    def __init__(self, owner: SMTPTestServer, **kwargs: Any) -> None:
        super().__init__(_Handler(owner), hostname="127.0.0.1", port=0, **kwargs)
        self.owner = owner

    def factory(self) -> _Session:
        return _Session(self.owner, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SMTPTestServer:
    """A running aiosmtpd server with switches for misbehaviour (see the module docstring)."""

    host = "127.0.0.1"
    offer_pipelining = True  # the default of every new server

    def __init__(
        self,
        *,
        tls: TLSMode = "none",
        users: dict[str, str] | None = None,
        ca: trustme.CA | None = None,
        ca_file: Path | None = None,
        size_limit: int = 32 * 1024 * 1024,
    ) -> None:
        if tls != "none" and (ca is None or ca_file is None):
            raise ValueError("a TLS server needs ca= and ca_file=")
        self.tls = tls
        self.users = dict(users or {})
        self.ca_file = str(ca_file) if tls != "none" and ca_file is not None else ""
        self.messages: list[Received] = []
        self.auth_attempts: list[AuthAttempt] = []
        self.reads: list[bytes] = []
        self.connections = 0
        self.max_parallel = 0
        # trouble switches
        self.greeting: str | None = None
        self.silent = False
        self.greeting_delays: list[float] = []
        self.max_connections: int | None = None
        self.offer_starttls = True
        self.fail_ehlo: str | None = None
        self.offer_pipelining = SMTPTestServer.offer_pipelining
        self.fail_auth: str | None = None
        self.require_auth = False
        self.fail_mail: str | list[str] | None = None
        self.fail_data: str | list[str] | None = None
        self.fail_rcpt: dict[str, str] = {}
        self.rcpt_delay = 0.0
        self.max_recipients: tuple[int, str] | None = None
        self.extra_answers: list[str] = []
        self.drop_during_data: Trouble = False
        self.ignore_after_data = False
        self.stall_data: Trouble = False
        self.stall_after: int | None = None
        self.accept_delay = 0.0
        self.rate_limit: tuple[int, float] | None = None
        self.throttled = 0  # MAIL commands refused by rate_limit
        self._accepted_at: list[float] = []

        self._lock = threading.Lock()
        self._open = 0  # sessions past EHLO
        self._open_tcp = 0  # all connections
        self._running = False
        self._sessions: set[_Session] = set()  # (touched only in the server's loop)
        context: ssl.SSLContext | None = None
        if tls != "none":
            assert ca is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        kwargs: dict[str, Any] = {
            "data_size_limit": size_limit,
            "auth_require_tls": False,  # implicit TLS would otherwise hide AUTH
            "authenticator": self._authenticate,
        }
        if tls == "starttls":
            kwargs["tls_context"] = context
        elif tls == "ssl":
            kwargs["ssl_context"] = context
        self._controller = _Controller(self, **kwargs)
        self.port = 0

    # ---- life
    def start(self) -> SMTPTestServer:
        self._controller.start()
        self._running = True
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection; calling it twice is fine."""
        if self._running:
            self._running = False

            # Connections still open (a silent session the client never hung up on) are
            # cut first: from Python 3.12 on, closing a server waits for every one.
            def cut() -> None:
                for session in list(self._sessions):
                    if isinstance(session.transport, asyncio.Transport):
                        session.transport.abort()

            self._controller.loop.call_soon_threadsafe(cut)
            self._controller.stop()

    def __enter__(self) -> SMTPTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- helpers for tests
    def settings(self, security: str | None = None) -> dict[str, Any]:
        """The ``mail.smtp.*`` keys that reach this server (security defaults to its mode)."""
        if security is None:
            security = self.tls if self.tls != "none" else "none"
        return {
            "mail.smtp.host": self.host,
            "mail.smtp.port": self.port,
            "mail.smtp.security": security,
            "mail.smtp.ca_file": self.ca_file,
            "mail.smtp.timeout": 5,
        }

    def env(self, security: str | None = None) -> dict[str, str]:
        """The same as ``settings()``, as ``CPMAIL_MAIL_SMTP_*`` environment variables."""
        return {
            "CPMAIL_" + key.upper().replace(".", "_"): str(value)
            for key, value in self.settings(security).items()
        }

    def reset(self) -> None:
        """Forget what was received (the trouble switches stay as they are)."""
        with self._lock:
            self.messages.clear()
            self.auth_attempts.clear()
            self.reads.clear()
            self.connections = 0
            self.max_parallel = 0

    # ---- used by the session
    def _count_connection(self) -> int:
        with self._lock:
            self.connections += 1
            self._open += 1
            self.max_parallel = max(self.max_parallel, self._open)
            return self.connections

    def _next_answer(self, name: str) -> str | None:
        with self._lock:
            value = getattr(self, name)
            if isinstance(value, list):
                if not value:
                    return None
                return str(value.pop(0))
            return value if isinstance(value, str) else None

    def _authenticate(
        self,
        server: _Session,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        ok = self.fail_auth is None and self.users.get(login) == auth_data.password.decode(
            "utf-8", "replace"
        )
        with self._lock:
            self.auth_attempts.append(AuthAttempt(login, ok, server.encrypted()))
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False, message=self.fail_auth)


# ---- fixtures


@pytest.fixture(scope="session")
def smtp_ca() -> trustme.CA:
    """A certificate authority for the test servers' certificates."""
    return trustme.CA()


@pytest.fixture
def smtp_server_factory(
    smtp_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., SMTPTestServer]]:
    """Start servers with ``factory(tls=..., users=..., size_limit=...)``; stop them after."""
    started: list[SMTPTestServer] = []
    ca_file = tmp_path_factory.mktemp("smtp-ca") / "ca.pem"
    smtp_ca.cert_pem.write_to_path(str(ca_file))

    def make(
        *,
        tls: TLSMode = "none",
        users: dict[str, str] | None = None,
        size_limit: int = 32 * 1024 * 1024,
    ) -> SMTPTestServer:
        server = SMTPTestServer(
            tls=tls, users=users, ca=smtp_ca, ca_file=ca_file, size_limit=size_limit
        )
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: Callable[..., SMTPTestServer]) -> SMTPTestServer:
    """A plain-text relay: no TLS, no AUTH."""
    return smtp_server_factory()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
