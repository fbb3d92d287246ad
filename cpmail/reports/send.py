"""`send-report`: check a PDF and its recipients, then send it through the outbox.

Every check happens before anything is queued: a refused report leaves no
trace in the outbox or the log, and nothing reaches a transport.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cpmail.addresses import check_address, clean_header_text, looks_like_address, mailbox_key
from cpmail.compose import Attachment, Mailbox, build_message, first_reply_to, subject_line
from cpmail.errors import ConfigError, InputError
from cpmail.people import Sender, resolve_sender
from cpmail.reports import Report, kind_of_pdf, load, render, write
from cpmail.secrets import SHARED, SecretStore
from cpmail.sending import send_message
from cpmail.settings import Settings
from cpmail.sizes import size_pair
from cpmail.store.schema import client_team, jobs, staff

EVENT = "report"
CASH_FLOW_ACCESS = "cash-flow"
MB = 1_000_000  # [mail] max_attachment_mb counts in MB of a million bytes, as size_text does


@dataclass(frozen=True)
class Recipient:
    address: str
    name: str = ""
    staff_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What `send-report` sent: the file, to whom, from whom (a failure raises instead)."""

    filename: str
    recipients: Sequence[Recipient]
    sender: Sender


def check_pdf(path: Path, *, max_bytes: int) -> bytes:
    """Return the file's bytes, or raise InputError: missing, empty, too large, not a PDF."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{path} does not exist.") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}.") from None
    if not path.is_file():
        raise InputError(f"{path} is not a file.")
    if size == 0:
        raise InputError(f"{path} is empty; render the report again.")
    if size > max_bytes:
        shown, most = size_pair(size, max_bytes)
        raise InputError(
            f"{path} is {shown}, more than the {most} an attachment may be "
            "([mail] max_attachment_mb)."
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}.") from None
    if not data.startswith(b"%PDF-"):
        raise InputError(f"{path} is not a PDF (it does not start with %PDF-).")
    return data


def _access(row: Any) -> set[str]:
    return {p.strip().lower() for p in (row.access or "").split(",") if p.strip()}


def _who(row: Any) -> str:
    return f"{row.id} ({row.name})"


def resolve_recipients(conn: sa.Connection, specs: Sequence[str]) -> list[Recipient]:
    """Staff IDs and addresses -> recipients; an unknown ID or a bad address is an InputError."""
    out: list[Recipient] = []
    by_mailbox: dict[str, Any] | None = None
    for spec in specs:
        if looks_like_address(spec):
            address = check_address(spec, where="--to")
            if by_mailbox is None:  # staff by mailbox, however each address is written
                rows = conn.execute(sa.select(staff).where(staff.c.work_email.is_not(None)))
                by_mailbox = {}
                for member in rows:
                    by_mailbox.setdefault(mailbox_key(member.work_email), member)
            row = by_mailbox.get(mailbox_key(address))
            out.append(Recipient(address, row.name if row else "", row.id if row else None))
            continue
        row = conn.execute(sa.select(staff).where(staff.c.id == spec)).first()
        if row is None:
            raise InputError(
                f"--to {spec}: no staff member with that ID and not an e-mail address; "
                "see `cpmail staff list`."
            )
        if not row.work_email:
            raise InputError(
                f"--to {spec}: staff member {_who(row)} has no work e-mail; "
                f"run `cpmail staff edit {row.id} --work-email ADDRESS`."
            )
        address = check_address(row.work_email, where=f"staff {row.id} work_email")
        out.append(Recipient(address, row.name, row.id))
    seen: set[str] = set()
    unique = []
    for r in out:  # one copy per mailbox, however it is written
        if mailbox_key(r.address) not in seen:
            seen.add(mailbox_key(r.address))
            unique.append(r)
    return unique


def check_cash_flow(
    conn: sa.Connection,
    settings: Settings,
    sender: Sender,
    as_staff: str | None,
    recipients: Sequence[Recipient],
) -> None:
    """Refuse unless the person sending and every recipient are staff with cash-flow access."""
    rule = "the cash-flow report goes only to staff with cash-flow access, sent by staff with it"
    if sender.account == SHARED:
        asker = as_staff or settings["user.staff"]
        if not asker:
            raise ConfigError(
                "with one-account mode on, say who is sending the cash-flow report: "
                "give --as STAFF or set [user] staff (`cpmail config set user.staff JD`)."
            )
    else:
        asker = sender.account
    row = conn.execute(sa.select(staff).where(staff.c.id == asker)).first()
    if row is None:
        raise InputError(f"--as {asker}: no staff member with that ID; see `cpmail staff list`.")
    if CASH_FLOW_ACCESS not in _access(row) or not row.active:
        raise InputError(
            f"{rule}: the sender {_who(row)} does not have cash-flow access "
            f"(`cpmail staff edit {row.id} --access cash-flow`)."
        )
    outside = [r.address for r in recipients if r.staff_id is None]
    if outside:
        raise InputError(
            f"{rule}: {', '.join(outside)} is not a staff member's work e-mail; "
            "name staff by ID with --to."
        )
    lacking = []
    for r in recipients:
        row = conn.execute(sa.select(staff).where(staff.c.id == r.staff_id)).one()
        if CASH_FLOW_ACCESS not in _access(row) or not row.active:
            lacking.append(_who(row))
    if lacking:
        verb = "does" if len(lacking) == 1 else "do"
        raise InputError(f"{rule}: {' and '.join(lacking)} {verb} not have cash-flow access.")


def default_subject(
    settings: Settings, label: str, *, outside: bool = False, sender: Sender | None = None
) -> str:
    """``Invoice 10234 from Acme Agency``: the document and who it is from.

    Mail within the agency starts with ``[mail] subject_prefix``; mail that
    goes outside (a client, a vendor) does not: the prefix means nothing there.
    """
    agency = settings["agency.name"].strip() or (sender.name.strip() if sender else "")
    text = f"{label} from {agency}" if agency else label
    return text if outside else subject_line(settings, text)


def _reply_candidates(
    conn: sa.Connection, settings: Settings, report: Report | None
) -> list[Mailbox]:
    """Who answers a reply: the account executive of the report's job, else the system manager."""
    out: list[Mailbox] = []
    job_id = report.job_id if report is not None else None
    if job_id:
        q = (
            sa.select(staff.c.work_email, staff.c.name)
            .select_from(
                jobs.join(client_team, client_team.c.client_id == jobs.c.client_id).join(
                    staff, staff.c.id == client_team.c.staff_id
                )
            )
            .where(
                jobs.c.id == job_id,
                sa.func.lower(client_team.c.role) == "ae",
                staff.c.active.is_(True),
                staff.c.work_email.is_not(None),
            )
            .order_by(staff.c.id)
        )
        out += [Mailbox(r.work_email, r.name or "") for r in conn.execute(q)]
    if settings["manager.email"]:
        out.append(Mailbox(settings["manager.email"], settings["manager.name"]))
    return out


def default_text(report: Report | None, filename: str, sender: Sender, settings: Settings) -> str:
    """A short covering note for the attachment."""
    if report is None:
        body = f"Please find {filename} attached."
    elif report.kind == "cash-flow":
        body = (
            f"Attached is the {report.label[0].lower()}{report.label[1:]}: cash, accounts "
            "receivable and accounts payable.\nIt is confidential; please do not forward it."
        )
    else:
        about = f" for {report.about}" if report.about else ""
        body = f"Please find {report.label[0].lower()}{report.label[1:]}{about} attached."
    agency = settings["agency.name"].strip()
    sign = "\n".join(x for x in dict.fromkeys([sender.name.strip(), agency]) if x)
    return f"Hello,\n\n{body}\n\nBest regards,\n{sign}\n" if sign else f"Hello,\n\n{body}\n"


def send_report(
    engine: sa.Engine,
    settings: Settings,
    secrets: SecretStore,
    *,
    file: Path | None = None,
    kind: str | None = None,
    id: str | None = None,
    as_of: dt.date | None = None,
    to: Sequence[str] = (),
    subject: str | None = None,
    text: str | None = None,
    as_staff: str | None = None,
) -> Outcome:
    """Send ``file`` (or report ``kind`` rendered now) as a PDF attachment."""
    if (file is None) == (kind is None):
        raise InputError("give either a FILE.pdf or --report KIND, not both and not neither.")
    if file is not None and (id is not None or as_of is not None):
        raise InputError("--id and --as-of go with --report KIND, not with a FILE.")
    max_bytes = settings["mail.max_attachment_mb"] * MB
    sender = resolve_sender(settings, engine, as_staff)

    report: Report | None = None
    data = b""
    if kind is not None:
        report = load(engine, settings, kind, id=id, as_of=as_of)
        doc_kind: str | None = report.kind
        filename = report.filename
    else:
        assert file is not None
        data = check_pdf(file, max_bytes=max_bytes)
        doc_kind = kind_of_pdf(data)
        # A file's name may hold bytes that are not UTF-8: shown as U+FFFD in the mail.
        filename = file.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    with engine.connect() as conn:
        recipients = resolve_recipients(conn, to)
        if not recipients and report is not None and report.recipients:
            where = f"the address {report.label} goes to by default"
            recipients = [Recipient(check_address(a, where=where), n) for a, n in report.recipients]
        if not recipients:
            why = f"{report.no_recipient}; " if report is not None and report.no_recipient else ""
            raise InputError(f"no recipient: {why}give --to ADDRESS or --to STAFF.")
        if doc_kind == "cash-flow":
            check_cash_flow(conn, settings, sender, as_staff, recipients)
        reply_to = first_reply_to(_reply_candidates(conn, settings, report), sender.address)

    if report is not None:
        # Rendered to a file first, so that what is sent passed the same checks as a FILE.
        with tempfile.TemporaryDirectory(prefix="cpmail-report-") as tmp:
            path = Path(tmp) / filename
            write(render(report, settings), path)
            data = check_pdf(path, max_bytes=max_bytes)

    msg = build_message(
        sender=Mailbox(sender.address, sender.name),
        to=[Mailbox(r.address, r.name) for r in recipients],
        reply_to=reply_to,
        subject=(subject if subject and subject.strip() else "")  # (spaces only: the default)
        or default_subject(
            settings,
            report.label if report else filename,
            outside=any(r.staff_id is None for r in recipients),
            sender=sender,
        ),
        text=text if text and text.strip() else default_text(report, filename, sender, settings),
        event=EVENT,
        key=f"report:{uuid.uuid4().hex}",
        attachments=[Attachment(filename, data, "application/pdf")],
        auto_generated=False,
    )
    send_message(
        engine,
        settings,
        secrets,
        msg,
        event=EVENT,
        account=sender.account,
        envelope_from=sender.address,
        what=f"{clean_header_text(filename)} to {', '.join(r.address for r in recipients)}",
        attachment=filename,
    )
    return Outcome(clean_header_text(filename), recipients, sender)  # shown on one line
