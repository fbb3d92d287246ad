"""Cell converters: text or a JSON/database value -> the value the database stores."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from cpmail.dataio.columns import (
    ADDRESS_COLUMNS,
    ColumnSpec,
)
from cpmail.errors import InputError

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


def _show_number(raw: Any) -> str:
    """A number as given: text quoted, a float as Python writes it, cut when long."""
    if isinstance(raw, str):
        return _r(raw)
    return repr(raw) if type(raw) is float else _clip(str(raw))


def _native_error(v: Any, what: str) -> _Bad:
    if isinstance(v, _TooDeep):
        return _Bad(f"a value nested this deeply is not allowed here; give {what}")
    if isinstance(v, _Obj):
        return _Bad(f"a nested object is not allowed here; give {what}")
    if isinstance(v, list):
        return _Bad(f"a list is not allowed here; give {what}")
    return _Bad(f"{_shown(v)} is not {what}")


def _same(v: Any) -> Any:
    return v


def _sqlite_ts(v: dt.datetime) -> str:
    # The form SQLAlchemy's SQLite DateTime stores and reads back.
    return v.isoformat(" ", "microseconds")


# Complexity above 15 on purpose: one branch per column kind with three fast paths
# (bench/import_bench.py measures them).
def _make_converter(  # noqa: C901
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
            if type(v) is int or isinstance(v, Decimal | uuid.UUID):  # ids from a database
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

        def finish_dec(d: Decimal, raw: Any) -> Any:
            # ``raw`` is what was given, shown only in an error (making the text costs).
            if not d.is_finite():
                raise _Bad(f"{_show_number(raw)} is not {_MONEY_HELP}")
            if d and d.adjusted() >= whole:
                raise _Bad(
                    f"{_show_number(raw)} is too large (at most {whole} digits before the point)"
                )
            try:
                q = d.quantize(exp, ROUND_HALF_UP)
            except InvalidOperation:
                raise _Bad(f"{_show_number(raw)} is too large") from None
            return float(q) if sqlite else q

        def parse_str(s: str) -> Any:
            if not _NUM_RE.match(s):
                raise _Bad(f"{_r(s)} is not {_MONEY_HELP}")
            return finish_dec(Decimal(s), s)

        def parse_native(v: Any) -> Any:
            if isinstance(v, Decimal):
                return finish_dec(v, v)
            if type(v) is int:
                return finish_dec(Decimal(v), v)
            if type(v) is float:
                return finish_dec(Decimal(repr(v)), v)
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
            if type(v) is Decimal and v.is_finite() and (not v or v.adjusted() < whole):
                # A database's numeric value (data pull): round to the column, no more.
                q = v.quantize(exp, ROUND_HALF_UP)
                return float(q) if sqlite else q
            return other(v)

    else:
        # Values a database gives (data pull) that need no more than a check of their type.
        native: dict[type, Callable[[Any], Any]] = {}
        if kind == "date":
            native[dt.date] = dt.date.isoformat if sqlite else _same
        elif kind == "timestamp":
            native[dt.datetime] = finish
        elif kind == "integer":
            native[int] = lambda n: n if -_INT_MAX <= n <= _INT_MAX else parse_native(n)
        elif kind == "boolean":
            native[bool] = lambda b: true if b else false
        fast = native.get

        def convert(v: Any) -> Any:
            if type(v) is str:
                if strip:
                    v = v.strip()
                return parse_str(v) if v else on_empty()
            f = fast(type(v))
            return f(v) if f is not None else other(v)

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
