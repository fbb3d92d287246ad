"""What the user reads when SMTP goes wrong: one sentence each, with the fix named.

The mechanism (connections, transactions) is in ``cpmail.transports.smtp``;
the words are here, so that they can be read, and changed, in one place.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import aiosmtplib

from cpmail.errors import (
    MAIL_STAYS,
    RESENT,
    AuthError,
    NoAnswer,
    PermanentFailure,
    TemporaryFailure,
    Unreachable,
)
from cpmail.secrets import SHARED, Secret
from cpmail.transports.base import Envelope

if TYPE_CHECKING:
    from cpmail.transports.smtp import SMTPConfig

Provider = Literal["google", "microsoft"]

_GOOGLE_HOSTS = ("gmail", "googlemail", "google.com")
_MICROSOFT_HOSTS = ("office365", "outlook", "hotmail", "live.com", "microsoft")
_MICROSOFT_CODES = ("5.7.30", "5.7.139", "5.7.57", "5.7.3 ")


@dataclass
class Login:
    """How a group of messages logs in: the account, the user name and its passcode."""

    account: str
    user: str
    passcode: Secret


def provider_of(host: str, answer: str = "") -> Provider | None:
    """Guess whether ``host`` (or the server's ``answer``) is Gmail or Microsoft 365."""
    name = host.lower()
    if any(part in name for part in _GOOGLE_HOSTS):
        return "google"
    if any(part in name for part in _MICROSOFT_HOSTS):
        return "microsoft"
    text = answer.lower() + " "
    if any(code in text for code in _MICROSOFT_CODES) or "outlook" in text:
        return "microsoft"
    if "google" in text or "gmail" in text:
        return "google"
    return None


def account_flag(account: str) -> str:
    return "--shared" if account == SHARED else account


def sign_in_advice(provider: Provider, account: str) -> str:
    """Say which sign-in this provider needs and the commands that set it up."""
    signin = f"`cpmail staff signin {account_flag(account or 'ID')}`"
    if provider == "google":
        return (
            'Gmail takes no ordinary passwords over SMTP and needs "Sign in with Google" '
            f"(or an app password): run `cpmail config gmail --client-secrets FILE`, "
            f"then {signin}"
        )
    return (
        "Microsoft 365 turns passcode logins over SMTP off and needs "
        f'"Sign in with Microsoft": run `cpmail config microsoft --client-id ID`, '
        f"then {signin}"
    )


def auth_failure_message(
    address: str, host: str, account: str, user: str, code: int | None, answer: str
) -> str:
    """Explain a refused login in one sentence: who, what the server said, what to do."""
    said = f"{code} {answer}" if code else answer
    head = f"the SMTP server {address} refused the login of {user} ({who(account)}): {said}"
    provider = provider_of(host, said)
    if provider is not None:
        return f"{head}; {sign_in_advice(provider, account)}."
    if code is not None and 400 <= code < 500:
        return f"{head}; the server is busy, try again later."
    hint = f"check the passcode with `cpmail staff passcode {account_flag(account)}`"
    if "5.7.8" in said:
        hint += (
            '; if this is Gmail or Microsoft 365, it needs "Sign in with Google/Microsoft": '
            "see `cpmail config gmail` or `cpmail config microsoft`"
        )
    return f"{head}; {hint}."


def words_of(code: int, message: str) -> str:
    """The server's answer on one line, as it goes into the log."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return f"{code} {text}".strip()


def who(account: str) -> str:
    return "the shared account" if account == SHARED else f"staff {account}"


def failure(code: int, what: str, where: str) -> TemporaryFailure | PermanentFailure:
    text = f"the SMTP server {where} {what}"
    return TemporaryFailure(text) if 400 <= code < 500 else PermanentFailure(text)


def timed_out(where: str, timeout: float, after: str) -> TemporaryFailure:
    return NoAnswer(f"the SMTP server {where} did not answer {after} within {timeout:g} s{RESENT}.")


# Answers that concern the sending account or this machine, not a recipient:
# every message from the account would meet them. Relay denied as Postfix, Exchange
# ("Unable to relay") and qmail ("not in my list of allowed rcpthosts") say it; a
# sender not allowed as Exchange Online ("5.7.60 … does not have permissions to send
# as this sender") and others say it.
_ACCOUNT_REFUSAL = re.compile(
    r"relay(ing)?\b.{0,20}(denied|not permitted|prohibited|not allowed)|unable to relay|"
    r"list of allowed rcpthosts|"
    r"authenticat\w* (is )?required|must (authenticate|log ?in)|not authenticated|"
    r"sender address rejected|not owned by|not (authorized|allowed|permitted) to send|"
    r"sender (address )?(is )?not (authori[sz]ed|allowed|permitted)|"
    r"permissions? to send as|send(ing)? as\b.{0,40}\bnot (authori[sz]ed|allowed|permitted)|"
    r"client host rejected|access denied|\b5\.7\.0\b|\b5\.7\.57\b|\b5\.7\.60\b",
    re.IGNORECASE,
)


def account_refusal(code: int, words: str) -> bool:
    """True when a permanent refusal is about who sends, not to whom."""
    return code == 530 or (500 <= code < 600 and bool(_ACCOUNT_REFUSAL.search(words)))


# What a line the server broke off raises, once it was made.
_BROKEN_OFF = (
    aiosmtplib.SMTPServerDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


def unreachable(
    e: BaseException, stage: str, cfg: SMTPConfig, scrub: Callable[[str], str]
) -> Unreachable:
    """Turn a failure while opening the connection into one sentence for the user."""
    where = cfg.address
    timeout = f"{cfg.timeout:g}"
    cause = e.__cause__ if isinstance(e, aiosmtplib.SMTPConnectError) else None
    if isinstance(e, aiosmtplib.SMTPConnectResponseError):
        advice = (
            "try again later"
            if 400 <= e.code < 500
            else "check mail.smtp.host and mail.smtp.port, or ask its administrator "
            "to accept mail from this machine"
        )
        return Unreachable(
            f"the SMTP server {where} turned the connection away: "
            f"{scrub(words_of(e.code, e.message))}; {advice}."
        )
    if isinstance(e, aiosmtplib.SMTPConnectTimeoutError):
        tls_hint = (
            ""
            if cfg.security == "ssl"
            else ", and if this port expects TLS from the start (usually 465) run "
            "`cpmail config set mail.smtp.security ssl`"
        )
        return Unreachable(
            f"no answer from the SMTP server {where} within {timeout} s; check "
            f"mail.smtp.host, mail.smtp.port and any firewall{tls_hint}."
        )
    tls_error = cause if isinstance(cause, ssl.SSLError) else e
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        reason = tls_error.verify_message or tls_error.reason or "not trusted"
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            return Unreachable(
                f"the certificate of the SMTP server {where} is not for the name "
                f"{cfg.host!r} ({reason}); set mail.smtp.host to a name the "
                "certificate covers (`cpmail config set mail.smtp.host NAME`)."
            )
        return Unreachable(
            f"the certificate of the SMTP server {where} could not be verified "
            f"({reason}); set mail.smtp.ca_file to the PEM file of the CA that signed "
            "it, or, only on a network you trust, run "
            "`cpmail config set mail.smtp.verify false`."
        )
    if isinstance(tls_error, ssl.SSLError):
        other = "starttls" if cfg.security == "ssl" else "ssl"
        return Unreachable(
            f"the TLS handshake with the SMTP server {where} failed "
            f"({tls_error.reason or tls_error}); check mail.smtp.port and "
            f"mail.smtp.security (try `cpmail config set mail.smtp.security {other}`)."
        )
    if isinstance(cause, socket.gaierror):
        return Unreachable(
            f"the SMTP server name {cfg.host!r} could not be found; check "
            "mail.smtp.host and this machine's DNS."
        )
    if isinstance(cause, ConnectionRefusedError) or (
        isinstance(cause, OSError) and "connection refused" in str(cause).lower()
    ):
        return Unreachable(
            f"the SMTP server {where} refused the connection; check mail.smtp.host and "
            "mail.smtp.port, and that the server is running."
        )
    if isinstance(cause, _BROKEN_OFF):
        # The connection was made: the server dropped it (a reset or a close) before it
        # greeted, as one over its limit or turning this machine away without a word does.
        tls = (
            "; if the port does not expect TLS from the start (587 is usually starttls), "
            "check mail.smtp.security and mail.smtp.port"
            if cfg.security == "ssl"
            else ""
        )
        return Unreachable(
            f"the SMTP server {where} broke off the connection at {stage} "
            f"({getattr(cause, 'strerror', None) or cause}); it may be busy, or not take "
            f"connections from this machine: try again later, or ask its administrator{tls}."
        )
    if isinstance(cause, OSError):
        return Unreachable(
            f"cannot connect to the SMTP server {where} "
            f"({cause.strerror or cause}); check mail.smtp.host, mail.smtp.port and "
            "the network."
        )
    if isinstance(e, aiosmtplib.SMTPTimeoutError):
        return Unreachable(
            f"the SMTP server {where} did not answer {stage} within {timeout} s; "
            "try again later, or raise mail.smtp.timeout."
        )
    if isinstance(e, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError):
        return Unreachable(
            f"the SMTP server {where} closed the connection during {stage}; check "
            "mail.smtp.security and mail.smtp.port (465 is usually ssl, 587 starttls)."
        )
    if isinstance(e, aiosmtplib.SMTPResponseException):
        # A 4xx (421 busy or too many connections, 454 TLS not available now) is the
        # server's state, not this machine's settings.
        busy = 400 <= e.code < 500
        return Unreachable(
            f"the SMTP server {where} refused {stage}: {scrub(words_of(e.code, e.message))}; "
            + ("the server is busy, try again later." if busy else "check mail.smtp.security.")
        )
    if isinstance(e, OSError):
        return Unreachable(
            f"cannot talk to the SMTP server {where} ({e.strerror or e}); check the "
            "network and try again."
        )
    detail = getattr(e, "message", None) or str(e) or type(e).__name__
    return Unreachable(f"cannot use the SMTP server {where}: {scrub(str(detail))}.")


def refused_account(env: Envelope, words: str, cfg: SMTPConfig, login: Login | None) -> AuthError:
    """The sentence for a refusal that concerns the sending account; its fix named."""
    where = cfg.address
    provider = provider_of(cfg.host, words)
    flag = account_flag(env.account or "ID")
    if login is None:
        advice = (
            sign_in_advice(provider, env.account)
            if provider is not None
            else f"set a passcode with `cpmail staff passcode {flag}` (or ask the "
            "server's administrator to relay mail from this machine)"
        )
        return AuthError(
            f"the SMTP server {where} will not send mail from {env.mail_from} without a "
            f"login: {words}; {advice}. {MAIL_STAYS}"
        )
    advice = (
        sign_in_advice(provider, env.account)
        if provider is not None
        else f"check that {login.user} may send as {env.mail_from} on this "
        f"server, or fix the passcode with `cpmail staff passcode {flag}`"
    )
    return AuthError(
        f"the SMTP server {where} refused mail from {env.mail_from} ({who(env.account)}) "
        f"for a reason that concerns the sender, not the recipient: {words}; {advice}. "
        f"{MAIL_STAYS}"
    )
