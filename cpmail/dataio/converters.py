"""Cell converters: text or a JSON/database value -> the value the database stores."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, ClassVar

from cpmail.dataio.columns import (
    ADDRESS_COLUMNS,
    RECIPIENT_COLUMNS,
    STATUS_COLUMNS,
    ColumnSpec,
)
from cpmail.errors import InputError

# ------------------------------------------------------------------ converters


class _Bad(Exception):
    """A cell that does not fit its column; ``str(e)`` is the reason."""


class _Obj(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs: keeps duplicates and tells objects from arrays."""


class _Written(Decimal):
    """A number of a JSON file with the text it was written as, which a text column keeps
    (``1e3`` stays ``1e3``, not ``1E+3``)."""

    text: str

    def __new__(cls, text: str) -> _Written:
        number = super().__new__(cls, text)
        number.text = text
        return number


class _TooDeep:
    """A JSON value nested more deeply than Python's parser goes: never a cell's value."""

    def __str__(self) -> str:
        return "[[…]]"


# Characters that would break the one line an error is: shown as escapes (\n, \x00).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _clip(text: str, limit: int = 60) -> str:
    """``text`` cut for an error message (a cell may hold megabytes), on one line."""
    if len(text) > limit:
        text = f"{text[: limit - 20]}… ({len(text)} characters)"
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def _r(s: str) -> str:
    """``repr(s)``, cut for an error message."""
    return repr(s) if len(s) <= 60 else repr(s[:40]) + f"… ({len(s)} characters)"


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}\Z", re.ASCII)
_TS_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?)?\Z",
    re.ASCII,
)
# ASCII digits only (re.ASCII): int() and float() would take other scripts' digits too.
_NUM_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)\Z", re.ASCII)
_INT_RE = re.compile(r"[+-]?\d+\Z", re.ASCII)
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


def _check_int(n: int, shown: str) -> int:
    if abs(n) > _INT_MAX:
        raise _Bad(f"{shown} is too large for a whole number here")
    return n


def _sqlite_ts(v: dt.datetime) -> str:
    # The form SQLAlchemy's SQLite DateTime stores and reads back.
    return v.isoformat(" ", "microseconds")


# ------------------------------------------------------------------ column kinds
#
# ``convert`` runs once per cell of files with millions of rows: the common case
# (a well-formed text cell, or a value of the column's own Python type from a
# database) takes one call and no more; the rest goes through ``parse_str`` (text
# from CSV, or a JSON string) and ``parse_native`` (any other JSON or database value).


class _Column:
    """One column kind: a raw cell (text or a JSON/database value) -> the value stored."""

    __slots__ = ("empty", "exact", "required", "sqlite")

    what: ClassVar[str] = "a value"  # what a value must be: "… is not <what>"
    # The Python type of a database value that needs no more than ``quick`` (data pull).
    quick_type: ClassVar[type | None] = None

    def __init__(self, spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo) -> None:
        self.required = spec.required
        self.sqlite = sqlite
        self.exact = self.quick_type  # an instance's slot is read faster than a class's
        if spec.key:
            self.empty = f"the key is empty; every {table} row needs its {spec.name}"
        else:
            self.empty = "is empty, but this column needs a value"

    def convert(self, v: Any) -> Any:
        """Return the value stored for the cell ``v``; raise _Bad if it does not fit."""
        if type(v) is str:
            v = v.strip()
            return self.parse_str(v) if v else self.on_empty()
        if type(v) is self.exact:
            return self.quick(v)
        return self.other(v)

    def parse_str(self, s: str) -> Any:
        """Convert non-empty text (stripped, when the column strips)."""
        raise NotImplementedError

    def parse_native(self, v: Any) -> Any:
        """Convert a value that is neither text nor null; by default, refuse it."""
        raise self.refused(v)

    def quick(self, v: Any) -> Any:
        """Convert a value of type ``quick_type``."""
        return self.parse_native(v)

    def other(self, v: Any) -> Any:
        """Convert a cell that is not text: null (an empty cell) or a value."""
        return self.on_empty() if v is None else self.parse_native(v)

    def on_empty(self) -> Any:
        """An empty cell: null, unless the column needs a value."""
        if self.required:
            raise _Bad(self.empty)
        return None

    def refused(self, v: Any) -> _Bad:
        """The error for a value of the wrong type."""
        what = self.what
        if isinstance(v, _TooDeep):
            return _Bad(f"a value nested this deeply is not allowed here; give {what}")
        if isinstance(v, _Obj):
            return _Bad(f"a nested object is not allowed here; give {what}")
        if isinstance(v, list):
            return _Bad(f"a list is not allowed here; give {what}")
        return _Bad(f"{_shown(v)} is not {what}")


# Half of a UTF-16 pair, alone: a JSON file can write one ("\ud800"), no text can hold one.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_chars(s: str) -> None:
    """Refuse characters no database text can hold."""
    if "\x00" in s:
        raise _Bad("contains a NUL character")
    if not s.isascii() and (m := _SURROGATE.search(s)):
        raise _Bad(f"contains \\u{ord(m.group()):04x}, half of a character (not valid text)")


class _Text(_Column):
    """Free text, kept as given (spaces included)."""

    __slots__ = ()
    what = "text"

    def convert(self, v: Any) -> Any:
        if type(v) is str:
            if self.required and not v.strip():  # spaces only: empty, to a person
                return self.on_empty()
            if v and "\x00" not in v and (v.isascii() or not _SURROGATE.search(v)):
                return v
            return self.parse_str(v) if v else self.on_empty()
        return self.other(v)

    def parse_str(self, s: str) -> Any:
        _check_chars(s)
        return s

    def parse_native(self, v: Any) -> Any:
        if isinstance(v, _Written):
            return self.parse_str(v.text)
        if type(v) is int or isinstance(v, Decimal | uuid.UUID):  # ids from a database
            return self.parse_str(str(v))
        raise self.refused(v)


# Characters that show as nothing: in a key, "C01" and "C01\u200b" would be two clients
# that look one (a byte order mark of a second file joined on, a copy from a web page).
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


class _TrimmedText(_Text):
    """Text stripped of surrounding spaces: a key or a reference to another table's key."""

    __slots__ = ()

    def convert(self, v: Any) -> Any:
        if type(v) is str:
            v = v.strip()
            if v and "\x00" not in v and v.isascii():
                return v
            return self.parse_str(v) if v else self.on_empty()
        return self.other(v)

    def parse_str(self, s: str) -> Any:
        s = super().parse_str(s)
        if m := _INVISIBLE.search(s):
            raise _Bad(f"{_r(s)} holds U+{ord(m.group()):04X}, a character that shows as nothing")
        return s


class _Choice(_Text):
    """Text that must be one of a fixed set of words."""

    __slots__ = ("choices", "strip")

    def __init__(self, spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo) -> None:
        super().__init__(spec, table, sqlite=sqlite, tz=tz)
        self.choices = spec.choices
        self.strip = spec.key or spec.references is not None

    def convert(self, v: Any) -> Any:
        if type(v) is str:
            if self.strip:
                v = v.strip()
            return self.parse_str(v) if v else self.on_empty()
        return self.other(v)

    def parse_str(self, s: str) -> Any:
        s = super().parse_str(s)
        if s not in self.choices:
            raise _Bad(f"{_r(s)} is not one of {', '.join(self.choices)}")
        return s


class _Checked(_TrimmedText):
    """Text that one of cpmail's own checks must accept; its words when it does not."""

    __slots__ = ("check",)
    check: Callable[[str], Any]

    def convert(self, v: Any) -> Any:
        text = super().convert(v)
        if text is None:
            return None
        try:
            self.check(text)
        except InputError as e:
            raise _Bad(str(e).rstrip(".")) from None
        return text


class _Address(_Checked):
    """One e-mail address, checked, stored as given (trimmed of spaces)."""

    __slots__ = ()

    def __init__(self, spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo) -> None:
        super().__init__(spec, table, sqlite=sqlite, tz=tz)
        from cpmail.addresses import check_address

        self.check = check_address


class _StaffId(_TrimmedText):
    """A staff member's ID, as the staff commands take it (``people.staff_id_problem``):
    any text an agency system uses (UUIDs too), but no comma, which separates the names in
    every list of staff (notify, attendees), no line break, and not the name of the
    one-account sender ("shared", in any case)."""

    __slots__ = ("problem",)

    def __init__(self, spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo) -> None:
        super().__init__(spec, table, sqlite=sqlite, tz=tz)
        from cpmail.people import staff_id_problem

        self.problem = staff_id_problem

    def parse_str(self, s: str) -> Any:
        s = super().parse_str(s)
        if why := self.problem(s):
            raise _Bad(f"{why}; give this person another ID")
        return s

    convert = _Column.convert  # stripped and checked, as every column but free text is


class _Workdays(_Checked):
    """Which days a staff member works, as `staff add --workdays` takes them: mon-fri …"""

    __slots__ = ()

    def __init__(self, spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo) -> None:
        super().__init__(spec, table, sqlite=sqlite, tz=tz)
        from cpmail.workdays import parse_workdays

        self.check = parse_workdays


class _List(_Column):
    """Comma-separated words (or a JSON list of text), stored as one comma-joined text."""

    __slots__ = ()
    what = "comma-separated text or a list of text"

    def parse_str(self, s: str) -> Any:
        _check_chars(s)
        items = [p.strip() for p in s.split(",")]
        return ",".join(p for p in items if p) or None

    def parse_native(self, v: Any) -> Any:
        if isinstance(v, list) and not isinstance(v, _Obj):
            if not all(isinstance(x, str) for x in v):
                raise _Bad('a list here may hold only text, e.g. ["JD", "AB"]')
            return self.parse_str(",".join(v))
        raise self.refused(v)


class _Recipients(_List):
    """A ``notify`` or ``attendees`` list: staff IDs, staff names and rules, never an address.

    Data names people of the agency; an outside address comes only from the
    settings (``email:`` in an event's ``notify``), so nothing in the data can
    add a recipient outside the agency.
    """

    __slots__ = ()
    what = "comma-separated staff IDs, staff names or rules"

    def parse_str(self, s: str) -> Any:
        joined = super().parse_str(s)
        for item in (joined or "").split(","):
            if item.lower().startswith("email:") or "@" in item:
                raise _Bad(
                    f"{_r(item)} is an e-mail address; this list names staff (IDs or names) "
                    "or rules such as team:ae — an outside address belongs in the event's "
                    "notify setting"
                )
        return joined


class _Date(_Column):
    """A date as YYYY-MM-DD."""

    __slots__ = ()
    what = "a date as YYYY-MM-DD"
    quick_type = dt.date

    def parse_str(self, s: str) -> Any:
        if _DATE_RE.match(s):
            try:
                d = dt.date.fromisoformat(s)
            except ValueError:
                pass
            else:
                return s if self.sqlite else d
        raise _Bad(f"{_r(s)} is not a date as YYYY-MM-DD")

    def quick(self, v: Any) -> Any:
        return v.isoformat() if self.sqlite else v

    def parse_native(self, v: Any) -> Any:
        if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
            return self.quick(v)
        raise self.refused(v)


class _Timestamp(_Column):
    """A date and time (ISO 8601), stored without offset in the configured time zone."""

    __slots__ = ("tz",)
    what = "a timestamp as YYYY-MM-DDTHH:MM[:SS]"
    quick_type = dt.datetime

    def __init__(self, spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo) -> None:
        super().__init__(spec, table, sqlite=sqlite, tz=tz)
        self.tz = tz

    def quick(self, v: Any) -> Any:
        d: dt.datetime = v
        if d.tzinfo is not None:
            try:
                d = d.astimezone(self.tz).replace(tzinfo=None)
            except OverflowError:  # 9999-12-31T23:59-05:00 is past the last year
                raise _Bad(f"{d.isoformat()} is out of the range of dates") from None
        return _sqlite_ts(d) if self.sqlite else d

    def parse_str(self, s: str) -> Any:
        if _TS_RE.match(s):
            try:
                d = dt.datetime.fromisoformat(s)
            except ValueError:
                pass
            else:
                return self.quick(d)
        raise _Bad(
            f"{_r(s)} is not a date as YYYY-MM-DD or a timestamp as YYYY-MM-DDTHH:MM[:SS] "
            "(ISO 8601; an offset such as +01:00 is allowed)"
        )

    def parse_native(self, v: Any) -> Any:
        if isinstance(v, dt.datetime):
            return self.quick(v)
        if isinstance(v, dt.date):
            return self.quick(dt.datetime.combine(v, dt.time()))
        raise self.refused(v)


class _Decimal(_Column):
    """A number with the column's scale (money, hours), rounded half up."""

    __slots__ = ("exp", "fits", "plain", "whole")
    what = "a number"

    def __init__(self, spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo) -> None:
        super().__init__(spec, table, sqlite=sqlite, tz=tz)
        self.exp = Decimal(1).scaleb(-spec.scale)
        self.whole = (spec.precision or 28) - spec.scale
        # Most cells already fit the column: no rounding or range check needed.
        self.fits = re.compile(
            rf"[+-]?\d{{1,{self.whole}}}(?:\.\d{{0,{spec.scale}}})?\Z", re.ASCII
        ).match
        self.plain: Callable[[str], Any] = float if sqlite else Decimal

    def convert(self, v: Any) -> Any:
        if type(v) is str:
            v = v.strip()
            if v:
                # Loaded as attributes: Python 3.11 calls an instance's own callable
                # faster that way than straight through ``self.fits(v)``.
                fits, plain = self.fits, self.plain
                return plain(v) if fits(v) else self.parse_str(v)
            return self.on_empty()
        if type(v) is Decimal and v.is_finite() and (not v or v.adjusted() < self.whole):
            # A database's numeric value (data pull): round to the column, no more.
            q = v.quantize(self.exp, ROUND_HALF_UP)
            if q and q.adjusted() >= self.whole:  # 999.995 rounds up past the column
                return self.finish(v, v)
            return float(q) if self.sqlite else q
        return self.other(v)

    def finish(self, d: Decimal, raw: Any) -> Any:
        # ``raw`` is what was given, shown only in an error (making the text costs).
        if not d.is_finite():
            raise _Bad(f"{_show_number(raw)} is not {_MONEY_HELP}")
        if d and d.adjusted() >= self.whole:
            raise self._too_large(raw)
        try:
            q = d.quantize(self.exp, ROUND_HALF_UP)
        except InvalidOperation:
            raise _Bad(f"{_show_number(raw)} is too large") from None
        if q and q.adjusted() >= self.whole:  # rounded up past the column: 999.995 is 1000.00
            raise self._too_large(raw)
        return float(q) if self.sqlite else q

    def _too_large(self, raw: Any) -> _Bad:
        return _Bad(
            f"{_show_number(raw)} is too large (at most {self.whole} digits before the point)"
        )

    def parse_str(self, s: str) -> Any:
        if not _NUM_RE.match(s):
            raise _Bad(f"{_r(s)} is not {_MONEY_HELP}")
        return self.finish(Decimal(s), s)

    def parse_native(self, v: Any) -> Any:
        if isinstance(v, Decimal):
            return self.finish(v, v)
        if type(v) is int:
            return self.finish(Decimal(v), v)
        if type(v) is float:
            return self.finish(Decimal(repr(v)), v)
        raise self.refused(v)


class _Integer(_Column):
    """A whole number that fits a 32-bit column."""

    __slots__ = ()
    what = "a whole number"
    quick_type = int

    def quick(self, v: Any) -> Any:
        return v if -_INT_MAX <= v <= _INT_MAX else self.parse_native(v)

    def parse_str(self, s: str) -> Any:
        if not _INT_RE.match(s):
            raise _Bad(f"{_r(s)} is not a whole number")
        if len(s) > 20:  # before int(): Python limits the digits it converts
            raise _Bad(f"{_r(s)} is too large for a whole number here")
        return _check_int(int(s), _r(s))

    def parse_native(self, v: Any) -> Any:
        if type(v) is int:
            return _check_int(v, str(v))
        if isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
            if v.adjusted() > 20:
                raise _Bad(f"{_clip(str(v))} is too large for a whole number here")
            return _check_int(int(v), str(v))
        raise self.refused(v)


class _Boolean(_Column):
    """True or false (also yes/no, 1/0); SQLite stores 1 and 0."""

    __slots__ = ("false", "true")
    what = "true or false"
    quick_type = bool

    def __init__(self, spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo) -> None:
        super().__init__(spec, table, sqlite=sqlite, tz=tz)
        self.true: Any = 1 if sqlite else True
        self.false: Any = 0 if sqlite else False

    def quick(self, v: Any) -> Any:
        return self.true if v else self.false

    def parse_str(self, s: str) -> Any:
        b = _BOOLS.get(s.lower())
        if b is None:
            raise _Bad(f"{_r(s)} is not true or false (or yes/no, 1/0)")
        return self.true if b else self.false

    def parse_native(self, v: Any) -> Any:
        if type(v) is bool or (type(v) is int and v in (0, 1)):
            return self.quick(v)
        raise self.refused(v)


class _PlannedHours(_Decimal):
    """A staff member's planned hours a day: from 0 to 24, as `staff add` takes them."""

    __slots__ = ()

    def convert(self, v: Any) -> Any:
        got = super().convert(v)
        if got is not None and not 0 <= got <= 24:
            raise _Bad(f"{_r(str(v).strip())} is not hours from 0 to 24")
        return got


class _Events(_List):
    """Event names (one, or a comma-separated list): each must be an event cpmail knows."""

    __slots__ = ()
    what = "event names such as task-overdue"

    def parse_str(self, s: str) -> Any:
        joined = super().parse_str(s)
        from cpmail.events import NAMES

        for item in (joined or "").split(","):
            if item and item not in NAMES:
                raise _Bad(f"{_r(item)} is not an event; the events are: {', '.join(NAMES)}")
        return joined


class _Event(_Text):
    """One event name: a row of ``staff_opt_out`` mutes one event (the key is the pair)."""

    __slots__ = ()
    what = "an event name such as task-overdue"

    convert = _Column.convert  # stripped and checked, as every column but free text is

    def parse_str(self, s: str) -> Any:
        s = super().parse_str(s)
        from cpmail.events import NAMES

        if "," in s:
            raise _Bad(f"{_r(s)} names several events; give each its own row")
        if s not in NAMES:
            raise _Bad(f"{_r(s)} is not an event; the events are: {', '.join(NAMES)}")
        return s


_KINDS: dict[str, type[_Column]] = {
    "list": _List,
    "date": _Date,
    "timestamp": _Timestamp,
    "decimal": _Decimal,
    "integer": _Integer,
    "boolean": _Boolean,
}


# Columns that take what the staff commands take (`staff add`, `edit`, `mute`).
_SPECIAL: dict[tuple[str, str], type[_Column]] = {
    ("staff", "id"): _StaffId,
    ("staff", "planned_hours"): _PlannedHours,
    ("staff", "workdays"): _Workdays,
    ("staff_opt_out", "event"): _Event,
    ("client_team", "events"): _Events,
}


def _column_kind(spec: ColumnSpec, table: str) -> type[_Column]:
    """The class that converts the cells of ``spec``."""
    if (table, spec.name) in ADDRESS_COLUMNS:
        return _Address
    if spec.name in RECIPIENT_COLUMNS:
        return _Recipients
    special = _SPECIAL.get((table, spec.name))
    if special is not None:
        return special
    if spec.kind != "text":
        return _KINDS[spec.kind]
    if spec.choices:
        return _Choice
    # A job's status names a code of job_status_codes, whose codes are keys (trimmed):
    # "PRF " is PRF, not a change of status.
    names_a_key = spec.key or spec.references is not None
    if names_a_key or (table == "jobs" and spec.name in STATUS_COLUMNS):
        return _TrimmedText
    return _Text


def _make_converter(
    spec: ColumnSpec, table: str, *, sqlite: bool, tz: dt.tzinfo
) -> Callable[[Any], Any]:
    """Return a function: raw cell (text or JSON value) -> the value the database stores."""
    return _column_kind(spec, table)(spec, table, sqlite=sqlite, tz=tz).convert
