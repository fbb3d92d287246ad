"""Each trigger on small hand-made data, through `cpmail check` and a real SMTP server.

The assertions are what people receive: who, how many messages, the subject,
and what the body names.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.triggers import key_of
from tests.agency import LATER, D, at, base_agency, insert
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp

DAY = dt.timedelta(days=1)


@dataclass
class Agency:
    cli: Cli
    engine: sa.Engine
    server: SMTPTestServer

    def add(self, table: str, *rows: dict[str, Any]) -> None:
        insert(self.engine, table, rows)

    def check(self, *args: str, date: dt.date = D, code: int = 0) -> list[EmailMessage]:
        """Run check; return the messages the server received in this run."""
        before = len(self.server.messages)
        r = self.cli("check", "--date", date.isoformat(), *args)
        assert r.exit_code == code, r.output
        return [
            message_from_bytes(m.data, policy=policy.default) for m in self.server.messages[before:]
        ]


@pytest.fixture
def agency(cli: Cli, home: Path, smtp_server: SMTPTestServer, backend: str) -> Agency:
    """The hand-made agency, on SQLite and on PostgreSQL."""
    return make_agency(cli, home, smtp_server, backend)


def make_agency(cli: Cli, home: Path, smtp_server: SMTPTestServer, backend: str) -> Agency:
    setup_smtp(cli, smtp_server, db=backend)
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.begin() as conn:  # the sender JD from setup_smtp is not part of the agency
        conn.execute(sa.text("UPDATE staff SET planned_hours = 0 WHERE id = 'JD'"))
    base_agency(engine)
    return Agency(cli, engine, smtp_server)


def to(msgs: list[EmailMessage]) -> list[str]:
    return sorted(a.addr_spec for m in msgs for a in m["To"].addresses)


def body(m: EmailMessage) -> str:
    part = m.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def by_event(msgs: list[EmailMessage], event: str) -> list[EmailMessage]:
    return [m for m in msgs if m["X-Cpmail-Event"] == event]


def full_day(a: Agency, staff: str, day: dt.date, hours: int = 8) -> None:
    a.add(
        "time_entries",
        dict(id=f"F-{staff}-{day}", staff_id=staff, work_date=day, hours=Decimal(hours)),
    )


# ---------------------------------------------------------------- missing-time


def test_missing_time_to_staff_and_supervisor(agency: Agency) -> None:
    agency.add("time_entries", dict(id="E1", staff_id="CR", work_date=D - DAY, hours=Decimal(3)))
    msgs = by_event(agency.check("--only", "missing-time"), "missing-time")
    # CR entered 3 of 8 on Monday: CR and CR's supervisor AE; AE entered nothing: AE.
    # PR plans 0 hours; NO is inactive.
    assert to(msgs) == ["alice@agency.test", "alice@agency.test", "carl@agency.test"]
    carl = next(m for m in msgs if to([m]) == ["carl@agency.test"])
    assert "Mon Nov 23, 2026" in carl["Subject"] and "3 of 8" in carl["Subject"]
    assert "missing 5 hours" in body(carl)
    about_carl = [m for m in msgs if "Carl Reed" in m["Subject"]]
    assert to(about_carl) == ["alice@agency.test"]


def test_missing_time_after_thanksgiving_skips_the_holiday(agency: Agency) -> None:
    friday = dt.date(2026, 11, 27)  # Thursday 26 is Thanksgiving
    full_day(agency, "AE", dt.date(2026, 11, 25))
    agency.add(
        "time_entries",
        dict(id="E1", staff_id="CR", work_date=dt.date(2026, 11, 26), hours=Decimal(8)),
    )
    msgs = agency.check("--only", "missing-time", date=friday)
    # CR worked the holiday but not Wednesday 25, the prior workday
    assert to(msgs) == ["alice@agency.test", "carl@agency.test"]
    assert all("Wed Nov 25, 2026" in m["Subject"] for m in msgs)


def test_missing_time_on_monday_looks_at_friday(agency: Agency) -> None:
    monday = dt.date(2026, 11, 30)
    full_day(agency, "AE", dt.date(2026, 11, 27))
    full_day(agency, "CR", dt.date(2026, 11, 29))  # Sunday does not count
    msgs = agency.check("--only", "missing-time", date=monday)
    assert to(msgs) == ["alice@agency.test", "carl@agency.test"]
    assert "Fri Nov 27, 2026" in msgs[0]["Subject"]


def test_missing_time_skips_time_off_and_custom_workdays(agency: Agency) -> None:
    agency.add("time_off", dict(staff_id="CR", date=D - DAY))  # Monday off
    full_day(agency, "CR", D - 4 * DAY)  # Friday 20 worked in full
    full_day(agency, "AE", D - DAY)
    with agency.engine.begin() as conn:  # PR works Tue-Sat and plans 6 hours
        conn.execute(sa.text("UPDATE staff SET planned_hours=6, workdays='tue-sat' WHERE id='PR'"))
    msgs = agency.check("--only", "missing-time")
    # CR's prior workday is Friday (complete); PR's is Saturday 21 (nothing entered)
    assert to(msgs) == ["pia@agency.test"]
    assert "Sat Nov 21, 2026" in msgs[0]["Subject"]


def test_a_long_leave_is_stepped_over_both_ways(agency: Agency) -> None:
    """Time off of two months: the prior workday is before it, the next one after it."""
    leave = [D - dt.timedelta(days=n) for n in range(1, 61)]  # the 60 days before D
    agency.add("time_off", *[dict(staff_id="CR", date=day) for day in leave])
    last = D - dt.timedelta(days=61)  # the day before the leave: Thursday, Sep 24
    assert last.weekday() == 3
    full_day(agency, "CR", last)
    full_day(agency, "AE", D - DAY)
    assert agency.check("--only", "missing-time") == []  # CR's prior workday was complete
    ahead = [D + dt.timedelta(days=n) for n in range(1, 41)]  # off the next 40 days
    agency.add("time_off", *[dict(staff_id="CR", date=day) for day in ahead])
    agency.add(
        "tasks",
        dict(id="T9", job_id="J100", name="Late", assignee_id="CR", due_date=D + 30 * DAY),
    )
    msgs = agency.check("--only", "task-due-tomorrow")
    assert to(msgs) == ["carl@agency.test"]  # due before CR's next workday: told now


def test_weekend_run_and_second_run_send_nothing_new(agency: Agency) -> None:
    saturday = dt.date(2026, 11, 28)
    full_day(agency, "AE", dt.date(2026, 11, 27))
    first = agency.check("--only", "missing-time", date=saturday)
    assert to(first) == ["alice@agency.test", "carl@agency.test"]
    assert agency.check("--only", "missing-time", date=saturday) == []
    assert agency.check("--only", "missing-time", date=dt.date(2026, 11, 29)) == []


# ---------------------------------------------------------------- job, billing, payment


def test_job_opened_goes_to_team_respecting_events_and_opt_out(agency: Agency) -> None:
    agency.add("jobs", dict(id="J200", client_id="C1", title="Spring launch", opened_at=at(D, 8)))
    agency.add("client_team", dict(client_id="C1", staff_id="NO", role="creative"))
    r = agency.cli("staff", "mute", "PR", "job-opened")
    assert r.exit_code == 0
    msgs = agency.check("--only", "job-opened")
    assert to(msgs) == ["alice@agency.test", "carl@agency.test"]  # PR muted, NO inactive
    m = msgs[0]
    assert m["Subject"] == "[C&P] Job J200 opened: Spring launch (Acme Foods)"
    assert "Acme Foods" in body(m) and "J200" in body(m)
    out = json.loads(agency.cli("log", "--json", "--event", "job-opened").stdout)
    assert len(out) == 2
    # threading: every message about J200 refers to the same thread id
    assert m["References"] == m["In-Reply-To"] == msgs[1]["References"]


def test_skipped_counts_notifications_that_reach_nobody(agency: Agency) -> None:
    """SPEC: found, skipped and suppressed count notifications; the reasons count people."""
    agency.add("clients", dict(id="C9", name="Quiet Co", billing_email=None))
    agency.add("client_team", dict(client_id="C9", staff_id="NO", role="creative"))
    agency.add(
        "jobs",
        dict(id="J200", client_id="C1", title="Spring launch", opened_at=at(D, 8)),
        dict(id="J300", client_id="C9", title="Nobody told", opened_at=at(D, 9)),
    )
    agency.add("client_team", dict(client_id="C1", staff_id="NO", role="creative"))
    assert agency.cli("staff", "mute", "PR", "job-opened").exit_code == 0
    r = agency.cli("check", "--date", D.isoformat(), "--only", "job-opened", "--json")
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)["summary"]
    # J200 reached AE and CR (PR muted, NO inactive): not skipped; J300 only NO: skipped.
    assert (row["found"], row["sent"], row["skipped"]) == (2, 2, 1), row
    assert row["skip_reasons"] == {"opted out": 1, "inactive": 2}, row


def test_job_outside_window_is_ignored_and_window_edges(agency: Agency) -> None:
    agency.add(
        "jobs",
        dict(id="J201", client_id="C1", title="Too old", opened_at=at(D - 8 * DAY, 23, 59)),
        dict(id="J202", client_id="C1", title="Edge start", opened_at=at(D - 7 * DAY, 0, 0)),
        dict(id="J203", client_id="C1", title="Late today", opened_at=at(D, 23, 59)),
        dict(id="J204", client_id="C1", title="Tomorrow", opened_at=at(D + DAY, 0, 0)),
    )
    subjects = {m["Subject"] for m in agency.check("--only", "job-opened")}
    assert any("J202" in s for s in subjects) and any("J203" in s for s in subjects)
    assert not any("J201" in s or "J204" in s for s in subjects)


def test_billing_created_and_payment_received(agency: Agency) -> None:
    agency.add(
        "billings",
        dict(
            id="B1",
            job_id="J100",
            client_id="C1",
            number="10234",
            amount=Decimal("12500.00"),
            created_at=at(D - DAY, 15),
        ),
    )
    agency.add(
        "payments",
        dict(
            id="P1", client_id="C1", billing_id="B1", amount=Decimal("4000"), received_at=at(D, 10)
        ),
    )
    msgs = agency.check("--only", "billing-created,payment-received")
    bills = by_event(msgs, "billing-created")
    pays = by_event(msgs, "payment-received")
    assert to(bills) == ["alice@agency.test", "pia@agency.test"]  # CR only wants job-opened
    assert "10234" in bills[0]["Subject"] and "12,500.00" in bills[0]["Subject"]
    assert to(pays) == ["alice@agency.test", "pia@agency.test"]
    assert "4,000.00" in pays[0]["Subject"] and "Acme Foods" in pays[0]["Subject"]


def test_status_changed_uses_the_new_codes_notify(agency: Agency) -> None:
    agency.add(
        "job_status_codes",
        dict(code="PRF", kind="production", description="Proof out", notify="Carl Reed,PR"),
        dict(code="WIP", kind="production", description="In progress", notify=None),
    )
    agency.add(
        "job_status_history",
        dict(
            id="H1",
            job_id="J100",
            field="production_status",
            old_value="WIP",
            new_value="PRF",
            changed_at=at(D, 9),
            changed_by="AE",
        ),
        dict(
            id="H2",
            job_id="J100",
            field="production_status",
            old_value="PRF",
            new_value="WIP",
            changed_at=at(D, 11),
            changed_by="AE",
        ),
    )
    msgs = agency.check("--only", "status-changed")
    to_proof = [m for m in msgs if "Proof out" in m["Subject"]]
    assert to(to_proof) == ["carl@agency.test", "pia@agency.test"]
    back = [m for m in msgs if "In progress" in m["Subject"]]
    assert to(back) == ["alice@agency.test", "pia@agency.test"]  # no notify: the team
    assert "In progress → Proof out" in body(to_proof[0])


# ---------------------------------------------------------------- tasks


def _tasks(a: Agency) -> None:
    a.add(
        "tasks",
        dict(id="T1", job_id="J100", name="Layout", assignee_id="CR", due_date=D),
        dict(id="T2", job_id="J100", name="Headline", assignee_id="CR", due_date=D),
        dict(id="T3", job_id="J100", name="Proofread", assignee_id="CR", due_date=D + DAY),
        dict(id="T4", job_id="J100", name="Old thing", assignee_id="CR", due_date=D - 3 * DAY),
        dict(
            id="T5",
            job_id="J100",
            name="Done thing",
            assignee_id="CR",
            due_date=D - DAY,
            completed_at=at(D - 2 * DAY),
        ),
        dict(
            id="T6", job_id="J100", name="Weekend", assignee_id="AE", due_date=dt.date(2026, 11, 29)
        ),
    )


def test_task_reminders_are_one_list_per_person_per_event(agency: Agency) -> None:
    _tasks(agency)
    msgs = agency.check("--only", "task-due-today,task-due-tomorrow,task-overdue")
    today = by_event(msgs, "task-due-today")
    assert to(today) == ["carl@agency.test"]
    assert today[0]["Subject"] == "[C&P] 2 tasks due today"
    assert "Layout" in body(today[0]) and "Headline" in body(today[0])
    tomorrow = by_event(msgs, "task-due-tomorrow")
    assert to(tomorrow) == ["carl@agency.test"] and "Proofread" in tomorrow[0]["Subject"]
    late = by_event(msgs, "task-overdue")
    assert to(late) == ["carl@agency.test"] and "Old thing" in late[0]["Subject"]
    assert "3 days late" in late[0]["Subject"]
    assert not any("Done thing" in body(m) for m in msgs)


def test_due_tomorrow_on_friday_covers_the_weekend_and_monday(agency: Agency) -> None:
    _tasks(agency)
    friday = dt.date(2026, 11, 27)
    agency.add(
        "tasks",
        dict(
            id="T7",
            job_id="J100",
            name="Monday task",
            assignee_id="AE",
            due_date=dt.date(2026, 11, 30),
        ),
    )
    msgs = by_event(agency.check("--only", "task-due-tomorrow", date=friday), "task-due-tomorrow")
    assert to(msgs) == ["alice@agency.test"]
    assert msgs[0]["Subject"] == "[C&P] 2 tasks due next workday"


def test_overdue_repeats_daily_but_due_today_once(agency: Agency) -> None:
    _tasks(agency)
    assert len(agency.check("--only", "task-overdue")) == 1
    assert agency.check("--only", "task-overdue") == []
    assert len(agency.check("--only", "task-overdue", date=D + DAY)) == 1


def test_task_over_budget_fires_once(agency: Agency) -> None:
    agency.add(
        "tasks",
        dict(
            id="T1", job_id="J100", name="Layout", assignee_id="CR", budget_amount=Decimal("1000")
        ),
    )
    agency.add(
        "job_costs",
        dict(
            id="C1",
            job_id="J100",
            task_id="T1",
            kind="cost",
            amount=Decimal("700"),
            entered_at=at(D - 40 * DAY),
        ),
    )
    agency.add(
        "time_entries",
        dict(
            id="E1",
            staff_id="CR",
            task_id="T1",
            work_date=D - 50 * DAY,
            hours=Decimal(2),
            amount=Decimal("301"),
        ),
    )
    msgs = agency.check("--only", "task-over-budget")
    assert to(msgs) == ["alice@agency.test"]  # team:ae
    assert "1,001.00 of 1,000.00" in msgs[0]["Subject"]
    agency.add(
        "job_costs",
        dict(
            id="C2",
            job_id="J100",
            task_id="T1",
            kind="cost",
            amount=Decimal("500"),
            entered_at=at(D),
        ),
    )
    assert agency.check("--only", "task-over-budget", date=D + DAY) == []


def test_hours_exceeded_to_ae_and_assignee(agency: Agency) -> None:
    agency.add(
        "tasks",
        dict(id="T1", job_id="J100", name="Layout", assignee_id="CR", estimated_hours=Decimal(4)),
    )
    agency.add(
        "time_entries",
        dict(id="E1", staff_id="CR", task_id="T1", work_date=D - 30 * DAY, hours=Decimal("4.5")),
    )
    msgs = agency.check("--only", "hours-exceeded")
    assert to(msgs) == ["alice@agency.test", "carl@agency.test"]
    assert "4.5 of 4 h" in msgs[0]["Subject"]


def test_totals_exactly_at_the_limit_are_not_over_it_and_do_reach_it(agency: Agency) -> None:
    """Sums that land exactly on a budget, an estimate or a threshold, as a person adds
    them (SQLite adds binary floats: 1.1 + 2.2 is a little more than 3.3 there)."""
    assert agency.cli("config", "set", "events.budget-alert.thresholds", "90,100").exit_code == 0
    agency.add(
        "tasks",
        dict(
            id="T1", job_id="J100", name="Layout", assignee_id="CR", estimated_hours=Decimal("3.3")
        ),
        dict(
            id="T2",
            job_id="J100",
            name="Proofs",
            assignee_id="CR",
            budget_amount=Decimal("1267.37"),
        ),
        dict(
            id="T3", job_id="J100", name="Retouch", assignee_id="CR", budget_amount=Decimal("1000")
        ),
    )
    entries = [
        ("T1", Decimal("1.1"), None),
        ("T1", Decimal("2.2"), None),
        ("T2", Decimal(1), Decimal("1200.70")),
        ("T3", Decimal(1), Decimal("250.20")),
        ("T3", Decimal(1), Decimal("300.15")),
        ("T3", Decimal(1), Decimal("349.65")),
    ]
    agency.add(
        "time_entries",
        *[
            dict(id=f"E{i}", staff_id="CR", task_id=t, work_date=D - 30 * DAY, hours=h, amount=a)
            for i, (t, h, a) in enumerate(entries)
        ],
    )
    agency.add(
        "job_costs",
        dict(
            id="C1",
            job_id="J100",
            task_id="T2",
            kind="cost",
            amount=Decimal("66.67"),
            entered_at=at(D - 40 * DAY),
        ),
    )
    msgs = agency.check("--only", "hours-exceeded,task-over-budget,budget-alert")
    subjects = sorted(str(m["Subject"]) for m in msgs)
    assert not any("Hours exceeded" in s or "Over budget" in s for s in subjects), subjects
    # 900.00 of 1,000.00 is the 90 % threshold, reached: the AE is told
    assert any("90%" in s and "Retouch" in s for s in subjects), subjects


def test_budget_alert_to_ae_and_who_entered_it(agency: Agency) -> None:
    agency.add(
        "budget_alerts",
        dict(
            id="A1",
            job_id="J100",
            source="time entry",
            message="Time puts Layout $50 over",
            entered_by="CR",
            entered_at=at(D, 12),
        ),
    )
    msgs = agency.check("--only", "budget-alert")
    assert to(msgs) == ["alice@agency.test", "carl@agency.test"]
    assert "Time puts Layout $50 over" in msgs[0]["Subject"]


def test_an_alert_whose_id_looks_like_a_threshold_is_sent_beside_it(agency: Agency) -> None:
    """Ledger keys built from IDs holding ':' must not collide (one would block the other)."""
    assert agency.cli("config", "set", "events.budget-alert.thresholds", "[50]").exit_code == 0
    agency.add(
        "tasks",
        dict(id="T3", job_id="J100", name="Layout", assignee_id="CR", budget_amount=Decimal("100")),
    )
    agency.add(
        "job_costs",
        dict(
            id="C1",
            job_id="J100",
            task_id="T3",
            kind="cost",
            amount=Decimal("60"),
            entered_at=at(D, 9),
        ),
    )
    agency.add(
        "budget_alerts",
        dict(
            id="T3:50",
            job_id="J100",
            source="time entry",
            message="Typed by hand",
            entered_by="CR",
            entered_at=at(D, 12),
        ),
    )
    msgs = agency.check("--only", "budget-alert")
    subjects = sorted({str(m["Subject"]) for m in msgs})
    assert len(subjects) == 2, subjects
    assert "Typed by hand" in subjects[1] and "50% of the budget reached" in subjects[0]
    assert agency.check("--only", "budget-alert", date=D + DAY) == []


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["budget-alert", "calendar-reminder", "missing-time"]),
            st.text(alphabet="T3:%5A0", max_size=6),  # every trigger keys on one ID
            st.one_of(st.none(), st.sampled_from(["50", "2026-11-27", "2026-11-27T09:00"])),
        ),
        max_size=30,
    )
)
def test_different_notifications_never_share_a_ledger_key(
    parts: list[tuple[str, str, str | None]],
) -> None:
    keys: dict[str, set[tuple[str, str, str | None]]] = {}
    for event, id_, when in parts:
        keys.setdefault(key_of(event, id_, when=when), set()).add((event, id_, when))
    assert all(len(v) == 1 for v in keys.values()), keys
    assert key_of("diary-entry", "DE1") == "diary-entry:DE1"  # plain IDs keep their old keys
    assert key_of("missing-time", "JD", when="2026-11-27") == "missing-time:JD:2026-11-27"


# ---------------------------------------------------------------- entries


def test_diary_and_homebase_go_to_their_notify_lists(agency: Agency) -> None:
    agency.add("vendors", dict(id="V1", name="Metro Printing"))
    agency.add(
        "diary_entries",
        dict(
            id="D1",
            kind="client",
            party_id="C1",
            subject="Call about catalog",
            body="They want it Friday.",
            entered_by="AE",
            entered_at=at(D, 9),
            notify="AE,Carl Reed,nobody-known",
        ),
        dict(
            id="D2",
            kind="vendor",
            party_id="V1",
            subject="Press check",
            body="Thursday 8am",
            entered_by="PR",
            entered_at=at(D, 10),
            notify="PR",
        ),
    )
    agency.add(
        "homebase_entries",
        dict(
            id="HB1",
            subject="Office closed Friday",
            body="Enjoy.",
            entered_by="AE",
            entered_at=at(D, 8),
            notify="CR,NO",
        ),
    )
    msgs = agency.check("--only", "diary-entry,homebase-entry", "--json")
    client = [m for m in msgs if "Call about catalog" in m["Subject"]]
    # the author (AE) is not left out when the list names them
    assert to(client) == ["alice@agency.test", "carl@agency.test"]
    assert "Acme Foods" in client[0]["Subject"] and "They want it Friday." in body(client[0])
    vendor = [m for m in msgs if "Press check" in m["Subject"]]
    assert to(vendor) == ["pia@agency.test"] and "Metro Printing" in vendor[0]["Subject"]
    hb = by_event(msgs, "homebase-entry")
    assert to(hb) == ["carl@agency.test"]  # NO is inactive


def test_a_team_rule_on_an_entry_of_no_client_is_a_skip_with_its_reason(
    agency: Agency,
) -> None:
    """A Homebase entry belongs to no client, so `team:ae` names nobody: the check says why
    (it said nothing, and the entry was recorded as told)."""
    agency.add(
        "homebase_entries",
        dict(id="HB4", subject="New coffee", body="-", entered_at=at(D, 8), notify="team:ae"),
        dict(id="HB5", subject="Parking", body="-", entered_at=at(D, 9), notify="team:ae,CR"),
    )
    r = agency.cli("check", "--date", D.isoformat(), "--only", "homebase-entry", "--json")
    (row,) = [s for s in json.loads(r.stdout)["summary"] if s["event"] == "homebase-entry"]
    assert (row["found"], row["sent"], row["skipped"]) == (2, 1, 1), row
    assert row["skip_reasons"] == {"a team rule on an entry of no client": 2}, row


def test_a_name_typed_in_decomposed_unicode_names_its_person(agency: Agency) -> None:
    """ "Chloé" typed on a Mac is "Chloe" and a combining accent: the same name, so the
    same person (it named nobody)."""
    import unicodedata

    agency.add("staff", dict(id="CY", name="Chloé Yılmaz", work_email="chloe@agency.test"))
    typed = unicodedata.normalize("NFD", "Chloé Yılmaz")
    assert typed != "Chloé Yılmaz"
    agency.add(
        "homebase_entries",
        dict(id="HB6", subject="Welcome", body="-", entered_at=at(D, 9), notify=typed),
    )
    msgs = agency.check("--only", "homebase-entry")
    assert to(msgs) == ["chloe@agency.test"]


def test_an_address_in_the_data_never_becomes_a_recipient(agency: Agency) -> None:
    """Rows written into the database by other means than `data import` (which refuses them)."""
    agency.add(
        "diary_entries",
        dict(
            id="D1",
            kind="client",
            party_id="C1",
            subject="Call",
            entered_by="AE",
            entered_at=at(D, 9),
            notify="AE,email:evil@attacker.test",
        ),
    )
    agency.add(
        "homebase_entries",
        dict(
            id="HB1",
            subject="Closed",
            entered_by="AE",
            entered_at=at(D, 8),
            notify="email:evil@attacker.test,CR",
        ),
    )
    agency.add(
        "calendar_entries",
        dict(
            id="CE1",
            title="Review",
            starts_at=at(LATER, 10),
            remind_at=at(D, 9),
            attendees="CR,email:evil@attacker.test",
        ),
    )
    # Stored addresses that are not one address: never mailed, never named in an invitation.
    agency.add(
        "staff",
        dict(id="X1", name="Two", work_email="x1@agency.test, evil@attacker.test"),
        dict(id="X2", name="Bent", work_email="x2@agency.test\r\nBcc: evil@attacker.test"),
    )
    with agency.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE calendar_entries SET attendees = :a WHERE id = 'CE1'"),
            {"a": "CR,X1,X2,email:evil@attacker.test,email:x@y.test;ROLE=CHAIR:mailto:e@at.test"},
        )
    msgs = agency.check("--only", "diary-entry,homebase-entry,calendar-reminder", date=D, code=0)
    assert len(msgs) == 3
    for m in msgs:
        assert "attacker" not in m.as_string()
        for part in m.iter_attachments():
            text = part.get_content()
            text = text if isinstance(text, str) else text.decode()
            assert "attacker" not in text and "at.test" not in text and "x1@" not in text
            assert "mailto:carl@agency.test" in text.replace("\r\n ", "")
    assert all("attacker" not in r for m in agency.server.messages for r in m.rcpt_tos)


def test_one_mailbox_written_two_ways_gets_one_message(agency: Agency) -> None:
    """Full-width letters, an ideographic full stop, punycode: the same mailbox, one copy."""
    agency.add(
        "staff",
        dict(id="U1", name="Ursula", work_email="user@bücher.example"),
        dict(id="U2", name="Ursula B", work_email="user@xn--bcher-kva.example"),
        dict(id="K1", name="Kay", work_email="kay@agency。test"),
        dict(id="K2", name="Kay W", work_email="kay@ａgency.test"),
    )
    agency.add(
        "calendar_entries",
        dict(
            id="CE2",
            title="Review",
            starts_at=at(LATER, 10),
            remind_at=at(D, 9),
            attendees="U1,U2,K1,K2",
        ),
    )
    msgs = agency.check("--only", "calendar-reminder", date=D, code=0)
    assert sorted(r for m in agency.server.messages for r in m.rcpt_tos) == [
        "kay@agency.test",
        "user@bücher.example",
    ]
    assert len(msgs) == 2
    [ics] = [p.get_content() for m in msgs[:1] for p in m.iter_attachments()]
    ics = (ics if isinstance(ics, str) else ics.decode()).replace("\r\n ", "")
    assert ics.count("ATTENDEE") == 2, ics
    assert "mailto:user@xn--bcher-kva.example" in ics and "mailto:kay@agency.test" in ics


def test_change_order_to_ae_and_production(agency: Agency) -> None:
    agency.add(
        "change_orders",
        dict(
            id="CO1",
            job_id="J100",
            description="Two more sizes",
            amount=Decimal("850"),
            entered_by="AE",
            entered_at=at(D, 12),
        ),
    )
    msgs = agency.check("--only", "change-order")
    assert to(msgs) == ["alice@agency.test", "pia@agency.test"]
    assert "Two more sizes" in msgs[0]["Subject"] and "850.00" in body(msgs[0])


def test_calendar_reminder_carries_an_ics(agency: Agency) -> None:
    import icalendar

    agency.add(
        "calendar_entries",
        dict(
            id="CAL1",
            title="Client review",
            starts_at=at(LATER, 14),
            ends_at=at(LATER, 15),
            remind_at=at(D, 8),
            location="Room B",
            attendees="AE,Carl Reed",
        ),
        dict(id="CAL2", title="Later", starts_at=at(D + 3 * DAY, 9), remind_at=at(D + 2 * DAY)),
    )
    msgs = agency.check("--only", "calendar-reminder")
    assert to(msgs) == ["alice@agency.test", "carl@agency.test"]
    atts = list(msgs[0].iter_attachments())
    assert [a.get_content_type() for a in atts] == ["text/calendar"]
    cal = icalendar.Calendar.from_ical(atts[0].get_content())
    events = list(cal.walk("VEVENT"))
    assert len(events) == 1 and str(events[0]["SUMMARY"]) == "Client review"
    assert str(events[0]["LOCATION"]) == "Room B"
    # an invitation: METHOD, ORGANIZER, an ATTENDEE per person, times in UTC
    assert str(cal["METHOD"]) == "REQUEST"
    attendees = sorted(str(a) for a in cast(Any, events[0]["ATTENDEE"]))
    assert attendees == ["mailto:alice@agency.test", "mailto:carl@agency.test"]
    assert str(events[0]["ORGANIZER"]).startswith("mailto:")
    assert events[0].decoded("DTSTART").utcoffset() == dt.timedelta(0)
    assert agency.check("--only", "calendar-reminder") == []


# ---------------------------------------------------------------- the run itself


def test_dry_run_changes_nothing(agency: Agency) -> None:
    _tasks(agency)
    r = agency.cli("check", "--date", D.isoformat(), "--dry-run", "--json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["dry_run"] is True and len(out["messages"]) >= 3
    assert all(m["text"] and m["html"] for m in out["messages"])
    assert agency.server.messages == []
    assert json.loads(agency.cli("log", "--json").stdout) == []
    assert len(agency.check()) == len(out["messages"])


def test_switched_off_records_suppressed_and_never_sends_later(agency: Agency) -> None:
    _tasks(agency)
    assert agency.cli("config", "disable").exit_code == 0
    r = agency.cli("check", "--date", D.isoformat(), "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    totals = doc["totals"]
    assert totals["suppressed"] >= 3 and totals["sent"] == 0
    # suppressed counts notifications, like found: never more, however many people each reaches
    assert all(e["suppressed"] <= e["found"] for e in doc["summary"]), doc["summary"]
    assert totals["suppressed"] == totals["found"], totals  # nobody here is skipped
    assert agency.server.messages == []
    log = json.loads(agency.cli("log", "--json", "--status", "suppressed").stdout)
    assert 0 < len(log) <= totals["suppressed"]  # task lists: one message, several items
    assert agency.cli("config", "enable").exit_code == 0
    assert agency.check() == []
    assert json.loads(agency.cli("outbox", "--json").stdout) == []


def test_digest_puts_one_persons_run_in_one_message(agency: Agency) -> None:
    _tasks(agency)
    agency.add("time_entries", dict(id="E1", staff_id="CR", work_date=D - DAY, hours=Decimal(3)))
    assert agency.cli("config", "set", "mail.digest", "true").exit_code == 0
    msgs = agency.check()
    carl = [m for m in msgs if to([m]) == ["carl@agency.test"]]
    assert len(carl) == 1
    text = body(carl[0])
    for words in ("Missing time", "2 tasks due today", "Proofread", "Old thing"):
        assert words in text
    assert carl[0]["X-Cpmail-Event"] == "digest"
    # `log --event` finds the digest by what it carried, and says what that was
    for event in ("missing-time", "task-due-today"):
        rows = json.loads(agency.cli("log", "--json", "--event", event).stdout)
        theirs = [r for r in rows if r["to"] == ["carl@agency.test"]]
        assert len(theirs) == 1 and theirs[0]["event"] == "digest", (event, rows)
        assert event in theirs[0]["events"], theirs[0]
    rows = json.loads(agency.cli("log", "--json", "--event", "job-opened").stdout)
    assert all("job-opened" in r["events"] for r in rows), rows  # nothing else matches


def test_event_settings_disable_and_reroute(agency: Agency) -> None:
    _tasks(agency)
    agency.cli("config", "set", "events.task-overdue.enabled", "false")
    agency.cli("config", "set", "events.task-due-today.notify", "staff:AE,email:boss@agency.test")
    msgs = agency.check("--only", "task-due-today,task-overdue")
    assert by_event(msgs, "task-overdue") == []
    assert to(msgs) == ["alice@agency.test", "boss@agency.test"]
    r = agency.cli("config", "set", "events.job-opened.notify", "everyone")
    assert r.exit_code == 2 and "events.job-opened.notify" in r.stderr and "'everyone'" in r.stderr
    r = agency.cli("config", "set", "events.job-opened.notify", '["team:ae", "staff:PR"]')
    assert r.exit_code == 0, r.output
    assert (
        agency.cli("config", "get", "events.job-opened.notify").stdout.strip() == "team:ae,staff:PR"
    )
    r = agency.cli("check", "--date", D.isoformat(), env={"CPMAIL_EVENTS_JOB_OPENED_NOTIFY": "x"})
    assert r.exit_code == 2 and "CPMAIL_EVENTS_JOB_OPENED_NOTIFY" in r.stderr


def test_unknown_event_and_bad_date_are_usage_errors(agency: Agency) -> None:
    r = agency.cli("check", "--only", "job-closed")
    assert r.exit_code == 2 and "job-closed" in r.stderr
    r = agency.cli("check", "--date", "2026-13-01")
    assert r.exit_code == 2 and "--date" in r.stderr


def test_every_message_parses_without_defects(agency: Agency) -> None:
    _tasks(agency)
    agency.add(
        "jobs",
        dict(
            id="J200",
            client_id="C1",
            title="Ünïcode “quotes” — and a very long "
            "title that needs folding in the subject line of the message",
            opened_at=at(D),
        ),
    )
    msgs = agency.check()
    assert msgs
    for m in msgs:
        assert not m.defects
        for part in m.walk():
            assert not part.defects


def test_state_triggers_see_backdated_entries_and_look_only_at_changes(agency: Agency) -> None:
    agency.add(
        "tasks",
        dict(
            id="T1",
            job_id="J100",
            name="Layout",
            assignee_id="CR",
            budget_amount=Decimal("1000"),
            estimated_hours=Decimal(10),
        ),
    )
    agency.add(
        "job_costs",
        dict(
            id="C1",
            job_id="J100",
            task_id="T1",
            kind="cost",
            amount=Decimal("500"),
            entered_at=at(D - 90 * DAY),
        ),
    )
    assert agency.check("--only", "task-over-budget,hours-exceeded", "--dry-run") == []

    def unchecked() -> int:
        with agency.engine.connect() as conn:
            return sum(
                conn.execute(
                    sa.text(f"SELECT count(*) FROM {t} WHERE cpmail_checked IS NULL")
                ).scalar_one()
                for t in ("tasks", "time_entries", "job_costs")
            )

    assert unchecked() == 2  # a dry run marks nothing
    agency.check()  # a full run looks at them and marks them
    assert unchecked() == 0
    # time entered today for two months ago still counts: the task is over budget now
    agency.add(
        "time_entries",
        dict(
            id="E1",
            staff_id="CR",
            task_id="T1",
            work_date=D - 60 * DAY,
            hours=Decimal(11),
            amount=Decimal("600"),
        ),
    )
    msgs = agency.check("--only", "task-over-budget,hours-exceeded", date=D + DAY)
    assert sorted(m["X-Cpmail-Event"] for m in msgs) == [
        "hours-exceeded",
        "hours-exceeded",
        "task-over-budget",
    ]
    assert unchecked() == 0


def test_lowering_a_budget_by_import_is_seen(agency: Agency, tmp_path: Path) -> None:
    agency.add(
        "tasks",
        dict(
            id="T1", job_id="J100", name="Layout", assignee_id="CR", budget_amount=Decimal("1000")
        ),
    )
    agency.add(
        "job_costs",
        dict(
            id="C1",
            job_id="J100",
            task_id="T1",
            kind="cost",
            amount=Decimal("800"),
            entered_at=at(D - 30 * DAY),
        ),
    )
    assert by_event(agency.check(), "task-over-budget") == []
    csv = tmp_path / "tasks.csv"
    csv.write_text("id,job_id,name,budget_amount\nT1,J100,Layout,700\n")
    assert agency.cli("data", "import", str(csv)).exit_code == 0
    msgs = agency.check("--only", "task-over-budget", date=D + DAY)
    assert len(msgs) == 1 and "800.00 of 700.00" in msgs[0]["Subject"]


def test_status_code_notify_wins_over_the_event_setting(agency: Agency) -> None:
    agency.add(
        "job_status_codes",
        dict(code="PRF", kind="production", description="Proof out", notify="PR"),
    )
    agency.add(
        "job_status_history",
        dict(
            id="H1",
            job_id="J100",
            field="production_status",
            old_value="WIP",
            new_value="PRF",
            changed_at=at(D, 9),
        ),
        dict(
            id="H2",
            job_id="J100",
            field="billing_status",
            old_value=None,
            new_value="BILL",
            changed_at=at(D, 10),
        ),
    )
    assert agency.cli("config", "set", "events.status-changed.notify", "staff:CR").exit_code == 0
    msgs = agency.check("--only", "status-changed")
    proof = [m for m in msgs if "Proof out" in m["Subject"]]
    billed = [m for m in msgs if "billing status" in m["Subject"]]
    assert to(proof) == ["pia@agency.test"]
    assert to(billed) == ["carl@agency.test"]


def test_a_digest_too_large_for_the_transport_goes_in_parts_and_drops_nothing(
    agency: Agency, home: Path
) -> None:
    """One person's many notifications must not stop the run: the digest is split to fit."""
    from cpmail.check import run_check
    from cpmail.secrets import SecretStore
    from cpmail.store.schema import messages
    from cpmail.transports.base import get_transport

    assert agency.cli("staff", "edit", "AE", "--digest", "on").exit_code == 0
    agency.add(
        "homebase_entries",
        *[
            dict(
                id=f"HB{i}",
                subject=f"Note {i}",
                body=f"{i} " + "word " * 400,
                entered_by="CR",
                entered_at=at(D, 9),
                notify="AE",
            )
            for i in range(40)
        ],
    )
    settings = Settings.load(home)
    secrets = SecretStore(home)
    transport = get_transport(settings, secrets)
    transport.max_message_bytes = 30_000  # a small provider limit, for the test
    result = run_check(
        agency.engine, settings, secrets, home, date=D, only=["homebase-entry"], transport=transport
    )
    assert result.exit_code == 0
    with agency.engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages.c.ledger_key, messages.c.size, messages.c.status).where(
                messages.c.to_addrs == "alice@agency.test"
            )
        ).all()
    assert len(rows) > 1 and all(r.status == "sent" for r in rows)
    assert all(r.size <= 30_000 for r in rows), [r.size for r in rows]
    keys = [k for r in rows for k in r.ledger_key.split(",")]
    assert sorted(keys) == sorted(f"homebase-entry:HB{i}" for i in range(40))  # each once
    assert len(agency.server.messages) == len(rows)  # what was recorded is what went


def _one_too_large(agency: Agency, home: Path) -> tuple[Settings, Any, Any]:
    """A Homebase entry for Alice too large for a transport that takes 30 kB, one for Carl
    that fits; the settings, secrets and that transport."""
    from cpmail.secrets import SecretStore
    from cpmail.transports.base import get_transport

    agency.add(
        "homebase_entries",
        dict(id="BIG", subject="Big", body="word " * 20_000, entered_at=at(D, 9), notify="AE"),
        dict(id="SMALL", subject="Small", body="A line.", entered_at=at(D, 9), notify="CR"),
    )
    settings = Settings.load(home)
    secrets = SecretStore(home)
    transport = get_transport(settings, secrets)
    transport.max_message_bytes = 30_000
    return settings, secrets, transport


def test_a_message_too_large_even_alone_fails_by_itself_and_the_rest_go(
    agency: Agency, home: Path
) -> None:
    from cpmail.check import run_check
    from cpmail.store.schema import messages

    settings, secrets, transport = _one_too_large(agency, home)
    result = run_check(
        agency.engine, settings, secrets, home, date=D, only=["homebase-entry"], transport=transport
    )
    assert result.exit_code == 1
    row = result.summary["homebase-entry"]
    assert (row.found, row.sent, row.failed) == (2, 1, 1), row
    assert result.summary["failure-summary"].sent == 1  # and the manager is told
    with agency.engine.connect() as conn:
        rows = {
            r.to_addrs: r
            for r in conn.execute(
                sa.select(messages.c.to_addrs, messages.c.status, messages.c.last_error)
            )
        }
    assert rows["carl@agency.test"].status == "sent"
    big = rows["alice@agency.test"]
    assert big.status == "failed" and "the transport takes at most 30.0 KB" in big.last_error
    assert sorted(m.rcpt_tos for m in agency.server.messages) == [
        ("carl@agency.test",),
        ("max@agency.test",),
    ]
    # Its text is not kept: nobody is told to send it again with `outbox retry`.
    [told] = [m for m in agency.server.messages if m.rcpt_tos == ("max@agency.test",)]
    told_text = told.data.decode()
    assert "cannot be sent again" in told_text and "outbox retry" not in told_text, told_text
    from cpmail.cli.check import _undelivered
    from cpmail.cli.common import Ctx

    said = _undelivered(Ctx(home), result)
    assert "log --status failed" in said and "outbox retry" not in said, said
    # recorded: a later run does not find it again (nor fail on it again)
    again = run_check(
        agency.engine, settings, secrets, home, date=D, only=["homebase-entry"], transport=transport
    )
    assert again.totals()["found"] == 0


def test_a_name_several_staff_have_reaches_nobody(agency: Agency) -> None:
    """A name in a notify or attendees cell means one person; one shared by two rows went to
    whichever was read last (here someone outside the agency)."""
    agency.add(
        "staff",
        dict(id="CR2", name="carl reed ", work_email="carl@outside.example", planned_hours=0),
    )
    agency.add(
        "diary_entries",
        dict(
            id="D9",
            kind="client",
            party_id="C1",
            subject="Pricing",
            body="Confidential.",
            entered_by="AE",
            entered_at=at(D, 9),
            notify="Carl Reed,PR",
        ),
    )
    agency.add(
        "calendar_entries",
        dict(
            id="CE9",
            title="Pricing",
            starts_at=at(LATER, 10),
            remind_at=at(D, 9),
            attendees="Carl Reed",
        ),
    )
    r = agency.cli(
        "check", "--date", D.isoformat(), "--only", "diary-entry,calendar-reminder", "--json"
    )
    assert r.exit_code == 0, r.output
    rcpts = sorted(x for m in agency.server.messages for x in m.rcpt_tos)
    assert rcpts == ["pia@agency.test"], rcpts
    doc = json.loads(r.stdout)
    reasons = {e["event"]: e["skip_reasons"] for e in doc["summary"]}
    assert reasons["diary-entry"] == {"a name several staff have": 1}, reasons
    assert reasons["calendar-reminder"] == {"a name several staff have": 1}, reasons


def test_an_invitation_names_exactly_the_people_it_is_sent_to(agency: Agency) -> None:
    """ATTENDEE per recipient after routing (a muted one left out, one added by the
    event's notify named), ORGANIZER the account it is sent from, --as included."""
    import icalendar

    assert agency.cli("staff", "mute", "CR", "calendar-reminder").exit_code == 0
    r = agency.cli("config", "set", "events.calendar-reminder.notify", '["listed", "staff:PR"]')
    assert r.exit_code == 0, r.output
    assert agency.cli("config", "set", "manager.email", "").exit_code == 0
    assert agency.cli("config", "set", "user.staff", "").exit_code == 0
    agency.add(
        "calendar_entries",
        dict(
            id="CE3",
            title="Rehearsal",
            starts_at=at(LATER, 10),
            remind_at=at(D, 9),
            attendees="AE,CR",
        ),
    )
    msgs = agency.check("--only", "calendar-reminder", "--as", "AE")
    assert to(msgs) == ["alice@agency.test", "pia@agency.test"]
    for m in msgs:
        [att] = list(m.iter_attachments())
        (ev,) = icalendar.Calendar.from_ical(att.get_content()).walk("VEVENT")
        attendees = sorted(str(a) for a in cast(Any, ev["ATTENDEE"]))
        assert attendees == ["mailto:alice@agency.test", "mailto:pia@agency.test"], attendees
        assert str(ev["ORGANIZER"]) == "mailto:alice@agency.test"


def test_two_staff_sharing_a_mailbox_each_get_their_own_list(agency: Agency) -> None:
    agency.add(
        "staff",
        dict(id="RP", name="Rita Patel", work_email="studio@agency.test", planned_hours=0),
        dict(id="TN", name="Tom Nguyen", work_email="Studio@agency.test", planned_hours=0),
    )
    agency.add(
        "tasks",
        dict(id="T81", job_id="J100", name="Retouch cover", assignee_id="RP", due_date=D),
        dict(id="T82", job_id="J100", name="HR review", assignee_id="TN", due_date=D),
    )
    msgs = agency.check("--only", "task-due-today")
    assert len(msgs) == 2 and [a.lower() for a in to(msgs)] == ["studio@agency.test"] * 2
    by_name = {m["To"].addresses[0].display_name: body(m) for m in msgs}
    assert set(by_name) == {"Rita Patel", "Tom Nguyen"}
    assert "Retouch cover" in by_name["Rita Patel"] and "HR review" not in by_name["Rita Patel"]
    assert "HR review" in by_name["Tom Nguyen"] and "Retouch cover" not in by_name["Tom Nguyen"]


def test_an_email_rule_naming_a_staff_members_mailbox_heeds_their_mute_and_leaving(
    agency: Agency,
) -> None:
    """`email:` naming a muted or inactive person's own mailbox mailed them anyway, while
    the summary counted them as skipped: such an address is that person, once."""
    _tasks(agency)
    rules = "staff:CR,email:Carl@Agency.test,email:boss@agency.test"
    agency.cli("config", "set", "events.task-due-today.notify", rules)
    assert agency.cli("staff", "mute", "CR", "task-due-today").exit_code == 0
    r = agency.cli("check", "--date", D.isoformat(), "--only", "task-due-today", "--json")
    assert r.exit_code == 0, r.output
    [row] = [s for s in json.loads(r.stdout)["summary"] if s["event"] == "task-due-today"]
    assert row["skip_reasons"] == {"opted out": row["found"]}, row  # once a notification
    reached = [a for m in agency.server.messages for a in m.rcpt_tos]
    assert reached == ["boss@agency.test"], reached
    assert agency.cli("staff", "unmute", "CR", "task-due-today").exit_code == 0
    assert agency.cli("staff", "edit", "CR", "--inactive").exit_code == 0
    agency.cli("config", "set", "events.task-due-today.notify", "email:carl@agency.test")
    r = agency.cli("check", "--date", (D + DAY).isoformat(), "--only", "task-due-today", "--json")
    assert r.exit_code == 0, r.output
    [row] = [s for s in json.loads(r.stdout)["summary"] if s["event"] == "task-due-today"]
    assert row["skip_reasons"] == {"inactive": row["found"]} and row["found"], row
    reached = [a for m in agency.server.messages for a in m.rcpt_tos]
    assert "carl@agency.test" not in reached, reached


def test_a_dry_run_says_which_messages_would_fail_as_too_large(
    agency: Agency, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dry run and the real run agree on what fails for its size, and on the exit code."""
    from cpmail.check import run_check
    from cpmail.cli.check import _json, _print_dry_run
    from cpmail.cli.common import Ctx
    from cpmail.store.schema import messages

    settings, secrets, transport = _one_too_large(agency, home)
    only = ["homebase-entry"]
    dry = run_check(
        agency.engine, settings, secrets, home, date=D, only=only, transport=transport, dry_run=True
    )
    fails = {p.to.address: p.fails for p in dry.planned}
    assert fails["carl@agency.test"] is None
    assert "the transport takes at most 30.0 KB" in (fails["alice@agency.test"] or "")
    c = Ctx(home)
    _print_dry_run(c, dry)
    said = capsys.readouterr().out
    assert "Would send 1 message(s)" in said, said
    assert "Would fail 1 message(s)" in said and "alice@agency.test" in said, said
    assert {m["to"]: m["fails"] for m in _json(c, dry, True)["messages"]} == fails

    real = run_check(agency.engine, settings, secrets, home, date=D, only=only, transport=transport)
    with agency.engine.connect() as conn:
        failed = {
            r.to_addrs
            for r in conn.execute(
                sa.select(messages.c.to_addrs).where(
                    messages.c.status == "failed", messages.c.event == "homebase-entry"
                )
            )
        }
    assert failed == {a for a, why in fails.items() if why}
    assert dry.exit_code == real.exit_code == 1
