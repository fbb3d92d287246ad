"""Export tables as CSV, JSON or NDJSON, streamed; the list of tables."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TextIO

import sqlalchemy as sa

from cpmail.dataio.columns import (
    EXPORT_FORMATS,
    EXTENSIONS,
    TableInfo,
    columns_of,
    get_table,
    key_columns,
)
from cpmail.errors import InputError, Unavailable
from cpmail.files import atomic_open, write_failed
from cpmail.store import schema

# ------------------------------------------------------------------ export


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, dt.datetime):
        return v.isoformat(timespec="seconds" if not v.microsecond else "microseconds")
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def _json_value(v: Any) -> str:
    if v is None:
        return "null"
    cell = _csv_cell(v)
    # true, false, an integer, or a decimal exactly as stored: a JSON literal as CSV writes it
    return cell if isinstance(v, int | Decimal) else json.dumps(cell, ensure_ascii=False)


def _rows(engine: sa.Engine, table: sa.Table) -> Iterator[Sequence[Any]]:
    order = list(table.primary_key.columns)
    q = sa.select(*(table.c[s.name] for s in columns_of(table))).order_by(*order)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=2000).execute(q)
        n = 0
        try:
            for partition in result.partitions():
                yield from partition
                n += len(partition)
        except (ValueError, TypeError, ArithmeticError) as e:
            # a value written into the database by other means than cpmail: not its type
            raise Unavailable(
                f"table {table.name}, from row {n + 1} on in key order, holds a value that is "
                f"not of its column's type ({e}); correct it in the database, or import the "
                "table again."
            ) from None


def export_table(engine: sa.Engine, table: str, out: IO[str], fmt: str = "csv") -> int:
    """Write every row of ``table`` to ``out`` as csv, json or ndjson; return the row count.

    Rows are ordered by key and streamed. The output imports back to the
    same values.
    """
    t = get_table(table)
    fmt = fmt.lower()
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    names = [c.name for c in columns_of(t)]
    n = 0
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        # The writer quotes a field with a line feed but not one with a lone carriage
        # return (not part of its line ending), which no reader takes back: such a row
        # is written with every field quoted.
        quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        w.writerow(names)
        for row in _rows(engine, t):
            cells = [_csv_cell(v) for v in row]
            (quoted if any("\r" in c for c in cells) else w).writerow(cells)
            n += 1
        return n
    keys = [json.dumps(name) + ": " for name in names]
    if fmt == "ndjson":
        for row in _rows(engine, t):
            out.write(
                "{" + ", ".join(k + _json_value(v) for k, v in zip(keys, row, strict=True)) + "}\n"
            )
            n += 1
        return n
    out.write("[")
    for row in _rows(engine, t):
        out.write(",\n  {" if n else "\n  {")
        out.write(", ".join(k + _json_value(v) for k, v in zip(keys, row, strict=True)) + "}")
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def export_file(
    engine: sa.Engine, table: str, path: str | os.PathLike[str], fmt: str | None = None
) -> int:
    """Export ``table`` to ``path`` atomically (temporary file + rename); return the row count.

    The format is ``fmt``, else the file's extension, else csv.
    """
    p = Path(path)
    form = fmt or EXTENSIONS.get(p.suffix.lower(), "csv")
    get_table(table)
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a file name to write to.")
    try:
        with contextlib.ExitStack() as stack:
            try:
                # Agency data: private (0600), whatever the umask.
                f = stack.enter_context(atomic_open(p, mode=0o600, encoding="utf-8", newline=""))
            except FileNotFoundError:
                raise InputError(
                    f"cannot write {p}: the folder {p.parent} does not exist."
                ) from None
            return export_table(engine, table, f, form)
    except BrokenPipeError:  # (a pipe named as the file: its reader went away)
        raise
    except OSError as e:  # (making, writing or renaming the file: it is left as it was)
        raise write_failed(p, e) from None


def export_stdout(engine: sa.Engine, table: str, fmt: str = "csv") -> int:
    """Export ``table`` to standard output."""
    out: TextIO = sys.stdout
    n = export_table(engine, table, out, fmt)
    out.flush()
    return n


# ------------------------------------------------------------------ tables


def table_info(engine: sa.Engine) -> list[TableInfo]:
    """Every agency table with its columns, key and row count."""
    out = []
    with engine.connect() as conn:
        for t in schema.AGENCY_TABLES:
            rows = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            out.append(
                TableInfo(
                    table=t.name,
                    columns=[c.name for c in columns_of(t)],
                    key=key_columns(t),
                    rows=int(rows),
                )
            )
    return out
