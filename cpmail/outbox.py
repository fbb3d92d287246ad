"""The outbox, the ledger and the log: queue, claim, deliver, retry.

A message is a row of ``messages`` from the moment it is queued. It is claimed
(status ``sending``) before it is handed to the transport and marked ``sent``
only after the transport accepted it, so a crash at any point loses nothing:
a row left ``sending`` by a dead process is claimed again after 15 minutes.
The ledger holds every notification key ever queued or suppressed; a key is
inserted in the same transaction as its message, so no key is queued twice.

On PostgreSQL rows are claimed with ``FOR UPDATE SKIP LOCKED``; on SQLite every
transaction starts with BEGIN IMMEDIATE (see ``cpmail.store``), which
serialises claims between processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from cpmail import interrupt, pace
from cpmail.addresses import mailbox_key, normal_address, valid_address
from cpmail.errors import (
    PROMISES,
    SLOWER,
    TOMORROW,
    AuthError,
    InputError,
    NoAnswer,
    TemporaryFailure,
    TransportError,
    Unavailable,
    Unreachable,
    settled,
)
from cpmail.scrub import hide
from cpmail.secrets import account_words
from cpmail.settings import Settings
from cpmail.sizes import size_pair
from cpmail.statuses import Status
from cpmail.store import clock, lower, utcnow
from cpmail.store.schema import ledger, message_bodies, messages, runs, staff, staff_opt_out
from cpmail.transports.base import Envelope, Outcome, Transport

log = logging.getLogger(__name__)

# A pass claims this many messages at first; each batch sent within CLAIM_GROWS_WITHIN
# seconds of its claim makes the next twice as large, up to CLAIM_MOST: each claim costs
# about as much as sending ten messages, whatever its size. A run killed outright leaves
# what it holds claimed until outbox.stale_claim_minutes.
CLAIM_BATCH = 200
CLAIM_MOST = 1000
CLAIM_GROWS_WITHIN = 1.0
# The event of a test message (`staff test`, `config test`): sent by its own command at
# once, or never; no other run takes it up.
ONCE = "test"
STALLED_AFTER = 3  # messages in a row without an answer in time: the server stopped answering
RUNS_KEPT = dt.timedelta(days=30)  # how long a finished run's row is kept
NOTE_CHARS = 500  # of why a run could not send, kept with it
# How long the end of a run keeps trying to record outcomes the server accepted.
RECORD_PATIENCE = 300.0
# A pass waits at most this long in all for accounts a server asked to slow
# down (Retry-After); past it, their mail waits in the outbox for a later run.
MAX_PAUSE = 300.0
# Within this many messages of an account's daily limit, what the log says it sent is
# read before each message: runs side by side share the limit.
DAY_NEAR = 20


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class Queueable(Protocol):
    """What the outbox takes of a composed message (a ``Draft``): its headers and bytes."""

    event: str
    key: str | None  # ledger key; None for one-off messages (reports, tests)
    account: str  # whose credentials send it: staff ID, "shared" or ""
    from_addr: str
    to: list[str]
    subject: str
    message_id: str
    raw: bytes
    not_after: dt.datetime | None  # (UTC, naive) not sent after this
    staff: tuple[str | None, ...]  # the staff member each address of ``to`` is of, if any


def _insert_ledger(conn: sa.Connection, key: str, event: str, now: dt.datetime) -> bool:
    """Insert the key; False when it was there already (another run queued it)."""
    values = {"key": key, "event": event, "created_at": now}
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(ledger).values(values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(ledger).values(values).on_conflict_do_nothing()
    else:
        if conn.execute(sa.select(ledger.c.key).where(ledger.c.key == key)).first():
            return False
        stmt = ledger.insert().values(values)
    # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT DO NOTHING.
    return conn.execute(stmt.returning(ledger.c.key)).first() is not None


def record_keys(conn: sa.Connection, keys: Sequence[str], now: dt.datetime) -> set[str]:
    """Insert ledger keys in a few statements; return those that were not there yet.

    Keys go in sorted order, so concurrent runs on PostgreSQL take the
    ledger's row locks in one order and never deadlock.
    """
    ordered = sorted(set(keys))
    dialect = conn.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        return {k for k in ordered if _insert_ledger(conn, k, k.split(":")[0], now)}
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    if not ordered:
        return set()
    # One statement run for many rows: SQLAlchemy sends them as a few
    # multi-row INSERTs and gathers what RETURNING says was new.
    stmt = insert(ledger).on_conflict_do_nothing().returning(ledger.c.key)
    rows = [{"key": k, "event": k.split(":")[0], "created_at": now} for k in ordered]
    return set(conn.execute(stmt, rows).scalars())


def check_size(draft: Queueable, max_bytes: int | None, *, suppressed: bool = False) -> None:
    """Refuse a message larger than the transport takes (a suppressed one is never sent)."""
    if max_bytes is not None and len(draft.raw) > max_bytes and not suppressed:
        raise InputError(
            "the message {!r} is {}; the transport takes at most {}.".format(
                draft.subject, *size_pair(len(draft.raw), max_bytes)
            )
        )


def _row(
    draft: Queueable,
    ledger_key: str | None,
    run_id: str,
    suppressed: bool,
    now: dt.datetime,
    claimed: bool = False,
) -> dict[str, Any]:
    status = Status.SUPPRESSED if suppressed else Status.SENDING if claimed else Status.QUEUED
    return {
        "ledger_key": ledger_key,
        "event": draft.event,
        "account": draft.account,
        "from_addr": draft.from_addr,
        "to_addrs": ",".join(draft.to),
        "pending_rcpts": "" if suppressed else ",".join(draft.to),
        "subject": draft.subject,
        "message_id": draft.message_id,
        "size": len(draft.raw),
        "status": status,
        "attempts": 0,
        "created_at": now,
        "queued_at": now,
        "run_id": run_id,
        "claimed_at": now if status == Status.SENDING else None,
        "claimed_by": run_id if status == Status.SENDING else None,
        "not_after": draft.not_after,
        "staff_ids": json.dumps(list(draft.staff)) if any(draft.staff) else "",
    }


def queue(
    conn: sa.Connection,
    draft: Queueable,
    *,
    run_id: str,
    suppressed: bool = False,
    max_bytes: int | None = None,
) -> int | None:
    """Queue ``draft`` (or record it as suppressed) inside the caller's transaction.

    Return the message id, or None when its ledger key was already recorded.
    """
    check_size(draft, max_bytes, suppressed=suppressed)
    now = utcnow()
    if draft.key is not None and not _insert_ledger(conn, draft.key, draft.event, now):
        return None
    row = _row(draft, draft.key, run_id, suppressed, now)
    id_ = int(conn.execute(messages.insert().values(row).returning(messages.c.id)).scalar_one())
    if not suppressed:
        conn.execute(message_bodies.insert().values(message_id=id_, raw=draft.raw))
    return id_


def queue_many(
    conn: sa.Connection,
    drafts: Sequence[Queueable],
    *,
    run_id: str,
    ledger_keys: Sequence[str | None],
    suppressed: bool = False,
    max_bytes: int | None = None,
    claimed: bool = False,
) -> list[int]:
    """Queue several drafts with one statement inside the caller's transaction.

    Their ledger keys are recorded by the caller (``record_keys``), in the same
    transaction; ``ledger_keys`` holds what each row remembers of them. With
    ``claimed`` the rows start out ``sending``, claimed by ``run_id``, for a
    caller that hands them to ``deliver`` at once (``ready``): a crash before
    that leaves them to be taken up again like any claim. Return the message
    ids, in the order of ``drafts``.
    """
    if not drafts:
        return []
    for d in drafts:
        check_size(d, max_bytes, suppressed=suppressed)
    now = utcnow()
    rows = [
        _row(d, k, run_id, suppressed, now, claimed)
        for d, k in zip(drafts, ledger_keys, strict=True)
    ]
    stmt = messages.insert().returning(messages.c.id, sort_by_parameter_order=True)
    ids = [int(i) for i in conn.execute(stmt, rows).scalars()]
    if not suppressed:
        bodies = [{"message_id": i, "raw": d.raw} for i, d in zip(ids, drafts, strict=True)]
        conn.execute(message_bodies.insert(), bodies)
    return ids


def ready_of(ids: Sequence[int], drafts: Sequence[Queueable]) -> list[tuple[Envelope, str]]:
    """Drafts just queued with ``claimed=True``, as ``deliver(ready=…)`` takes them."""
    return [
        (Envelope(i, d.account, d.from_addr, tuple(d.to), d.raw), d.event)
        for i, d in zip(ids, drafts, strict=True)
    ]


# ------------------------------------------------------------------ runs and their claims


def stale_after(settings: Settings) -> dt.timedelta:
    """How long a dead run's claims are kept before they are taken up again."""
    return dt.timedelta(minutes=settings["outbox.stale_claim_minutes"])


def renew_every(settings: Settings) -> float:
    """Seconds between a live run's heartbeats: a fifth of the stale limit, at most a minute."""
    return _beat_for(stale_after(settings).total_seconds())


def _beat_for(limit: float) -> float:
    """The heartbeat of a run whose claims are its own for ``limit`` seconds."""
    return max(0.2, min(60.0, limit / 5))


class Lease:
    """This process's run: a row in ``runs`` whose heartbeat keeps its claims its own.

    While the process lives a thread renews ``heartbeat_at``, however long
    sending takes; another run takes up these claims only once the heartbeat
    is older than ``outbox.stale_claim_minutes`` (the process died). When the
    run ends, every message it still holds goes back to the queue, except
    those the server accepted whose outcome could not be written yet
    (``keep``): sending them again would send them twice.
    """

    def __init__(
        self,
        engine: sa.Engine,
        settings: Settings,
        run_id: str,
        command: str,
        run_date: dt.date | None = None,
    ) -> None:
        self.engine = engine
        self.run_id = run_id
        self.command = command
        self.run_date = run_date
        self.interval = renew_every(settings)
        self.stale = stale_after(settings)
        # A claim is safe while its last renewal is younger than the stale limit; keep
        # a margin, since another run may be looking at the very same moment.
        self.safe_for = self.stale.total_seconds() * 0.8
        self.renewed = _elapsed()
        self.lost = False
        self.keep: set[int] = set()
        self.exit_code: int | None = None
        self.note: str | None = None  # why it could not send, for `cpmail status`
        self.counts: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self.engine.begin() as conn:
            now = clock(conn)
            # Runs that ended long ago tell nothing any more (status reads the last check).
            conn.execute(
                runs.delete().where(
                    runs.c.ended_at.is_not(None), runs.c.started_at < now - RUNS_KEPT
                )
            )
            conn.execute(
                runs.insert().values(
                    id=self.run_id,
                    command=self.command,
                    host=socket.gethostname()[:200],
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                    expires_at=now + self.stale,
                    run_date=self.run_date,
                )
            )
        self._thread = threading.Thread(target=self._beat, name="cpmail-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            if self.expired():
                return  # too late to renew: another run may hold these messages by now
            try:
                with self.engine.begin() as conn:
                    now = clock(conn)
                    conn.execute(
                        runs.update()
                        .where(runs.c.id == self.run_id)
                        .values(heartbeat_at=now, expires_at=now + self.stale)
                    )
                self.renewed = _elapsed()
            except Exception as e:  # the database is away for now: the next beat tries again
                log.info("could not renew the claims of run %s: %s", self.run_id, e)

    def expired(self) -> bool:
        """True once the claim may have lapsed (the process was stopped, the machine slept).

        From then on this run sends nothing more: another run may have taken up
        its messages. It stays expired.
        """
        if not self.lost and _elapsed() - self.renewed > self.safe_for:
            self.lost = True
            log.info("run %s was not heard of for too long; it sends nothing more", self.run_id)
        return self.lost

    def end(self, exit_code: int | None) -> None:
        """Stop the heartbeat, give back what is still claimed, and record how the run ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.engine.begin() as conn:
            _give_back(conn, self.run_id, keep=self.keep)
            now = clock(conn)
            code = exit_code if exit_code is not None else self.exit_code
            conn.execute(
                runs.update()
                .where(runs.c.id == self.run_id)
                .values(
                    ended_at=now,
                    heartbeat_at=now,
                    exit_code=code,
                    note=self.note if code == 3 else None,
                    counts=None if self.counts is None else json.dumps(self.counts),
                )
            )


def _elapsed() -> float:
    """Seconds on a clock that also runs while the process is stopped or the machine sleeps."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.time()


_LEASES: dict[str, Lease] = {}


@contextmanager
def lease(
    engine: sa.Engine,
    settings: Settings,
    run_id: str,
    command: str,
    *,
    run_date: dt.date | None = None,
) -> Iterator[Lease]:
    """Hold a run for the block (or join the one this process holds for ``run_id``)."""
    held = _LEASES.get(run_id)
    if held is not None:
        yield held
        return
    held = Lease(engine, settings, run_id, command, run_date)
    held.start()
    _LEASES[run_id] = held
    code: int | None = None
    try:
        yield held
    except interrupt.Stopped as e:
        code = e.exit_code
        raise
    except BaseException as e:
        code = int(getattr(e, "exit_code", 70))
        raise
    finally:
        del _LEASES[run_id]
        try:
            held.end(code)
        except Exception as e:
            if code is None:  # nothing else is being reported: this is the error
                raise
            log.info("could not record the end of run %s: %s", run_id, e)


# ------------------------------------------------------------------ delivery


@dataclass
class Delivery:
    """What one delivery pass did, message by message."""

    status: dict[int, str] = field(default_factory=dict)  # id -> sent|deferred|failed
    events: dict[int, str] = field(default_factory=dict)  # id -> event
    errors: dict[int, str] = field(default_factory=dict)
    # handed over with no answer to say what became of them: the server may have them
    unsure: set[int] = field(default_factory=set)
    waiting: int = 0  # left for later (outside the send window)
    released: int = 0  # claimed but not sent (the run was stopped): back in the queue
    held: set[int] = field(default_factory=set)  # those released: never offered to the server
    partly: set[int] = field(default_factory=set)  # accepted for some recipients, not all
    unkept: set[int] = field(default_factory=set)  # failed, its text deleted: no retry sends it
    notes: list[str] = field(default_factory=list)  # what a person should know (paced mail)
    stopped: TransportError | None = None  # AuthError / Unreachable that ended the pass
    # any mail the pass found too old to send (failed) or no longer current (dropped):
    # id -> (status, event, why); see _expire
    expired: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    # those of ``expired`` dropped as none of their recipients gets them now (each left,
    # or muted its event): see _follow_addresses
    no_one: set[int] = field(default_factory=set)

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)

    def merge(self, other: Delivery) -> None:
        """Take in what another pass of the same run did (the manager's summary)."""
        self.status.update(other.status)
        self.events.update(other.events)
        self.errors.update(other.errors)
        self.unsure |= other.unsure
        self.notes.extend(other.notes)
        self.released += other.released
        self.held |= other.held
        self.partly |= other.partly
        self.unkept |= other.unkept
        self.expired.update(other.expired)
        self.no_one |= other.no_one

    @property
    def undelivered(self) -> int:
        return self.count(Status.DEFERRED) + self.count(Status.FAILED)


def backoff(attempts: int) -> dt.timedelta:
    """1, 2, 4 … minutes after each failed attempt, at most 6 hours."""
    return dt.timedelta(seconds=min(60 * 2 ** max(attempts - 1, 0), 6 * 3600))


def in_send_window(settings: Settings, now_local: dt.datetime | None = None) -> bool:
    window = settings["mail.send_window"]
    if not window:
        return True
    start_s, end_s = window.split("-")
    now_local = now_local or dt.datetime.now(settings.tz())
    minutes = now_local.hour * 60 + now_local.minute
    sh, sm = (int(x) for x in start_s.split(":"))
    eh, em = (int(x) for x in end_s.split(":"))
    start, end = sh * 60 + sm, eh * 60 + em
    if start <= end:
        return start <= minutes < end
    return minutes >= start or minutes < end  # a window across midnight


def window_opens(settings: Settings, now_utc: dt.datetime) -> dt.datetime | None:
    """When the send window next opens (naive UTC); None while it is open, or without one.

    The first minute from now on that ``in_send_window`` finds open: what sending
    itself will find, whatever the clocks do that day (an hour skipped or repeated).
    """
    if not settings["mail.send_window"]:
        return None
    tz = settings.tz()
    at = now_utc.replace(tzinfo=dt.UTC)
    if in_send_window(settings, at.astimezone(tz)):
        return None
    at = at.replace(second=0, microsecond=0)
    # Two days and the hour the clocks may repeat: a window wholly inside the hour they skip
    # does not open that day, only the next.
    for _ in range(50 * 60):
        at += dt.timedelta(minutes=1)
        if in_send_window(settings, at.astimezone(tz)):
            return at.replace(tzinfo=None)
    return None


def _not_before(at: dt.datetime | None, opens: dt.datetime | None) -> dt.datetime | None:
    """A time mail is due, or the window's opening if that is later: nothing goes before."""
    return max(at, opens) if at is not None and opens is not None else at


def live_run(now: dt.datetime, cutoff: dt.datetime, run: Any = messages.c.claimed_by) -> Any:
    """A run that still renews its heartbeat: its claims are its own.

    ``run`` names the run (by default the one that claimed the message).
    Judged by the run's own limit (``expires_at``), whatever the limit of the
    run looking; a row written before there was one, by ``cutoff``.
    """
    r = runs.c
    renewed = sa.or_(r.expires_at > now, sa.and_(r.expires_at.is_(None), r.heartbeat_at >= cutoff))
    return sa.exists().where(r.id == run, r.ended_at.is_(None), renewed).correlate(messages)


def _due_by_status(now: dt.datetime, stale: dt.timedelta, alive: Collection[str] = ()) -> list[Any]:
    """What makes a message due, one condition for each status it can be due in.

    ``alive``: runs known to live (``runs_here``), whose claims are theirs
    whatever their heartbeat says.
    """
    m = messages.c
    # Mail that no longer matters (a reminder of an event that has begun) is not sent;
    # the next pass drops it (_expire). A test message is sent by its own command or
    # never: no other run takes it up (_expire fails it once its command is gone).
    current = sa.and_(sa.or_(m.not_after.is_(None), m.not_after > now), m.event != ONCE)
    return [
        sa.and_(m.status == Status.QUEUED, current),
        sa.and_(
            m.status == Status.DEFERRED,
            sa.or_(m.next_attempt_at.is_(None), m.next_attempt_at <= now),
            current,
        ),
        sa.and_(_orphaned(now, stale, alive), m.event != ONCE),
    ]


def _orphaned(now: dt.datetime, stale: dt.timedelta, alive: Collection[str] = ()) -> Any:
    """Claimed by a run that stopped: it is no longer renewed, nor known to be alive here."""
    m = messages.c
    cutoff = now - stale
    return sa.and_(
        m.status == Status.SENDING,
        m.claimed_at < cutoff,
        ~live_run(now, cutoff),
        *([m.claimed_by.not_in(sorted(alive))] if alive else []),
    )


def _due(now: dt.datetime, stale: dt.timedelta, alive: Collection[str] = ()) -> Any:
    return sa.or_(*_due_by_status(now, stale, alive))


def _oldest_due(
    dialect: str,
    now: dt.datetime,
    stale: dt.timedelta,
    limit: int,
    *more: Any,
    alive: Collection[str] = (),
) -> Any:
    """The ids of the ``limit`` oldest due messages (meeting ``more``).

    On SQLite, the oldest of each status are read in order from the (status,
    id) index and the few found are merged: one condition over every status
    read and sorted all due messages on every claim (28 ms with 10,000 queued).
    PostgreSQL keeps one statement, whose FOR UPDATE SKIP LOCKED applies the
    limit after the rows other runs are claiming are passed over.
    """
    m = messages.c
    if dialect == "postgresql":
        q = sa.select(m.id).where(_due(now, stale, alive), *more).order_by(m.id).limit(limit)
        return q.with_for_update(of=messages, skip_locked=True)
    parts = [
        sa.select(sa.select(m.id).where(due, *more).order_by(m.id).limit(limit).subquery().c.id)
        for due in _due_by_status(now, stale, alive)
    ]
    merged = sa.union_all(*parts).subquery()
    return sa.select(merged.c.id).order_by(merged.c.id).limit(limit)


def claim(
    engine: sa.Engine,
    *,
    run_id: str,
    limit: int = CLAIM_BATCH,
    ids: Sequence[int] | None = None,
    events: dict[int, str] | None = None,
    refused: set[int] | None = None,
    account: str | None = None,
    stale: dt.timedelta = dt.timedelta(minutes=15),
    addresses: StaffAddresses | None = None,
    forget: Sequence[int] = (),
    ended: Delivery | None = None,
) -> list[Envelope]:
    """Mark up to ``limit`` due messages ``sending`` for this run and return them.

    ``events``, when given, is filled with each claimed message's event;
    ``refused`` with the ids of those a server refused for some recipient before;
    ``account`` limits the claim to one sender's messages; ``addresses`` looks up
    the staff's addresses for re-addressing (``_follow_addresses``), and ``ended`` is
    told of each message dropped because none of the staff it waited for would get it
    now (``expired`` and ``no_one``); the texts of
    ``forget`` (sent) are removed in the same transaction. Claims are stamped with
    the database's clock (see ``cpmail.store.clock``).
    """
    m = messages.c
    with engine.begin() as conn:
        _forget_texts(conn, list(forget))
        now = clock(conn)
        more: list[Any] = []
        if ids is not None:
            more.append(m.id.in_(list(ids)))
        if account is not None:
            more.append(m.account == account)
        alive = runs_here(conn, now)[0]
        # The ids are picked first, then marked and read back: ordering whole rows
        # would copy every due message's bytes into a temporary sort on each claim.
        # On SQLite one statement does all three (picking, marking and reading in
        # three, each with the ids written out, cost twice the time). On PostgreSQL
        # the ids are picked, and locked, by a statement of their own: a LIMIT ...
        # FOR UPDATE SKIP LOCKED subquery inside an UPDATE may be run again when a
        # row changes under it, and then mark more rows than the limit.
        picked: Any = _oldest_due(conn.dialect.name, now, stale, limit, *more, alive=alive)
        if conn.dialect.name == "postgresql":
            picked = list(conn.execute(picked).scalars())
            if not picked:
                return []
        returned = conn.execute(
            messages.update()
            .where(m.id.in_(picked))
            .values(status=Status.SENDING, claimed_at=now, claimed_by=run_id)
            .returning(
                m.id,
                m.event,
                m.account,
                m.from_addr,
                m.to_addrs,
                m.pending_rcpts,
                m.refused_rcpts,
                m.staff_ids,
            )
        ).all()
        b = message_bodies.c
        got = sa.select(b.message_id, b.raw).where(b.message_id.in_([r.id for r in returned]))
        texts: dict[int, bytes] = dict(conn.execute(got).tuples().all())
        pending, left = _follow_addresses(conn, returned, texts, addresses or StaffAddresses())
        if left:
            _forget_texts(conn, list(left))
    if ended is not None:
        ended.expired.update(left)
        ended.no_one.update(left)
    # (RETURNING gives them in no set order; each row's id comes first)
    rows = sorted(tuple(r) for r in returned if r.id not in left)
    if events is not None:
        events.update((r[0], r[1]) for r in rows)
    if refused is not None:
        refused.update(r[0] for r in rows if r[6])
    return [
        Envelope(
            id=id_,
            account=account,
            mail_from=sender,
            rcpt_to=tuple(a for a in pending.get(id_, waiting).split(",") if a),
            raw=texts.get(id_) or b"",
        )
        for id_, _event, account, sender, _to, waiting, _refused, _staff in rows
    ]


class StaffAddresses:
    """The staff's work e-mail addresses, and who is no longer active, as a pass's claims
    look them up: the whole staff read once, and again once the reading is EVERY seconds
    old (each claim of up to 1,000 messages reading its staff cost as much as sending
    five messages)."""

    EVERY = 30.0

    def __init__(self) -> None:
        self.known: dict[str, str] = {}
        self.inactive: set[str] = set()
        self.muted: set[tuple[str, str]] = set()  # (staff id, event)
        self.read_at: float | None = None

    def __call__(self, conn: sa.Connection) -> dict[str, str]:
        now = time.monotonic()
        if self.read_at is None or now - self.read_at > self.EVERY:
            s = staff.c
            rows = conn.execute(sa.select(s.id, s.work_email, s.active)).all()
            self.known = {i: email for i, email, _ in rows if email is not None}
            self.inactive = {i for i, _, active in rows if not active}
            o = staff_opt_out.c
            self.muted = set(conn.execute(sa.select(o.staff_id, o.event)).tuples().all())
            self.read_at = now
        return self.known


def _staff_of(staff_ids: str) -> Any:
    """A message's ``staff_ids`` (JSON), read without the JSON parser for one plain id."""
    inner = staff_ids[2:-2]
    if staff_ids[:2] == '["' and staff_ids[-2:] == '"]' and '"' not in inner and "\\" not in inner:
        return [inner]
    return json.loads(staff_ids)


def _follow_addresses(
    conn: sa.Connection,
    rows: Sequence[Any],
    texts: dict[int, bytes],
    addresses: StaffAddresses,
) -> tuple[dict[int, str], dict[int, tuple[Status, str, str]]]:
    """Mail that waited goes to its staff members as they are now.

    An address corrected after a "550 no such user", or changed while the mail
    waited for the send window, is the one it goes to: in the envelope, the To
    header, the log and the text kept (``texts``, changed in place). A staff
    member without an address now, or no longer in the staff, keeps the one the
    message has. One who is no longer active (``staff.active``), or who muted the
    message's event (``staff_opt_out``; a digest's own items are not looked at),
    gets none of it, as routing would leave them out now: their addresses leave
    the envelope (the To header stays as written), and a message left with no one
    is dropped, saying why. Return the new pending recipients of each message that
    changed, and the messages dropped (status, event, why).
    """
    now_at: dict[str, str] | None = None
    m, b = messages.c, message_bodies.c
    pending: dict[int, str] = {}
    left: dict[int, tuple[Status, str, str]] = {}
    for r in rows:
        if not r.staff_ids:
            continue
        try:
            ids = _staff_of(r.staff_ids)
        except ValueError:
            continue
        sent_to = r.to_addrs.split(",")
        if not isinstance(ids, list) or len(ids) != len(sent_to):
            continue
        if now_at is None:
            now_at = addresses(conn)
        changes, gone = _now_for(sent_to, ids, now_at, addresses, r.event)
        if not changes and not gone:
            continue  # (most of the time)
        before = [a for a in r.pending_rcpts.split(",") if a]
        leaving = [a for a in before if a in gone]
        if not changes and not leaving:
            continue
        waiting = [changes.get(a, a) for a in before if a not in gone]
        if not waiting:
            left[r.id] = _drop_for_no_one(conn, r, [gone[a] for a in leaving])
            continue
        pending[r.id] = ",".join(waiting)
        values: dict[str, Any] = {"pending_rcpts": pending[r.id]}
        raw = texts.get(r.id)
        if changes:
            values["to_addrs"] = ",".join(changes.get(a, a) for a in sent_to)
            if raw is not None:
                from cpmail.compose import readdressed  # (rare: not on every command's path)

                texts[r.id] = raw = readdressed(raw, changes)
                values["size"] = len(raw)
                conn.execute(message_bodies.update().where(b.message_id == r.id).values(raw=raw))
        conn.execute(messages.update().where(m.id == r.id).values(**values))
        for old, new in changes.items():
            log.info(
                "message %d goes to %s, its staff member's address now (not %s)", r.id, new, old
            )
        for address in leaving:
            log.info(
                "message %d does not go to %s: %s", r.id, address, _said_of(gone[address], r.event)
            )
    return pending, left


def _now_for(
    sent_to: Sequence[str],
    ids: Sequence[Any],
    now_at: dict[str, str],
    staff_now: StaffAddresses,
    event: str,
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """A message's addresses that changed (old -> new), and those of staff members who
    would get it no more (address -> (staff id, "inactive" or "muted")): no longer
    active, or who muted its event since."""
    changes: dict[str, str] = {}
    gone: dict[str, tuple[str, str]] = {}
    for address, sid in zip(sent_to, ids, strict=True):
        if not isinstance(sid, str):
            continue
        if sid in staff_now.inactive:
            gone[address] = (sid, "inactive")
            continue
        if (sid, event) in staff_now.muted:
            gone[address] = (sid, "muted")
            continue
        new = now_at.get(sid)
        if new is None or new == address or not valid_address(new):
            continue  # (the same, as written: most of the time)
        new = normal_address(new)
        if mailbox_key(new) != mailbox_key(address):
            changes[address] = new
    return changes, gone


def _said_of(gone: tuple[str, str], event: str) -> str:
    sid, why = gone
    return f"{sid} is no longer active" if why == "inactive" else f"{sid} muted {event}"


def _drop_for_no_one(
    conn: sa.Connection, row: Any, gone: Sequence[tuple[str, str]]
) -> tuple[Status, str, str]:
    """End a claimed message none of whose recipients would get it now (status, event,
    why): each is no longer active, or muted its event."""
    m = messages.c
    left = sorted({sid for sid, why in gone if why == "inactive"})
    muted = sorted({sid for sid, why in gone if why == "muted"})
    said = []
    if left:
        said.append(f"{_and(left)} {'is' if len(left) == 1 else 'are'} no longer active")
    if muted:
        said.append(f"{_and(muted)} muted {row.event}")
    why = "not sent: " + "; ".join(said)
    ended = conn.execute(
        messages.update()
        .where(m.id == row.id)
        .values(**_ending(Status.DROPPED, why))
        .returning(m.last_error)
    ).scalar_one()
    log.info("message %d dropped: %s", row.id, why)
    return Status.DROPPED, row.event, ended


def _and(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _ending(status: Status, why: str, **more: Any) -> dict[str, Any]:
    """The values that end a message that was not sent: ``status``, claimed and due no
    more, ``why`` said after its last error."""
    return {
        "status": status,
        "claimed_at": None,
        "claimed_by": None,
        "next_attempt_at": None,
        "last_error": _joined(messages.c.last_error, why),
        **more,
    }


def _joined(column: Any, more: str) -> Any:
    """``column; more`` in SQL, for a message that ends (failed or dropped): without a
    sentence's full stop before the semicolon, nor an earlier promise that it will be
    sent (``PROMISES``)."""
    said = sa.func.rtrim(column, ".")
    for promise in PROMISES:
        said = sa.func.replace(said, promise, "")
    return sa.case((column.is_(None), more), else_=said + "; " + more)


def _expire(engine: sa.Engine, settings: Settings, result: Delivery) -> None:
    """Messages waiting past max_age_hours fail for good; those past ``not_after`` are dropped.

    A calendar reminder held back (by the send window, say) until its event began
    would only confuse: it is dropped, saying why, and stays in the log. Both go
    in ``result.expired`` (whoever's mail they are: ``check`` counts them, says
    them and tells the manager of the failed; a one-off command is not judged
    by them). Each row is ended by one statement that returns what it ended, so
    two runs at once never both report one, nor end one another run has claimed.
    """
    m = messages.c
    now = utcnow()
    limit = now - dt.timedelta(hours=settings["outbox.max_age_hours"])
    waiting = m.status.in_((Status.QUEUED, Status.DEFERRED))
    stale = stale_after(settings)
    with engine.begin() as conn:
        # A test message its command left behind (killed, or stopped before it sent it)
        # fails, judged as claims are, by the database's clock. It is not reported: its
        # command was to say what became of it, and `status` leaves failed tests out.
        db_now = clock(conn)
        alive = runs_here(conn, db_now)[0]
        gone = sa.and_(~live_run(db_now, db_now - stale, m.run_id), m.run_id.not_in(alive))
        failed = conn.execute(
            messages.update()
            .where(
                m.event == ONCE,
                sa.or_(sa.and_(waiting, gone), _orphaned(db_now, stale, alive)),
            )
            .values(
                **_ending(
                    Status.FAILED,
                    "not sent: a test message is sent at once or not at all, and the "
                    "command that sent it stopped first",
                    failed_at=now,
                ),
            )
            .returning(m.id)
        ).scalars()
        _forget_texts(conn, list(failed))
    ends: list[tuple[Status, Any, str, dict[str, Any]]] = [
        (
            Status.DROPPED,
            sa.and_(waiting, m.not_after.is_not(None), m.not_after <= now),
            "not sent: what it reminds of began before it could go",
            {"next_attempt_at": None},
        ),
        (
            Status.FAILED,
            sa.and_(waiting, m.queued_at < limit),
            f"gave up after {settings['outbox.max_age_hours']} hours in the outbox",
            {"failed_at": now},
        ),
    ]
    with engine.begin() as conn:
        for status, which, why, more in ends:
            rows = conn.execute(
                messages.update()
                .where(which)
                .values(status=status, last_error=_joined(m.last_error, why), **more)
                .returning(m.id, m.event, m.last_error)
            ).all()
            for r in rows:
                result.expired[r.id] = (status, r.event, r.last_error)
            if status == Status.DROPPED:
                _forget_texts(conn, [r.id for r in rows])


@functools.cache
def _mark_sent(paramstyle: str) -> str:
    """The statement that records one message as sent: (sent_at, id) for each.

    Written out and run on the driver (``exec_driver_sql``): recording is done
    once a message, between one message and the next on each connection, and
    SQLAlchemy's statement machinery cost 65 µs of the 90 µs it took.
    """
    mark = "?" if paramstyle == "qmark" else "%s"
    # Whoever holds the claim now: the server has the message. (A run that woke after
    # its claim lapsed may find it taken over, or recorded sent by the run that did.)
    return (
        f"UPDATE messages SET status = '{Status.SENT.value}', attempts = attempts + 1, "
        "claimed_at = NULL, claimed_by = NULL, next_attempt_at = NULL, "
        f"sent_at = {mark}, pending_rcpts = '', last_error = NULL WHERE id = {mark}"
        f" AND status <> '{Status.SENT.value}'"
    )


def _db_time(dialect: sa.Dialect, at: dt.datetime) -> Any:
    """``at`` as the driver takes it for a DateTime column (SQLite: text, as SQLAlchemy has it)."""
    return at.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect.name == "sqlite" else at


def _clean(o: Outcome) -> bool:
    return o.error is None and not o.deferred and not o.refused


@dataclass(frozen=True)
class _Reading:
    """What an answer says of the sending account, read once for whoever acts on it.

    ``daily``: no more from this account today (Gmail's 5.4.5), for the whole
    message or for the recipients in ``daily_rcpts``; they wait for the next
    day, like the account's other mail. ``throttled``: a temporary answer
    asking the account to go slower; the message goes once the pause is over.
    Neither is the message's fault: no attempt of its own is used up.
    """

    daily: bool
    daily_rcpts: tuple[str, ...]
    throttled: bool


def _read(o: Outcome) -> _Reading:
    named = {**o.deferred, **o.refused}
    daily_rcpts = tuple(a for a, w in named.items() if pace.daily_limit(w))
    daily = pace.daily_limit(str(o.error or "")) or bool(daily_rcpts)
    temporary = [*o.deferred.values()]
    if isinstance(o.error, TemporaryFailure):
        temporary.append(str(o.error))
    # A message the server may have taken already is never offered again in this run,
    # whatever its words say (a 5xx "throttled" after the text went).
    unknown = o.maybe_sent
    throttled = not daily and not unknown and pace.throttled(" ".join(temporary))
    return _Reading(daily, daily_rcpts, throttled)


def _retryable(e: BaseException) -> bool:
    """A database error that may pass (a lock, a restart, a full disk being cleared).

    (SQLite's own errors come unwrapped from the statements run on its connection.)
    """
    retryable = sa.exc.OperationalError | sa.exc.InterfaceError | OSError | sqlite3.OperationalError
    return isinstance(e, retryable) or (
        isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated
    )


class _Recorder:
    """Writes outcomes as they come, in the sending thread, before more mail is handed over.

    Calling it writes at once (one transaction). A transport that learns of
    several outcomes together (SMTP, from several connections) may ``take``
    each and ``write`` them in one transaction; a connection hands over its
    next message only once its last is on record (``settled``). A write that
    fails (the database restarting, locked, its disk full) is tried again with
    the same outcomes, reconnecting, while sending waits; once the run is
    stopped or ending it keeps trying for up to RECORD_PATIENCE.
    """

    def __init__(
        self, engine: sa.Engine, settings: Settings, result: Delivery, held: Lease
    ) -> None:
        self.engine = engine
        self.max_attempts = settings["outbox.max_attempts"]
        self.max_age = dt.timedelta(hours=settings["outbox.max_age_hours"])
        self.day_zone = pace.day_zone(settings)  # whose midnight starts a new sending day
        self.result = result
        self.held = held
        self.events: dict[int, str] = {}  # id -> event, from the claims
        self.refused_before: set[int] = set()  # refused for someone in an earlier attempt
        self.pending: list[Outcome] = []  # taken, not yet written
        self.sent: list[int] = []  # recorded sent since the pass last removed texts
        self.fatal: BaseException | None = None  # a write that will not succeed
        self.closing_since: float | None = None
        # Kept for the run: taking a connection from the pool for each write cost
        # a third of the time of recording one outcome.
        self.conn: sa.Connection | None = None
        self.observers: list[Callable[[Outcome], None]] = []  # see each outcome as it comes
        # True while the account is paced: a transport then takes one message at a
        # time, just before it sends it (see cpmail.pace).
        self.pacing: Callable[[], bool] = lambda: False
        # Wait for the account's next slot (False once the run stops): for a message
        # a transport took before the account became paced.
        self.admit: Callable[[], bool] = lambda: True

    def __call__(self, outcome: Outcome) -> None:
        self.take(outcome)
        self.write()

    def take(self, outcome: Outcome) -> None:
        """Note ``outcome`` to be written by the next ``write``."""
        for observe in self.observers:
            observe(outcome)
        if outcome.maybe_sent:
            self.result.unsure.add(outcome.id)
        self.pending.append(outcome)
        if _clean(outcome) or outcome.accepted:
            self.held.keep.add(outcome.id)

    def settled(self, id_: int) -> bool:
        """True once the outcome of message ``id_`` is written (or can no longer be)."""
        return id_ not in self.held.keep or self.fatal is not None

    @property
    def blocked(self) -> bool:
        """True once outcomes cannot be written, or the run's claim lapsed: send no more."""
        return self.fatal is not None or self.held.expired()

    def write(self) -> None:
        """Write every outcome taken so far, in one transaction; return once stored or given up."""
        if not self.pending or self.fatal is not None:
            return
        batch, self.pending = self.pending, []
        # The server has these messages: a second signal waits for their outcomes to be
        # on record (stopped here, they would stay claimed and be sent again).
        with interrupt.shielded():
            self._write_until_done(batch)

    def flush(self) -> None:
        """Write what is left at the end of a run (or of an account's turn)."""
        self.closing_since = time.monotonic()
        try:
            self.write()
        finally:
            self.closing_since = None
            self._hang_up()

    def _connection(self) -> sa.Connection:
        if self.conn is None or self.conn.closed or self.conn.invalidated:
            self.conn = self.engine.connect()
        return self.conn

    def _hang_up(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _write_until_done(self, batch: list[Outcome]) -> None:
        delay = 0.05
        while True:
            try:
                self._store(batch)
            except Exception as e:
                if not _retryable(e) or self._out_of_patience():
                    self.fatal = e
                    return
                said = str(getattr(e, "orig", None) or e).splitlines()[0]
                log.info("recording outcomes failed (%s); trying again", said)
                if isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated:
                    self.engine.dispose()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            for o in batch:
                self.held.keep.discard(o.id)
            return

    def _out_of_patience(self) -> bool:
        """While the run goes on, never; once stopped or ending, after RECORD_PATIENCE."""
        if self.closing_since is None and interrupt.requested() is not None:
            self.closing_since = time.monotonic()
        since = self.closing_since
        return since is not None and time.monotonic() - since > RECORD_PATIENCE

    def _store(self, batch: list[Outcome]) -> None:
        # Accepted for every recipient, the common case, needs nothing read back.
        quick = [
            _clean(o) and o.id in self.events and o.id not in self.refused_before for o in batch
        ]
        sent = [o.id for o, q in zip(batch, quick, strict=True) if q]
        others = [o for o, q in zip(batch, quick, strict=True) if not q]
        now = utcnow()
        notes: list[tuple[int, str, str, str | None]] = []
        conn = self._connection()
        try:
            if not others and conn.dialect.name == "sqlite":
                self._mark_sent_on_driver(conn, sent, now)
            else:
                self._store_all(conn, sent, others, now, notes)
        except BaseException:
            self._hang_up()  # the next try starts on a new connection
            raise
        notes.extend((i, self.events[i], Status.SENT, None) for i in sent)
        for note in notes:  # only once the transaction is committed
            self._note(*note)

    @staticmethod
    def _mark_sent_on_driver(conn: sa.Connection, sent: list[int], now: dt.datetime) -> None:
        """Record ``sent`` on SQLite's own connection, in one transaction.

        The common case, once a message on each connection: SQLAlchemy's
        transaction machinery cost as much as SQLite's own work.
        """
        db = conn.connection.driver_connection
        assert db is not None
        at = _db_time(conn.dialect, now)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_mark_sent("qmark"), [(at, i) for i in sent])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(Exception):
                    db.execute("ROLLBACK")
            raise

    def _store_all(
        self,
        conn: sa.Connection,
        sent: list[int],
        others: list[Outcome],
        now: dt.datetime,
        notes: list[tuple[int, str, str, str | None]],
    ) -> None:
        with conn.begin():
            if sent:
                at = _db_time(conn.dialect, now)
                conn.exec_driver_sql(_mark_sent(conn.dialect.paramstyle), [(at, i) for i in sent])
            if others:
                self._write(conn, others, now, notes)

    def _write(
        self,
        conn: sa.Connection,
        batch: list[Outcome],
        now: dt.datetime,
        notes: list[tuple[int, str, str, str | None]],
    ) -> None:
        m = messages.c
        # Only what this run still holds: a run that woke after its claim lapsed must not
        # undo the record of the run that took its mail over (sent, say, turned back into
        # deferred and sent again). What the server accepted in full is recorded whoever
        # holds it (_mark_sent).
        ours = sa.and_(m.claimed_by == self.held.run_id, m.status == Status.SENDING)
        info = {
            r.id: r
            for r in conn.execute(
                sa.select(
                    m.id, m.event, m.attempts, m.queued_at, m.pending_rcpts, m.refused_rcpts
                ).where(m.id.in_([o.id for o in batch]), ours)
            )
        }
        updates = [self._update(o, info[o.id], now, notes) for o in batch if o.id in info]
        if updates:
            conn.execute(messages.update().where(m.id == sa.bindparam("b_id"), ours), updates)

    def _update(
        self,
        o: Outcome,
        row: Any,
        now: dt.datetime,
        notes: list[tuple[int, str, str, str | None]],
    ) -> dict[str, Any]:
        """The row's new values after outcome ``o``.

        A recipient refused for good stays on record (``refused_rcpts``) while
        others are deferred: when those are accepted later the message is
        ``failed``, not ``sent``, waiting for the refused ones, saying why.
        """
        # "Daily sending limit exceeded" (Gmail's 550 5.4.5) refuses the account for the
        # day, not the message or its recipients: those it names wait for the next day.
        reading = _read(o)
        daily, daily_rcpts = reading.daily, reading.daily_rcpts
        earlier = [a for a in row.refused_rcpts.split(",") if a]
        refused_now = [a for a in o.refused if a not in daily_rcpts]
        refused = list(dict.fromkeys([*earlier, *refused_now]))
        values: dict[str, Any] = {
            "b_id": o.id,
            "claimed_at": None,
            "claimed_by": None,
            "next_attempt_at": None,
            "sent_at": now if o.accepted else None,
            "failed_at": None,  # set below when it fails for good
            "pending_rcpts": row.pending_rcpts,
            "refused_rcpts": ",".join(refused),
        }
        before = f"refused for good earlier: {', '.join(earlier)}" if earlier else ""
        words = [f"{a}: {w}" for a, w in {**o.deferred, **o.refused}.items()]
        if o.error is not None:
            temporary = isinstance(o.error, TemporaryFailure) or daily
            error = "; ".join(filter(None, [str(o.error), before]))
            unserved = [a for a in row.pending_rcpts.split(",") if a]
        elif o.deferred or o.refused:
            temporary = bool(o.deferred) or bool(daily_rcpts)
            error = "; ".join(filter(None, [*words, before]))
            if o.accepted:
                error += "; accepted for " + ", ".join(o.accepted)
                self.result.partly.add(o.id)
            unserved = list(dict.fromkeys([*o.deferred, *daily_rcpts]))
        elif earlier:
            temporary = False
            error = f"{before}; accepted for " + ", ".join(o.accepted)
            unserved = []
        else:
            values.update(status=Status.SENT, attempts=row.attempts + 1)
            values.update(pending_rcpts="", last_error=None)
            notes.append((o.id, row.event, Status.SENT, None))
            return values
        error = hide(error)  # a server's or a library's words may quote a secret
        # The account was too fast or is done for the day, not this message: no attempt
        # of its own is used up (a server that keeps throttling is bounded by the pass's
        # MAX_PAUSE and max_age).
        throttled = reading.throttled
        attempts = row.attempts + (0 if throttled or daily else 1)
        values["attempts"] = attempts
        give_up = now - row.queued_at > self.max_age or (
            not throttled and attempts >= self.max_attempts
        )
        if temporary and not give_up:
            if daily:
                delay = pace.next_day_start(self.day_zone) - now
            elif throttled:
                # it goes once the account's pause is over (in this run, when the
                # account's turn comes again)
                delay = dt.timedelta(seconds=o.retry_after or 0)
            else:
                delay = backoff(attempts)
                if o.retry_after:
                    delay = max(delay, dt.timedelta(seconds=o.retry_after))
            values.update(status=Status.DEFERRED, next_attempt_at=now + delay)
            values["pending_rcpts"] = ",".join(unserved)
        else:
            error = settled(error)
            if temporary:
                error += f" (gave up after {attempts} attempts)"
            values["status"] = Status.FAILED
            values["failed_at"] = now
            # Whoever has not got it yet, for `cpmail outbox retry`.
            values["pending_rcpts"] = ",".join(dict.fromkeys([*unserved, *refused]))
        values["last_error"] = error
        notes.append((o.id, row.event, values["status"], error))
        return values

    def _note(self, id_: int, event: str, status: str, error: str | None) -> None:
        if status == Status.SENT:
            self.sent.append(id_)
        self.result.status[id_] = status
        self.result.events[id_] = event
        if error:
            self.result.errors[id_] = error


def _claim_patiently(
    engine: sa.Engine, recorder: _Recorder, **kwargs: Any
) -> list[Envelope] | None:
    """``claim``, trying again while the database is away; None to stop taking mail."""
    delay = 0.1
    waited = 0.0
    while True:
        if interrupt.requested() is not None or recorder.blocked:
            return None
        try:
            return claim(engine, **kwargs)
        except Exception as e:
            if not _retryable(e) or waited > 30:
                raise
            if isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated:
                engine.dispose()
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 2.0)


def deliver(
    engine: sa.Engine,
    transport: Transport,
    settings: Settings,
    *,
    run_id: str,
    ids: Sequence[int] | None = None,
    on_progress: Callable[[int], None] | None = None,
    ready: Sequence[tuple[Envelope, str]] = (),
    command: str = "deliver",
    expire: bool = False,
) -> Delivery:
    """Send every due message (or only ``ids``) through ``transport``.

    ``ready`` holds messages claimed for ``run_id`` already (queued with
    ``claimed=True``), with their events: they go first, without being read
    back from the database. With ``expire`` (``check``'s pass, which reports
    them) mail waiting too long fails or is dropped first (``_expire``).

    Messages go out one sending account at a time, so that an account whose
    sign-in or passcode is refused (AuthError) holds back only its own mail;
    a transport that cannot be reached at all (Unreachable) ends the pass.
    The first such error is recorded in ``stopped``; claimed messages not sent
    go back to the queue for the next run. A stop signal (``cpmail.interrupt``)
    ends the pass the same way once the messages in flight are done.
    """
    result = Delivery()
    with lease(engine, settings, run_id, command) as held, interrupt.graceful():
        if expire:  # (the pass that reports what it expired: check's)
            _expire(engine, settings, result)
        if not in_send_window(settings):
            _wait_for_window(engine, run_id, ids, ready, stale_after(settings), result)
            return result
        _Pass(engine, transport, settings, held, result, ids, ready, on_progress).run()
        said = _said(result)
        if said is not None:  # (a check records its own exit code when it ends)
            held.exit_code = said
        if result.stopped is not None:  # why, for `cpmail status`
            held.note = hide(str(result.stopped))[:NOTE_CHARS]
    return result


def _said(result: Delivery) -> int | None:
    """The exit code a pass's delivery means, recorded with its run for `cpmail status`: 3 the
    transport refused or could not be reached, 1 some mail was not delivered, 0 all went;
    None when nothing was offered to the server (the newest word stays where it is)."""
    stopped_by = interrupt.requested()
    if stopped_by is not None:
        return 128 + stopped_by
    if result.stopped is not None:
        return result.stopped.exit_code
    if all(i in result.held for i in result.status):
        return None
    return 1 if result.undelivered else 0


class _Pass:
    """One delivery pass: account after account, each at its pace, outcomes recorded."""

    def __init__(
        self,
        engine: sa.Engine,
        transport: Transport,
        settings: Settings,
        held: Lease,
        result: Delivery,
        ids: Sequence[int] | None,
        ready: Sequence[tuple[Envelope, str]],
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.engine = engine
        self.transport = transport
        self.settings = settings
        self.held = held
        self.run_id = held.run_id
        self.result = result
        self.ids = ids
        self.ready = ready
        self.on_progress = on_progress
        self.stale = stale_after(settings)
        self.addresses = StaffAddresses()
        self.recorder = _Recorder(engine, settings, result, held)
        self.per_minute, self.per_day = pace.limits(settings)
        self.account = ""  # whose turn it is
        self.paces: dict[str, pace.Pace | None] = {}  # each account's, kept between its turns
        # What this pass holds claimed with no outcome since it was (last) claimed, in
        # order: an account's later turn (after a pause) offers these again first.
        self.holding: dict[int, Envelope] = {env.id: env for env, _ in ready}
        # handed to the transport (for the progress count, and the day's limit)
        self.offered: dict[int, Envelope] = {}
        # account -> when the log was last counted, and how long that took
        self.day_read: dict[str, tuple[float | None, float]] = {}
        self.paused_for = 0.0  # seconds this pass waited for throttled accounts
        self.silent = 0  # messages in a row the server did not answer in time
        self.stalled: Unreachable | None = None
        self.recorder.observers.append(self._observe)
        self.recorder.pacing = lambda: self.pace is not None
        self.recorder.admit = self._admit
        self.recorder.events.update((env.id, event) for env, event in ready)

    @property
    def pace(self) -> pace.Pace | None:
        """The pace of the account whose turn it is (None: it sends as fast as it can)."""
        return self.paces.get(self.account)

    def run(self) -> None:
        try:
            # Accounts that a throttling answer paused: (when they may go on, account).
            later: list[tuple[float, str]] = []
            for account in _accounts(self.engine, self.ids, self.ready, self.stale):
                if self._halted():
                    break
                self._turn(account, later)
            while later and not self._halted():
                later.sort()
                at, account = later.pop(0)
                if self._wait_for(account, at):
                    self._turn(account, later)
            if self.stalled is not None and self.result.stopped is None:
                self.result.stopped = self.stalled
        except Unreachable as e:
            self.result.stopped = e
        finally:
            self.recorder.flush()
            if self.held.lost:
                self.result.notes.append(
                    "this run was stopped or asleep for longer than "
                    f"{self.settings['outbox.stale_claim_minutes']:g} minutes "
                    "(outbox.stale_claim_minutes), so it left its messages to other runs."
                )
            if self.recorder.fatal is None:
                stopped = self.result.stopped
                reason = str(stopped) if stopped is not None else None
                _release(self.engine, self.run_id, self.result, reason=reason, keep=self.held.keep)
        if self.recorder.fatal is not None:
            raise Unavailable(
                f"{len(self.held.keep)} message(s) the server accepted could not be recorded "
                f"as sent ({self.recorder.fatal}); they stay claimed by this run and are sent "
                f"again after {self.settings['outbox.stale_claim_minutes']:g} minutes unless "
                "the database comes back first; free the disk or restart the database."
            ) from None

    def _halted(self) -> bool:
        return interrupt.requested() is not None or self.stalled is not None

    def _turn(self, account: str, later: list[tuple[float, str]]) -> None:
        """The account's turn; paused by a throttling answer, it goes on ``later``."""
        signed_in = self._account(account)
        paced = self.paces.get(account)
        if signed_in and paced is not None and paced.paused and not paced.day_full:
            later.append((paced.resume_at, account))

    def _wait_for(self, account: str, at: float) -> bool:
        """Wait until a paused account may go on; False when it must wait for a later run.

        A pass waits for throttled accounts at most MAX_PAUSE seconds in all:
        beyond that the account's claimed mail goes back to the outbox, due
        when the server said.
        """
        paced = self.paces[account]
        assert paced is not None
        wait = max(0.0, at - time.monotonic())
        if self.paused_for + wait > MAX_PAUSE:
            reason = f"the server asked {account_words(account)} to slow down{SLOWER}"
            self._hand_back(account, reason, utcnow() + dt.timedelta(seconds=wait))
            return False
        self.paused_for += wait
        while time.monotonic() < at:
            if self._halted():
                return False
            time.sleep(min(0.25, max(0.0, at - time.monotonic())))
        paced.resume()
        return True

    def _account(self, account: str) -> bool:
        """Send one account's due mail; a refused sign-in holds back only this account's.

        Return False when its sign-in was refused (it gets no later turn in this pass).
        """
        if account not in self.paces:
            self.paces[account] = _pace_for(
                self.engine, self.settings, account, self.per_minute, self.per_day
            )
        self.account = account
        signed_in = True
        try:
            self.transport.deliver(self._envelopes(account), self.recorder)
        except AuthError as e:
            self.result.stopped = self.result.stopped or e
            self._hand_back(account, str(e))
            # Given back: no longer this pass's to offer.
            self.holding = {i: env for i, env in self.holding.items() if env.account != account}
            signed_in = False
        paced = self.pace
        if paced is not None and paced.day_full and interrupt.requested() is None:
            self.recorder.flush()
            _wait_for_tomorrow(
                self.engine, self.settings, self.run_id, self.result, account, self.held.keep, paced
            )
        return signed_in

    def _hand_back(self, account: str, reason: str, not_before: dt.datetime | None = None) -> None:
        """Record what is known, then give the account's claimed mail back to the outbox."""
        self.recorder.flush()
        _release(
            self.engine,
            self.run_id,
            self.result,
            reason=reason,
            account=account,
            keep=self.held.keep,
            not_before=not_before,
        )

    def _stop(self) -> bool:
        return (
            interrupt.requested() is not None or self.recorder.blocked or self.stalled is not None
        )

    def _admit(self) -> bool:
        paced = self.pace
        if paced is None:
            return True
        self._share_the_day()
        return paced.admit(self._stop)

    def _share_the_day(self) -> None:
        """Count what other runs sent from the account since its turn began.

        Runs side by side (cron runs that overlap, other machines) share the
        account's daily limit: the log is read again once a second, and before
        every message when the day's last DAY_NEAR remain. What this run let
        go and has not recorded as sent yet is counted on top.
        """
        paced = self.pace
        if paced is None or not paced.per_day or paced.day_full:
            return
        now = time.monotonic()
        near = paced.per_day - paced.sent_today <= DAY_NEAR
        last, spent = self.day_read.get(self.account, (None, 0.0))
        # Once a second, or less often when reading takes long (a large log): at most a
        # tenth of the time goes to it.
        if last is not None and now - last < max(1.0, 10 * spent) and not near:
            return
        try:
            today, _ = _sent_lately(self.engine, self.settings, self.account)
        except Exception as e:
            if not _retryable(e):
                raise
            return  # the database is away for now: this run's own count goes on
        finally:
            self.day_read[self.account] = (now, time.monotonic() - now)
        recorded = sum(
            1
            for i, env in self.offered.items()
            if env.account == self.account and self.result.status.get(i) == Status.SENT
        )
        mine = sum(1 for env in self.offered.values() if env.account == self.account)
        paced.sent_today = max(paced.sent_today, today + mine - recorded)

    def _envelopes(self, account: str) -> Iterator[Envelope]:
        """The account's messages, claimed a batch at a time, each let go at the account's pace.

        An account's later turn (after a pause) first offers again what this
        pass holds for it that has no outcome yet.
        """
        for env in [e for e in self.holding.values() if e.account == account]:
            if env.id in self.holding:  # (its outcome may have come meanwhile)
                if self._stop() or not self._admit():
                    return
                yield self._offer(env)
        limit = CLAIM_BATCH
        while True:
            claimed = time.monotonic()
            # The texts of what went since the last claim go with this one: not kept
            # until the pass ends (a paced one can take hours).
            sent, self.recorder.sent = self.recorder.sent, []
            batch = _claim_patiently(
                self.engine,
                self.recorder,
                run_id=self.run_id,
                limit=limit,
                ids=self.ids,
                events=self.recorder.events,
                refused=self.recorder.refused_before,
                account=account,
                stale=self.stale,
                addresses=self.addresses,
                forget=sent,
                ended=self.result,
            )
            if not batch:
                return
            # (a throttled message comes back here, due once its account's pause is over)
            self.holding.update((env.id, env) for env in batch)
            for env in batch:
                if self._stop() or not self._admit():
                    return
                yield self._offer(env)
            if time.monotonic() - claimed < CLAIM_GROWS_WITHIN:
                limit = min(2 * limit, CLAIM_MOST)

    def _offer(self, env: Envelope) -> Envelope:
        if self.on_progress and env.id not in self.offered:
            self.on_progress(1)
        self.offered[env.id] = env
        return env

    def _observe(self, outcome: Outcome) -> None:
        """Answers that say "slower", "no more today" or nothing at all, as they come."""
        self.holding.pop(outcome.id, None)
        if _clean(outcome):
            self.silent = 0
            return
        if isinstance(outcome.error, NoAnswer):
            self.silent += 1
            if self.silent >= STALLED_AFTER and self.stalled is None:
                self.stalled = Unreachable(
                    f"the mail server stopped answering ({self.silent} messages in a row got "
                    f"no answer in time: {outcome.error}); the rest stay in the outbox for "
                    "the next run."
                )
        else:
            self.silent = 0
        reading = _read(outcome)  # as the recorder reads it, to set the retry time
        if not (reading.daily or reading.throttled):
            return
        paced = self.pace
        if paced is None:  # an account without a pace gets one now
            paced = self.paces[self.account] = pace.Pace(self.per_minute, self.per_day)
        if reading.daily:
            paced.stop_for_today()
        else:
            paced.slow_down(outcome.retry_after)


# Accounts the provider said were done for the day, until when (naive UTC): a
# later pass of this process (the manager's failure summary after a check) sends
# nothing more from them.
_DAY_FULL: dict[tuple[str, str], dt.datetime] = {}  # (database, account) -> until


def _pace_for(
    engine: sa.Engine, settings: Settings, account: str, per_minute: int, per_day: int
) -> pace.Pace | None:
    """The account's pace for this run, counting what the log says it sent lately."""
    if utcnow() < _DAY_FULL.get((str(engine.url), account), dt.datetime.min):
        return pace.Pace(per_minute, per_day, stopped_for_today=True)
    if not (per_minute or per_day):
        return None
    today, last_minute = _sent_lately(engine, settings, account)
    return pace.Pace(per_minute, per_day, sent_today=today, sent_last_minute=last_minute)


def _sent_lately(engine: sa.Engine, settings: Settings, account: str) -> tuple[int, int]:
    """How many messages the log says the account sent today, and in the last minute."""
    m = messages.c
    midnight = pace.day_start(pace.day_zone(settings))
    with engine.connect() as conn:
        now = clock(conn)
        row = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.count(sa.case((m.sent_at >= now - dt.timedelta(minutes=1), 1))),
            ).where(m.account == account, m.status == Status.SENT, m.sent_at >= min(midnight, now))
        ).one()
    return int(row[0]), int(row[1])


def _wait_for_tomorrow(
    engine: sa.Engine,
    settings: Settings,
    run_id: str,
    result: Delivery,
    account: str,
    keep: set[int],
    paced: pace.Pace,
) -> None:
    """The account's daily limit is reached: its mail waits for the next day."""
    tomorrow = pace.next_day_start(pace.day_zone(settings))
    if paced.stopped_for_today:  # the provider said so, not only the count
        _DAY_FULL[(str(engine.url), account)] = tomorrow
    who = account_words(account)
    # (the provider's own limit when it said so: cpmail's figure is only what it keeps to)
    limit = (
        f"{paced.per_day} messages"
        if paced.per_day and not paced.stopped_for_today
        else "the provider's limit"
    )
    reached = f"{who} reached its daily sending limit ({limit})"
    reason = reached + TOMORROW
    before = result.released
    _release(engine, run_id, result, reason=reason, account=account, keep=keep, not_before=tomorrow)
    m = messages.c
    with engine.begin() as conn:
        waiting = conn.execute(
            messages.update()
            .where(m.account == account, m.status.in_((Status.QUEUED, Status.DEFERRED)))
            .where(sa.or_(m.next_attempt_at.is_(None), m.next_attempt_at < tomorrow))
            .values(status=Status.DEFERRED, next_attempt_at=tomorrow, last_error=reason)
        ).rowcount
    n = int(waiting or 0) + result.released - before
    if n:
        when = tomorrow.replace(tzinfo=dt.UTC).astimezone(settings.tz())
        result.notes.append(
            f"{n} message(s) of {who} wait until {when:%Y-%m-%d %H:%M %Z}".rstrip()
            + f", when the daily limit starts again: {reached}."
        )


def _wait_for_window(
    engine: sa.Engine,
    run_id: str,
    ids: Sequence[int] | None,
    ready: Sequence[tuple[Envelope, str]],
    stale: dt.timedelta,
    result: Delivery,
) -> None:
    """Outside the send window: count what waits; this run's own claims go back to the queue."""
    m = messages.c
    if ready:  # the window closed since they were queued: they wait like the rest
        with engine.begin() as conn:
            conn.execute(
                messages.update()
                .where(m.claimed_by == run_id, m.status == Status.SENDING)
                .values(status=Status.QUEUED, claimed_at=None, claimed_by=None)
            )
    with engine.connect() as conn:
        q = sa.select(sa.func.count()).select_from(messages)
        if ids is not None:  # a command's own messages (a test message's too, never "due")
            q = q.where(m.id.in_(list(ids)), m.status.in_((Status.QUEUED, Status.DEFERRED)))
        else:
            q = q.where(_due(clock(conn), stale))
        result.waiting = int(conn.execute(q).scalar_one())


def _accounts(
    engine: sa.Engine,
    ids: Sequence[int] | None,
    ready: Sequence[tuple[Envelope, str]],
    stale: dt.timedelta,
) -> list[str]:
    """The sending accounts with mail due now, the ready messages' first."""
    m = messages.c
    with engine.connect() as conn:
        q = sa.select(m.account).where(_due(clock(conn), stale)).distinct()
        if ids is not None:
            q = q.where(m.id.in_(list(ids)))
        due = sorted(a for (a,) in conn.execute(q))
    return list(dict.fromkeys([*(env.account for env, _ in ready), *due]))


def _give_back(
    conn: sa.Connection,
    run_id: str,
    *,
    keep: set[int] | frozenset[int] = frozenset(),
    account: str | None = None,
    reason: str | None = None,
    not_before: dt.datetime | None = None,
) -> list[Any]:
    """Put this run's claimed rows (not ``keep``, of ``account``) back in the queue.

    They were not tried, so their attempts do not count: with a ``reason``
    they wait as ``deferred`` with it, else as ``queued`` (``deferred`` when
    tried before), due at ``not_before`` or now. Return the rows (id, event,
    attempts).
    """
    m = messages.c
    # One statement: a row another run took over in the meantime is not this run's to put back.
    q = messages.update().where(m.claimed_by == run_id, m.status == Status.SENDING)
    if account is not None:
        q = q.where(m.account == account)
    if keep:
        q = q.where(m.id.not_in(sorted(keep)))
    values: dict[str, Any] = {
        "claimed_at": None,
        "claimed_by": None,
        "next_attempt_at": not_before or clock(conn),
    }
    if reason is not None:
        values.update(status=Status.DEFERRED, last_error=hide(reason))
    else:
        values["status"] = sa.case((m.attempts > 0, Status.DEFERRED), else_=Status.QUEUED)
    rows = conn.execute(q.values(**values).returning(m.id, m.event, m.attempts)).all()
    return sorted(rows, key=lambda r: r.id)


def _forget_texts(conn: sa.Connection, ids: Sequence[int]) -> None:
    """Remove the texts of messages that will never go again (sent, dropped, or a test
    message that failed): `outbox retry` cannot send them then."""
    b = message_bodies.c
    for start in range(0, len(ids), 500):
        conn.execute(message_bodies.delete().where(b.message_id.in_(ids[start : start + 500])))


def _forget_sent(conn: sa.Connection) -> None:
    """Remove the texts of sent messages (the server has them), this run's and any a run
    that died left behind: recording a message as sent leaves its text for the pass's
    next claim (``forget``) or for here, where those left go together."""
    b, m = message_bodies.c, messages.c
    done = (
        sa.select(b.message_id)
        .join(messages, m.id == b.message_id)
        .where(m.status.in_((Status.SENT, Status.DROPPED)))
    )
    conn.execute(message_bodies.delete().where(b.message_id.in_(done)))


def _release(
    engine: sa.Engine,
    run_id: str,
    result: Delivery,
    *,
    reason: str | None = None,
    account: str | None = None,
    keep: set[int] | frozenset[int] = frozenset(),
    not_before: dt.datetime | None = None,
) -> None:
    """Claimed rows the transport never reported (of one account) go back to the queue.

    With a ``reason`` (the account or server was refused) they wait as
    ``deferred`` with it; without one (the run was stopped) as ``queued``.
    """
    with engine.begin() as conn:
        rows = _give_back(
            conn, run_id, keep=keep, account=account, reason=reason, not_before=not_before
        )
        _forget_sent(conn)
    if not rows:
        return
    why = reason or (
        "not sent: the run was stopped"
        if interrupt.requested() is not None
        else str(result.stopped)
        if result.stopped
        else "not sent: the run ended early"
    )
    for r in rows:
        # As _give_back wrote it: mail never offered to the server is queued, not deferred.
        deferred = reason is not None or r.attempts > 0
        result.status[r.id] = Status.DEFERRED if deferred else Status.QUEUED
        result.events[r.id] = r.event
        result.errors[r.id] = why
        result.held.add(r.id)
    result.released += len(rows)


# ------------------------------------------------------------------ what waits


@dataclass
class Waiting:
    """Mail in the outbox that is not being sent right now."""

    count: int = 0  # queued or deferred
    deferred: int = 0  # of which deferred (tried, to be tried again)
    oldest: dt.datetime | None = None  # queued_at of the oldest, UTC
    next_try: dt.datetime | None = None  # the earliest retry time of deferred mail, UTC
    orphaned: int = 0  # claimed by a run that no longer renews its claim
    orphans_free_at: dt.datetime | None = None  # when those are taken up again, UTC

    @property
    def total(self) -> int:
        return self.count + self.orphaned


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (or may: not ours to look at)."""
    if pid <= 0:
        return True  # unknown: say alive, the heartbeat decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


def runs_here(conn: sa.Connection, now: dt.datetime | None = None) -> tuple[set[str], set[str]]:
    """Runs of this machine that never ended: (those whose process lives, those whose is gone).

    A run whose process lives is alive whatever the clocks say: a clock that
    stepped forward (NTP, a resumed virtual machine) must not make its claims
    look abandoned, or another run would send them too — for at most an hour
    past its own expiry (a process that hangs that long gives its mail up; it
    sends nothing once it notices its claim lapsed; so does a pid given to
    another process since: no clock is compared to tell). The claims of a run
    whose process is gone (killed, crashed, a zombie) are reported as waiting
    at once, not after three missed
    heartbeats; they are still taken up only after its stale limit, as another
    machine of the same name could be running them. A run whose process is not
    known, or is stopped (SIGSTOP, Ctrl-Z), is in neither: its heartbeat decides.
    """
    host = socket.gethostname()[:200]
    r = runs.c
    rows = conn.execute(
        sa.select(r.id, r.pid, r.heartbeat_at, r.expires_at).where(
            r.ended_at.is_(None), r.host == host
        )
    ).all()
    if not rows:
        return set(), set()
    now = now or clock(conn)
    alive: set[str] = set()
    gone: set[str] = set()
    for row in rows:
        if row.id in _LEASES:  # this process's own
            alive.add(row.id)
            continue
        if row.pid <= 0:
            continue
        if row.pid == os.getpid():  # a run of this pid that is not this process's own is over
            gone.add(row.id)
            continue
        state = _process(row.pid)
        if state is None or state.zombie:
            gone.add(row.id)
        elif state.known and not state.stopped:
            expires = row.expires_at or row.heartbeat_at
            if now < expires + dt.timedelta(hours=1):
                alive.add(row.id)
    return alive, gone


@dataclass(frozen=True)
class _ProcessState:
    known: bool  # False: nothing more than that it exists (not Linux, another user's)
    stopped: bool = False
    zombie: bool = False


def _process(pid: int) -> _ProcessState | None:
    """Process ``pid`` of this machine, or None when there is none."""
    if not _alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return _ProcessState(known=False)  # (not Linux): the heartbeat decides
    return _ProcessState(known=True, stopped=state in (b"T", b"t"), zombie=state in (b"Z", b"X"))


def waiting(engine: sa.Engine, settings: Settings, *, exclude_run: str | None = None) -> Waiting:
    """What waits in the outbox: queued, deferred, or left claimed by a run that stopped."""
    m = messages.c
    stale = stale_after(settings)
    with engine.connect() as conn:
        now = clock(conn)
        row = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.count(sa.case((m.status == Status.DEFERRED, 1))),
                sa.func.min(m.queued_at),
                sa.func.min(sa.case((m.status == Status.DEFERRED, m.next_attempt_at))),
            ).where(m.status.in_((Status.QUEUED, Status.DEFERRED)), m.event != ONCE)
        ).one()
        # (a test message is never taken up by another run: a check fails it instead)
        held = conn.execute(
            sa.select(m.claimed_by, sa.func.count(), sa.func.min(m.claimed_at))
            .where(m.status == Status.SENDING, m.event != ONCE)
            .group_by(m.claimed_by)
        ).all()
        holders = {h for h, _, _ in held if h is not None}
        alive, gone = runs_here(conn, now)
        r = runs.c
        rows = {
            x.id: x
            for x in conn.execute(
                sa.select(r.id, r.heartbeat_at, r.expires_at, r.ended_at).where(
                    r.id.in_(sorted(holders))
                )
            )
        }
    orphaned, free_at = 0, None
    for holder, count, first in held:
        if holder is not None and holder == exclude_run:
            continue
        run = rows.get(holder)
        if run is not None and running(run, now, stale, alive, gone):
            continue
        expires = _expiry(run, stale)
        orphaned += int(count)
        # Taken up once claimed longer than this home's limit and past the run's own.
        at = max(first + stale, expires) if expires is not None else first + stale
        free_at = at if free_at is None else min(free_at, at)
    opens = window_opens(settings, now)  # nothing is tried while the window is closed
    next_try = _in_window(settings, _not_before(row[3], opens), now)
    if opens is not None and row[0] > row[1]:  # queued mail goes when the window opens
        next_try = opens if next_try is None else min(next_try, opens)
    return Waiting(
        count=int(row[0]),
        deferred=int(row[1]),
        oldest=row[2],
        next_try=next_try,
        orphaned=orphaned,
        orphans_free_at=_in_window(settings, _not_before(free_at, opens), now),
    )


def _in_window(settings: Settings, at: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    """``at`` (naive UTC), or, when it is still to come and the send window is closed
    then, when the window next opens after it: a retry due at 21:00 with a window of
    07:00-19:00 goes at 07:00 the next morning, not at 21:00."""
    if at is None or at <= now:
        return at
    return window_opens(settings, at) or at


def _expiry(run: Any, stale: dt.timedelta) -> dt.datetime | None:
    """Until when a run's claims are its own (None: no such run, or it ended)."""
    if run is None or run.ended_at is not None:
        return None
    expires: dt.datetime = run.expires_at or run.heartbeat_at + stale
    return expires


def running(
    run: Any, now: dt.datetime, stale: dt.timedelta, alive: set[str], gone: set[str]
) -> bool:
    """Whether a run (a ``runs`` row) still runs, given ``runs_here``'s (alive, gone):
    its process lives on this machine, or, not known to be gone, it renews its heartbeat."""
    return run.id in alive or (run.id not in gone and renewing(run, now, stale))


def renewing(run: Any, now: dt.datetime, stale: dt.timedelta) -> bool:
    """Whether a run (a ``runs`` row) has not ended and still renews its heartbeat.

    Judged by the run's own limit, whatever the limit of the home looking: a
    live run renews five times within it (at most a minute apart), and three
    missed beats mean it stopped. ``check`` and ``status`` then count its mail
    as waiting and the run as one that did not finish; its claims are taken up
    only at its expiry (``live_run``), since it might still come back.
    """
    expires = _expiry(run, stale)
    if expires is None:
        return False
    beat = _beat_for((expires - run.heartbeat_at).total_seconds())
    alive: bool = run.heartbeat_at >= now - dt.timedelta(seconds=3 * beat)
    return alive


# ------------------------------------------------------------------ listing and repair


def _carried(ledger_key: str | None) -> list[str]:
    """The events of the notifications a message carried, each once, from its ledger keys
    (an ID may hold a comma: only what names an event counts)."""
    from cpmail.events import NAMES, SCHEDULED

    known = {*NAMES, *SCHEDULED}
    named = (k.split(":", 1)[0] for k in (ledger_key or "").split(",") if ":" in k)
    return list(dict.fromkeys(e for e in named if e in known))


def _listing_row(r: Any, tz: dt.tzinfo) -> dict[str, Any]:
    # When it was sent, or failed; else when it (last) entered the queue: a message
    # retried by hand shows then, not when it was first made.
    when = r.sent_at or r.failed_at or r.queued_at
    return {
        "id": r.id,
        "time": when.replace(tzinfo=dt.UTC, microsecond=0).astimezone(tz),
        "event": r.event,
        # what it carried: the events of a digest's notifications (each once, in order)
        "events": _carried(r.ledger_key) or [r.event],
        "status": r.status,
        "from": r.from_addr,
        "to": r.to_addrs.split(",") if r.to_addrs else [],
        "subject": r.subject,
        "message_id": r.message_id,
        "attempts": r.attempts,
        "last_error": r.last_error,
        "next_attempt_at": (
            r.next_attempt_at.replace(tzinfo=dt.UTC, microsecond=0).astimezone(tz)
            if r.next_attempt_at
            else None
        ),
    }


def list_messages(
    engine: sa.Engine,
    tz: dt.tzinfo,
    *,
    statuses: Sequence[str] | None = None,
    since: dt.datetime | None = None,
    event: str | None = None,
    to: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of the log (newest last), filtered."""
    m = messages.c
    # (the texts are apart, in message_bodies: a long log does not load every message)
    q = sa.select(messages).order_by(m.id)
    if statuses:
        q = q.where(m.status.in_(list(statuses)))
    if since is not None:  # by the time each row shows
        q = q.where(sa.func.coalesce(m.sent_at, m.failed_at, m.queued_at) >= since)
    if event:  # the message's own event, or one its notifications are of (a digest's)
        keys = sa.literal(",") + sa.func.coalesce(m.ledger_key, "")
        q = q.where(sa.or_(m.event == event, keys.contains(f",{event}:", autoescape=True)))
    if to is not None:  # an empty list (a person without an address) matches nothing
        # One of the comma-separated addresses exactly: lee@x is not sam.lee@x.
        listed = lower(engine)(sa.literal(",") + m.to_addrs + sa.literal(","))
        wanted = [listed.contains(f",{form},", autoescape=True) for a in to for form in _lowered(a)]
        q = q.where(sa.or_(*wanted) if wanted else sa.false())
    if limit:
        q = q.order_by(None).order_by(m.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = list(conn.execute(q).all())
    rows.sort(key=lambda r: r.id)
    return [_listing_row(r, tz) for r in rows]


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lowered(address: str) -> set[str]:
    """``address`` as the database's lower() may give it back: messages keep their
    addresses in normal form (the domain in lower case), and PostgreSQL's lower()
    changes the letters its locale knows (only A-Z in the C locale: Émile stays Émile)."""
    from cpmail.addresses import normal_address, valid_address

    forms = {address, normal_address(address)} if valid_address(address) else {address}
    return {f.translate(_ASCII_LOWER) for f in forms} | {f.lower() for f in forms}


def give_up(engine: sa.Engine, ids: Sequence[int], why: str, *, run_id: str) -> int:
    """Fail messages that were not sent, for good: a test message is never sent later.

    Only rows claimed by ``run_id`` or by no run: never one another run is sending.
    """
    m = messages.c
    now = utcnow()
    with engine.begin() as conn:
        failed = conn.execute(
            messages.update()
            .where(
                m.id.in_(list(ids)),
                sa.or_(m.claimed_by.is_(None), m.claimed_by == run_id),
                # failed too: its bytes go, so that `outbox retry` cannot send it later
                m.status.in_((Status.QUEUED, Status.DEFERRED, Status.SENDING, Status.FAILED)),
            )
            # (a failed one keeps its time)
            .values(**_ending(Status.FAILED, why, failed_at=sa.func.coalesce(m.failed_at, now)))
            .returning(m.id)
        ).scalars()
        ids = list(failed)
        _forget_texts(conn, ids)
    return len(ids)


def retry(engine: sa.Engine, ids: Sequence[int] | None) -> tuple[int, dict[int, str]]:
    """Put failed or deferred messages back in the queue now (all when ``ids`` is None).

    Return how many went back, and why each of ``ids`` that did not was left
    as it is (sent, queued already, its text no longer kept …).
    """
    m = messages.c
    b = message_bodies.c
    kept = sa.exists().where(b.message_id == m.id)
    retryable = sa.and_(m.status.in_((Status.FAILED, Status.DEFERRED)), kept)
    q = messages.update().where(retryable)
    left: dict[int, str] = {}
    if ids is not None:
        _check_ids(engine, ids)
        q = q.where(m.id.in_(list(ids)))
    with engine.begin() as conn:
        done = conn.execute(
            q.values(
                status=Status.QUEUED,
                attempts=0,
                next_attempt_at=None,
                failed_at=None,
                # A failed message enters the queue again (max_age_hours counts anew); a
                # deferred one never left it: it has waited since then, as status says.
                queued_at=sa.case((m.status == Status.FAILED, utcnow()), else_=m.queued_at),
                # A failed message is tried again for everyone it waits for, the
                # refused included; a deferred one keeps them on record.
                refused_rcpts=sa.case((m.status == Status.FAILED, ""), else_=m.refused_rcpts),
            ).returning(m.id)
        ).scalars()
        back = set(done)
        if ids is not None:
            for i, status in _statuses_now(conn, [i for i in ids if i not in back]).items():
                left[i] = _not_retried.get(Status(status), "its text is no longer kept")
            # Sent, dropped, or its text gone: no run will ever send it. The command cannot
            # do what it was asked, and says so with exit 2, having changed nothing.
            _refuse(
                {i: why for i, why in left.items() if why not in _still_goes},
                "sent again",
                "nothing was queued again",
            )
    return len(back), left


def _refuse(ids: dict[int, str], done: str, nothing: str) -> None:
    """Raise InputError naming each of ``ids`` and why it cannot be ``done`` (none: return)."""
    if not ids:
        return
    if len(ids) == 1:
        [(i, why)] = ids.items()
        said = f"message {i} cannot be {done}: {why}"
    else:
        listed = ", ".join(f"{i} ({why})" for i, why in ids.items())
        said = f"messages {listed} cannot be {done}"
    raise InputError(f"{said}; {nothing} (see `cpmail log`).")


# Why `outbox retry ID` leaves a message as it is, by its status.
# Why a claimed message is left alone: its run may be sending it, or may have stopped
# (then it is taken up again once the claim lapses, as `cpmail status` says when).
CLAIMED = (
    "a run has it claimed (sending it now, or stopped: then it is taken up again after "
    "outbox.stale_claim_minutes; `cpmail status` says which)"
)

_not_retried = {
    Status.SENT: "it was sent",
    Status.DROPPED: "it was dropped",
    Status.QUEUED: "it is queued already",
    Status.SENDING: CLAIMED,
    Status.SUPPRESSED: "it was recorded while sending was off",
}
# ... of those, the ones that still go out (this command sends what is queued).
_still_goes = (_not_retried[Status.QUEUED], CLAIMED)


def drop(engine: sa.Engine, ids: Sequence[int]) -> tuple[int, dict[int, str]]:
    """Take messages out of the outbox for good (they stay in the log as ``dropped``).

    Return how many were dropped, and the status of each of ``ids`` that was not
    in the outbox to drop (sent, being sent, dropped already …).
    """
    _check_ids(engine, ids)
    m = messages.c
    waiting = m.status.in_((Status.QUEUED, Status.DEFERRED, Status.FAILED))
    with engine.begin() as conn:
        dropped = set(
            conn.execute(
                messages.update()
                .where(m.id.in_(list(ids)), waiting)
                .values(**_ending(Status.DROPPED, "dropped with `cpmail outbox drop`"))
                .returning(m.id)
            ).scalars()
        )
        _forget_texts(conn, sorted(dropped))
        left = _statuses_now(conn, [i for i in ids if i not in dropped])
        # Mail that went out cannot be taken back: said with exit 2, nothing changed.
        _refuse(
            {i: _not_retried[Status(s)] for i, s in left.items() if s in _gone},
            "dropped",
            "nothing was dropped",
        )
    return len(dropped), left


# What `outbox drop` cannot take back: it went out, or was never in the outbox.
_gone = (Status.SENT, Status.SUPPRESSED)


def _statuses_now(conn: sa.Connection, ids: Sequence[int]) -> dict[int, str]:
    """The status of each of ``ids`` as it is once a command's change is made (a run may
    have claimed one a moment ago): each left as it is is named, never passed over."""
    if not ids:
        return {}
    m = messages.c
    found = {r.id: r.status for r in conn.execute(sa.select(m.id, m.status).where(m.id.in_(ids)))}
    return {i: found[i] for i in dict.fromkeys(ids) if i in found}  # (in the order given)


def _check_ids(engine: sa.Engine, ids: Sequence[int]) -> None:
    m = messages.c
    with engine.connect() as conn:
        found = {r.id for r in conn.execute(sa.select(m.id).where(m.id.in_(list(ids))))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise InputError(f"no message with id {missing[0]} in the outbox; see `cpmail outbox`.")
