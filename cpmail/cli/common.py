"""What every command shares: the home, settings, secrets, database, and printing.

Nothing heavy is imported here: ``cpmail --help`` loads this module.
"""

from __future__ import annotations

import datetime as dt
import decimal
import errno
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from cpmail.errors import InputError, UsageError
from cpmail.settings import Settings, lock_path

if TYPE_CHECKING:
    import sqlalchemy as sa
    from rich.console import Console

    from cpmail.secrets import SecretStore


@dataclass
class Ctx:
    """Per-invocation state, created by the global callback."""

    home: Path
    quiet: bool = False
    verbose: bool = False
    _engine: Any = field(default=None, repr=False)

    @cached_property
    def settings(self) -> Settings:
        return Settings.load(self.home)

    @cached_property
    def secrets(self) -> SecretStore:
        from cpmail.secrets import SecretStore

        return SecretStore(self.home, self.settings["secrets.backend"])

    def engine(self) -> sa.Engine:
        """The database, checked to hold cpmail's schema (else: run `cpmail init`)."""
        if self._engine is None:
            from cpmail.store import connect

            self._engine = connect(
                self.settings.db_url,
                where=self.db_where,
                busy_seconds=self.settings["database.busy_seconds"],
            )
        engine: sa.Engine = self._engine
        return engine

    def close(self) -> None:
        """Close the database connections this command opened (called when it ends)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def output_file(self, path: Path) -> Path:
        """``path`` as a file a command may write (--out); InputError (exit 2) when it is
        one of cpmail's own, by any name (a link, another mount of the home): the
        settings and their lock, the SQLite database and its journals, the alert state,
        or anything in the secrets, templates or mail folder. Written there, the output
        would replace it (whatever it holds would be lost)."""
        import os

        from cpmail.alerts import STATE_FILE
        from cpmail.store import sqlite_path

        settings = self.settings
        files = [settings.path, lock_path(settings.path)]
        files.append(self.home / STATE_FILE)
        database = sqlite_path(settings.db_url)
        if database:
            files += [Path(database + end) for end in ("", "-wal", "-shm", "-journal")]
        folders = [self.home / "secrets", self.home / "templates", settings.mail_dir]

        def same(a: Path, b: Path) -> bool:
            try:
                return os.path.samefile(a, b)
            except OSError:  # one of them is not there: the same name, then
                return os.path.realpath(a) == os.path.realpath(b)

        target = Path(os.path.realpath(path))
        inside = [p for p in (target, *target.parents) if p.exists()]
        if any(same(target, f) for f in files) or any(
            same(p, d) for p in inside for d in folders if d.exists()
        ):
            via = f" ({target})" if str(target) != str(path) else ""
            raise InputError(
                f"{path} is one of cpmail's own files{via}; writing there would replace it: "
                "give another file name."
            )
        return path

    @property
    def db_where(self) -> str:
        """The database named for a person: its file, or engine, host and name."""
        from cpmail.store import describe

        return describe(self.settings.db_url)

    @cached_property
    def out(self) -> Console:
        # Piped into a file or `less`, tables get room instead of rich's default 80 columns.
        # $COLUMNS wins, as for other tools; without it a terminal's own width.
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() else None if sys.stdout.isatty() else 160
        return _console(highlight=False, soft_wrap=True, width=width)

    @cached_property
    def err(self) -> Console:
        return _console(stderr=True, highlight=False, soft_wrap=True)

    def say(self, text: str) -> None:
        """Print a human message unless --quiet."""
        if not self.quiet:
            self.out.print(printable(text), markup=False)

    def note(self, text: str) -> None:
        """Print progress or advice to stderr (never pollutes --json on stdout)."""
        if not self.quiet:
            self.err.print(printable(text), markup=False)


# What never reaches a terminal as it is, whoever wrote it (the agency's data, a server's
# answer): control characters other than tab and line break (an escape sequence can clear
# the screen, colour a line or hide a link; a carriage return can write over a line) and
# the marks that reorder the text shown after them.
_UNSHOWN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _console(**options: Any) -> Console:
    """A rich Console whose reader going away (`| head`) is a broken pipe, said as the rest
    of cpmail's output says it (exit 141), not rich's exit 1: 1 means mail not delivered."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "the reader of the output went away")

    return _Console(**options)


def printable(text: str) -> str:
    """``text`` safe to print: each such character written as its escape (``\\x1b``), and
    every secret cpmail knows of masked (``cpmail.scrub.hide``)."""
    from cpmail.scrub import hide  # (not on the path of `cpmail --help`)

    return _UNSHOWN.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), hide(text))


def ctx_of(ctx: typer.Context) -> Ctx:
    obj = ctx.find_root().obj
    assert isinstance(obj, Ctx), "the global callback did not run"
    return obj


def _default(o: Any) -> Any:
    if isinstance(o, dt.datetime | dt.date):
        return o.isoformat()
    if isinstance(o, decimal.Decimal):
        return format(o, "f")
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    raise TypeError(f"cannot put {type(o).__name__} in JSON")


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout and nothing else."""
    from cpmail.scrub import hide

    text = json.dumps(obj, default=_default, ensure_ascii=False, indent=2)
    sys.stdout.write(hide(text) + "\n")
    sys.stdout.flush()


def print_table(
    c: Ctx,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    empty: str = "Nothing to show.",
    drop: Sequence[str] = (),
    free: Sequence[str] = (),
    wrap: Sequence[str] = (),
) -> None:
    """Print rows as a rich table (or ``empty`` when there are none).

    The table fits the terminal without breaking a word. ``free`` names the
    columns of running text (subjects, errors; by default any column wider
    than 20) that give up room first: their text ends in "…" where it is cut
    (``--json`` has it whole). ``wrap`` columns give up room by wrapping at
    spaces instead (a word longer than the column is folded, not cut). When even
    that is not enough, the columns in ``drop`` are
    left out, in that order (empty ones first).
    """
    if not rows:
        c.say(empty)
        return
    from rich.table import Table
    from rich.text import Text

    cells = [
        {
            col: _cell(row.get(col)) if col in wrap else _short(_cell(row.get(col)))
            for col in columns
        }
        for row in rows
    ]
    full = {col: max([len(col), *(len(r[col]) for r in cells)]) for col in columns}
    loose_cols = set(free) | set(wrap) or {col for col in columns if full[col] > 20}

    def least(col: str) -> int:
        if col in wrap:
            return min(24, max([len(col), 8, *(len(w) for r in cells for w in r[col].split())]))
        return min(full[col], 16) if col in loose_cols else full[col]

    shown = list(columns)
    width = c.out.width
    blank = [col for col in drop if not any(r[col] for r in cells)]
    for col in [*blank, *(x for x in drop if x not in blank)]:
        if sum(least(x) + 3 for x in shown) + 1 <= width:
            break
        shown.remove(col)
    # Fixed columns get what they need; running text shares what is left.
    widths = {col: full[col] for col in shown if col not in loose_cols}
    loose = sorted((col for col in shown if col in loose_cols), key=lambda x: full[x])
    share = width - 1 - 3 * len(shown) - sum(widths.values())
    for n, col in enumerate(loose):
        fair = share // (len(loose) - n)
        widths[col] = max(min(full[col], fair), least(col) if col in wrap else min(8, full[col]))
        share -= widths[col]
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in shown:
        # wrap columns break lines at spaces; only a word longer than the whole
        # column (a long URL) is folded, so that nothing of it is lost
        overflow: Literal["fold", "ellipsis"] = "fold" if col in wrap else "ellipsis"
        table.add_column(
            col.replace("_", " "), no_wrap=col not in wrap, width=widths[col], overflow=overflow
        )
    for row in cells:
        # Text, not markup: a name like "[/]" or "[link=…]" is shown as written
        table.add_row(
            *(Text(row[col] if col in wrap else _fit(row[col], widths[col])) for col in shown)
        )
    c.out.print(table)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _short(text: str, limit: int = 72) -> str:
    """Long cells (errors, subjects) are cut in tables; --json has them whole."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(v: Any) -> str:
    return printable(_text(v))


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M")
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return str(v)


# Dates cpmail works with: a run looks up to 400 days either way for a workday.
FIRST_DATE, LAST_DATE = dt.date(1900, 1, 1), dt.date(9998, 12, 31)


def parse_date(text: str, *, option: str) -> dt.date:
    """YYYY-MM-DD from 1900 to 9998, or InputError naming the option.

    Only that form: Python would also read 20261201 and 2026-W48, which the
    help does not promise; an empty value is no date either.
    """
    from cpmail.settings import ISO_DATE

    if not ISO_DATE.fullmatch(text):
        raise UsageError(f"{option}: {text!r} is not a date as YYYY-MM-DD.")
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: {text} is no such day.") from None
    if not FIRST_DATE <= day <= LAST_DATE:
        raise UsageError(f"{option}: {text} is out of range; give a date from 1900 to 9998.")
    return day


def split_list(values: Iterable[str] | None) -> list[str]:
    """Options that take 'A,B' or are repeated: one flat list."""
    out: list[str] = []
    for v in values or ():
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def send_test(c: Ctx, *, as_staff: str | None, to: str | None, to_name: str = "") -> None:
    """Send one test message from the account cpmail would use; print what happened."""
    from cpmail.sending import send_test_message

    s = c.settings
    sender, rcpt = send_test_message(
        c.engine(), s, c.secrets, as_staff=as_staff, to=to, to_name=to_name
    )
    transport = s["mail.transport"]
    where = f" (written to {s.mail_dir})" if transport == "file" else ""
    c.say(f"Sent a test message from {sender} to {rcpt} via {transport}{where}.")


def read_stdin_text(*, line: bool = False, secret: bool = False) -> str:
    """Standard input (its first line only, with ``line``) as UTF-8 text; exit 2 if it is not.

    With ``secret`` the error names no byte of it.
    """
    raw = sys.stdin.buffer.readline() if line else sys.stdin.buffer.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = "" if secret else f" (byte {e.start + 1} is {e.object[e.start]:#04x})"
        raise InputError(f"standard input is not UTF-8 text{where}.") from None
