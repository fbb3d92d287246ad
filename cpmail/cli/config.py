"""`cpmail config …`: the transport, the master switch, the manager, any setting."""

from __future__ import annotations

from typing import Any

import typer

from cpmail.cli.common import Ctx, ctx_of, emit_json, print_table
from cpmail.errors import InputError, UsageError
from cpmail.settings import shown

app = typer.Typer(
    help="Settings: transport, master switch, manager, any key.", no_args_is_help=True
)


def _save(c: Ctx, values: dict[str, Any]) -> None:
    """Validate every value first, then write the file once (all or nothing)."""
    s = c.settings
    for key, value in values.items():
        _check_staff_ids(c, key, s.set(key, value))
    s.save()
    for key in values:
        if s.source(key) == "env":
            c.note(f"Note: the environment variable for {key} overrides the file.")


def _check_staff_ids(c: Ctx, key: str, value: Any) -> None:
    """Refuse a staff ID that is not in the staff table (the database must exist)."""
    from cpmail.routing import check_named_staff, named_staff

    if not named_staff(key, value):
        return
    with c.engine().connect() as conn:
        check_named_staff(conn, {key: value})


# The port each kind of security is usually offered on (docs/smtp.md).
_USUAL_PORT = {"starttls": 587, "ssl": 465, "none": 25}


@app.command("smtp")
def smtp(
    ctx: typer.Context,
    host: str = typer.Option(..., "--host", help="SMTP server name."),
    port: int | None = typer.Option(
        None,
        "--port",
        show_default=False,
        help="Port (default: 587 for starttls, 465 for ssl, 25 for none).",
    ),
    security: str = typer.Option("starttls", "--security", help="starttls, ssl or none."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the server."),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="Do not verify the server's certificate (not recommended)."
    ),
) -> None:
    """Send through an SMTP server."""
    c = ctx_of(ctx)
    if not host.strip():
        raise UsageError("--host: give the SMTP server's name, such as mail.agency.example.")
    if port is None:  # TLS from the first byte on 587 would wait for an answer that never comes
        port = _USUAL_PORT.get(security.strip().lower(), 587)
    _save(
        c,
        {
            "mail.transport": "smtp",
            "mail.smtp.host": host,
            "mail.smtp.port": port,
            "mail.smtp.security": security,
            "mail.smtp.timeout": timeout,
            "mail.smtp.verify": not no_verify,
        },
    )
    c.say(f"Mail goes through {host}:{port} ({security}).")
    if no_verify:
        c.note("Warning: the server's certificate will not be checked.")
    c.say("Next: `cpmail staff passcode ID` for senders who log in, then `cpmail config test`.")


@app.command("file")
def file(
    ctx: typer.Context,
    dir: str = typer.Option("mail", "--dir", help="Folder for .eml files (relative to the home)."),
) -> None:
    """Write .eml files instead of sending."""
    c = ctx_of(ctx)
    _save(c, {"mail.transport": "file", "mail.file.dir": dir})
    c.say(f"Mail is written as .eml files to {c.settings.mail_dir}.")


@app.command("enable")
def enable(ctx: typer.Context) -> None:
    """Turn sending on (the master switch)."""
    c = ctx_of(ctx)
    _save(c, {"mail.enabled": True})
    c.say("Sending is on.")


@app.command("disable")
def disable(ctx: typer.Context) -> None:
    """Turn sending off: checks record what they would send as suppressed."""
    c = ctx_of(ctx)
    _save(c, {"mail.enabled": False})
    c.say("Sending is off: `cpmail check` records notifications as suppressed and sends nothing.")


@app.command("one-account")
def one_account(
    ctx: typer.Context,
    sender: str | None = typer.Option(None, "--sender", help="The address all mail is sent from."),
    off: bool = typer.Option(False, "--off", help="Send from each staff member's own account."),
) -> None:
    """Send all mail from one account (or --off)."""
    c = ctx_of(ctx)
    if off == (sender is not None):
        raise InputError("give either --sender ADDRESS or --off.")
    if off:
        _save(c, {"mail.one_account": False})
        c.say("Each staff member's mail is sent from their own account.")
        return
    _save(c, {"mail.one_account": True, "mail.sender": sender})
    c.say(f"All mail is sent from {sender}.")
    c.say("Next: `cpmail staff passcode --shared` or `cpmail staff signin --shared`.")


@app.command("manager")
def manager(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="The system manager's name."),
    email: str = typer.Option(..., "--email", help="The system manager's address."),
) -> None:
    """Set the system manager (gets failure summaries and `message manager`)."""
    c = ctx_of(ctx)
    _save(c, {"manager.name": name, "manager.email": email})
    c.say(f"System manager: {name} <{email}>.")


@app.command("helpdesk")
def helpdesk(
    ctx: typer.Context,
    email: str = typer.Option(..., "--email", help="The help desk's address."),
) -> None:
    """Set the help desk's address (for `message helpdesk|bug|wish`)."""
    c = ctx_of(ctx)
    _save(c, {"helpdesk.email": email})
    c.say(f"Help desk: {email}.")


# A negative number is a value here, not an option: `config set mail.pace.per_minute -1`.
@app.command("set", context_settings={"ignore_unknown_options": True})
def set_(
    ctx: typer.Context,
    key: str = typer.Argument(..., metavar="KEY", help="Dotted key, e.g. mail.digest."),
    value: str = typer.Argument(
        ..., metavar="VALUE", help="The value (lists: a,b or a TOML array)."
    ),
) -> None:
    """Set one setting by its dotted key (validated)."""
    c = ctx_of(ctx)
    _save(c, {key: value})
    c.say(f"{key} = {_show(shown(key, c.settings.get(key)))}")


@app.command("get")
def get(
    ctx: typer.Context, key: str = typer.Argument(..., metavar="KEY", help="Dotted key.")
) -> None:
    """Print one setting's effective value."""
    c = ctx_of(ctx)
    typer.echo(_show(shown(key, c.settings.get(key))))  # as stored: scripts read it


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


@app.command("show")
def show(
    ctx: typer.Context,
    json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Show the effective settings, where each comes from, and which secrets are stored."""
    c = ctx_of(ctx)
    s = c.settings
    rows = [
        {"key": k, "value": shown(k, v), "source": s.source(k)}
        for k, v in s.items()
        if not (k.startswith(("events.", "source.tables.")) and s.source(k) == "default")
    ]
    stored = _stored_secrets(c)
    if json:
        emit_json({"home": str(c.home), "settings": rows, "secrets": stored})
        return
    c.say(f"Home: {c.home}")
    print_table(
        c,
        [{**r, "value": _show(r["value"])} for r in rows],
        ["key", "value", "source"],
        wrap=("value",),
        drop=("source",),
    )
    if stored:
        c.say("Secrets: " + ", ".join(f"{k} = ••••" for k in stored))


def _stored_secrets(c: Ctx) -> list[str]:
    """Names of the stored secrets (file backend; the keyring cannot be listed)."""
    d = c.home / "secrets"
    if c.settings["secrets.backend"] != "file" or not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))


@app.command("test")
def test(
    ctx: typer.Context,
    to: str | None = typer.Option(None, "--to", help="Where to send it (default: the sender)."),
    as_staff: str | None = typer.Option(None, "--as", help="Send as this staff member."),
) -> None:
    """Send a test message through the configured transport."""
    from cpmail.cli.common import send_test

    send_test(ctx_of(ctx), as_staff=as_staff, to=to)
