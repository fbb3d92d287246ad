"""`cpmail message manager|helpdesk|bug|wish`: write to people who can help."""

from __future__ import annotations

import typer

from cpmail.cli.common import ctx_of, read_stdin_text
from cpmail.errors import InputError


def message(
    ctx: typer.Context,
    kind: str = typer.Argument(..., metavar="manager|helpdesk|bug|wish", help="Who to write to."),
    text: str | None = typer.Argument(None, metavar="TEXT", help="What to say (or use --stdin)."),
    subject: str | None = typer.Option(None, "--subject", help="Subject line."),
    stdin: bool = typer.Option(False, "--stdin", help="Read the text from standard input."),
    as_staff: str | None = typer.Option(None, "--as", help="Send as this staff member."),
) -> None:
    """Write to the system manager or the help desk, or report a bug or a wish."""
    from cpmail.message import check_kind, write

    c = ctx_of(ctx)
    check_kind(kind)
    if text is not None and stdin:
        raise InputError("give the TEXT or --stdin, not both.")
    if text is None and not stdin:
        raise InputError(f'say something: `cpmail message {kind} "TEXT"` or --stdin.')
    body = read_stdin_text() if stdin else (text or "")
    s = c.settings
    sent = write(s, c.secrets, c.engine, kind, body, subject=subject, as_staff=as_staff)
    transport = s["mail.transport"]
    where = f" (written to {s.mail_dir})" if transport == "file" else ""
    c.say(f"Sent {sent.subject!r} to {sent.to} from {sent.sender} via {transport}{where}.")


def register(app: typer.Typer) -> None:
    """Add the message command to the root app."""
    app.command("message")(message)
