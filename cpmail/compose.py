"""Build e-mail messages: text + HTML alternatives, attachments, and the headers of SPEC §7.

Header values are built with the standard library's ``email`` package (policy
SMTP). Text from agency data that goes into a header has CR, LF and NUL
replaced by spaces; addresses are parsed strictly, so nothing from data can
add a header or a recipient.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from cpmail.addresses import check_address, clean_header_text
from cpmail.errors import InputError

# CRLF line endings. Headers fold only past RFC 5322's hard limit of 998: folding
# at 78 makes the stdlib break a long subject straight after "Subject:".
POLICY = policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class Mailbox:
    """A display name and an address (checked when the message is built)."""

    address: str
    name: str = ""

    def header(self) -> Address:
        addr = check_address(self.address)
        local, _, domain = addr.rpartition("@")
        try:
            return Address(
                display_name=clean_header_text(self.name).strip(), username=local, domain=domain
            )
        except (ValueError, IndexError) as e:
            raise InputError(f"{self.address!r} cannot be used as an address: {e}.") from None


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
