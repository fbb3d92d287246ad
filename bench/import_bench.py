"""`cpmail data import` of 1,000,000 time entries against sqlite3's own `.import`.

The CSV files are generated once into ``--cache`` (deterministic): 200 staff,
one client, 5,000 jobs, 50,000 tasks, and ``time_entries.csv`` whose rows
refer to them. A cpmail home with the staff, client, jobs and tasks imported
is made once too and copied for every round.

Each round, side by side, as processes:

* ``cpmail data import time_entries.csv`` into a copy of that home (the
  importer converts and checks every cell, checks every foreign key, and
  upserts in one transaction). Its peak memory is the child's own VmHWM,
  read from /proc/self/status when it exits (``ru_maxrss`` of a child
  would count the forking parent);
* the ``sqlite3`` command-line shell's ``.import --csv`` of the same file
  into an equivalent table in a fresh database in WAL mode: the same
  columns, key, foreign key clauses (the shell does not enforce them) and
  indexes (the partial index of rows not yet checked holds every new row, so
  here it is a plain index on the same column), and the same page cache as
  cpmail's importer uses (``--default-cache`` leaves sqlite3 at its default).

The rounds alternate which goes first; the figure is the median of the
per-round ratios. Targets: <= 3x sqlite3, peak RSS < 200 MB.

    python bench/import_bench.py --cache /tmp/cpmail-import
    python bench/import_bench.py --cache /tmp/cpmail-import --rows 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CPMAIL, median, user_env
from cpmail.dataio import SQLITE_IMPORT_CACHE_KIB

TARGET = 3.0
RSS_LIMIT_MB = 200
STAFF, JOBS, TASKS_PER_JOB = 200, 5000, 10
SQLITE = shutil.which("sqlite3") or "/usr/bin/sqlite3"

HOOK = (
    "import atexit, sys\n"
    "def report():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('VmHWM ' + line.split()[1] + '\\n')\n"
    "atexit.register(report)\n"
    "from cpmail.cli.app import main\n"
    "main()\n"
)


def write_csvs(folder: Path, rows: int, seed: int) -> None:
    """The parent tables and ``time_entries.csv``, unless they are there already."""
    done = folder / f"done-{rows}-{seed}"
    if done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    (folder / "staff.csv").write_text(
        "id,name,work_email,planned_hours\n"
        + "".join(f"S{i:03d},Staff {i},s{i:03d}@agency.test,8\n" for i in range(STAFF))
    )
    (folder / "clients.csv").write_text("id,name\nC1,Client\n")
    (folder / "jobs.csv").write_text(
        "id,client_id,title,opened_at\n"
        + "".join(f"J{j:05d},C1,Job {j},2025-{1 + j % 12:02d}-01\n" for j in range(JOBS))
    )
    (folder / "tasks.csv").write_text(
        "id,job_id,name,assignee_id\n"
        + "".join(
            f"K{j:05d}{k},J{j:05d},Task {k},S{(j + k) % STAFF:03d}\n"
            for j in range(JOBS)
            for k in range(TASKS_PER_JOB)
        )
    )
    with (folder / "time_entries.csv").open("w", encoding="utf-8") as f:
        f.write("id,staff_id,job_id,task_id,work_date,hours,amount\n")
        for i in range(rows):
            j = rng.randrange(JOBS)
            hours = rng.choice(("0.5", "1", "1.5", "2", "2.25", "3", "4", "7.5"))
            f.write(
                f"T{i:08d},S{rng.randrange(STAFF):03d},J{j:05d},K{j:05d}{rng.randrange(10)},"
                f"2026-{1 + i * 12 // rows:02d}-{1 + rng.randrange(28):02d},{hours},"
                f"{float(hours) * (100 + 5 * rng.randrange(20)):.2f}\n"
            )
    done.write_text("")


def cli(home: Path, *args: str) -> None:
    proc = subprocess.run(
        [CPMAIL, "--home", str(home), *args], env=user_env(), capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"cpmail {' '.join(args)}: {proc.stderr.decode(errors='replace')}")


def template_home(folder: Path, work: Path) -> Path:
    """A home with staff, client, jobs and tasks imported (not timed)."""
    home = work / "template"
    cli(home, "init")
    for table in ("staff", "clients", "jobs", "tasks"):
        cli(home, "data", "import", str(folder / f"{table}.csv"))
    return home


def equivalent_ddl(home: Path) -> list[str]:
    """cpmail's time_entries table and its indexes, without cpmail's own column."""
    conn = sqlite3.connect(home / "cpmail.db")
    table = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'time_entries'"
    ).fetchone()[0]
    indexes = [
        r[0]
        for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'time_entries' "
            "AND sql IS NOT NULL ORDER BY name"
        )
    ]
    conn.close()
    lines = [ln for ln in table.splitlines() if "cpmail_checked" not in ln]
    out = ["\n".join(lines)]
    for sql in indexes:
        if "cpmail_checked" in sql:  # every imported row is unchecked: all of them are in it
            sql = sql.split(" WHERE ")[0]
        out.append(sql)
    return out


def run_cpmail(home: Path, csv: Path) -> tuple[float, int, str]:
    """Time the import as a process; return (seconds, peak RSS in KiB, its summary line)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", HOOK, "--home", str(home), "data", "import", str(csv)],
        env=user_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"cpmail data import failed: {proc.stderr}")
    peak = next(int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("VmHWM"))
    return took, peak, proc.stdout.strip()


def run_sqlite3(db: Path, csv: Path, ddl: list[str], cache_kib: int | None) -> float:
    """Time the sqlite3 shell importing ``csv`` into the equivalent table of a fresh database."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    setup = sqlite3.connect(db)
    setup.execute("PRAGMA journal_mode=WAL")
    for sql in ddl:
        setup.execute(sql)
    setup.commit()
    setup.close()
    script = ""
    if cache_kib is not None:
        script += f"PRAGMA cache_size=-{cache_kib};\n"
    script += f".import --csv --skip 1 {csv} time_entries\n"
    start = time.perf_counter()
    proc = subprocess.run(
        [SQLITE, str(db)], input=script, capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - start
    if proc.returncode != 0 or proc.stderr.strip():
        raise SystemExit(f"sqlite3 .import failed: {proc.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cpmail-import")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--default-cache", action="store_true", help="sqlite3 at its default cache")
    args = ap.parse_args()
    folder = args.cache / "csv"
    start = time.perf_counter()
    write_csvs(folder, args.rows, args.seed)
    csv = folder / "time_entries.csv"
    print(
        f"{args.rows:,} time entries, {csv.stat().st_size / 2**20:.0f} MiB of CSV "
        f"(ready in {time.perf_counter() - start:.1f} s)"
    )
    cache_kib = None if args.default_cache else SQLITE_IMPORT_CACHE_KIB
    with tempfile.TemporaryDirectory(dir=args.cache, prefix="work-") as tmp:
        work = Path(tmp)
        template = template_home(folder, work)
        ddl = equivalent_ddl(template)
        ours: list[float] = []
        theirs: list[float] = []
        peaks: list[int] = []
        summary = ""
        for r in range(args.rounds):
            home = work / "home"
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(template, home)
            fd = os.open(home / "cpmail.db", os.O_RDONLY)  # on disk, as a home would be
            os.fsync(fd)
            os.close(fd)
            steps = ["cpmail", "sqlite3"] if r % 2 == 0 else ["sqlite3", "cpmail"]
            for step in steps:
                if step == "cpmail":
                    took, peak, summary = run_cpmail(home, csv)
                    ours.append(took)
                    peaks.append(peak)
                else:
                    theirs.append(run_sqlite3(work / "plain.db", csv, ddl, cache_kib))
            print(
                f"  round {r + 1}: cpmail {ours[-1]:.2f} s (peak {peaks[-1] / 1024:.0f} MiB), "
                f"sqlite3 {theirs[-1]:.2f} s",
                flush=True,
            )
    ratio = median([a / b for a, b in zip(ours, theirs, strict=True)])
    peak_mb = max(peaks) * 1024 / 1e6
    cache = "default page cache" if cache_kib is None else f"page cache {cache_kib // 1024} MiB"
    print(f"{args.rounds} interleaved rounds, medians:  ({summary})")
    print(f"  cpmail data import      {median(ours):7.2f} s")
    print(f"  sqlite3 .import         {median(theirs):7.2f} s   ({cache}, WAL)")
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"  cpmail / sqlite3        {ratio:7.2f} x   (target <= {TARGET:g} x: {verdict})")
    verdict = "met" if peak_mb < RSS_LIMIT_MB else "NOT met"
    print(
        f"  peak RSS (VmHWM)        {peak_mb:7.1f} MB  (highest of the rounds; "
        f"target < {RSS_LIMIT_MB} MB: {verdict})"
    )


if __name__ == "__main__":
    main()
