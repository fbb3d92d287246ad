"""What the Gmail and Microsoft Graph transports share: one HTTPS POST per message.

``ApiTransport`` holds the mechanism: the size check, one session per
account for the whole delivery (a sign-in service that failed for now is
remembered, so the account's later messages are deferred at once), one
renewal of the token when the API answers 401, and 429 and 5xx as temporary
(after ``Retry-After`` when given; a 5xx as possibly sent). Each provider's
module says where and how a message is posted and what the rest of its
refusals mean.
"""

from __future__ import annotations

import abc
import datetime as dt
import email.utils
import math
import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import httpx

from cpmail import interrupt
from cpmail.deadline import within
from cpmail.deep import NoCollection
from cpmail.errors import (
    MAIL_STAYS,
    RESENT,
    WAITS,
    AuthError,
    NoAnswer,
    PermanentFailure,
    TemporaryFailure,
    Unreachable,
)
from cpmail.oauth.tokens import check_endpoint, https_context, signin_command
from cpmail.scrub import Scrubber, mask_tokens
from cpmail.secrets import account_words
from cpmail.sizes import size_pair
from cpmail.transports.base import UPLOAD_BYTES_PER_SECOND, Envelope, Outcome, Report, Transport


class Session(Protocol):
    """One account's sign-in, as a transport uses it."""

    def access_token(self, *, force_refresh: bool = False) -> str: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Session)


@dataclass(frozen=True)
class Refusal:
    """An answer other than 2xx: its status, what its error body says, and its Retry-After."""

    status: int
    code: str
    message: str
    reasons: tuple[str, ...]
    retry_after: float | None
    own: bool = True  # the body is the API's own error document

    @classmethod
    def of(cls, response: httpx.Response) -> Refusal:
        """Read a Google or Graph error body, as far as it goes."""
        wait = retry_after(response.headers.get("Retry-After"))
        try:
            with NoCollection():
                doc = response.json()
        except (ValueError, RecursionError):  # (not JSON, or nested past the parser's depth)
            doc = None
        error = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(error, dict):
            text = response.text.strip().splitlines()[0][:300] if response.text.strip() else ""
            said = mask_tokens(text or response.reason_phrase)
            return cls(response.status_code, "", said, (), wait, own=False)
        listed = error.get("errors")
        reasons = tuple(
            str(e.get("reason", ""))
            for e in (listed if isinstance(listed, list) else [])
            if isinstance(e, dict) and e.get("reason")
        )
        code = mask_tokens(str(error.get("code", "")))
        message = mask_tokens(str(error.get("message", "")).strip() or response.reason_phrase)
        return cls(response.status_code, code, message, reasons, wait)

    def without(self, *secrets: str) -> Refusal:
        """The same refusal with ``secrets`` (the token sent, say) masked in its words."""
        scrub = Scrubber(secrets)
        return replace(self, code=scrub(self.code), message=scrub(self.message))

    def said(self, *, with_code: bool) -> str:
        """The answer in a few words: ``HTTP 403 ErrorAccessDenied: message``."""
        code = f" {self.code}" if with_code and self.code else ""
        return f"HTTP {self.status}{code}: {self.message}"


class ApiTransport(Transport, Generic[S]):
    """A transport that posts each message to an HTTP API with its account's token.

    Settings ``mail.<name>.api_base`` and ``mail.<name>.timeout`` say where
    and how long to wait.
    """

    #: The API as sentences name it: "Gmail", "Microsoft Graph".
    brand: ClassVar[str]
    #: The API as network errors name it.
    service: ClassVar[str]
    #: The refusal of a message that is too big, with ``{}`` for its size and the limit.
    too_big: ClassVar[str]

    def deliver(self, envelopes: Iterable[Envelope], report: Report) -> None:
        """Send each envelope as its account; report each outcome as soon as it is known."""
        key = f"mail.{self.name}.api_base"
        base = check_endpoint(str(self.settings.get(key)), key)
        seconds = self.settings.get(f"mail.{self.name}.timeout")
        assert isinstance(seconds, float)  # the key's check made it one
        sessions: dict[str, S | TemporaryFailure] = {}
        http = Poster(seconds, service=self.service)
        try:
            for env in envelopes:
                with interrupt.shielded():  # until the answer is taken for the record
                    report(self._send(http, base, env, sessions))
        finally:
            http.close()
            for session in sessions.values():
                if not isinstance(session, TemporaryFailure):
                    session.close()

    def _renew_advice(self, account: str) -> str:
        """What to do when even a renewed token is refused."""
        return f"run `{signin_command(account)}`"

    @abc.abstractmethod
    def _session(self, account: str) -> S:
        """Open the sign-in of ``account``."""

    @abc.abstractmethod
    def _post(self, http: Poster, base: str, session: S, token: str, raw: bytes) -> httpx.Response:
        """Post the message ``raw`` with ``token`` (through ``http.post``)."""

    @abc.abstractmethod
    def _failure(
        self, env: Envelope, session: S, refusal: Refusal
    ) -> TemporaryFailure | PermanentFailure:
        """What a refusal means for this message; AuthError when no message can be sent."""

    def _send(
        self,
        http: Poster,
        base: str,
        env: Envelope,
        sessions: dict[str, S | TemporaryFailure],
    ) -> Outcome:
        if len(env.raw) > self.max_message_bytes:
            sizes = size_pair(len(env.raw), self.max_message_bytes)
            return Outcome(env.id, error=PermanentFailure(self.too_big.format(*sizes)))
        session = sessions.get(env.account)
        if session is None:
            try:  # opening may fetch the sign-in service's settings: bounded like the rest
                session = within(http.seconds, lambda: self._session(env.account))
            except TemporaryFailure as e:
                session = e
            except TimeoutError:
                session = TemporaryFailure(
                    f"the sign-in service did not answer {account_words(env.account)} within "
                    f"{http.seconds:g} s{WAITS}."
                )
            sessions[env.account] = session
        if isinstance(session, TemporaryFailure):
            return Outcome(env.id, error=session)
        raw = with_missing_bcc(env.raw, env.rcpt_to)
        try:
            token = self._token(http, session, env.account, sessions)
            response = self._post(http, base, session, token, raw)
            if response.status_code == 401:  # revoked early or clock skew: renew once
                token = self._token(http, session, env.account, sessions, renew=True)
                response = self._post(http, base, session, token, raw)
                if response.status_code == 401:
                    raise AuthError(
                        f"{self.brand} refused the renewed sign-in of {env.account}; "
                        f"{self._renew_advice(env.account)}."
                    )
        except TemporaryFailure as e:
            return Outcome(env.id, error=e)
        if 200 <= response.status_code < 300:
            if is_page(response):
                raise Unreachable(self._a_page(response))
            return Outcome(env.id, accepted=env.rcpt_to)
        if 300 <= response.status_code < 400:
            raise Unreachable(self._redirected(response))
        refusal = Refusal.of(response).without(token)  # a server may quote what it was sent
        if refusal.status in (404, 405) and not refusal.own:
            # No such address, without the API's own error document: not the API at all
            # (a wrong api_base, a proxy), so nothing was sent and no message is at fault.
            raise Unreachable(self._not_the_api(response, refusal))
        return Outcome(env.id, error=self._failure(env, session, refusal))

    def _a_page(self, response: httpx.Response) -> str:
        host = _host(str(response.request.url))
        return (
            f"{self.service} at {host} answered HTTP {response.status_code} with a web page, "
            "not an answer of its own (it never answers with one), so nothing was sent; check "
            f"`mail.{self.name}.api_base`, or the proxy between this machine and it (a sign-in "
            f"or block page). {MAIL_STAYS}"
        )

    def _not_the_api(self, response: httpx.Response, refusal: Refusal) -> str:
        host = _host(str(response.request.url))
        return (
            f"{self.service} at {host} answered {refusal.said(with_code=False)}, not an "
            f"answer of its own, so nothing was sent; check `mail.{self.name}.api_base`, or "
            f"the proxy between this machine and it. {MAIL_STAYS}"
        )

    def _redirected(self, response: httpx.Response) -> str:
        """A redirect instead of an answer (not followed: it is no answer of the API's, and
        a POST is not sent on): a proxy's sign-in page, an API address that moved."""
        host = _host(str(response.request.url))
        # (only where it points: a sign-in page's address may carry a session)
        target = _host(response.headers.get("Location", ""))
        return (
            f"{self.service} at {host} answered with a redirect (HTTP {response.status_code}"
            f"{' to ' + target if target else ''}), not an answer of its own, so nothing was "
            f"sent; check `mail.{self.name}.api_base`, or the proxy between this machine and "
            f"it. {MAIL_STAYS}"
        )

    def _token(
        self,
        http: Poster,
        session: S,
        account: str,
        sessions: dict[str, S | TemporaryFailure],
        *,
        renew: bool = False,
    ) -> str:
        """The account's access token (renewed when it must be): given up, like a message,
        when the sign-in service has not answered whole within the timeout; the account's
        later messages then wait at once."""
        try:
            return within(http.seconds, lambda: session.access_token(force_refresh=renew))
        except TimeoutError:
            failure = TemporaryFailure(
                f"the sign-in service did not renew the sign-in of {account_words(account)} within "
                f"{http.seconds:g} s{WAITS}."
            )
            sessions[account] = failure
            raise failure from None

    def _temporary(
        self, refusal: Refusal, said: str, wait: float | None, *, rate_limited: bool = False
    ) -> TemporaryFailure | None:
        """429 (or another answer that says the rate is limited), 408 and 5xx: try again later.

        A 5xx comes once the whole message went: the server may have sent it all
        the same (a gateway's 502 or 504 after the mailbox took it), so it is said
        to be possibly sent.
        """
        maybe_sent = False
        if refusal.status == 429 or rate_limited:
            text = f"{self.brand} is limiting the rate ({said})."
        elif refusal.status >= 500:
            text = f"{self.brand} had a server error ({said})."
            maybe_sent = True
        elif refusal.status == 408:  # it gave up waiting for the request: nothing was taken
            text = f"{self.brand} timed out waiting for the message ({said})."
        else:
            return None
        return TemporaryFailure(text, retry_after=wait, maybe_sent=maybe_sent)

    def _refused(self, said: str) -> PermanentFailure:
        return PermanentFailure(f"{self.brand} refused the message ({said}).")


# The longest wait a Retry-After is taken for: a day (a daily limit's reset is at most
# that far); beyond it, or not a number at all, the header says nothing usable.
RETRY_AFTER_MAX = 24 * 3600.0


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date), at most a day."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):
            return None
        return wait_until(when)
    return bounded_wait(seconds)


def wait_until(when: dt.datetime) -> float | None:
    """Seconds from now until ``when`` (UTC if it has no zone), as ``bounded_wait`` takes."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return bounded_wait((when - dt.datetime.now(dt.UTC)).total_seconds())


def bounded_wait(seconds: float) -> float | None:
    """A wait a server asked for, from none to a day (RETRY_AFTER_MAX); None if no number."""
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX)


def with_missing_bcc(raw: bytes, rcpt_to: tuple[str, ...]) -> bytes:
    """Return ``raw`` with headers that name exactly the envelope's recipients.

    The Gmail and Graph APIs deliver to the addresses in To, Cc and Bcc (and
    strip Bcc), not to an SMTP-style envelope. A message whose headers name
    every recipient and no one else is returned unchanged, byte for byte; one
    that leaves a recipient out gets a Bcc header for them. One that names
    someone not on the envelope (a message some of whose recipients already
    have it, sent again for the others) has its To, Cc and Bcc written anew
    with those on the envelope only: nobody gets it twice.
    """
    from email.parser import HeaderParser
    from email.policy import compat32

    # The header block as UTF-8 text: international addresses are written
    # there as they are (RFC 6532), and must be found as written.
    end = raw.find(b"\r\n\r\n")
    block = raw[: end if end >= 0 else len(raw)].decode("utf-8", "replace")
    headers = HeaderParser(policy=compat32).parsestr(block, headersonly=True)
    named = {
        addr.lower()
        for field in _RECIPIENT_FIELDS
        for _, addr in email.utils.getaddresses([str(v) for v in headers.get_all(field, [])])
        if addr
    }
    wanted = {r.lower() for r in rcpt_to}
    newline = b"\r\n" if b"\r\n" in raw[: raw.find(b"\n") + 1 or len(raw)] else b"\n"
    if not named <= wanted:
        return _addressed_anew(raw, block, rcpt_to, newline)
    missing = [r for r in rcpt_to if r.lower() not in named]
    if not missing:
        return raw
    return b"Bcc: " + ", ".join(missing).encode("utf-8") + newline + raw


def _host(url: str) -> str:
    """Where ``url`` points, as sentences name it: its host and port, without the user
    part (``user:password@``) an address may carry."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


_RECIPIENT_FIELDS = ("to", "cc", "bcc")


def _addressed_anew(raw: bytes, block: str, rcpt_to: tuple[str, ...], newline: bytes) -> bytes:
    """``raw`` with To naming those of ``rcpt_to`` its To and Cc named (with their names),
    Bcc the rest of ``rcpt_to``, and no other To, Cc or Bcc."""
    from email import policy
    from email.parser import HeaderParser

    from cpmail.compose import Mailbox, address_header

    parsed = HeaderParser(policy=policy.default).parsestr(block, headersonly=True)
    names: dict[str, str] = {}
    for field in ("to", "cc"):
        for header in parsed.get_all(field, []):
            for a in header.addresses:
                names.setdefault(a.addr_spec.lower(), a.display_name)
    shown = [Mailbox(r, names[r.lower()]) for r in rcpt_to if r.lower() in names]
    hidden = [Mailbox(r) for r in rcpt_to if r.lower() not in names]
    written = [address_header(n, boxes) for n, boxes in (("To", shown), ("Bcc", hidden)) if boxes]
    new = b"".join(w.folded.replace("\r\n", newline.decode()).encode("utf-8") for w in written)
    # The header block's fields, each with its continuation lines; those of To, Cc and
    # Bcc give way to the new ones, where the first of them stood.
    end = raw.find(newline + newline)
    head, body = (raw[:end], raw[end:]) if end >= 0 else (raw, b"")
    out: list[bytes] = []
    dropping = False
    for line in head.split(newline):
        if line[:1] not in (b" ", b"\t"):  # a field starts: is it one to drop?
            field = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
            dropping = field in _RECIPIENT_FIELDS
            if dropping and new:
                out.append(new)
                new = b""
        if not dropping:
            out.append(line + newline)
    return new + b"".join(out)[: -len(newline)] + body


class Poster:
    """POSTs whose whole answer must come in time, or they are given up.

    httpx's timeout applies to each read: a server (or a proxy) that trickles
    its answer a byte at a time would hold a message, and a run being stopped,
    for as long as it likes. So each POST runs on a thread of its own and is
    given ``seconds`` for the answer, plus the time the message takes to upload
    at ``UPLOAD_BYTES_PER_SECOND``. A POST given up before its status came is
    deferred as possibly sent; its connection is closed by its own thread once
    it ends, and the next POST goes over a new one. Once the status came, it
    is the answer, whatever becomes of the body after it.
    """

    def __init__(self, seconds: float, *, service: str) -> None:
        self.seconds = seconds
        self.service = service  # as network errors name it
        self._client = self._new_client()

    def _new_client(self) -> httpx.Client:
        timeout = httpx.Timeout(self.seconds, connect=15.0)
        return httpx.Client(timeout=timeout, verify=https_context())

    def post(self, url: str, *, size: int, **kwargs: Any) -> httpx.Response:
        """POST to ``url`` a body of ``size`` bytes: Unreachable when nothing answers,
        NoAnswer when no status came in time, TemporaryFailure when cut off before it."""
        host = _host(url)
        limit = self.seconds + size / UPLOAD_BYTES_PER_SECOND
        try:
            return self._within(limit, url, kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise Unreachable(self._not_reached(host, e)) from None
        except httpx.TimeoutException as e:
            raise NoAnswer(
                f"{self.service} did not answer in time ({type(e).__name__}){RESENT}.",
                maybe_sent=True,
            ) from None
        except TimeoutError:
            raise NoAnswer(
                f"{self.service} did not answer whole within {limit:g} s{RESENT}.",
                maybe_sent=True,
            ) from None
        except httpx.TransportError as e:
            raise TemporaryFailure(
                f"{self.service} did not answer properly ({type(e).__name__}){RESENT}.",
                maybe_sent=True,
            ) from None

    def _not_reached(self, host: str, e: httpx.TransportError) -> str:
        """Why nothing went: the network, or a certificate this machine does not trust (a
        proxy that inspects HTTPS, say), which no check of the network would find."""
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"the certificate of {self.service} at {host} could not be verified "
                f"({cause.verify_message}), so nothing was sent; a proxy that inspects HTTPS "
                "needs its authority trusted (SSL_CERT_FILE)."
            )
        if isinstance(cause, ssl.SSLError):
            return (
                f"TLS with {self.service} at {host} failed ({cause.reason or cause}), so "
                "nothing was sent; check the network and its proxy."
            )
        return f"cannot reach {self.service} at {host} ({type(e).__name__}); check the network."

    def _within(self, seconds: float, url: str, kwargs: dict[str, Any]) -> httpx.Response:
        """The answer: its status once it came, with its body if that came whole in time.

        The status line is the server's answer: a 2xx says it has the message
        whatever then becomes of the body (cut off, trickled, not decodable), and
        a refusal is a refusal; only a status that never came leaves it unknown.
        """
        client = self._client
        head: list[httpx.Response] = []  # the status and headers, once they came

        def post() -> httpx.Response:
            response = client.send(client.build_request("POST", url, **kwargs), stream=True)
            head.append(response)
            try:
                response.read()
            except (httpx.TransportError, httpx.DecodingError):
                return without_body(response)
            finally:
                response.close()
            return response

        try:
            return within(seconds, post, then=client.close)
        except TimeoutError:
            self._client = self._new_client()  # the old one is closed once its POST ends
            if head:
                return without_body(head[0])
            raise

    def close(self) -> None:
        self._client.close()


def is_page(response: httpx.Response) -> bool:
    """Whether an answer is a web page (markup: HTML, XHTML, XML), which neither Gmail nor
    Graph ever answers with: a proxy's sign-in or block page, a captive portal, another
    server. Judged by the body alone: a body-less 2xx is the API's, whatever its type says."""
    return response.content[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def without_body(response: httpx.Response) -> httpx.Response:
    """``response``'s status and headers, with no body (it did not come whole, or could
    not be decoded)."""
    dropped = {"content-encoding", "content-length", "transfer-encoding"}
    return httpx.Response(
        response.status_code,
        headers=[(k, v) for k, v in response.headers.multi_items() if k.lower() not in dropped],
        content=b"",
        request=response.request,
        extensions={"reason_phrase": response.extensions.get("reason_phrase", b"")},
    )
