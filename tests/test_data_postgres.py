"""`cpmail data` on PostgreSQL: a fresh schema per test (tests/pg.py), `cpmail init`, import."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cpmail.settings import Settings
from cpmail.store import schema
from tests.conftest import Cli
from tests.test_data import SAMPLES, by_key, engine_of, snapshot, table_rows, write_rows

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(cli: Cli, home: Path, pg_url: str) -> Iterator[Cli]:
    """A home whose database.url is a fresh PostgreSQL schema, after `cpmail init`."""
    home.mkdir(parents=True)
    s = Settings.load(home)
    s.set("database.url", pg_url)
    s.save()
    r = cli("init")
    assert r.exit_code == 0, r.output
    yield cli


@pytest.fixture
def pg_engine(pg: Cli, home: Path) -> Iterator[sa.Engine]:
    engine = engine_of(home)
    assert engine.dialect.name == "postgresql"
    yield engine
    engine.dispose()


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_import_every_table_on_postgres(
    pg: Cli, pg_engine: sa.Engine, tmp_path: Path, fmt: str
) -> None:
    for t in schema.AGENCY_TABLES:
        r = pg("data", "import", str(write_rows(tmp_path, t.name, SAMPLES[t.name], fmt)))
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith(f"{t.name}: 2 rows (2 new, 0 updated")
    for t in schema.AGENCY_TABLES:
        assert table_rows(pg_engine, t.name) == by_key(t.name, SAMPLES[t.name]), t.name


def test_upsert_and_status_history_on_postgres(
    pg: Cli, pg_engine: sa.Engine, tmp_path: Path
) -> None:
    for name in ("clients", "jobs"):
        assert (
            pg("data", "import", str(write_rows(tmp_path, name, SAMPLES[name], "csv"))).exit_code
            == 0
        )
    path = tmp_path / "jobs.csv"
    path.write_text(
        "id,production_status,billing_status\nJ1,approved,\nJ2,,invoiced\nJ1,done,\n",
        encoding="utf-8",
    )
    r = pg("data", "import", str(path), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) | {"file": ""} == {
        "table": "jobs",
        "file": "",
        "rows": 3,
        "new": 0,
        "updated": 2,
        "unchanged": 1,
        "deleted": 0,
        "status_changes": 2,
    }
    history = table_rows(pg_engine, "job_status_history")
    assert [(h["job_id"], h["old_value"], h["new_value"]) for h in history] == [
        ("J1", "open", "approved"),
        ("J1", "approved", "done"),
    ]
    jobs = {j["id"]: j for j in table_rows(pg_engine, "jobs")}
    assert jobs["J1"]["production_status"] == "done"
    assert jobs["J1"]["title"] == "Spring campaign"
    path = tmp_path / "time_off.csv"
    path.write_text("staff_id,date\n", encoding="utf-8")
    staff = write_rows(tmp_path, "staff", SAMPLES["staff"], "csv")
    assert pg("data", "import", str(staff)).exit_code == 0
    path.write_text("staff_id,date\nJD,2026-12-24\nJD,2026-12-24\nBOSS,2026-12-24\n")
    r = pg("data", "import", str(path))
    assert r.stdout.strip() == "time_off: 3 rows (2 new, 0 updated, 1 unchanged)"


def test_bad_rows_write_nothing_on_postgres(pg: Cli, pg_engine: sa.Engine, tmp_path: Path) -> None:
    for t in schema.AGENCY_TABLES[: schema.AGENCY_TABLES.index(schema.tasks) + 1]:
        r = pg("data", "import", str(write_rows(tmp_path, t.name, SAMPLES[t.name], "csv")))
        assert r.exit_code == 0, r.output
    before = snapshot(pg_engine)
    lines = ["id,staff_id,job_id,task_id,work_date,hours"]
    lines += [f"TT{i:05d},JD,J1,K1,2026-11-26,0.25" for i in range(7000)]
    path = tmp_path / "time_entries.csv"
    for bad, expected in [
        ("TT9,JD,J1,K9,2026-11-26,1", "column task_id: there is no tasks row with id 'K9'"),
        ("TT9,JD,J1,K1,2026-11-31,1", "column work_date: '2026-11-31' is not a date"),
        ("TT9,JD,J1,K1,2026-11-30,\x00", "column hours: '\\x00' is not a number"),
    ]:
        path.write_text("\n".join([*lines, bad]) + "\n", encoding="utf-8")
        r = pg("data", "import", str(path))
        assert r.exit_code == 2, r.output
        assert f"{path}, line 7002 (id TT9), {expected}" in r.stderr
        assert snapshot(pg_engine) == before
    path = tmp_path / "staff.csv"
    path.write_text("id,name,supervisor_id\nX,X,Y\nY,Y,X\nZ,Z,NOBODY\n", encoding="utf-8")
    r = pg("data", "import", str(path))
    assert r.exit_code == 2
    assert "line 4 (id Z), column supervisor_id: there is no staff row with id 'NOBODY'" in r.stderr
    assert snapshot(pg_engine) == before


def test_export_from_postgres_imports_into_sqlite(
    pg: Cli, pg_engine: sa.Engine, tmp_path: Path
) -> None:
    for t in schema.AGENCY_TABLES:
        r = pg("data", "import", str(write_rows(tmp_path / "in", t.name, SAMPLES[t.name], "csv")))
        assert r.exit_code == 0, r.output
    other = Cli(tmp_path / "sqlite-home")
    assert other("init").exit_code == 0
    for t in schema.AGENCY_TABLES:
        out = tmp_path / "out" / f"{t.name}.json"
        out.parent.mkdir(exist_ok=True)
        assert pg("data", "export", t.name, "--out", str(out)).exit_code == 0
        r = other("data", "import", str(out))
        assert r.exit_code == 0, r.output
    assert snapshot(engine_of(tmp_path / "sqlite-home")) == snapshot(pg_engine)
    r = pg("data", "tables", "--json")
    assert {o["table"]: o["rows"] for o in json.loads(r.stdout)} == {
        t.name: 2 for t in schema.AGENCY_TABLES
    }
