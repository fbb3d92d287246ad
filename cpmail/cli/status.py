"""`cpmail status`: is mail working? One screen, and an exit code a monitor can use."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import typer

from cpmail.cli.common import Ctx, ctx_of, emit_json, printable

if TYPE_CHECKING:
    from cpmail.status import Account, Health


def status(
    ctx: typer.Context,
    probe: bool = typer.Option(
        False,
        "--probe",
        help="Also sign each account in (SMTP login, token renewal) without sending anything.",
    ),
    json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Is mail working: accounts, last check, outbox, database, switch and send window.

    Exit 0 healthy, 1 mail waiting or failed in the last 7 days, 3 an account,
    the transport or the database cannot be used. No network unless --probe.
    """
    from cpmail.status import gather

    c = ctx_of(ctx)
    health = gather(c.settings, c.secrets, probe=probe)
    if json:
        emit_json(health.as_json(c.settings.tz()))
    else:
        _print(c, health)
    if health.exit_code:
        raise typer.Exit(health.exit_code)


def _when(c: Ctx, value: dt.datetime | None, empty: str = "never") -> str:
    if value is None:
        return empty
    local = value.replace(tzinfo=dt.UTC).astimezone(c.settings.tz())
    return local.strftime("%Y-%m-%d %H:%M")


def _line(c: Ctx, label: str, text: str) -> None:
    c.out.print(printable(f"{label:<13} {text}"), markup=False, highlight=False)


def _account(c: Ctx, a: Account, *, db: bool) -> str:
    # A staff member's address is in the database: without it, unknown, not missing.
    parts = [a.address or ("(no address)" if db else "(address unknown: no database)"), a.login]
    if a.signed_in and a.signin_lapses is not None and not a.problem:  # (none if refused)
        parts.append(f"sign-in good until {_when(c, a.signin_lapses)} unless renewed")
    elif a.token_expires is not None:
        parts.append(f"token expires {_when(c, a.token_expires)}")
    parts.append(f"last sent {_when(c, a.last_sent)}" if db else "last sent unknown (no database)")
    if a.waiting:
        parts.append(f"{a.waiting} waiting")
    if a.probe is not None:
        parts.append("login test ok" if a.probe == "ok" else "login test FAILED")
    # An error from before the last message that went is history: the account sends.
    since = a.last_sent is None or a.error_at is None or a.error_at >= a.last_sent
    if a.problem:
        parts.append(f"CANNOT SEND: {a.problem}")
    elif a.last_error and since:
        parts.append(f"last error: {a.last_error}")
    else:
        parts.append("ok")
    return " · ".join(parts)


def _check(c: Ctx, h: Health) -> str:
    lc = h.last_check
    if lc is None:
        return "no check has run yet" if h.outbox is not None else "unknown (no database)"
    parts = [f"started {_when(c, lc.started_at)}"]
    if lc.host:
        parts[0] += f" on {lc.host}"
    if lc.run_date:
        parts.append(f"for {lc.run_date.isoformat()}")
    if lc.state == "finished":
        parts.append(f"exit {lc.exit_code}")
    else:
        parts.append(lc.state.upper() if lc.state != "running" else "still running")
    totals: Any = (lc.counts or {}).get("totals", lc.counts)
    if isinstance(totals, dict):
        shown = [f"{v} {k}" for k, v in totals.items() if isinstance(v, int)]
        if shown:
            parts.append(", ".join(shown))
        earlier = totals.get("earlier")
        if isinstance(earlier, dict) and any(isinstance(v, int) and v for v in earlier.values()):
            said = [f"{v} {k}" for k, v in earlier.items() if isinstance(v, int) and v]
            parts.append("from the outbox: " + ", ".join(said))
    if lc.note:
        parts.append(lc.note)
    return " · ".join(parts)


def _outbox(c: Ctx, h: Health) -> str:
    box = h.outbox
    if box is None:
        return "unknown (no database)"
    if not box.waiting:
        parts = ["nothing waiting"]
    else:
        parts = [f"{box.waiting} waiting since {_when(c, box.oldest_waiting_since)}"]
        if box.sending_now:
            parts.append(f"{box.sending_now} being sent now")
        if box.held_by_window:
            parts.append(f"{box.held_by_window} held until the send window opens")
        if box.held_by_stopped:
            at = f" at {_when(c, box.taken_up_at)}" if box.taken_up_at else ""
            parts.append(f"{box.held_by_stopped} held by a run that stopped, taken up again{at}")
        if not h.enabled:  # nothing goes, whatever a message's next try says
            parts.append("nothing is sent until `cpmail config enable`")
        elif box.next_try:
            parts.append(f"next try {_when(c, box.next_try)}")
        elif not h.window_open:
            parts.append("next try when the send window opens")
        elif box.waiting > box.held_by_stopped + box.sending_now:
            parts.append("next try at the next check")
    parts.append(f"{box.failed_7_days} failed for good in the last 7 days")
    return " · ".join(parts)


def _print(c: Ctx, h: Health) -> None:
    if c.quiet:
        return
    # A monitor (Nagios, Icinga) shows the first line only: it says what is wrong first.
    first = (h.problems or h.warnings or [""])[0]
    more = len(h.problems) + len(h.warnings) - 1
    why = f": {_short(first)}" + (f" (+{more} more)" if more > 0 else "") if first else ""
    _line(c, "Status", f"{h.verdict.upper()} (exit {h.exit_code}){why} · {_when(c, h.checked_at)}")
    _line(c, "Transport", f"{h.transport}: {h.transport_detail}")
    if not h.accounts:
        _line(c, "Accounts", "none found (set [user] staff or mail.sender)")
    for a in h.accounts:
        _line(c, f"Account {a.account}", _account(c, a, db=h.outbox is not None))
    _line(c, "Last check", _check(c, h))
    _line(c, "Outbox", _outbox(c, h))
    db = h.database
    if db.usable:
        text = f"reachable · schema {db.revision} (current) · {db.where}"
    else:
        text = f"CANNOT BE USED · {db.where} · {db.error}"
    _line(c, "Database", text)
    window = h.send_window or "none (any time)"
    if h.send_window:
        window += " (open now)" if h.window_open else " (closed now)"
    switch = "on" if h.enabled else "OFF (checks record mail as suppressed)"
    _line(c, "Sending", f"{switch} · send window {window}")
    for p in h.problems:
        _line(c, "Problem", p)
    for w in h.warnings:
        _line(c, "Warning", w)


def _short(text: str, limit: int = 100) -> str:
    from cpmail.scrub import hide

    text = hide(text)  # before it is cut: a secret cut in two is masked by neither half
    return text if len(text) <= limit else text[: limit - 1] + "…"


def register(app: typer.Typer) -> None:
    """Add `status` to the root app."""
    app.command("status")(status)
