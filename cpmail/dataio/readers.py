"""Readers: CSV, JSON and NDJSON files, and mappings, as a stream of records."""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

import sqlalchemy as sa

from cpmail.dataio.columns import (
    _MAX_SHOWN,
    EXTENSIONS,
    FORMATS,
    JSON_CHUNK,
    JSON_INT_DIGITS,
    JSON_ITEM_MAX,
    LINE_MAX,
    _plural,
    get_table,
    table_names,
)
from cpmail.dataio.converters import (
    _Obj,
    _shown,
    _TooDeep,
    _Written,
)
from cpmail.deep import NoCollection
from cpmail.errors import InputError

_csv_limit_lock = threading.Lock()

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
        if lineno == 1 and "\x00" in text:  # UTF-16 without its byte order mark decodes,
            # with NULs (a NUL in a row is named with its row and column further on)
            raise InputError(
                f"{src}, line {lineno}: not UTF-8 text (it holds NUL characters, as UTF-16 "
                "does); save the file as UTF-8."
            )
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
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line, or one of spaces only (one-column files too)
                if len(row) != n:
                    raise InputError(
                        f"{src}, line {line}: {_plural(len(row), 'field')}, but the header has "
                        f"{_plural(n, 'column')}; check the commas and quotes on that line."
                    )
                if tuple(cell.strip().lstrip("\ufeff") for cell in row) == names:
                    raise InputError(
                        f"{src}, line {line}: repeats the header line (two files joined into "
                        "one?); remove it, or import the files one by one."
                    )
                yield line, names, row
        except csv.Error as e:
            if "field larger than field limit" in str(e):
                raise InputError(
                    f"{src}, line {prev + 1}: a field is longer than {_MAX_SHOWN}, which no cell "
                    "of agency data is; check for a quote that is opened and never closed."
                ) from None
            if "new-line character seen in unquoted field" in str(e):
                raise InputError(
                    f"{src}, line {prev + 1}: a line ends in a carriage return alone (as on "
                    "old Macs), which CSV readers take for no line end; save the file with "
                    "ordinary line ends (LF or CRLF)."
                ) from None
            if "unexpected end of data" in str(e):
                raise InputError(
                    f"{src}, line {prev + 1}: the file ends inside a quoted field of the row "
                    "that begins on that line: it was cut off, or is still being written, or "
                    "the quote is never closed; import it once it is whole."
                ) from None
            raise InputError(
                f"{src}, line {prev + 1}: not valid CSV ({e}); check the quotes on that line."
            ) from None


def _json_int(text: str) -> int | Decimal:
    # Python refuses to convert more than 4,300 digits to int; a cell never needs that many,
    # and as a Decimal it is refused by its column with the row and column named.
    if len(text) > JSON_INT_DIGITS or text == "-0":  # (-0: kept as written by a text column)
        return _Written(text)
    return int(text)


def _not_json(name: str) -> Any:
    """NaN, Infinity and -Infinity, which Python's parser takes and JSON does not have."""
    raise json.JSONDecodeError(f"{name} is not JSON; write a number, or text in quotes", "", 0)


class _Decoder(json.JSONDecoder):
    """A decoder during whose work no garbage collection runs (see cpmail.deep)."""

    def raw_decode(self, s: str, idx: int = 0) -> tuple[Any, int]:
        with NoCollection():
            return super().raw_decode(s, idx)


def _json_decoder() -> json.JSONDecoder:
    return _Decoder(
        object_pairs_hook=_Obj, parse_float=_Written, parse_int=_json_int, parse_constant=_not_json
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
            # Refused rather than read as no rows: with --replace an empty file would empty
            # the table, and an NDJSON file cannot say "no rows" on purpose.
            raise InputError(
                f"{src} is empty; expected one JSON object per line (to empty a table with "
                "--replace, give a JSON file holding [] or a CSV file with only its header)."
            )


def _mapping_records(rows: Iterable[Mapping[str, Any]], src: str) -> Iterator[_Record]:
    for n, row in enumerate(rows, 1):
        if not isinstance(row, Mapping):
            raise InputError(f"{src}, row {n}: expected a mapping of column names to values.")
        yield n, tuple(row.keys()), list(row.values())


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
