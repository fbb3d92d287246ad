"""`cpmail data import FOLDER`, `--replace` and `--dry-run`: the agency's daily export in one go."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cpmail import dataio
from cpmail.settings import Settings
from cpmail.store import schema
from tests.conftest import Cli
from tests.test_data import engine_of, snapshot, table_rows

DEMO_DATE = "2026-11-27"


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home after `cpmail demo`: the agency data every test here exports and imports."""
    home = tmp_path_factory.mktemp("demo") / "home"
    r = Cli(home)("demo", "--date", DEMO_DATE)
    assert r.exit_code == 0, r.output
    return home


def export_folder(home: Path, folder: Path, seed: int) -> dict[str, Path]:
    """Export every table of ``home`` into ``folder``, in a shuffled order and mixed formats."""
    folder.mkdir(parents=True)
    engine = engine_of(home)
    rng = random.Random(seed)
    names = list(schema.AGENCY_TABLE_NAMES)
    rng.shuffle(names)
    files = {}
    for name in names:
        fmt = rng.choice(["csv", "json", "ndjson"])
        files[name] = folder / f"{name}.{fmt}"
        dataio.export_file(engine, name, files[name], fmt)
    engine.dispose()
    return files


def refused(cli: Cli, *args: str) -> str:
    """Run `cpmail data import …`; check exit 2, one line on stderr, nothing changed."""
    engine = engine_of(cli.home)
    before = snapshot(engine)
    r = cli("data", "import", *args)
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    assert r.stderr.startswith("cpmail: ") and r.stderr.count("\n") == 1, r.stderr
    assert snapshot(engine) == before
    engine.dispose()
    return r.stderr.removeprefix("cpmail: ").strip()


def rewrite_csv(path: Path, keep: Any = None, change: Any = None, add: str = "") -> None:
    """Filter and edit a CSV file line by line (the header is kept)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        if keep is not None and not keep(line):
            continue
        out.append(change(line) if change is not None else line)
    path.write_text("\n".join(out) + "\n" + add, encoding="utf-8")


@pytest.fixture
def loaded(demo_home: Path, home: Path) -> Iterator[Cli]:
    """A copy of the demo's home."""
    shutil.copytree(demo_home, home)
    yield Cli(home)


@pytest.fixture
def csv_export(demo_home: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    engine = engine_of(demo_home)
    for name in schema.AGENCY_TABLE_NAMES:
        dataio.export_file(engine, name, folder / f"{name}.csv")
    engine.dispose()
    return folder


@pytest.mark.parametrize("seed", [1, 2])
def test_a_folder_export_imports_whole_whatever_the_order_of_its_files(
    demo_home: Path, initialised: Cli, tmp_path: Path, seed: int
) -> None:
    files = export_folder(demo_home, tmp_path / "export", seed)
    r = initialised("data", "import", str(tmp_path / "export"), "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)
    assert [x["table"] for x in results] == list(schema.AGENCY_TABLE_NAMES)
    assert all(x["new"] == x["rows"] for x in results)
    assert {x["table"]: x["file"] for x in results} == {n: str(p) for n, p in files.items()}
    demo, copy = engine_of(demo_home), engine_of(initialised.home)
    assert snapshot(copy) == snapshot(demo)
    demo.dispose()
    copy.dispose()
    # Again: every row is there already and as given.
    r = initialised("data", "import", str(tmp_path / "export"), "--json")
    assert all(x["unchanged"] == x["rows"] and x["new"] == 0 for x in json.loads(r.stdout))


def test_a_stray_file_or_folder_stops_the_import_naming_it(
    initialised: Cli, csv_export: Path
) -> None:
    stray = csv_export / "customers.csv"
    stray.write_text("id,name\nC1,A\n", encoding="utf-8")
    msg = refused(initialised, str(csv_export))
    assert msg.startswith(f"{stray}: not named after a table, so it cannot be imported")
    stray.unlink()
    (csv_export / "old").mkdir()
    assert refused(initialised, str(csv_export)).startswith(f"{csv_export / 'old'} is a folder")
    (csv_export / "old").rmdir()
    (csv_export / "jobs.json").write_text("[]", encoding="utf-8")
    msg = refused(initialised, str(csv_export))
    assert msg == f"{csv_export}: two files for the table jobs: jobs.csv and jobs.json; keep one."
    (csv_export / "jobs.json").unlink()
    msg = refused(initialised, str(csv_export), "--table", "jobs")
    assert "is a folder: its files are imported into the tables they are named after" in msg
    (csv_export / ".DS_Store").write_bytes(b"\0\1")  # hidden files are left alone
    assert initialised("data", "import", str(csv_export)).exit_code == 0


def test_a_bad_row_in_the_last_file_leaves_every_table_unchanged(
    initialised: Cli, csv_export: Path
) -> None:
    rewrite_csv(csv_export / "calendar_entries.csv", add="X1,Party,not a time,,,,,\n")
    msg = refused(initialised, str(csv_export))
    assert msg.startswith(
        f"{csv_export / 'calendar_entries.csv'}, line 4 (id X1), column starts_at"
    )


def changed_export(folder: Path) -> None:
    """The demo's export a day later: a task deleted, one renamed, one added; a status moved."""
    rewrite_csv(
        folder / "tasks.csv",
        keep=lambda line: not line.startswith("T002,"),
        change=lambda line: line.replace("Storyboard", "Storyboard v2"),
        add="T900,J1001,Proofs,RP,2026-12-02,,100.00,1.00\n",
    )
    rewrite_csv(
        folder / "time_entries.csv", keep=lambda line: line.split(",")[3] != "T002"
    )  # time on the deleted task goes with it
    rewrite_csv(folder / "job_costs.csv", keep=lambda line: line.split(",")[2] != "T002")
    rewrite_csv(folder / "budget_alerts.csv", keep=lambda line: line.split(",")[2] != "T002")
    rewrite_csv(
        folder / "jobs.csv",
        change=lambda line: (
            line.replace(",NEW,", ",INPROD,") if line.startswith("J1030,") else line
        ),
    )


def test_dry_run_counts_are_the_real_imports_counts(loaded: Cli, csv_export: Path) -> None:
    changed_export(csv_export)
    engine = engine_of(loaded.home)
    before = snapshot(engine)
    r = loaded("data", "import", str(csv_export), "--replace", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert snapshot(engine) == before
    dry = json.loads(r.stdout)
    assert all(x.pop("dry_run") is True for x in dry)
    r = loaded("data", "import", str(csv_export), "--replace", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "tasks: 16 rows (1 new, 1 updated, 14 unchanged, 1 deleted)" in r.stdout
    assert r.stderr.strip() == "Dry run: nothing was changed."
    assert snapshot(engine) == before
    r = loaded("data", "import", str(csv_export), "--replace", "--json")
    assert r.exit_code == 0, r.output
    real = json.loads(r.stdout)
    assert real == dry
    counts = {x["table"]: (x["new"], x["updated"], x["deleted"]) for x in real}
    assert counts["tasks"] == (1, 1, 1)
    assert counts["jobs"] == (0, 1, 0)
    assert real[[x["table"] for x in real].index("jobs")]["status_changes"] == 1
    assert snapshot(engine) != before
    tasks = {t["id"]: t for t in table_rows(engine, "tasks")}
    assert "T002" not in tasks and "T900" in tasks
    engine.dispose()


def test_replace_refuses_to_delete_a_row_that_a_staying_row_refers_to(
    loaded: Cli, csv_export: Path, tmp_path: Path
) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(csv_export / "jobs.csv", one / "jobs.csv")
    rewrite_csv(one / "jobs.csv", keep=lambda line: not line.startswith("J1030,"))
    assert refused(loaded, str(one / "jobs.csv"), "--replace") == (
        f"{one / 'jobs.csv'}: the jobs row with id J1030 is not in the file, so it would be "
        "deleted, but the tasks row (id T016) still refers to it in its column job_id; "
        "nothing was changed. Keep that jobs row, or remove or change the tasks row as well."
    )
    # The same in a folder whose estimates file still has the row: refused too.
    rewrite_csv(csv_export / "jobs.csv", keep=lambda line: not line.startswith("J1030,"))
    msg = refused(loaded, str(csv_export), "--replace")
    assert "the jobs row with id J1030 is not in the file" in msg
    # A client that only a diary entry names (a reference by kind, not a foreign key).
    new = tmp_path / "new"
    new.mkdir()
    (new / "clients.csv").write_text("id,name\nC99,Newco\n", encoding="utf-8")
    (new / "diary_entries.csv").write_text(
        "id,kind,party_id,subject,entered_at\nD99,client,C99,Met Newco,2026-11-26T10:00\n",
        encoding="utf-8",
    )
    assert loaded("data", "import", str(new)).exit_code == 0
    msg = refused(loaded, str(csv_export / "clients.csv"), "--replace")
    assert msg == (
        f"{csv_export / 'clients.csv'}: the clients row with id C99 is not in the file, so it "
        "would be deleted, but the diary_entries row (id D99) still refers to it in its column "
        "party_id; nothing was changed. Keep that clients row, or remove or change the "
        "diary_entries row as well."
    )


def test_replace_deletes_children_before_parents_and_a_jobs_history_with_it(
    loaded: Cli, csv_export: Path, tmp_path: Path
) -> None:
    engine = engine_of(loaded.home)
    history = table_rows(engine, "job_status_history")
    new = tmp_path / "new"
    new.mkdir()
    (new / "jobs.csv").write_text(
        "id,client_id,title,production_status\nJ77,C01,Gone soon,NEW\n", encoding="utf-8"
    )
    (new / "tasks.csv").write_text("id,job_id,name\nK77,J77,Gone too\n", encoding="utf-8")
    (new / "time_entries.csv").write_text(
        "id,staff_id,job_id,task_id,work_date,hours\nE77,RP,J77,K77,2026-11-26,1\n",
        encoding="utf-8",
    )
    assert loaded("data", "import", str(new)).exit_code == 0, "new rows"
    (new / "jobs.csv").write_text("id,production_status\nJ77,DONE\n", encoding="utf-8")
    assert loaded("data", "import", str(new / "jobs.csv")).exit_code == 0
    assert len(table_rows(engine, "job_status_history")) == len(history) + 1
    (csv_export / "job_status_history.csv").unlink()  # cpmail's own record of status changes
    r = loaded("data", "import", str(csv_export), "--replace", "--json")
    assert r.exit_code == 0, r.output
    deleted = {x["table"]: x["deleted"] for x in json.loads(r.stdout)}
    assert deleted == {n: int(n in ("jobs", "tasks", "time_entries")) for n in deleted}
    assert table_rows(engine, "job_status_history") == history
    engine.dispose()


def test_replace_with_a_self_reference(loaded: Cli, csv_export: Path, tmp_path: Path) -> None:
    engine = engine_of(loaded.home)
    staff = table_rows(engine, "staff")
    engine.dispose()
    boss = next(s for s in staff if s["supervisor_id"])["supervisor_id"]
    under = sorted(s["id"] for s in staff if s["supervisor_id"] == boss)[0]
    path = tmp_path / "staff.csv"
    shutil.copy(csv_export / "staff.csv", path)
    rewrite_csv(path, keep=lambda line: not line.startswith(f"{boss},"))
    msg = refused(loaded, str(path), "--replace")
    assert msg.startswith(f"{path}: the staff row with id {boss} is not in the file")
    assert f"the staff row (id {under}) still refers to it in its column supervisor_id" in msg


@pytest.mark.postgres
def test_folder_replace_and_dry_run_on_postgres(
    demo_home: Path, cli: Cli, home: Path, pg_url: str, csv_export: Path
) -> None:
    home.mkdir(parents=True)
    s = Settings.load(home)
    s.set("database.url", pg_url)
    s.save()
    assert cli("init").exit_code == 0
    r = cli("data", "import", str(csv_export), "--json")
    assert r.exit_code == 0, r.output
    engine = engine_of(home)
    demo = engine_of(demo_home)
    assert snapshot(engine) == snapshot(demo)
    demo.dispose()
    changed_export(csv_export)
    before = snapshot(engine)
    dry = cli("data", "import", str(csv_export), "--replace", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert snapshot(engine) == before
    real = cli("data", "import", str(csv_export), "--replace", "--json")
    assert real.exit_code == 0, real.output
    assert [x | {"dry_run": True} for x in json.loads(real.stdout)] == json.loads(dry.stdout)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM tasks WHERE id = 'T002'")).scalar() == 0
    rewrite_csv(csv_export / "jobs.csv", keep=lambda line: not line.startswith("J1030,"))
    assert "the jobs row with id J1030 is not in the file" in refused(
        cli, str(csv_export), "--replace"
    )
    engine.dispose()
