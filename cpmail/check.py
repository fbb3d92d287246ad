"""The main job: evaluate every trigger for a date, queue what is new, send the outbox.

Data flows one way: store -> triggers -> routing -> render/compose -> outbox ->
transport. Ledger keys and outbox rows are written in one transaction, so a
second run (or a concurrent one) never queues a notification twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import socket
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cpmail import interrupt
from cpmail.addresses import mailbox_key
from cpmail.compose import (
    Attachment,
    Draft,
    Mailbox,
    build_message,
    compose,
    first_reply_to,
    message_id_for,
    subject_line,
)
from cpmail.errors import ConfigError
from cpmail.events import LIST_EVENTS, SCHEDULED, STATE_EVENTS, check_names
from cpmail.outbox import (
    Delivery,
    Waiting,
    deliver,
    give_up,
    in_send_window,
    lease,
    new_run_id,
    queue_many,
    ready_of,
    record_keys,
    waiting,
)
from cpmail.parallel import halves
from cpmail.people import Sender, resolve_sender
from cpmail.render import Renderer
from cpmail.routing import Directory, Person, unknown_named_staff
from cpmail.scrub import hide
from cpmail.secrets import SecretStore
from cpmail.settings import EVENTS, Settings
from cpmail.sizes import size_pair
from cpmail.statuses import Status
from cpmail.store.schema import ledger, messages, staff_prefs
from cpmail.transports.base import Envelope, Transport, get_transport, transport_class
from cpmail.triggers import Invitation, Notification, Run, finders, scheduled
from cpmail.triggers.tasks import settle_state_rows, stamp_state_rows, unstamp_state_rows
from cpmail.workdays import WorkCalendar

SUMMARY_COLUMNS = ("found", "sent", "deferred", "failed", "skipped", "suppressed")
# A digest holds several events' notifications: its messages are counted on a row of their own.
DIGEST = "digest"


@dataclass
class EventSummary:
    found: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    suppressed: int = 0
    enabled: bool = True
    skip_reasons: Counter[str] = field(default_factory=Counter)

    def count_message(self, status: Status) -> None:
        """One message of this event ended ``sent``, ``deferred`` or ``failed`` in the run."""
        if status is Status.SENT:
            self.sent += 1
        elif status is Status.DEFERRED:
            self.deferred += 1
        elif status is Status.FAILED:
            self.failed += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in SUMMARY_COLUMNS},
            "enabled": self.enabled,
            "skip_reasons": dict(self.skip_reasons),
        }


@dataclass
class Planned:
    """One message a run queues (or would queue, with --dry-run)."""

    event: str  # the event, or "digest"
    events: list[str]  # one entry per notification in it
    keys: list[str]  # the ledger key of each entry of ``events``
    to: Person
    subject: str
    text: str
    html: str
    attachments: list[Attachment]
    thread: str | None
    raw: bytes = b""
    message_id: str = ""
    # Not sent after this (UTC): when everything in it is a reminder, its event's start.
    not_after: dt.datetime | None = None
    # Why it would fail before it is sent (a dry run's plan): too big for the transport.
    fails: str | None = None


@dataclass
class CheckResult:
    date: dt.date
    summary: dict[str, EventSummary]
    planned: list[Planned]
    delivery: Delivery | None = None
    dry_run: bool = False
    enabled: bool = True
    sender: Sender | None = None
    notice: list[str] = field(default_factory=list)
    earlier: Counter[str] = field(default_factory=Counter)  # earlier runs' mail, by status
    # earlier runs' mail dropped, by why: "began" (what it reminds of) or "no one" (all it
    # was for are no longer active or muted its event)
    dropped: Counter[str] = field(default_factory=Counter)
    waiting: Waiting | None = None  # what waits in the outbox after the run
    window_closed: bool = False  # (a dry run's) the send window is closed: nothing would go
    # events not looked at: their recipients name someone not in the staff table (notice)
    held_events: list[str] = field(default_factory=list)

    @property
    def held_for_window(self) -> bool:
        """Mail waits because the send window is closed, as it should (not news)."""
        d = self.delivery
        return (d is not None and d.waiting > 0) or self.window_closed

    def totals(self) -> dict[str, int]:
        """found, skipped, suppressed count notifications; sent, deferred, failed messages."""
        return {k: sum(getattr(s, k) for s in self.summary.values()) for k in SUMMARY_COLUMNS}

    @property
    def exit_code(self) -> int:
        """128 + N stopped by signal N; 3 the transport was refused or unreachable; 1 mail
        waits or failed, or events were held back; else 0 (always 0 for mail waiting
        while sending is switched off)."""
        stopped_by = interrupt.requested()
        if stopped_by is not None:
            return 128 + stopped_by
        if self.held_events:  # events not looked at (their settings name nobody): news
            return 1
        if not self.enabled:
            return 0  # nothing is sent while sending is off; the summary says what waits
        if any(p.fails for p in self.planned):  # a dry run: the real run would fail these
            return 1
        d = self.delivery
        if d is not None and d.stopped is not None:
            return 3
        if d is not None and d.undelivered:
            return 1
        w = self.waiting
        if w is None:
            return 0
        # Mail queued outside the send window waits as it should; anything else waiting is news.
        if w.deferred or w.orphaned or (w.count and not self.held_for_window):
            return 1
        return 0


def select_events(only: Sequence[str], skip: Sequence[str]) -> list[str]:
    check_names([*only, *skip], also=SCHEDULED)
    return [e for e in EVENTS if (not only or e in only) and e not in skip]


def _sender(settings: Settings, engine: sa.Engine, as_staff: str | None) -> Sender:
    """The account check sends from; the file transport may go without one."""
    try:
        return resolve_sender(settings, engine, as_staff)
    except ConfigError:
        if settings["mail.transport"] != "file" or as_staff:
            raise
    address = settings["manager.email"] or "cpmail@localhost"
    return Sender("", address, settings["agency.name"] or "cpmail")


def _scheduled_in(only: Sequence[str], skip: Sequence[str]) -> dict[str, Any]:
    """The reports sent on a schedule (cash-flow) that a run with ``only``/``skip`` looks
    at, chosen as events are: name -> finder."""
    return {n: find for n, find in scheduled().items() if (not only or n in only) and n not in skip}


def _held_back(
    engine: sa.Engine,
    settings: Settings,
    date: dt.date,
    only: Sequence[str],
    skip: Sequence[str],
) -> dict[str, str]:
    """This run's events whose recipients name a staff member who is not in the staff table
    (a hand-edited file, a person removed since), each with why: they are not looked at
    in this run, so that their notifications wait until that is mended instead of
    reaching nobody and being on record as done. The run's other events go on."""
    from cpmail.triggers.cashflow import EVENT, is_report_day

    keys = {
        f"events.{ev}.notify": ev for ev in select_events(only, skip) if settings.event_enabled(ev)
    }
    if EVENT in _scheduled_in(only, skip) and is_report_day(settings, date):
        keys["reports.cash-flow.to"] = EVENT
    with engine.connect() as conn:
        unknown = unknown_named_staff(conn, {key: settings.get(key) for key in keys})
    return {
        keys[key]: (
            f"{key} names {staff_id!r}, who is not in the staff table, so {keys[key]} was not "
            "checked: it is, once the setting or the staff is mended (`cpmail staff list`)"
        )
        for key, staff_id in unknown.items()
    }


def run_check(
    engine: sa.Engine,
    settings: Settings,
    secrets: SecretStore,
    home: Path | None,
    *,
    date: dt.date,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    dry_run: bool = False,
    as_staff: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    transport: Transport | None = None,
) -> CheckResult:
    """Evaluate, queue and send; with ``dry_run`` change nothing and return what would go.

    A real run holds a lease (``cpmail.outbox.lease``) from start to end: the
    messages it queues claimed stay its own while it lives, go back to the
    queue if it is stopped, and ``runs`` records how it ended.
    """
    select_events(only, skip)
    kwargs: dict[str, Any] = dict(
        date=date,
        only=only,
        skip=skip,
        dry_run=dry_run,
        as_staff=as_staff,
        on_progress=on_progress,
        transport=transport,
    )
    if dry_run:
        result = _run_check(engine, settings, secrets, home, run_id=new_run_id(), **kwargs)
        result.waiting = waiting(engine, settings)  # a real run would send that too
        result.window_closed = not in_send_window(settings)  # (then it would send nothing)
        return result
    run_id = new_run_id()
    with lease(engine, settings, run_id, "check", run_date=date) as held:
        result = _run_check(engine, settings, secrets, home, run_id=run_id, **kwargs)
        if result.delivery is not None or not result.enabled:
            result.waiting = waiting(engine, settings, exclude_run=run_id)
        # (earlier runs' mail it sent or gave up on, too: it can be all an exit 1 is about)
        held.counts = {**result.totals(), "earlier": dict(result.earlier)}
        held.exit_code = result.exit_code
    return result


def _run_check(
    engine: sa.Engine,
    settings: Settings,
    secrets: SecretStore,
    home: Path | None,
    *,
    run_id: str,
    date: dt.date,
    only: Sequence[str],
    skip: Sequence[str],
    dry_run: bool,
    as_staff: str | None,
    on_progress: Callable[[int], None] | None,
    transport: Transport | None,
) -> CheckResult:
    """The phases of a check, in order: find, route, render and queue, deliver, count."""
    enabled = settings["mail.enabled"]
    sender = _sender(settings, engine, as_staff)
    held = _held_back(engine, settings, date, only, skip)
    skip = [*skip, *held]
    if transport is None and not dry_run and enabled:
        transport = get_transport(settings, secrets)
    if transport is not None:
        transport.check_account(sender.account)
    found, summary, directory, incremental = _find(
        engine, settings, date, only, skip, run_id, dry_run
    )
    renderer = _renderer(settings, home, date)
    if settings["manager.email"]:
        # Rendered now with an example, so that a template that fails on it stops the run
        # before anything is sent (exit 2, nothing changed), not after the mail went.
        _failure_summary(renderer, settings, [_EXAMPLE_FAILURE])
    result = CheckResult(date, summary, [], dry_run=dry_run, enabled=enabled, sender=sender)
    result.held_events = sorted(held)
    result.notice.extend(held.values())
    left_out: dict[str, tuple[bool, Counter[str]]] = {}  # what each notification's routing skipped
    groups = _route(found, directory, settings, summary, digest_choices(engine), left_out)
    if dry_run:
        plan = _planner(renderer, settings, sender, directory, keep_text=True)
        result.planned = _dry_plan(plan, groups, settings, transport)
        if not enabled:  # as the real run would record them
            _count_suppressed(result)
        return result
    send_now = enabled and transport is not None and in_send_window(settings)
    try:
        ids, ready, taken, oversize = _queue_all(
            engine,
            settings,
            found,
            groups,
            renderer,
            sender,
            directory,
            run_id,
            transport,
            send_now,
        )
    except BaseException:
        if incremental:  # nothing was queued: the rows are as unchecked as before this run
            with contextlib.suppress(Exception):
                unstamp_state_rows(engine, run_id)
        raise
    for n in taken:  # a concurrent run recorded these first: theirs to count, not this run's
        s = summary[n.event]
        s.found -= 1
        nobody, reasons = left_out.get(n.key, (False, Counter()))
        s.skipped -= nobody
        s.skip_reasons -= reasons
    if incremental:
        settle_state_rows(engine, run_id)
    result.planned = list(ids.values())
    if not enabled:
        _count_suppressed(result)
        return result
    assert transport is not None
    delivery = deliver(
        engine,
        transport,
        settings,
        run_id=run_id,
        on_progress=on_progress,
        ready=ready if send_now else (),
        expire=True,  # mail waiting too long fails (or is dropped) here, and is said here
    )
    _take_in(delivery, oversize, ids)
    result.delivery = delivery
    _count(result, ids, delivery)
    if delivery.waiting:
        result.notice.append(
            f"{delivery.waiting} message(s) wait in the outbox for the send window "
            f"({settings['mail.send_window']})."
        )
    manager = _tell_manager(
        engine, settings, transport, sender, delivery, renderer, run_id, result.notice
    )
    if manager is not None:  # the summary to the manager is mail of this run too: counted
        for status in manager.status.values():
            if status in (Status.SENT, Status.DEFERRED, Status.FAILED):
                summary.setdefault(FAILURE_SUMMARY, EventSummary()).count_message(Status(status))
        delivery.merge(manager)  # and in the run's outbox, as `--json` reports it
    return result


def _find(
    engine: sa.Engine,
    settings: Settings,
    date: dt.date,
    only: Sequence[str],
    skip: Sequence[str],
    run_id: str,
    dry_run: bool,
) -> tuple[list[Notification], dict[str, EventSummary], Directory, bool]:
    """Every enabled trigger for the date: the new notifications, counted per event."""
    events = select_events(only, skip)
    run = Run(
        date=date,
        settings=settings,
        calendar=WorkCalendar.from_settings(settings),
        tz=settings.tz(),
    )
    summary = {ev: EventSummary(enabled=settings.event_enabled(ev)) for ev in events}
    state = set(STATE_EVENTS)
    if settings["events.budget-alert.thresholds"]:
        state.add("budget-alert")  # its thresholds read the same rows
    extra = _scheduled_in(only, skip)  # reports sent on a schedule (cash-flow)
    for name in extra:
        summary[name] = EventSummary()
    incremental = not dry_run and all(ev in summary and summary[ev].enabled for ev in state)
    if incremental:  # else the state triggers look without marking what they looked at
        stamp_state_rows(engine, run_id)
    with engine.connect() as conn:
        found: list[Notification] = []
        table = finders()
        for ev in events:
            if summary[ev].enabled:
                found.extend(table[ev](conn, run))
        for find in extra.values():
            found.extend(find(conn, run))
        found = _unrecorded(conn, found)
        # Staff are read only when there is someone to route to: a run that finds
        # nothing new (most runs, when cron runs it every few minutes) reads no one.
        directory = Directory(conn if found else None)
    for n in found:
        summary[n.event].found += 1
    return found, summary, directory, incremental


def _keys_text(keys: Sequence[str], limit: int = 2000) -> str:
    """A message's ledger keys as its row keeps them: comma-separated, cut at ``limit``
    characters, each event's first key first, so that what `log --event` reads of a long
    digest still names every event it carried: when those first keys alone would pass
    ``limit`` (IDs of hundreds of characters), each is cut to its share, its event kept."""
    first: dict[str, str] = {}
    for k in keys:
        first.setdefault(k.split(":", 1)[0], k)
    chosen = set(first.values())
    heads = list(first.values())
    if len(",".join(heads)) > limit:
        share = limit // len(heads) - 1  # (an event's name is far shorter)
        heads = [k[:share] for k in heads]
    return ",".join([*heads, *(k for k in keys if k not in chosen)])[:limit]


def _queue_all(
    engine: sa.Engine,
    settings: Settings,
    found: list[Notification],
    groups: list[Group],
    renderer: Renderer,
    sender: Sender,
    directory: Directory,
    run_id: str,
    transport: Transport | None,
    send_now: bool,
) -> tuple[dict[int, Planned], list[tuple[Envelope, str]], list[Notification], dict[int, str]]:
    """Render every message, then record the ledger keys and queue them in one transaction.

    A message larger than the transport takes, even alone, fails by itself (its
    notification is recorded; nobody else's mail waits for it): returned with why.

    A template or address that fails anywhere leaves nothing queued (exit 2).
    Rendering comes before the transaction: on SQLite it holds the database's
    write lock, which every other cpmail process waits for. With ``send_now``
    the rows start out claimed and are returned ready to send from memory. Also
    return the notifications a concurrent run queued first (not queued here).
    """
    plan = _planner(renderer, settings, sender, directory)
    # A digest or list is split to what the server takes (an SMTP server may say it takes
    # far less than the transport could carry); a message of one notification cannot be.
    limit = None
    if transport is not None:
        several = any(len(g) > 1 for g in groups)
        limit = transport.size_limit() if several else transport.max_message_bytes
    planned = _fitted(plan, groups, limit)
    with engine.begin() as conn:
        fresh = record_keys(conn, [n.key for n in found], _now())
        taken = [n for n in found if n.key not in fresh]
        if taken:
            # A concurrent run queued some of these first: send only the rest, composed
            # again without the notifications already taken.
            groups = [h for g in groups if (h := [(n, p) for n, p in g if n.key in fresh])]
            planned = _fitted(plan, groups, limit)
        drafts = [_draft(p, sender) for p in planned]
        suppressed = not settings["mail.enabled"]
        mids = queue_many(
            conn,
            drafts,
            run_id=run_id,
            ledger_keys=[_keys_text(p.keys) for p in planned],
            suppressed=suppressed,
            claimed=send_now,
        )
    oversize: dict[int, str] = {}
    if limit is not None and not suppressed:
        for mid, d in zip(mids, drafts, strict=True):
            if len(d.raw) > limit:
                oversize[mid] = f"not sent: {_too_big(len(d.raw), limit)}"
                give_up(engine, [mid], oversize[mid], run_id=run_id)
    ready = [r for r in ready_of(mids, drafts) if r[0].id not in oversize]
    return dict(zip(mids, planned, strict=True)), ready, taken, oversize


def _dry_plan(
    plan: Callable[[Group], Planned],
    groups: list[Group],
    settings: Settings,
    transport: Transport | None,
) -> list[Planned]:
    """What the real run would queue, split as it would to what the transport takes, with
    what it would fail as soon as it is queued (too big even alone) marked."""
    limit = None
    if settings["mail.enabled"]:
        kind = transport if transport is not None else transport_class(settings)
        limit = kind.max_message_bytes
    planned = _fitted(plan, groups, limit)
    for p in planned:
        if limit is not None and len(p.raw) > limit:
            p.fails = _too_big(len(p.raw), limit)
    return planned


def _too_big(size: int, limit: int) -> str:
    shown, most = size_pair(size, limit)
    return f"it is {shown}; the transport takes at most {most}"


def _take_in(delivery: Delivery, oversize: dict[int, str], ids: dict[int, Planned]) -> None:
    """Outcomes the pass did not send for, counted with the rest: this run's messages too
    large for the transport, and mail that waited too long, whoever queued it (the run
    that finds it says so, as its own)."""
    for mid, why in oversize.items():  # failed before it could be sent
        delivery.status[mid] = Status.FAILED
        delivery.events[mid] = ids[mid].event
        delivery.errors[mid] = why
        delivery.unkept.add(mid)  # (its text is not kept: `give_up`)
    for mid, (status, event, why) in delivery.expired.items():
        delivery.status.setdefault(mid, status)
        delivery.events.setdefault(mid, event)
        delivery.errors.setdefault(mid, why)


def _count_suppressed(result: CheckResult) -> None:
    """Sending is off: each notification planned is recorded as suppressed.

    A notification to three people is three messages but one notification.
    """
    told = {(ev, key) for p in result.planned for ev, key in zip(p.events, p.keys, strict=True)}
    for ev, _key in told:
        result.summary[ev].suppressed += 1


def _count(result: CheckResult, ids: dict[int, Planned], delivery: Delivery) -> None:
    """This run's messages per event row; earlier runs' mail apart."""
    summary = result.summary
    for mid, status in delivery.status.items():
        if mid not in ids:  # left in the outbox by an earlier run
            result.earlier[status] += 1
            if status == Status.DROPPED:
                result.dropped["no one" if mid in delivery.no_one else "began"] += 1
            continue
        if status not in (Status.SENT, Status.DEFERRED, Status.FAILED):
            continue
        # Messages, not notifications: a list of 7 tasks in one message is 1 sent.
        row = ids[mid].event
        if row == DIGEST:
            summary.setdefault(DIGEST, EventSummary())
        if row in summary:
            summary[row].count_message(Status(status))


def digest_choices(engine: sa.Engine) -> dict[str, bool]:
    """Staff who chose one digest a run (True) or none (False), over ``[mail] digest``."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(staff_prefs.c.staff_id, staff_prefs.c.digest).where(
                staff_prefs.c.digest.is_not(None)
            )
        )
        return {r.staff_id: bool(r.digest) for r in rows}


def _now() -> dt.datetime:
    from cpmail.store import utcnow

    return utcnow()


def _unrecorded(conn: sa.Connection, found: list[Notification]) -> list[Notification]:
    """Drop notifications whose key is in the ledger already."""
    keys = [n.key for n in found]
    known: set[str] = set()
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        got = sa.select(ledger.c.key).where(ledger.c.key.in_(chunk))
        known.update(conn.execute(got).scalars().all())
    out, seen = [], set()
    for n in found:
        if n.key not in known and n.key not in seen:
            seen.add(n.key)
            out.append(n)
    return out


Group = list[tuple[Notification, Person]]


def _route(
    found: list[Notification],
    directory: Directory,
    settings: Settings,
    summary: dict[str, EventSummary],
    digests: dict[str, bool],
    left_out: dict[str, tuple[bool, Counter[str]]],
) -> list[Group]:
    """Who gets each notification, grouped into messages (one person per message).

    ``digests`` holds the staff members' own choice (`staff edit --digest`) over
    ``[mail] digest``. What each notification's routing counted as skipped goes
    in ``left_out`` (by key), to be taken back if another run records it first.
    """
    default = settings["mail.digest"]
    groups: dict[tuple[str, str, str], Group] = defaultdict(list)
    for n in found:
        routed = directory.route(n, directory.rules_for(n, settings))
        s = summary[n.event]
        if not routed.people:  # a notification that reaches nobody is skipped
            s.skipped += 1
        s.skip_reasons.update(routed.skipped)  # why, per recipient left out
        left_out[n.key] = (not routed.people, Counter(routed.skipped))
        if n.invitation is not None:  # it names exactly who it goes to
            n.invitation.attendees = [(p.address, p.name) for p in routed.people]
        for person in routed.people:
            digest = digests.get(person.staff_id or "", default)
            if digest:
                bucket = "digest"
            elif n.event in LIST_EVENTS:
                bucket = n.event
            else:
                bucket = n.key
            # one message per person: two people sharing a mailbox each get their own
            groups[(mailbox_key(person.address), person.staff_id or "", bucket)].append((n, person))
    return list(groups.values())


def reply_to(group: Group, directory: Directory, settings: Settings) -> Mailbox | None:
    """Where a reply should go: the job's account executive, else the system manager.

    A reply must reach a person, not the sending mailbox (which nobody reads).
    """
    person = group[0][1].address.lower()
    candidates: list[Mailbox] = []
    threads = {n.thread for n, _ in group}
    clients = {n.client_id for n, _ in group}
    if len(threads) == 1 and len(clients) == 1:
        (thread,), (client,) = threads, clients
        if thread and thread.startswith("job:") and client:
            for sid, role, _events in directory.teams.get(client, []):
                row = directory.staff.get(sid)
                if role.lower() == "ae" and row is not None and row.active and row.work_email:
                    candidates.append(Mailbox(row.work_email, row.name or ""))
    manager = settings["manager.email"]
    if manager:
        candidates.append(Mailbox(manager, settings["manager.name"]))
    return first_reply_to(candidates, person)


def _planner(
    renderer: Renderer,
    settings: Settings,
    sender: Sender,
    directory: Directory,
    *,
    keep_text: bool = False,
) -> Callable[[Group], Planned]:
    """``_plan`` for each group: big runs render and compose on both cores (cpmail.parallel).

    Only a dry run shows the text and HTML; a real run keeps just the message's bytes.
    """
    return partial(
        _plan,
        renderer=renderer,
        settings=settings,
        sender=sender,
        directory=directory,
        keep_text=keep_text,
    )


def _plan(
    group: Group,
    *,
    renderer: Renderer,
    settings: Settings,
    sender: Sender,
    directory: Directory,
    keep_text: bool,
) -> Planned:
    person = group[0][1]
    recipient = {"name": person.name, "staff_id": person.staff_id, "address": person.address}
    replies = reply_to(group, directory, settings)
    reply = {"name": replies.name, "address": replies.address} if replies else None
    by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for n, _ in group:
        by_event[n.event].append(n.item)
    events = [n.event for n, _ in group]
    if len(by_event) == 1:
        event = events[0]
        subject, text, html = renderer.message(event, by_event[event], recipient, reply)
        if len(group) > 1 and event not in LIST_EVENTS:
            event = DIGEST  # several notifications of one kind, each a section of a digest
    else:
        event = DIGEST
        ordered = sorted(by_event.items(), key=lambda kv: _order(kv[0]))
        subject, text, html = renderer.digest(ordered, recipient, reply)
    subject = subject_line(settings, subject)
    threads = {n.thread for n, _ in group}
    thread = threads.pop() if len(threads) == 1 else None
    keys = [n.key for n, _ in group]  # one per entry of ``events``, in the same order
    attachments = [Attachment(*a) for n, _ in group for a in n.attachments]
    attachments += [_invitation(n.invitation, settings, sender) for n, _ in group if n.invitation]
    msg_key = hashlib.sha256(
        ("|".join(sorted(keys)) + "|" + person.address.lower()).encode()
    ).hexdigest()
    msg = compose(
        reply_to=replies,
        sender=Mailbox(sender.address, sender.name),
        to=[Mailbox(person.address, person.name)],
        subject=subject,
        text=text,
        html=html,
        event=event,
        key=msg_key,
        thread=thread,
        attachments=attachments,
        date=dt.datetime.now(settings.tz()),
    )
    limits = [n.not_after for n, _ in group if n.not_after is not None]
    return Planned(
        event=event,
        events=events,
        keys=keys,
        to=person,
        subject=msg.subject,
        text=text if keep_text else "",
        html=html if keep_text else "",
        attachments=attachments,
        thread=thread,
        raw=msg.raw,
        message_id=msg.message_id,
        # A digest goes while any of it matters: reminders only, until the last of their
        # events begins (a digest never drops an item); with other news, whatever they say.
        not_after=max(limits) if limits and len(limits) == len(group) else None,
    )


def _invitation(invitation: Invitation, settings: Settings, sender: Sender) -> Attachment:
    """The .ics of ``invitation``, organised by the system manager (who a reply about
    anything not a job goes to), else by the account that sends it."""
    from cpmail.ics import event_ics

    organizer = (
        (settings["manager.email"], settings["manager.name"])
        if settings["manager.email"]
        else (sender.address, sender.name)
    )
    ics = event_ics(**invitation.event, organizer=organizer, attendees=invitation.attendees)
    return Attachment(invitation.filename, ics, "text/calendar; method=REQUEST; charset=utf-8")


def _fitted(
    plan: Callable[[Group], Planned], groups: list[Group], limit: int | None
) -> list[Planned]:
    """Each group planned (on both cores for a big run), a digest or list larger than the
    transport takes split in two until each part fits: one person's many notifications
    never stop everyone's mail.

    A single notification too large stays as it is: it fails by itself (see _queue_all).
    """
    planned = halves(plan, groups)
    if limit is None or all(len(p.raw) <= limit for p in planned):
        return planned

    def fit(group: Group, p: Planned) -> list[Planned]:
        if len(p.raw) <= limit or len(group) < 2:
            return [p]
        half = len(group) // 2
        return [*fit(group[:half], plan(group[:half])), *fit(group[half:], plan(group[half:]))]

    return [part for g, p in zip(groups, planned, strict=True) for part in fit(g, p)]


def _order(event: str) -> int:
    return EVENTS.index(event) if event in EVENTS else len(EVENTS)


def _draft(p: Planned, sender: Sender) -> Draft:
    return Draft(
        event=p.event,
        key=None,
        account=sender.account,
        from_addr=sender.address,
        to=[p.to.address],
        subject=p.subject,
        message_id=p.message_id,
        raw=p.raw,
        not_after=p.not_after,
        staff=(p.to.staff_id,),
    )


FAILURE_SUMMARY = "failure-summary"  # the event of the message to the manager


# A failure like those the manager's summary lists, to render it before a run sends anything.
_EXAMPLE_FAILURE = {
    "subject": "[C&P] Task due today: Proofread page 3 (job J1)",
    "to": "pat@example.com",
    "error": "the SMTP server mail.example.com:587 refused the message: 550 5.1.1 no such user",
    "kept": True,
}


def _renderer(settings: Settings, home: Path | None, date: dt.date) -> Renderer:
    """The run's templates (the home's first), with what every message of the run shares."""
    return Renderer(
        home,
        {
            "agency": {"name": settings["agency.name"], "address": settings["agency.address"]},
            "run_date": date,
            "prefix": settings["mail.subject_prefix"],
        },
    )


def preview_failure_summary(settings: Settings, home: Path | None, date: dt.date) -> Planned:
    """The summary to the manager as a check would write it, of an example failure."""
    renderer = _renderer(settings, home, date)
    subject, text, html = _failure_summary(renderer, settings, [_EXAMPLE_FAILURE])
    return Planned(
        event=FAILURE_SUMMARY,
        events=[FAILURE_SUMMARY],
        keys=[],
        to=Person(settings["manager.email"], settings["manager.name"]),
        subject=subject_line(settings, subject),
        text=text,
        html=html,
        attachments=[],
        thread=None,
    )


def _failure_summary(
    renderer: Renderer, settings: Settings, failures: list[dict[str, Any]]
) -> tuple[str, str, str]:
    """(subject, text, html) of the summary to the manager of ``failures``."""
    return renderer.render(
        "failure-summary",
        {
            "event": FAILURE_SUMMARY,
            "count": len(failures),
            "host": socket.gethostname(),
            "failures": failures,
            "recipient": {"name": settings["manager.name"], "address": settings["manager.email"]},
        },
    )


def _tell_manager(
    engine: sa.Engine,
    settings: Settings,
    transport: Transport,
    sender: Sender,
    delivery: Delivery,
    renderer: Renderer,
    run_id: str,
    notice: list[str],
) -> Delivery | None:
    """One summary message to the system manager when mail failed for good in this run.

    Return how its delivery went (None when there was nothing to tell). A summary
    that cannot be written is said in ``notice``: the run's own report still stands.
    """
    failed = [i for i, s in delivery.status.items() if s == Status.FAILED]
    manager = settings["manager.email"]
    if not failed or not manager or delivery.stopped is not None:
        return None
    m = messages.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(m.id, m.subject, m.to_addrs, m.last_error).where(m.id.in_(failed))
        ).all()
    # (kept: its text is still there, for `outbox retry`; one too big for the transport is not)
    failures = [
        {
            "subject": r.subject,
            "to": r.to_addrs,
            # (masked: an error kept by an earlier version may quote a secret)
            "error": hide(r.last_error) if r.last_error else r.last_error,
            "kept": r.id not in delivery.unkept,
        }
        for r in rows
    ]
    try:
        subject, text, html = _failure_summary(renderer, settings, failures)
    except ConfigError as e:  # (it rendered at the start; these failures broke it)
        notice.append(f"the summary of failed mail was not sent to the manager: {e}")
        return None
    msg = build_message(
        sender=Mailbox(sender.address, sender.name),
        to=[Mailbox(manager, settings["manager.name"])],
        subject=subject_line(settings, subject),
        text=text,
        html=html,
        event=FAILURE_SUMMARY,
        key=f"{FAILURE_SUMMARY}:{run_id}",
    )
    draft = Draft.from_message(
        msg, event=FAILURE_SUMMARY, key=None, account=sender.account, envelope_from=sender.address
    )
    with engine.begin() as conn:  # claimed by this run at once: no other run sends it
        ids = queue_many(conn, [draft], run_id=run_id, ledger_keys=[None], claimed=True)
    return deliver(
        engine, transport, settings, run_id=run_id, ids=ids, ready=ready_of(ids, [draft])
    )


__all__ = ["CheckResult", "EventSummary", "Planned", "message_id_for", "run_check"]
