"""`cpmail check`: the main job, run from cron on workdays."""

from __future__ import annotations

import datetime as dt
import sys
from collections import Counter
from typing import Any

import typer

from cpmail import interrupt
from cpmail.cli.common import ctx_of, emit_json, parse_date, print_table, split_list
from cpmail.errors import CpmailError, NotDelivered, UsageError
from cpmail.statuses import Status


def check(
    ctx: typer.Context,
    today: bool = typer.Option(False, "--today", help="Run for today (the default)."),
    date: str | None = typer.Option(
        None, "--date", metavar="YYYY-MM-DD", help="Run for this date."
    ),
    only: list[str] | None = typer.Option(
        None, "--only", metavar="EVENT[,EVENT…]", help="Only these events."
    ),
    skip: list[str] | None = typer.Option(
        None, "--skip", metavar="EVENT[,EVENT…]", help="Not these events."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print what would be sent; change nothing."
    ),
    as_staff: str | None = typer.Option(
        None, "--as", metavar="STAFF", help="Send from this staff member."
    ),
    json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Tell the right people what they must know, once: evaluate triggers, queue, send."""
    c = ctx_of(ctx)
    code: int | None = 70
    try:
        _check(c, today, date, only, skip, dry_run, as_staff, json)
        code = 0
    except UsageError:
        code = None  # a mistake typed at the terminal: no state of mail, no alert
        raise
    except (CpmailError, interrupt.Stopped, typer.Exit) as e:
        code = int(getattr(e, "exit_code", 70))
        raise
    except Exception as e:
        # The database or the disk failing (said by cpmail.cli.app) is exit 3.
        outside = type(e).__module__.startswith(("sqlalchemy", "sqlite3", "psycopg"))
        code = 3 if outside or isinstance(e, OSError) else 70
        raise
    finally:
        # A second channel hears when mail itself is failing ([alerts] urls).
        if code is not None and not dry_run and not 128 < code < 160:
            from cpmail.alerts import after_check

            after_check(c.home, code)


def _check(
    c: Any,
    today: bool,
    date: str | None,
    only: list[str] | None,
    skip: list[str] | None,
    dry_run: bool,
    as_staff: str | None,
    json: bool,
) -> None:
    from cpmail.check import run_check

    if today and date is not None:
        raise UsageError("give --today or --date, not both.")
    for option, given in (("--only", only), ("--skip", skip)):
        if given is not None and not split_list(given):  # '' is not "every event"
            raise UsageError(f"{option}: give one or more events, such as job-opened.")
    s = c.settings
    day = parse_date(date, option="--date") if date is not None else dt.datetime.now(s.tz()).date()
    engine = c.engine()
    progress = _progress(c.quiet or json)
    try:
        result = run_check(
            engine,
            s,
            c.secrets,
            c.home,
            date=day,
            only=split_list(only),
            skip=split_list(skip),
            dry_run=dry_run,
            as_staff=as_staff,
            on_progress=progress.advance if progress else None,
        )
    finally:
        if progress:
            progress.stop()
    if json:
        emit_json(_json(c, result, dry_run))
        for line in _notes(result):  # what a person should know, on stderr as without --json
            c.note(line)
    elif dry_run:
        _print_dry_run(c, result)
    else:
        _print_summary(c, result)
    if interrupt.requested() is not None:
        raise interrupt.Stopped(interrupt.requested() or 15, _stopped_detail(result))
    d = result.delivery
    if d is not None and d.stopped is not None:
        raise d.stopped
    if result.exit_code:
        raise NotDelivered(_undelivered(c, result))


def _stopped_detail(result: Any) -> str:
    d = result.delivery
    if d is None:
        return "nothing was sent; what was queued waits in the outbox for the next run"
    return (
        f"{d.count('sent')} message(s) sent and recorded, {d.released} put back in the "
        "outbox for the next run"
    )


def _when(c: Any, moment: Any) -> str:
    """A UTC time from the outbox, in the agency's time zone, to the minute."""
    local = moment.replace(tzinfo=dt.UTC).astimezone(c.settings.tz())
    return str(local.strftime("%Y-%m-%d %H:%M"))


def _waiting_line(c: Any, result: Any) -> str | None:
    w = result.waiting
    if w is None or not w.total:
        return None
    if not result.enabled:
        return (
            f"{w.total} message(s) wait in the outbox; sending is off, so they go once "
            "`cpmail config enable` turns it on."
        )
    parts = []
    if w.count and not (result.held_for_window and not w.deferred):
        since = f" since {_when(c, w.oldest)}" if w.oldest else ""
        nxt = f", next try {_when(c, w.next_try)}" if w.next_try else ""
        parts.append(f"{w.count} message(s) wait in the outbox{since}{nxt}")
    if w.orphaned:
        free = f" at {_when(c, w.orphans_free_at)}" if w.orphans_free_at else ""
        parts.append(
            f"{w.orphaned} message(s) are held by a run that stopped; they are taken up again{free}"
        )
    return "; ".join(parts) + "." if parts else None


def _may_have_arrived(d: Any) -> int:
    """How many of the messages the run deferred the server may have taken already."""
    return sum(1 for i in d.unsure if d.status.get(i) == "deferred")


def _undelivered(c: Any, result: Any) -> str:
    """Why check ends with exit 1, as it is: mail that waits, mail that failed, or both."""
    d = result.delivery
    w = result.waiting
    parts = []
    if d is not None and d.undelivered:
        said = f"{d.count('deferred')} message(s) deferred and {d.count('failed')} failed"
        said += " in this run"
        e = result.earlier  # the table counts only this run's own; say where the rest are
        if e and (e["deferred"] or e["failed"]):
            said += (
                f" ({e['deferred']} deferred and {e['failed']} failed of them queued by earlier "
                "runs, under the table)"
            )
        parts.append(said)
        unsure = _may_have_arrived(d)
        if unsure:  # (the server took the text, then no answer, or an error after it)
            parts.append(
                f"{unsure} of the deferred may have arrived already, as the server did "
                "not say whether it took them (no answer in time, or a server error after the "
                "message went): they are sent again, and may reach someone twice"
            )
    if w is not None and w.total:
        how = []
        if w.deferred:
            soon = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=1)
            later = w.next_try is not None and w.next_try > soon
            how.append(
                f"deferred mail is tried again by the first `cpmail check` from "
                f"{_when(c, w.next_try)}"
                if later
                else "deferred mail is tried again by the next `cpmail check`, or at once with "
                "`cpmail outbox retry --all`"
            )
        elif w.count:
            how.append("it goes with the next `cpmail check`")
        if w.orphaned:
            how.append(
                "mail held by a run that stopped goes with the first check after it is taken up"
            )
        parts.append("mail is waiting (`cpmail outbox`): " + ", and ".join(how))
    if d is not None and d.count("failed"):
        said = "failed mail is not tried again: see why with `cpmail log --status failed`"
        kept = sum(1 for i, s in d.status.items() if s == "failed" and i not in d.unkept)
        if kept:  # (a message too big for the transport is not kept: it cannot go again)
            said += (
                ", and send it again with `cpmail outbox retry ID` once that is fixed"
                if kept == d.count("failed")
                else f"; {kept} of them can be sent again with `cpmail outbox retry ID` once "
                "that is fixed (`cpmail outbox` lists them)"
            )
        parts.append(said)
    if result.held_events:
        parts.append(
            f"{', '.join(result.held_events)} not checked: a setting names someone not in "
            "the staff table (said above)"
        )
    return "; ".join(parts or ["mail is waiting (`cpmail outbox`)"]) + "."


class _Bar:
    """A progress bar on stderr, shown only on a terminal once there is something to send."""

    def __init__(self) -> None:
        self.count = 0
        self.progress: Any = None

    def advance(self, n: int) -> None:
        self.count += n
        if self.progress is None and self.count >= 20:
            from rich.progress import Progress

            self.progress = Progress(transient=True, console=None)
            self.progress.start()
            self.task = self.progress.add_task("Sending", total=None)
        if self.progress is not None:
            self.progress.update(self.task, completed=self.count)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _progress(silent: bool) -> _Bar | None:
    return None if silent or not sys.stderr.isatty() else _Bar()


def _notes(result: Any) -> list[str]:
    """What a person should know of the run beyond its counts (the send window, paced
    accounts, a summary to the manager that could not be written)."""
    return [*result.notice, *(result.delivery.notes if result.delivery is not None else [])]


def _json(c: Any, result: Any, dry_run: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": result.date,
        "dry_run": dry_run,
        "enabled": result.enabled,
        "summary": [{"event": ev, **s.as_dict()} for ev, s in result.summary.items()],
        "totals": result.totals(),
        "notes": _notes(result),
    }
    if dry_run:
        out["messages"] = [
            {
                "event": p.event,
                "events": p.events,
                "keys": p.keys,
                "to": p.to.address,
                "to_name": p.to.name,
                "staff_id": p.to.staff_id,
                "subject": p.subject,
                "text": p.text,
                "html": p.html,
                "attachments": [a.filename for a in p.attachments],
                "fails": p.fails,
            }
            for p in result.planned
        ]
    else:
        d = result.delivery
        out["outbox"] = (
            {
                "sent": d.count(Status.SENT),
                "deferred": d.count(Status.DEFERRED),
                "failed": d.count(Status.FAILED),
                "may_have_arrived": _may_have_arrived(d),
                "outside_window": d.waiting,
                "earlier": dict(result.earlier),
            }
            if d is not None
            else None
        )
    w = result.waiting
    tz = c.settings.tz()

    def zoned(t: dt.datetime | None) -> dt.datetime | None:  # as status gives times
        return t.replace(tzinfo=dt.UTC).astimezone(tz) if t is not None else None

    out["waiting"] = (
        {
            "count": w.count,
            "oldest": zoned(w.oldest),
            "next_try": zoned(w.next_try),
            "held_by_stopped_run": w.orphaned,
            "taken_up_at": zoned(w.orphans_free_at),
        }
        if w is not None
        else None
    )
    out["exit_code"] = result.exit_code
    return out


def _print_dry_run(c: Any, result: Any) -> None:
    from cpmail.outbox import in_send_window

    skipped = Counter[str]()
    for s in result.summary.values():
        skipped.update(s.skip_reasons)
    if skipped:
        c.say("Would skip recipients: " + ", ".join(f"{n} {why}" for why, n in skipped.items()))
    line = _waiting_line(c, result)
    failing = sum(1 for p in result.planned if p.fails)
    n = len(result.planned) - failing
    if not result.planned:
        c.say(f"Nothing new to send for {result.date}.")
    elif not n:
        pass  # (each would fail: said below)
    elif not result.enabled:
        c.say(
            f"Sending is off: would record {n} message(s) for {result.date} as suppressed, "
            "sending none (dry run: nothing changed):"
        )
    elif not in_send_window(c.settings):
        c.say(
            f"Would queue {n} message(s) for {result.date} to go when the send window "
            f"({c.settings['mail.send_window']}) opens (dry run: nothing changed):"
        )
    else:
        c.say(f"Would send {n} message(s) for {result.date} (dry run: nothing changed):")
    for p in result.planned:
        if not p.fails:
            c.say(f"  {p.to.address:<32} {p.subject}")
    if failing:
        c.say(f"Would fail {failing} message(s), too big for the transport even alone:")
        for p in result.planned:
            if p.fails:
                c.say(f"  {p.to.address:<32} {p.subject} ({p.fails})")
    for note in result.notice:  # (an event held back, as the real run would hold it)
        c.note(note)
    if line:
        c.note(line)


def _print_summary(c: Any, result: Any) -> None:
    rows = [
        {"event": ev + ("" if s.enabled else " (disabled)"), **s.as_dict()}
        for ev, s in result.summary.items()
        if s.found or s.skipped or s.sent or s.deferred or s.failed or not s.enabled
    ]
    totals = result.totals()
    if not c.quiet:
        if rows:
            print_table(
                c,
                [*rows, {"event": "total", **totals}],
                ["event", "found", "sent", "deferred", "failed", "skipped", "suppressed"],
                title=f"cpmail check for {result.date}",
            )
        else:
            c.say(f"No new notifications for {result.date}.")
        skipped = Counter[str]()
        for s in result.summary.values():
            skipped.update(s.skip_reasons)
        if skipped:
            c.say("Skipped recipients: " + ", ".join(f"{n} {why}" for why, n in skipped.items()))
    if not result.enabled:
        c.note(
            "Sending is off: notifications were recorded as suppressed (`cpmail config enable`)."
        )
    for line in _notes(result):
        c.note(line)
    if result.earlier:
        e = result.earlier
        dropped = (
            f", {e['dropped']} dropped ({_dropped_why(result.dropped)})" if e["dropped"] else ""
        )
        c.say(
            f"From the outbox (earlier runs): {e['sent']} sent, {e['deferred']} deferred, "
            f"{e['failed']} failed{dropped}."
        )
    waiting_line = None if interrupt.requested() is not None else _waiting_line(c, result)
    if waiting_line:
        c.note(waiting_line)
    if result.sender is not None and c.settings["mail.transport"] == "file" and totals["sent"]:
        c.say(f"Messages were written to {c.settings.mail_dir}")


_DROPPED = {
    "began": "what it reminds of had begun",
    "no one": "no one it was for gets it now",
}


def _dropped_why(dropped: Counter[str]) -> str:
    """Why earlier runs' mail was dropped: the one reason, or how many for each."""
    if len(dropped) <= 1:
        return _DROPPED[next(iter(dropped), "began")]
    return "; ".join(f"{n}: {_DROPPED[why]}" for why, n in sorted(dropped.items()))


def register(app: typer.Typer) -> None:
    """Add `check` to the root app."""
    app.command("check")(check)
