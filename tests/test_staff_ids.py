"""Staff IDs: the staff commands and `data import`/`data pull` take the same ones, and each
staff member's secrets are theirs alone (never the one-account sender's, nor another's)."""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmail.secrets import SHARED, SecretStore, passcode_name, token_name
from cpmail.store import schema
from tests.conftest import Cli, Result
from tests.smtpserver import SMTPTestServer
from tests.test_data import engine_of, snapshot
from tests.test_delivery import setup_smtp


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


@pytest.mark.parametrize("staff_id", ["shared"])
def test_staff_add_refuses_the_one_account_senders_name(
    initialised: Cli, home: Path, staff_id: str
) -> None:
    """Its passcode and sign-ins are stored under "shared": a staff member of that ID
    would overwrite or remove them."""
    assert initialised("staff", "passcode", "--shared", "--stdin", input="A-pass\n").exit_code == 0
    r = initialised("staff", "add", staff_id, "--name", "T", "--work-email", "t@agency.test")
    refused(r, f"staff ID {staff_id!r} is reserved for the one-account sender")
    assert initialised("staff", "list", "--json").stdout.strip() == "[]"
    r = initialised("staff", "passcode", staff_id, "--stdin", input="B-pass\n")
    assert r.exit_code == 2, r.output
    assert initialised("staff", "remove", staff_id).exit_code == 2
    assert shared_passcode(home) == "A-pass"


@pytest.mark.parametrize("staff_id", ["shared", " shared "])
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
        db.execute("INSERT INTO people VALUES ('shared', 'T', 't@agency.test')")
    db.close()
    query = "SELECT code AS id, full_name AS name, mail AS work_email FROM people"
    assert initialised("config", "set", "source.url", f"sqlite:///{source}").exit_code == 0
    r = initialised("config", "set", "source.tables.staff.query", query)
    assert r.exit_code == 0, r.output
    refused(initialised("data", "pull"), "column id: ", "'shared' is reserved")
    assert initialised("staff", "list", "--json").stdout.strip() == "[]"


def test_another_case_of_shared_is_a_staff_id_like_any(initialised: Cli, tmp_path: Path) -> None:
    """An older cpmail took "Shared", and an agency's data may hold it: an export of such a
    home imports again, and that person has a passcode of their own."""
    path = tmp_path / "staff.csv"
    path.write_text("id,name,work_email\nShared,T,t@agency.test\n", encoding="utf-8")
    assert initialised("data", "import", str(path)).exit_code == 0
    assert initialised("data", "import", str(path)).exit_code == 0
    r = initialised("staff", "passcode", "Shared", "--stdin", input="own-pass\n")
    assert r.exit_code == 0, r.output


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
    assert initialised("config", "set", "mail.transport", "gmail").exit_code == 0
    refused(initialised("staff", "signin", "shared"), "'shared' is reserved", "--shared")
    assert initialised("config", "set", "mail.transport", "file").exit_code == 0
    assert shared_passcode(home) == "A-pass"
    r = initialised("staff", "remove", "shared")
    assert r.exit_code == 0, r.output
    assert shared_passcode(home) == "A-pass"
    engine = engine_of(home)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(schema.staff)) == 0
    engine.dispose()


# IDs an agency system may use that are no file name as they are: the staff commands
# take them as `data import` does, and each person's secrets are theirs.
ODD_IDS = [
    "W[/]1",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301-extra",  # longer than the 32 of old
    "Jö e",
    "../../cpmail.toml",
    "..",
    "%41",  # what the percent-encoding of "A" would be
    "J" * 300,
    "日本語" * 60,
]


def _secret_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "secrets").iterdir())


@pytest.mark.parametrize("staff_id", ODD_IDS)
@pytest.mark.parametrize("how", ["import", "add"])
def test_a_staff_member_of_any_id_the_import_takes_can_be_edited_given_a_passcode_and_removed(
    initialised: Cli, home: Path, tmp_path: Path, staff_id: str, how: str
) -> None:
    if how == "import":
        path = tmp_path / "staff.json"
        rows = [{"id": staff_id, "name": "Odd", "work_email": "odd@agency.test"}]
        path.write_text(json.dumps(rows), encoding="utf-8")
        r = initialised("data", "import", str(path))
    else:
        r = initialised("staff", "add", staff_id, "--name", "Odd", "--work-email", "o@agency.test")
    assert r.exit_code == 0, r.output
    assert (
        initialised("staff", "passcode", "--shared", "--stdin", input="shared-pw\n").exit_code == 0
    )
    r = initialised("staff", "passcode", staff_id, "--stdin", input="odd-pw\n")
    assert r.exit_code == 0, r.output
    secret = SecretStore(home).get(passcode_name(staff_id))
    assert secret is not None and secret.reveal() == "odd-pw"
    assert len(_secret_files(home)) == 2  # in the secrets folder, beside the shared one
    if len(staff_id) < 100:  # `status` names the account as it is, not its file's name
        assert initialised("config", "set", "mail.transport", "smtp").exit_code == 0
        assert initialised("config", "set", "mail.smtp.host", "127.0.0.1").exit_code == 0
        said = initialised("status", "--json").stdout
        accounts = [a["account"] for a in json.loads(said)["accounts"]]
        assert staff_id in accounts and not any(a.startswith(",") for a in accounts), accounts
    assert not (home / "cpmail.toml").is_dir()
    r = initialised("staff", "edit", staff_id, "--role", "ae")
    assert r.exit_code == 0, r.output
    r = initialised("staff", "remove", staff_id)
    assert r.exit_code == 0, r.output
    assert _secret_files(home) == [passcode_name(SHARED)]
    assert shared_passcode(home) == "shared-pw"


@pytest.mark.parametrize(
    ("staff_id", "said"),
    [
        ("A,B", "holds a comma"),
        ("A\nB", "holds a line break"),
        ("A\x07B", "control character"),
        ("A\u200bB", "shows as nothing"),
    ],
)
def test_staff_add_refuses_what_the_import_refuses(
    initialised: Cli, tmp_path: Path, staff_id: str, said: str
) -> None:
    r = initialised("staff", "add", staff_id, "--name", "Odd", "--work-email", "o@agency.test")
    refused(r, "staff ID ", said)
    path = tmp_path / "staff.json"
    rows = [{"id": staff_id, "name": "Odd", "work_email": "odd@agency.test"}]
    path.write_text(json.dumps(rows), encoding="utf-8")
    refused(initialised("data", "import", str(path)), "column id: ", said)


def test_a_staff_member_of_an_odd_id_logs_in_with_their_own_passcode(
    cli: Cli, smtp_server_factory: Callable[..., SMTPTestServer]
) -> None:
    server = smtp_server_factory(users={"w@agency.test": "w-pass", "jd@agency.test": "jd-pass"})
    setup_smtp(cli, server)
    r = cli("staff", "add", "W[/]1", "--name", "W", "--work-email", "w@agency.test")
    assert r.exit_code == 0, r.output
    assert cli("staff", "passcode", "JD", "--stdin", input="jd-pass\n").exit_code == 0
    assert cli("staff", "passcode", "W[/]1", "--stdin", input="w-pass\n").exit_code == 0
    r = cli("staff", "test", "W[/]1")
    assert r.exit_code == 0, r.output
    assert [m.login for m in server.messages] == ["w@agency.test"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_characters=","), min_size=1), min_size=2))
def test_secret_names_are_file_names_and_one_per_account(ids: list[str]) -> None:
    """Every account gets a name of safe characters, short enough for any file system;
    two accounts never share one; an ID that was a name of its own keeps it."""
    ids = list(dict.fromkeys(ids))
    for kind, name_of in (
        ("passcode.", passcode_name),
        ("token.microsoft.", lambda a: token_name("microsoft", a)),
    ):
        names = [name_of(a) for a in ids]
        assert len(set(names)) == len(ids)
        for account, name in zip(ids, names, strict=True):
            assert re.fullmatch(r"[A-Za-z0-9_.@+~%,-]{1,200}", name), name
            if re.fullmatch(r"[A-Za-z0-9_.@+-]+", account) and len(kind + account) <= 200:
                assert name == kind + account
            elif not name.startswith(kind + ",,"):
                coded = name.removeprefix(kind + ",")
                assert urllib.parse.unquote(coded, errors="surrogatepass") == account
