"""The main job's harder cases: digests that keep every item, new jobs told by their status
code, calendar reminders on time and as invitations, budget thresholds, the scheduled
cash-flow report.

Through `cpmail check` and a real SMTP server (aiosmtpd) where a person's mail is the
point; straight through the finders where the run's moment must be set to the minute.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import shutil
import subprocess
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import icalendar
import pypdf
import pytest
import sqlalchemy as sa

from cpmail import check as check_module
from cpmail.ics import event_ics
from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.triggers import Notification, Run
from cpmail.triggers.cashflow import scheduled_cash_flow
from cpmail.triggers.entries import calendar_reminder
from cpmail.workdays import WorkCalendar
from tests.agency import LATER, D, at
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_triggers import Agency, body, by_event, make_agency, to

DAY = dt.timedelta(days=1)


@pytest.fixture
def agency(cli: Cli, home: Path, smtp_server: SMTPTestServer, backend: str) -> Agency:
    """The hand-made agency of tests/agency.py, on SQLite and on PostgreSQL."""
    return make_agency(cli, home, smtp_server, backend)


def digest_items(text: str) -> int:
    """How many notifications a digest's text shows: a section each, or a line per task."""
    text = text.replace("\r\n", "\n")
    sections = re.split(r"^== .* ==$", text, flags=re.M)[1:]
    count = 0
    for s in sections:
        tasks = len(re.findall(r"^  - ", s, flags=re.M))
        count += tasks or 1
    return count


def _plenty(a: Agency) -> None:
    """Several notifications of several events for the same people."""
    a.add(
        "jobs",
        *[
            dict(id=f"J2{i}", client_id="C1", title=f"Job number {i}", opened_at=at(D, 8 + i))
            for i in range(3)
        ],
    )
    a.add(
        "billings",
        *[
            dict(
                id=f"B{i}",
                job_id="J100",
                client_id="C1",
                number=f"1023{i}",
                amount=Decimal("100") * (i + 1),
                created_at=at(D - DAY, 10 + i),
            )
            for i in range(2)
        ],
    )
    a.add(
        "change_orders",
        *[
            dict(
                id=f"CO{i}",
                job_id="J100",
                description=f"Change {i}",
                amount=Decimal(50),
                entered_by="AE",
                entered_at=at(D, 12 + i),
            )
            for i in range(2)
        ],
    )
    a.add(
        "tasks",
        dict(id="T1", job_id="J100", name="Layout", assignee_id="CR", due_date=D),
        dict(id="T2", job_id="J100", name="Headline", assignee_id="CR", due_date=D),
        dict(id="T3", job_id="J100", name="Old thing", assignee_id="CR", due_date=D - 3 * DAY),
    )
    a.add("time_entries", dict(id="E1", staff_id="CR", work_date=D - DAY, hours=Decimal(3)))


def test_a_digest_holds_every_notification_routed_to_its_person(agency: Agency) -> None:
    _plenty(agency)
    assert agency.cli("config", "set", "mail.digest", "true").exit_code == 0
    r = agency.cli("check", "--date", D.isoformat(), "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    routed = {m["to"]: m["keys"] for m in json.loads(r.stdout)["messages"]}
    msgs = agency.check()
    assert sorted(to(msgs)) == sorted(routed)  # one message per person
    for m in msgs:
        keys = routed[to([m])[0]]
        text = body(m)
        if len(keys) > 1:
            assert m["X-Cpmail-Event"] == "digest"
            assert f"{len(keys)} updates" in m["Subject"]
        assert digest_items(text) == len(keys) or len(keys) == 1, (to([m]), keys, text)
    alice = next(m for m in msgs if to([m]) == ["alice@agency.test"])
    text = body(alice)
    # every job, billing and change order is there in full, not only the first of each
    for words in ("J20", "J21", "J22", "10230", "10231", "Change 0", "Change 1"):
        assert words in text, words
    html = alice.get_body(preferencelist=("html",))
    assert html is not None
    for words in ("J20", "J21", "J22", "10230", "10231", "Change 0", "Change 1"):
        assert words in str(html.get_content())
    carl = next(m for m in msgs if to([m]) == ["carl@agency.test"])
    for words in ("Layout", "Headline", "Old thing", "Missing time", "J21"):
        assert words in body(carl)


def test_one_event_several_times_in_a_digest_is_not_cut_to_the_first(agency: Agency) -> None:
    _plenty(agency)
    assert agency.cli("config", "set", "mail.digest", "true").exit_code == 0
    msgs = agency.check("--only", "job-opened")
    carl = next(m for m in msgs if to([m]) == ["carl@agency.test"])
    assert "3 updates" in carl["Subject"]
    assert digest_items(body(carl)) == 3
    for job in ("J20", "J21", "J22"):
        assert f"Job {job} opened" in body(carl)


def test_demo_digests_hold_every_notification(cli: Cli, home: Path) -> None:
    assert cli("init").exit_code == 0
    assert cli("config", "set", "mail.digest", "true").exit_code == 0
    r = cli("demo", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    engine = connect(Settings.load(home).db_url, where="test")
    with engine.connect() as conn:
        keys_of = {
            r.message_id: r.ledger_key.split(",")
            for r in conn.execute(sa.text("SELECT message_id, ledger_key FROM messages"))
        }
    files = sorted((home / "mail").glob("*.eml"))
    assert files and len(files) == len(keys_of)
    digests = 0
    for f in files:
        m = message_from_bytes(f.read_bytes(), policy=policy.default)
        assert isinstance(m, EmailMessage)
        keys = keys_of[m["Message-ID"]]
        if m["X-Cpmail-Event"] == "digest":
            digests += 1
            assert digest_items(body(m)) == len(keys), (m["To"], keys)
            assert m["Subject"].endswith(f"{len(keys)} updates for Tue Nov 24, 2026")
        else:
            assert len(keys) == 1 or m["X-Cpmail-Event"].startswith("task-")
    assert digests >= 3


# ---------------------------------------------------------------- job-opened


def test_job_opened_goes_to_the_opening_status_codes_notify(agency: Agency) -> None:
    agency.add(
        "job_status_codes",
        dict(code="NEW", kind="production", description="New job", notify="Pia Ross"),
        dict(code="WIP", kind="production", description="In progress", notify=None),
    )
    agency.add(
        "jobs",
        dict(
            id="J300",
            client_id="C1",
            title="Opened new",
            opened_at=at(D, 8),
            production_status="NEW",
        ),
        # moved on since it was opened: its first change says it opened as NEW
        dict(
            id="J301",
            client_id="C1",
            title="Opened new, now in progress",
            opened_at=at(D, 9),
            production_status="WIP",
        ),
        dict(
            id="J302",
            client_id="C1",
            title="Opened in progress",
            opened_at=at(D, 10),
            production_status="WIP",
        ),
    )
    agency.add(
        "job_status_history",
        dict(
            id="H1",
            job_id="J301",
            field="production_status",
            old_value="NEW",
            new_value="PRF",
            changed_at=at(D, 11),
        ),
        dict(
            id="H2",
            job_id="J301",
            field="production_status",
            old_value="PRF",
            new_value="WIP",
            changed_at=at(D, 12),
        ),
    )
    msgs = agency.check("--only", "job-opened")
    assert to([m for m in msgs if "J300" in m["Subject"]]) == ["pia@agency.test"]
    assert to([m for m in msgs if "J301" in m["Subject"]]) == ["pia@agency.test"]
    # no notify on the code: the team (CR asked for job-opened; PR is on the team)
    j302 = [m for m in msgs if "J302" in m["Subject"]]
    assert to(j302) == ["alice@agency.test", "carl@agency.test", "pia@agency.test"]
    new = next(m for m in msgs if "J300" in m["Subject"])
    assert "New job" in body(new)


def test_job_opened_status_code_notify_wins_over_the_event_setting(agency: Agency) -> None:
    agency.add(
        "job_status_codes",
        dict(code="NEW", kind="production", description="New job", notify="staff:AE"),
    )
    agency.add(
        "jobs",
        dict(id="J300", client_id="C1", title="A", opened_at=at(D, 8), production_status="NEW"),
        dict(id="J301", client_id="C1", title="B", opened_at=at(D, 9), production_status="X"),
    )
    assert agency.cli("config", "set", "events.job-opened.notify", "staff:PR").exit_code == 0
    msgs = agency.check("--only", "job-opened")
    assert to([m for m in msgs if "J300" in m["Subject"]]) == ["alice@agency.test"]
    assert to([m for m in msgs if "J301" in m["Subject"]]) == ["pia@agency.test"]


# ---------------------------------------------------------------- calendar reminders


def _run(home: Path, date: dt.date, now: dt.datetime | None = None) -> Run:
    s = Settings.load(home)
    return Run(date=date, settings=s, calendar=WorkCalendar.from_settings(s), tz=s.tz(), now=now)


def _reminders(a: Agency, home: Path, date: dt.date, now: dt.datetime | None) -> list[str]:
    with a.engine.connect() as conn:
        return [n.key for n in calendar_reminder(conn, _run(home, date, now))]


def test_reminder_before_at_and_after_remind_at_and_once_begun(agency: Agency, home: Path) -> None:
    agency.add(
        "calendar_entries",
        dict(
            id="CAL1",
            title="Client review",
            starts_at=at(D, 14),
            ends_at=at(D, 15),
            remind_at=at(D, 9, 30),
            attendees="AE",
        ),
    )
    key = "calendar-reminder:CAL1:2026-11-24T09:30"
    assert _reminders(agency, home, D, at(D, 9, 29)) == []  # before
    assert _reminders(agency, home, D, at(D, 9, 30)) == [key]  # at
    assert _reminders(agency, home, D, at(D, 13, 59)) == [key]  # after, not begun
    assert _reminders(agency, home, D, at(D, 14, 0)) == []  # begun
    assert _reminders(agency, home, D, at(D, 16, 0)) == []  # over
    # a run for another date stands at the end of that day: this event has begun by then
    assert _reminders(agency, home, D, None) == []
    assert _reminders(agency, home, D - DAY, None) == []  # not yet time on the day before


def test_reminder_for_a_past_date_run_sees_the_whole_day(agency: Agency, home: Path) -> None:
    agency.add(
        "calendar_entries",
        dict(
            id="CAL2",
            title="Breakfast",
            starts_at=at(LATER, 8),
            remind_at=at(D, 23, 45),
            attendees="AE",
        ),
        # after the end of the run's day (begun by now, which a run for D does not ask)
        dict(
            id="CAL3",
            title="Next morning",
            starts_at=at(D + DAY, 8),
            remind_at=at(D, 23, 50),
            attendees="AE",
        ),
    )
    assert _reminders(agency, home, D, None) == [
        "calendar-reminder:CAL2:2026-11-24T23:45",
        "calendar-reminder:CAL3:2026-11-24T23:50",
    ]
    # an event that was over before the run's day ended: never reminded
    assert "CAL3" not in str(_reminders(agency, home, D + 2 * DAY, None))
    # and `check --date D` sends it, as of that day: not dropped for having begun since
    msgs = agency.check("--only", "calendar-reminder", date=D)
    subjects = sorted(str(m["Subject"]) for m in msgs)
    assert len(subjects) == 2 and "Next morning, Wed Nov 25, 2026 8:00" in subjects[1], subjects


def test_a_reminder_just_before_midnight_is_not_lost_at_midnight(
    agency: Agency, home: Path
) -> None:
    """With no lookback, the window starts at midnight; a reminder due at 23:58 still goes."""
    assert agency.cli("config", "set", "check.lookback_days", "0").exit_code == 0
    agency.add(
        "calendar_entries",
        dict(id="LATE", title="Night shift", starts_at=at(D + DAY, 0, 30), remind_at=at(D, 23, 58)),
    )
    key = "calendar-reminder:LATE:2026-11-24T23:58"
    assert _reminders(agency, home, D + DAY, at(D + DAY, 0, 5)) == [key]
    assert _reminders(agency, home, D + DAY, at(D + DAY, 0, 30)) == []  # begun


def test_reminders_through_check_today_go_out_when_their_time_comes(
    agency: Agency, home: Path
) -> None:
    tz = Settings.load(home).tz()
    now = dt.datetime.now(tz).replace(tzinfo=None, microsecond=0)
    today = now.date()
    if now.hour >= 22:
        pytest.skip("needs two hours left in today (the run date is today)")
    agency.add(
        "calendar_entries",
        dict(
            id="DUE",
            title="Due now",
            starts_at=now + dt.timedelta(hours=1),
            remind_at=now - dt.timedelta(minutes=1),
            attendees="AE,CR",
        ),
        dict(
            id="LATER",
            title="Reminded later",
            starts_at=now + dt.timedelta(hours=2),
            remind_at=now + dt.timedelta(minutes=30),
            attendees="AE",
        ),
        dict(
            id="BEGUN",
            title="Already begun",
            starts_at=now - dt.timedelta(minutes=5),
            remind_at=now - dt.timedelta(minutes=20),
            attendees="AE",
        ),
    )
    msgs = agency.check("--only", "calendar-reminder", date=today)
    assert all("Due now" in m["Subject"] for m in msgs)
    assert to(msgs) == ["alice@agency.test", "carl@agency.test"]
    assert agency.check("--only", "calendar-reminder", date=today) == []  # once


def test_reminder_ics_is_an_invitation(agency: Agency, home: Path) -> None:
    assert agency.cli("config", "set", "agency.timezone", "America/New_York").exit_code == 0
    assert agency.cli("config", "manager", "--name", "Max Manager", "--email", "max@agency.test")
    agency.add(
        "calendar_entries",
        dict(
            id="CAL1",
            title="Client review, round 2",
            starts_at=at(LATER + DAY, 14),
            ends_at=at(LATER + DAY, 15, 30),
            remind_at=at(D, 8),
            location="Room B",
            notes="Bring proofs.\nAnd coffee.",
            attendees="AE,Carl Reed,NO",
        ),
    )
    msgs = agency.check("--only", "calendar-reminder")
    assert to(msgs) == ["alice@agency.test", "carl@agency.test"]  # NO is inactive
    for m in msgs:
        (att,) = list(m.iter_attachments())
        assert att.get_content_type() == "text/calendar"
        assert att.get_param("method") == "REQUEST"  # what makes Outlook show it as one
        assert att.get_filename() == "client-review-round-2.ics"
        cal = icalendar.Calendar.from_ical(att.get_content())
        assert str(cal["METHOD"]) == "REQUEST" and str(cal["VERSION"]) == "2.0"
        (ev,) = cal.walk("VEVENT")
        assert str(ev["UID"]).endswith("@cpmail") and ev.decoded("DTSTAMP").tzinfo
        start, end = ev.decoded("DTSTART"), ev.decoded("DTEND")
        # 14:00 in New York on Nov 25 (winter time) is 19:00 UTC
        assert start == dt.datetime(LATER.year, 11, 25, 19, 0, tzinfo=dt.UTC)
        assert end - start == dt.timedelta(minutes=90)
        assert str(ev["SUMMARY"]) == "Client review, round 2"
        assert str(ev["DESCRIPTION"]) == "Bring proofs.\nAnd coffee."
        organizer = ev["ORGANIZER"]
        assert str(organizer) == "mailto:max@agency.test"
        assert organizer.params["CN"] == "Max Manager"
        listed: list[Any] = list(cast(Any, ev["ATTENDEE"]))
        attendees = {str(a): a.params.get("CN") for a in listed}
        assert attendees == {
            "mailto:alice@agency.test": "Alice Evans",
            "mailto:carl@agency.test": "Carl Reed",
        }
    uids = {
        str(
            icalendar.Calendar.from_ical(next(m.iter_attachments()).get_content()).walk("VEVENT")[
                0
            ]["UID"]
        )
        for m in msgs
    }
    assert len(uids) == 1  # the same event for everyone


# ---------------------------------------------------------------- budget thresholds


def _cost(a: Agency, id: str, amount: str, by: str = "CR", kind: str = "cost") -> None:
    a.add(
        "job_costs",
        dict(
            id=id,
            job_id="J100",
            task_id="T1",
            kind=kind,
            amount=Decimal(amount),
            entered_by=by,
            entered_at=at(D - 20 * DAY),
        ),
    )


def test_budget_thresholds_at_79_80_and_100_percent(agency: Agency) -> None:
    r = agency.cli("config", "set", "events.budget-alert.thresholds", "80,100")
    assert r.exit_code == 0, r.output
    agency.add(
        "tasks",
        dict(
            id="T1", job_id="J100", name="Layout", assignee_id="CR", budget_amount=Decimal("1000")
        ),
    )
    _cost(agency, "C1", "590")
    agency.add(
        "time_entries",
        dict(
            id="E1",
            staff_id="PR",
            task_id="T1",
            work_date=D - 10 * DAY,
            hours=Decimal(2),
            amount=Decimal("200"),
        ),
    )
    assert by_event(agency.check(), "budget-alert") == []  # 79 %
    _cost(agency, "C2", "10", by="PR", kind="order")  # 80 %
    msgs = by_event(agency.check(date=D + DAY), "budget-alert")
    # team:ae, and who entered what brought it there
    assert to(msgs) == ["alice@agency.test", "pia@agency.test"]
    assert "80% of the budget reached: 800.00 of 1,000.00" in msgs[0]["Subject"]
    assert "Layout" in msgs[0]["Subject"] and "J100" in msgs[0]["Subject"]
    assert "an order by Pia Ross" in body(msgs[0])
    assert by_event(agency.check(date=D + 2 * DAY), "budget-alert") == []  # once
    _cost(agency, "C3", "199.99")  # 99.999 %
    assert by_event(agency.check(date=D + 3 * DAY), "budget-alert") == []
    _cost(agency, "C4", "0.01")  # 100 %
    msgs = agency.check(date=D + 4 * DAY)
    alerts = by_event(msgs, "budget-alert")
    assert to(alerts) == ["alice@agency.test", "carl@agency.test"]
    assert "100% of the budget reached" in alerts[0]["Subject"]
    assert by_event(msgs, "task-over-budget") == []  # reached, not exceeded
    with agency.engine.connect() as conn:
        keys = conn.execute(
            sa.text("SELECT key FROM ledger WHERE key LIKE 'budget-alert:%' ORDER BY key")
        ).scalars()
        assert list(keys) == ["budget-alert:T1:100", "budget-alert:T1:80"]


def test_budget_thresholds_jumped_at_once_each_fire_and_off_by_default(agency: Agency) -> None:
    agency.add(
        "tasks",
        dict(id="T1", job_id="J100", name="Layout", budget_amount=Decimal("100")),
    )
    _cost(agency, "C1", "150")
    assert by_event(agency.check("--only", "budget-alert"), "budget-alert") == []  # off
    agency.cli("config", "set", "events.budget-alert.thresholds", "50,90")
    msgs = agency.check("--only", "budget-alert", date=D + DAY)
    assert sorted(m["Subject"].split(": ", 1)[1][:6] for m in msgs if "alice" in str(m["To"])) == [
        "50% of",
        "90% of",
    ]


# ---------------------------------------------------------------- scheduled cash flow


def _cash_data(a: Agency) -> None:
    a.add("bank_accounts", dict(id="BA1", name="Operating", balance=Decimal("5000"), as_of=D))
    a.add(
        "billings",
        dict(
            id="B1",
            job_id="J100",
            client_id="C1",
            number="10234",
            amount=Decimal("1200"),
            created_at=at(D - 40 * DAY),
        ),
    )


def _set_cash_flow(a: Agency, days: str, to: str) -> None:
    assert a.cli("config", "set", "reports.cash-flow.days", days).exit_code == 0
    assert a.cli("config", "set", "reports.cash-flow.to", to).exit_code == 0


def test_cash_flow_finder_on_its_day_to_staff_with_access(agency: Agency, home: Path) -> None:
    _cash_data(agency)
    _set_cash_flow(agency, '["tue"]', '["AE", "CR"]')
    run = _run(home, D)  # a Tuesday
    with agency.engine.connect() as conn:
        found: list[Notification] = list(scheduled_cash_flow(conn, run))
    assert [n.key for n in found] == [
        "cash-flow:CR:2026-11-24:left-out",
        "cash-flow:AE:2026-11-24",
    ]
    assert [n.unreachable for n in found] == ["no cash-flow access: CR (Carl Reed)", None]
    (att,) = found[1].attachments
    assert att[0] == "cash-flow-2026-11-24.pdf" and att[2] == "application/pdf"
    text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(att[1])).pages)
    assert "Cash flow" in text and "10234" in text and "5,000.00" in text
    monday = _run(home, D - DAY)
    with agency.engine.connect() as conn:
        assert list(scheduled_cash_flow(conn, monday)) == []


def _wired() -> bool:
    import inspect

    return "scheduled" in inspect.getsource(check_module)


@pytest.mark.skipif(not _wired(), reason="`check` does not run the scheduled reports yet")
def test_cash_flow_sent_by_check_on_its_day_only(agency: Agency) -> None:
    _cash_data(agency)
    _set_cash_flow(agency, '["tue"]', '["AE", "CR"]')
    assert by_event(agency.check(date=D - DAY), "cash-flow") == []  # Monday: none
    msgs = by_event(agency.check(), "cash-flow")
    assert to(msgs) == ["alice@agency.test"]
    (att,) = list(msgs[0].iter_attachments())
    assert att.get_content_type() == "application/pdf"
    assert att.get_filename() == "cash-flow-2026-11-24.pdf"
    assert att.get_content().startswith(b"%PDF-")
    assert by_event(agency.check(), "cash-flow") == []  # once a day
    r = agency.cli("check", "--date", (D + 7 * DAY).isoformat(), "--json")
    summary = {s["event"]: s for s in json.loads(r.stdout)["summary"]}
    assert (summary["cash-flow"]["found"], summary["cash-flow"]["skipped"]) == (2, 1)
    assert "CR (Carl Reed)" in json.dumps(summary["cash-flow"]["skip_reasons"])
    # the same day again: nothing new, so nobody is newly left out either
    r = agency.cli("check", "--date", (D + 7 * DAY).isoformat(), "--json")
    summary = {s["event"]: s for s in json.loads(r.stdout)["summary"]}
    assert "cash-flow" not in summary or summary["cash-flow"]["skipped"] == 0, summary


def test_cash_flow_nobody_may_have_is_said_once_a_day(agency: Agency) -> None:
    """Nobody listed has access: each left out is a notification found and skipped, and a
    run every few minutes says so once that day, not in every run."""
    _cash_data(agency)
    _set_cash_flow(agency, '["tue"]', '["CR"]')

    def counts(day: dt.date) -> dict[str, Any]:
        r = agency.cli("check", "--date", day.isoformat(), "--json")
        assert r.exit_code == 0, r.output
        rows: dict[str, dict[str, Any]] = {s["event"]: s for s in json.loads(r.stdout)["summary"]}
        return rows.get("cash-flow", {})

    first = counts(D)
    assert (first["found"], first["skipped"], first["sent"]) == (1, 1, 0), first
    assert first["skip_reasons"] == {"no cash-flow access: CR (Carl Reed)": 1}
    again = counts(D)  # a run a few minutes later, the same day
    assert (again.get("found", 0), again.get("skipped", 0)) == (0, 0), again
    assert not any(b"X-Cpmail-Event: cash-flow" in m.data for m in agency.server.messages)
    # given access later that day, the report goes that day all the same
    assert agency.cli("staff", "edit", "CR", "--access", "cash-flow").exit_code == 0
    granted = counts(D)
    assert (granted["found"], granted["sent"], granted["skipped"]) == (1, 1, 0), granted
    assert agency.cli("staff", "edit", "CR", "--access", "").exit_code == 0
    assert counts(D + 7 * DAY)["skipped"] == 1  # the next report day: said again


def test_only_and_skip_name_the_scheduled_cash_flow_report(agency: Agency) -> None:
    """`--only cash-flow` sends just it; `--skip cash-flow` leaves it out; `--only` of an
    event leaves it out and `--skip` of another keeps it, as for any event."""
    _cash_data(agency)
    _set_cash_flow(agency, '["tue"]', '["AE"]')
    assert by_event(agency.check("--skip", "cash-flow"), "cash-flow") == []
    assert by_event(agency.check("--only", "job-opened"), "cash-flow") == []
    msgs = agency.check("--only", "cash-flow")
    assert {m["X-Cpmail-Event"] for m in msgs} == {"cash-flow"}, [m["Subject"] for m in msgs]
    assert to(msgs) == ["alice@agency.test"]


@pytest.mark.skipif(
    shutil.which("calcurse") is None, reason="calcurse is not installed (apt-get install calcurse)"
)
def test_a_calendar_program_imports_the_invitation(
    agency: Agency, home: Path, tmp_path: Path
) -> None:
    """calcurse (Debian's text calendar) reads the .ics as one appointment, nothing skipped."""
    agency.add(
        "calendar_entries",
        dict(
            id="CAL1",
            title="Client review; “round 2”",
            starts_at=at(D + DAY, 14),
            ends_at=at(D + DAY, 15),
            remind_at=at(D, 8),
            location="Room B",
            notes="Bring proofs.",
            attendees="AE,CR",
        ),
    )
    with agency.engine.connect() as conn:
        (n,) = calendar_reminder(conn, _run(home, D, at(D, 9)))
    assert n.invitation is not None
    ics = tmp_path / n.invitation.filename
    ics.write_bytes(
        event_ics(
            **n.invitation.event,
            organizer=("max@agency.test", "Max Manager"),
            attendees=[("alice@agency.test", "Alice Evans"), ("carl@agency.test", "Carl Reed")],
        )
    )
    r = subprocess.run(
        ["calcurse", "-D", str(tmp_path / "calcurse"), "-i", str(ics)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "1 app / 0 events / 0 todos / 0 skipped" in r.stdout
    r = subprocess.run(
        ["calcurse", "-D", str(tmp_path / "calcurse"), "-Q", "--from", "11/25/2026"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Client review" in r.stdout, r.stdout + r.stderr


def test_a_local_time_in_the_hour_the_clocks_repeat_is_the_first_time_round(
    agency: Agency, home: Path, tmp_path: Path
) -> None:
    """New York, 1 November 2026: 01:00-02:00 passes twice (EDT, then EST). A stored local
    time in it is the first time round, as docs/data.md says, wherever it is read: the
    import of a time with an offset, the .ics, and the run moment. During the second time
    round the run stood at the first time round of its wall time, an hour back: a reminder
    due in the first time round waited an hour more."""
    assert agency.cli("config", "set", "agency.timezone", "America/New_York").exit_code == 0
    day = dt.date(2026, 11, 1)
    path = tmp_path / "calendar_entries.csv"
    path.write_text(
        "id,title,starts_at,remind_at,attendees\n"
        "F1,Early call,2026-11-01T01:55,2026-11-01T01:50,AE\n"
        "F2,Breakfast,2026-11-01T03:00,2026-11-01T01:50,AE\n"
        "F3,Given as EDT,2026-11-01T01:30-04:00,,AE\n"
        "F4,Given as EST,2026-11-01T01:30-05:00,,AE\n"
        "F5,Given in UTC,2026-11-01T05:30Z,,AE\n",
        encoding="utf-8",
    )
    r = agency.cli("data", "import", str(path))
    assert r.exit_code == 0, r.output
    table = sa.table("calendar_entries", sa.column("id"), sa.column("starts_at", sa.DateTime))
    with agency.engine.connect() as conn:
        stored = {r.id: r.starts_at for r in conn.execute(sa.select(table.c.id, table.c.starts_at))}
    # each is stored as its local time: the second time round (F4) as the first, an hour early
    assert {k: stored[k] for k in ("F3", "F4", "F5")} == dict.fromkeys(
        ("F3", "F4", "F5"), dt.datetime(2026, 11, 1, 1, 30)
    )
    tz = Settings.load(home).tz()
    ics = icalendar.Calendar.from_ical(
        event_ics(
            uid_seed="x",
            title="t",
            starts_at=stored["F3"],
            ends_at=None,
            location=None,
            notes=None,
            tz=tz,
        )
    )
    [event] = [c for c in ics.walk("VEVENT")]
    start = event.decoded("DTSTART")
    assert start.astimezone(dt.UTC) == dt.datetime(2026, 11, 1, 5, 30, tzinfo=dt.UTC)

    def due(utc_hour: int, minute: int) -> list[str]:
        now = dt.datetime(2026, 11, 1, utc_hour, minute, tzinfo=dt.UTC)
        return sorted(k.split(":")[1] for k in _reminders(agency, home, day, now))

    assert due(5, 40) == []  # 01:40 EDT: neither reminder's time has come
    assert due(5, 52) == ["F1", "F2"]  # 01:52 EDT: both due, neither event begun
    assert due(6, 40) == ["F2"]  # 01:40 EST: the early call (05:55 UTC) has begun
    assert due(7, 10) == ["F2"]  # 02:10 EST
