"""`cpmail data pull` of 1,000,000 time entries from PostgreSQL beside `data import` of them as CSV.

The rows are import_bench.py's (same generator, same ``--cache``). They are
loaded once into a table of a PostgreSQL schema of their own, named the way
an agency system might (``hours_log(entry_code, emp, job, task, day, hrs,
cost)``); the pull maps it with one query. A cpmail home (SQLite) with the
staff, client, jobs and tasks imported is made once and copied for every
round.

Each round, side by side, as processes, alternating which goes first:

* ``cpmail data pull`` into a copy of the home (a server-side cursor on
  PostgreSQL, every cell converted and checked, every foreign key checked,
  one transaction);
* ``cpmail data import time_entries.csv`` into another copy.

Peak memory is each child's own VmHWM. Targets: the pull takes at most 1.5x
the CSV import's time; its peak RSS is under 200 MB.

    python bench/pull_bench.py --cache /tmp/cpmail-import
    python bench/pull_bench.py --rows 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, user_env
from bench.import_bench import HOOK, run_cpmail, template_home, write_csvs

TARGET = 1.5
RSS_LIMIT_MB = 200
SERVER = os.environ.get("CPMAIL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
QUERY = (
    "SELECT entry_code AS id, emp AS staff_id, job AS job_id, task AS task_id, "
    "day AS work_date, hrs AS hours, cost AS amount FROM hours_log"
)


def load_source(csv: Path, schema: str) -> str:
    """Create ``schema`` with ``hours_log`` holding the CSV's rows; return the source URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(SERVER)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        conn.exec_driver_sql(
            f'CREATE TABLE "{schema}".hours_log (entry_code TEXT PRIMARY KEY, emp TEXT NOT NULL, '
            "job TEXT, task TEXT, day DATE NOT NULL, hrs NUMERIC(10, 2) NOT NULL, "
            "cost NUMERIC(14, 2))"
        )
        raw = conn.connection.dbapi_connection
        assert raw is not None
        with raw.cursor() as cur, csv.open("rb") as f:  # type: ignore[attr-defined]
            sql = f'COPY "{schema}".hours_log FROM STDIN WITH (FORMAT csv, HEADER true)'
            with cur.copy(sql) as copy:
                while chunk := f.read(1 << 20):
                    copy.write(chunk)
        conn.exec_driver_sql(f'ANALYZE "{schema}".hours_log')
    engine.dispose()
    return f"{SERVER}?options=-csearch_path%3D{schema}"


def drop_source(schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    engine.dispose()


def configure_pull(home: Path, url: str) -> None:
    with (home / "cpmail.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[source]\nurl = "{url}"\n\n[source.tables.time_entries]\nquery = "{QUERY}"\n')


def run_pull(home: Path) -> tuple[float, int, str]:
    """Time `cpmail data pull` as a process; return (seconds, peak RSS in KiB, its summary)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", HOOK, "--home", str(home), "data", "pull"],
        env=user_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"cpmail data pull failed: {proc.stderr}")
    peak = next(int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("VmHWM"))
    return took, peak, proc.stdout.strip()


def fresh_copy(template: Path, home: Path) -> None:
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(template, home)
    fd = os.open(home / "cpmail.db", os.O_RDONLY)  # on disk, as a home would be
    os.fsync(fd)
    os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cpmail-import")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    folder = args.cache / "csv"
    write_csvs(folder, args.rows, args.seed)
    csv = folder / "time_entries.csv"
    schema = f"pull_bench_{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    url = load_source(csv, schema)
    print(
        f"{args.rows:,} time entries in PostgreSQL table hours_log "
        f"(loaded in {time.perf_counter() - start:.1f} s)"
    )
    try:
        with tempfile.TemporaryDirectory(dir=args.cache, prefix="pull-") as tmp:
            work = Path(tmp)
            template = template_home(folder, work)
            pulls: list[float] = []
            imports: list[float] = []
            pull_peaks: list[int] = []
            import_peaks: list[int] = []
            summary = ""
            for r in range(args.rounds):
                steps = ["pull", "import"] if r % 2 == 0 else ["import", "pull"]
                for step in steps:
                    home = work / step
                    fresh_copy(template, home)
                    if step == "pull":
                        configure_pull(home, url)
                        took, peak, summary = run_pull(home)
                        pulls.append(took)
                        pull_peaks.append(peak)
                    else:
                        took, peak, _ = run_cpmail(home, csv)
                        imports.append(took)
                        import_peaks.append(peak)
                print(
                    f"  round {r + 1}: pull {pulls[-1]:.2f} s (peak {pull_peaks[-1] / 1024:.0f} "
                    f"MiB), CSV import {imports[-1]:.2f} s (peak "
                    f"{import_peaks[-1] / 1024:.0f} MiB)",
                    flush=True,
                )
    finally:
        drop_source(schema)
    ratio = median([a / b for a, b in zip(pulls, imports, strict=True)])
    pull_mb = max(pull_peaks) * 1024 / 1e6
    import_mb = max(import_peaks) * 1024 / 1e6
    print(f"{args.rounds} interleaved rounds, medians:  ({summary})")
    print(f"  cpmail data pull (PostgreSQL)   {median(pulls):7.2f} s   peak RSS {pull_mb:6.1f} MB")
    print(
        f"  cpmail data import (CSV)        {median(imports):7.2f} s   peak RSS {import_mb:6.1f} MB"
    )
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"  pull / import                   {ratio:7.2f} x   (target <= {TARGET:g} x: {verdict})")
    verdict = "met" if pull_mb < RSS_LIMIT_MB else "NOT met"
    limit = f"target < {RSS_LIMIT_MB} MB: {verdict}"
    print(f"  pull peak RSS (VmHWM)           {pull_mb:7.1f} MB  ({limit})")


if __name__ == "__main__":
    main()
