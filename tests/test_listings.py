"""Listings fit an 80-column terminal without breaking a word; -q/-v go anywhere; log's limit."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cpmail.settings import Settings
from cpmail.store import connect
from tests.agency import LATER, D, at, base_agency, insert
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp


@pytest.fixture
def demo(cli: Cli) -> Cli:
    r = cli("demo", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    return cli


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[\w@.\-]+", text))


@pytest.mark.parametrize(
    "command",
    [("log", "--all"), ("outbox",), ("staff", "list"), ("data", "tables"), ("config", "show")],
)
def test_listings_fit_80_columns_without_splitting_words(
    demo: Cli, command: tuple[str, ...]
) -> None:
    narrow = demo(*command, env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    # the table's lines (a line such as "Home: PATH" is a path, not a listing)
    assert narrow.stdout.strip()
    lines = [x for x in narrow.stdout.splitlines() if x[:1] in "┏┃┡│└"] or [
        narrow.stdout.strip()  # "The outbox is empty."
    ]
    assert max(len(x) for x in lines) <= 80, max(lines, key=len)
    # every word shown is a word of the full listing, whole, or cut with "…"
    full = demo(*command, "--json") if command[0] != "config" else demo("config", "show", "--json")
    assert full.exit_code == 0
    known = words_of(json.dumps(json.loads(full.stdout), ensure_ascii=False, default=str))
    known |= words_of(demo(*command, env={"COLUMNS": "400"}).stdout)
    for line in lines:
        for cell in line.split("│")[1:-1]:
            for word in cell.split():
                if word.endswith("…"):
                    continue
                for part in words_of(word):
                    assert part in known, f"{part!r} is not a word of the listing: {line}"


def test_log_shows_the_newest_50_unless_asked(demo: Cli) -> None:
    """The table stops at 50 and says so; --json lists everything unless --limit is given."""
    for day in ("2026-11-25", "2026-11-26"):  # more than 50 messages in the log
        assert demo("check", "--date", day).exit_code == 0
    everything = json.loads(demo("log", "--json", "--all").stdout)
    assert len(everything) > 50
    assert json.loads(demo("log", "--json").stdout) == everything
    newest = json.loads(demo("log", "--json", "--limit", "50").stdout)
    assert [r["id"] for r in newest] == [r["id"] for r in everything[-50:]]
    assert len(json.loads(demo("log", "--json", "--limit", "3").stdout)) == 3
    r = demo("log")
    assert "cpmail log --all" in r.stderr
    # exactly as many as shown: there are no more to offer
    n = len(everything)
    assert "for more" not in demo("log", "--limit", str(n)).stderr
    assert "for more" in demo("log", "--limit", str(n - 1)).stderr


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_quiet_after_the_subcommand(demo: Cli, home: Path, flag: str) -> None:
    before = demo("check", "--date", "2026-11-24")
    assert before.exit_code == 0 and before.stdout.strip()
    after = demo("check", flag, "--date", "2026-11-24")
    assert after.exit_code == 0, after.output
    assert after.stdout == ""
    assert demo("check", "--date", "2026-11-24", flag).stdout == ""


def test_verbose_after_the_subcommand_is_accepted(demo: Cli) -> None:
    assert demo("outbox", "-v").exit_code == 0
    assert demo("log", "--limit", "1", "--verbose").exit_code == 0


def test_usage_lines_write_arguments_as_unix_tools_do() -> None:
    from typer.testing import CliRunner

    from cpmail.cli.app import app

    text = (Path(__file__).parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    usages = [line for line in text.splitlines() if line.startswith("Usage: cpmail")]
    assert len(usages) > 30
    for line in usages:
        assert "[[" not in line and "]]" not in line, line
        braces = re.findall(r"\{([^}]*)\}", line)
        assert all("|" in b for b in braces), line  # braces only around choices
    r = CliRunner().invoke(app, ["staff", "test", "--help"])
    assert "Usage: cpmail staff test [OPTIONS] ID\n" in r.output


def test_log_since_goes_by_the_time_each_row_shows(demo: Cli, home: Path) -> None:
    """A message queued days ago and sent today shows today's time: --since today lists it."""
    import datetime as dt
    import sqlite3

    with sqlite3.connect(home / "cpmail.db") as db:  # half the mail waited three days
        db.execute(
            "UPDATE messages SET created_at = datetime(created_at, '-3 days') WHERE id % 2 = 0"
        )
    rows = json.loads(demo("log", "--json", "--all").stdout)
    assert len(rows) > 4
    for day in {r["time"][:10] for r in rows} | {
        (dt.date.fromisoformat(rows[0]["time"][:10]) - dt.timedelta(days=2)).isoformat()
    }:
        listed = json.loads(demo("log", "--json", "--since", day).stdout)
        expected = [r["id"] for r in rows if r["time"][:10] >= day]
        assert [r["id"] for r in listed] == expected, day
    # A message queued days ago that failed today, and one a retry put back in the queue
    # today, show today (they showed the day they were first made, and --since missed them).
    with sqlite3.connect(home / "cpmail.db") as db:
        db.execute(
            "UPDATE messages SET status = 'failed', sent_at = NULL, failed_at = created_at, "
            "created_at = datetime(created_at, '-5 days'), "
            "queued_at = datetime(queued_at, '-5 days') WHERE id = 1"
        )
        db.execute(
            "UPDATE messages SET status = 'queued', sent_at = NULL, "
            "created_at = datetime(created_at, '-5 days') WHERE id = 3"
        )
    today = rows[-1]["time"][:10]
    listed = {r["id"]: r for r in json.loads(demo("log", "--json", "--since", today).stdout)}
    assert {1, 3} <= set(listed), sorted(listed)
    assert listed[1]["time"][:10] == today and listed[3]["time"][:10] == today


def test_a_long_digests_row_still_names_every_event_it_carried() -> None:
    """A message's ledger keys are kept to 2,000 characters: a digest of 80 tasks due
    tomorrow and one overdue lost the overdue one's key, and `log --event task-overdue`
    missed the digest. Each event's first key comes first; a comma in an ID names nothing."""
    from cpmail.check import _keys_text
    from cpmail.outbox import _carried

    keys = [f"task-due-tomorrow:T{i:04d}-with-a-long-id:2026-11-25" for i in range(80)]
    keys += ["task-overdue:T9999:2026-11-24", "homebase-entry:A,b:c"]
    text = _keys_text(keys)
    assert len(text) == 2000 and "task-overdue:T9999" in text
    assert _carried(text) == ["task-due-tomorrow", "task-overdue", "homebase-entry"]
    assert _carried(",".join(keys)) == ["task-due-tomorrow", "task-overdue", "homebase-entry"]
    assert set(_carried(text)) >= {"task-overdue"} and "b" not in _carried(text)


@pytest.mark.parametrize(
    "command",
    [
        ("config", "show"),  # a rich table
        ("staff", "list", "--json"),  # one JSON document
        ("data", "export", "jobs"),  # CSV
        ("check", "--dry-run"),  # a line per message
    ],
)
def test_output_read_by_a_reader_that_stops_early_ends_141_silently(
    demo: Cli, home: Path, command: tuple[str, ...]
) -> None:
    """`cpmail … | head`: exit 1 would say mail was not delivered. As a shell reports a
    process SIGPIPE ended (128 + 13), with nothing said on standard error."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write breaks the pipe
    try:
        r = subprocess.run(
            [sys.executable, "-m", "cpmail", "--home", str(home), *command],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert r.returncode == 141, r.stderr
    assert r.stderr == ""


@pytest.mark.parametrize("columns", ["60", "80"])
def test_staff_list_keeps_ids_names_and_addresses_whole_on_a_narrow_terminal(
    demo: Cli, columns: str
) -> None:
    """Once every column was squeezed, and the ID column shrank to nothing: the columns
    that say least go first."""
    r = demo("staff", "list", env={"COLUMNS": columns})
    assert r.exit_code == 0, r.output
    rows = [x.split("│")[1:-1] for x in r.stdout.splitlines() if x.startswith("│")]
    assert max(len(x) for x in r.stdout.splitlines()) <= int(columns)
    staff = json.loads(demo("staff", "list", "--json").stdout)
    assert [cells[0].strip() for cells in rows] == [s["id"] for s in staff]
    assert [cells[1].strip() for cells in rows] == [s["name"] for s in staff]


def test_a_digest_of_long_ids_still_names_every_event_it_carried(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """IDs of hundreds of characters (a system's own keys): the first keys of six events
    alone pass the 2,000 characters a row keeps, and the last events were cut off, so
    `log --event` missed the digest that carried them and `log --json` left them out."""
    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    assert cli("config", "set", "mail.digest", "true").exit_code == 0
    engine = connect(Settings.load(home).db_url, where="test")
    base_agency(engine)
    long = "x" * 400
    entry = dict(body="b", entered_by="CR", entered_at=at(D), notify="AE")
    rows: dict[str, list[dict[str, Any]]] = {
        "jobs": [dict(id=f"J-{long}", client_id="C1", title="Long", opened_at=at(D))],
        "billings": [
            dict(id=f"B-{long}", client_id="C1", job_id="J100", amount=1, created_at=at(D))
        ],
        "change_orders": [
            dict(id=f"CO-{long}", job_id="J100", description="More", amount=1, entered_at=at(D))
        ],
        "diary_entries": [
            dict(id=f"Y-{long}", kind="client", party_id="C1", subject="Call", **entry)
        ],
        "homebase_entries": [dict(id=f"H-{long}", subject="Lunch", **entry)],
        "calendar_entries": [
            dict(
                id=f"K-{long}",
                title="Review",
                starts_at=at(LATER, 10),
                remind_at=at(D, 8),
                attendees="AE",
            )
        ],
    }
    for table, values in rows.items():
        insert(engine, table, values)
    events = [
        "job-opened",
        "billing-created",
        "diary-entry",
        "homebase-entry",
        "change-order",
        "calendar-reminder",
    ]
    r = cli("check", "--date", D.isoformat(), "--only", ",".join(events))
    assert r.exit_code == 0, r.output
    (digest,) = [
        m for m in json.loads(cli("log", "--json").stdout) if m["to"] == ["alice@agency.test"]
    ]
    assert digest["event"] == "digest" and digest["events"] == events, digest["events"]
    for event in events:
        found = json.loads(cli("log", "--json", "--event", event).stdout)
        assert digest["id"] in [m["id"] for m in found], event


def test_log_to_finds_mail_to_an_address_with_a_capital_beyond_ascii(
    cli: Cli, smtp_server: SMTPTestServer, backend: str
) -> None:
    """SQLite's lower() leaves É as it is while Python's makes it é: `log --to EM` and
    `log --to Émile@…` listed nothing of the mail sent to Émile; nor did `émile@…`, the
    same address in another case."""
    setup_smtp(cli, smtp_server, db=backend)
    r = cli("staff", "add", "EM", "--name", "Émile Zola", "--work-email", "Émile@Agency.test")
    assert r.exit_code == 0, r.output
    assert cli("staff", "test", "EM").exit_code == 0
    assert cli("message", "manager", "Hello").exit_code == 0  # mail to someone else
    assert smtp_server.messages[0].rcpt_tos == ("Émile@agency.test",)
    for who in (
        "EM",
        "Émile@agency.test",
        "émile@agency.test",
        "ÉMILE@AGENCY.test",
        "éMILE@agency.test",
    ):
        rows = json.loads(cli("log", "--json", "--to", who).stdout)
        assert [m["to"] for m in rows] == [["Émile@agency.test"]], who
