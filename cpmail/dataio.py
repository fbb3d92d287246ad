"""Import and export the agency's data as CSV, JSON or NDJSON, streamed in batches.

An import reads one file into one table inside one transaction and upserts by
the table's key (``id``, or a link table's key columns). Every cell is
converted and checked for its column's type; foreign keys are checked batch by
batch against the database, which already holds the earlier rows of the same
file. The first bad row stops the import with one sentence naming the file,
the line (or JSON item), the row's key and the column; nothing of the file is
written.

Memory stays flat whatever the file's size: rows are read as a stream,
converted straight to the values the database stores and written with
``executemany`` a batch at a time. Only bounded caches of foreign keys known
to exist, and the forward references of a self-referencing table (a
supervisor listed after the staff member) that are still open, are kept
across batches.

The public functions are :func:`import_file`, :func:`import_rows`,
:func:`export_table`, :func:`export_file`, :func:`table_info`,
:func:`resolve_import` and :func:`get_table`.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

import sqlalchemy as sa

from cpmail.errors import ConfigError, InputError
from cpmail.settings import Settings
from cpmail.store import schema
from cpmail.store.schema import CHECKED

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

_csv_limit_lock = threading.Lock()


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
        if self.unchanged:
            parts.append(f"{self.unchanged} unchanged")
        if self.replace or self.deleted:
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


# ------------------------------------------------------------------ converters


class _Bad(Exception):
    """A cell that does not fit its column; ``str(e)`` is the reason."""


class _Obj(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs: keeps duplicates and tells objects from arrays."""


class _TooDeep:
    """A JSON value nested more deeply than Python's parser goes: never a cell's value."""

    def __str__(self) -> str:
        return "[[…]]"


def _clip(text: str, limit: int = 60) -> str:
    """``text`` cut for an error message (a cell may hold megabytes)."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}… ({len(text)} characters)"


def _r(s: str) -> str:
    """``repr(s)``, cut for an error message."""
    return repr(s) if len(s) <= 60 else repr(s[:40]) + f"… ({len(s)} characters)"


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_TS_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?)?\Z"
)
_NUM_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)\Z")
_INT_RE = re.compile(r"[+-]?\d+\Z")
_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
_INT_MAX = 2**31 - 1
_MONEY_HELP = "a number such as 12.50 (no thousands separators, currency signs or exponents)"


def _shown(v: Any) -> str:
    """A JSON value as the user wrote it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _r(v)
    return _clip(str(v))


def _native_error(v: Any, what: str) -> _Bad:
    if isinstance(v, _TooDeep):
        return _Bad(f"a value nested this deeply is not allowed here; give {what}")
    if isinstance(v, _Obj):
        return _Bad(f"a nested object is not allowed here; give {what}")
    if isinstance(v, list):
        return _Bad(f"a list is not allowed here; give {what}")
    return _Bad(f"{_shown(v)} is not {what}")


def _sqlite_ts(v: dt.datetime) -> str:
    # The form SQLAlchemy's SQLite DateTime stores and reads back.
    return v.isoformat(" ", "microseconds")


def _make_converter(
    spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo
) -> Callable[[Any], Any]:
    """Return a function: raw cell (text or JSON value) -> the value the database stores."""
    kind = spec.kind
    strip = spec.key or spec.references is not None or kind != "text"
    required = spec.required
    if spec.key:
        empty = f"the key is empty; every {table} row needs its {spec.name}"
    else:
        empty = "is empty, but this column needs a value"

    parse_str: Callable[[str], Any]
    parse_native: Callable[[Any], Any]

    if kind == "text":
        choices = spec.choices

        def parse_str(s: str) -> Any:
            if "\x00" in s:
                raise _Bad("contains a NUL character")
            if choices and s not in choices:
                raise _Bad(f"{_r(s)} is not one of {', '.join(choices)}")
            return s

        def parse_native(v: Any) -> Any:
            if type(v) is int or isinstance(v, Decimal):
                return parse_str(str(v))
            raise _native_error(v, "text")

    elif kind == "list":

        def parse_str(s: str) -> Any:
            if "\x00" in s:
                raise _Bad("contains a NUL character")
            items = [p.strip() for p in s.split(",")]
            return ",".join(p for p in items if p) or None

        def parse_native(v: Any) -> Any:
            if isinstance(v, list) and not isinstance(v, _Obj):
                if not all(isinstance(x, str) for x in v):
                    raise _Bad('a list here may hold only text, e.g. ["JD", "AB"]')
                return parse_str(",".join(v))
            raise _native_error(v, "comma-separated text or a list of text")

    elif kind == "date":

        def parse_str(s: str) -> Any:
            if _DATE_RE.match(s):
                try:
                    d = dt.date.fromisoformat(s)
                except ValueError:
                    pass
                else:
                    return s if sqlite else d
            raise _Bad(f"{_r(s)} is not a date as YYYY-MM-DD")

        def parse_native(v: Any) -> Any:
            if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
                return v.isoformat() if sqlite else v
            raise _native_error(v, "a date as YYYY-MM-DD")

    elif kind == "timestamp":

        def finish(d: dt.datetime) -> Any:
            if d.tzinfo is not None:
                d = d.astimezone(tz).replace(tzinfo=None)
            return _sqlite_ts(d) if sqlite else d

        def parse_str(s: str) -> Any:
            if _TS_RE.match(s):
                try:
                    d = dt.datetime.fromisoformat(s)
                except ValueError:
                    pass
                else:
                    return finish(d)
            raise _Bad(
                f"{_r(s)} is not a date as YYYY-MM-DD or a timestamp as YYYY-MM-DDTHH:MM[:SS] "
                "(ISO 8601; an offset such as +01:00 is allowed)"
            )

        def parse_native(v: Any) -> Any:
            if isinstance(v, dt.datetime):
                return finish(v)
            if isinstance(v, dt.date):
                return finish(dt.datetime.combine(v, dt.time()))
            raise _native_error(v, "a timestamp as YYYY-MM-DDTHH:MM[:SS]")

    elif kind == "decimal":
        exp = Decimal(1).scaleb(-spec.scale)
        whole = (spec.precision or 28) - spec.scale

        def finish_dec(d: Decimal, shown: str) -> Any:
            if not d.is_finite():
                raise _Bad(f"{shown} is not {_MONEY_HELP}")
            if d and d.adjusted() >= whole:
                raise _Bad(f"{shown} is too large (at most {whole} digits before the point)")
            try:
                q = d.quantize(exp, ROUND_HALF_UP)
            except InvalidOperation:
                raise _Bad(f"{shown} is too large") from None
            return float(q) if sqlite else q

        def parse_str(s: str) -> Any:
            if not _NUM_RE.match(s):
                raise _Bad(f"{_r(s)} is not {_MONEY_HELP}")
            return finish_dec(Decimal(s), _r(s))

        def parse_native(v: Any) -> Any:
            if isinstance(v, Decimal):
                return finish_dec(v, _clip(str(v)))
            if type(v) is int:
                return finish_dec(Decimal(v), _clip(str(v)))
            if type(v) is float:
                return finish_dec(Decimal(repr(v)), repr(v))
            raise _native_error(v, "a number")

    elif kind == "integer":

        def check_int(n: int, shown: str) -> int:
            if abs(n) > _INT_MAX:
                raise _Bad(f"{shown} is too large for a whole number here")
            return n

        def parse_str(s: str) -> Any:
            if not _INT_RE.match(s):
                raise _Bad(f"{_r(s)} is not a whole number")
            if len(s) > 20:  # before int(): Python limits the digits it converts
                raise _Bad(f"{_r(s)} is too large for a whole number here")
            return check_int(int(s), _r(s))

        def parse_native(v: Any) -> Any:
            if type(v) is int:
                return check_int(v, str(v))
            if isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
                if v.adjusted() > 20:
                    raise _Bad(f"{_clip(str(v))} is too large for a whole number here")
                return check_int(int(v), str(v))
            raise _native_error(v, "a whole number")

    elif kind == "boolean":
        true: Any = 1 if sqlite else True
        false: Any = 0 if sqlite else False

        def parse_str(s: str) -> Any:
            b = _BOOLS.get(s.lower())
            if b is None:
                raise _Bad(f"{_r(s)} is not true or false (or yes/no, 1/0)")
            return true if b else false

        def parse_native(v: Any) -> Any:
            if type(v) is bool or (type(v) is int and v in (0, 1)):
                return true if v else false
            raise _native_error(v, "true or false")

    else:  # pragma: no cover - every column kind is handled above
        raise AssertionError(kind)

    def on_empty() -> Any:
        if required:
            raise _Bad(empty)
        return None

    def other(v: Any) -> Any:
        return on_empty() if v is None else parse_native(v)

    # The converters below run once per cell of files with millions of rows:
    # the common case (a well-formed text cell) takes one call and no more.
    if kind == "text" and not spec.choices and strip:

        def convert(v: Any) -> Any:
            if type(v) is str:
                v = v.strip()
                if v and "\x00" not in v:
                    return v
                return parse_str(v) if v else on_empty()
            return other(v)

    elif kind == "text" and not spec.choices:

        def convert(v: Any) -> Any:
            if type(v) is str:
                if v and "\x00" not in v:
                    return v
                return parse_str(v) if v else on_empty()
            return other(v)

    elif kind == "decimal":
        # Most cells already fit the column: no rounding or range check needed.
        whole = (spec.precision or 28) - spec.scale
        fits = re.compile(rf"[+-]?\d{{1,{whole}}}(?:\.\d{{0,{spec.scale}}})?\Z").match
        plain: Callable[[str], Any] = float if sqlite else Decimal

        def convert(v: Any) -> Any:
            if type(v) is str:
                v = v.strip()
                if v:
                    return plain(v) if fits(v) else parse_str(v)
                return on_empty()
            return other(v)

    else:

        def convert(v: Any) -> Any:
            if type(v) is str:
                if strip:
                    v = v.strip()
                return parse_str(v) if v else on_empty()
            return other(v)

    if (table, spec.name) in ADDRESS_COLUMNS:
        return _address_converter(convert, on_empty)
    return convert


def _address_converter(
    convert: Callable[[Any], Any], on_empty: Callable[[], Any]
) -> Callable[[Any], Any]:
    """One e-mail address, checked, stored as given (trimmed of spaces)."""
    from cpmail.addresses import check_address

    def address(v: Any) -> Any:
        text = convert(v)
        if text is None:
            return None
        text = text.strip()
        if not text:
            return on_empty()
        try:
            check_address(text)
        except InputError as e:
            raise _Bad(str(e).rstrip(".")) from None
        return text

    return address


# ------------------------------------------------------------------ readers

# A record: (position, column names, cells). Position is the line of a CSV or
# NDJSON file, the 1-based item number of a JSON array, the row of an iterable.
_Record = tuple[int, tuple[str, ...], Sequence[Any]]


def _open_binary(path: Path, src: str) -> BinaryIO:
    try:
        return open(path, "rb")  # closed by the reader that owns it
    except FileNotFoundError:
        raise InputError(f"{src} does not exist; check the name and the folder.") from None
    except IsADirectoryError:
        raise InputError(f"{src} is a folder, not a file.") from None
    except OSError as e:
        raise InputError(f"cannot read {src}: {e.strerror}.") from None


def _too_long(src: str, line: int) -> InputError:
    return InputError(
        f"{src}, line {line}: the line is longer than {_MAX_SHOWN}, which no row of agency "
        "data is; check that this is the right file and that it has line breaks."
    )


def _text_lines(f: BinaryIO, src: str) -> Iterator[str]:
    """Decode line by line so that a byte that is not UTF-8 is reported with its line.

    A line longer than LINE_MAX is refused after reading that much of it.
    """
    readline = f.readline
    lineno = 0
    while True:
        raw = readline(LINE_MAX + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > LINE_MAX:
            raise _too_long(src, lineno)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(
                f"{src}, line {lineno}: not UTF-8 text; save the file as UTF-8."
            ) from None
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield text


def _raise_csv_field_limit() -> None:
    # Long free text (a diary entry's body) may exceed csv's default 128 KiB per field.
    with _csv_limit_lock:
        if csv.field_size_limit() < JSON_ITEM_MAX:
            csv.field_size_limit(JSON_ITEM_MAX)


def _csv_records(path: Path, src: str) -> Iterator[_Record]:
    _raise_csv_field_limit()
    with _open_binary(path, src) as f:
        reader = csv.reader(_text_lines(f, src), strict=True)
        prev = 0
        try:
            header: list[str] | None = None
            for row in reader:
                if any(cell.strip() for cell in row):
                    header = row
                    break
                prev = reader.line_num
            if header is None:
                raise InputError(
                    f"{src} is empty; a CSV file starts with a header line naming the columns."
                )
            header_line = reader.line_num
            names = tuple(h.strip() for h in header)
            yield header_line, names, ()  # the header alone: lets the importer check the names
            n = len(names)
            prev = reader.line_num
            for row in reader:
                line = prev + 1
                prev = reader.line_num
                if len(row) != n:
                    if not row:
                        continue
                    raise InputError(
                        f"{src}, line {line}: {_plural(len(row), 'field')}, but the header has "
                        f"{_plural(n, 'column')}; check the commas and quotes on that line."
                    )
                yield line, names, row
        except csv.Error as e:
            if "field larger than field limit" in str(e):
                raise InputError(
                    f"{src}, line {prev + 1}: a field is longer than {_MAX_SHOWN}, which no cell "
                    "of agency data is; check for a quote that is opened and never closed."
                ) from None
            raise InputError(
                f"{src}, line {prev + 1}: not valid CSV ({e}); check the quotes on that line."
            ) from None


def _json_int(text: str) -> int | Decimal:
    # Python refuses to convert more than 4,300 digits to int; a cell never needs that many,
    # and as a Decimal it is refused by its column with the row and column named.
    return int(text) if len(text) <= JSON_INT_DIGITS else Decimal(text)


def _json_decoder() -> json.JSONDecoder:
    return json.JSONDecoder(
        object_pairs_hook=_Obj, parse_float=Decimal, parse_int=_json_int, parse_constant=Decimal
    )


_JSON_TOKEN = re.compile(r'["\[\]{},]')
_JSON_STRING_REST = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)


def _decode_deep(decoder: json.JSONDecoder, text: str, start: int) -> tuple[Any, int] | None:
    """Decode the JSON value at ``text[start]`` that is nested too deeply for the parser.

    Without recursion: an object's members are decoded one by one and a member
    still too deep becomes ``_TooDeep`` (its column then says so, with the row's
    key); an array becomes an empty list (not an object). Return (value, end),
    or None when ``text`` ends before the value does.
    """
    depth = 0
    pieces: list[tuple[int, int]] = []  # spans between the top level's commas
    piece = start + 1
    i = start
    end = -1
    while end < 0:
        m = _JSON_TOKEN.search(text, i)
        if m is None:
            return None
        c, i = m.group(), m.end()
        if c == '"':
            rest = _JSON_STRING_REST.match(text, i)
            if rest is None:
                return None
            i = rest.end()
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                pieces.append((piece, m.start()))
                end = i
        elif depth == 1:
            pieces.append((piece, m.start()))
            piece = i
    if text[start] != "{":
        return [], end
    obj = _Obj()
    for a, b in pieces:
        part = text[a:b].strip()
        if not part:
            continue
        key, colon = decoder.raw_decode(part)  # JSONDecodeError: the caller says where
        value = part[colon:].lstrip()
        if not isinstance(key, str) or not value.startswith(":"):
            raise json.JSONDecodeError("expected a name and a colon", part, 0)
        try:
            obj.append((key, decoder.decode(value[1:])))
        except RecursionError:
            obj.append((key, _TooDeep()))
    return obj, end


def _object_record(pos: int, obj: Any, src: str, unit: str) -> _Record:
    if not isinstance(obj, _Obj):
        raise InputError(
            f"{src}, {unit} {pos}: {_shown(obj) if not isinstance(obj, list) else 'a list'} "
            'is not an object; each row must be an object such as {"id": "J1", …}.'
        )
    pairs = sorted(obj, key=itemgetter(0))
    return pos, tuple(k for k, _ in pairs), [v for _, v in pairs]


class _JsonArray:
    """Yield the items of a JSON array one at a time, reading the file in chunks."""

    def __init__(self, f: BinaryIO, src: str) -> None:
        self.f = f
        self.src = src
        self.decoder = _json_decoder()
        self.text = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.pos = 0
        self.line = 1  # line of buf[pos]
        self.read_lines = 0  # newlines in the bytes read so far, for encoding errors
        self.eof = False
        self.seen_any = False

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(JSON_CHUNK)
        try:
            text = self.text.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            line = self.read_lines + chunk[: max(e.start, 0)].count(b"\n") + 1
            raise InputError(
                f"{self.src}, line {line}: not UTF-8 text; save the file as UTF-8."
            ) from None
        self.read_lines += chunk.count(b"\n")
        if not chunk:
            self.eof = True
        if self.pos:
            self.buf = self.buf[self.pos :]
            self.pos = 0
        self.buf += text
        return True

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def _peek(self) -> str | None:
        """Skip white space; return the next character (not consumed) or None at the end."""
        while True:
            buf, pos, n = self.buf, self.pos, len(self.buf)
            while pos < n and buf[pos] in " \t\r\n":
                pos += 1
            self._advance(pos)
            if pos < n:
                self.seen_any = True
                return buf[pos]
            if not self._more():
                return None

    def _fail(self, what: str, line: int | None = None) -> InputError:
        return InputError(f"{self.src}, line {line or self.line}: {what}.")

    def _decode(self, n: int) -> Any:
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if len(self.buf) - self.pos < JSON_ITEM_MAX and self._more():
                    continue
                if len(self.buf) - self.pos >= JSON_ITEM_MAX:
                    raise self._fail(
                        f"item {n} is longer than {_MAX_SHOWN} (or never closed), which no row "
                        "of agency data is; check the file's brackets and quotes"
                    ) from None
                line = self.line + self.buf.count("\n", self.pos, e.pos)
                raise self._fail(f"not valid JSON ({e.msg})", line) from None
            except RecursionError:
                try:
                    found = _decode_deep(self.decoder, self.buf, self.pos)
                except json.JSONDecodeError as e:
                    raise self._fail(f"not valid JSON in item {n} ({e.msg})") from None
                if found is None:
                    if len(self.buf) - self.pos < JSON_ITEM_MAX and self._more():
                        continue
                    raise self._fail(
                        f"item {n} is nested too deeply and longer than {_MAX_SHOWN}"
                    ) from None
                obj, end = found
            self._advance(end)
            return obj

    def items(self) -> Iterator[tuple[int, Any]]:
        c = self._peek()
        if c is None:
            raise InputError(f"{self.src} is empty; expected a JSON array of objects.")
        if c != "[":
            raise self._fail(
                "expected a JSON array of objects ([{…}, {…}]); for one object per line, "
                "name the file .ndjson or use --format ndjson"
            )
        self._advance(self.pos + 1)
        n = 0
        c = self._peek()
        if c != "]":
            while True:
                if c is None:
                    raise self._fail("the file ends before the array is closed with ]")
                n += 1
                yield n, self._decode(n)
                c = self._peek()
                if c == ",":
                    self._advance(self.pos + 1)
                    c = self._peek()
                    continue
                if c == "]":
                    break
                if c is None:
                    raise self._fail("the file ends before the array is closed with ]")
                raise self._fail(f"expected , or ] after item {n}")
        self._advance(self.pos + 1)
        if self._peek() is not None:
            raise self._fail("unexpected text after the end of the array")


def _json_records(path: Path, src: str) -> Iterator[_Record]:
    with _open_binary(path, src) as f:
        for n, obj in _JsonArray(f, src).items():
            yield _object_record(n, obj, src, "item")


def _ndjson_records(path: Path, src: str) -> Iterator[_Record]:
    decoder = _json_decoder()
    with _open_binary(path, src) as f:
        any_line = False
        for lineno, text in enumerate(_text_lines(f, src), 1):
            text = text.strip()
            if not text:
                continue
            any_line = True
            try:
                obj = decoder.decode(text)
            except json.JSONDecodeError as e:
                raise InputError(f"{src}, line {lineno}: not valid JSON ({e.msg}).") from None
            except RecursionError:
                try:
                    found = _decode_deep(decoder, text, 0)
                except json.JSONDecodeError as e:
                    raise InputError(f"{src}, line {lineno}: not valid JSON ({e.msg}).") from None
                if found is None or text[found[1] :].strip():
                    raise InputError(f"{src}, line {lineno}: not valid JSON.") from None
                obj = found[0]
            yield _object_record(lineno, obj, src, "line")
        if not any_line:
            raise InputError(f"{src} is empty; expected one JSON object per line.")


def _mapping_records(rows: Iterable[Mapping[str, Any]], src: str) -> Iterator[_Record]:
    for n, row in enumerate(rows, 1):
        if not isinstance(row, Mapping):
            raise InputError(f"{src}, row {n}: expected a mapping of column names to values.")
        yield n, tuple(row.keys()), list(row.values())


# ------------------------------------------------------------------ the importer


@dataclass
class _Ref:
    """A foreign key of one file column: fixed target, or chosen by another column (``kind``)."""

    index: int
    column: str
    target: tuple[str, str] | None
    by_index: int = -1
    by_target: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class _Plan:
    """How rows with one set of columns are converted, checked and written."""

    names: tuple[str, ...]
    converters: list[Callable[[Any], Any]]
    key_index: list[int]
    refs: list[_Ref]
    sql: str  # an upsert, or an UPDATE when new rows are impossible (see _check_new_rows)
    order: list[int] | None  # the value order ``sql`` takes, when not the file's
    missing_for_new: list[str]
    status_index: list[tuple[int, int]]  # (value index, 0 production / 1 billing)


class _Importer:
    def __init__(
        self,
        conn: sa.Connection,
        settings: Settings,
        table: sa.Table,
        src: str,
        unit: str,
        changed_at: dt.datetime | None,
    ) -> None:
        self.conn = conn
        self.table = table
        self.src = src
        self.unit = unit
        dialect = conn.dialect
        if dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(f"data import supports SQLite and PostgreSQL, not {dialect.name}.")
        self.sqlite = dialect.name == "sqlite"
        self.mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self.distinct = "IS NOT" if self.sqlite else "IS DISTINCT FROM"
        self.q = dialect.identifier_preparer.quote
        self.tz = settings.tz()
        self.changed_by = str(settings["user.staff"]) or None
        self.changed_at = changed_at
        self.specs = {s.name: s for s in columns_of(table)}
        self.keys = key_columns(table)
        self.plans: dict[tuple[str, ...], _Plan] = {}
        self.known: dict[tuple[str, str], set[Any]] = {}
        # Forward references of a self-referencing table still waiting for their row:
        # value -> (position, key text, column).
        self.pending: dict[Any, tuple[int, str, str]] = {}
        self.rows = 0
        self.changed = 0  # rows inserted or changed (the database's row counts)
        self.status_changes = 0
        # --replace: temporary tables of the keys this run gave, per table being replaced.
        self.seen: dict[str, str] = {}

    # ---- messages

    def _where(self, pos: int, key: str = "") -> str:
        return f"{self.src}, {self.unit} {pos}{f' ({key})' if key else ''}"

    def _key_text(self, plan: _Plan, values: Sequence[Any]) -> str:
        parts = []
        for i in plan.key_index:
            v = values[i]
            if isinstance(v, str):
                v = v.strip()
            if v is not None and v != "":
                parts.append(f"{plan.names[i]} {_clip(str(v))}")
        return ", ".join(parts)

    # ---- plans

    def _plan(self, names: tuple[str, ...], pos: int) -> _Plan:
        plan = self.plans.get(names)
        if plan is None:
            if len(self.plans) > 1000:
                self.plans.clear()
            plan = self._make_plan(names, pos)
            self.plans[names] = plan
        return plan

    def _make_plan(self, names: tuple[str, ...], pos: int) -> _Plan:
        t = self.table.name
        where = self._where(pos)
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not name:
                raise InputError(f"{where}: column {i + 1} has no name; name every column.")
            if name in seen:
                raise InputError(f"{where}: column {name!r} appears twice; keep one of them.")
            seen.add(name)
        unknown = [n for n in names if n not in self.specs]
        if unknown:
            hint = ""
            if any(";" in n or "\t" in n for n in unknown):
                hint = " (the file seems to use ; or tabs between cells; use commas)"
            elif not seen & set(self.specs):
                hint = " (is the header line missing? the first line must name the columns)"
            raise InputError(
                f"{where}: unknown column {unknown[0]!r}{hint}; the {t} columns are "
                f"{', '.join(self.specs)}."
            )
        missing_keys = [k for k in self.keys if k not in seen]
        if missing_keys:
            raise InputError(
                f"{where}: there is no {missing_keys[0]} column; {t} rows are found by "
                f"{' and '.join(self.keys)}, so every row needs "
                f"{'it' if len(self.keys) == 1 else 'them'}."
            )
        index = {n: i for i, n in enumerate(names)}
        refs: list[_Ref] = []
        for i, name in enumerate(names):
            spec = self.specs[name]
            poly = POLYMORPHIC.get((t, name))
            if poly is not None:
                by, targets = poly
                if by not in index:
                    raise InputError(
                        f"{where}: column {name} needs the {by} column beside it, "
                        f"to tell which table it refers to."
                    )
                refs.append(_Ref(i, name, None, index[by], targets))
            elif spec.references is not None:
                refs.append(_Ref(i, name, spec.references))
        for (pt, pc), (by, _targets) in POLYMORPHIC.items():
            if pt == t and by in index and pc not in index:
                raise InputError(
                    f"{where}: column {by} needs the {pc} column beside it; give both or neither."
                )
        converters = [
            _make_converter(self.specs[n], t, sqlite=self.sqlite, tz=self.tz) for n in names
        ]
        status_index = (
            [(index[c], k) for k, c in enumerate(STATUS_COLUMNS) if c in index]
            if t == "jobs"
            else []
        )
        missing_for_new = [
            s.name for s in self.specs.values() if s.needed_for_new_rows and s.name not in seen
        ]
        key_index = [index[k] for k in self.keys]
        if missing_for_new:
            # Every row must already exist (checked per batch), and an upsert cannot be
            # used: both databases check NOT NULL on the proposed row before the conflict.
            sql, order = self._update_sql(names)
        else:
            sql, order = self._upsert_sql(names), None
        return _Plan(
            names=names,
            converters=converters,
            key_index=key_index,
            refs=refs,
            sql=sql,
            order=order,
            missing_for_new=missing_for_new,
            status_index=status_index,
        )

    def _upsert_sql(self, names: tuple[str, ...]) -> str:
        q = self.q
        cols = ", ".join(q(n) for n in names)
        marks = ", ".join([self.mark] * len(names))
        conflict = ", ".join(q(k) for k in self.keys)
        others = [q(n) for n in names if n not in self.keys]
        sets = ", ".join(f"{n} = excluded.{n}" for n in others)
        if sets and CHECKED in self.table.c:  # changed: the state triggers look again
            sets += f", {q(CHECKED)} = NULL"
        if sets:
            # Only a row that differs is written (and counted): unchanged rows stay as they
            # were, their state-trigger mark included.
            t = q(self.table.name)
            old = ", ".join(f"{t}.{n}" for n in others)
            new = ", ".join(f"excluded.{n}" for n in others)
            action = f"DO UPDATE SET {sets} WHERE ({old}) {self.distinct} ({new})"
        else:
            action = "DO NOTHING"
        return (
            f"INSERT INTO {q(self.table.name)} ({cols}) VALUES ({marks}) "
            f"ON CONFLICT ({conflict}) {action}"
        )

    def _update_sql(self, names: tuple[str, ...]) -> tuple[str, list[int]]:
        q = self.q
        others = [i for i, n in enumerate(names) if n not in self.keys]
        keys = [names.index(k) for k in self.keys]
        if not others:
            return "", []
        sets = ", ".join(f"{q(names[i])} = {self.mark}" for i in others)
        if CHECKED in self.table.c:
            sets += f", {q(CHECKED)} = NULL"
        where = " AND ".join(f"{q(names[i])} = {self.mark}" for i in keys)
        old = ", ".join(q(names[i]) for i in others)
        new = ", ".join([self.mark] * len(others))
        where += f" AND ({old}) {self.distinct} ({new})"
        return f"UPDATE {q(self.table.name)} SET {sets} WHERE {where}", others + keys + others

    # ---- the loop

    def run(self, records: Iterator[_Record]) -> None:
        batch: list[tuple[Any, ...]] = []
        positions: list[int] = []
        plan: _Plan | None = None
        names_now: tuple[str, ...] | None = None
        converters: list[Callable[[Any], Any]] = []
        for pos, names, cells in records:
            if names is not names_now:
                if plan is None or names != plan.names:
                    if plan is not None:
                        self._flush(plan, batch, positions)
                        batch, positions = [], []
                    plan = self._plan(names, pos)
                    converters = plan.converters
                names_now = names
            if not cells and names:
                continue  # a CSV header: its names are checked by now
            try:
                values = tuple([conv(cell) for conv, cell in zip(converters, cells, strict=False)])
            except _Bad:
                assert plan is not None
                self._flush(plan, batch, positions)  # earlier rows' errors come first
                raise self._cell_error(plan, pos, cells) from None
            batch.append(values)
            positions.append(pos)
            self.rows += 1
            if len(batch) >= BATCH_ROWS:
                assert plan is not None
                self._flush(plan, batch, positions)
                batch, positions = [], []
        if plan is not None:
            self._flush(plan, batch, positions)
        if self.pending:
            value, (pos, key, column) = min(self.pending.items(), key=lambda kv: kv[1][0])
            target = self.table.name
            raise InputError(
                f"{self._where(pos, key)}, column {column}: there is no {target} row with "
                f"{self.keys[0]} {value!r}, neither in the database nor in this file."
            )

    def _cell_error(self, plan: _Plan, pos: int, cells: Sequence[Any]) -> InputError:
        key = self._key_text(plan, cells)
        for name, conv, cell in zip(plan.names, plan.converters, cells, strict=True):
            try:
                conv(cell)
            except _Bad as e:
                return InputError(f"{self._where(pos, key)}, column {name}: {e}.")
        raise AssertionError("a converter failed once and then passed")

    # ---- a batch

    def _flush(self, plan: _Plan, batch: list[tuple[Any, ...]], positions: list[int]) -> None:
        if not batch:
            return
        if plan.missing_for_new:
            self._check_new_rows(plan, batch, positions)
        history = self._status_changes(plan, batch) if plan.status_index else []
        if plan.order is not None:
            order = plan.order
            if order:
                self._execute(plan.sql, [tuple([v[i] for i in order]) for v in batch], positions)
        else:
            self._execute(plan.sql, batch, positions)
        if history:
            self._write_history(history)
        self._check_refs(plan, batch, positions)
        seen = self.seen.get(self.table.name)
        if seen is not None:
            ki = plan.key_index
            self._remember(seen, self.keys, [tuple([v[i] for i in ki]) for v in batch])

    def _remember(self, seen: str, keys: Sequence[str], values: list[tuple[Any, ...]]) -> None:
        """Add keys to a --replace run's table of keys given."""
        sql = (
            f"INSERT INTO {self.q(seen)} ({', '.join(self.q(k) for k in keys)}) "
            f"VALUES ({', '.join([self.mark] * len(keys))})"
        )
        self.conn.exec_driver_sql(sql, values)

    def _execute(self, sql: str, batch: list[tuple[Any, ...]], positions: list[int]) -> None:
        try:
            result = self.conn.exec_driver_sql(sql, batch)
            self.changed += max(result.rowcount, 0)
        except sa.exc.DBAPIError as e:
            raise InputError(
                f"{self.src}: the database refused the rows of {self.unit}s {positions[0]} to "
                f"{positions[-1]} ({_first_line(e.orig)}); nothing was imported."
            ) from None

    def _select_in(
        self, table: str, columns: Sequence[str], match: Sequence[str], values: Sequence[Any]
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``table`` whose ``match`` columns equal one of ``values``, raw as stored."""
        q = self.q
        cols = ", ".join(q(c) for c in columns)
        for start in range(0, len(values), LOOKUP_CHUNK):
            chunk = values[start : start + LOOKUP_CHUNK]
            if len(match) == 1:
                marks = ", ".join([self.mark] * len(chunk))
                sql = f"SELECT {cols} FROM {q(table)} WHERE {q(match[0])} IN ({marks})"
                params: tuple[Any, ...] = tuple(chunk)
            else:
                row = "(" + ", ".join([self.mark] * len(match)) + ")"
                lhs = "(" + ", ".join(q(c) for c in match) + ")"
                marks = ", ".join([row] * len(chunk))
                sql = f"SELECT {cols} FROM {q(table)} WHERE {lhs} IN (VALUES {marks})"
                params = tuple(v for key in chunk for v in key)
            for found in self.conn.exec_driver_sql(sql, params):
                yield tuple(found)

    def _check_new_rows(
        self, plan: _Plan, batch: list[tuple[Any, ...]], positions: list[int]
    ) -> None:
        """A row that will be inserted must carry every column a new row needs."""
        ki = plan.key_index
        keys = [tuple(v[i] for i in ki) for v in batch]
        distinct = list(dict.fromkeys(keys))
        lookup: list[Any] = [k[0] for k in distinct] if len(ki) == 1 else distinct
        found = {tuple(r) for r in self._select_in(self.table.name, self.keys, self.keys, lookup)}
        for key, values, pos in zip(keys, batch, positions, strict=True):
            if key not in found:
                column = plan.missing_for_new[0]
                raise InputError(
                    f"{self._where(pos, self._key_text(plan, values))}, column {column}: "
                    f"this is a new {self.table.name} row, which needs a {column}, and the "
                    f"file has no {column} column."
                )
            found.add(key)

    def _status_changes(
        self, plan: _Plan, batch: list[tuple[Any, ...]]
    ) -> list[tuple[str, str, Any, Any]]:
        """The job_status_history rows this batch adds: (job, field, old, new)."""
        ki = plan.key_index[0]
        ids = list(dict.fromkeys(v[ki] for v in batch))
        current: dict[Any, list[Any]] = {
            r[0]: [r[1], r[2]]
            for r in self._select_in("jobs", ("id", *STATUS_COLUMNS), ("id",), ids)
        }
        out = []
        for values in batch:
            job = values[ki]
            old = current.get(job)
            new = list(old) if old is not None else [None, None]
            for i, k in plan.status_index:
                if old is not None and old[k] != values[i]:
                    out.append((job, STATUS_COLUMNS[k], old[k], values[i]))
                new[k] = values[i]
            current[job] = new
        return out

    def _write_history(self, changes: list[tuple[str, str, Any, Any]]) -> None:
        at = self.changed_at or dt.datetime.now(self.tz).replace(tzinfo=None)
        stored_at: Any = _sqlite_ts(at) if self.sqlite else at
        rows = [
            (_history_id(), job, fld, old, new, stored_at, self.changed_by)
            for job, fld, old, new in changes
        ]
        cols = ("id", "job_id", "field", "old_value", "new_value", "changed_at", "changed_by")
        sql = (
            f"INSERT INTO {self.q('job_status_history')} ({', '.join(cols)}) "
            f"VALUES ({', '.join([self.mark] * len(cols))})"
        )
        self.conn.exec_driver_sql(sql, rows)
        self.status_changes += len(rows)
        seen = self.seen.get("job_status_history")
        if seen is not None:  # history rows written by this run stay when that table is replaced
            self._remember(seen, ("id",), [(r[0],) for r in rows])

    def _check_refs(self, plan: _Plan, batch: list[tuple[Any, ...]], positions: list[int]) -> None:
        """Every foreign key must name a row in the database (this batch is written by now)."""
        own = self.table.name
        if self.pending:
            # Forward references that rows of this batch have just satisfied.
            for ref in plan.refs:
                if ref.target is not None and ref.target[0] == own:
                    i = plan.names.index(ref.target[1])
                    for v in batch:
                        self.pending.pop(v[i], None)
        errors: list[
            tuple[int, str, Any, tuple[str, str]]
        ] = []  # (row index, column, value, target)
        for ref in plan.refs:
            wanted: dict[tuple[str, str], set[Any]] = {}
            if ref.target is not None:
                values = {v[ref.index] for v in batch}
                values.discard(None)
                values -= self.known.get(ref.target, set())
                if values:
                    wanted[ref.target] = values
            else:
                for v in batch:
                    value = v[ref.index]
                    target = ref.by_target.get(v[ref.by_index])
                    if value is None or target is None:
                        continue
                    if value not in self.known.get(target, ()):
                        wanted.setdefault(target, set()).add(value)
            for target, values in wanted.items():
                known = self.known.setdefault(target, set())
                missing = set(values)
                for (found,) in self._select_in(
                    target[0], (target[1],), (target[1],), list(values)
                ):
                    missing.discard(found)
                    if len(known) >= KNOWN_KEYS_MAX:
                        known.clear()
                    known.add(found)
                if not missing:
                    continue
                for row, v in enumerate(batch):
                    value = v[ref.index]
                    if value not in missing:
                        continue
                    if ref.target is None and ref.by_target.get(v[ref.by_index]) != target:
                        continue
                    if target[0] == own:
                        key = self._key_text(plan, v)
                        self.pending.setdefault(value, (positions[row], key, ref.column))
                    else:
                        errors.append((row, ref.column, value, target))
                        break
        if errors:
            row, column, value, (t, c) = min(errors, key=itemgetter(0))
            v = batch[row]
            hint = f"; import {t} first" if t != own else ""
            raise InputError(
                f"{self._where(positions[row], self._key_text(plan, v))}, column {column}: "
                f"there is no {t} row with {c} {value!r}{hint}."
            )

    def count(self) -> int:
        sql = f"SELECT count(*) FROM {self.q(self.table.name)}"
        return int(self.conn.exec_driver_sql(sql).scalar_one())

    # ---- --replace

    def delete_missing(self, gone: str) -> int:
        """Delete the rows this run did not give; refuse when a row that stays refers to one.

        Tables that refer to this one have had their own deletions done by now
        (children come first), so every row left in them stays.
        """
        q = self.q
        t = q(self.table.name)
        seen = q(self.seen[self.table.name])
        own = self.table.name
        for child, column, tcol, by, kind in _referrers(own):
            c = q(child.name)
            ckeys = key_columns(child)
            conds = [
                f"c.{q(column)} IS NOT NULL",
                f"EXISTS (SELECT 1 FROM {t} p WHERE p.{q(tcol)} = c.{q(column)})",
                f"NOT EXISTS (SELECT 1 FROM {seen} s WHERE s.{q(tcol)} = c.{q(column)})",
            ]
            params: tuple[Any, ...] = ()
            if by is not None:
                conds.append(f"c.{q(by)} = {self.mark}")
                params = (kind,)
            if child.name == own:  # a row of this table that stays
                match = " AND ".join(f"s2.{q(k)} = c.{q(k)}" for k in ckeys)
                conds.append(f"EXISTS (SELECT 1 FROM {seen} s2 WHERE {match})")
            sql = (
                f"SELECT {', '.join(f'c.{q(k)}' for k in ckeys)}, c.{q(column)} FROM {c} c "
                f"WHERE {' AND '.join(conds)} ORDER BY {', '.join(f'c.{q(k)}' for k in ckeys)} "
                "LIMIT 1"
            )
            row = self.conn.exec_driver_sql(sql, params).first()
            if row is not None:
                ckey = ", ".join(f"{k} {_clip(str(v))}" for k, v in zip(ckeys, row, strict=False))
                value = row[-1]
                raise InputError(
                    f"{self.src}: the {own} row with {tcol} {_clip(str(value))} {gone}, so it "
                    f"would be deleted, but the {child.name} row ({ckey}) still refers to it "
                    f"in its column {column}; nothing was changed. Keep that {own} row, or "
                    f"remove or change the {child.name} row as well."
                )
        keys = key_columns(self.table)
        missing = (
            f"NOT EXISTS (SELECT 1 FROM {seen} s WHERE "
            + " AND ".join(f"s.{q(k)} = {t}.{q(k)}" for k in keys)
            + ")"
        )
        for child_name, column in CASCADE:
            (fk,) = get_table(child_name).c[column].foreign_keys
            if fk.column.table.name == own:
                self.conn.exec_driver_sql(
                    f"DELETE FROM {q(child_name)} WHERE {q(column)} IN "
                    f"(SELECT {q(fk.column.name)} FROM {t} WHERE {missing})"
                )
        result = self.conn.exec_driver_sql(f"DELETE FROM {t} WHERE {missing}")
        return max(result.rowcount, 0)


_history_lock = threading.Lock()
_history_last = 0


def _history_id() -> str:
    """``H`` + nanoseconds since the epoch (strictly increasing here) + 4 random hex digits."""
    global _history_last
    with _history_lock:
        ns = max(time.time_ns(), _history_last + 1)
        _history_last = ns
    return f"H{ns:019d}{secrets.token_hex(2)}"


# ------------------------------------------------------------------ import API


def resolve_import(
    path: str | os.PathLike[str], table: str | None = None, fmt: str | None = None
) -> tuple[sa.Table, str]:
    """Return the table and format ``path`` would be imported as.

    Raise InputError when the file is missing or the table or format is unclear.
    """
    p = Path(path)
    check_readable(p)
    if table:
        t = get_table(table)
    else:
        stem = p.name.split(".", 1)[0]
        try:
            t = get_table(stem)
        except InputError:
            raise InputError(
                f"cannot tell the table from the file name {p.name!r}: there is no table "
                f"{stem!r}; use --table T or name the file after one of "
                f"{', '.join(table_names())}."
            ) from None
    if fmt:
        form = fmt.lower()
        if form not in FORMATS:
            raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    else:
        found = EXTENSIONS.get(p.suffix.lower())
        if found is None:
            raise InputError(
                f"cannot tell the format of {str(path)!r} from its extension; name it .csv, "
                f".json, .ndjson or .jsonl, or use --format {'|'.join(FORMATS)}."
            )
        form = found
    return t, form


def check_readable(path: Path) -> None:
    """Raise InputError when ``path`` does not exist or cannot be read, saying which."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; check the name and the folder.") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a file.") from None
    except PermissionError:
        raise InputError(
            f"cannot read {path}: permission denied; check the file's owner and mode."
        ) from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}.") from None


@dataclass(frozen=True)
class ImportSource:
    """One table's rows for :func:`import_sources`: where they come from and how to read them.

    ``records`` is called when the table's turn comes (files are opened, queries
    run, in foreign-key order). ``gone`` says, for --replace errors, why a row
    would be deleted ("is not in the file").
    """

    table: sa.Table
    records: Callable[[], Iterator[_Record]]
    source: str
    unit: str
    replace: bool = False
    origin: str = "file"
    gone: str = "is not in the file"


def file_source(
    path: str | os.PathLike[str],
    table: str | None = None,
    fmt: str | None = None,
    *,
    replace: bool = False,
) -> ImportSource:
    """The rows of one CSV, JSON or NDJSON file (table and format as :func:`resolve_import`)."""
    t, form = resolve_import(path, table, fmt)
    src = str(path)
    p = Path(path)
    reader = {"csv": _csv_records, "json": _json_records, "ndjson": _ndjson_records}[form]
    return ImportSource(
        table=t,
        records=lambda: reader(p, src),
        source=src,
        unit="item" if form == "json" else "line",
        replace=replace,
    )


def folder_sources(path: str | os.PathLike[str], *, replace: bool = False) -> list[ImportSource]:
    """Every file of a folder (an export of the agency system), in foreign-key order.

    Each file must be named after a table (``jobs.csv``, ``jobs.2026-11-27.json``);
    files whose names start with a dot are left alone. Raise InputError naming
    a file that is not named after a table, or a table given twice.
    """
    folder = Path(path)
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise InputError(f"cannot read the folder {folder}: {e.strerror}.") from None
    by_table: dict[str, ImportSource] = {}
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir():
            raise InputError(
                f"{p} is a folder; a folder to import holds only files named after tables."
            )
        stem = p.name.split(".", 1)[0]
        if stem not in schema.AGENCY_TABLE_NAMES:
            raise InputError(
                f"{p}: not named after a table, so it cannot be imported with its folder; "
                f"move it away or rename it after one of {', '.join(table_names())}."
            )
        source = file_source(p, replace=replace)
        if stem in by_table:
            raise InputError(
                f"{folder}: two files for the table {stem}: {Path(by_table[stem].source).name} "
                f"and {p.name}; keep one."
            )
        by_table[stem] = source
    if not by_table:
        raise InputError(f"{folder} holds no file to import; the files are named after tables.")
    return [by_table[n] for n in schema.AGENCY_TABLE_NAMES if n in by_table]


def import_file(
    engine: sa.Engine,
    settings: Settings,
    path: str | os.PathLike[str],
    table: str | None = None,
    fmt: str | None = None,
    *,
    changed_at: dt.datetime | None = None,
    replace: bool = False,
    dry_run: bool = False,
) -> ImportResult:
    """Upsert the rows of one CSV, JSON or NDJSON file into one table, in one transaction.

    The table is ``table`` or the file's stem; the format ``fmt`` or the
    extension. Raise InputError (nothing written) on the first bad row.
    ``changed_at`` (naive, agency time) stamps job status history rows;
    default: now. ``replace``: the file is the whole table (rows not in it are
    deleted); ``dry_run``: count, then change nothing.
    """
    source = file_source(path, table, fmt, replace=replace)
    (result,) = import_sources(engine, settings, [source], changed_at=changed_at, dry_run=dry_run)
    return result


def import_folder(
    engine: sa.Engine,
    settings: Settings,
    path: str | os.PathLike[str],
    *,
    changed_at: dt.datetime | None = None,
    replace: bool = False,
    dry_run: bool = False,
) -> list[ImportResult]:
    """Import every file of a folder, in foreign-key order, in one transaction."""
    sources = folder_sources(path, replace=replace)
    return import_sources(engine, settings, sources, changed_at=changed_at, dry_run=dry_run)


def import_rows(
    engine: sa.Engine,
    settings: Settings,
    table: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    source: str = "rows",
    changed_at: dt.datetime | None = None,
) -> ImportResult:
    """Upsert mappings of column name to value into ``table``, in one transaction.

    Values may be text as in a CSV cell, or Python/JSON values (int, Decimal,
    float, bool, date, datetime, a list for list columns, None). Errors name
    ``source`` and the 1-based row number.
    """
    src = ImportSource(
        table=get_table(table),
        records=lambda: _mapping_records(rows, source),
        source=source,
        unit="row",
        origin="rows",
    )
    (result,) = import_sources(engine, settings, [src], changed_at=changed_at)
    return result


def import_sources(
    engine: sa.Engine,
    settings: Settings,
    sources: Sequence[ImportSource],
    *,
    changed_at: dt.datetime | None = None,
    dry_run: bool = False,
) -> list[ImportResult]:
    """Import several tables in one transaction, in the order given (parents first).

    Tables whose source has ``replace`` then lose the rows their source did not
    give, children before parents; a row still referred to by a row that stays
    stops the whole import. With ``dry_run`` everything is done and counted,
    then rolled back. Raise InputError (nothing changed) on the first bad row.
    """
    names = [s.table.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise InputError(f"the table {name} is given twice; give each table once.")
    with engine.connect() as conn:
        restore = _sqlite_import_mode(conn) if conn.dialect.name == "sqlite" else None
        try:
            with conn.begin() as tx:
                results = _run_sources(conn, settings, sources, changed_at, dry_run)
                if dry_run:
                    tx.rollback()
        except (sa.exc.IntegrityError, sa.exc.DataError) as e:
            # The checks above name the row at fault; this is the database's last word
            # (a row deleted by someone else meanwhile, a constraint added by hand).
            where = sources[0].source if len(sources) == 1 else "the import"
            raise InputError(
                f"{where}: the database refused the import ({_first_line(e.orig)}); "
                "nothing was imported."
            ) from None
        finally:
            if restore is not None:
                restore()
    return results


def _run_sources(
    conn: sa.Connection,
    settings: Settings,
    sources: Sequence[ImportSource],
    changed_at: dt.datetime | None,
    dry_run: bool,
) -> list[ImportResult]:
    seen: dict[str, str] = {}
    for src in sources:
        if src.replace:
            seen[src.table.name] = _seen_table(conn, src.table)
    done: list[tuple[ImportSource, _Importer, int]] = []
    for src in sources:
        imp = _Importer(conn, settings, src.table, src.source, src.unit, changed_at)
        imp.seen = seen
        before = imp.count()
        imp.run(src.records())
        done.append((src, imp, imp.count() - before))
    deleted: dict[str, int] = {}
    for src, imp, _new in reversed(done):
        if src.replace:
            deleted[src.table.name] = imp.delete_missing(src.gone)
    for name in seen.values():
        conn.exec_driver_sql(f"DROP TABLE {conn.dialect.identifier_preparer.quote(name)}")
    return [
        ImportResult(
            table=src.table.name,
            source=src.source,
            rows=imp.rows,
            new=new,
            updated=imp.changed - new,
            unchanged=imp.rows - imp.changed,
            deleted=deleted.get(src.table.name, 0),
            status_changes=imp.status_changes,
            replace=src.replace,
            dry_run=dry_run,
            origin=src.origin,
        )
        for src, imp, new in done
    ]


def _seen_table(conn: sa.Connection, table: sa.Table) -> str:
    """A temporary table for the keys a --replace import gives ``table``."""
    q = conn.dialect.identifier_preparer.quote
    name = f"cpmail_seen_{table.name}"
    keys = ", ".join(q(k) for k in key_columns(table))
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE {q(name)} AS SELECT {keys} FROM {q(table.name)} WHERE 1 = 0"
    )
    conn.exec_driver_sql(f"CREATE INDEX {q(name + '_key')} ON {q(name)} ({keys})")
    return name


# Rows that go with the row they refer to when --replace deletes it (job status history).
CASCADE = frozenset({("job_status_history", "job_id")})


def _referrers(target: str) -> list[tuple[sa.Table, str, str, str | None, str | None]]:
    """What refers to rows of ``target``: (table, column, target column, kind column, kind)."""
    out: list[tuple[sa.Table, str, str, str | None, str | None]] = []
    for t in schema.AGENCY_TABLES:
        for spec in columns_of(t):
            refs = spec.references
            if refs is not None and refs[0] == target and (t.name, spec.name) not in CASCADE:
                out.append((t, spec.name, refs[1], None, None))
    for (pt, pc), (by, targets) in POLYMORPHIC.items():
        for kind, (tt, tc) in targets.items():
            if tt == target:
                out.append((get_table(pt), pc, tc, by, kind))
    return out


def _first_line(e: BaseException | None) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _sqlite_import_mode(conn: sa.Connection) -> Callable[[], None]:
    """Turn SQLite's own foreign key checks off for this import, and enlarge its page cache.

    The importer checks every foreign key itself (to name the line at
    fault), and SQLite's per-row checks of an upsert double the time of a big
    import. ``PRAGMA foreign_keys`` only takes effect outside a transaction, so
    it is set before BEGIN and restored after COMMIT or ROLLBACK.
    """
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cache = raw.execute("PRAGMA cache_size").fetchone()[0]
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute(f"PRAGMA cache_size=-{SQLITE_IMPORT_CACHE_KIB}")

    def restore() -> None:
        try:
            raw.execute("PRAGMA foreign_keys=ON")
            raw.execute(f"PRAGMA cache_size={int(cache)}")
        except Exception:
            conn.invalidate()  # never hand a connection without foreign keys back to the pool
            raise

    return restore


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
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, Decimal):
        return format(v, "f")  # a JSON number, exactly as stored
    if isinstance(v, int):
        return str(v)
    return json.dumps(_csv_cell(v), ensure_ascii=False)


def _rows(engine: sa.Engine, table: sa.Table) -> Iterator[Sequence[Any]]:
    order = list(table.primary_key.columns)
    q = sa.select(*(table.c[s.name] for s in columns_of(table))).order_by(*order)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=2000).execute(q)
        for partition in result.partitions():
            yield from partition


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
        w.writerow(names)
        for row in _rows(engine, t):
            w.writerow([_csv_cell(v) for v in row])
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
        fd, tmp = tempfile.mkstemp(dir=p.parent or ".", prefix=f".{p.name}.", suffix=".tmp")
    except FileNotFoundError:
        raise InputError(f"cannot write {p}: the folder {p.parent} does not exist.") from None
    except OSError as e:
        raise InputError(f"cannot write {p}: {e.strerror}.") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            n = export_table(engine, table, f, form)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


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
