"""Bad input to `cpmail data import`: exit 2, one sentence naming where, and nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmail.store import schema
from tests.conftest import DEEP, Cli
from tests.test_data import SAMPLES, engine_of, snapshot, write_rows


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding the sample rows of every table, made once and copied per test."""
    base = tmp_path_factory.mktemp("data-template")
    cli = Cli(base / "home")
    assert cli("init").exit_code == 0
    for t in schema.AGENCY_TABLES:
        r = cli("data", "import", str(write_rows(base / "in", t.name, SAMPLES[t.name], "csv")))
        assert r.exit_code == 0, r.output
    engine_of(base / "home").dispose()
    return base / "home"


@pytest.fixture
def loaded(template: Path, home: Path) -> Cli:
    shutil.copytree(template, home)
    return Cli(home)


def refused(cli: Cli, path: Path, *args: str) -> str:
    """Import ``path``; check exit 2, no output on stdout and no change at all; return stderr."""
    engine = engine_of(cli.home)
    before = snapshot(engine)
    r = cli("data", "import", str(path), *args)
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    assert r.stderr.startswith("cpmail: ") and r.stderr.count("\n") == 1, r.stderr
    assert snapshot(engine) == before
    engine.dispose()
    return r.stderr.removeprefix("cpmail: ").strip()


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# A valid update of an existing row and a valid new row come before each bad
# row, so that "nothing was written" is tested, not just "the bad row was not".
JOBS_HEAD = "id,client_id,title,opened_at\nJ1,C1,Renamed,2026-11-02T09:30\nJ9,C2,New,\n"


def test_bad_date(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "time_off.csv", "staff_id,date\nJD,2027-01-04\nBOSS,2026-13-01\n")
    assert refused(loaded, path) == (
        f"{path}, line 3 (staff_id BOSS, date 2026-13-01), column date: "
        "'2026-13-01' is not a date as YYYY-MM-DD."
    )


@pytest.mark.parametrize("value", ["2026-11-27T25:00", "27/11/2026 09:30", "2026-W48-5", "now"])
def test_bad_timestamp(loaded: Cli, tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "jobs.csv", JOBS_HEAD + f"J10,C1,Bad,{value}\n")
    msg = refused(loaded, path)
    assert msg.startswith(f"{path}, line 4 (id J10), column opened_at: {value!r} is not a date")
    assert "YYYY-MM-DDTHH:MM" in msg


@pytest.mark.parametrize("value", ["12,50", "abc", "NaN", "inf", "1e3", "$5", "1.2.3", "-"])
def test_bad_decimal(loaded: Cli, tmp_path: Path, value: str) -> None:
    path = write(
        tmp_path,
        "time_entries.csv",
        f'id,staff_id,work_date,hours\nT1,JD,2026-11-26,3\nT9,JD,2026-11-27,"{value}"\n',
    )
    assert refused(loaded, path) == (
        f"{path}, line 3 (id T9), column hours: {value!r} is not a number such as 12.50 "
        "(no thousands separators, currency signs or exponents)."
    )


def test_decimal_too_large_for_its_column(loaded: Cli, tmp_path: Path) -> None:
    path = write(
        tmp_path, "time_entries.csv", "id,staff_id,work_date,hours\nT9,JD,2026-11-27,123456789\n"
    )
    msg = refused(loaded, path)
    assert "line 2 (id T9), column hours: '123456789' is too large" in msg


def test_bad_integer_and_boolean(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "billing_lines.csv", "billing_id,line,amount\nB1,1,5\nB1,1.5,5\n")
    msg = refused(loaded, path)
    assert (
        msg
        == f"{path}, line 3 (billing_id B1, line 1.5), column line: '1.5' is not a whole number."
    )
    path = write(tmp_path, "staff.csv", "id,name,active\nJD,Jane,yes\nBOSS,Bo,maybe\n")
    msg = refused(loaded, path)
    assert msg == (
        f"{path}, line 3 (id BOSS), column active: 'maybe' is not true or false (or yes/no, 1/0)."
    )


def test_unknown_column(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", "id,client_id,title,colour\nJ9,C1,New,red\n")
    msg = refused(loaded, path)
    assert msg.startswith(f"{path}, line 1: unknown column 'colour'; the jobs columns are id, ")


def test_missing_header(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", "J9,C1,New\nJ10,C1,Other\n")
    msg = refused(loaded, path)
    assert "line 1: unknown column 'J9'" in msg
    assert "header" in msg


@pytest.mark.parametrize(
    ("name", "text", "first"),
    [
        ("jobs.csv", "ID,Client_ID,Title\nJ9,C1,New\n", "ID"),
        ("jobs.csv", "id,client_id,TITLE\nJ9,C1,New\n", "TITLE"),
        ("clients.json", '[{"Id": "C9", "Name": "New"}]', "Id"),
        ("clients.ndjson", '{"id": "C9", "NAME": "New"}\n', "NAME"),
    ],
)
def test_a_column_named_in_another_case_is_said_so(
    loaded: Cli, tmp_path: Path, name: str, text: str, first: str
) -> None:
    """A header such as ID,Name (as spreadsheets write it) is named for its case, not taken
    for a missing header line."""
    path = write(tmp_path, name, text)
    msg = refused(loaded, path)
    assert f"unknown column {first!r} (column names are in lower case: {first.lower()!r}" in msg
    assert "header line missing" not in msg


def test_duplicate_and_unnamed_columns(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", "id,title,client_id,title\nJ9,A,C1,B\n")
    assert refused(loaded, path) == (
        f"{path}, line 1: column 'title' appears twice; keep one of them."
    )
    path = write(tmp_path, "jobs.csv", "id,,title\nJ9,x,A\n")
    assert "line 1: column 2 has no name" in refused(loaded, path)


def test_empty_key_cell(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", JOBS_HEAD + ",C1,No id,\n")
    assert refused(loaded, path) == (
        f"{path}, line 4, column id: the key is empty; every jobs row needs its id."
    )
    path = write(tmp_path, "time_off.csv", "staff_id,date\nJD,2027-01-04\nJD,\n")
    assert refused(loaded, path) == (
        f"{path}, line 3 (staff_id JD), column date: the key is empty; "
        "every time_off row needs its date."
    )


def test_missing_key_column(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", "client_id,title\nC1,A\n")
    assert refused(loaded, path) == (
        f"{path}, line 1: there is no id column; jobs rows are found by id, so every row needs it."
    )
    path = write(tmp_path, "client_team.csv", "client_id,staff_id\nC1,JD\n")
    assert "there is no role column" in refused(loaded, path)


def test_required_column_empty(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", JOBS_HEAD + "J10,C1,,\n")
    assert refused(loaded, path) == (
        f"{path}, line 4 (id J10), column title: is empty, but this column needs a value."
    )


def test_new_row_without_a_column_it_needs(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", "id,production_status\nJ1,approved\nJ2,done\nJ77,open\n")
    assert refused(loaded, path) == (
        f"{path}, line 4 (id J77), column client_id: this is a new jobs row, which needs a "
        "client_id, and the file has no client_id column."
    )


def test_unknown_foreign_key(loaded: Cli, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "time_entries.csv",
        "id,staff_id,job_id,task_id,work_date,hours\n"
        "T1,JD,J1,K1,2026-11-26,3\n"
        "T8,JD,J1,K2,2026-11-26,1\n"
        "T9,JD,J1,K9,2026-11-26,1\n",
    )
    assert refused(loaded, path) == (
        f"{path}, line 4 (id T9), column task_id: there is no tasks row with id 'K9'; "
        "import tasks first."
    )


def test_diary_party_is_checked_against_the_kind(loaded: Cli, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "diary_entries.csv",
        "id,kind,party_id,entered_at\nDE7,client,C1,2026-11-27T09:00\n"
        "DE8,vendor,C1,2026-11-27T09:00\n",
    )
    assert refused(loaded, path) == (
        f"{path}, line 3 (id DE8), column party_id: there is no vendors row with id 'C1'; "
        "import vendors first."
    )
    path = write(
        tmp_path, "diary_entries.csv", "id,kind,party_id,entered_at\nDE8,person,C1,2026-11-27\n"
    )
    assert "column kind: 'person' is not one of client, vendor" in refused(loaded, path)
    path = write(tmp_path, "diary_entries.csv", "id,party_id\nDE1,C2\n")
    assert "column party_id needs the kind column beside it" in refused(loaded, path)


def test_choice_columns(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "job_costs.csv", "id,job_id,kind,amount\nJC9,J1,refund,5\n")
    assert refused(loaded, path) == (
        f"{path}, line 2 (id JC9), column kind: 'refund' is not one of order, cost."
    )


def test_supervisor_missing_from_database_and_file(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "staff.csv", "id,name,supervisor_id\nA,A,B\nB,B,ZZ\nC,C,A\n")
    assert refused(loaded, path) == (
        f"{path}, line 3 (id B), column supervisor_id: there is no staff row with id 'ZZ', "
        "neither in the database nor in this file."
    )


def test_wrong_number_of_fields(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "clients.csv", "id,name\nC1,Acme\nC9,Too,many\n")
    assert refused(loaded, path) == (
        f"{path}, line 3: 3 fields, but the header has 2 columns; check the commas and quotes "
        "on that line."
    )
    path = write(tmp_path, "clients.csv", "id,name\nC1,Acme\nC9\n")
    assert "line 3: 1 field, but the header has 2 columns" in refused(loaded, path)


def test_unclosed_quote(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "clients.csv", 'id,name\nC1,Acme\nC9,"Open quote\nC10,x\n')
    msg = refused(loaded, path)
    assert msg.startswith(f"{path}, line 3: the file ends inside a quoted field of the row")


def test_not_utf8(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "clients.csv", b"id,name\nC1,Acme\nC9,Caf\xe9 Noir\n")
    assert refused(loaded, path) == f"{path}, line 3: not UTF-8 text; save the file as UTF-8."
    path = write(tmp_path, "clients.json", b'[\n{"id": "C1", "name": "A"},\n{"id": "C\xff"}\n]')
    assert refused(loaded, path) == f"{path}, line 3: not UTF-8 text; save the file as UTF-8."
    path = write(tmp_path, "clients.ndjson", b'{"id": "C1", "name": "A"}\n{"id": "C\xff"}\n')
    assert refused(loaded, path) == f"{path}, line 2: not UTF-8 text; save the file as UTF-8."


def test_utf16_without_its_byte_order_mark_is_said_to_be_no_utf8(
    loaded: Cli, tmp_path: Path
) -> None:
    """It decodes as UTF-8 with a NUL after each letter: it was 'unknown column i\\x00d\\x00'."""
    path = write(tmp_path, "clients.csv", "id,name\nC9,Acme\n".encode("utf-16-le"))
    msg = refused(loaded, path)
    assert msg.startswith(f"{path}, line 1: not UTF-8 text") and "UTF-16" in msg, msg


def test_a_byte_order_mark_is_accepted(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "clients.csv", "\ufeffid,name\r\nC7,Seven\r\n".encode())
    r = loaded("data", "import", str(path))
    assert r.exit_code == 0, r.output
    path = write(tmp_path, "vendors.json", '\ufeff[{"id": "V7", "name": "Seven"}]'.encode())
    r = loaded("data", "import", str(path))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("clients.csv", "", "is empty; a CSV file starts with a header line naming the columns"),
        (
            "clients.csv",
            "\n  \n",
            "is empty; a CSV file starts with a header line naming the columns",
        ),
        ("clients.json", "", "is empty; expected a JSON array of objects"),
        (
            "clients.ndjson",
            "\n\n",
            "is empty; expected one JSON object per line (to empty a table with --replace, "
            "give a JSON file holding [] or a CSV file with only its header)",
        ),
    ],
)
def test_empty_file(loaded: Cli, tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = write(tmp_path, name, content)
    assert refused(loaded, path) == f"{path} {expected}."


def test_unknown_table_missing_file_and_unknown_format(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "customers.csv", "id,name\nC1,A\n")
    msg = refused(loaded, path)
    assert msg.startswith("cannot tell the table from the file name 'customers.csv'")
    assert "staff, time_off" in msg and "calendar_entries" in msg
    msg = refused(loaded, path, "--table", "customers")
    assert msg.startswith("unknown table 'customers'; the tables are staff, time_off, ")
    msg = refused(loaded, tmp_path / "clients.csv")
    assert msg == f"{tmp_path / 'clients.csv'} does not exist; check the name and the folder."
    path = write(tmp_path, "clients.txt", "id,name\nC1,A\n")
    assert "cannot tell the format" in refused(loaded, path)
    assert "unknown format 'xml'" in refused(loaded, path, "--format", "xml")


def test_json_errors(loaded: Cli, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs.json",
        '[\n  {"id": "J1", "title": "Renamed"},\n  {"id": "J9", "client_id": "C1",'
        ' "title": {"en": "x"}}\n]\n',
    )
    assert refused(loaded, path) == (
        f"{path}, item 2 (id J9), column title: a nested object is not allowed here; give text."
    )
    path = write(tmp_path, "jobs.json", '[\n  {"id": "J1", "title": "A"},\n  {"id": "J9",\n]\n')
    assert refused(loaded, path).startswith(f"{path}, line 4: not valid JSON (")
    path = write(tmp_path, "jobs.json", '{"id": "J1", "title": "A"}\n')
    assert "line 1: expected a JSON array of objects" in refused(loaded, path)
    path = write(tmp_path, "jobs.json", '[{"id": "J1", "title": "A"}, "J2"]')
    assert refused(loaded, path).startswith(f"{path}, item 2: 'J2' is not an object")
    path = write(tmp_path, "jobs.json", '[{"id": "J1", "title": "A"}')
    assert "the file ends before the array is closed" in refused(loaded, path)
    path = write(tmp_path, "jobs.json", '[{"id": "J1", "title": "A", "title": "B"}]')
    assert "item 1: column 'title' appears twice" in refused(loaded, path)
    path = write(tmp_path, "jobs.json", '[{"id": "J1", "title": "A"}] []')
    assert "unexpected text after the end of the array" in refused(loaded, path)
    path = write(tmp_path, "staff.json", '[{"id": "JD", "active": "sometimes"}]')
    assert "item 1 (id JD), column active: 'sometimes' is not true or false" in refused(
        loaded, path
    )
    path = write(tmp_path, "staff.json", '[{"id": "JD", "planned_hours": true}]')
    assert "column planned_hours: true is not a number" in refused(loaded, path)


def test_ndjson_errors(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "clients.ndjson", '{"id": "C1", "name": "A"}\n\n{"id": "C9", "name": \n')
    assert refused(loaded, path).startswith(f"{path}, line 3: not valid JSON (")
    path = write(tmp_path, "clients.ndjson", '{"id": "C1", "name": "A"}\n{"id": "C9"}\n')
    assert refused(loaded, path) == (
        f"{path}, line 2 (id C9), column name: this is a new clients row, which needs a name, "
        "and the file has no name column."
    )
    path = write(tmp_path, "clients.ndjson", '{"id": "C1", "name": "A"}\n[1, 2]\n')
    assert "line 2: a list is not an object" in refused(loaded, path)


def test_first_error_in_the_file_is_the_one_reported(loaded: Cli, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "time_entries.csv",
        "id,staff_id,work_date,hours\nT7,NOBODY,2026-11-26,1\nT8,JD,2026-11-26,x\n",
    )
    assert "line 2 (id T7), column staff_id: there is no staff row with id 'NOBODY'" in refused(
        loaded, path
    )


def test_a_bad_row_after_many_batches_writes_nothing(loaded: Cli, tmp_path: Path) -> None:
    lines = ["id,staff_id,job_id,task_id,work_date,hours,amount"]
    lines += [f"TT{i:05d},JD,J1,K1,2026-11-26,0.25,10.00" for i in range(12_000)]
    lines.append("T1,JD,J1,K1,2026-11-26,0.25,10.00")  # an update of an existing row
    bad = [*lines, "TT99999,JD,J1,K1,2026-11-26,0.25,ten"]
    path = write(tmp_path, "time_entries.csv", "\n".join(bad) + "\n")
    assert refused(loaded, path) == (
        f"{path}, line 12003 (id TT99999), column amount: 'ten' is not a number such as 12.50 "
        "(no thousands separators, currency signs or exponents)."
    )
    bad = [*lines, "TT99999,JD,J1,K404,2026-11-26,0.25,1"]
    path = write(tmp_path, "time_entries.csv", "\n".join(bad) + "\n")
    assert "line 12003 (id TT99999), column task_id: there is no tasks row" in refused(loaded, path)


def test_a_missing_file_is_said_before_anything_else(loaded: Cli, tmp_path: Path) -> None:
    for name in ("missing.csv", "clients.txt", "missing"):
        assert refused(loaded, tmp_path / name) == (
            f"{tmp_path / name} does not exist; check the name and the folder."
        )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_said_so(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "clients.csv", "id,name\nC1,A\n")
    path.chmod(0)
    assert refused(loaded, path) == (
        f"cannot read {path}: permission denied; check the file's owner and mode."
    )


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("staff", "work_email", "a@b.test,c@d.test"),
        ("staff", "work_email", "Name <a@agency.test>"),
        ("staff", "username", "a b@agency.test"),
        ("staff", "username", "no-at-sign"),
        ("clients", "billing_email", "ap@"),
        ("vendors", "email", "x" * 300 + "@print.test"),
    ],
)
def test_an_address_column_holds_one_valid_address(
    loaded: Cli, tmp_path: Path, table: str, column: str, value: str
) -> None:
    path = write(tmp_path, f"{table}.csv", f'id,name,{column}\nN1,New,"{value}"\n')
    msg = refused(loaded, path)
    assert msg.startswith(f"{path}, line 2 (id N1), column {column}: "), msg
    assert "address" in msg


def test_addresses_are_stored_as_given_international_ones_too(loaded: Cli, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "staff.csv",
        "id,name,work_email,username\n"
        "U1,Ünal, üser@agency.test ,\n"
        "U2,Bücher,user@bücher.example,User@Agency.Test\n",
    )
    r = loaded("data", "import", str(path))
    assert r.exit_code == 0, r.output
    engine = engine_of(loaded.home)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, work_email, username FROM staff WHERE id LIKE 'U%' ORDER BY id")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("U1", "üser@agency.test", None),
        ("U2", "user@bücher.example", "User@Agency.Test"),
    ]


def test_json_nested_too_deeply_names_the_item_key_and_column(
    loaded: Cli, tmp_path: Path, collection_depths: list[int]
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    path = write(
        tmp_path, "clients.json", f'[{{"id": "C1", "name": "A"}}, {{"id": "C9", "name": {deep}}}]'
    )
    assert refused(loaded, path) == (
        f"{path}, item 2 (id C9), column name: a value nested this deeply is not allowed "
        "here; give text."
    )
    path = write(
        tmp_path, "clients.ndjson", f'{{"id": "C1", "name": "A"}}\n{{"name": {deep}, "id": "C9"}}\n'
    )
    assert refused(loaded, path) == (
        f"{path}, line 2 (id C9), column name: a value nested this deeply is not allowed "
        "here; give text."
    )
    path = write(tmp_path, "clients.json", f"[{deep}]")
    assert refused(loaded, path) == (
        f"{path}, item 1: a list is not an object; each row must be an object such as "
        '{"id": "J1", …}.'
    )
    assert max(collection_depths) < DEEP, max(collection_depths)  # (see the fixture)


def test_a_number_of_thousands_of_digits_names_the_row_and_column(
    loaded: Cli, tmp_path: Path
) -> None:
    digits = "9" * 5000
    clipped = "9" * 40 + "… (5000 characters)"
    path = write(
        tmp_path, "billing_lines.json", f'[{{"billing_id": "B1", "line": 1, "quantity": {digits}}}]'
    )
    assert refused(loaded, path) == (
        f"{path}, item 1 (billing_id B1, line 1), column quantity: {clipped} is too large "
        "(at most 8 digits before the point)."
    )
    path = write(tmp_path, "billing_lines.ndjson", f'{{"billing_id": "B1", "line": {digits}}}\n')
    msg = refused(loaded, path)
    assert msg.startswith(f"{path}, line 1 (billing_id B1, line {clipped}), column line: ")
    assert msg.endswith("is too large for a whole number here.")
    path = write(tmp_path, "billing_lines.csv", f"billing_id,line\nB1,{digits}\n")
    msg = refused(loaded, path)
    assert msg.startswith(f"{path}, line 2 (billing_id B1, line {clipped}), column line: ")
    assert msg.endswith("is too large for a whole number here.")


def test_a_file_without_line_breaks_is_refused_early_in_bounded_memory(
    loaded: Cli, tmp_path: Path
) -> None:
    """A file of 64 MB with no line break: refused after reading the first 8 MB of it."""
    path = tmp_path / "clients.csv"
    with path.open("wb") as f:
        f.write(b"id,name\nC1,")
        for _ in range(64):
            f.write(b"x" * 2**20)
    assert refused(loaded, path) == (
        f"{path}, line 2: the line is longer than 8 MB, which no row of agency data is; "
        "check that this is the right file and that it has line breaks."
    )
    path = write(tmp_path, "clients.csv", 'id,name\nC1,"' + "x\n" * 5_000_000)
    assert refused(loaded, path) == (
        f"{path}, line 2: a field is longer than 8 MB, which no cell of agency data is; "
        "check for a quote that is opened and never closed."
    )
    path = tmp_path / "clients.json"
    with path.open("wb") as f:
        f.write(b'[{"id": "C1", "name": "')
        for _ in range(16):
            f.write(b"x" * 2**20)
    assert refused(loaded, path) == (
        f"{path}, line 1: item 1 is longer than 8 MB (or never closed), which no row of "
        "agency data is; check the file's brackets and quotes."
    )


@pytest.mark.parametrize(
    ("table", "head", "row", "column"),
    [
        ("diary_entries", "id,entered_at,notify", "DE9,2026-11-27T09:00", "notify"),
        ("homebase_entries", "id,entered_at,notify", "HB9,2026-11-27T09:00", "notify"),
        ("job_status_codes", "code,kind,notify", "done,production", "notify"),
        (
            "calendar_entries",
            "id,title,starts_at,attendees",
            "CE9,Review,2026-12-01T09:00",
            "attendees",
        ),
    ],
)
@pytest.mark.parametrize(
    "item", ["email:evil@attacker.example", "evil@attacker.example", "EMAIL:x@y.example"]
)
def test_a_list_of_people_refuses_an_e_mail_address(
    loaded: Cli, tmp_path: Path, table: str, head: str, row: str, column: str, item: str
) -> None:
    """Data names staff; an outside recipient comes only from the settings."""
    path = write(tmp_path, f"{table}.csv", f'{head}\n{row},"JD,{item}"\n')
    said = refused(loaded, path)
    assert "line 2" in said and f"column {column}: '{item}' is an e-mail address" in said, said
    key, *cells = row.split(",")
    record: dict[str, object] = dict(zip(head.split(","), [key, *cells, ""], strict=True))
    record[column] = ["JD", item]
    path = write(tmp_path, f"{table}.json", json.dumps([record]))
    assert f"column {column}: '{item}' is an e-mail address" in refused(loaded, path)


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("staff.csv", "id,name,planned_hours\nZZ,Zed,-5\n", "'-5' is not hours from 0 to 24"),
        ("staff.csv", "id,name,planned_hours\nZZ,Zed,25\n", "'25' is not hours from 0 to 24"),
        ("staff.csv", "id,name,workdays\nZZ,Zed,funday\n", "column workdays: workdays 'funday'"),
        ("staff_opt_out.csv", "staff_id,event\nJD,bogus\n", "'bogus' is not an event"),
        (
            "client_team.csv",
            "client_id,staff_id,role,events\nC1,JD,ae,job-opened,bogus\n",
            "",  # a field too many: refused for that (CSV quoting)
        ),
        (
            "client_team.csv",
            'client_id,staff_id,role,events\nC1,JD,ae,"job-opened,bogus"\n',
            "'bogus' is not an event",
        ),
    ],
)
def test_import_takes_what_staff_commands_take(
    loaded: Cli, tmp_path: Path, name: str, text: str, said: str
) -> None:
    """The same rules as `staff add`, `staff edit` and `staff mute`: hours, workdays, events."""
    assert said in refused(loaded, write(tmp_path, name, text))


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        # rounded to the column's 2 places it would have 13 digits before the point
        (
            "bank_accounts.csv",
            "id,name,balance\nBA9,Big,999999999999.995\n",
            "column balance: '999999999999.995' is too large (at most 12 digits before the point)",
        ),
        # digits of other scripts, which Python's int() and Decimal() would take
        ("bank_accounts.csv", "id,name,balance\nBA9,Big,１２.５０\n", "column balance"),
        ("billing_lines.csv", "billing_id,line,description\nB1,٣,x\n", "column line"),
    ],
)
def test_a_number_past_its_column_or_in_other_digits_is_refused(
    loaded: Cli, tmp_path: Path, name: str, content: str, said: str
) -> None:
    path = write(tmp_path, name, content)
    assert said in refused(loaded, path)


def test_json_rows_refer_forward_whatever_columns_each_names(loaded: Cli, tmp_path: Path) -> None:
    for name, text in (
        (
            "staff.json",
            '[{"id": "X1", "name": "One", "supervisor_id": "X2"}, {"id": "X2", "name": "Two"}]',
        ),
        (
            "staff.ndjson",
            '{"id": "Y1", "name": "One", "supervisor_id": "Y2"}\n{"id": "Y2", "name": "Two"}\n',
        ),
    ):
        r = loaded("data", "import", str(write(tmp_path, name, text)))
        assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("row", "said"),
    [
        (
            "CE9,Late,2026-12-02T15:00,2026-12-02T14:00,",
            "column ends_at: ends_at '2026-12-02T14:00' is before starts_at "
            "'2026-12-02T15:00', so the entry would end before it starts.",
        ),
        (
            "CE9,Late,2026-12-02T15:00,,2026-12-02T16:00",
            "column starts_at: starts_at '2026-12-02T15:00' is before remind_at "
            "'2026-12-02T16:00', so the reminder would come after the start.",
        ),
    ],
)
def test_a_calendar_entry_whose_times_are_out_of_order_is_refused(
    loaded: Cli, tmp_path: Path, row: str, said: str
) -> None:
    """An entry ending before it starts, or reminded of after it began, is a mistake in the file:
    the invitation would last no time, the reminder would never go."""
    head = (
        "id,title,starts_at,ends_at,remind_at\n"
        "CE1,Moved,2026-11-30T11:00,2026-11-30T12:00,2026-11-30T10:00\n"
        "CE8,New,2026-12-01T09:00,2026-12-01T09:00,\n"
    )
    path = write(tmp_path, "calendar_entries.csv", head + row + "\n")
    assert refused(loaded, path) == f"{path}, line 4 (id CE9), {said}"


def test_a_calendar_entry_out_of_order_in_json_is_refused_too(loaded: Cli, tmp_path: Path) -> None:
    rows = [
        {
            "id": "CE9",
            "title": "Late",
            "starts_at": "2026-12-02T15:00",
            "ends_at": "2026-12-02T14:00",
        }
    ]
    path = write(tmp_path, "calendar_entries.json", json.dumps(rows))
    assert "so the entry would end before it starts" in refused(loaded, path)


@pytest.mark.parametrize(
    ("cell", "said"),
    [
        ('"task-overdue,task-due-today"', "names several events; give each its own row"),
        ('" , "', "names several events; give each its own row"),
        ("task-overdoo", "is not an event"),
    ],
)
def test_a_muted_event_is_one_event_a_row(
    loaded: Cli, tmp_path: Path, cell: str, said: str
) -> None:
    """A list in staff_opt_out.event would be kept as one name that matches no event:
    the person would stay unmuted while `staff list` showed them muted."""
    path = write(tmp_path, "staff_opt_out.csv", f"staff_id,event\nJD,job-opened\nBOSS,{cell}\n")
    msg = refused(loaded, path)
    assert msg.startswith(f"{path}, line 3 (staff_id BOSS") and "column event: " in msg, msg
    assert said in msg, msg


def test_json_numbers_are_kept_as_written_and_nan_is_not_json(loaded: Cli, tmp_path: Path) -> None:
    """A JSON number in a text column is its text as written, not Python's rewriting of it."""
    text = (
        '[{"id": 1e3, "name": 1.50}, {"id": -0, "name": 12},\n'
        ' {"id": 10000000000000000000001, "name": 2.5e-3}]'
    )
    r = loaded("data", "import", str(write(tmp_path, "clients.json", text)))
    assert r.exit_code == 0, r.output
    engine = engine_of(loaded.home)
    with engine.connect() as conn:
        got = dict(conn.execute(sa.text("SELECT id, name FROM clients")).tuples().all())
    engine.dispose()
    assert {k: got.get(k) for k in ("1e3", "-0", "10000000000000000000001")} == {
        "1e3": "1.50",
        "-0": "12",
        "10000000000000000000001": "2.5e-3",
    }
    for bad, name in (
        ('[{"id": "C1", "name": "A"},\n {"id": "C9", "name": NaN}]', "NaN"),
        ('[{"id": "C9", "name": "B", "billing_email": -Infinity}]', "-Infinity"),
    ):
        msg = refused(loaded, write(tmp_path, "clients.json", bad))
        assert f"{name} is not JSON" in msg, msg


def test_an_error_is_one_line_whatever_the_key_holds(loaded: Cli, tmp_path: Path) -> None:
    """A key with a line break or a terminal escape is shown escaped: the error stays one line
    and the terminal is not recoloured."""
    path = write(tmp_path, "clients.csv", 'id,name\nC1,Acme\n"K\nM\x1b[31mRED",\n')
    msg = refused(loaded, path)
    assert "\x1b" not in msg and "(id K\\nM\\x1b[31mRED)" in msg, msg


def test_old_mac_line_ends_are_named_and_a_line_of_spaces_is_blank(
    loaded: Cli, tmp_path: Path
) -> None:
    path = write(tmp_path, "clients.csv", "id,name\rC1,Acme\rC9,New\r")
    assert "carriage return alone" in refused(loaded, path)
    path = write(tmp_path, "clients.csv", "id,name\nC1,Acme\n   \nC9,New\n")
    r = loaded("data", "import", str(path))
    assert r.exit_code == 0 and "2 rows" in r.stdout, r.output


@pytest.mark.parametrize("blank", ["   ", "\t", " \t ", ""])
@pytest.mark.parametrize("replace", [[], ["--replace", "--dry-run"]])
def test_a_line_of_spaces_is_blank_under_a_one_column_header_too(
    loaded: Cli, tmp_path: Path, blank: str, replace: list[str]
) -> None:
    """A file of keys alone (the rows to keep, with --replace) has one column: its blank
    lines are skipped as in any other file, not read as a row with an empty key."""
    path = write(tmp_path, "clients.csv", f"id\nC1\n{blank}\nC2\n{blank}\n")
    r = loaded("data", "import", str(path), *replace)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("clients: 2 rows (0 new, 0 updated, 2 unchanged"), r.output


@pytest.mark.parametrize(
    ("cell", "said"),
    [('"X,Y"', "holds a comma"), ('"A\nB"', "holds a line break"), ('"A\x07B"', "control")],
)
def test_a_staff_id_that_no_list_could_name_is_refused(
    loaded: Cli, tmp_path: Path, cell: str, said: str
) -> None:
    """Lists of staff (notify, attendees) are comma-separated: an ID with a comma could
    never be named in one. Other IDs an agency system uses (a UUID, a space) are kept."""
    head = "id,name,work_email\nJD,Jo Doe,jd@agency.test\n"
    path = write(tmp_path, "staff.csv", head + f"{cell},Odd,odd@agency.test\n")
    msg = refused(loaded, path)
    assert "column id: " in msg and said in msg, msg
    ok = write(
        tmp_path,
        "staff.csv",
        "id,name,work_email\n3f2504e0-4f89-11d3-9a0c-0305e82c3301,Uu,uu@agency.test\n"
        "A B,Ab,ab@agency.test\n",
    )
    assert loaded("data", "import", str(ok)).exit_code == 0


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_a_cell_shown_in_an_error_is_always_one_printable_line(text: str) -> None:
    """Whatever a key or cell holds, what an error shows of it breaks no line and sends
    no control character to the terminal."""
    from cpmail.dataio.converters import _clip

    shown = _clip(text)
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", shown), repr(shown)


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_a_header_line_repeated_inside_the_file_is_refused(
    loaded: Cli, tmp_path: Path, bom: str
) -> None:
    """Two files joined into one (`cat a.csv b.csv`): the second header is no client."""
    path = write(
        tmp_path, "clients.csv", f"id,name\nC01,Acme Foods\n{bom}id,name\nC02,Bluebird Airlines\n"
    )
    assert refused(loaded, path) == (
        f"{path}, line 3: repeats the header line (two files joined into one?); remove it, "
        "or import the files one by one."
    )


@pytest.mark.parametrize("char", ["\ufeff", "\u200b", "\u2060"])
def test_a_key_with_a_character_that_shows_as_nothing_is_refused(
    loaded: Cli, tmp_path: Path, char: str
) -> None:
    """ "C01" and "C01" followed by a zero-width space would be two clients that look one."""
    path = write(tmp_path, "clients.csv", f"id,name\nC01{char},Acme again\n")
    said = refused(loaded, path)
    assert said.startswith(f"{path}, line 2") and f"U+{ord(char):04X}" in said, said
    assert "shows as nothing" in said


def test_a_required_cell_of_spaces_is_empty(loaded: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.csv", 'id,client_id,title\nJ1001,C01,"   "\n')
    said = refused(loaded, path)
    assert said.startswith(f"{path}, line 2 (id J1001), column title:"), said


def test_a_last_row_without_a_line_break_is_read_and_one_cut_in_a_quote_is_refused(
    loaded: Cli, tmp_path: Path
) -> None:
    """Files typed by hand often end without a line break: their last row is whole."""
    path = write(tmp_path, "clients.csv", "id,name\nX1,Acme\nX2,Bolt")
    r = loaded("data", "import", str(path))
    assert r.exit_code == 0, r.output
    engine = engine_of(loaded.home)
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT id, name FROM clients WHERE id LIKE 'X%' ORDER BY id"))
        assert [tuple(row) for row in got] == [("X1", "Acme"), ("X2", "Bolt")]
    engine.dispose()
    path = write(tmp_path, "clients.csv", 'id,name\nX3,Acme\nX4,"Bolt, and')
    said = refused(loaded, path)
    assert said.startswith(f"{path}, line 3: the file ends inside a quoted field"), said
