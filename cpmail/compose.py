"""Build e-mail messages: text + HTML alternatives, attachments, and the headers of SPEC §7.

Nothing from data can add a header or a recipient, on any Python version:

- cpmail writes every header of its own (From, To, Reply-To, Subject, Date,
  Message-ID, References, In-Reply-To, X-Cpmail-Event, …) and each
  attachment's Content-Disposition itself; the ``email`` package never
  parses a value that came from data, so it cannot decode data as an RFC 2047
  encoded-word (some patch releases decode ``=?utf-8?q?=0D=0ABcc:…?=`` into a
  line break and write it out raw).
- Text (a subject, a display name) has CR, LF, NUL and other line breaks
  replaced by spaces. A word that is not plain printable ASCII, or that holds
  ``=?``, is written as encoded-words of the literal text, so a mail program
  shows exactly what was typed; an attachment's file name is then written as
  an RFC 2231 parameter (``filename*=utf-8''…``).
- Addresses are checked (``cpmail.addresses.check_address``) and written as
  stored, in UTF-8 when they are international (RFC 6532): never an
  encoded-word inside an address. The message then needs SMTPUTF8, which the
  envelope's international address asks for.
- Header lines fold at 76 characters (a very long address is the exception,
  still far below RFC 5322's 998); base64 and quoted-printable body lines are
  at most 76 characters (RFC 2045), attachments included.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import random
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime
from functools import lru_cache
from typing import NamedTuple, TypeVar

from cpmail.addresses import (
    check_address,
    clean_header_text,
    mailbox_key,
    normal_address,
    valid_address,
)
from cpmail.errors import InputError
from cpmail.settings import Settings

# RFC 2045's limit for base64 and quoted-printable lines; header lines fold
# within it too (RFC 2047 asks that for lines holding encoded-words).
_LINE = 76
POLICY = policy.SMTP.clone(max_line_length=_LINE)
# For a message with an international address in its headers (RFC 6532).
POLICY_UTF8 = POLICY.clone(utf8=True)
_CRLF = b"\r\n"


@dataclass(frozen=True)
class Mailbox:
    """A display name and an address (checked when the message is built)."""

    address: str
    name: str = ""


@dataclass(frozen=True)
class Attachment:
    """A file attached to a message.

    ``mime_type`` may carry parameters: ``text/calendar; method=REQUEST``.
    """

    filename: str
    content: bytes
    mime_type: str = "application/octet-stream"


def first_reply_to(candidates: Sequence[Mailbox], sender: str) -> Mailbox | None:
    """The first of ``candidates`` a reply can usefully go to, or None.

    Replying to the sending mailbox (or to the one person it is) helps nobody;
    an address that does not parse is no help; an international one would make
    the message need SMTPUTF8 of every server it passes.
    """
    for box in candidates:
        address = box.address
        if address.lower() != sender.lower() and address.isascii() and valid_address(address):
            return box
    return None


def subject_line(settings: Settings, subject: str) -> str:
    """``[C&P] Subject``: ``subject`` after ``[mail] subject_prefix`` (alone when that is blank)."""
    prefix = settings["mail.subject_prefix"].strip()
    return f"{prefix} {subject}" if prefix else subject


def message_id_for(key: str, domain: str) -> str:
    """A Message-ID derived from the ledger key: the same on every retry."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def thread_id_for(thread: str, domain: str) -> str:
    """The per-thread id (e.g. one per job) that related messages refer to."""
    digest = hashlib.sha256(thread.encode("utf-8")).hexdigest()[:24]
    return f"<thread-{digest}@{domain}>"


def _domain(address: str) -> str:
    """The sender's domain for Message-IDs, in ASCII (punycode for an international one)."""
    domain = address.strip().rpartition("@")[2].lower()
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            domain = ""
    return domain or "cpmail.invalid"


# ---------------------------------------------------------------- header values
#
# A header is a list of tokens joined by single spaces; folding puts a line
# break before any of those spaces, so unfolding gives the same text back.

# In unstructured text an encoded-word at most this long keeps "X-Cpmail-Event: "
# and one word within 76. In a display name a word may take RFC 2047's 75: the
# email package's reader shows a space between two encoded-words of a phrase
# (RFC 2047 says to ignore it), so a long name is best cut in few pieces.
_EW_MAX = 60
_EW_PHRASE = 75
_EW_WRAP = len("=?utf-8?q??=")
_SPACES = ("_", b" ")  # a space, Q-encoded or as a byte
_P = TypeVar("_P", str, bytes)
# RFC 2047 5(3): in a phrase, Q-encoded text may keep only these characters.
_Q_LITERAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
# A word of unstructured text written as it is: printable ASCII, short.
_PLAIN_WORD = re.compile(r"[!-~]{1,60}\Z")
# An atom of a display name (RFC 5322 atext).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,60}\Z")
# A display name written as one quoted-string: printable ASCII, single spaces.
_QUOTABLE = re.compile(r"[!-~]+(?: [!-~]+)*\Z")


def _q_char(ch: str) -> str:
    if ch == " ":
        return "_"
    if ch in _Q_LITERAL:
        return ch
    return "".join(f"={b:02X}" for b in ch.encode("utf-8"))


def _encoded_words(text: str, size: int = _EW_MAX) -> list[str]:
    """``text`` as RFC 2047 encoded-words (UTF-8), none splitting a character.

    Where the text must go in several words, each break comes after a space
    (kept at the end of the word before it) when one is near: a reader that
    wrongly shows the blank between two encoded-words then shows only an
    extra space, never one inside a word.
    """
    room = size - _EW_WRAP
    data = text.encode("utf-8")
    q = [_q_char(ch) for ch in text]
    if sum(map(len, q)) <= 4 * -(-len(data) // 3):
        return [f"=?utf-8?q?{''.join(w)}?=" for w in _split(q, len, room)]
    pieces = [ch.encode("utf-8") for ch in text]
    return [
        f"=?utf-8?b?{base64.b64encode(b''.join(w)).decode('ascii')}?="
        for w in _split(pieces, len, room // 4 * 3)
    ]


def _split(pieces: list[_P], size: Callable[[_P], int], room: int) -> list[list[_P]]:
    """Cut ``pieces`` into runs of at most ``room``, preferably just after a space."""
    runs: list[list[_P]] = []
    run: list[_P] = []
    used = 0
    for piece in pieces:
        n = size(piece)
        if run and used + n > room:
            cut = max((i + 1 for i, p in enumerate(run) if p in _SPACES), default=len(run))
            if sum(map(size, run[cut:])) + n > room:  # one word longer than a whole run
                cut = len(run)
            runs.append(run[:cut])
            run = run[cut:]
            used = sum(map(size, run))
        run.append(piece)
        used += n
    runs.append(run)
    return runs


def _text_tokens(text: str, plain: re.Pattern[str] = _PLAIN_WORD, size: int = _EW_MAX) -> list[str]:
    """Text as tokens that read back as exactly ``text``.

    Words that match ``plain`` (and hold no ``=?``) stay as they are; every
    run of other words (non-ASCII, holding ``=?``, long, or next to extra
    spaces) becomes encoded-words of its literal text, spaces included.
    """
    if not text:
        return []
    pieces = text.split(" ")
    encode = [plain.match(p) is None or "=?" in p for p in pieces]
    for i, p in enumerate(pieces):
        if not p:  # a space next to another space, or at an end: keep it inside a word
            encode[i + 1 if i + 1 < len(pieces) else max(i - 1, 0)] = True
    tokens: list[str] = []
    i = 0
    while i < len(pieces):
        if not encode[i]:
            tokens.append(pieces[i])
            i += 1
            continue
        j = i
        while j < len(pieces) and encode[j]:
            j += 1
        tokens.extend(_encoded_words(" ".join(pieces[i:j]), size))
        i = j
    return tokens


def _phrase_tokens(name: str) -> list[str]:
    """A display name: atoms, one quoted-string, or atoms and encoded-words of the rest."""
    if "=?" not in name and len(name) <= _EW_MAX - 2 and _QUOTABLE.match(name):
        if all(_ATOM.match(p) for p in name.split(" ")):
            return name.split(" ")
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _text_tokens(name, _ATOM, _EW_PHRASE)


def _fold(name: str, tokens: Sequence[str], *, wrap_first: bool = False) -> str:
    """``Name: tok tok …`` with CRLF, folded before a token that would pass 76 characters.

    The first token stays on the line of the name unless ``wrap_first`` (for
    address headers, where white space may start the value).
    """
    lines: list[str] = []
    line = f"{name}:"
    for n, tok in enumerate(tokens):
        if (n or wrap_first) and len(line) + 1 + len(tok) > _LINE:
            lines.append(line)
            line = " " + tok
        else:
            line += " " + tok
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


class _Written(str):
    """A header value cpmail wrote itself.

    Stored in an EmailMessage, it is written out exactly as folded here (the
    email package folds an object with a ``name`` by calling its ``fold``);
    ``str()`` is the value a reader sees, ``addresses`` the mailboxes of an
    address header.
    """

    name: str
    folded: str
    addresses: tuple[Address, ...]
    defects: tuple[()] = ()

    def __new__(
        cls, name: str, value: str, folded: str, addresses: tuple[Address, ...] = ()
    ) -> _Written:
        self = super().__new__(cls, value)
        self.name = name
        self.folded = folded
        self.addresses = addresses
        return self

    def fold(self, *, policy: Policy) -> str:
        return self.folded.replace("\r\n", policy.linesep)


def _text_header(name: str, text: str) -> _Written:
    return _Written(name, text, _fold(name, _text_tokens(text)))


def _plain_header(name: str, value: str) -> _Written:
    return _Written(name, value, _fold(name, value.split(" ")))


@lru_cache(maxsize=4096)
def _mailbox(address: str, name: str) -> tuple[tuple[str, ...], Address]:
    """The tokens of one mailbox (``phrase <addr>`` or ``addr``) and its Address."""
    addr = check_address(address.strip())  # the normal form: one mailbox, one spelling
    local, _, domain = addr.rpartition("@")
    display = clean_header_text(name).strip()
    try:
        parsed = Address(display_name=display, username=local, domain=domain)
    except (ValueError, IndexError) as e:
        raise InputError(f"{address!r} cannot be used as an address: {e}.") from None
    if not display:
        return (addr,), parsed
    return (*_phrase_tokens(display), f"<{addr}>"), parsed


def address_header(name: str, boxes: Sequence[Mailbox]) -> _Written:
    """An address header (To, Reply-To …) naming ``boxes``, written and folded by cpmail."""
    tokens: list[str] = []
    addresses: list[Address] = []
    for i, box in enumerate(boxes):
        toks, parsed = _mailbox(box.address, box.name)
        if i:
            tokens[-1] += ","
        tokens.extend(toks)
        addresses.append(parsed)
    value = ", ".join(str(a) for a in addresses)
    return _Written(name, value, _fold(name, tokens, wrap_first=True), tuple(addresses))


def _headers(
    *,
    sender: Mailbox,
    to: Sequence[Mailbox],
    subject: str,
    event: str,
    key: str,
    thread: str | None,
    date: dt.datetime | None,
    auto_generated: bool,
    reply_to: Mailbox | None,
) -> list[_Written]:
    """The message's own headers, in order, each written and folded by cpmail."""
    if not to:
        raise InputError("a message needs at least one recipient.")
    domain = _domain(sender.address)
    head = [address_header("From", [sender]), address_header("To", _dedupe(to))]
    if reply_to is not None:
        head.append(address_header("Reply-To", [reply_to]))
    head.append(_text_header("Subject", clean_header_text(subject).strip()))
    when = (date or dt.datetime.now().astimezone()).replace(microsecond=0)
    head.append(_plain_header("Date", _date(when)))
    head.append(_plain_header("Message-ID", message_id_for(key, domain)))
    if thread:
        root = thread_id_for(thread, domain)
        head.append(_plain_header("References", root))
        head.append(_plain_header("In-Reply-To", root))
    if auto_generated:
        head.append(_plain_header("Auto-Submitted", "auto-generated"))
        head.append(_plain_header("X-Auto-Response-Suppress", "All"))
    head.append(_text_header("X-Cpmail-Event", clean_header_text(event).strip()))
    return head


@lru_cache(maxsize=16)
def _date(when: dt.datetime) -> str:
    """The Date header's value (RFC 5322); a run writes thousands in the same few seconds."""
    return format_datetime(when)


def _needs_utf8(head: Sequence[_Written]) -> bool:
    return not all(h.folded.isascii() for h in head)


# RFC 2231 attr-char: what a parameter value may hold without percent-encoding.
_ATTR_CHAR = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
# A file name written as a quoted-string: printable ASCII, single spaces, no quote or backslash.
_PLAIN_FILENAME = re.compile(r"[!#-\[\]-~]+(?: [!#-\[\]-~]+)*\Z")


def _disposition(filename: str) -> _Written:
    """``Content-Disposition: attachment; filename=…``, the name exactly as given."""
    name = clean_header_text(filename).strip()
    tokens = ["attachment"]
    if name and "=?" not in name and len(name) <= 50 and _PLAIN_FILENAME.match(name):
        tokens = ["attachment;", f'filename="{name}"']
    elif name:
        # One piece a character, so that no segment ends inside one (RFC 2231 allows
        # it, but a reader that decodes each segment alone shows garbage).
        escaped = [
            "".join(chr(b) if b in _ATTR_CHAR else f"%{b:02X}" for b in ch.encode("utf-8"))
            for ch in name
        ]
        chunks, cur = [], ""
        for piece in escaped:
            if cur and len(cur) + len(piece) > 50:
                chunks.append(cur)
                cur = ""
            cur += piece
        chunks.append(cur)
        if len(chunks) == 1:
            tokens = ["attachment;", f"filename*=utf-8''{chunks[0]}"]
        else:
            tokens = ["attachment;"]
            for i, chunk in enumerate(chunks):
                prefix = "utf-8''" if i == 0 else ""
                end = ";" if i < len(chunks) - 1 else ""
                tokens.append(f"filename*{i}*={prefix}{chunk}{end}")
    folded = _fold("Content-Disposition", tokens)
    return _Written("Content-Disposition", " ".join(tokens), folded)


def _mime_type(text: str) -> tuple[str, str, dict[str, str]]:
    """``type/subtype; key=value …`` -> (type, subtype, parameters)."""
    kind, *rest = (p.strip() for p in text.split(";"))
    maintype, _, subtype = kind.partition("/")
    params = {}
    for p in rest:
        k, _, v = p.partition("=")
        if k.strip():
            params[k.strip()] = v.strip().strip('"')
    return maintype or "application", subtype or "octet-stream", params


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
    head = _headers(
        sender=sender,
        to=to,
        subject=subject,
        event=event,
        key=key,
        thread=thread,
        date=date,
        auto_generated=auto_generated,
        reply_to=reply_to,
    )
    msg = EmailMessage(policy=POLICY_UTF8 if _needs_utf8(head) else POLICY)
    for h in head:
        msg[h.name] = h
    msg.set_content(text if text.endswith("\n") else text + "\n", cte="quoted-printable")
    if html is not None:
        msg.add_alternative(html, subtype="html", cte="quoted-printable")
    for att in attachments:
        maintype, subtype, params = _mime_type(att.mime_type)
        msg.add_attachment(
            att.content,
            maintype=maintype,
            subtype=subtype,
            disposition="attachment",
            params=params or None,
        )
        parts = msg.get_payload()
        assert isinstance(parts, list) and isinstance(parts[-1], EmailMessage)
        part = parts[-1]
        part.replace_header("Content-Disposition", _disposition(att.filename))
    return msg


def _dedupe(boxes: Sequence[Mailbox]) -> list[Mailbox]:
    seen: set[str] = set()
    out = []
    for b in boxes:
        k = mailbox_key(b.address)  # one mailbox, however it is written
        if k not in seen:
            seen.add(k)
            out.append(b)
    return out


def readdressed(raw: bytes, changes: Mapping[str, str]) -> bytes:
    """``raw`` with the addresses of ``changes`` in its To and Cc headers replaced (a staff
    member's address corrected while their mail waited); everything else byte for byte.

    cpmail writes an address as one token (``<addr>``, or ``addr`` alone), in its
    normal form, never folded inside: each is found whole, in either spelling.
    """
    end = raw.find(b"\r\n\r\n")
    if end < 0 or not changes:
        return raw
    forms = {
        f.encode(): new.encode() for old, new in changes.items() for f in (old, normal_address(old))
    }
    alternatives = b"|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    # ``<addr>``, or ``addr`` making up a whole item of the list
    found = re.compile(
        rb"(?<=<)(" + alternatives + rb")(?=>)"
        rb"|(?<=[:,])(\s*)(" + alternatives + rb")(?=\s*(?:,|$))"
    )

    def swap(m: re.Match[bytes]) -> bytes:
        if m.group(1) is not None:
            return forms[m.group(1)]
        return m.group(2) + forms[m.group(3)]

    fields = re.split(rb"\r\n(?![ \t])", raw[:end])  # each field with its folded lines
    for i, f in enumerate(fields):
        if f.split(b":", 1)[0].strip().lower() in (b"to", b"cc"):
            parts = re.split(rb'("(?:[^"\\]|\\.)*")', f)  # never inside a quoted name
            parts[::2] = [found.sub(swap, p) for p in parts[::2]]
            fields[i] = b"".join(parts)
    return b"\r\n".join(fields) + raw[end:]


def to_bytes(msg: EmailMessage) -> bytes:
    """The message as sent on the wire (CRLF; UTF-8 headers when an address needs them)."""
    return msg.as_bytes(policy=POLICY_UTF8 if getattr(msg.policy, "utf8", False) else POLICY)


@dataclass
class Draft:
    """A composed message, ready to queue."""

    event: str
    key: str | None  # ledger key; None for one-off messages (reports, tests)
    account: str  # whose credentials send it: staff ID, "shared" or ""
    from_addr: str
    to: list[str]
    subject: str
    message_id: str
    raw: bytes
    not_after: dt.datetime | None = None  # (UTC, naive) not sent after this: it no longer matters
    staff: tuple[str | None, ...] = ()  # the staff member each address of ``to`` is of, if any

    @classmethod
    def from_message(
        cls, msg: EmailMessage, *, event: str, key: str | None, account: str, envelope_from: str
    ) -> Draft:
        to = [a.addr_spec for a in msg["To"].addresses]
        return cls(
            event=event,
            key=key,
            account=account,
            from_addr=envelope_from,
            to=to,
            subject=str(msg["Subject"]),
            message_id=str(msg["Message-ID"]),
            raw=to_bytes(msg),
        )


# ---------------------------------------------------------------- the bulk path


class Composed(NamedTuple):
    """A message as it goes on the wire, with the two header values the outbox lists."""

    raw: bytes
    subject: str
    message_id: str


# binascii.b2a_qp can leave a line of 77 characters (white space it encodes at a
# line end); such lines are cut again, between whole characters and =XX escapes.
_QP_LONG = re.compile(rb"^[^\n]{77,}$", re.M)
_QP_TOKEN = re.compile(rb"=[0-9A-F]{2}|[^\n]", re.S)


def _qp(text: str) -> bytes:
    """Quoted-printable body with CRLF line ends, lines of at most 76 characters (RFC 2045)."""
    data = b"\n".join(text.encode("utf-8").splitlines()) + b"\n"
    encoded = binascii.b2a_qp(data, istext=True)
    if _QP_LONG.search(encoded):
        encoded = _QP_LONG.sub(lambda m: _rewrap(m.group(0)), encoded)
    return encoded.replace(b"\n", _CRLF)


def _rewrap(line: bytes) -> bytes:
    """One over-long quoted-printable line as lines of at most 76, joined by soft breaks."""
    tokens = _QP_TOKEN.findall(line)
    soft = tokens[-1] == b"="  # a lone '=' at the end: the line already ends in a soft break
    if soft:
        tokens.pop()
    lines, cur = [], b""
    for tok in tokens:
        if len(cur) + len(tok) > 75:
            lines.append(cur + b"=")
            cur = b""
        cur += tok
    lines.append(cur + (b"=" if soft else b""))
    return b"\n".join(lines)


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
    header into a tree and folding it again. Here the same headers as
    ``build_message`` writes, the MIME structure and the quoted-printable
    bodies are joined directly; a message with attachments is built by
    ``build_message``.
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
    written = _headers(
        sender=sender,
        to=to,
        subject=subject,
        event=event,
        key=key,
        thread=thread,
        date=date,
        auto_generated=auto_generated,
        reply_to=reply_to,
    )
    charset = "utf-8" if _needs_utf8(written) else "ascii"
    head = [h.folded.encode(charset) for h in written]
    subject_text = next(str(h) for h in written if h.name == "Subject")
    message_id = next(str(h) for h in written if h.name == "Message-ID")
    if html is None:
        body = _text_part("plain", text, mime_version=True)
        return Composed(b"".join(head + body), subject_text, message_id)
    plain = b"".join(_text_part("plain", text, mime_version=False))
    rich = b"".join(_text_part("html", html, mime_version=True))
    boundary = _boundary((plain, rich))
    delimiter = f"--{boundary}\r\n".encode("ascii")
    head.append(b"MIME-Version: 1.0\r\n")
    head.append(
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'.encode("ascii")
    )
    parts = [_CRLF, delimiter, plain, _CRLF, delimiter, rich, _CRLF]
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return Composed(b"".join(head + parts), subject_text, message_id)
