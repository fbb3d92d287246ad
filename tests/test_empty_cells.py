"""An empty cell anywhere the data model allows one never stops a check.

A job cost without ``entered_at`` on a task that crossed a budget threshold
stopped every ``cpmail check`` (exit 70, nothing sent to anyone) until the
data was mended. The class: each column that may be empty, emptied in every
row of the demo agency (which fires every event), then a check of the demo's
day. It must end as a check ends (0 or 1), write each message it sends, and
never print a Python value such as ``None`` where the data had nothing.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from cpmail.dataio.columns import columns_of, get_table, table_names
from tests.conftest import Cli

DAY = "2026-11-24"


def _empty_columns() -> list[tuple[str, str]]:
    return [
        (table, spec.name)
        for table in table_names()
        for spec in columns_of(get_table(table))
        if not spec.required and not spec.key
    ]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo home with nothing recorded yet: its check finds every event anew."""
    home = tmp_path_factory.mktemp("demo") / "home"
    cli = Cli(home)
    r = cli("demo", "--date", DAY)
    assert r.exit_code == 0, r.output
    assert cli("config", "set", "events.budget-alert.thresholds", "10,50,100").exit_code == 0
    with sqlite3.connect(home / "cpmail.db") as db:
        for table in ("ledger", "messages", "runs"):
            db.execute(f"DELETE FROM {table}")
        for table in table_names():  # the rows the state triggers marked, unmarked
            cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            if "cpmail_checked" in cols:
                db.execute(f"UPDATE {table} SET cpmail_checked = NULL")
    shutil.rmtree(home / "mail")
    return home


@pytest.mark.parametrize(("table", "column"), _empty_columns())
def test_an_empty_cell_never_stops_a_check(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, column: str
) -> None:
    home = tmp_path / "home"
    shutil.copytree(template, home)
    monkeypatch.setenv("CPMAIL_HOME", str(home))
    with sqlite3.connect(home / "cpmail.db") as db:
        db.execute(f"UPDATE {table} SET {column} = NULL")
    r = Cli(home)("check", "--date", DAY)
    assert r.exit_code in (0, 1), (table, column, r.output)
    mail = sorted((home / "mail").glob("**/*.eml"))
    # (with no staff address at all, nobody is written to)
    assert mail or (table, column) == ("staff", "work_email"), (table, column, r.output)
    for path in mail:
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        body = msg.get_body(("plain",))
        assert body is not None
        text = str(msg["Subject"]) + "\n" + body.get_content()
        assert not re.search(r"\bNone\b", text), (table, column, path.name, text[:2000])
