"""Columns as files see them, the tables, and what an import reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cpmail.errors import InputError
from cpmail.store import schema

FORMATS = ("csv", "json", "ndjson")
EXPORT_FORMATS = ("csv", "json", "ndjson")
EXTENSIONS = {".csv": "csv", ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson"}

# Rows per executemany: large enough that per-statement overhead vanishes,
# small enough that a batch is a few megabytes at most.
BATCH_ROWS = 5000
# Values per ``IN (…)`` lookup.
LOOKUP_CHUNK = 500
# Foreign keys known to exist, per referenced table; cleared when it grows past this.
KNOWN_KEYS_MAX = 100_000
# The longest single JSON object accepted, in characters, and the longest line
# or CSV field: a row of agency data is never near it, and a file without line
# breaks is refused after reading this much, not after reading all of it.
JSON_ITEM_MAX = 8 * 1024 * 1024
LINE_MAX = JSON_ITEM_MAX
_MAX_SHOWN = "8 MB"
# JSON integers with more digits than this are read as Decimal (no int conversion limit).
JSON_INT_DIGITS = 100
JSON_CHUNK = 256 * 1024
# SQLite page cache during an import (KiB): bigger is faster for large files
# because index pages stay in memory, but it counts against the process' RSS.
SQLITE_IMPORT_CACHE_KIB = 16 * 1024

LIST_COLUMNS = frozenset({"notify", "attendees", "events", "access"})
# Lists of people: staff IDs, staff names and recipient rules, never an e-mail address.
RECIPIENT_COLUMNS = frozenset({"notify", "attendees"})
# Columns that hold one e-mail address each.
ADDRESS_COLUMNS = frozenset(
    {
        ("staff", "work_email"),
        ("staff", "username"),
        ("clients", "billing_email"),
        ("vendors", "email"),
    }
)
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("job_status_codes", "kind"): ("production", "billing"),
    ("diary_entries", "kind"): ("client", "vendor"),
    ("job_costs", "kind"): ("order", "cost"),
}
# diary_entries.party_id names a client or a vendor, depending on kind.
POLYMORPHIC: dict[tuple[str, str], tuple[str, dict[str, tuple[str, str]]]] = {
    ("diary_entries", "party_id"): (
        "kind",
        {"client": ("clients", "id"), "vendor": ("vendors", "id")},
    ),
}
STATUS_COLUMNS = ("production_status", "billing_status")
# Columns whose values must come in this order within a row, when both are given:
# (table, earlier, later, what the row would say otherwise).
IN_ORDER: tuple[tuple[str, str, str, str], ...] = (
    ("calendar_entries", "starts_at", "ends_at", "the entry would end before it starts"),
    ("calendar_entries", "remind_at", "starts_at", "the reminder would come after the start"),
)


# ------------------------------------------------------------------ columns


@dataclass(frozen=True)
class ColumnSpec:
    """One column as files see it: its kind, whether it is part of the key, what it refers to."""

    name: str
    kind: str  # text, date, timestamp, decimal, integer, boolean, list
    key: bool
    required: bool  # NOT NULL: an empty cell is an error
    has_default: bool  # a new row may leave it out
    references: tuple[str, str] | None = None  # (table, column)
    choices: tuple[str, ...] = ()
    precision: int = 0
    scale: int = 0

    @property
    def needed_for_new_rows(self) -> bool:
        return self.required and not self.has_default


def _kind(col: sa.Column[Any]) -> str:
    t = col.type
    if isinstance(t, sa.Boolean):
        return "boolean"
    if isinstance(t, sa.DateTime):
        return "timestamp"
    if isinstance(t, sa.Date):
        return "date"
    if isinstance(t, sa.Integer):
        return "integer"
    if isinstance(t, sa.Numeric):
        return "decimal"
    if col.name in LIST_COLUMNS:
        return "list"
    return "text"


def columns_of(table: sa.Table) -> list[ColumnSpec]:
    """Describe every column of ``table`` as import and export treat it."""
    out = []
    for col in table.columns:
        if col.info.get("internal"):
            continue
        refs = [(fk.column.table.name, fk.column.name) for fk in col.foreign_keys]
        numeric = col.type if isinstance(col.type, sa.Numeric) else None
        out.append(
            ColumnSpec(
                name=col.name,
                kind=_kind(col),
                key=bool(col.primary_key),
                required=not col.nullable,
                has_default=col.server_default is not None,
                references=refs[0] if refs else None,
                choices=CHOICES.get((table.name, col.name), ()),
                precision=int(numeric.precision or 0) if numeric is not None else 0,
                scale=int(numeric.scale or 0) if numeric is not None else 0,
            )
        )
    return out


def key_columns(table: sa.Table) -> list[str]:
    """The columns an import upserts by, in the schema's order."""
    return [c.name for c in table.primary_key.columns]


def table_names() -> tuple[str, ...]:
    """The agency tables, in an order that satisfies their foreign keys."""
    return schema.AGENCY_TABLE_NAMES


def get_table(name: str) -> sa.Table:
    """Return the agency table called ``name``, or raise InputError naming the known ones."""
    for t in schema.AGENCY_TABLES:
        if t.name == name:
            return t
    raise InputError(f"unknown table {name!r}; the tables are {', '.join(table_names())}.")


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class ImportResult:
    """What an import did (or, in a dry run, would do) to one table.

    ``new`` rows were inserted, ``updated`` existing rows changed, ``unchanged``
    rows were already as given, ``deleted`` rows were missing from a whole-table
    import (``--replace``); ``status_changes`` job status history rows were added.
    """

    table: str
    source: str
    rows: int
    new: int
    updated: int
    status_changes: int = 0
    unchanged: int = 0
    deleted: int = 0
    replace: bool = False
    dry_run: bool = False
    origin: str = "file"  # "file", "query" (data pull) or "rows"

    def summary(self) -> str:
        """One line for people, e.g. ``jobs: 30 rows (28 new, 2 updated, 1 status change)``."""
        parts = [f"{self.new} new", f"{self.updated} updated"]
        if self.unchanged or self.dry_run:
            parts.append(f"{self.unchanged} unchanged")
        if self.replace or self.deleted or self.dry_run:
            parts.append(f"{self.deleted} deleted")
        if self.table == "jobs":
            parts.append(_plural(self.status_changes, "status change"))
        return f"{self.table}: {_plural(self.rows, 'row')} ({', '.join(parts)})"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "table": self.table,
            "query" if self.origin == "query" else "file": self.source,
            "rows": self.rows,
            "new": self.new,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "status_changes": self.status_changes,
        }
        if self.dry_run:
            out["dry_run"] = True
        return out


@dataclass(frozen=True)
class TableInfo:
    """One agency table: its columns, key and number of rows."""

    table: str
    columns: list[str]
    key: list[str]
    rows: int


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
