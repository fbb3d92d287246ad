"""What cpmail prints shows the agency's data as written: no markup read into it, and no
control character or reordering mark reaching the terminal.

A name like ``[/]`` stopped every listing (exit 70), ``[bold]`` vanished and
``[link=…]`` became a hyperlink; an escape sequence in a name or a server's
answer could clear the screen or colour a line; U+202E turned the text after it
around. Each kind goes through the listings (rich tables), the lines commands
say, and the errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cpmail.cli.common import printable
from tests.conftest import Cli

NAMES = [
    "[/]",
    "[link=https://evil.example]Dana[/link]",
    "[bold]Boss",
    "Ann\x1b[2J\x1b[31mRED",
    "Osc\x1b]8;;https://evil.example\x1b\\Link",
    "Eve\u202eevil",
    "Car\rriage",
    "Nel\x85line",
    "Iso\u2066late",
]
# What must never reach a terminal as it is.
UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def test_printable_writes_each_such_character_as_its_escape() -> None:
    for name in NAMES:
        shown = printable(name)
        assert not UNSHOWN.search(shown), repr(shown)
    assert printable("a\x1b[2Jb\u202ec\rd\x85") == "a\\x1b[2Jb\\u202ec\\rd\\x85"
    assert printable("tab\tand\nline") == "tab\tand\nline"  # kept: they lay text out


def test_listings_and_lines_show_data_as_written(initialised: Cli, tmp_path: Path) -> None:
    rows = [
        {"id": f"S{i}", "name": name, "work_email": f"s{i}@agency.test"}
        for i, name in enumerate(NAMES)
    ]
    path = tmp_path / "staff.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    r = initialised("data", "import", str(path))
    assert r.exit_code == 0, r.output
    r = initialised("staff", "list", env={"COLUMNS": "400"})  # (room for every name whole)
    assert r.exit_code == 0, r.output
    assert not UNSHOWN.search(r.stdout), repr(r.stdout)
    for name in NAMES:
        assert printable(name) in r.stdout, (name, r.stdout)
    # a setting holding markup, in the listing of settings and in the line `config set` says
    r = initialised("config", "set", "agency.name", "Acme [/] [bold]Ltd\x1b[2J")
    assert r.exit_code == 0 and "Acme [/] [bold]Ltd\\x1b[2J" in r.stdout, r.output
    r = initialised("config", "show", env={"COLUMNS": "400"})
    assert r.exit_code == 0 and "Acme [/] [bold]Ltd\\x1b[2J" in r.stdout, r.output
    assert not UNSHOWN.search(r.stdout)
    # an error naming what was given
    r = initialised("staff", "edit", "S3", "--supervisor", "NO\u202eBODY")
    assert r.exit_code == 2 and not UNSHOWN.search(r.stderr), repr(r.stderr)


def test_an_error_is_one_line_whatever_a_server_wrote_into_it() -> None:
    """A sign-in refusal's description holding a line break printed over two lines, the
    second of which could pass for another line of cpmail's."""
    from cpmail.cli.app import brief

    said = brief("the sign-in failed: access_denied: No.\ncpmail: all mail was sent.\r\x1b[2J")
    assert "\n" not in said and "\r" not in said and "\x1b" not in said, repr(said)
    assert said.startswith("the sign-in failed: access_denied: No. cpmail: all mail"), said
