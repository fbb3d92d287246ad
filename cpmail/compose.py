"""Build e-mail messages: text + HTML alternatives, attachments, and the headers of SPEC §7.

Header values are built with the standard library's ``email`` package (policy
SMTP). Text from agency data that goes into a header has CR, LF and NUL
replaced by spaces; addresses are parsed strictly, so nothing from data can
add a header or a recipient.
"""

from __future__ import annotations

import binascii
import datetime as dt
import hashlib
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from typing import NamedTuple

from cpmail.addresses import check_address, clean_header_text
from cpmail.errors import InputError

# CRLF line endings. Headers fold only past RFC 5322's hard limit of 998: folding
# at 78 makes the stdlib break a long subject straight after "Subject:".
_MAX_LINE = 998
POLICY = policy.SMTP.clone(max_line_length=_MAX_LINE)


@dataclass(frozen=True)
class Mailbox:
    """A display name and an address (checked when the message is built)."""

    address: str
    name: str = ""

    def header(self) -> Address:
        addr = _checked(self.address)
        local, _, domain = addr.rpartition("@")
        try:
            return Address(
                display_name=clean_header_text(self.name).strip(), username=local, domain=domain
            )
        except (ValueError, IndexError) as e:
            raise InputError(f"{self.address!r} cannot be used as an address: {e}.") from None


@lru_cache(maxsize=4096)
def _checked(address: str) -> str:
    # The same few senders appear on every message of a run: validate each once.
    return check_address(address)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    mime_type: str = "application/octet-stream"


def message_id_for(key: str, domain: str) -> str:
    """A Message-ID derived from the ledger key: the same on every retry."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def thread_id_for(thread: str, domain: str) -> str:
    """The per-thread id (e.g. one per job) that related messages refer to."""
    digest = hashlib.sha256(thread.encode("utf-8")).hexdigest()[:24]
    return f"<thread-{digest}@{domain}>"


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() or "cpmail.invalid"


def build_message(
    *,
    sender: Mailbox,
    to: Sequence[Mailbox],
    subject: str,
    text: str,
    html: str | None = None,
    event: str,
    key: str,
    thread: str | None = None,
    attachments: Sequence[Attachment] = (),
    date: dt.datetime | None = None,
    auto_generated: bool = True,
    reply_to: Mailbox | None = None,
) -> EmailMessage:
    """Return a complete message.

    ``key`` is the ledger key (or another unique key) the Message-ID derives
    from; ``thread`` groups messages about one thing (``job:J100``) through
    References and In-Reply-To. ``auto_generated`` adds RFC 3834's
    Auto-Submitted and X-Auto-Response-Suppress (notifications, not reports a
    person sends).
    """
    if not to:
        raise InputError("a message needs at least one recipient.")
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender.header()
    msg["To"] = [m.header() for m in _dedupe(to)]
    if reply_to is not None:
        msg["Reply-To"] = reply_to.header()
    msg["Subject"] = clean_header_text(subject).strip()
    msg["Date"] = format_datetime(date or dt.datetime.now().astimezone())
    domain = _domain(sender.address)
    msg["Message-ID"] = message_id_for(key, domain)
    if thread:
        root = thread_id_for(thread, domain)
        msg["References"] = root
        msg["In-Reply-To"] = root
    if auto_generated:
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Cpmail-Event"] = clean_header_text(event)
    msg.set_content(text if text.endswith("\n") else text + "\n", cte="quoted-printable")
    if html is not None:
        msg.add_alternative(html, subtype="html", cte="quoted-printable")
    for att in attachments:
        maintype, _, subtype = att.mime_type.partition("/")
        msg.add_attachment(
            att.content,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=clean_header_text(att.filename),
        )
    return msg


def _dedupe(boxes: Sequence[Mailbox]) -> list[Mailbox]:
    seen: set[str] = set()
    out = []
    for b in boxes:
        k = b.address.strip().lower()
        if k not in seen:
            seen.add(k)
            out.append(b)
    return out


def to_bytes(msg: EmailMessage) -> bytes:
    """The message as sent on the wire (CRLF)."""
    return msg.as_bytes(policy=POLICY)


# ---------------------------------------------------------------- the bulk path


class Composed(NamedTuple):
    """A message as it goes on the wire, with the two header values the outbox lists."""

    raw: bytes
    subject: str
    message_id: str


# A header value that the email package would write back unchanged: printable
# ASCII, no encoded-word marker, no runs or edges of white space. Anything else
# (non-ASCII names, long subjects) is built and folded by the email package.
_PLAIN_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*\Z")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\Z")
_CRLF = b"\r\n"


def _header(name: str, value: object) -> bytes:
    """One header line (folded if need be) exactly as the email package writes it."""
    if isinstance(value, str) and _plain(name, value):
        return f"{name}: {value}\r\n".encode("ascii")
    return POLICY.fold_binary(name, POLICY.header_factory(name, value))


def _plain(name: str, value: str) -> bool:
    return (
        _PLAIN_VALUE.match(value) is not None
        and "=?" not in value
        and len(name) + len(value) + 2 <= _MAX_LINE
    )


def _address_header(name: str, boxes: Sequence[Mailbox]) -> bytes:
    heads = [b.header() for b in boxes]
    if all(_plain_address(a) for a in heads):
        value = ", ".join(str(a) for a in heads)
        if len(name) + len(value) + 2 <= _MAX_LINE:
            return f"{name}: {value}\r\n".encode("ascii")
    return POLICY.fold_binary(name, POLICY.header_factory(name, heads))


def _plain_address(a: Address) -> bool:
    return (not a.display_name or _PLAIN_NAME.match(a.display_name) is not None) and (
        _PLAIN_ADDRESS.match(a.addr_spec) is not None
        and ".." not in a.username
        and not a.username.startswith(".")
        and not a.username.endswith(".")
        and "=?" not in a.display_name
    )


def _qp(text: str) -> bytes:
    """Quoted-printable body with CRLF line ends, lines of at most 76 characters (RFC 2045)."""
    data = b"\n".join(text.encode("utf-8").splitlines()) + b"\n"
    return binascii.b2a_qp(data, istext=True).replace(b"\n", _CRLF)


def _text_part(subtype: str, text: str, *, mime_version: bool) -> list[bytes]:
    lines = [
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode("ascii"),
        b"Content-Transfer-Encoding: quoted-printable\r\n",
    ]
    if mime_version:
        lines.append(b"MIME-Version: 1.0\r\n")
    return [*lines, _CRLF, _qp(text)]


def _boundary(parts: Sequence[bytes]) -> str:
    while True:
        boundary = "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="
        if not any(boundary.encode("ascii") in p for p in parts):
            return boundary


def compose(
    *,
    sender: Mailbox,
    to: Sequence[Mailbox],
    subject: str,
    text: str,
    html: str | None = None,
    event: str,
    key: str,
    thread: str | None = None,
    attachments: Sequence[Attachment] = (),
    date: dt.datetime | None = None,
    auto_generated: bool = True,
    reply_to: Mailbox | None = None,
) -> Composed:
    """Return what ``to_bytes(build_message(...))`` would send, without an EmailMessage.

    For ``cpmail check``, which writes thousands of messages a run: building and
    flattening an EmailMessage costs 2-3 ms, nearly all of it parsing every
    header into a tree and folding it again. Here the headers, MIME structure
    and quoted-printable bodies are written directly; a header value that is
    not plain ASCII (or is long) is still built and folded by the email
    package, and a message with attachments is built by ``build_message``.
    """
    if attachments:
        msg = build_message(
            sender=sender,
            to=to,
            subject=subject,
            text=text,
            html=html,
            event=event,
            key=key,
            thread=thread,
            attachments=attachments,
            date=date,
            auto_generated=auto_generated,
            reply_to=reply_to,
        )
        return Composed(to_bytes(msg), str(msg["Subject"]), str(msg["Message-ID"]))
    if not to:
        raise InputError("a message needs at least one recipient.")
    subject = clean_header_text(subject).strip()
    domain = _domain(sender.address)
    message_id = message_id_for(key, domain)
    head = [_address_header("From", [sender]), _address_header("To", _dedupe(to))]
    if reply_to is not None:
        head.append(_address_header("Reply-To", [reply_to]))
    if _plain("Subject", subject):
        head.append(f"Subject: {subject}\r\n".encode("ascii"))
    else:
        folded = POLICY.header_factory("Subject", subject)
        subject = str(folded)
        head.append(POLICY.fold_binary("Subject", folded))
    head.append(_header("Date", format_datetime(date or dt.datetime.now().astimezone())))
    head.append(_header("Message-ID", message_id))
    if thread:
        root = thread_id_for(thread, domain)
        head.append(_header("References", root))
        head.append(_header("In-Reply-To", root))
    if auto_generated:
        head.append(b"Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: All\r\n")
    head.append(_header("X-Cpmail-Event", clean_header_text(event)))
    if html is None:
        body = _text_part("plain", text, mime_version=True)
        return Composed(b"".join(head + body), subject, message_id)
    plain = b"".join(_text_part("plain", text, mime_version=False))
    rich = b"".join(_text_part("html", html, mime_version=True))
    boundary = _boundary((plain, rich))
    delimiter = f"--{boundary}\r\n".encode("ascii")
    head.append(b"MIME-Version: 1.0\r\n")
    head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode("ascii"))
    parts = [_CRLF, delimiter, plain, _CRLF, delimiter, rich, _CRLF]
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return Composed(b"".join(head + parts), subject, message_id)
