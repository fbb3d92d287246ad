"""Every notification `cpmail check` finds reaches each of its people once, and every count
the run prints is true.

A small agency is generated (hypothesis): staff who share a mailbox, have left, muted events
or chose their own digest; jobs, tasks, entries, billings, payments, budgets and hours; an
`email:` rule; sending switched off; the send window closed; a mailbox the server refuses; a
server that takes small messages only. What each person must be told is worked out here from
the data, as SPEC §5 says, each item carrying a mark of its own in its text. Then:

- the (mailbox, item) pairs found in the bodies the SMTP server received (text and HTML
  alike) are exactly those, each once: nothing dropped, nothing twice, nobody else's;
- a dry run beforehand lists the same pairs;
- found and skipped per event are as worked out; sent, failed and suppressed equal the rows
  of the outbox, which equal what the server received; `log`, `outbox` and `status` agree.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpmail.settings import Settings
from cpmail.store import connect
from tests.agency import LATER, D, at, insert
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_check_run import _window_without_now
from tests.test_delivery import setup_smtp

DAY = dt.timedelta(days=1)
EVENTS = (
    "job-opened",
    "billing-created",
    "payment-received",
    "status-changed",
    "task-due-today",
    "task-due-tomorrow",
    "task-overdue",
    "task-over-budget",
    "hours-exceeded",
    "diary-entry",
    "homebase-entry",
    "change-order",
    "calendar-reminder",
)
# Each item's text carries one mark: a kind and a number, such as "tsk-7x".
MARK = re.compile(r"\b([a-z]{3})-(\d+)x\b")

PERSON = st.fixed_dictionaries(
    {
        "mailbox": st.integers(0, 3),  # several staff may share one
        "active": st.booleans(),
        "role": st.sampled_from(["ae", "creative", "production"]),
        "events": st.sampled_from(["", "job-opened", "change-order", "job-opened,change-order"]),
        "muted": st.sets(st.sampled_from(EVENTS), max_size=2),
        "digest": st.sampled_from(["on", "off", "default"]),
    }
)


@st.composite
def agencies(draw: Any) -> dict[str, Any]:
    people = draw(st.lists(PERSON, min_size=1, max_size=5))
    who = st.integers(0, len(people) - 1)
    some = st.lists(st.sets(who, max_size=3), max_size=5)
    return {
        "people": people,
        "digest": draw(st.booleans()),
        "jobs": draw(st.integers(0, 3)),
        # (assignee, days from the run date to the due date)
        "tasks": draw(st.lists(st.tuples(who, st.sampled_from([0, -1, -3, 1, 9])), max_size=25)),
        "over": draw(st.lists(who, max_size=3)),  # tasks over budget, by assignee
        "hours": draw(st.lists(who, max_size=3)),  # tasks over their estimated hours
        "billings": draw(st.integers(0, 3)),
        "payments": draw(st.integers(0, 3)),
        # status changes: the new code's notify list, or None for a code with none (team)
        "changes": draw(st.lists(st.one_of(st.none(), st.sets(who, max_size=3)), max_size=3)),
        "diary": draw(some),
        "homebase": draw(some),
        "orders": draw(st.integers(0, 3)),
        "calendar": draw(some),
        "email_rule": draw(st.one_of(st.none(), st.integers(0, 4))),
        "enabled": draw(st.booleans()),
        "window_closed": draw(st.booleans()),
        "refused": draw(st.one_of(st.none(), st.integers(0, 3))),
        "size": draw(st.sampled_from([None, 20_000])),
    }


def mailbox(i: int) -> str:
    return f"box{i}@agency.test"


@dataclass
class Expected:
    """What the run must do, worked out from the data."""

    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (mailbox, mark)
    found: Counter[str] = field(default_factory=Counter)  # per event
    skipped: Counter[str] = field(default_factory=Counter)  # per event: reaching nobody


class Agency:
    def __init__(self, a: dict[str, Any], engine: sa.Engine) -> None:
        self.a = a
        self.engine = engine
        self.people: list[dict[str, Any]] = a["people"]
        self.ids = [f"S{i}" for i in range(len(self.people))]
        self.want = Expected()

    def add(self, table: str, **row: Any) -> None:
        insert(self.engine, table, [row])

    def tell(self, event: str, mark: str, whom: list[int], outside: str | None = None) -> None:
        """A notification of ``event`` for the staff ``whom`` (and an `email:` address)."""
        boxes = {
            mailbox(self.people[i]["mailbox"])
            for i in whom
            if self.people[i]["active"] and event not in self.people[i]["muted"]
        }
        if outside is not None:
            boxes |= self._outside(event, outside)
        self.want.found[event] += 1
        self.want.skipped[event] += not boxes
        for b in boxes:
            self.want.pairs[(b, mark)] += 1

    def _outside(self, event: str, address: str) -> set[str]:
        """An `email:` address: its one active owner's mailbox as theirs (muted or not), an
        inactive owner's as theirs (nobody), else an outside address."""
        owners = [p for p in self.people if mailbox(p["mailbox"]) == address]
        active = [p for p in owners if p["active"]]
        if len(active) == 1:
            return set() if event in active[0]["muted"] else {address}
        return {address} if active or not owners else set()

    def team(self, event: str, roles: set[str] | None = None) -> list[int]:
        return [
            i
            for i, p in enumerate(self.people)
            if (roles is None or p["role"] in roles) and (not p["events"] or event in p["events"])
        ]

    def build(self) -> None:
        self._staff()
        self._tasks()
        self._jobs()
        self._entries()

    def _staff(self) -> None:
        ids = self.ids
        for i, p in enumerate(self.people):
            self.add(
                "staff",
                id=ids[i],
                name=f"Person {i}",
                work_email=mailbox(p["mailbox"]),
                role=p["role"],
                planned_hours=0,
                active=p["active"],
            )
            self.add("client_team", client_id="C1", staff_id=ids[i], role=p["role"])
            if p["events"]:
                with self.engine.begin() as conn:
                    conn.execute(
                        sa.text("UPDATE client_team SET events = :e WHERE staff_id = :s"),
                        {"e": p["events"], "s": ids[i]},
                    )
            for e in p["muted"]:
                self.add("staff_opt_out", staff_id=ids[i], event=e)

    def _tasks(self) -> None:
        a, ids = self.a, self.ids
        self.add("jobs", id="J0", client_id="C1", title="Old", opened_at=at(D - 90 * DAY))
        for t, (i, due) in enumerate(a["tasks"]):
            self.add(
                "tasks",
                id=f"T{t}",
                job_id="J0",
                name=f"tsk-{t}x",
                assignee_id=ids[i],
                due_date=D + due * DAY,
            )
            if due <= 1:  # (the next workday after Tuesday 24 is Wednesday 25)
                event = {0: "task-due-today", 1: "task-due-tomorrow"}.get(due, "task-overdue")
                self.tell(event, f"tsk-{t}x", [i])
        for t, i in enumerate(a["over"]):
            self.add(
                "tasks", id=f"B{t}", job_id="J0", name=f"ovb-{t}x", assignee_id=ids[i],
                budget_amount=Decimal(100),
            )  # fmt: skip
            self.add(
                "job_costs", id=f"JC{t}", job_id="J0", task_id=f"B{t}", kind="cost",
                amount=Decimal(150), entered_at=at(D - 40 * DAY),
            )  # fmt: skip
            self.tell("task-over-budget", f"ovb-{t}x", self.team("task-over-budget", {"ae"}))
        for t, i in enumerate(a["hours"]):
            self.add(
                "tasks", id=f"H{t}", job_id="J0", name=f"hrs-{t}x", assignee_id=ids[i],
                estimated_hours=Decimal(2),
            )  # fmt: skip
            self.add(
                "time_entries", id=f"TE{t}", staff_id=ids[i], job_id="J0", task_id=f"H{t}",
                work_date=D - 40 * DAY, hours=Decimal(3),
            )  # fmt: skip
            self.tell("hours-exceeded", f"hrs-{t}x", [*self.team("hours-exceeded", {"ae"}), i])

    def _jobs(self) -> None:
        a, ids = self.a, self.ids
        for j in range(a["jobs"]):
            self.add("jobs", id=f"J{j + 1}", client_id="C1", title=f"opn-{j}x", opened_at=at(D))
            self.tell("job-opened", f"opn-{j}x", self.team("job-opened"))
        for k in range(a["billings"]):
            self.add(
                "billings", id=f"BL{k}", job_id="J0", client_id="C1", number=f"bil-{k}x",
                amount=Decimal(10), created_at=at(D, 11),
            )  # fmt: skip
            self.tell("billing-created", f"bil-{k}x", self.team("billing-created"))
        for k in range(a["payments"]):
            self.add(
                "billings", id=f"PB{k}", job_id="J0", client_id="C1", number=f"pay-{k}x",
                amount=Decimal(10), created_at=at(D - 60 * DAY),
            )  # fmt: skip
            self.add(
                "payments", id=f"P{k}", client_id="C1", billing_id=f"PB{k}",
                amount=Decimal(10), received_at=at(D, 12),
            )  # fmt: skip
            self.tell("payment-received", f"pay-{k}x", self.team("payment-received"))
        for k, whom in enumerate(a["changes"]):
            notify = None if whom is None else ",".join(ids[i] for i in sorted(whom)) or None
            self.add("job_status_codes", code=f"C{k}", kind="production",
                     description=f"sts-{k}x", notify=notify)  # fmt: skip
            self.add(
                "job_status_history", id=f"SH{k}", job_id="J0", field="production_status",
                old_value="Old", new_value=f"C{k}", changed_at=at(D, 13),
            )  # fmt: skip
            listed = sorted(whom) if notify else self.team("status-changed")
            self.tell("status-changed", f"sts-{k}x", listed)
        rule = None if a["email_rule"] is None else mailbox(a["email_rule"])
        for k in range(a["orders"]):
            self.add(
                "change_orders", id=f"CO{k}", job_id="J0", description=f"cho-{k}x",
                amount=Decimal(5), entered_by="JD", entered_at=at(D, 10),
            )  # fmt: skip
            # the setting, when given, replaces the default rules (team:ae, team:production)
            roles = {"ae"} if rule else {"ae", "production"}
            self.tell("change-order", f"cho-{k}x", self.team("change-order", roles), rule)

    def _entries(self) -> None:
        a, ids = self.a, self.ids
        for k, whom in enumerate(a["diary"]):
            self.add(
                "diary_entries", id=f"Y{k}", kind="client", party_id="C1", subject=f"dia-{k}x",
                body="b", entered_by="JD", entered_at=at(D, 9),
                notify=",".join(ids[i] for i in sorted(whom)),
            )  # fmt: skip
            self.tell("diary-entry", f"dia-{k}x", sorted(whom))
        for k, whom in enumerate(a["homebase"]):
            self.add(
                "homebase_entries", id=f"HB{k}", subject=f"hom-{k}x", body="b", entered_by="JD",
                entered_at=at(D, 9), notify=",".join(f"Person {i}" for i in sorted(whom)),
            )  # fmt: skip
            self.tell("homebase-entry", f"hom-{k}x", sorted(whom))
        for k, whom in enumerate(a["calendar"]):
            self.add(
                "calendar_entries", id=f"K{k}", title=f"cal-{k}x", starts_at=at(LATER, 10),
                remind_at=at(D, 8), attendees=",".join(ids[i] for i in sorted(whom)),
            )  # fmt: skip
            self.tell("calendar-reminder", f"cal-{k}x", sorted(whom))


def marks(text: str) -> set[str]:
    return {f"{kind}-{n}x" for kind, n in MARK.findall(text)}


def received(server: SMTPTestServer) -> Counter[tuple[str, str]]:
    """(mailbox, mark) of every notification in the messages the server took."""
    got: Counter[tuple[str, str]] = Counter()
    for rec in server.messages:
        m = message_from_bytes(rec.data, policy=policy.default)
        assert isinstance(m, EmailMessage)
        if m["X-Cpmail-Event"] == "failure-summary":
            continue
        to = [x.addr_spec for x in m["To"].addresses]
        assert tuple(to) == rec.rcpt_tos and len(to) == 1
        text, html = (m.get_body(preferencelist=(kind,)) for kind in ("plain", "html"))
        assert text is not None and html is not None
        shown = marks(str(text.get_content()))
        assert shown == marks(str(html.get_content())), m["Subject"]
        for mark in shown:
            got[(to[0], mark)] += 1
    return got


def rows_by_status(engine: sa.Engine) -> Counter[str]:
    """This run's notification mail in the outbox and log, by status."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, event FROM messages")).all()
    return Counter(r.status for r in rows if r.event != "failure-summary")


def json_of(cli: Cli, *args: str) -> Any:
    r = cli(*args, "--json")
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def one_run(a: dict[str, Any], factory: Any, db: str = "") -> None:
    server: SMTPTestServer = factory(size_limit=a["size"] or 32 * 1024 * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        cli = Cli(Path(tmp))
        setup_smtp(cli, server, db=db)
        settings_of = Settings.load(Path(tmp))
        engine = connect(settings_of.db_url, where="test")
        with engine.begin() as conn:  # the sender JD is not part of the agency
            conn.execute(sa.text("UPDATE staff SET planned_hours = 0 WHERE id = 'JD'"))
        insert(engine, "clients", [dict(id="C1", name="Acme", billing_email="ap@acme.test")])
        agency = Agency(a, engine)
        agency.build()
        want = agency.want
        for i, p in enumerate(a["people"]):
            if p["digest"] != "default":
                assert cli("staff", "edit", agency.ids[i], "--digest", p["digest"]).exit_code == 0
        setting = {
            "mail.digest": "true" if a["digest"] else "false",
            "mail.enabled": "true" if a["enabled"] else "false",
            "mail.send_window": _window_without_now() if a["window_closed"] else "",
        }
        if a["email_rule"] is not None:
            rule = f'["team:ae", "email:{mailbox(a["email_rule"])}"]'
            setting["events.change-order.notify"] = rule
        for key, value in setting.items():
            assert cli("config", "set", key, value).exit_code == 0
        refused = None if a["refused"] is None else mailbox(a["refused"])
        if refused is not None:
            server.fail_rcpt = {refused: "550 5.1.1 no such user"}
        check = ("check", "--date", D.isoformat(), "--only", ",".join(EVENTS))

        dry = json_of(cli, *check, "--dry-run")
        planned: Counter[tuple[str, str]] = Counter()
        for p in dry["messages"]:
            assert p["fails"] is None
            planned.update((p["to"], mark) for mark in marks(p["text"]))
        assert planned == want.pairs, (planned - want.pairs, want.pairs - planned)

        run = json_of(cli, *check)
        for got in (dry, run):
            for s in got["summary"]:
                assert (s["found"], s["skipped"]) == (
                    want.found[s["event"]],
                    want.skipped[s["event"]],
                ), s
        told = sum(want.found.values()) - sum(want.skipped.values())
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM ledger")).scalar() == sum(
                want.found.values()
            )
        rows = rows_by_status(engine)
        if not a["enabled"]:  # recorded as suppressed, one row per message, none sent
            assert run["totals"]["suppressed"] == dry["totals"]["suppressed"] == told
            assert rows == Counter({"suppressed": len(dry["messages"])}) or not told
            assert not server.messages and run["exit_code"] == 0
            return
        assert dry["totals"]["suppressed"] == run["totals"]["suppressed"] == 0
        earlier = Counter[str]()
        if a["window_closed"]:  # queued, none sent; the run when it opens sends them
            assert run["outbox"]["outside_window"] == sum(rows.values()) == rows["queued"]
            assert not server.messages and run["exit_code"] == 0
            assert cli("config", "set", "mail.send_window", "").exit_code == 0
            run = json_of(cli, *check)
            assert run["totals"]["found"] == 0
            earlier.update(run["outbox"]["earlier"])
            rows = rows_by_status(engine)
        totals = Counter({k: run["totals"][k] for k in ("sent", "failed", "deferred")})
        counted = totals + earlier
        manager = 1 if rows["failed"] else 0  # the manager's summary, counted with the run
        assert counted["sent"] == rows["sent"] + manager
        assert counted["failed"] == rows["failed"] and counted["deferred"] == 0
        assert rows["sent"] + manager == len(server.messages)
        assert sum(rows.values()) == rows["sent"] + rows["failed"]
        got = received(server)
        want_here = Counter({k: n for k, n in want.pairs.items() if k[0] != refused})
        assert got == want_here, (got - want_here, want_here - got)
        assert (run["exit_code"] == 1) == bool(rows["failed"])

        log = json_of(cli, "log")
        assert Counter(r["status"] for r in log if r["event"] != "failure-summary") == rows
        outbox = json_of(cli, "outbox")
        assert len(outbox) == rows["failed"] and {r["to"][0] for r in outbox} <= {refused}
        status = json_of(cli, "status")
        last = status["last_check"]["counts"]
        assert {k: last[k] for k in ("found", "sent", "failed")} == {
            k: run["totals"][k] for k in ("found", "sent", "failed")
        }
        assert status["outbox"]["failed_7_days"] == rows["failed"]
        engine.dispose()


def test_every_notification_reaches_each_of_its_people_once_and_the_counts_are_true(
    smtp_server_factory: Any,
) -> None:
    ran: list[int] = []

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(a=agencies())
    def run(a: dict[str, Any]) -> None:
        ran.append(1)
        one_run(a, smtp_server_factory)

    run()
    assert len(ran) == 40


@pytest.mark.postgres
def test_a_large_agency_on_postgresql_in_digests_split_to_the_servers_size(
    smtp_server_factory: Any, pg_url: str
) -> None:
    """Hundreds of items for a few people who share mailboxes, each choosing their digest,
    on PostgreSQL, through a server that takes 20 kB: every item once, counts true."""
    people = [
        {
            "mailbox": i % 3,
            "active": i != 4,
            "role": ("ae", "production", "creative")[i % 3],
            "events": "",
            "muted": {"diary-entry"} if i == 5 else set(),
            "digest": ("on", "off", "default")[i % 3],
        }
        for i in range(6)
    ]
    a = {
        "people": people,
        "digest": True,
        "jobs": 30,
        "tasks": [(i % 6, (0, -1, 1, -3)[i % 4]) for i in range(400)],
        "over": [0, 1],
        "hours": [2, 4],
        "billings": 10,
        "payments": 10,
        "changes": [None, {1, 2}, set()],
        "diary": [{0, 1}, {3, 5}, {4}, set()] * 10,
        "homebase": [{1, 5}] * 10,
        "orders": 10,
        "calendar": [{0, 2}] * 5,
        "email_rule": 1,
        "enabled": True,
        "window_closed": False,
        "refused": None,
        "size": 20_000,
    }
    one_run(a, smtp_server_factory, db=pg_url)
