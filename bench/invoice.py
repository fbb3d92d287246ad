"""Invoice PDF: `cpmail report invoice ID --out x.pdf`, process start-up included.

The home is the demo agency (`cpmail demo`), whose invoices have a few lines
each. Each round runs the command as a new process; the figure is the
median wall time; the target is <= 1.5 s. ``--split`` then times the parts of
one rendering in this process, so the limiting part is known.

    python bench/invoice.py             # 7 rounds
    python bench/invoice.py --rounds 11 --split
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CPMAIL, median, timed, user_env

TARGET = 1.5
DATE = "2026-11-24"
INVOICE = "B001"


def split(home: Path, out: Path) -> None:
    """Time the parts of one `report invoice` in this process (cold: first use of each)."""
    marks: list[tuple[str, float]] = []

    def mark(label: str) -> None:
        marks.append((label, time.perf_counter()))

    mark("start")
    from cpmail.settings import Settings

    settings = Settings.load(home)
    from cpmail.store import connect

    mark("cpmail, settings, SQLAlchemy imported")
    engine = connect(settings.db_url, where=str(home))
    mark("database opened, schema revision checked (Alembic)")
    from cpmail import reports
    from cpmail.reports.render import render_html

    mark("cpmail.reports imported")
    rep = reports.load(engine, settings, "invoice", id=INVOICE)
    mark("invoice read from the database")
    agency = {"name": settings["agency.name"], "address": "", "logo": None}
    html = render_html(settings, rep.template, {**rep.context, "agency": agency})
    mark("HTML rendered (Jinja2)")
    import weasyprint

    mark("weasyprint imported (loads pango, harfbuzz, fontconfig)")
    doc = weasyprint.HTML(string=html, base_url=str(home)).render()
    mark("laid out (fonts found, text shaped)")
    pdf = doc.write_pdf()
    mark("PDF written (fonts subset by fontTools)")
    out.write_bytes(pdf)
    total = marks[-1][1] - marks[0][1]
    print(f"\nOne invoice in this process, {total:.2f} s in all (interpreter start not included):")
    for (_, before), (label, after) in itertools.pairwise(marks):
        print(f"  {label:<56} {after - before:6.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--split", action="store_true", help="also time the parts of one rendering")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cpmail-bench-invoice-"))
    try:
        home = base / "home"
        env = user_env()
        timed([CPMAIL, "--home", str(home), "demo", "--date", DATE], env=env)
        out = base / "x.pdf"
        cmd = [CPMAIL, "--home", str(home), "report", "invoice", INVOICE, "--out", str(out)]
        timed(cmd, env=env)  # warm-up: bytecode, font caches
        times = [timed(cmd, env=env) for _ in range(args.rounds)]
        if not out.read_bytes().startswith(b"%PDF"):
            raise SystemExit("the output is not a PDF")
        m = median(times)
        verdict = "met" if m <= TARGET else "NOT met"
        print(f"cpmail report invoice {INVOICE} --out x.pdf, {args.rounds} rounds:")
        print(f"  median {m:.2f} s (min {min(times):.2f}, max {max(times):.2f})")
        print(f"  target <= {TARGET} s: {verdict}")
        if args.split:
            split(home, base / "split.pdf")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
