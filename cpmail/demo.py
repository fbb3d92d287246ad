"""The demo agency: CSV files shipped in the package, with dates laid relative to a run date.

Date cells hold tokens that are resolved for the run date D:
``{D}``, ``{D-3}``, ``{D+29}`` (calendar days), ``{P}`` (the prior workday of
D, Monday to Friday, skipping the holidays of ``[check]``), ``{N}`` (the
next workday) and ``{A}`` (the next workday, or the next after today if that
is later: a calendar event that has not begun even when D is long past, since
no check reminds of one that has). So on any date every trigger has something
to say.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
from pathlib import Path

import sqlalchemy as sa

from cpmail.settings import Settings
from cpmail.store.schema import AGENCY_TABLE_NAMES, metadata
from cpmail.workdays import WorkCalendar

DEMO_DIR = Path(__file__).parent / "data" / "demo"
EXAMPLE_DATE = dt.date(2026, 11, 24)
_TOKEN = re.compile(r"\{([DPNA])([+-]\d+)?\}")


def demo_files() -> list[Path]:
    """The demo's CSV files in an order that satisfies their foreign keys."""
    files = {p.stem: p for p in DEMO_DIR.glob("*.csv")}
    return [files[name] for name in AGENCY_TABLE_NAMES if name in files]


def resolve(text: str, day: dt.date, calendar: WorkCalendar, today: dt.date | None = None) -> str:
    """Replace the date tokens in ``text`` with dates relative to ``day`` (and ``today``)."""
    today = today or dt.date.today()
    anchors = {
        "D": day,
        "P": calendar.prior_workday(day) or day - dt.timedelta(days=1),
        "N": calendar.next_workday(day) or day + dt.timedelta(days=1),
    }
    anchors["A"] = max(anchors["N"], calendar.next_workday(today) or today + dt.timedelta(days=1))

    def sub(m: re.Match[str]) -> str:
        offset = int(m.group(2) or 0)
        return (anchors[m.group(1)] + dt.timedelta(days=offset)).isoformat()

    return _TOKEN.sub(sub, text)


def write_resolved(folder: Path, day: dt.date, calendar: WorkCalendar) -> list[Path]:
    """Write the demo CSVs with their dates resolved for ``day`` into ``folder``."""
    from cpmail.settings import private_dir, write_atomic

    private_dir(folder)
    out = []
    for src in demo_files():
        dst = folder / src.name
        text = resolve(src.read_text(encoding="utf-8"), day, calendar)
        write_atomic(dst, text.encode("utf-8"))
        out.append(dst)
    return out


def has_agency_data(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        for name in AGENCY_TABLE_NAMES:
            t = metadata.tables[name]
            if conn.execute(sa.select(sa.literal(1)).select_from(t).limit(1)).first():
                return True
    return False


def clear_agency_data(engine: sa.Engine) -> None:
    """Empty the agency tables (and cpmail's outbox and ledger, which refer to them)."""
    with engine.begin() as conn:
        for name in ("messages", "ledger", *reversed(AGENCY_TABLE_NAMES)):
            conn.execute(metadata.tables[name].delete())


def load(engine: sa.Engine, settings: Settings, day: dt.date) -> dict[str, int]:
    """Import the demo agency for ``day``; return rows per table."""
    from cpmail.dataio import import_file

    calendar = WorkCalendar.from_settings(settings)
    tmp = Path(tempfile.mkdtemp(prefix="cpmail-demo-"))
    try:
        counts = {}
        for path in write_resolved(tmp, day, calendar):
            result = import_file(engine, settings, path)
            counts[path.stem] = result.rows
        return counts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
