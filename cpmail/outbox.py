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

import datetime as dt
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import sqlalchemy as sa

from cpmail.compose import to_bytes
from cpmail.errors import AuthError, InputError, TemporaryFailure, TransportError, Unreachable
from cpmail.settings import Settings
from cpmail.store import utcnow
from cpmail.store.schema import ledger, messages
from cpmail.transports.base import Envelope, Outcome, Transport

STUCK_AFTER = dt.timedelta(minutes=15)
CLAIM_BATCH = 200
FLUSH_EVERY = 20
FLUSH_SECONDS = 0.1
OPEN = ("queued", "sending", "deferred", "failed")  # what `cpmail outbox` lists


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Draft:
    """A composed message, ready to queue."""

    event: str
    key: str | None  # ledger key; None for one-off messages (reports, tests)
    account: str  # whose credentials send it: staff ID, "shared" or ""
    from_addr: str
    to: list[str]
    subject: str
    message_id: str
    raw: bytes

    @classmethod
    def from_message(
        cls, msg: EmailMessage, *, event: str, key: str | None, account: str, envelope_from: str
    ) -> Draft:
        to = [a.addr_spec for a in msg["To"].addresses]
        return cls(
            event=event,
            key=key,
            account=account,
            from_addr=envelope_from,
            to=to,
            subject=str(msg["Subject"]),
            message_id=str(msg["Message-ID"]),
            raw=to_bytes(msg),
        )


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


def check_size(draft: Draft, max_bytes: int | None, *, suppressed: bool = False) -> None:
    """Refuse a message larger than the transport takes (a suppressed one is never sent)."""
    if max_bytes is not None and len(draft.raw) > max_bytes and not suppressed:
        raise InputError(
            f"the message {draft.subject!r} is {len(draft.raw) / 1e6:.1f} MB; "
            f"the transport takes at most {max_bytes / 1e6:.1f} MB."
        )


def _row(
    draft: Draft,
    ledger_key: str | None,
    run_id: str,
    suppressed: bool,
    now: dt.datetime,
    claimed: bool = False,
) -> dict[str, Any]:
    status = "suppressed" if suppressed else "sending" if claimed else "queued"
    return {
        "ledger_key": ledger_key,
        "event": draft.event,
        "account": draft.account,
        "from_addr": draft.from_addr,
        "to_addrs": ",".join(draft.to),
        "pending_rcpts": "" if suppressed else ",".join(draft.to),
        "subject": draft.subject,
        "message_id": draft.message_id,
        "raw": None if suppressed else draft.raw,
        "size": len(draft.raw),
        "status": status,
        "attempts": 0,
        "created_at": now,
        "queued_at": now,
        "run_id": run_id,
        "claimed_at": now if status == "sending" else None,
        "claimed_by": run_id if status == "sending" else None,
    }


def queue(
    conn: sa.Connection,
    draft: Draft,
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
    result = conn.execute(messages.insert().values(row).returning(messages.c.id))
    return int(result.scalar_one())


def queue_many(
    conn: sa.Connection,
    drafts: Sequence[Draft],
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
    return [int(i) for i in conn.execute(stmt, rows).scalars()]


# ------------------------------------------------------------------ delivery


@dataclass
class Delivery:
    """What one delivery pass did, message by message."""

    status: dict[int, str] = field(default_factory=dict)  # id -> sent|deferred|failed
    events: dict[int, str] = field(default_factory=dict)  # id -> event
    errors: dict[int, str] = field(default_factory=dict)
    waiting: int = 0  # left for later (outside the send window)
    stopped: TransportError | None = None  # AuthError / Unreachable that ended the pass

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)

    @property
    def undelivered(self) -> int:
        return self.count("deferred") + self.count("failed")


def backoff(attempts: int) -> dt.timedelta:
    """1, 2, 4 … minutes after each failed attempt, at most 6 hours."""
    return dt.timedelta(seconds=min(60 * 2 ** max(attempts - 1, 0), 6 * 3600))


def in_send_window(settings: Settings, now_local: dt.datetime | None = None) -> bool:
    window = str(settings["mail.send_window"])
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


def _due(now: dt.datetime) -> Any:
    m = messages.c
    return sa.or_(
        m.status == "queued",
        sa.and_(
            m.status == "deferred", sa.or_(m.next_attempt_at.is_(None), m.next_attempt_at <= now)
        ),
        sa.and_(m.status == "sending", m.claimed_at < now - STUCK_AFTER),
    )


def claim(
    engine: sa.Engine,
    *,
    run_id: str,
    limit: int = CLAIM_BATCH,
    ids: Sequence[int] | None = None,
    events: dict[int, str] | None = None,
    account: str | None = None,
) -> list[Envelope]:
    """Mark up to ``limit`` due messages ``sending`` for this run and return them.

    ``events``, when given, is filled with each claimed message's event;
    ``account`` limits the claim to one sender's messages.
    """
    m = messages.c
    now = utcnow()
    with engine.begin() as conn:
        # Pick ids first, then read the rows: ordering whole rows would copy
        # every due message's bytes into a temporary sort on each claim.
        q = sa.select(m.id).where(_due(now))
        if ids is not None:
            q = q.where(m.id.in_(list(ids)))
        if account is not None:
            q = q.where(m.account == account)
        q = q.order_by(m.id).limit(limit)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        picked = list(conn.execute(q).scalars())
        if not picked:
            return []
        conn.execute(
            messages.update()
            .where(m.id.in_(picked))
            .values(status="sending", claimed_at=now, claimed_by=run_id)
        )
        rows = conn.execute(
            sa.select(m.id, m.event, m.account, m.from_addr, m.pending_rcpts, m.raw)
            .where(m.id.in_(picked))
            .order_by(m.id)
        ).all()
    if events is not None:
        events.update((r.id, r.event) for r in rows)
    return [
        Envelope(
            id=r.id,
            account=r.account,
            mail_from=r.from_addr,
            rcpt_to=tuple(a for a in r.pending_rcpts.split(",") if a),
            raw=r.raw or b"",
        )
        for r in rows
    ]


def _expire(engine: sa.Engine, settings: Settings) -> None:
    """Messages waiting past max_age_hours fail for good."""
    m = messages.c
    limit = utcnow() - dt.timedelta(hours=int(settings["outbox.max_age_hours"]))
    with engine.begin() as conn:
        conn.execute(
            messages.update()
            .where(m.status.in_(("queued", "deferred")), m.queued_at < limit)
            .values(
                status="failed",
                last_error=sa.func.coalesce(m.last_error + "; ", "")
                + f"gave up after {settings['outbox.max_age_hours']} hours in the outbox",
            )
        )


# Built once: SQLAlchemy then finds it compiled instead of keying a new statement each flush.
_MARK_SENT = (
    messages.update()
    .where(messages.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(
        status="sent",
        attempts=messages.c.attempts + 1,
        claimed_at=None,
        claimed_by=None,
        next_attempt_at=None,
        sent_at=sa.bindparam("now"),
        pending_rcpts="",
        last_error=None,
        raw=None,  # the bytes are not needed once the server has them
    )
)


def _clean(o: Outcome) -> bool:
    return o.error is None and not o.deferred and not o.refused


class _Recorder:
    """Collects outcomes and writes them in batches (few transactions, not one per message).

    The writes happen on a thread of their own, one batch after the other, so
    that sending goes on meanwhile (SQLite lets go of the interpreter while
    it writes). A batch is handed over at most FLUSH_SECONDS after its first
    outcome, or when FLUSH_EVERY are waiting: a hard kill can leave only
    those few accepted but not yet marked sent.
    """

    def __init__(self, engine: sa.Engine, settings: Settings, result: Delivery) -> None:
        self.engine = engine
        self.max_attempts = int(settings["outbox.max_attempts"])
        self.max_age = dt.timedelta(hours=int(settings["outbox.max_age_hours"]))
        self.result = result
        self.pending: list[Outcome] = []
        self.last_flush = time.monotonic()
        self.events: dict[int, str] = {}  # id -> event, from the claims
        self.writer: ThreadPoolExecutor | None = None
        self.writes: deque[Future[None]] = deque()

    def __call__(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        if len(self.pending) >= FLUSH_EVERY or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self._hand_over()

    def _hand_over(self) -> None:
        self.last_flush = time.monotonic()
        # One batch in writing at a time: while the database is slow (another
        # process holds it), sending waits rather than pile up unrecorded mail.
        while self.writes and (self.pending or self.writes[0].done()):
            self.writes.popleft().result()  # an earlier batch that failed stops the run
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        if self.writer is None:
            self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpmail-outbox")
        self.writes.append(self.writer.submit(self._store, batch))

    def flush(self) -> None:
        """Write every outcome received so far; return once all are stored."""
        try:
            self._hand_over()
            while self.writes:
                self.writes.popleft().result()
        finally:
            if self.writer is not None:
                self.writer.shutdown(wait=True)
                self.writer = None

    def _store(self, batch: list[Outcome]) -> None:
        # Accepted for every recipient, the common case, needs nothing read back.
        sent = [o.id for o in batch if _clean(o) and o.id in self.events]
        others = [o for o in batch if not (_clean(o) and o.id in self.events)]
        now = utcnow()
        with self.engine.begin() as conn:
            if sent:
                conn.execute(_MARK_SENT, {"ids": sent, "now": now})
                for i in sent:
                    self._note(i, self.events[i], "sent", None)
            if others:
                self._write(conn, others, now)

    def _write(self, conn: sa.Connection, batch: list[Outcome], now: dt.datetime) -> None:
        m = messages.c
        info = {
            r.id: r
            for r in conn.execute(
                sa.select(m.id, m.event, m.attempts, m.queued_at, m.pending_rcpts).where(
                    m.id.in_([o.id for o in batch])
                )
            )
        }
        updates = [self._update(o, info[o.id], now) for o in batch if o.id in info]
        if updates:
            conn.execute(messages.update().where(m.id == sa.bindparam("b_id")), updates)
            sent = [u["b_id"] for u in updates if u["status"] == "sent"]
            if sent:  # the bytes are not needed once the server has them
                conn.execute(messages.update().where(m.id.in_(sent)).values(raw=None))

    def _update(self, o: Outcome, row: Any, now: dt.datetime) -> dict[str, Any]:
        attempts = row.attempts + 1
        give_up = now - row.queued_at > self.max_age or attempts >= self.max_attempts
        values: dict[str, Any] = {
            "b_id": o.id,
            "attempts": attempts,
            "claimed_at": None,
            "claimed_by": None,
            "next_attempt_at": None,
            "sent_at": now if o.accepted else None,
            "pending_rcpts": row.pending_rcpts,
        }
        words = [f"{a}: {w}" for a, w in {**o.deferred, **o.refused}.items()]
        if o.error is not None:
            temporary = isinstance(o.error, TemporaryFailure)
            error = str(o.error)
        elif o.deferred or o.refused:
            temporary = bool(o.deferred)
            error = "; ".join(words)
            if o.accepted:
                error += "; accepted for " + ", ".join(o.accepted)
            values["pending_rcpts"] = ",".join(
                o.deferred if temporary and not give_up else [*o.deferred, *o.refused]
            )
        else:
            values.update(status="sent", pending_rcpts="", last_error=None)
            self._note(o.id, row.event, "sent", None)
            return values
        if temporary and not give_up:
            delay = backoff(attempts)
            if o.retry_after:
                delay = max(delay, dt.timedelta(seconds=o.retry_after))
            values.update(status="deferred", next_attempt_at=now + delay)
        else:
            if temporary:
                error += f" (gave up after {attempts} attempts)"
            values["status"] = "failed"
        values["last_error"] = error
        self._note(o.id, row.event, values["status"], error)
        return values

    def _note(self, id_: int, event: str, status: str, error: str | None) -> None:
        self.result.status[id_] = status
        self.result.events[id_] = event
        if error:
            self.result.errors[id_] = error


def deliver(
    engine: sa.Engine,
    transport: Transport,
    settings: Settings,
    *,
    run_id: str,
    ids: Sequence[int] | None = None,
    on_progress: Callable[[int], None] | None = None,
    ready: Sequence[tuple[Envelope, str]] = (),
) -> Delivery:
    """Send every due message (or only ``ids``) through ``transport``.

    ``ready`` holds messages claimed for ``run_id`` already (queued with
    ``claimed=True``), with their events: they go first, without being read
    back from the database.

    Messages go out one sending account at a time, so that an account whose
    sign-in or passcode is refused (AuthError) holds back only its own mail;
    a transport that cannot be reached at all (Unreachable) ends the pass.
    The first such error is recorded in ``stopped``; claimed messages not sent
    go back to ``deferred`` for the next run.
    """
    result = Delivery()
    _expire(engine, settings)
    if not in_send_window(settings):
        m = messages.c
        if ready:  # the window closed since they were queued: they wait like the rest
            with engine.begin() as conn:
                conn.execute(
                    messages.update()
                    .where(m.claimed_by == run_id, m.status == "sending")
                    .values(status="queued", claimed_at=None, claimed_by=None)
                )
        with engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(messages).where(_due(utcnow()))
            if ids is not None:
                q = q.where(m.id.in_(list(ids)))
            result.waiting = int(conn.execute(q).scalar_one())
        return result
    recorder = _Recorder(engine, settings, result)

    def envelopes(account: str) -> Iterator[Envelope]:
        for env, event in ready:
            if env.account == account:
                recorder.events[env.id] = event
                if on_progress:
                    on_progress(1)
                yield env
        while True:
            batch = claim(engine, run_id=run_id, ids=ids, events=recorder.events, account=account)
            if not batch:
                return
            for env in batch:
                if on_progress:
                    on_progress(1)
                yield env

    try:
        for account in _accounts(engine, ids, ready):
            try:
                transport.deliver(envelopes(account), recorder)
            except AuthError as e:
                result.stopped = result.stopped or e
                recorder.flush()
                _release(engine, run_id, result, reason=str(e), account=account)
    except Unreachable as e:
        result.stopped = e
    finally:
        recorder.flush()
        _release(engine, run_id, result)
    return result


def _accounts(
    engine: sa.Engine, ids: Sequence[int] | None, ready: Sequence[tuple[Envelope, str]]
) -> list[str]:
    """The sending accounts with mail due now, the ready messages' first."""
    m = messages.c
    q = sa.select(m.account).where(_due(utcnow())).distinct()
    if ids is not None:
        q = q.where(m.id.in_(list(ids)))
    with engine.connect() as conn:
        due = sorted(a for (a,) in conn.execute(q))
    return list(dict.fromkeys([*(env.account for env, _ in ready), *due]))


def _release(
    engine: sa.Engine,
    run_id: str,
    result: Delivery,
    reason: str | None = None,
    account: str | None = None,
) -> None:
    """Claimed rows the transport never reported (of one account) go back to the queue."""
    m = messages.c
    now = utcnow()
    if reason is None:
        reason = str(result.stopped) if result.stopped else "not sent: the run ended early"
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(m.id, m.event, m.attempts).where(
                m.claimed_by == run_id,
                m.status == "sending",
                sa.true() if account is None else m.account == account,
            )
        ).all()
        for r in rows:
            conn.execute(
                messages.update()
                .where(m.id == r.id)
                .values(
                    status="deferred",
                    attempts=r.attempts + 1,
                    claimed_at=None,
                    claimed_by=None,
                    next_attempt_at=now + backoff(r.attempts + 1),
                    last_error=reason,
                )
            )
            result.status[r.id] = "deferred"
            result.events[r.id] = r.event
            result.errors[r.id] = reason


# ------------------------------------------------------------------ listing and repair


def _listing_row(r: Any, tz: dt.tzinfo) -> dict[str, Any]:
    when = r.sent_at or r.created_at
    return {
        "id": r.id,
        "time": when.replace(tzinfo=dt.UTC, microsecond=0).astimezone(tz),
        "event": r.event,
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
    q = sa.select(messages).order_by(m.id)
    if statuses:
        q = q.where(m.status.in_(list(statuses)))
    if since is not None:
        q = q.where(m.created_at >= since)
    if event:
        q = q.where(m.event == event)
    if to:
        q = q.where(sa.or_(*(sa.func.lower(m.to_addrs).contains(a.lower()) for a in to)))
    if limit:
        q = q.order_by(None).order_by(m.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = list(conn.execute(q).all())
    rows.sort(key=lambda r: r.id)
    return [_listing_row(r, tz) for r in rows]


def retry(engine: sa.Engine, ids: Sequence[int] | None) -> int:
    """Put failed or deferred messages back in the queue now (all when ``ids`` is None)."""
    m = messages.c
    q = messages.update().where(m.status.in_(("failed", "deferred")), m.raw.is_not(None))
    if ids is not None:
        _check_ids(engine, ids)
        q = q.where(m.id.in_(list(ids)))
    with engine.begin() as conn:
        n = conn.execute(
            q.values(status="queued", attempts=0, next_attempt_at=None, queued_at=utcnow())
        ).rowcount
    return int(n)


def drop(engine: sa.Engine, ids: Sequence[int]) -> int:
    """Take messages out of the outbox for good (they stay in the log as ``dropped``)."""
    _check_ids(engine, ids)
    m = messages.c
    with engine.begin() as conn:
        n = conn.execute(
            messages.update()
            .where(m.id.in_(list(ids)), m.status.in_(("queued", "deferred", "failed")))
            .values(status="dropped", raw=None, next_attempt_at=None)
        ).rowcount
    return int(n)


def _check_ids(engine: sa.Engine, ids: Sequence[int]) -> None:
    m = messages.c
    with engine.connect() as conn:
        found = {r.id for r in conn.execute(sa.select(m.id).where(m.id.in_(list(ids))))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise InputError(f"no message with id {missing[0]} in the outbox; see `cpmail outbox`.")
