"""`cpmail data import|export|tables`: every table, every format, upsert, round trip, history."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cpmail import dataio
from cpmail.errors import InputError
from cpmail.settings import Settings
from cpmail.store import make_engine, schema
from tests.conftest import Cli

d = dt.date
ts = dt.datetime

# Two rows for every agency table, as the database gives them back. Parents come
# before children (schema.AGENCY_TABLES order), and the staff file lists the
# supervisor after the person who reports to them.
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "staff": [
        {
            "id": "JD",
            "name": "Jane Doe",
            "work_email": "jane@agency.test",
            "username": "jd@agency.test",
            "supervisor_id": "BOSS",
            "planned_hours": D("8.00"),
            "workdays": "mon-fri",
            "role": "ae",
            "access": "cash-flow,reports",
            "active": True,
        },
        {
            "id": "BOSS",
            "name": "Bo Ss",
            "work_email": "boss@agency.test",
            "username": None,
            "supervisor_id": None,
            "planned_hours": D("7.50"),
            "workdays": "mon-thu",
            "role": "production",
            "access": None,
            "active": False,
        },
    ],
    "time_off": [
        {"staff_id": "JD", "date": d(2026, 12, 24)},
        {"staff_id": "BOSS", "date": d(2026, 12, 31)},
    ],
    "staff_opt_out": [
        {"staff_id": "JD", "event": "task-overdue"},
        {"staff_id": "JD", "event": "missing-time"},
    ],
    "clients": [
        {"id": "C1", "name": "Acme, Inc.", "billing_email": "ap@acme.test"},
        {"id": "C2", "name": 'Béta "Quoted" Ltd', "billing_email": None},
    ],
    "vendors": [
        {"id": "V1", "name": "Print Shop", "email": "orders@print.test"},
        {"id": "V2", "name": "Photo Lab", "email": None},
    ],
    "client_team": [
        {"client_id": "C1", "staff_id": "JD", "role": "ae", "events": "job-opened,status-changed"},
        {"client_id": "C1", "staff_id": "BOSS", "role": "production", "events": None},
    ],
    "job_status_codes": [
        {"code": "open", "kind": "production", "description": "Open", "notify": "JD,BOSS"},
        {"code": "invoiced", "kind": "billing", "description": None, "notify": None},
    ],
    "jobs": [
        {
            "id": "J1",
            "client_id": "C1",
            "title": "Spring campaign",
            "opened_at": ts(2026, 11, 2, 9, 30),
            "production_status": "open",
            "billing_status": None,
        },
        {
            "id": "J2",
            "client_id": "C2",
            "title": "Logo",
            "opened_at": None,
            "production_status": None,
            "billing_status": "invoiced",
        },
    ],
    "job_status_history": [
        {
            "id": "H1",
            "job_id": "J1",
            "field": "production_status",
            "old_value": None,
            "new_value": "open",
            "changed_at": ts(2026, 11, 3, 8, 0, 15),
            "changed_by": "JD",
        },
        {
            "id": "H2",
            "job_id": "J2",
            "field": "billing_status",
            "old_value": "open",
            "new_value": "invoiced",
            "changed_at": ts(2026, 11, 4, 17, 45),
            "changed_by": None,
        },
    ],
    "tasks": [
        {
            "id": "K1",
            "job_id": "J1",
            "name": "Layout",
            "assignee_id": "JD",
            "due_date": d(2026, 11, 30),
            "completed_at": None,
            "budget_amount": D("1500.00"),
            "estimated_hours": D("12.50"),
        },
        {
            "id": "K2",
            "job_id": "J2",
            "name": "Sketches",
            "assignee_id": None,
            "due_date": None,
            "completed_at": ts(2026, 11, 20, 16, 5),
            "budget_amount": None,
            "estimated_hours": None,
        },
    ],
    "time_entries": [
        {
            "id": "T1",
            "staff_id": "JD",
            "job_id": "J1",
            "task_id": "K1",
            "work_date": d(2026, 11, 26),
            "hours": D("2.25"),
            "amount": D("281.25"),
        },
        {
            "id": "T2",
            "staff_id": "BOSS",
            "job_id": "J2",
            "task_id": None,
            "work_date": d(2026, 11, 25),
            "hours": D("1.00"),
            "amount": None,
        },
    ],
    "job_costs": [
        {
            "id": "JC1",
            "job_id": "J1",
            "task_id": "K1",
            "kind": "order",
            "amount": D("99.99"),
            "entered_by": "JD",
            "entered_at": ts(2026, 11, 24, 10, 0),
        },
        {
            "id": "JC2",
            "job_id": "J2",
            "task_id": None,
            "kind": "cost",
            "amount": D("-5.00"),
            "entered_by": None,
            "entered_at": None,
        },
    ],
    "budget_alerts": [
        {
            "id": "BA1",
            "job_id": "J1",
            "task_id": "K1",
            "source": "estimate",
            "message": "80% of the budget is used",
            "entered_by": "JD",
            "entered_at": ts(2026, 11, 25, 11, 0),
        },
        {
            "id": "BA2",
            "job_id": "J2",
            "task_id": None,
            "source": None,
            "message": None,
            "entered_by": None,
            "entered_at": ts(2026, 11, 26, 12, 0),
        },
    ],
    "billings": [
        {
            "id": "B1",
            "job_id": "J1",
            "client_id": "C1",
            "number": "INV-1001",
            "amount": D("1200.00"),
            "created_at": ts(2026, 11, 20, 9, 0),
            "due_date": d(2026, 12, 20),
        },
        {
            "id": "B2",
            "job_id": None,
            "client_id": "C2",
            "number": None,
            "amount": D("0.50"),
            "created_at": ts(2026, 11, 21, 9, 0),
            "due_date": None,
        },
    ],
    "billing_lines": [
        {
            "billing_id": "B1",
            "line": 1,
            "description": "Design",
            "quantity": D("10.00"),
            "rate": D("100.00"),
            "amount": D("1000.00"),
        },
        {
            "billing_id": "B1",
            "line": 2,
            "description": "Printing",
            "quantity": None,
            "rate": None,
            "amount": D("200.00"),
        },
    ],
    "payments": [
        {
            "id": "P1",
            "client_id": "C1",
            "billing_id": "B1",
            "amount": D("600.00"),
            "received_at": ts(2026, 11, 26, 14, 0),
        },
        {
            "id": "P2",
            "client_id": "C2",
            "billing_id": None,
            "amount": D("0.50"),
            "received_at": ts(2026, 11, 27, 8, 0),
        },
    ],
    "estimates": [
        {"id": "E1", "job_id": "J1", "created_at": ts(2026, 11, 1, 9, 0)},
        {"id": "E2", "job_id": "J2", "created_at": None},
    ],
    "estimate_lines": [
        {
            "estimate_id": "E1",
            "line": 1,
            "description": "Concepts",
            "quantity": D("5.00"),
            "rate": D("120.00"),
            "amount": D("600.00"),
        },
        {
            "estimate_id": "E2",
            "line": 1,
            "description": None,
            "quantity": None,
            "rate": None,
            "amount": None,
        },
    ],
    "purchase_orders": [
        {
            "id": "PO1",
            "job_id": "J1",
            "vendor_id": "V1",
            "created_at": ts(2026, 11, 10, 9, 0),
            "due_date": d(2026, 11, 30),
        },
        {"id": "PO2", "job_id": None, "vendor_id": "V2", "created_at": None, "due_date": None},
    ],
    "po_lines": [
        {
            "po_id": "PO1",
            "line": 1,
            "description": "Posters",
            "quantity": D("500.00"),
            "rate": D("0.40"),
            "amount": D("200.00"),
        },
        {
            "po_id": "PO1",
            "line": 2,
            "description": "Delivery",
            "quantity": D("1.00"),
            "rate": D("25.00"),
            "amount": D("25.00"),
        },
    ],
    "vendor_invoices": [
        {
            "id": "VI1",
            "vendor_id": "V1",
            "amount": D("300.00"),
            "due_date": d(2026, 12, 1),
            "paid_at": ts(2026, 11, 28, 10, 0),
        },
        {"id": "VI2", "vendor_id": "V2", "amount": D("0.01"), "due_date": None, "paid_at": None},
    ],
    "bank_accounts": [
        {"id": "BK1", "name": "Operating", "balance": D("25000.00"), "as_of": d(2026, 11, 26)},
        {"id": "BK2", "name": "Payroll", "balance": D("-12.34"), "as_of": None},
    ],
    "diary_entries": [
        {
            "id": "DE1",
            "kind": "client",
            "party_id": "C1",
            "subject": "Call about the launch",
            "body": "Line one, with a comma\nLine two",
            "entered_by": "JD",
            "entered_at": ts(2026, 11, 26, 15, 30),
            "notify": "JD,BOSS",
        },
        {
            "id": "DE2",
            "kind": "vendor",
            "party_id": "V1",
            "subject": None,
            "body": None,
            "entered_by": None,
            "entered_at": ts(2026, 11, 26, 16, 0),
            "notify": None,
        },
    ],
    "homebase_entries": [
        {
            "id": "HB1",
            "subject": "Office closed",
            "body": "Friday",
            "entered_by": "BOSS",
            "entered_at": ts(2026, 11, 25, 9, 0),
            "notify": "JD",
        },
        {
            "id": "HB2",
            "subject": None,
            "body": None,
            "entered_by": None,
            "entered_at": ts(2026, 11, 25, 10, 0),
            "notify": None,
        },
    ],
    "change_orders": [
        {
            "id": "CO1",
            "job_id": "J1",
            "description": "Extra poster size",
            "amount": D("150.00"),
            "entered_by": "JD",
            "entered_at": ts(2026, 11, 26, 9, 15),
        },
        {
            "id": "CO2",
            "job_id": "J2",
            "description": None,
            "amount": None,
            "entered_by": None,
            "entered_at": ts(2026, 11, 26, 9, 16),
        },
    ],
    "calendar_entries": [
        {
            "id": "CE1",
            "title": "Client review",
            "starts_at": ts(2026, 11, 30, 10, 0),
            "ends_at": ts(2026, 11, 30, 11, 0),
            "remind_at": ts(2026, 11, 29, 9, 0),
            "location": "Room 2",
            "notes": "Bring proofs",
            "attendees": "JD,BOSS",
        },
        {
            "id": "CE2",
            "title": "Planning",
            "starts_at": ts(2026, 12, 1, 9, 0),
            "ends_at": None,
            "remind_at": None,
            "location": None,
            "notes": None,
            "attendees": None,
        },
    ],
}


# ---------------------------------------------------------------- writing files


def csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%dT%H:%M" if not v.second else "%Y-%m-%d %H:%M:%S")
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def csv_text(rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> str:
    rows = list(rows)
    columns = columns or list(rows[0])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([csv_cell(row.get(c)) for c in columns])
    return out.getvalue()


def json_value(column: str, v: Any) -> Any:
    if isinstance(v, D):
        return float(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    if column in dataio.LIST_COLUMNS and isinstance(v, str):
        return v.split(",")  # JSON may give a list where CSV has "A,B"
    return v


def json_objects(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: json_value(k, v) for k, v in row.items()} for row in rows]


def write_rows(folder: Path, table: str, rows: list[dict[str, Any]], fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{table}.{fmt}"
    if fmt == "csv":
        path.write_text(csv_text(rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(json_objects(rows), indent=2), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(o) + "\n" for o in json_objects(rows)), encoding="utf-8")
    return path


# ---------------------------------------------------------------- reading back


def engine_of(home: Path) -> sa.Engine:
    return make_engine(Settings.load(home).db_url)


def table_rows(engine: sa.Engine, table: str) -> list[dict[str, Any]]:
    t = dataio.get_table(table)
    with engine.connect() as conn:
        shown = [t.c[c.name] for c in dataio.columns_of(t)]  # not cpmail's own columns
        q = sa.select(*shown).order_by(*t.primary_key.columns)
        return [dict(r._mapping) for r in conn.execute(q)]


def by_key(table: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    keys = dataio.key_columns(dataio.get_table(table))
    return sorted((dict(r) for r in rows), key=lambda r: tuple(r[k] for k in keys))


def snapshot(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    return {t.name: table_rows(engine, t.name) for t in schema.AGENCY_TABLES}


def load_samples(cli: Cli, folder: Path, fmt: str = "csv", upto: str | None = None) -> None:
    """Import the samples of every table (up to and including ``upto``)."""
    for t in schema.AGENCY_TABLES:
        path = write_rows(folder, t.name, SAMPLES[t.name], fmt)
        r = cli("data", "import", str(path))
        assert r.exit_code == 0, r.output
        if t.name == upto:
            return


# ---------------------------------------------------------------- tests


def test_samples_cover_every_table_and_column() -> None:
    assert set(SAMPLES) == set(schema.AGENCY_TABLE_NAMES)
    for t in schema.AGENCY_TABLES:
        for row in SAMPLES[t.name]:
            assert list(row) == [c.name for c in dataio.columns_of(t)], t.name


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_import_every_table_and_read_it_back(
    initialised: Cli, home: Path, tmp_path: Path, fmt: str
) -> None:
    for t in schema.AGENCY_TABLES:
        path = write_rows(tmp_path / "in", t.name, SAMPLES[t.name], fmt)
        r = initialised("data", "import", str(path), "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout) == {
            "table": t.name,
            "file": str(path),
            "rows": 2,
            "new": 2,
            "updated": 0,
            "unchanged": 0,
            "deleted": 0,
            "status_changes": 0,
        }
    engine = engine_of(home)
    for t in schema.AGENCY_TABLES:
        assert table_rows(engine, t.name) == by_key(t.name, SAMPLES[t.name]), t.name


def test_table_and_format_options_override_the_file_name(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "export-2026.txt"
    path.write_text(json.dumps(json_objects(SAMPLES["clients"])), encoding="utf-8")
    r = initialised("data", "import", str(path), "--table", "clients", "--format", "json")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "clients: 2 rows (2 new, 0 updated)"
    assert table_rows(engine_of(home), "clients") == by_key("clients", SAMPLES["clients"])
    jsonl = tmp_path / "vendors.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps(o) for o in json_objects(SAMPLES["vendors"])) + "\n\n",
        encoding="utf-8",
    )
    r = initialised("data", "import", str(jsonl))
    assert r.exit_code == 0, r.output
    assert table_rows(engine_of(home), "vendors") == by_key("vendors", SAMPLES["vendors"])


def test_second_import_updates_without_duplicates(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    load_samples(initialised, tmp_path / "in", upto="clients")
    path = tmp_path / "clients.csv"
    path.write_text(
        "id,name,billing_email\nC1,Acme Corp,billing@acme.test\nC3,Gamma,\n", encoding="utf-8"
    )
    r = initialised("data", "import", str(path))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "clients: 2 rows (1 new, 1 updated)"
    r = initialised("data", "import", str(path), "--json")
    assert json.loads(r.stdout)["new"] == 0
    assert json.loads(r.stdout)["updated"] == 0
    assert json.loads(r.stdout)["unchanged"] == 2
    r = initialised("data", "import", str(path))
    assert r.stdout.strip() == "clients: 2 rows (0 new, 0 updated, 2 unchanged)"
    assert table_rows(engine_of(home), "clients") == [
        {"id": "C1", "name": "Acme Corp", "billing_email": "billing@acme.test"},
        {"id": "C2", "name": 'Béta "Quoted" Ltd', "billing_email": None},
        {"id": "C3", "name": "Gamma", "billing_email": None},
    ]


def test_a_subset_of_columns_keeps_the_others(initialised: Cli, home: Path, tmp_path: Path) -> None:
    load_samples(initialised, tmp_path / "in", upto="staff")
    path = tmp_path / "staff.csv"
    path.write_text("id,role\nBOSS,creative\n", encoding="utf-8")
    r = initialised("data", "import", str(path))
    assert r.exit_code == 0, r.output
    boss = table_rows(engine_of(home), "staff")[0]
    assert boss == {**SAMPLES["staff"][1], "role": "creative"}


def test_a_new_row_takes_the_defaults_of_missing_columns(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "staff.csv"
    path.write_text("id,name\nNEW,New Person\n", encoding="utf-8")
    r = initialised("data", "import", str(path))
    assert r.exit_code == 0, r.output
    (row,) = table_rows(engine_of(home), "staff")
    assert row["planned_hours"] == D("0")
    assert row["workdays"] == "mon-fri"
    assert row["active"] is True
    assert row["supervisor_id"] is None


def test_the_same_key_twice_in_a_file_keeps_the_last(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "clients.csv"
    path.write_text("id,name\nC1,First\nC1,Second\n", encoding="utf-8")
    r = initialised("data", "import", str(path), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) | {"file": ""} == {
        "table": "clients",
        "file": "",
        "rows": 2,
        "new": 1,
        "updated": 1,
        "unchanged": 0,
        "deleted": 0,
        "status_changes": 0,
    }
    assert table_rows(engine_of(home), "clients") == [
        {"id": "C1", "name": "Second", "billing_email": None}
    ]


def test_link_tables_upsert_by_their_key_columns(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    load_samples(initialised, tmp_path / "in", upto="client_team")
    path = tmp_path / "client_team.csv"
    path.write_text(
        "client_id,staff_id,role,events\nC1,JD,ae,billing-created\nC1,JD,creative,\n",
        encoding="utf-8",
    )
    r = initialised("data", "import", str(path))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "client_team: 2 rows (1 new, 1 updated)"
    assert table_rows(engine_of(home), "client_team") == [
        {"client_id": "C1", "staff_id": "BOSS", "role": "production", "events": None},
        {"client_id": "C1", "staff_id": "JD", "role": "ae", "events": "billing-created"},
        {"client_id": "C1", "staff_id": "JD", "role": "creative", "events": None},
    ]
    path = tmp_path / "time_off.csv"
    path.write_text("staff_id,date\nJD,2026-12-24\nJD,2026-12-28\n", encoding="utf-8")
    r = initialised("data", "import", str(path))
    assert r.stdout.strip() == "time_off: 2 rows (1 new, 0 updated, 1 unchanged)"
    assert [(r["staff_id"], r["date"]) for r in table_rows(engine_of(home), "time_off")] == [
        ("BOSS", d(2026, 12, 31)),
        ("JD", d(2026, 12, 24)),
        ("JD", d(2026, 12, 28)),
    ]


def test_values_are_converted_per_column_type(initialised: Cli, home: Path, tmp_path: Path) -> None:
    s = Settings.load(home)
    s.set("agency.timezone", "America/New_York")
    s.save()
    load_samples(initialised, tmp_path / "in", upto="clients")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "id,client_id,title,opened_at\n"
        "J1,C1, Padded title ,2026-11-27T09:30\n"
        "J2, C1 ,x,2026-11-27 09:30:00\n"
        "J3,C1,x,2026-11-27T14:30:00Z\n"
        "J4,C1,x,2026-07-01T09:30:00.250+02:00\n"
        "J5,C1,x,2026-11-27\n"
        "J6,C1,x,\n",
        encoding="utf-8",
    )
    r = initialised("data", "import", str(jobs))
    assert r.exit_code == 0, r.output
    got = {r["id"]: r for r in table_rows(engine_of(home), "jobs")}
    assert got["J1"]["title"] == " Padded title "  # free text is kept as written
    assert got["J2"]["client_id"] == "C1"  # keys and references are trimmed
    assert [got[j]["opened_at"] for j in ("J1", "J2", "J3", "J4", "J5", "J6")] == [
        ts(2026, 11, 27, 9, 30),
        ts(2026, 11, 27, 9, 30),
        ts(2026, 11, 27, 9, 30),  # 14:30 UTC is 09:30 in New York in November
        ts(2026, 7, 1, 3, 30, 0, 250000),  # 07:30 UTC is 03:30 EDT
        ts(2026, 11, 27, 0, 0),
        None,
    ]
    staff = tmp_path / "staff.csv"
    staff.write_text(
        "id,name,planned_hours,active,access\n"
        "A,A,7.555,TRUE,\n"
        "B,B,+8,No, cash-flow ,, reports \n"
        "C,C,.5,1,cash-flow\n"
        "E,E,0,0,\n",
        encoding="utf-8",
    )
    r = initialised("data", "import", str(staff))
    assert r.exit_code == 2  # B has one cell too many: the list must be quoted
    assert "line 3" in r.stderr
    staff.write_text(
        "id,name,planned_hours,active,access\n"
        "A,A,7.555,TRUE,\n"
        'B,B,+8,No," cash-flow ,, reports "\n'
        "C,C,.5,1,cash-flow\n"
        "E,E,0,0,\n",
        encoding="utf-8",
    )
    r = initialised("data", "import", str(staff))
    assert r.exit_code == 0, r.output
    got = {r["id"]: r for r in table_rows(engine_of(home), "staff")}
    assert [(got[k]["planned_hours"], got[k]["active"], got[k]["access"]) for k in "ABCE"] == [
        (D("7.56"), True, None),
        (D("8.00"), False, "cash-flow,reports"),
        (D("0.50"), True, "cash-flow"),
        (D("0.00"), False, None),
    ]


def test_json_accepts_numbers_booleans_and_null_natively(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    load_samples(initialised, tmp_path / "in", upto="billings")
    path = tmp_path / "billing_lines.json"
    path.write_text(
        '[{"billing_id": "B2", "line": 1, "quantity": 1.5, "rate": 10, "amount": 15.0,'
        ' "description": null},\n'
        ' {"billing_id": "B2", "line": 2.0, "quantity": "2", "rate": "0.10", "amount": 0.2}]',
        encoding="utf-8",
    )
    r = initialised("data", "import", str(path))
    assert r.exit_code == 0, r.output
    rows = [r for r in table_rows(engine_of(home), "billing_lines") if r["billing_id"] == "B2"]
    assert rows == [
        {
            "billing_id": "B2",
            "line": 1,
            "description": None,
            "quantity": D("1.50"),
            "rate": D("10.00"),
            "amount": D("15.00"),
        },
        {
            "billing_id": "B2",
            "line": 2,
            "description": None,
            "quantity": D("2.00"),
            "rate": D("0.10"),
            "amount": D("0.20"),
        },
    ]
    staff = tmp_path / "staff.ndjson"
    staff.write_text(
        '{"id": "JD", "active": false, "planned_hours": 6}\n'
        '{"id": "BOSS", "access": ["cash-flow", " reports "], "active": 1}\n',
        encoding="utf-8",
    )
    r = initialised("data", "import", str(staff))
    assert r.exit_code == 0, r.output
    got = {r["id"]: r for r in table_rows(engine_of(home), "staff")}
    assert (got["JD"]["active"], got["JD"]["planned_hours"]) == (False, D("6.00"))
    assert (got["BOSS"]["active"], got["BOSS"]["access"]) == (True, "cash-flow,reports")


def test_a_supervisor_listed_later_in_the_file_imports(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "staff.csv"
    path.write_text("id,name,supervisor_id\nA,A,B\nB,B,C\nC,C,\nD,D,D\n", encoding="utf-8")
    r = initialised("data", "import", str(path))
    assert r.exit_code == 0, r.output
    sup = {r["id"]: r["supervisor_id"] for r in table_rows(engine_of(home), "staff")}
    assert sup == {"A": "B", "B": "C", "C": None, "D": "D"}


def test_status_changes_of_existing_jobs_are_recorded(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    load_samples(initialised, tmp_path / "in", upto="jobs")
    s = Settings.load(home)
    s.set("user.staff", "JD")
    s.set("agency.timezone", "America/New_York")
    s.save()
    engine = engine_of(home)
    before = table_rows(engine, "job_status_history")
    path = tmp_path / "jobs.csv"
    path.write_text(
        "id,client_id,title,production_status,billing_status\n"
        "J1,C1,Spring campaign,approved,\n"  # production open -> approved; billing unchanged
        "J2,C2,Logo renamed,,invoiced\n"  # title only: no status change
        "J3,C1,New job,open,unbilled\n",  # new: no history
        encoding="utf-8",
    )
    r = initialised("data", "import", str(path))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "jobs: 3 rows (1 new, 2 updated, 1 status change)"
    rows = table_rows(engine, "job_status_history")
    assert before == []
    assert len(rows) == 1
    (h,) = rows
    assert (h["job_id"], h["field"], h["old_value"], h["new_value"], h["changed_by"]) == (
        "J1",
        "production_status",
        "open",
        "approved",
        "JD",
    )
    assert h["id"].startswith("H")
    import zoneinfo

    now = dt.datetime.now(zoneinfo.ZoneInfo("America/New_York")).replace(tzinfo=None)
    assert abs(h["changed_at"] - now) < dt.timedelta(minutes=2)

    # The same file again changes nothing.
    r = initialised("data", "import", str(path), "--json")
    assert json.loads(r.stdout)["status_changes"] == 0
    assert len(table_rows(engine, "job_status_history")) == 1

    # Both statuses of one job, from a file that names only them; ids stay unique.
    path.write_text(
        "id,production_status,billing_status\nJ3,closed,billed\nJ1,approved,\n",
        encoding="utf-8",
    )
    r = initialised("data", "import", str(path), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status_changes"] == 2
    rows = table_rows(engine, "job_status_history")
    assert len({h["id"] for h in rows}) == 3
    assert sorted((h["field"], h["old_value"], h["new_value"]) for h in rows[1:]) == [
        ("billing_status", "unbilled", "billed"),
        ("production_status", "open", "closed"),
    ]
    assert [h["id"] for h in rows] == sorted(h["id"] for h in rows)  # time-ordered

    # A status with spaces around it names the same code: no change, nothing recorded.
    path.write_text("id,production_status\nJ3,closed \nJ1, approved\n", encoding="utf-8")
    r = initialised("data", "import", str(path), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status_changes"] == 0
    assert len(table_rows(engine, "job_status_history")) == 3


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_export_round_trips_through_import(
    initialised: Cli, home: Path, tmp_path: Path, fmt: str
) -> None:
    load_samples(initialised, tmp_path / "in")
    original = snapshot(engine_of(home))
    other = Cli(tmp_path / "other")
    assert other("init").exit_code == 0
    for t in schema.AGENCY_TABLES:
        out = tmp_path / "out" / f"{t.name}.{fmt}"
        out.parent.mkdir(parents=True, exist_ok=True)
        r = initialised("data", "export", t.name, "--out", str(out))
        assert r.exit_code == 0, r.output
        r = other("data", "import", str(out))
        assert r.exit_code == 0, f"{t.name}: {r.output}"
    assert snapshot(engine_of(tmp_path / "other")) == original


def test_export_to_stdout_as_csv_and_json(initialised: Cli, tmp_path: Path) -> None:
    load_samples(initialised, tmp_path / "in", upto="staff")
    r = initialised("data", "export", "staff")
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        "id,name,work_email,username,supervisor_id,planned_hours,workdays,role,access,active\n"
        "BOSS,Bo Ss,boss@agency.test,,,7.50,mon-thu,production,,false\n"
        'JD,Jane Doe,jane@agency.test,jd@agency.test,BOSS,8.00,mon-fri,ae,"cash-flow,reports",'
        "true\n"
    )
    r = initialised("data", "export", "staff", "--format", "json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout, parse_float=D)
    assert got[0] == {
        "id": "BOSS",
        "name": "Bo Ss",
        "work_email": "boss@agency.test",
        "username": None,
        "supervisor_id": None,
        "planned_hours": D("7.50"),
        "workdays": "mon-thu",
        "role": "production",
        "access": None,
        "active": False,
    }
    assert [o["id"] for o in got] == ["BOSS", "JD"]
    r = initialised("data", "export", "jobs", "--format", "json")
    assert r.exit_code == 0
    assert r.stdout == "[]\n"
    r = initialised("data", "export", "jobs")
    assert r.stdout == "id,client_id,title,opened_at,production_status,billing_status\n"


def test_export_to_a_file_replaces_it_whole(initialised: Cli, tmp_path: Path) -> None:
    load_samples(initialised, tmp_path / "in", upto="clients")
    out = tmp_path / "clients-export.json"
    out.write_text("old content that is much longer than the new one" * 100)
    r = initialised("data", "export", "clients", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert "2 rows written" in r.stderr
    assert [o["id"] for o in json.loads(out.read_text(encoding="utf-8"))] == ["C1", "C2"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_refuses_an_unknown_table_or_format(initialised: Cli, tmp_path: Path) -> None:
    r = initialised("data", "export", "nope")
    assert r.exit_code == 2
    assert "unknown table 'nope'" in r.stderr and "time_entries" in r.stderr
    r = initialised("data", "export", "jobs", "--format", "xml")
    assert r.exit_code == 2
    assert "unknown format 'xml'" in r.stderr
    r = initialised("data", "export", "jobs", "--out", str(tmp_path / "missing" / "jobs.csv"))
    assert r.exit_code == 2
    assert "does not exist" in r.stderr


def test_tables_lists_columns_and_row_counts(initialised: Cli, tmp_path: Path) -> None:
    load_samples(initialised, tmp_path / "in", upto="clients")
    r = initialised("data", "tables", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert [o["table"] for o in got] == list(schema.AGENCY_TABLE_NAMES)
    by_name = {o["table"]: o for o in got}
    assert by_name["clients"] == {
        "table": "clients",
        "columns": ["id", "name", "billing_email"],
        "rows": 2,
    }
    assert by_name["jobs"]["rows"] == 0
    r = initialised("data", "tables")
    assert r.exit_code == 0
    assert "time_entries" in r.stdout and "billing_email" in r.stdout


def test_import_file_and_import_rows_from_python(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    settings = Settings.load(home)
    engine = engine_of(home)
    path = write_rows(tmp_path, "staff", SAMPLES["staff"], "csv")
    result = dataio.import_file(engine, settings, path)
    assert result == dataio.ImportResult("staff", str(path), 2, 2, 0, 0)
    result = dataio.import_rows(
        engine,
        settings,
        "time_off",
        [{"staff_id": "JD", "date": d(2027, 1, 4)}, {"staff_id": "BOSS", "date": "2027-01-05"}],
        source="demo time off",
    )
    assert result.summary() == "time_off: 2 rows (2 new, 0 updated)"
    assert len(table_rows(engine, "time_off")) == 2
    with pytest.raises(InputError, match=r"^demo, row 2 \(id X\), column name: "):
        dataio.import_rows(
            engine,
            settings,
            "clients",
            [{"id": "C", "name": "C"}, {"id": "X", "name": ""}],
            source="demo",
        )
    assert table_rows(engine, "clients") == []


def test_docs_describe_every_table_and_column() -> None:
    """docs/data.md lists each table with each column and its type, as the importer sees them."""
    text = (Path(__file__).parent.parent / "docs" / "data.md").read_text(encoding="utf-8")
    for t in schema.AGENCY_TABLES:
        section = text.split(f"\n### {t.name}\n", 1)[1].split("\n### ", 1)[0]
        keys = ", ".join(f"`{k}`" for k in dataio.key_columns(t))
        assert f"Key: {keys}." in section, t.name
        for spec in dataio.columns_of(t):
            kind = spec.kind
            if kind == "decimal":
                kind = f"decimal {spec.precision - spec.scale}.{spec.scale}"
            assert f"| `{spec.name}` | {kind} |" in section, f"{t.name}.{spec.name}"


def test_a_lone_carriage_return_survives_a_csv_round_trip(cli: Cli, tmp_path: Path) -> None:
    """The csv writer quotes a line feed but not a lone CR: such a row is quoted whole."""
    assert cli("init").exit_code == 0
    src = tmp_path / "homebase_entries.json"
    src.write_text(
        json.dumps(
            [
                {"id": "H1", "subject": "end\r", "entered_at": "2026-11-24T09:00:00"},
                {"id": "H2", "subject": "a\rb", "entered_at": "2026-11-24T09:00:00"},
            ]
        ),
        encoding="utf-8",
    )
    assert cli("data", "import", str(src)).exit_code == 0
    out = tmp_path / "homebase_entries.csv"
    assert cli("data", "export", "homebase_entries", "--out", str(out)).exit_code == 0
    r = cli("data", "import", str(out), "--replace", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert '"unchanged": 2' in r.stdout.replace("\n", " ") or "2 unchanged" in r.stdout, r.stdout


def test_an_export_of_a_value_written_by_other_means_is_one_sentence(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    """A date column holding '2026-13-01' (written by hand into SQLite): exit 3, no traceback."""
    import sqlite3

    assert cli("init").exit_code == 0
    src = tmp_path / "clients.csv"
    src.write_text("id,name\nC1,Acme\n", encoding="utf-8")
    assert cli("data", "import", str(src)).exit_code == 0
    src = tmp_path / "jobs.csv"
    src.write_text("id,client_id,title,opened_at\nJ1,C1,T,2026-11-24 09:00\n", encoding="utf-8")
    assert cli("data", "import", str(src)).exit_code == 0
    with sqlite3.connect(home / "cpmail.db") as db:
        db.execute("UPDATE jobs SET opened_at = '2026-13-01 09:00:00'")
    r = cli("data", "export", "jobs", "--out", str(tmp_path / "out.csv"))
    assert r.exit_code == 3, r.output
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "table jobs, from row 1 on" in lines[0], r.stderr
