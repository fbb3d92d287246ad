"""The documentation and the examples stay true to the program.

- docs/cli.md is what `scripts/gen_cli_docs.py` writes from the commands' --help;
- the site builds with `mkdocs build --strict` (broken links and anchors fail,
  and so does a page the nav forgets);
- every `cpmail …` command line in the pages names commands and options that exist;
- every setting and every event is documented;
- the example settings load, and the import script works on its sample file.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpmail.settings import EVENTS, KEYS, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

# The pages whose command lines are checked against the program.
CHECKED_PAGES = (
    "index.md",
    "getting-started.md",
    "staff.md",
    "triggers.md",
    "check.md",
    "outbox-and-log.md",
    "settings.md",
    "templates.md",
    "cron-and-systemd.md",
    "security.md",
    "troubleshooting.md",
    "completion.md",
    "monitoring.md",
    "reliability.md",
    "data.md",
    "reports.md",
    "smtp.md",
    "several-machines.md",
)
GLOBAL_OPTIONS = {"--home": True, "-q": False, "--quiet": False, "-v": False, "--verbose": False}


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args], cwd=cwd, capture_output=True, text=True, check=False, timeout=300
    )


def test_cli_reference_is_up_to_date() -> None:
    r = run(sys.executable, "scripts/gen_cli_docs.py", "--check")
    assert r.returncode == 0, (
        "docs/cli.md differs from the commands' --help: run `python scripts/gen_cli_docs.py` "
        f"and commit docs/cli.md.\n{r.stderr}"
    )


def test_site_builds_strict(tmp_path: Path) -> None:
    try:
        import material  # type: ignore[import-untyped]  # noqa: F401  (mkdocs-material)
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail(
            'mkdocs-material is not installed: add "mkdocs-material>=9.5" to the test '
            "extra in pyproject.toml and `pip install -e '.[test]'`."
        )
    r = run(sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path))
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    assert (tmp_path / "index.html").is_file()


def test_nav_lists_every_page() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if f" {p.name}" not in nav]
    assert not missing, f"add these pages to the nav in mkdocs.yml: {', '.join(missing)}"


# ---------------------------------------------------------------- command lines


def shell_blocks(text: str) -> Iterator[str]:
    """The contents of ```sh / ```bash fenced blocks."""
    for m in re.finditer(r"^```(?:sh|bash|shell)\n(.*?)^```", text, re.S | re.M):
        yield m.group(1)


def cpmail_calls(block: str) -> Iterator[list[str]]:
    """Each `cpmail …` invocation in a shell block, as its words after `cpmail`."""
    separators = {"|", "||", "&&", ";", "{", "}"}
    starters = {*separators, "then", "do", "else", "sudo", "env", "exec", "time", "!"}
    block = block.replace("\\\n", " ")
    for line in block.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote in prose-like shell: not a command
            continue
        current: list[str] | None = None
        previous: str | None = None
        for word in words:
            ends = word.endswith(";") and word != ";"
            word = word.rstrip(";") if ends else word
            if word in separators:
                if current is not None:
                    yield current
                current = None
            elif current is not None:
                current.append(word)
            elif (word == "cpmail" or word.endswith("/bin/cpmail")) and (
                previous is None or previous in starters or re.match(r"^[A-Z_]+=", previous)
            ):
                current = []
            if ends:
                if current is not None:
                    yield current
                current, word = None, ";"
            previous = word
        if current is not None:
            yield current


def resolve(root: Any, words: list[str]) -> tuple[Any, list[str], str]:
    """Walk the words through the command tree: (command, the rest, 'cpmail a b')."""
    i, path = 0, ["cpmail"]
    while i < len(words) and words[i] in GLOBAL_OPTIONS:
        i += 2 if GLOBAL_OPTIONS[words[i]] else 1
    command = root
    while i < len(words) and hasattr(command, "get_command"):
        ctx = command.context_class(command, info_name="cpmail")
        sub = command.get_command(ctx, words[i])
        if sub is None:
            break
        command, path = sub, [*path, words[i]]
        i += 1
    return command, words[i:], " ".join(path)


def option_names(command: Any) -> set[str]:
    names: set[str] = set()
    for p in command.params:
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    return names


def command_texts() -> Iterator[tuple[str, str]]:
    """(file, shell text) for every place that shows cpmail command lines."""
    for page in CHECKED_PAGES:
        path = DOCS / page
        if path.exists():
            for block in shell_blocks(path.read_text(encoding="utf-8")):
                yield page, block
    for block in shell_blocks((EXAMPLES / "README.md").read_text(encoding="utf-8")):
        yield "examples/README.md", block
    for name in ("crontab", "systemd/cpmail-check.service"):
        yield f"examples/{name}", (EXAMPLES / name).read_text(encoding="utf-8")


def test_documented_commands_exist() -> None:
    import typer.main

    from cpmail.cli.app import app

    root = typer.main.get_command(app)
    root_options = option_names(root)
    problems = []
    seen: dict[str, int] = {}
    for where, text in command_texts():
        for words in cpmail_calls(text):
            seen[where] = seen.get(where, 0) + 1
            command, rest, name = resolve(root, words)
            if hasattr(command, "get_command") and rest and not rest[0].startswith("-"):
                problems.append(f"{where}: `{name} {rest[0]}` is not a command")
                continue
            known = option_names(command) | {"-h", "--help"}
            if command is root:
                known |= root_options
            for word in rest:
                opt = word.split("=", 1)[0]
                if opt.startswith("-") and opt != "-" and opt not in known:
                    problems.append(f"{where}: `{name}` has no option {opt}")
    assert sum(seen.values()) > 50, "the pages should show the commands they describe"
    assert seen.get("examples/crontab") and seen.get("examples/systemd/cpmail-check.service")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- settings and events


def test_every_setting_is_documented() -> None:
    text = (DOCS / "settings.md").read_text(encoding="utf-8")

    def per_kind(k: str) -> bool:  # one row for every event / table: `<event>`, `<table>`
        return k.startswith("source.tables.") or (
            k.startswith("events.") and k.rsplit(".", 1)[1] in ("enabled", "notify")
        )

    missing = [k for k in KEYS if f"`{k}`" not in text and not per_kind(k)]
    assert not missing, f"docs/settings.md does not describe: {', '.join(missing)}"
    assert "`events.<event>.enabled`" in text and "`events.<event>.notify`" in text
    assert "`source.tables.<table>.query`" in text and "`source.tables.<table>.replace`" in text


def test_every_event_has_a_section() -> None:
    text = (DOCS / "triggers.md").read_text(encoding="utf-8")
    missing = [e for e in EVENTS if f"\n### {e}\n" not in text]
    assert not missing, f"docs/triggers.md has no section for: {', '.join(missing)}"


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize(
    "folder", ["gmail", "microsoft365", "smtp-relay", "smtp-starttls"], ids=str
)
def test_example_settings_load(folder: str, tmp_path: Path, monkeypatch: Any) -> None:
    for name in [k for k in os.environ if k.startswith("CPMAIL_")]:
        monkeypatch.delenv(name)
    (tmp_path / "cpmail.toml").write_bytes((EXAMPLES / folder / "cpmail.toml").read_bytes())
    settings = Settings.load(tmp_path)
    assert settings.source("mail.transport") == "file"
    want = {"gmail": "gmail", "microsoft365": "microsoft"}.get(folder, "smtp")
    assert settings["mail.transport"] == want


def test_import_from_spreadsheet(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cpmail = f"{shlex.quote(sys.executable)} -m cpmail"
    demo = run(sys.executable, "-m", "cpmail", "--home", str(home), "-q", "demo")
    assert demo.returncode == 0, demo.stderr
    script = str(EXAMPLES / "import-from-spreadsheet.py")
    sample = str(EXAMPLES / "spreadsheet-jobs.csv")

    r = run(sys.executable, script, sample, "--home", str(home), "--cpmail", cpmail)
    assert r.returncode == 0, r.stderr
    assert "3 new" in r.stdout

    export = run(sys.executable, "-m", "cpmail", "--home", str(home), "data", "export", "jobs")
    jobs = {row["id"]: row for row in csv.DictReader(io.StringIO(export.stdout))}
    assert jobs["J2001"]["client_id"] == "C01"  # "Acme Foods", by name
    assert jobs["J2001"]["opened_at"].startswith("2026-11-23T09:30")  # "11/23/2026 9:30 AM"
    assert jobs["J2003"]["client_id"] == "C03"  # given as an id
    assert jobs["J2002"]["production_status"] == "WIP"

    bad = tmp_path / "bad.csv"
    bad.write_text("Job #,Client,Job Title\nJ9,Nobody Inc,Test\n", encoding="utf-8")
    r = run(sys.executable, script, str(bad), "--home", str(home), "--cpmail", cpmail)
    assert r.returncode == 2
    assert "line 2: client 'Nobody Inc'" in r.stderr


def test_every_hint_in_the_program_names_a_real_command() -> None:
    """Each `cpmail …` an error or note advises exists, with the options it names."""
    import typer.main

    from cpmail.cli.app import app

    root = typer.main.get_command(app)
    problems, count = [], 0
    for path in sorted((ROOT / "cpmail").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        # f-string joins ("…`cpmail staff " f"passcode {x}`") are read as one string
        joined = re.sub(r"\"\s*\n\s*f?\"", "", source)
        for hint in re.findall(r"`cpmail ([^`]+)`", joined):
            words = re.sub(r"\{[^}]*\}", "X", hint).replace("…", "").split()
            count += 1
            command, rest, name = resolve(root, words)
            if hasattr(command, "get_command") and rest and not rest[0].startswith("-"):
                if rest[0].isupper() or rest[0] == "X" or "|" in rest[0] or "[" in rest[0]:
                    continue  # a placeholder (ID) or usage syntax (a|b) stands for the rest
                problems.append(f"{path.name}: `{name} {rest[0]}` is not a command")
                continue
            known = option_names(command) | {"-h", "--help"} | option_names(root)
            for word in rest:
                opt = word.split("=", 1)[0].rstrip(".,;)")
                if opt.startswith("--") and opt not in known and "|" not in opt:
                    problems.append(f"{path.name}: `{name}` has no option {opt} ({hint})")
    assert count > 40
    assert not problems, "\n".join(problems)


def test_every_module_the_architecture_page_names_exists() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(cpmail/[\w/]+(?:\.py)?/?)`", text))
    assert len(named) > 20
    missing = [n for n in sorted(named) if not (ROOT / n).exists()]
    assert not missing, f"docs/architecture.md names what is not there: {missing}"


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("Run the whole test suite:", 1)[1].split("```sh\n", 1)[1]
    command = block.split("```", 1)[0].strip().splitlines()[-1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert command.replace(".venv/bin/", "") == ci[-1], (command, ci[-1])
    assert "tests.run" in command
