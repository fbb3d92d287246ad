#!/usr/bin/env python3
"""Import jobs from a spreadsheet export whose columns have other names.

Many agency systems and spreadsheets export jobs with headers such as
"Job #", "Client", "Opened". cpmail's `jobs` table wants `id`, `client_id`,
`opened_at`… This script reads such a CSV file, renames the columns, turns
client names into cpmail client ids, turns dates such as "11/23/2026 9:30 AM"
into ISO dates, writes a `jobs.csv` cpmail understands, and runs
`cpmail data import` on it.

    python3 import-from-spreadsheet.py spreadsheet-jobs.csv
    python3 import-from-spreadsheet.py spreadsheet-jobs.csv --home /var/lib/cpmail
    python3 import-from-spreadsheet.py spreadsheet-jobs.csv --dry-run   # print, import nothing

Change COLUMNS and DATE_FORMATS below to fit your own export. The exit code
is cpmail's (0 imported, 2 a bad row: nothing of the file was written).
Run it from cron before `cpmail check`: a status that changed since the last
import becomes a `status-changed` notification.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

# Spreadsheet header -> cpmail `jobs` column. Headers not listed are ignored.
COLUMNS = {
    "Job #": "id",
    "Client": "client_id",
    "Job Title": "title",
    "Opened": "opened_at",
    "Production Status": "production_status",
    "Billing Status": "billing_status",
}
REQUIRED = ("id",)  # a new job also needs client_id and title; cpmail says so if missing

# Date formats the export may use, tried in order; the first that fits wins.
DATE_FORMATS = (
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y",
    "%m/%d/%y",
)


class BadInput(Exception):
    """A problem with the spreadsheet, described for a person."""


def cpmail_command(cpmail: str, home: str | None) -> list[str]:
    """The cpmail command line to run, with --home when given."""
    cmd = shlex.split(cpmail)
    return [*cmd, "--home", home] if home else cmd


def client_ids(cmd: Sequence[str]) -> dict[str, str]:
    """Map each client's name (lower case) and id to its id, from cpmail's own data."""
    out = subprocess.run(
        [*cmd, "data", "export", "clients", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise BadInput(f"cannot read the clients from cpmail: {out.stderr.strip()}")
    ids: dict[str, str] = {}
    for client in json.loads(out.stdout or "[]"):
        ids[str(client["id"]).lower()] = str(client["id"])
        if client.get("name"):
            ids[str(client["name"]).strip().lower()] = str(client["id"])
    return ids


def iso_timestamp(text: str, line: int) -> str:
    """'11/23/2026 9:30 AM' -> '2026-11-23T09:30:00'; blank stays blank."""
    text = " ".join(text.split())
    if not text:
        return ""
    for fmt in DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).isoformat()
        except ValueError:
            continue
    raise BadInput(f"line {line}: 'Opened' {text!r} is not a date this script knows")


def converted_rows(path: Path, clients: dict[str, str]) -> Iterator[dict[str, str]]:
    """Read the spreadsheet and yield rows with cpmail's column names."""
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f)
        headers = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = headers
        mapped = [h for h in headers if h in COLUMNS]
        for column in REQUIRED:
            if column not in (COLUMNS[h] for h in mapped):
                wanted = next(h for h, c in COLUMNS.items() if c == column)
                raise BadInput(f"{path}: no {wanted!r} column (found: {', '.join(headers)})")
        for row in reader:
            line = reader.line_num
            values = {COLUMNS[h]: (row.get(h) or "").strip() for h in mapped}
            if not any(values.values()):
                continue  # a blank line at the end of the export
            if "client_id" in values:
                name = values["client_id"]
                if name.lower() not in clients:
                    raise BadInput(
                        f"line {line}: client {name!r} is not in cpmail's clients; "
                        "import clients.csv first or fix the name"
                    )
                values["client_id"] = clients[name.lower()]
            if "opened_at" in values:
                values["opened_at"] = iso_timestamp(values["opened_at"], line)
            yield values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="the spreadsheet's CSV export")
    parser.add_argument("--home", help="cpmail's home folder (default: cpmail's own default)")
    parser.add_argument(
        "--cpmail", default="cpmail", help="how to run cpmail (default: cpmail on the PATH)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the converted CSV; import nothing"
    )
    args = parser.parse_args(argv)
    cmd = cpmail_command(args.cpmail, args.home)
    try:
        rows = list(converted_rows(args.file, client_ids(cmd)))
    except (BadInput, OSError) as e:
        print(f"import-from-spreadsheet: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"import-from-spreadsheet: {args.file} has no jobs; nothing to do.")
        return 0
    columns = list(rows[0])
    if args.dry_run:
        writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    folder = Path(tempfile.mkdtemp(prefix="cpmail-jobs-"))
    converted = folder / "jobs.csv"  # the file name tells cpmail the table
    with converted.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    result = subprocess.run([*cmd, "data", "import", str(converted)], check=False)
    if result.returncode == 0:
        converted.unlink()
        folder.rmdir()
    else:
        print(
            f"import-from-spreadsheet: the converted file is kept in {converted}; "
            "line numbers in cpmail's message refer to it.",
            file=sys.stderr,
        )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
