"""`cpmail report` and `cpmail send-report`: PDFs of invoices, estimates, POs and cash flow."""

from __future__ import annotations

from pathlib import Path

import typer

from cpmail.cli.common import ctx_of, parse_date, read_stdin_text, split_list
from cpmail.errors import InputError

_KINDS = "invoice, estimate, purchase-order or cash-flow"


def report(
    ctx: typer.Context,
    kind: str = typer.Argument(..., metavar="KIND", help=f"Which report: {_KINDS}."),
    id: str | None = typer.Argument(
        None,
        metavar="ID",
        help="Billing id or number, estimate or purchase-order id (none for cash-flow).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The PDF file to write."),
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        metavar="YYYY-MM-DD",
        help="Date the report looks at (default: today).",
    ),
) -> None:
    """Render a report as a PDF file."""
    from cpmail import reports

    c = ctx_of(ctx)
    day = parse_date(as_of, option="--as-of") if as_of is not None else None
    dest = c.output_file(out)
    rep = reports.load(c.engine(), c.settings, kind, id=id, as_of=day)
    reports.write(reports.render(rep, c.settings), dest)
    c.say(f"Wrote {rep.label} to {out}.")


def send_report(
    ctx: typer.Context,
    file: Path | None = typer.Argument(
        None, metavar="FILE.pdf", help="The PDF to send (or use --report)."
    ),
    kind: str | None = typer.Option(
        None, "--report", metavar="KIND", help=f"Render this report now and send it: {_KINDS}."
    ),
    id: str | None = typer.Option(
        None, "--id", help="The id of the report to render (for an invoice: or its number)."
    ),
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        metavar="YYYY-MM-DD",
        help="Date a rendered report looks at (default: today).",
    ),
    to: list[str] | None = typer.Option(
        None,
        "--to",
        metavar="R[,R…]",
        help="E-mail addresses or staff IDs (default: the client's billing e-mail, the vendor's).",
    ),
    subject: str | None = typer.Option(None, "--subject", help="Subject line."),
    message: str | None = typer.Option(None, "--message", help="Text of the covering note."),
    message_file: Path | None = typer.Option(
        None, "--message-file", help="Read the covering note from this file ('-': stdin)."
    ),
    as_staff: str | None = typer.Option(None, "--as", help="Send as this staff member."),
) -> None:
    """E-mail a report as a PDF attachment."""
    from cpmail.reports.send import send_report as send

    c = ctx_of(ctx)
    if message is not None and message_file is not None:
        raise InputError("give --message or --message-file, not both.")
    text = message
    if message_file is not None:
        text = _read_text(message_file)
    s = c.settings
    outcome = send(
        c.engine(),
        s,
        c.secrets,
        file=file,
        kind=kind,
        id=id,
        as_of=parse_date(as_of, option="--as-of") if as_of is not None else None,
        to=split_list(to),
        subject=subject,
        text=text,
        as_staff=as_staff,
    )
    who = ", ".join(r.address for r in outcome.recipients)
    transport = s["mail.transport"]
    where = f" (written to {s.mail_dir})" if transport == "file" else ""
    c.say(f"Sent {outcome.filename} to {who} from {outcome.sender.address} via {transport}{where}.")


def _read_text(path: Path) -> str:
    if str(path) == "-":
        return read_stdin_text()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--message-file {path} does not exist.") from None
    except UnicodeDecodeError:
        raise InputError(f"--message-file {path} is not UTF-8 text.") from None
    except OSError as e:
        raise InputError(f"--message-file {path}: {e.strerror}.") from None


def register(app: typer.Typer) -> None:
    """Add the report commands to the root app."""
    app.command("report")(report)
    app.command("send-report")(send_report)
