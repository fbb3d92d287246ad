"""`staff edit --digest on|off|default`: a person's own choice over [mail] digest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests.conftest import Cli


def messages_to(cli: Cli) -> Counter[str]:
    """Messages per recipient in the log (`demo --force` starts a new log)."""
    rows = json.loads(cli("log", "--json", "--all").stdout)
    return Counter(r["to"][0] for r in rows if r["status"] == "sent")


def test_a_persons_choice_wins_over_the_setting(cli: Cli, home: Path) -> None:
    r = cli("demo", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    staff = {s["id"]: s for s in json.loads(cli("staff", "list", "--json").stdout)}
    per_person = messages_to(cli)
    # someone with several messages chooses a digest; the setting stays off
    many = max(staff.values(), key=lambda s: per_person.get(s["work_email"], 0))
    assert per_person[many["work_email"]] > 1
    assert cli("staff", "edit", many["id"], "--digest", "on").exit_code == 0
    assert json.loads(cli("staff", "list", "--json").stdout)[0]["digest"] in (
        "on",
        "off",
        "default",
    )
    other = next(
        s for s in staff.values() if s is not many and per_person.get(s["work_email"], 0) > 1
    )
    r = cli("demo", "--date", "2026-11-24", "--force")
    assert r.exit_code == 0, r.output
    # demo --force replaced the agency's data, not the person's choice
    listed = {s["id"]: s for s in json.loads(cli("staff", "list", "--json").stdout)}
    assert listed[many["id"]]["digest"] == "on"
    after = messages_to(cli)
    assert after[many["work_email"]] == 1
    assert after[other["work_email"]] == per_person[other["work_email"]]
    # and the other way round: the setting on, one person off
    assert cli("config", "set", "mail.digest", "true").exit_code == 0
    assert cli("staff", "edit", many["id"], "--digest", "off").exit_code == 0
    assert cli("staff", "edit", other["id"], "--digest", "default").exit_code == 0
    r = cli("demo", "--date", "2026-11-24", "--force")
    assert r.exit_code == 0, r.output
    again = messages_to(cli)
    assert again[many["work_email"]] == per_person[many["work_email"]]
    assert again[other["work_email"]] == 1


def test_a_wrong_choice_is_refused(cli: Cli) -> None:
    assert cli("init").exit_code == 0
    r = cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
    assert r.exit_code == 0
    r = cli("staff", "edit", "JD", "--digest", "weekly")
    assert r.exit_code == 2
    assert "--digest" in r.stderr and "on, off, default" in r.stderr
