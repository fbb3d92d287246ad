"""`cpmail data import` streams: peak memory does not grow with the size of the file."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import Cli
from tests.pg import SERVER, server_or_skip

STAFF, JOBS, TASKS_PER_JOB = 20, 200, 10


def make_home(home: Path, folder: Path) -> None:
    """A home with the staff, client, jobs and tasks the time entries refer to."""
    cli = Cli(home)
    assert cli("init").exit_code == 0
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "staff": "id,name\n" + "".join(f"S{i:02d},Staff {i}\n" for i in range(STAFF)),
        "clients": "id,name\nC1,Client\n",
        "jobs": "id,client_id,title\n" + "".join(f"J{j:04d},C1,Job {j}\n" for j in range(JOBS)),
        "tasks": "id,job_id,name\n"
        + "".join(
            f"K{j:04d}{k},J{j:04d},Task {k}\n" for j in range(JOBS) for k in range(TASKS_PER_JOB)
        ),
    }
    for table, text in files.items():
        path = folder / f"{table}.csv"
        path.write_text(text, encoding="utf-8")
        r = cli("data", "import", str(path))
        assert r.exit_code == 0, r.output


def write_time_entries(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("id,staff_id,job_id,task_id,work_date,hours,amount\n")
        for i in range(rows):
            j = (i * 7919) % JOBS
            f.write(
                f"T{i:08d},S{i % STAFF:02d},J{j:04d},K{j:04d}{i % TASKS_PER_JOB},"
                f"2026-{1 + i % 12:02d}-{1 + i % 28:02d},{1 + i % 32 / 4},{i % 100000 / 100}\n"
            )


def peak_rss_of_import(home: Path, path: Path) -> tuple[int, str]:
    """Run `cpmail data import` in a child process; return its peak RSS in KiB and stdout.

    The child reads its own VmHWM when it exits: unlike ru_maxrss, which starts
    from the forking parent's size, it counts only the cpmail process itself.
    """
    out, err, peak = path.with_suffix(".out"), path.with_suffix(".err"), path.with_suffix(".hwm")
    code = (
        "import atexit\n"
        "def report():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        f"            open({str(peak)!r}, 'w').write(line.split()[1])\n"
        "atexit.register(report)\n"
        "from cpmail.cli.app import main\n"
        "main()\n"
    )
    with out.open("wb") as o, err.open("wb") as e:
        p = subprocess.run(
            [sys.executable, "-c", code, "--home", str(home), "data", "import", str(path)],
            stdout=o,
            stderr=e,
            check=False,
        )
    assert p.returncode == 0, err.read_text()
    return int(peak.read_text()), out.read_text()


def test_peak_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    peaks = {}
    for rows in (20_000, 200_000):
        home, folder = tmp_path / f"home{rows}", tmp_path / f"in{rows}"
        make_home(home, folder)
        path = folder / "time_entries.csv"
        write_time_entries(path, rows)
        peaks[rows], stdout = peak_rss_of_import(home, path)
        assert stdout.strip() == f"time_entries: {rows} rows ({rows} new, 0 updated)"
    small, large = peaks[20_000] / 1024, peaks[200_000] / 1024
    print(f"peak RSS: 20k rows {small:.0f} MiB, 200k rows {large:.0f} MiB")
    assert large < 200
    assert large - small < 30, f"20k rows: {small:.0f} MiB, 200k rows: {large:.0f} MiB"


def peak_rss_of_pull(home: Path) -> tuple[int, str]:
    """Run `cpmail data pull` in a child process; return its peak RSS in KiB and stdout."""
    peak = home / "pull.hwm"
    code = (
        "import atexit\n"
        "def report():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        f"            open({str(peak)!r}, 'w').write(line.split()[1])\n"
        "atexit.register(report)\n"
        "from cpmail.cli.app import main\n"
        "main()\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, "--home", str(home), "data", "pull"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    return int(peak.read_text()), p.stdout


@pytest.mark.postgres
def test_peak_memory_of_a_pull_does_not_grow_with_the_table(tmp_path: Path) -> None:
    """Rows come from a PostgreSQL table through a server-side cursor, 5,000 at a time."""
    name = f"src_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    server_or_skip(admin)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    query = (
        "SELECT 'T' || lpad(g::text, 8, '0') AS id, "
        f"'S' || lpad((g % {STAFF})::text, 2, '0') AS staff_id, "
        f"'J' || lpad((g % {JOBS})::text, 4, '0') AS job_id, "
        f"'K' || lpad((g % {JOBS})::text, 4, '0') || (g % {TASKS_PER_JOB}) AS task_id, "
        "DATE '2026-01-01' + (g % 300) AS work_date, 1 + (g % 32) / 4.0 AS hours, "
        "(g % 100000) / 100.0 AS amount FROM big"
    )
    try:
        peaks = {}
        for rows in (20_000, 200_000):
            with admin.connect() as conn:
                conn.exec_driver_sql(
                    f'CREATE TABLE "{name}".big AS SELECT g FROM generate_series(1, {rows}) g'
                    if rows == 20_000
                    else f'INSERT INTO "{name}".big SELECT g FROM generate_series(20001, {rows}) g'
                )
            home = tmp_path / f"home{rows}"
            make_home(home, tmp_path / f"in{rows}")
            with (home / "cpmail.toml").open("a", encoding="utf-8") as f:
                f.write(
                    f'\n[source]\nurl = "{SERVER}?options=-csearch_path%3D{name}"\n'
                    f'[source.tables.time_entries]\nquery = "{query}"\n'
                )
            peaks[rows], stdout = peak_rss_of_pull(home)
            assert stdout.strip() == f"time_entries: {rows} rows ({rows} new, 0 updated)"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()
    small, large = peaks[20_000] / 1024, peaks[200_000] / 1024
    print(f"peak RSS of a pull: 20k rows {small:.0f} MiB, 200k rows {large:.0f} MiB")
    assert large < 200
    assert large - small < 30, f"20k rows: {small:.0f} MiB, 200k rows: {large:.0f} MiB"
