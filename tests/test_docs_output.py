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


def _program_text() -> str:
    """Every string of the program, with implicit concatenations joined, in one text."""
    parts = []
    for path in sorted((DOCS.parent / "cpmail").rglob("*")):
        if path.suffix in (".py", ".txt", ".html") and "__pycache__" not in path.parts:
            text = path.read_text(encoding="utf-8")
            text = re.sub(r"\"\s*\n\s*(?:rf|fr|f|r)?\"", "", text)  # "a " "b" -> "a b"
            parts.append(text)
    return "\n".join(parts)


def _fragments(line: str) -> list[str]:
    """Runs of 3 or more plain words: what the program writes around the values it fills in."""
    plain = r"[A-Za-z][a-z]*(?:-[a-z]+)*[,;:.]?"
    words = re.split(r"\s+", line.strip())
    runs, run = [], []
    for w in words:
        if re.fullmatch(plain, w) and not w.isupper():
            run.append(w.rstrip(",;:."))
            if w[-1] in ",;:.":
                runs.append(run)
                run = []
        else:
            runs.append(run)
            run = []
    runs.append(run)
    return [" ".join(r) for r in runs if len(r) >= 3]


def _said(fragment: str, program: str) -> bool:
    """The program has these words, up to two of them being values it fills in ({…})."""
    if fragment in program:
        return True
    import itertools

    words = fragment.split()
    # Words joined from two strings of the program ("is not" + HELP_TEXT) count too.
    for cut in range(2, len(words) - 1):
        if " ".join(words[:cut]) in program and " ".join(words[cut:]) in program:
            return True

    words = fragment.split()
    for n in (1, 2):
        for spots in itertools.combinations(range(len(words)), n):
            if len(words) - n < 2:
                continue
            pattern = r"\s".join(
                r"\{[^}]*\}" if i in spots else re.escape(w) for i, w in enumerate(words)
            )
            if re.search(pattern, program):
                return True
    return False


def test_the_sentences_the_docs_show_are_the_programs() -> None:
    """Each error or message the docs quote is worded as the program words it."""
    program = re.sub(r"\s+", " ", _program_text())
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "cli.md")
    problems, checked = [], 0
    for page in pages:
        for block in text_blocks(page):
            for line in block.splitlines():
                line = line.strip()
                if not line.startswith("cpmail: "):
                    continue
                # (…) quotes a server or a library, not cpmail
                said = re.sub(r"\([^()]*\)", " | ", line[len("cpmail: ") :])
                for fragment in _fragments(said):
                    checked += 1
                    if not _said(fragment, program):
                        problems.append(f"{page}: {fragment!r} (in: {line[:90]})")
    assert checked > 40
    assert not problems, "\n".join(problems)
