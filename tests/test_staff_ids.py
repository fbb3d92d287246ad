"""Staff IDs: the staff commands and `data import`/`data pull` take the same ones, and each
staff member's secrets are theirs alone (never the one-account sender's, nor another's)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from cpmail.secrets import SHARED, SecretStore, passcode_name
from cpmail.store import schema
from tests.conftest import Cli, Result
from tests.test_data import engine_of, snapshot


def shared_passcode(home: Path) -> str | None:
    secret = SecretStore(home).get(passcode_name(SHARED))
    return None if secret is None else secret.reveal()


def refused(r: Result, *words: str) -> str:
    """Check exit 2 with one line on stderr holding ``words``; return that line."""
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("cpmail: ") and r.stderr.count("\n") == 1, r.stderr
    for word in words:
        assert word in r.stderr, r.stderr
    return r.stderr


@pytest.mark.parametrize("staff_id", ["shared", "Shared", "SHARED"])
def test_staff_add_refuses_the_one_account_senders_name(
    initialised: Cli, home: Path, staff_id: str
) -> None:
    """Its passcode and sign-ins are stored under "shared" (and a file system that ignores
    case takes "Shared" for it): a staff member of that ID would overwrite or remove them."""
    assert initialised("staff", "passcode", "--shared", "--stdin", input="A-pass\n").exit_code == 0
    r = initialised("staff", "add", staff_id, "--name", "T", "--work-email", "t@agency.test")
    refused(r, f"staff ID {staff_id!r} is reserved for the one-account sender")
    assert initialised("staff", "list", "--json").stdout.strip() == "[]"
    r = initialised("staff", "passcode", staff_id, "--stdin", input="B-pass\n")
    assert r.exit_code == 2, r.output
    assert initialised("staff", "remove", staff_id).exit_code == 2
    assert shared_passcode(home) == "A-pass"


@pytest.mark.parametrize("staff_id", ["shared", " SHARED ", "sHaReD"])
def test_data_import_refuses_the_one_account_senders_name(
    initialised: Cli, home: Path, tmp_path: Path, staff_id: str
) -> None:
    path = tmp_path / "staff.csv"
    path.write_text(
        f"id,name,work_email\nJD,Jo,jd@agency.test\n{staff_id},T,t@agency.test\n", encoding="utf-8"
    )
    engine = engine_of(home)
    before = snapshot(engine)
    said = refused(initialised("data", "import", str(path)), f"{path}, line 3", "column id: ")
    assert f"{staff_id.strip()!r} is reserved for the one-account sender" in said
    assert snapshot(engine) == before
    engine.dispose()


def test_data_pull_refuses_the_one_account_senders_name(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    source = tmp_path / "agency.db"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE people (code TEXT, full_name TEXT, mail TEXT)")
        db.execute("INSERT INTO people VALUES ('JD', 'Jo', 'jd@agency.test')")
        db.execute("INSERT INTO people VALUES ('Shared', 'T', 't@agency.test')")
    db.close()
    query = "SELECT code AS id, full_name AS name, mail AS work_email FROM people"
    assert initialised("config", "set", "source.url", f"sqlite:///{source}").exit_code == 0
    r = initialised("config", "set", "source.tables.staff.query", query)
    assert r.exit_code == 0, r.output
    refused(initialised("data", "pull"), "column id: ", "'Shared' is reserved")
    assert initialised("staff", "list", "--json").stdout.strip() == "[]"


def test_a_staff_member_named_shared_from_before_never_touches_the_shared_secrets(
    initialised: Cli, home: Path
) -> None:
    """A row from before the name was reserved: no passcode of its own, no sending as it,
    and removing it leaves the one-account sender's passcode where it is."""
    assert initialised("staff", "passcode", "--shared", "--stdin", input="A-pass\n").exit_code == 0
    engine = engine_of(home)
    with engine.begin() as conn:
        conn.execute(
            schema.staff.insert().values(id="shared", name="T", work_email="t@agency.test")
        )
    engine.dispose()
    r = initialised("staff", "passcode", "shared", "--stdin", input="B-pass\n")
    refused(r, "'shared' is reserved", "--shared")
    refused(initialised("staff", "test", "shared"), "'shared' is reserved")
    assert shared_passcode(home) == "A-pass"
    r = initialised("staff", "remove", "shared")
    assert r.exit_code == 0, r.output
    assert shared_passcode(home) == "A-pass"
    engine = engine_of(home)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(schema.staff)) == 0
    engine.dispose()
