"""Is mail working? The transport, the accounts, the last check, the outbox, the database.

``gather`` reads only local things (settings, the secrets store, the
database) unless ``probe`` is true; then it also signs each sending account in
without sending anything (SMTP: connect, EHLO, STARTTLS, AUTH, and for a relay
MAIL FROM then RSET; Gmail and Microsoft: renew the token).

The verdict (``Health.exit_code``): 3 when the database or an account (or the
transport as a whole) cannot be used, 1 when mail waits or failed in the last
7 days, else 0. ``cpmail.alerts`` turns the same snapshot into alerts.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmail.errors import CpmailError
from cpmail.scrub import hide
from cpmail.settings import Settings, redact

if TYPE_CHECKING:
    import sqlalchemy as sa

    from cpmail.secrets import SecretStore

FAILED_DAYS = 7
#: Microsoft ends a sign-in whose refresh token goes unused this long (Entra ID default).
MICROSOFT_IDLE_DAYS = 90
#: Google ends a sign-in whose refresh token goes unused for six months.
GOOGLE_IDLE_DAYS = 182
#: Seconds allowed to reach a PostgreSQL (or other) server before it counts as down.
DB_CONNECT_TIMEOUT = 10
#: Seconds status waits for another process's lock on SQLite (database.busy_seconds, if less):
#: it only looks, and a monitor or the alerts after a check must not wait a minute.
DB_BUSY_SECONDS = 5.0
#: An account whose newest waiting message failed with words like these was refused as
#: a whole (its sign-in, passcode or permission), not one message or recipient.
_REFUSAL = re.compile(
    r"cpmail staff (signin|passcode)|cpmail config (gmail|microsoft)|refused the login"
    r"|without a login|refused to renew|refused the renewed|is not signed in|denied sending"
    r"|denied app-only|does not allow sending|does not offer a login|sign-in .*failed"
    r"|API is not enabled|is damaged",
    re.IGNORECASE,
)

OK, WAITING, UNUSABLE = 0, 1, 3


@dataclass
class Account:
    """One sending account: a staff ID, or ``shared`` for the one-account sender."""

    account: str
    address: str = ""
    login: str = ""  # passcode | no login (relay) | Google sign-in | Microsoft sign-in | …
    signed_in: bool | None = None  # None: the transport needs no sign-in
    token_expires: dt.datetime | None = None  # the current access token
    signin_lapses: dt.datetime | None = None  # when the sign-in ends unless it is used or renewed
    last_sent: dt.datetime | None = None
    last_error: str | None = None
    error_at: dt.datetime | None = None  # when ``last_error`` came (UTC)
    waiting: int = 0
    problem: str | None = None  # set when the account cannot send
    probe: str | None = None  # "ok" or what went wrong, with --probe only


@dataclass
class LastCheck:
    started_at: dt.datetime
    ended_at: dt.datetime | None
    run_date: dt.date | None
    exit_code: int | None
    host: str
    counts: dict[str, Any] | None
    note: str | None  # why it could not send (exit 3), when it knew
    state: str  # finished | running | did not finish


@dataclass
class LastDelivery(LastCheck):
    by: str = ""  # the command that delivered, in a sentence (DELIVERED_BY)


@dataclass
class Outbox:
    waiting: int = 0
    oldest_waiting_since: dt.datetime | None = None
    next_try: dt.datetime | None = None
    held_by_window: int = 0  # never tried, waiting for the send window to open
    held_by_stopped: int = 0  # claimed by a run that stopped: taken up at ``taken_up_at``
    taken_up_at: dt.datetime | None = None
    sending_now: int = 0  # claimed by a run that is alive: on its way, not waiting
    failed_7_days: int = 0
    overdue_since: dt.datetime | None = None  # waiting counted from the send window's opening


@dataclass
class Database:
    where: str
    reachable: bool = False
    revision: str | None = None
    expected_revision: str = ""
    error: str | None = None

    @property
    def usable(self) -> bool:
        return self.reachable and self.revision == self.expected_revision


@dataclass
class Health:
    """Everything ``cpmail status`` shows, and the verdict."""

    checked_at: dt.datetime
    host: str
    transport: str
    transport_detail: str
    transport_problem: str | None
    accounts: list[Account]
    last_check: LastCheck | None
    outbox: Outbox | None
    database: Database
    enabled: bool
    send_window: str
    window_open: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    probed: bool = False
    # The newest check that finished, when the newest one still runs or died: until
    # another ends, its outcome is the last word on whether mail goes (not in the JSON).
    last_finished: LastCheck | None = None
    # The newest mail another command delivered (`outbox retry`, `message`, a test message):
    # when it ended after the check that has the word, its outcome is the newest word.
    last_delivery: LastDelivery | None = None
    # The newest check that did not finish (killed, or its machine stopped), and the first
    # check begun after it that finished its work (exit 0 or 1), if one did (neither in
    # the JSON).
    died: LastCheck | None = None
    died_then: LastCheck | None = None

    @property
    def exit_code(self) -> int:
        if self.problems:
            return UNUSABLE
        if self.warnings:
            return WAITING
        return OK

    @property
    def verdict(self) -> str:
        return {OK: "healthy", WAITING: "mail waiting or failed", UNUSABLE: "cannot send"}[
            self.exit_code
        ]

    def as_json(self, tz: dt.tzinfo) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, dt.datetime):
                return v.replace(tzinfo=dt.UTC, microsecond=0).astimezone(tz).isoformat()
            if isinstance(v, dt.date):
                return v.isoformat()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v

        db = asdict(self.database)
        return {
            "status": self.verdict,
            "exit_code": self.exit_code,
            "problems": self.problems,
            "warnings": self.warnings,
            "checked_at": conv(self.checked_at),
            "host": self.host,
            "probed": self.probed,
            "transport": {
                "name": self.transport,
                "detail": self.transport_detail,
                "problem": self.transport_problem,
            },
            "accounts": [conv(asdict(a)) for a in self.accounts],
            "last_check": conv(asdict(self.last_check)) if self.last_check else None,
            "outbox": conv(asdict(self.outbox)) if self.outbox else None,
            "database": {**db, "usable": self.database.usable},
            "mail": {
                "enabled": self.enabled,
                "send_window": self.send_window,
                "window_open": self.window_open,
            },
        }


# ------------------------------------------------------------------ the database


def open_database(settings: Settings) -> tuple[sa.Engine | None, Database]:
    """Connect with a short timeout; never raise for a database that is down."""
    import sqlalchemy as sa

    from cpmail.store import SCHEMA_REVISION, check_driver, make_engine, sqlite_path

    url = settings.db_url
    where = (
        str(settings.home / "cpmail.db")
        if not settings["database.url"]
        else redact(settings["database.url"])
    )
    db = Database(where=where, expected_revision=SCHEMA_REVISION)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path and not Path(path).exists():
            try:
                check_driver(url)
            except CpmailError as e:
                db.error = str(e).rstrip(".")
                return None, db
            db.error = f"there is no database at {path}; run `cpmail init` first"
            return None, db
    args = {"connect_timeout": DB_CONNECT_TIMEOUT} if url.startswith("postgresql") else None
    try:
        # (its errors never quote the URL, which may hold the password)
        busy = min(DB_BUSY_SECONDS, settings["database.busy_seconds"])
        engine = make_engine(url, connect_args=args, busy_seconds=busy)
    except CpmailError as e:
        db.error = str(e).rstrip(".")
        return None, db
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT version_num FROM alembic_version")).first()
    except sa.exc.DBAPIError as e:
        text = " ".join(str(e.orig).split()) if e.orig is not None else type(e).__name__
        if isinstance(e, sa.exc.ProgrammingError) or "no such table" in text:
            db.reachable = True
            db.error = "it holds no cpmail schema; run `cpmail init`"
        else:
            db.error = hide(redact(text))[:300]
        engine.dispose()
        return None, db
    except (OSError, sa.exc.SQLAlchemyError) as e:
        db.error = hide(redact(f"{type(e).__name__}: {e}"))[:300]
        engine.dispose()
        return None, db
    db.reachable = True
    db.revision = None if row is None else str(row[0])
    if db.revision != SCHEMA_REVISION:
        from cpmail.store import known_revisions

        db.error = (
            f"schema revision {db.revision}, which a newer cpmail wrote (this one knows up to "
            f"{SCHEMA_REVISION}); upgrade cpmail on this machine"
            if db.revision is not None and db.revision not in known_revisions()
            else f"schema revision {db.revision}, cpmail needs {SCHEMA_REVISION}; "
            "run `cpmail db upgrade`"
        )
        engine.dispose()
        return None, db
    return engine, db


# ------------------------------------------------------------------ accounts and tokens


def _parse_time(text: Any) -> dt.datetime | None:
    """google-auth's "expiry" (ISO, maybe with Z) or an epoch -> naive UTC."""
    if text is None or text == "":
        return None
    try:
        if isinstance(text, int | float) or str(text).isdigit():
            return dt.datetime.fromtimestamp(int(text), dt.UTC).replace(tzinfo=None)
        when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def token_dates(transport: str, data: Any) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(access token expiry, when the sign-in lapses unless used) from a stored sign-in.

    Google: ``expiry`` is the access token's; a refresh token lapses after six
    months unused (or at ``refresh_token_expiry`` when the sign-in recorded one).
    Microsoft: msal's cache records when the refresh token was last renewed;
    it lapses after 90 days unused.
    """
    if transport == "gmail" and isinstance(data, dict):
        access = _parse_time(data.get("expiry"))
        if not data.get("refresh_token"):
            return access, access
        fixed = _parse_time(data.get("refresh_token_expiry"))
        if fixed is not None:
            return access, fixed
        renewed = access - dt.timedelta(hours=1) if access else None
        return access, renewed + dt.timedelta(days=GOOGLE_IDLE_DAYS) if renewed else None
    if transport == "microsoft" and isinstance(data, str):
        try:
            cache = json.loads(data)
        except ValueError:
            return None, None
        if not isinstance(cache, dict):
            return None, None
        ats = [
            t
            for e in (cache.get("AccessToken") or {}).values()
            if isinstance(e, dict) and (t := _parse_time(e.get("expires_on")))
        ]
        rts = [e for e in (cache.get("RefreshToken") or {}).values() if isinstance(e, dict)]
        access = max(ats) if ats else None
        if not rts:
            return access, access
        renewals = [t for e in rts if (t := _parse_time(e.get("last_modification_time")))]
        lapses = max(renewals) + dt.timedelta(days=MICROSOFT_IDLE_DAYS) if renewals else None
        return access, lapses
    return None, None


def _stored_accounts(secrets: SecretStore, transport: str) -> list[str]:
    """Accounts with a passcode or sign-in in the secrets folder (the keyring cannot list)."""
    if secrets.backend != "file" or not secrets.dir.is_dir():
        return []
    from cpmail.secrets import account_of, passcode_name, token_name

    prefix = passcode_name("") if transport == "smtp" else token_name(transport, "")
    try:
        names = [p.name for p in secrets.dir.iterdir()]
    except OSError:
        return []
    return sorted(
        account_of(n[len(prefix) :]) for n in names if n.startswith(prefix) and n != prefix
    )


def _credentials(settings: Settings, secrets: SecretStore, acct: Account, transport: str) -> None:
    """Fill in how ``acct`` signs in, from the secrets store only (no network)."""
    from cpmail.oauth.microsoft import MICROSOFT_APP_SECRET
    from cpmail.oauth.tokens import PROVIDER, load_token, signin_command
    from cpmail.secrets import SHARED, passcode_name

    try:
        if transport == "smtp":
            secret = secrets.get(passcode_name(acct.account))
            acct.login = "passcode" if secret and secret.reveal() else "no login (relay)"
            return
        app_only = transport == "microsoft" and acct.account == SHARED
        if app_only and secrets.has(MICROSOFT_APP_SECRET):
            acct.login, acct.signed_in = "Microsoft app-only (client secret)", True
            acct.address = acct.address or settings["mail.sender"]
            return
        acct.login = f"{PROVIDER[transport]} sign-in"
        stored = load_token(secrets, transport, acct.account)
    except CpmailError as e:
        acct.signed_in = False
        acct.problem = str(e)
        return
    if stored is None:
        acct.signed_in = False
        acct.problem = (
            f"not signed in with {PROVIDER[transport]}; run `{signin_command(acct.account)}`"
        )
        return
    acct.signed_in = True
    expected, acct.address = acct.address, acct.address or stored.address
    if expected and stored.address and stored.address.lower() != expected.lower():
        # Mail would go out as the signed-in mailbox, not the one cpmail names as sender.
        acct.problem = (
            f"signed in as {stored.address} but sends as {expected}; run "
            f"`{signin_command(acct.account)}` and sign in as {expected}"
        )
    acct.token_expires, acct.signin_lapses = token_dates(transport, stored.data)


def _counted(conn: sa.Connection, stale: dt.timedelta, now: dt.datetime) -> Any:
    """The messages that wait or are on their way, as `check` counts them.

    A test message is sent by its own command at once or never: only while that
    command runs and holds it is it on its way. Left behind (its command killed
    or stopped), no run sends it and the next check fails it: it waits for nothing.
    """
    import sqlalchemy as sa

    from cpmail.outbox import ONCE, running, runs_here
    from cpmail.store.schema import messages, runs

    m = messages.c
    holders = conn.execute(
        sa.select(m.claimed_by)
        .where(m.event == ONCE, m.status == "sending", m.claimed_by.is_not(None))
        .distinct()
    ).scalars()
    rows = conn.execute(sa.select(runs).where(runs.c.id.in_(sorted(holders)))).all()
    live: list[str] = []
    if rows:
        alive, gone = runs_here(conn)
        live = [r.id for r in rows if running(r, now, stale, alive, gone)]
    return sa.or_(m.event != ONCE, sa.and_(m.status == "sending", m.claimed_by.in_(live)))


def _account_rows(
    engine: sa.Engine, now: dt.datetime, stale: dt.timedelta
) -> dict[str, dict[str, Any]]:
    """Per account: last send, mail waiting, and the newest error of the waiting mail."""
    import sqlalchemy as sa

    from cpmail.store.schema import messages

    m = messages.c
    out: dict[str, dict[str, Any]] = {}
    recent = now - dt.timedelta(days=30)
    waiting = ("queued", "deferred", "sending")
    with engine.connect() as conn:
        counted = _counted(conn, stale, now)
        for account, last in conn.execute(
            sa.select(m.account, sa.func.max(m.sent_at))
            .where(m.status == "sent")
            .group_by(m.account)
        ):
            out.setdefault(account, {})["last_sent"] = last
        for account, n in conn.execute(
            sa.select(m.account, sa.func.count())
            .where(m.status.in_(waiting), counted)
            .group_by(m.account)
        ):
            out.setdefault(account, {})["waiting"] = int(n)
        for account in conn.execute(
            sa.select(m.account).where(m.status == "failed", m.failed_at >= recent).distinct()
        ).scalars():
            out.setdefault(account, {})
        rows = conn.execute(
            sa.select(m.account, m.last_error, m.next_attempt_at, m.failed_at, m.queued_at).where(
                m.last_error.is_not(None),
                sa.or_(
                    m.status.in_(waiting),
                    sa.and_(
                        m.status == "failed", m.failed_at >= now - dt.timedelta(days=FAILED_DAYS)
                    ),
                ),
            )
        ).all()
    newest: dict[str, tuple[dt.datetime, str]] = {}
    for r in rows:
        # When it was refused: when it failed, or at the latest its next try, which is
        # set just after a refusal.
        at = r.failed_at or r.next_attempt_at or r.queued_at
        if r.account not in newest or at > newest[r.account][0]:
            newest[r.account] = (at, r.last_error)
    for account, (at, error) in newest.items():
        out.setdefault(account, {}).update(last_error=error, error_at=at)
    return out


# ------------------------------------------------------------------ the rest


def _transport_detail(settings: Settings) -> tuple[str, str | None]:
    name = settings["mail.transport"]
    if name == "file":
        return f"writes .eml files to {settings.mail_dir}", None
    if name == "smtp":
        host = settings["mail.smtp.host"].strip()
        if not host:
            return "no server set", "mail.smtp.host is not set; run `cpmail config smtp`"
        return (
            f"{host}:{settings['mail.smtp.port']} ({settings['mail.smtp.security']})",
            None,
        )
    if name == "gmail":
        if not settings["mail.gmail.client_secrets"]:
            return "Gmail API", "mail.gmail.client_secrets is not set; run `cpmail config gmail`"
        return f"Gmail API at {redact(settings['mail.gmail.api_base'])}", None
    if not settings["mail.microsoft.client_id"]:
        return (
            "Microsoft Graph",
            "mail.microsoft.client_id is not set; run `cpmail config microsoft`",
        )
    return f"Microsoft Graph at {redact(settings['mail.microsoft.api_base'])}", None


def _last_check(
    engine: sa.Engine, stale_minutes: float, now: dt.datetime
) -> tuple[LastCheck | None, LastCheck | None]:
    """The newest check, and, when that one has not ended, the newest that did."""
    import sqlalchemy as sa

    from cpmail.outbox import runs_here
    from cpmail.store.schema import runs

    with engine.connect() as conn:
        r = conn.execute(
            sa.select(runs)
            .where(runs.c.command == "check")
            # the newest word: of checks that overlapped, the one that ended last (one
            # still running, or killed, counts from its start)
            .order_by(
                sa.func.coalesce(runs.c.ended_at, runs.c.started_at).desc(),
                runs.c.started_at.desc(),
            )
            .limit(1)
        ).first()
        ended = None
        if r is not None and r.ended_at is None:
            ended = conn.execute(
                sa.select(runs)
                .where(runs.c.command == "check", runs.c.ended_at.is_not(None))
                .order_by(runs.c.ended_at.desc(), runs.c.started_at.desc())
                .limit(1)
            ).first()
        # a run of this machine runs while its process does, whatever the clocks say,
        # and a run whose process is gone (killed) did not finish, now
        alive, gone = runs_here(conn)
    if r is None:
        return None, None
    stale = dt.timedelta(minutes=stale_minutes)
    return _as_last_check(r, now, stale, alive, gone), (
        _as_last_check(ended, now, stale, alive, gone) if ended is not None else None
    )


def _died(
    engine: sa.Engine, stale_minutes: float, now: dt.datetime
) -> tuple[LastCheck | None, LastCheck | None]:
    """The newest check that did not finish, and the first check begun after it that did
    its work, exit 0 or 1 (None while none has).

    Only a check begun within the days finished runs are kept (``RUNS_KEPT``, less a day
    for clocks that differ): of one begun before, the check that finished after it may
    be gone from the table.
    """
    import sqlalchemy as sa

    from cpmail.outbox import RUNS_KEPT, running, runs_here
    from cpmail.store.schema import runs

    r = runs.c
    stale = dt.timedelta(minutes=stale_minutes)
    with engine.connect() as conn:
        unfinished = conn.execute(
            sa.select(runs)
            .where(
                r.command == "check",
                r.ended_at.is_(None),
                r.started_at >= now - RUNS_KEPT + dt.timedelta(days=1),
            )
            .order_by(r.started_at.desc())
        ).all()
        if not unfinished:
            return None, None
        alive, gone = runs_here(conn)
        dead = next((x for x in unfinished if not running(x, now, stale, alive, gone)), None)
        if dead is None:
            return None, None
        then = conn.execute(
            sa.select(runs)
            .where(
                r.command == "check",
                r.started_at > dead.started_at,
                r.ended_at.is_not(None),
                r.exit_code.in_((0, 1)),  # it found and queued all there was (1: some waits)
            )
            .order_by(r.ended_at, r.started_at)
            .limit(1)
        ).first()
    return _as_last_check(dead, now, stale, alive, gone), (
        _as_last_check(then, now, stale, alive, gone) if then is not None else None
    )


#: Commands other than `check` that deliver mail, as their runs name them, in a sentence.
DELIVERED_BY = {
    "deliver": "`cpmail outbox retry`",
    "send": "`cpmail message` or `cpmail send-report`",
    "test": "a test message",
}


def _last_delivery(
    engine: sa.Engine, stale_minutes: float, now: dt.datetime
) -> LastDelivery | None:
    """The newest run of another command that delivered mail and said how it went (exit 0,
    1 or 3: a run that offered nothing to the server, or was stopped, says nothing)."""
    import sqlalchemy as sa

    from cpmail.outbox import runs_here
    from cpmail.store.schema import runs

    with engine.connect() as conn:
        r = conn.execute(
            sa.select(runs)
            .where(
                runs.c.command.in_(list(DELIVERED_BY)),
                runs.c.ended_at.is_not(None),
                runs.c.exit_code.in_([0, 1, 3]),
            )
            .order_by(runs.c.ended_at.desc(), runs.c.started_at.desc())
            .limit(1)
        ).first()
        if r is None:
            return None
        alive, gone = runs_here(conn)
    last = _as_last_check(r, now, dt.timedelta(minutes=stale_minutes), alive, gone)
    return LastDelivery(**vars(last), by=DELIVERED_BY[r.command])


def _as_last_check(
    r: Any, now: dt.datetime, stale: dt.timedelta, alive: set[str], gone: set[str]
) -> LastCheck:
    from cpmail.outbox import running

    counts: dict[str, Any] | None = None
    if r.counts:
        try:
            loaded = json.loads(r.counts)
            counts = loaded if isinstance(loaded, dict) else None
        except ValueError:
            counts = None
    if r.ended_at is not None:
        state = "finished"
    elif running(r, now, stale, alive, gone):
        state = "running"
    else:
        state = "did not finish"
    return LastCheck(
        started_at=r.started_at,
        ended_at=r.ended_at,
        run_date=r.run_date,
        exit_code=r.exit_code,
        host=r.host,
        counts=counts,
        note=r.note,
        state=state,
    )


def window_opened(settings: Settings, now_utc: dt.datetime) -> tuple[bool, dt.datetime | None]:
    """Is the send window open now, and since when (naive UTC; None without a window)."""
    window = settings["mail.send_window"]
    if not window:
        return True, None
    from cpmail.outbox import in_send_window

    tz = settings.tz()
    local = now_utc.replace(tzinfo=dt.UTC).astimezone(tz)
    if not in_send_window(settings, local):
        return False, None
    opened = _opening(settings, local)
    if opened > local:  # a window across midnight, opened yesterday
        opened -= dt.timedelta(days=1)
    return True, opened.astimezone(dt.UTC).replace(tzinfo=None)


def _opening(settings: Settings, local: dt.datetime) -> dt.datetime:
    """When the send window opens on the day of ``local`` (aware, in the agency's zone)."""
    start = dt.time.fromisoformat(settings["mail.send_window"].split("-")[0])
    return dt.datetime.combine(local.date(), start, tzinfo=local.tzinfo)


def _outbox(
    engine: sa.Engine,
    settings: Settings,
    now: dt.datetime,
    window: tuple[bool, dt.datetime | None],
) -> Outbox:
    import sqlalchemy as sa

    from cpmail import outbox as ob
    from cpmail.store.schema import messages

    m = messages.c
    waiting = ("queued", "deferred", "sending")
    with engine.connect() as conn:
        counted = _counted(conn, ob.stale_after(settings), now)
        n, oldest = conn.execute(
            sa.select(sa.func.count(), sa.func.min(m.queued_at)).where(
                m.status.in_(waiting), counted
            )
        ).one()
        fresh = conn.execute(
            sa.select(sa.func.count()).where(m.status == "queued", m.attempts == 0, counted)
        ).scalar_one()
        failed = conn.execute(
            sa.select(sa.func.count()).where(
                m.status == "failed",
                m.failed_at >= now - dt.timedelta(days=FAILED_DAYS),
                # a test message that failed was reported at once to whoever sent it
                m.event != ob.ONCE,
            )
        ).scalar_one()
        claimed = conn.execute(
            sa.select(sa.func.count()).where(m.status == "sending", counted)
        ).scalar_one()
    open_now, opened = window
    # As `check` judges it: the next try (never before the send window opens), and mail a
    # run that stopped holds and when it is taken up; the rest of what is claimed is on
    # its way.
    held = ob.waiting(engine, settings)
    box = Outbox(
        waiting=int(n),
        oldest_waiting_since=oldest,
        next_try=held.next_try,
        held_by_window=0 if open_now else int(fresh),
        held_by_stopped=held.orphaned,
        taken_up_at=held.orphans_free_at,
        failed_7_days=int(failed),
        sending_now=max(0, int(claimed) - held.orphaned),
    )
    if oldest is not None and open_now:
        box.overdue_since = waiting_counted_from(settings, oldest, opened)
    return box


def waiting_counted_from(
    settings: Settings, queued: dt.datetime, opened: dt.datetime | None
) -> dt.datetime:
    """When the wait of mail queued at ``queued`` (naive UTC) began to count: then, if the
    send window was open; else when it next opened (at the latest ``opened``, the opening
    of the window open now). A night with the window closed is no wait; a day it was
    open, with the mail still waiting, is."""
    if opened is None or queued >= opened or window_opened(settings, queued)[0]:
        return queued
    local = queued.replace(tzinfo=dt.UTC).astimezone(settings.tz())
    nxt = _opening(settings, local)
    if nxt <= local:
        nxt += dt.timedelta(days=1)
    return min(nxt.astimezone(dt.UTC).replace(tzinfo=None), opened)


def _staff_addresses(engine: sa.Engine, ids: list[str]) -> dict[str, str]:
    """The address each staff account sends from (its username, else its work e-mail)."""
    import sqlalchemy as sa

    from cpmail.store.schema import staff

    s = staff.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(s.id, s.username, s.work_email).where(s.id.in_(ids))
            ).all()
    except sa.exc.DBAPIError:  # the database section of the report says why
        return {}
    return {r.id: r.username or r.work_email for r in rows if r.username or r.work_email}


def _accounts(
    settings: Settings,
    secrets: SecretStore,
    engine: sa.Engine | None,
    now: dt.datetime,
) -> list[Account]:
    from cpmail.secrets import SHARED

    transport = settings["mail.transport"]
    stale = dt.timedelta(minutes=settings["outbox.stale_claim_minutes"])
    rows = _account_rows(engine, now, stale) if engine is not None else {}
    names: list[str] = []
    if settings["mail.one_account"]:
        names.append(SHARED)
    elif settings["user.staff"]:
        names.append(settings["user.staff"])
    if transport != "file":
        names += _stored_accounts(secrets, transport)
    local = set(names)  # this machine sends from these; the log may name others
    names += [a for a in rows if a]
    senders = _staff_addresses(engine, names) if engine is not None else {}
    accounts = []
    for name in dict.fromkeys(names):
        acct = Account(account=name)
        if name == SHARED:
            acct.address = settings["mail.sender"]
        else:
            acct.address = senders.get(name, "")  # what its mail says it is from
        info = rows.get(name, {})
        acct.last_sent = info.get("last_sent")
        acct.waiting = int(info.get("waiting", 0))
        acct.last_error = info.get("last_error")
        acct.error_at = info.get("error_at")
        if transport == "file":
            acct.login = "none (file transport)"
        else:
            _credentials(settings, secrets, acct, transport)
            if name not in local and acct.signed_in is False:
                # Known from the log only: another machine on the same database may be the
                # one signed in as it. Its waiting mail is judged (and alerted) on its own.
                acct.login += " (not on this machine)"
                acct.problem = None
        err, at = acct.last_error, info.get("error_at")
        refused = bool(err and _REFUSAL.search(err))
        if refused and at is not None and acct.last_sent is not None and acct.last_sent > at:
            refused = False  # it sent since
        if refused and acct.problem is None:
            acct.problem = f"refused at the last try: {err}"
        accounts.append(acct)
    if engine is not None:
        _addresses(engine, accounts)
    return accounts


def _addresses(engine: sa.Engine, accounts: list[Account]) -> None:
    import sqlalchemy as sa

    from cpmail.store.schema import staff

    missing = [a.account for a in accounts if not a.address]
    if not missing:
        return
    with engine.connect() as conn:
        found = {
            r.id: r.username or r.work_email or ""
            for r in conn.execute(
                sa.select(staff.c.id, staff.c.username, staff.c.work_email).where(
                    staff.c.id.in_(missing)
                )
            )
        }
    for a in accounts:
        a.address = a.address or found.get(a.account, "")


# ------------------------------------------------------------------ probing (network)


def probe_accounts(settings: Settings, secrets: SecretStore, accounts: list[Account]) -> None:
    """Sign each account in without sending; set ``probe`` (and ``problem`` when refused)."""
    transport = settings["mail.transport"]
    for acct in accounts:
        if transport == "file":
            acct.probe = "ok"
            continue
        if acct.signed_in is False:
            acct.probe = "not signed in"
            continue
        try:
            if transport == "smtp":
                _probe_smtp(settings, secrets, acct)
            elif transport == "gmail":
                _probe_gmail(settings, secrets, acct)
            else:
                _probe_microsoft(settings, secrets, acct)
        except CpmailError as e:
            acct.probe = str(e)
            acct.problem = f"the sign-in test failed: {e}"
        except Exception as e:  # a library's surprise must not hide the other accounts
            acct.probe = f"{type(e).__name__}"
            acct.problem = f"the sign-in test failed ({type(e).__name__})"
        else:
            acct.probe = "ok"
            if acct.problem and acct.problem.startswith("refused at the last try"):
                acct.problem = None  # it works now: the next check sends its mail


def _probe_smtp(settings: Settings, secrets: SecretStore, acct: Account) -> None:
    from cpmail.secrets import passcode_name
    from cpmail.transports.smtp import probe
    from cpmail.transports.smtp_words import Login

    secret = secrets.get(passcode_name(acct.account))
    login = Login(acct.account, acct.address, secret) if secret and secret.reveal() else None
    probe(settings, login, acct.address)


def _probe_gmail(settings: Settings, secrets: SecretStore, acct: Account) -> None:
    from cpmail.errors import AuthError
    from cpmail.oauth.google import GoogleSession, google_client
    from cpmail.oauth.tokens import load_token, signin_command

    google_client(settings, secrets)  # a missing client is named before the network
    session = GoogleSession(settings, secrets, acct.account)
    session.refresh()
    if not session.may_send:  # signed in, but without leave to send: every message fails
        raise AuthError(
            f"the Google sign-in of account {acct.account} does not allow sending e-mail; "
            f"run `{signin_command(acct.account)}` and tick 'Send email on your behalf'"
        )
    stored = load_token(secrets, "gmail", acct.account)
    if stored is not None:
        acct.token_expires, acct.signin_lapses = token_dates("gmail", stored.data)


def _probe_microsoft(settings: Settings, secrets: SecretStore, acct: Account) -> None:
    from cpmail.oauth.microsoft import MICROSOFT_APP_SECRET, MicrosoftAppSession, MicrosoftSession
    from cpmail.oauth.tokens import load_token
    from cpmail.secrets import SHARED

    app_secret = secrets.get(MICROSOFT_APP_SECRET) if acct.account == SHARED else None
    session: MicrosoftSession | MicrosoftAppSession
    if app_secret is not None:
        session = MicrosoftAppSession(settings, app_secret.reveal())
    else:
        session = MicrosoftSession(settings, secrets, acct.account)
    try:
        session.access_token(force_refresh=True)
    finally:
        session.close()
    stored = load_token(secrets, "microsoft", acct.account)
    if stored is not None:
        acct.token_expires, acct.signin_lapses = token_dates("microsoft", stored.data)


# ------------------------------------------------------------------ putting it together


def gather(
    settings: Settings,
    secrets: SecretStore,
    *,
    probe: bool = False,
    now: dt.datetime | None = None,
) -> Health:
    """Look at everything (network only with ``probe``) and judge: see ``Health.exit_code``."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    transport = settings["mail.transport"]
    detail, transport_problem = _transport_detail(settings)
    engine, db = open_database(settings)
    window = window_opened(settings, now)
    sender_problem: str | None = None
    try:
        last_check = last_finished = last_delivery = outbox = None
        died = died_then = None
        if engine is not None:
            stale = settings["outbox.stale_claim_minutes"]
            last_check, last_finished = _last_check(engine, stale, now)
            last_delivery = _last_delivery(engine, stale, now)
            died, died_then = _died(engine, stale, now)
            outbox = _outbox(engine, settings, now, window)
            sender_problem = _sender_problem(settings, engine)
        accounts = _accounts(settings, secrets, engine, now)
    except Exception as e:  # the database went away half-way
        import sqlalchemy as sa

        if not isinstance(e, sa.exc.SQLAlchemyError):
            raise
        db.reachable, db.error = False, hide(redact(str(getattr(e, "orig", e) or e)))[:300]
        last_check = last_finished = last_delivery = outbox = None
        died = died_then = None
        accounts = _accounts(settings, secrets, None, now)
    finally:
        if engine is not None:
            engine.dispose()
    if probe and transport_problem is None:
        probe_accounts(settings, secrets, accounts)
    health = Health(
        checked_at=now,
        host=socket.gethostname(),
        transport=transport,
        transport_detail=detail,
        transport_problem=transport_problem,
        accounts=accounts,
        last_check=last_check,
        outbox=outbox,
        database=db,
        enabled=settings["mail.enabled"],
        send_window=settings["mail.send_window"],
        window_open=window[0],
        probed=probe,
        last_finished=last_finished,
        last_delivery=last_delivery,
        died=died,
        died_then=died_then,
    )
    if sender_problem is not None:
        health.problems.append(sender_problem)
    _judge(health, settings)
    return health


def _sender_problem(settings: Settings, engine: sa.Engine) -> str | None:
    """Why `cpmail check` would find no account to send from (None when it would)."""
    from cpmail.people import resolve_sender

    if settings["mail.transport"] == "file":
        return None  # it writes files without one
    try:
        resolve_sender(settings, engine, None)
    except CpmailError as e:
        return str(e).rstrip(".")
    return None


def _judge(h: Health, settings: Settings) -> None:
    if not h.database.usable:
        h.problems.append(f"the database cannot be used: {h.database.error}")
    if h.transport_problem:
        h.problems.append(h.transport_problem)
    for a in h.accounts:
        if a.problem:
            h.problems.append(f"account {a.account}: {a.problem}")
    lc = h.last_check
    # While the newest check runs (or after it died), the last one that ended says
    # whether mail goes: a monitor polling in between must not read "healthy".
    said = lc if lc is None or lc.state == "finished" else h.last_finished
    which = "last check" if said is lc else "last check that finished"
    # Whether mail goes is the newest delivery's word, whichever command made it: mail
    # sent by `outbox retry` since a check could not send says it goes now, and the other way.
    sent, by, note = said, which, said.note if said is not None else None
    after = h.last_delivery
    if after is not None and (sent is None or _ended(after) > _ended(sent)):
        sent, by, note = after, f"last delivery, by {after.by},", after.note
    if (
        sent is not None
        and sent.exit_code == 3
        and not h.problems
        and not (h.probed and h.accounts and all(a.probe == "ok" for a in h.accounts))
    ):
        h.problems.append(f"the {by} could not send (exit 3)" + (f": {note}" if note else ""))
    if said is not None and said.exit_code in (2, 70):
        # A check that stops on a setting, a template or a bug queues and sends nothing.
        why = "a setting, template or data error" if said.exit_code == 2 else "an internal error"
        h.problems.append(
            f"the {which} failed (exit {said.exit_code}, {why}): nothing is sent until it "
            "runs cleanly; run `cpmail check` to see why"
        )
    if lc is not None and lc.state == "did not finish":
        # Killed, or stopped dead: what it found but had not queued yet is found again by
        # the next check; until one finishes, nobody knows that mail goes.
        h.warnings.append(
            "the last check did not finish (killed, or its machine stopped); the next "
            "`cpmail check` finds what it left"
        )
    elif h.died is not None and h.died_then is None:
        # Checks began since, and none did its work: that one's death is still news.
        h.warnings.append(
            f"the check started {begun(h.died, settings)} did not finish (killed, or its "
            "machine stopped), and no check has finished its work since"
        )
    box = h.outbox
    if box is not None:
        counted = box.waiting - box.held_by_window - box.sending_now
        if counted > 0:
            h.warnings.append(f"{counted} message(s) waiting in the outbox")
        if box.failed_7_days:
            h.warnings.append(
                f"{box.failed_7_days} message(s) failed for good in the last {FAILED_DAYS} days"
            )


def begun(run: LastCheck, settings: Settings) -> str:
    """When and where a check began, as a person reads it ("2026-11-27 07:00 on office-pc")."""
    local = run.started_at.replace(tzinfo=dt.UTC).astimezone(settings.tz())
    return f"{local:%Y-%m-%d %H:%M}" + (f" on {run.host}" if run.host else "")


def _ended(run: LastCheck) -> dt.datetime:
    return run.ended_at or run.started_at


def load(home: Path) -> tuple[Settings, SecretStore]:
    """Settings and secrets of ``home`` (ConfigError when the settings file is broken)."""
    from cpmail.secrets import SecretStore

    settings = Settings.load(home)
    return settings, SecretStore(home, settings["secrets.backend"])
