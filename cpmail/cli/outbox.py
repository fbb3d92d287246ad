"""`cpmail outbox [retry|drop]` and `cpmail log`: what waits, what went, what failed."""

from __future__ import annotations

import typer

from cpmail.cli.common import Ctx, ctx_of, emit_json, parse_date, print_table, split_list
from cpmail.errors import InputError

outbox_app = typer.Typer(help="Queued, deferred and failed messages.", invoke_without_command=True)

_LOG_ROWS = 50  # rows of the table when no --limit is given
_MAX_ID = 2**63 - 1  # the largest whole number a database column holds

LIST_COLUMNS = [
    "id",
    "status",
    "event",
    "to",
    "subject",
    "attempts",
    "next_attempt_at",
    "last_error",
]
LOG_COLUMNS = [
    "id",
    "time",
    "event",
    "status",
    "from",
    "to",
    "subject",
    "message_id",
    "attempts",
    "last_error",
]


@outbox_app.callback()
def outbox(
    ctx: typer.Context,
    json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """List queued, deferred and failed messages."""
    if ctx.invoked_subcommand is not None:
        return
    from cpmail.outbox import ONCE, list_messages
    from cpmail.statuses import OPEN

    c = ctx_of(ctx)
    rows = list_messages(c.engine(), c.settings.tz(), statuses=OPEN)
    # A test message is sent at once or never: one that failed was said then, and
    # cannot be retried; it stays in `cpmail log`.
    rows = [r for r in rows if not (r["event"] == ONCE and r["status"] == "failed")]
    if json:
        emit_json(rows)
        return
    print_table(
        c,
        rows,
        LIST_COLUMNS,
        empty="The outbox is empty.",
        free=("to", "subject", "last_error"),
        drop=("last_error", "next_attempt_at", "attempts", "event"),
    )


@outbox_app.command("retry")
def retry(
    ctx: typer.Context,
    ids: list[int] | None = typer.Argument(
        None, metavar="ID", min=1, max=_MAX_ID, help="Message ids."
    ),
    all_: bool = typer.Option(False, "--all", help="Every failed or deferred message."),
) -> None:
    """Send failed or deferred messages again now."""
    from cpmail.sending import retry as send_again

    c = ctx_of(ctx)
    if bool(ids) == all_:
        raise InputError("give message ids or --all (see `cpmail outbox`).")
    done = send_again(
        c.engine(),
        c.settings,
        c.secrets,
        None if all_ else ids,
        queued=lambda n: c.say(f"Queued {n} message(s) again."),
    )
    for i, why in done.left.items():
        c.note(f"Message {i} was not queued again: {why}.")
    if done.delivery is None:
        if done.queued:
            c.note("Sending is off (`cpmail config enable`); they wait in the outbox.")
        return
    result = done.delivery
    back = f", put back unsent {result.released}" if result.released else ""
    # (those put back unsent are counted there, not as deferred too)
    deferred = sum(1 for i, s in result.status.items() if s == "deferred" and i not in result.held)
    c.say(
        f"Sent {result.count('sent')}, deferred {deferred}, failed {result.count('failed')}{back}."
    )
    if done.error is not None:
        raise done.error


@outbox_app.command("drop")
def drop(
    ctx: typer.Context,
    ids: list[int] = typer.Argument(..., metavar="ID", min=1, max=_MAX_ID, help="Message ids."),
) -> None:
    """Take messages out of the outbox for good (the log keeps them as dropped)."""
    from cpmail.outbox import CLAIMED
    from cpmail.outbox import drop as drop_messages
    from cpmail.statuses import Status

    c = ctx_of(ctx)
    n, left = drop_messages(c.engine(), ids)
    c.say(f"Dropped {n} message(s).")
    for i, status in left.items():
        why = CLAIMED if status == Status.SENDING else f"it is {status}, not waiting in the outbox"
        c.note(f"Message {i} was not dropped: {why}.")


def log(
    ctx: typer.Context,
    since: str | None = typer.Option(
        None, "--since", metavar="YYYY-MM-DD", help="Shown from this date on."
    ),
    event: str | None = typer.Option(None, "--event", help="Only this event."),
    to: str | None = typer.Option(None, "--to", help="Only mail to this address or staff ID."),
    status: str | None = typer.Option(
        None, "--status", help="sent, deferred, failed, suppressed, queued, dropped (a,b for more)."
    ),
    limit: int | None = typer.Option(
        None,
        "--limit",
        metavar="N",
        min=1,
        max=_MAX_ID,
        help="Only the newest N (default 50 in the table; --json lists all unless given).",
    ),
    all_: bool = typer.Option(False, "--all", help="Every message, however many."),
    json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """The newest messages cpmail sent, deferred, failed or suppressed (50 unless --all).

    With --json every matching message is listed, unless --limit is given: a
    script reading it is never handed a silently shortened list.
    """
    import datetime as dt

    from cpmail.outbox import list_messages

    c = ctx_of(ctx)
    since_utc = None
    if since is not None:
        day = parse_date(since, option="--since")
        since_utc = (
            dt.datetime.combine(day, dt.time(), c.settings.tz())
            .astimezone(dt.UTC)
            .replace(tzinfo=None)
        )
    statuses = None
    if status is not None:
        from cpmail.statuses import Status

        statuses = split_list([status])
        known = [s.value for s in Status]
        for s in statuses or [status]:  # "" names no status either
            if s not in known:
                raise InputError(f"--status: {s!r} is not a status; give {', '.join(known)}.")
    if event is not None:
        from cpmail.events import NAMES, OTHER_MAIL

        if event not in (*NAMES, *OTHER_MAIL):
            kinds = ", ".join((*NAMES, *OTHER_MAIL))
            raise InputError(f"--event: {event!r} is not an event; give one of {kinds}.")
    shown = None if all_ or (json and limit is None) else (limit or _LOG_ROWS)
    rows = list_messages(
        c.engine(),
        c.settings.tz(),
        statuses=statuses,
        since=since_utc,
        event=event,
        to=_addresses(c, to) if to else None,
        limit=None if shown is None else shown + 1,  # one more: are there more?
    )
    more = shown is not None and len(rows) > shown
    if more:
        rows = rows[1:]  # (oldest first: the one read past the newest ``shown``)
    if json:
        emit_json(rows)
        return
    print_table(
        c,
        rows,
        LOG_COLUMNS,
        empty="No messages match.",
        free=("to", "subject", "last_error", "from"),
        drop=("message_id", "from", "attempts", "last_error", "event"),
    )
    if more:
        c.note(f"The newest {shown} shown; `cpmail log --all` or `--limit N` for more.")


def _addresses(c: Ctx, to: str) -> list[str]:
    """An address as given; a staff ID becomes their work e-mail and username."""
    if "@" in to:
        return [to]
    from cpmail import people

    with c.engine().connect() as conn:
        row = people.get(conn, to)
    return [a for a in (row.work_email, row.username) if a]


def register(app: typer.Typer) -> None:
    """Add `outbox` and `log` to the root app."""
    app.add_typer(outbox_app, name="outbox")
    app.command("log")(log)
