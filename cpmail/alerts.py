"""Alerts through a second channel (Apprise: Teams, Slack, ntfy, Matrix, e-mail, JSON …).

After every ``cpmail check`` (``after_check``) the state of mail is judged
(``cpmail.status.gather``, no network) and turned into conditions:

- ``check``: the run ended with exit 1 or 3 (a change between 1 and 3 alerts again);
- ``failed``: mail failed for good in the last 7 days;
- ``signin:ACCOUNT``: an account cannot send (sign-in or passcode refused, not signed in);
- ``expiry:ACCOUNT``: an account's sign-in ends within ``[alerts] token_days``;
- ``waiting``: mail has waited longer than ``[alerts] waiting_hours`` (while the
  send window is open, counted from its opening);
- ``database``: the database cannot be used;
- ``died``: a check did not finish (killed); said once more, as resolved, when a check
  begun after it finishes its work, exit 0 or 1 (in the same alert, when the same look
  sees both).

A condition is alerted once when it appears and once ("resolved") when it
clears, never once per run. What was alerted is kept in the ``alert_state``
table (shared by every machine on one database: a condition is claimed before
it is sent, so two machines never both send it); the ``database`` condition,
which that table cannot hold while the database is down, is kept in
``<home>/alert-state.json``. All changes of one run go in one message.

An alert names the condition, the account and the fix; never a secret, a
database password or a message's content. Apprise is imported only when an
alert is sent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmail.deadline import within
from cpmail.scrub import hide
from cpmail.settings import Settings, redact, write_atomic

if TYPE_CHECKING:
    import sqlalchemy as sa

    from cpmail.status import Health

#: after_check never takes longer than this (seconds), whatever the database or the network do.
DEADLINE = 60.0
# Of DEADLINE, what is kept for taking back the record of an alert nobody heard in time.
UNDO_TIME = 10.0
#: Seconds Apprise may wait to connect to, and then hear from, each alert service.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
STATE_FILE = "alert-state.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Condition:
    """Something wrong: ``key`` names it, ``sig`` changes when it gets different enough to
    alert again, ``text`` is the line a person reads."""

    key: str
    text: str
    sig: str = ""
    # It has cleared already, and says so: told once, as "resolved" (a check that died,
    # and the check that finished its work after it; the two may be seen by one look).
    over: bool = False


@dataclass(frozen=True)
class Result:
    """What became of one alert URL."""

    url: str  # the URL with its secrets masked by Apprise
    ok: bool
    reason: str = ""


# ------------------------------------------------------------------ judging


def conditions(
    health: Health, settings: Settings, exit_code: int | None, now: dt.datetime
) -> tuple[list[Condition], set[str]]:
    """The conditions that hold now, and the keys that cannot be judged now (kept as they are)."""
    from cpmail.oauth.tokens import signin_command

    if not health.database.usable:
        text = f"The database cannot be used: {health.database.error}."
        return [Condition("database", text)], {"*"}
    out: list[Condition] = []
    unjudged: set[str] = set()
    if exit_code in (1, 2, 3, 70):
        what = {
            1: "some mail was not delivered and waits in the outbox or failed",
            2: "a setting, a template or the data is wrong, so nothing was queued or sent",
            3: "mail could not be sent at all (the server, an account's sign-in or the "
            "database refused)",
            70: "it met an internal error, so nothing was queued or sent",
        }[exit_code]
        out.append(
            Condition("check", f"cpmail check ended with exit {exit_code}: {what}.", str(exit_code))
        )
    elif exit_code != 0:
        unjudged.add("check")
    _died(health, settings, out, unjudged)
    if health.transport_problem:
        out.append(
            Condition("transport", f"The transport cannot be used: {health.transport_problem}.")
        )
    box = health.outbox
    if box is not None and box.failed_7_days:
        out.append(
            Condition(
                "failed",
                f"{box.failed_7_days} message(s) failed for good in the last 7 days; "
                "see `cpmail log --status failed`, then `cpmail outbox retry` or "
                "`cpmail outbox drop`.",
            )
        )
    hours = settings["alerts.waiting_hours"]
    overdue = box.overdue_since if box is not None else None
    if box is not None and box.waiting and not health.window_open:
        # The wait is not counted while the send window is closed: neither raised nor
        # resolved then (the mail still waits), judged again once it opens.
        unjudged.add("waiting")
    elif box is not None and overdue is not None and now - overdue > dt.timedelta(hours=hours):
        since = _local(overdue, settings)
        out.append(
            Condition(
                "waiting",
                f"{box.waiting} message(s) waiting in the outbox, the oldest since {since} "
                f"(over {hours:g} hours); see `cpmail outbox` and `cpmail status`.",
            )
        )
    days = settings["alerts.token_days"]
    for a in health.accounts:
        who = f"{a.account} ({a.address})" if a.address else a.account
        if a.problem:
            out.append(Condition(f"signin:{a.account}", f"Account {who} cannot send: {a.problem}."))
            unjudged.add(f"expiry:{a.account}")  # the refusal says more; keep the expiry as is
        elif a.signin_lapses is not None and a.signin_lapses - now <= dt.timedelta(days=days):
            when = _local(a.signin_lapses, settings)
            verb = "ended" if a.signin_lapses <= now else "ends"
            out.append(
                Condition(
                    f"expiry:{a.account}",
                    f"The sign-in of account {who} {verb} on {when} unless it is renewed; "
                    f"run `{signin_command(a.account)}`.",
                )
            )
    return [_clean(c) for c in out], unjudged


def _died(health: Health, settings: Settings, out: list[Condition], unjudged: set[str]) -> None:
    """A check that did not finish: said when the next look sees it, and once more when a
    check begun after it finishes its work (in the same alert, when that look is that
    check's).

    The condition stays recorded, cleared, until another check dies: each is said once.
    """
    from cpmail.status import begun

    died, then = health.died, health.died_then
    if died is None:
        unjudged.add("died")  # (what was said of the last one stays as it is)
        return
    text = (
        f"The cpmail check started at {begun(died, settings)} did not finish (killed, or its "
        "machine stopped)"
    )
    sig = f"{died.host}@{died.started_at.isoformat()}"
    if then is None:
        text += (
            "; what it found and had not sent is found again by the next check, and an "
            "alert says when one has."
        )
        out.append(Condition("died", text, sig))
    else:
        text += (
            f"; the check started at {begun(then, settings)} found again what it left "
            f"(exit {then.exit_code})."
        )
        out.append(Condition("died", text, sig + " over", over=True))


def _clean(c: Condition) -> Condition:
    text = " ".join(hide(redact(c.text)).split()).replace("..", ".")
    return Condition(c.key, text[:600], c.sig, c.over)


def _local(when: dt.datetime, settings: Settings) -> str:
    local = when.replace(tzinfo=dt.UTC).astimezone(settings.tz())
    return local.strftime("%Y-%m-%d %H:%M %Z").strip()


# ------------------------------------------------------------------ remembering


@dataclass(frozen=True)
class _Raised:
    key: str
    sig: str
    text: str
    raw: str  # the stored detail, compared when claiming


def _decode(key: str, detail: str) -> _Raised:
    try:
        doc = json.loads(detail)
        return _Raised(key, str(doc.get("sig", "")), str(doc.get("text", "")), detail)
    except (ValueError, AttributeError):
        return _Raised(key, "", detail, detail)


def _encode(c: Condition) -> str:
    return json.dumps({"sig": c.sig, "text": c.text}, ensure_ascii=False)


@dataclass
class _Changes:
    raised: list[Condition]
    resolved: list[_Raised]

    def __bool__(self) -> bool:
        return bool(self.raised or self.resolved)


class _DatabaseState:
    """Conditions in the ``alert_state`` table, shared by every machine on the database.

    Reading and writing happen in one transaction that no other alerting run
    can interleave with (SQLite: BEGIN IMMEDIATE; PostgreSQL: a lock on the
    table), so of several machines judging at once, one sends the alert and
    the others find it already recorded.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def claim(
        self, holds: list[Condition], unjudged: set[str], now: dt.datetime
    ) -> tuple[_Changes, dict[str, _Raised]]:
        """Record the changes against the stored state; return them and the state before."""
        import sqlalchemy as sa

        from cpmail.store.schema import alert_state

        t = alert_state.c
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("LOCK TABLE alert_state IN EXCLUSIVE MODE"))
            changes, old = self._changes(conn, holds, unjudged)
            for c in changes.raised:
                conn.execute(alert_state.delete().where(t.condition == c.key))
                conn.execute(
                    alert_state.insert().values(condition=c.key, raised_at=now, detail=_encode(c))
                )
            for r in changes.resolved:
                conn.execute(alert_state.delete().where(t.condition == r.key))
        return changes, old

    def unclaimed(self, holds: list[Condition], unjudged: set[str]) -> _Changes:
        """The changes against the stored state, when they cannot be recorded (a full disk):
        sent all the same. Nothing, when the state cannot even be read."""
        try:
            with self.engine.connect() as conn:
                return self._changes(conn, holds, unjudged)[0]
        except Exception:
            return _Changes([], [])

    @staticmethod
    def _changes(
        conn: sa.Connection, holds: list[Condition], unjudged: set[str]
    ) -> tuple[_Changes, dict[str, _Raised]]:
        """The changes against the state stored in the table, and that state."""
        import sqlalchemy as sa

        from cpmail.store.schema import alert_state

        t = alert_state.c
        rows = conn.execute(sa.select(t.condition, t.detail)).all()
        old = {
            r.condition: _decode(r.condition, r.detail) for r in rows if r.condition != "database"
        }
        return _diff([c for c in holds if c.key != "database"], unjudged, old, None), old

    def undo(self, won: _Changes, old: dict[str, _Raised], now: dt.datetime) -> None:
        """Nobody was told: put the state back so that the next run tries again."""
        from cpmail.store.schema import alert_state

        t = alert_state.c
        keys = [c.key for c in won.raised] + [r.key for r in won.resolved]
        with self.engine.begin() as conn:
            conn.execute(alert_state.delete().where(t.condition.in_(keys)))
            for key in keys:
                if key in old:
                    conn.execute(
                        alert_state.insert().values(
                            condition=key, raised_at=now, detail=old[key].raw
                        )
                    )


class _FileState:
    """The ``database`` condition, kept beside the settings (the database may be down)."""

    def __init__(self, home: Path) -> None:
        self.path = home / STATE_FILE

    def load(self) -> dict[str, _Raised]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict):
            return {}
        return {k: _decode(k, str(v)) for k, v in doc.items() if isinstance(v, str)}

    def save(self, state: dict[str, _Raised]) -> None:
        if not state:
            self.path.unlink(missing_ok=True)
            return
        doc = {k: r.raw for k, r in state.items()}
        write_atomic(self.path, json.dumps(doc, ensure_ascii=False).encode("utf-8"), mode=0o600)

    def claim(
        self, holds: list[Condition], unjudged: set[str], now: dt.datetime
    ) -> tuple[_Changes, dict[str, _Raised]]:
        changes, old = self._changes(holds)
        state = dict(old)
        for c in changes.raised:
            state[c.key] = _Raised(c.key, c.sig, c.text, _encode(c))
        for r in changes.resolved:
            state.pop(r.key, None)
        if changes:
            self.save(state)
        return changes, old

    def unclaimed(self, holds: list[Condition], unjudged: set[str]) -> _Changes:
        """The changes against the stored state, when they cannot be recorded (a full disk)."""
        return self._changes(holds)[0]

    def _changes(self, holds: list[Condition]) -> tuple[_Changes, dict[str, _Raised]]:
        """The database condition's change against the file, and what the file holds."""
        old = self.load()
        return _diff(holds, set(), old, {"database"}), old

    def undo(self, won: _Changes, old: dict[str, _Raised], now: dt.datetime) -> None:
        self.save(old)


def _diff(
    now_holds: list[Condition], unjudged: set[str], old: dict[str, _Raised], keys: set[str] | None
) -> _Changes:
    """New or changed conditions, and raised ones that cleared (``keys``: the ones judged here)."""
    current = {c.key: c for c in now_holds if keys is None or c.key in keys}
    raised = [c for c in current.values() if c.key not in old or old[c.key].sig != c.sig]
    resolved = [
        r for k, r in old.items() if k not in current and "*" not in unjudged and k not in unjudged
    ]
    return _Changes(raised, resolved)


# ------------------------------------------------------------------ telling


def message(changes: _Changes, host: str) -> tuple[str, str, str]:
    """(title, body, Apprise notify type) of one alert carrying every change of a run."""
    problems = [c.text for c in changes.raised if not c.over]
    resolved = [x.text for x in changes.resolved] + [c.text for c in changes.raised if c.over]
    n, r = len(problems), len(resolved)
    if n == 1 and not r:
        head = f"problem: {_short(problems[0])}"
    elif r == 1 and not n:
        head = f"resolved: {_short(resolved[0])}"
    else:
        parts = [f"{n} problem(s)" if n else "", f"{r} resolved" if r else ""]
        head = ", ".join(p for p in parts if p)
    lines = [f"PROBLEM: {text}" for text in problems]
    lines += [f"RESOLVED: {text}" for text in resolved]
    lines += ["", f"Run `cpmail status` on {host} for the whole picture."]
    kind = "failure" if n else "success"
    return hide(f"cpmail on {host}: {head}"), hide("\n".join(lines)), kind


def _short(text: str, limit: int = 90) -> str:
    text = hide(text)  # before it is cut: a secret cut in two is masked by neither half
    return text if len(text) <= limit else text[: limit - 1] + "…"


def send(urls: Sequence[str], title: str, body: str, kind: str = "info") -> list[Result]:
    """Send one notification to each URL (each on its own, so each has its own outcome)."""
    import apprise

    results: list[Result] = []
    # Apprise logs the URLs it posts to, tokens and all: keep its records to
    # itself (LogCapture still reads them) and mask the URLs' parts in reasons.
    apprise_log = logging.getLogger("apprise")
    propagate, apprise_log.propagate = apprise_log.propagate, False
    try:
        with apprise.LogCapture(level=logging.WARNING) as captured:  # type: ignore[no-untyped-call]
            for url in urls:
                results.append(_send_one(apprise, captured, url, title, body, kind))
    finally:
        apprise_log.propagate = propagate
    return results


def _url_secrets(url: str) -> list[str]:
    """The parts of an Apprise URL that may be tokens: all but the scheme and a host that
    reads as one, as written and percent-decoded (Apprise's log quotes them decoded)."""
    import urllib.parse

    rest = url.split("://", 1)[-1]
    host = _host(rest)[1]
    public = set(re.split(r"[:\[\]]+", host)) if host else set()
    found: set[str] = set()
    for part in re.split(r"[/:@?&=#]+", rest):
        for form in (part, urllib.parse.unquote(part), urllib.parse.unquote_plus(part)):
            if len(form) >= 3 and form not in public:
                found.add(form)
    return sorted(found, key=len, reverse=True)


def _shown(private: str) -> str:
    """An alert URL as cpmail prints it: scheme and host, never its path or query.

    Apprise's privacy form masks passwords but keeps paths, which for webhooks,
    ntfy topics and form posts are the secret. Many services put the secret
    where the host goes (``ntfy://TOPIC``, ``goalert://TOKEN``): a host is
    shown only when it reads as one (a domain, an IP address, localhost), and
    what precedes an ``@`` never.
    """
    scheme, _, rest = private.partition("://")
    netloc, host = _host(rest)
    return f"{scheme}://{host or '…'}" + ("/…" if rest[len(netloc) :].strip("/?#") else "")


def _host(rest: str) -> tuple[str, str]:
    """(the part before the path, its host when it reads as one, else '') of a URL's rest."""
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host = netloc.rpartition("@")[2]
    return netloc, host if _HOST_LIKE.fullmatch(host) and "..." not in host else ""


# a domain (with a dot), an IPv4 or bracketed IPv6 address, or localhost; a port may follow
_HOST_LIKE = re.compile(
    r"(?:localhost|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?::\d+)?"
)


def _send_one(apprise: Any, captured: Any, url: str, title: str, body: str, kind: str) -> Result:
    """Send to one URL; the outcome, with the reason Apprise logged when it failed."""
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        shown = url.split("://", 1)[0] + "://…" if "://" in url else "(not a URL)"
        return Result(shown, False, "Apprise does not understand this URL")
    plugin.socket_connect_timeout = CONNECT_TIMEOUT
    plugin.socket_read_timeout = READ_TIMEOUT
    shown = _shown(str(plugin.url(privacy=True)))
    start = len(captured.getvalue())
    try:
        ok = bool(plugin.notify(body=body, title=title, notify_type=apprise.NotifyType(kind)))
    except Exception as e:  # a plugin's bug must not hide the other URLs
        return Result(shown, False, type(e).__name__)
    reason = ""
    if not ok:
        said = [ln for ln in captured.getvalue()[start:].splitlines() if " - " in ln]
        reason = said[-1].split(" - ", 2)[-1].strip() if said else "not accepted"
        for secret in _url_secrets(url):
            reason = reason.replace(secret, "••••")
    return Result(shown, ok, hide(redact(reason))[:300])


# ------------------------------------------------------------------ the entry points


def evaluate(
    home: Path,
    exit_code: int | None,
    *,
    now: dt.datetime | None = None,
    until: float | None = None,
) -> list[Result]:
    """Judge the state of mail, send what changed to ``[alerts] urls``; return the outcomes.

    ``exit_code`` is that of the ``check`` that just ended (None: judge without it).
    Sending is given up at ``until`` (``time.monotonic()``), leaving time to take the
    record of it back. Raises on a broken settings file; ``after_check`` is the
    never-raising wrapper.
    """
    from cpmail.status import gather, load

    settings, secrets = load(home)
    urls = list(settings["alerts.urls"])
    if not urls:
        return []
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    health = gather(settings, secrets, now=now)
    holds, unjudged = conditions(health, settings, exit_code, now)
    stores: list[_FileState | _DatabaseState] = [_FileState(home)]
    engine = None
    if health.database.usable:
        from cpmail.status import open_database

        engine, _ = open_database(settings)
    if engine is not None:
        stores.append(_DatabaseState(engine))
    try:
        # The file holds only the database condition, judged on every run; the table
        # holds the rest, judged only while the database can be read.
        # (store, changes, the state before: None when the changes could not be recorded)
        pending: list[tuple[_FileState | _DatabaseState, _Changes, dict[str, _Raised] | None]] = []
        unrecorded = False
        for store in stores:
            try:
                won, old = store.claim(holds, unjudged, now)
            except Exception:  # a full disk, say: alert all the same, unrecorded (again next run)
                won = store.unclaimed(holds, unjudged)
                if won:
                    unrecorded = True
                    pending.append((store, won, None))
                continue
            if won:
                pending.append((store, won, old))
        everything = _Changes(
            [c for _, w, _ in pending for c in w.raised],
            [r for _, w, _ in pending for r in w.resolved],
        )
        if not everything:
            return []
        title, body, kind = message(everything, health.host)
        if unrecorded:
            body += (
                "\n\n(cpmail could not record that it sent this alert, so it is sent again "
                "by each run until it can.)"
            )
        results: list[Result] = []
        try:
            if until is None:
                results = send(urls, title, body, kind)
            else:
                with contextlib.suppress(TimeoutError):  # too slow: as if nobody heard it
                    results = within(
                        until - time.monotonic(), lambda: send(urls, title, body, kind)
                    )
        finally:
            if not any(r.ok for r in results):  # nobody heard it: the next run tries again
                for store, won, previous in pending:
                    if previous is not None:
                        store.undo(won, previous, now)
        return results
    finally:
        if engine is not None:
            engine.dispose()


def after_check(home: Path, exit_code: int) -> None:
    """Send the alerts due after a ``cpmail check`` that ended with ``exit_code``.

    Never raises and never takes more than ``DEADLINE`` seconds: an alert that
    cannot be sent is one line on stderr and leaves the check's exit code alone.
    """
    try:
        from cpmail.errors import CpmailError

        try:
            Settings.load(home)
        except CpmailError:
            return  # the settings cannot be read: the check said so, there is nothing to add
        problem: list[str] = []

        until = time.monotonic() + DEADLINE - UNDO_TIME

        def run() -> None:
            try:
                results = evaluate(home, exit_code, until=until)
            except Exception as e:
                problem.append(f"{type(e).__name__}: {hide(redact(str(e)))}"[:300])
                return
            failed = [r for r in results if not r.ok]
            if failed and len(failed) == len(results):
                problem.append("no alert URL accepted the alert (" + failed[0].reason + ")")

        worker = threading.Thread(target=run, name="cpmail-alerts", daemon=True)
        worker.start()
        worker.join(DEADLINE)
        if worker.is_alive():
            problem.append(f"sending alerts took over {DEADLINE:g} s; gave up")
        if problem:
            said = hide(problem[0])
            sys.stderr.write(f"cpmail: alerts: {said}; try `cpmail alerts test`.\n")
    except Exception:  # an alert must never change the check's outcome
        return
