"""`cpmail staff …`: who works here, where their mail goes, how they send."""

from __future__ import annotations

import shlex
import sys

import typer

from cpmail import interrupt
from cpmail.addresses import check_address
from cpmail.cli.common import ctx_of, emit_json, print_table, read_stdin_text, split_list
from cpmail.errors import InputError

app = typer.Typer(help="Staff members: addresses, passcodes, opt-outs.", no_args_is_help=True)

_NAME = typer.Option(None, "--name", help="Full name.")
_WORK = typer.Option(
    None, "--work-email", help="Where this person receives mail (one address, e.g. jd@agency.test)."
)
_USER = typer.Option(
    None,
    "--username",
    help="The address mail is sent from and logged in as (default: work e-mail).",
)
_SUP = typer.Option(None, "--supervisor", help="Staff ID of their supervisor.")
_HOURS = typer.Option(None, "--planned-hours", help="Hours they should enter per workday.")
_DAYS = typer.Option(None, "--workdays", help="Workdays, e.g. mon-fri or mon,wed,fri.")
_ROLE = typer.Option(None, "--role", help="Role, e.g. ae, creative, production.")
_ACCESS = typer.Option(None, "--access", help="Comma-separated rights, e.g. cash-flow.")


@app.command("add")
def add(
    ctx: typer.Context,
    staff_id: str = typer.Argument(..., metavar="ID", help="Staff code, e.g. initials (JD)."),
    name: str = typer.Option(..., "--name", help="Full name."),
    work_email: str = typer.Option(
        ...,
        "--work-email",
        help="Where this person receives mail (one address, e.g. jd@agency.test).",
    ),
    username: str | None = _USER,
    supervisor: str | None = _SUP,
    planned_hours: float = typer.Option(8, "--planned-hours", help="Hours per workday."),
    workdays: str = typer.Option("mon-fri", "--workdays", help="Workdays, e.g. mon-fri."),
    role: str | None = _ROLE,
    access: str | None = _ACCESS,
) -> None:
    """Register a staff member."""
    from cpmail import people

    c = ctx_of(ctx)
    work_email = check_address(work_email, where="--work-email")
    if username:
        username = check_address(username, where="--username")
    people.add(
        c.engine(),
        staff_id,
        name=name,
        work_email=work_email,
        username=username,
        supervisor_id=supervisor,
        planned_hours=planned_hours,
        workdays=workdays,
        role=role,
        access=access,
    )
    c.say(f"Added {staff_id} ({name}) <{work_email}>.")


@app.command("edit")
def edit(
    ctx: typer.Context,
    staff_id: str = typer.Argument(..., metavar="ID", help="Staff code."),
    name: str | None = _NAME,
    work_email: str | None = _WORK,
    username: str | None = _USER,
    supervisor: str | None = _SUP,
    planned_hours: float | None = _HOURS,
    workdays: str | None = _DAYS,
    role: str | None = _ROLE,
    access: str | None = _ACCESS,
    active: bool | None = typer.Option(
        None, "--active/--inactive", help="Inactive staff get no mail and need no time."
    ),
    digest: str | None = typer.Option(
        None,
        "--digest",
        metavar="on|off|default",
        help="One message a run with all their notifications (on), one per notification "
        "(off), or as [mail] digest says (default).",
    ),
) -> None:
    """Change a staff member (only the options given)."""
    from cpmail import people

    c = ctx_of(ctx)
    choices: dict[str, bool | None] = {"on": True, "off": False, "default": None}
    if digest is not None and digest.lower() not in choices:
        raise InputError(f"--digest: {digest!r} is not one of on, off, default.")
    if work_email:
        work_email = check_address(work_email, where="--work-email")
    if username:
        username = check_address(username, where="--username")
    people.edit(
        c.engine(),
        staff_id,
        name=name,
        work_email=work_email,
        username=username,
        supervisor_id=supervisor,
        planned_hours=planned_hours,
        workdays=workdays,
        role=role,
        access=access,
        active=active,
        **({"digest": choices[digest.lower()]} if digest is not None else {}),
    )
    c.say(f"Updated {staff_id}.")


@app.command("remove")
def remove(
    ctx: typer.Context, staff_id: str = typer.Argument(..., metavar="ID", help="Staff code.")
) -> None:
    """Remove a staff member (and their stored passcode and sign-in)."""
    from cpmail import people
    from cpmail.secrets import passcode_name, token_name

    c = ctx_of(ctx)
    names = (
        passcode_name(staff_id),
        token_name("gmail", staff_id),
        token_name("microsoft", staff_id),
    )
    # A staff member named like the one-account sender (from before the name was
    # reserved): the secrets under that name are the shared account's.
    shared = people.reserved(staff_id) is not None
    for name in () if shared else names:  # a secret that cannot go keeps the person too
        c.secrets.check(name)
    # The row and the secrets go together: a signal waits until both are gone (a person
    # removed with their passcode left behind could not be removed again to clear it).
    with interrupt.committing(f"{staff_id} was removed first, with their secrets"):
        people.remove(c.engine(), staff_id)
        if not shared:
            for name in names:
                c.secrets.delete(name)
    if shared:
        c.say(f"Removed {staff_id}; the one-account sender's passcode and sign-ins stay.")
        return
    c.say(f"Removed {staff_id}.")


COLUMNS = [
    "id",
    "name",
    "work_email",
    "supervisor_id",
    "planned_hours",
    "role",
    "access",
    "active",
    "muted",
    "digest",
]


@app.command("list")
def list_(
    ctx: typer.Context,
    json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """List staff members."""
    from cpmail import people

    c = ctx_of(ctx)
    rows = people.listing(c.engine())
    if json:
        emit_json(rows)
        return
    print_table(
        c,
        rows,
        COLUMNS,
        empty="No staff yet: `cpmail staff add ID --name N --work-email E`.",
        # On a narrow terminal these go first, so that the ID, name and address stay whole
        # (`--json` has them all).
        drop=("digest", "muted", "access", "active", "role", "planned_hours", "supervisor_id"),
    )


@app.command("passcode")
def passcode(
    ctx: typer.Context,
    staff_id: str | None = typer.Argument(None, metavar="ID", help="Staff code."),
    shared: bool = typer.Option(False, "--shared", help="The one-account sender's passcode."),
    stdin: bool = typer.Option(False, "--stdin", help="Read the passcode from standard input."),
    delete: bool = typer.Option(False, "--delete", help="Forget the stored passcode."),
) -> None:
    """Store the passcode a staff member (or --shared) logs in to SMTP with."""
    from cpmail.secrets import SHARED, passcode_name

    c = ctx_of(ctx)
    if shared == (staff_id is not None):
        raise InputError("give a staff ID or --shared.")
    if staff_id is not None:
        from cpmail import people

        with c.engine().connect() as conn:
            people.get(conn, staff_id)
        if why := people.reserved(staff_id):  # (a row from before the name was reserved)
            raise InputError(
                f"staff member {why}; give them another ID, or store the shared passcode "
                "with --shared."
            )
    account = SHARED if shared else str(staff_id)
    who = "the shared sender" if shared else account
    if delete:
        gone = c.secrets.delete(passcode_name(account))
        c.say(f"Forgot the passcode of {who}." if gone else f"{who} had no stored passcode.")
        return
    if stdin:
        value = read_stdin_text(line=True, secret=True).rstrip("\r\n")
    elif not sys.stdin.isatty():
        raise InputError(
            "there is no terminal to ask for the passcode on; pipe it in with --stdin."
        )
    else:
        value = typer.prompt(f"Passcode for {who}", hide_input=True, confirmation_prompt=True)
    if not value:
        raise InputError("the passcode is empty; nothing was stored.")
    c.secrets.set(passcode_name(account), value)
    try_it = f"cpmail staff test {shlex.quote(staff_id)}" if staff_id else "cpmail config test"
    c.say(f"Stored the passcode of {who}. Try it: `{try_it}`.")


@app.command("mute")
def mute(
    ctx: typer.Context,
    staff_id: str = typer.Argument(..., metavar="ID", help="Staff code."),
    events: list[str] = typer.Argument(
        ..., metavar="EVENT", help="Events to opt out of (a,b or several)."
    ),
) -> None:
    """Stop sending a staff member these events."""
    from cpmail import people

    c = ctx_of(ctx)
    evs = split_list(events)
    people.mute(c.engine(), staff_id, evs, on=True)
    c.say(f"{staff_id} no longer gets: {', '.join(evs)}.")


@app.command("unmute")
def unmute(
    ctx: typer.Context,
    staff_id: str = typer.Argument(..., metavar="ID", help="Staff code."),
    events: list[str] = typer.Argument(..., metavar="EVENT", help="Events to receive again."),
) -> None:
    """Send a staff member these events again."""
    from cpmail import people

    c = ctx_of(ctx)
    evs = split_list(events)
    people.mute(c.engine(), staff_id, evs, on=False)
    c.say(f"{staff_id} gets these again: {', '.join(evs)}.")


@app.command("test")
def test(
    ctx: typer.Context, staff_id: str = typer.Argument(..., metavar="ID", help="Staff code.")
) -> None:
    """Send a test message to a staff member from the account cpmail would use for them."""
    from cpmail import people
    from cpmail.cli.common import send_test
    from cpmail.errors import ConfigError

    c = ctx_of(ctx)
    with c.engine().connect() as conn:
        row = people.get(conn, staff_id)
    if not row.work_email:
        raise ConfigError(
            f"{staff_id} ({row.name}) has no work e-mail; "
            f"run `cpmail staff edit {staff_id} --work-email ADDRESS`."
        )
    send_test(c, as_staff=staff_id, to=row.work_email, to_name=row.name)
