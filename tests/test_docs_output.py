"""What the docs show a command printing is what it prints."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import Cli

DOCS = Path(__file__).parent.parent / "docs"


def text_blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"```text\n(.*?)```", text, flags=re.S)


def test_getting_started_shows_what_the_demo_prints(cli: Cli, home: Path) -> None:
    r = cli("demo", "--date", "2026-11-27")
    assert r.exit_code == 0, r.output
    shown = next(b for b in text_blocks("getting-started.md") if "demo agency" in b)
    printed = r.stdout.replace(str(home), "/home/pat/cpmail-demo")
    first, *_, before_last, last = shown.strip().splitlines()
    assert printed.startswith(first.rstrip("…").rstrip())
    assert printed.strip().splitlines()[-2:] == [before_last, last]
    # the table's columns are the ones shown
    header = next(x for x in shown.splitlines() if "found" in x)
    assert header in printed


def test_check_md_shows_what_a_second_run_prints(cli: Cli) -> None:
    assert cli("demo", "--date", "2026-11-27").exit_code == 0
    r = cli("check", "--date", "2026-11-27")
    assert r.exit_code == 0, r.output
    assert "No new notifications for 2026-11-27.\n" in [b for b in text_blocks("check.md")]
    assert r.stdout == "No new notifications for 2026-11-27.\n"
