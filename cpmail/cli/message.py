"""`cpmail message manager|helpdesk|bug|wish`: write to people who can help."""

from __future__ import annotations

import json
import re
import sys
import uuid
from typing import TYPE_CHECKING, Any

import typer

from cpmail.cli.common import Ctx, ctx_of
from cpmail.errors import ConfigError, InputError
from cpmail.settings import KEYS, Settings
from cpmail.settings import redact as redact_urls

if TYPE_CHECKING:
    from cpmail.people import Sender

KINDS = ("manager", "helpdesk", "bug", "wish")
EVENT = "message"
MASK = "••••"
SUBJECT_WORDS = 70  # characters of the first line used as a subject

# A setting whose name says it holds a secret is never shown, whatever its flag.
_SECRET_NAME = re.compile(r"pass(word|code|wd)?|secret|token|api_?key|credential|private", re.I)
_QUERY_SECRET = re.compile(
    r"((?:pass(?:word|code)?|secret|token|key|sig|signature)=)[^&\s]+", re.IGNORECASE
)
_TOKEN = re.compile(r"^[A-Za-z0-9_\-.+/=~]{20,}$")


def looks_like_token(text: str) -> bool:
    """True for a long run of letters and digits with no spaces: an API key, a bearer token."""
    if not _TOKEN.match(text) or text.startswith(("/", "~", ".")) or "://" in text:
        return False
    return any(ch.isdigit() for ch in text) and any(ch.isalpha() for ch in text)


def redact(key: str, value: Any) -> str:
    """One setting's value as shown in a bug report: secrets and token-like text as ••••."""
    spec = KEYS.get(key)
    if (spec is not None and spec.secret) or _SECRET_NAME.search(key.rsplit(".", 1)[-1]):
        return MASK if value not in ("", None, []) else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_redact_text(str(v)) for v in value) + "]"
    if isinstance(value, str):
        return _redact_text(value)
    return json.dumps(value)


def _redact_text(text: str) -> str:
    if looks_like_token(text):
        return json.dumps(MASK, ensure_ascii=False)
    text = redact_urls(text)  # a URL's password, found by parsing the URL
    text = _QUERY_SECRET.sub(rf"\g<1>{MASK}", text)
    return json.dumps(text, ensure_ascii=False)


def diagnostics(settings: Settings) -> str:
    """The block a bug report ends with: versions, platform, transport, redacted settings."""
    import platform

    from cpmail import __version__

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
    return "\n".join(lines) + "\n"


def _recipient(settings: Settings, kind: str) -> tuple[str, str]:
    if kind == "manager":
        address = str(settings["manager.email"]).strip()
        if not address:
            raise ConfigError(
                "no system manager address is set; run "
                "`cpmail config manager --name NAME --email ADDRESS`."
            )
        return address, str(settings["manager.name"]).strip()
    address = str(settings["helpdesk.email"]).strip()
    if not address:
        raise ConfigError(
            "no help desk address is set; run `cpmail config helpdesk --email ADDRESS`."
        )
    return address, "Help desk"


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= SUBJECT_WORDS else line[: SUBJECT_WORDS - 1].rstrip() + "…"


def _subject(settings: Settings, kind: str, given: str | None, text: str, who: str) -> str:
    from cpmail.compose import subject_line

    if kind == "bug":
        return f"[Bug] {given or _first_line(text)}"
    if kind == "wish":
        return f"[Wish list] {given or _first_line(text)}"
    agency = str(settings["agency.name"]).strip()
    at = f" at {agency}" if agency else ""
    default = f"Message from {who}{at}" if kind == "manager" else f"Help request from {who}{at}"
    return subject_line(settings, given or default)


def _author(c: Ctx, sender: Sender, as_staff: str | None) -> tuple[str, str]:
    """(name, address to reply to) of the person writing; in one-account mode, ``--as``."""
    from cpmail.people import get
    from cpmail.secrets import SHARED

    if sender.account != SHARED:
        return sender.name, sender.address
    staff_id = as_staff or str(c.settings["user.staff"])
    if not staff_id:
        return sender.name or sender.address, sender.address
    with c.engine().connect() as conn:
        row = get(conn, staff_id)
    return row.name, row.work_email or sender.address


def message(
    ctx: typer.Context,
    kind: str = typer.Argument(..., metavar="manager|helpdesk|bug|wish", help="Who to write to."),
    text: str | None = typer.Argument(None, metavar="TEXT", help="What to say (or use --stdin)."),
    subject: str | None = typer.Option(None, "--subject", help="Subject line."),
    stdin: bool = typer.Option(False, "--stdin", help="Read the text from standard input."),
    as_staff: str | None = typer.Option(None, "--as", help="Send as this staff member."),
) -> None:
    """Write to the system manager or the help desk, or report a bug or a wish."""
    from cpmail.compose import Mailbox, build_message
    from cpmail.people import resolve_sender
    from cpmail.sending import send_message

    c = ctx_of(ctx)
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; write to one of: {', '.join(KINDS)}.")
    if text is not None and stdin:
        raise InputError("give the TEXT or --stdin, not both.")
    if text is None and not stdin:
        raise InputError(f'say something: `cpmail message {kind} "TEXT"` or --stdin.')
    body = sys.stdin.read() if stdin else (text or "")
    if not body.strip():
        raise InputError("the message is empty; nothing was sent.")
    s = c.settings
    address, name = _recipient(s, kind)
    engine = c.engine()
    sender = resolve_sender(s, engine, as_staff)
    author, reply_to = _author(c, sender, as_staff)
    agency = str(s["agency.name"]).strip()
    signature = "\n".join(x for x in (author, reply_to, agency) if x)
    full = f"{body.rstrip()}\n\n-- \n{signature}\n"
    if kind == "bug":
        full += "\n" + diagnostics(s)
    msg = build_message(
        sender=Mailbox(sender.address, sender.name),
        to=[Mailbox(address, name)],
        subject=_subject(s, kind, subject, body, author),
        text=full,
        event=EVENT,
        key=f"{EVENT}:{uuid.uuid4().hex}",
        auto_generated=False,
    )
    draft, _ = send_message(
        engine,
        s,
        c.secrets,
        msg,
        event=EVENT,
        account=sender.account,
        envelope_from=sender.address,
        what=f"the message to {address}",
    )
    transport = s["mail.transport"]
    where = f" (written to {s.mail_dir})" if transport == "file" else ""
    c.say(f"Sent {draft.subject!r} to {address} from {sender.address} via {transport}{where}.")


def register(app: typer.Typer) -> None:
    """Add the message command to the root app."""
    app.command("message")(message)
