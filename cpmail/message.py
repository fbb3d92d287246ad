"""`cpmail message`: write to the system manager or the help desk, or report a bug or a wish.

The text is signed by the person writing (in one-account mode: ``--as`` or
``[user] staff``); a bug report ends with diagnostics, every secret in them
shown as ``••••``.
"""

from __future__ import annotations

import json
import platform
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cpmail import __version__
from cpmail.addresses import clean_header_text
from cpmail.compose import Mailbox, build_message, first_reply_to, subject_line
from cpmail.errors import ConfigError, InputError
from cpmail.people import Sender, get, resolve_sender
from cpmail.scrub import hide
from cpmail.secrets import SHARED, SecretStore
from cpmail.sending import send_message
from cpmail.settings import KEYS, Settings
from cpmail.settings import redact as redact_urls

KINDS = ("manager", "helpdesk", "bug", "wish")
EVENT = "message"
MASK = "••••"
SUBJECT_WORDS = 70  # characters of the first line used as a subject

# A setting whose name says it holds a secret is never shown, whatever its flag.
_SECRET_NAME = re.compile(r"pass(word|code|wd)?|secret|token|api_?key|credential|private", re.I)
_TOKEN = re.compile(r"^[A-Za-z0-9_\-.+/=~]{20,}$")


def looks_like_token(text: str) -> bool:
    """True for a long run of letters and digits with no spaces: an API key, a bearer token."""
    if not _TOKEN.match(text) or text.startswith(("/", "~", ".")) or "://" in text:
        return False
    return any(ch.isdigit() for ch in text) and any(ch.isalpha() for ch in text)


def redact(key: str, value: Any) -> str:
    """One setting's value as shown in a bug report: secrets and token-like text as ••••."""
    spec = KEYS.get(key)
    named = isinstance(value, str) and _SECRET_NAME.search(key.rsplit(".", 1)[-1])
    if (spec is not None and spec.secret) or named:  # (a number, token_days say, is no secret)
        return MASK if value not in ("", None, []) else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_redact_text(str(v)) for v in value) + "]"
    if isinstance(value, str):
        return _redact_text(value)
    return json.dumps(value)


def _redact_text(text: str) -> str:
    if looks_like_token(text):
        return json.dumps(MASK, ensure_ascii=False)
    # a URL's password (found by parsing the URL), its secret parameters, password=…
    return json.dumps(redact_urls(text), ensure_ascii=False)


def diagnostics(settings: Settings) -> str:
    """The block a bug report ends with: versions, platform, transport, redacted settings."""
    lines = [
        "---- diagnostics ----",
        f"cpmail {__version__}",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"Platform: {platform.platform()}",
        f"Transport: {settings['mail.transport']}",
        f"Database: {settings.db_url.split(':', 1)[0]}",
        f"Settings (secrets shown as {MASK}):",
    ]
    for key, value in settings.items():
        source = settings.source(key)
        where = "" if source == "default" else f"  # {source}"
        lines.append(f"  {key} = {redact(key, value)}{where}")
    return hide("\n".join(lines)) + "\n"  # (a secret known by value, wherever it sits)


def _recipient(settings: Settings, kind: str) -> tuple[str, str]:
    if kind == "manager":
        address = settings["manager.email"].strip()
        if not address:
            raise ConfigError(
                "no system manager address is set; run "
                "`cpmail config manager --name NAME --email ADDRESS`."
            )
        return address, settings["manager.name"].strip()
    address = settings["helpdesk.email"].strip()
    if not address:
        raise ConfigError(
            "no help desk address is set; run `cpmail config helpdesk --email ADDRESS`."
        )
    return address, "Help desk"


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= SUBJECT_WORDS else line[: SUBJECT_WORDS - 1].rstrip() + "…"


def _subject(settings: Settings, kind: str, given: str | None, text: str, who: str) -> str:
    # A subject that would show as nothing (spaces, line breaks) gives way to the default.
    given = given if given and clean_header_text(given).strip() else ""
    if kind == "bug":
        return f"[Bug] {given or _first_line(text)}"
    if kind == "wish":
        return f"[Wish list] {given or _first_line(text)}"
    agency = settings["agency.name"].strip()
    at = f" at {agency}" if agency else ""
    default = f"Message from {who}{at}" if kind == "manager" else f"Help request from {who}{at}"
    return subject_line(settings, given or default)


def _author(
    settings: Settings, engine: sa.Engine, sender: Sender, as_staff: str | None
) -> tuple[str, str]:
    """(name, address to reply to) of the person writing; in one-account mode, ``--as``."""
    if sender.account != SHARED:
        return sender.name, sender.address
    staff_id = as_staff or settings["user.staff"]
    if not staff_id:
        return sender.name or sender.address, sender.address
    with engine.connect() as conn:
        row = get(conn, staff_id)
    return row.name, row.work_email or sender.address


@dataclass(frozen=True)
class Sent:
    """What `cpmail message` sent: its subject, to whom, from whom."""

    subject: str
    to: str
    sender: str


def check_kind(kind: str) -> None:
    """Refuse a kind of message that is not one of ``KINDS``."""
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; write to one of: {', '.join(KINDS)}.")


def write(
    settings: Settings,
    secrets: SecretStore,
    engine: Callable[[], sa.Engine],
    kind: str,
    body: str,
    *,
    subject: str | None = None,
    as_staff: str | None = None,
) -> Sent:
    """Sign ``body``, add diagnostics to a bug, and send it now to whom ``kind`` goes to.

    ``engine`` gives the database, opened once the recipient is known.
    """
    check_kind(kind)
    if not body.strip():
        raise InputError("the message is empty; nothing was sent.")
    address, name = _recipient(settings, kind)
    db = engine()
    sender = resolve_sender(settings, db, as_staff)
    author, reply_to = _author(settings, db, sender, as_staff)
    agency = settings["agency.name"].strip()
    signature = "\n".join(x for x in (author, reply_to, agency) if x)
    full = f"{body.rstrip()}\n\n-- \n{signature}\n"
    if kind == "bug":
        full += "\n" + diagnostics(settings)
    msg = build_message(
        sender=Mailbox(sender.address, sender.name),
        to=[Mailbox(address, name)],
        # From a shared mailbox, the answer must reach the person who wrote.
        reply_to=first_reply_to([Mailbox(reply_to, author)], sender.address),
        subject=_subject(settings, kind, subject, body, author),
        text=full,
        event=EVENT,
        key=f"{EVENT}:{uuid.uuid4().hex}",
        auto_generated=False,
    )
    draft, _ = send_message(
        db,
        settings,
        secrets,
        msg,
        event=EVENT,
        account=sender.account,
        envelope_from=sender.address,
        what=f"the message to {address}",
    )
    return Sent(draft.subject, address, sender.address)
