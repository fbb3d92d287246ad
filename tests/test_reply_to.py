"""A reply reaches a person: the job's account executive, else the system manager."""

from __future__ import annotations

import sqlite3
from email import message_from_bytes, policy
from pathlib import Path

from cpmail.compose import thread_id_for
from tests.conftest import Cli


def test_every_message_answers_to_a_person(cli: Cli, home: Path) -> None:
    r = cli("demo", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    db = sqlite3.connect(home / "cpmail.db")
    manager_address = cli("config", "get", "manager.email").stdout.strip()
    assert manager_address
    ae = {
        job: email
        for job, email in db.execute(
            "SELECT j.id, s.work_email FROM jobs j JOIN client_team t ON t.client_id = j.client_id "
            "JOIN staff s ON s.id = t.staff_id WHERE lower(t.role) = 'ae' AND s.active"
        )
    }
    sender = db.execute("SELECT DISTINCT from_addr FROM messages").fetchone()[0]
    domain = sender.rpartition("@")[2]
    by_thread = {thread_id_for(f"job:{job}", domain): job for job in ae}
    checked_jobs = 0
    for eml in sorted((home / "mail").glob("*.eml")):
        msg = message_from_bytes(eml.read_bytes(), policy=policy.default)
        to = msg["To"].addresses[0].addr_spec.lower()
        reply = msg["Reply-To"]
        assert reply is None or reply.addresses[0].addr_spec.lower() != to, eml.name
        job = by_thread.get(str(msg["References"] or "").strip())
        expected = ae[job] if job else manager_address
        if expected.lower() == to:
            expected = manager_address if job else ""
        if expected and expected.lower() != to:
            assert reply is not None, f"{eml.name} ({msg['X-Cpmail-Event']}) has no Reply-To"
            assert reply.addresses[0].addr_spec.lower() == expected.lower(), eml.name
            checked_jobs += bool(job)
        else:
            assert reply is None, eml.name
    assert checked_jobs >= 5


def test_the_footer_says_where_a_reply_goes(cli: Cli, home: Path) -> None:
    """ "Please do not reply" only where a reply would reach nobody; where Reply-To names a
    person, the text and the HTML say that a reply goes to them."""
    assert cli("demo", "--date", "2026-11-24").exit_code == 0
    assert cli("config", "set", "manager.email", "").exit_code == 0
    assert cli("check", "--date", "2026-11-25").exit_code in (0, 1)  # some without Reply-To
    seen = {True: 0, False: 0}
    for eml in sorted((home / "mail").glob("*.eml")):
        msg = message_from_bytes(eml.read_bytes(), policy=policy.default)
        if msg["X-Cpmail-Event"] == "failure-summary":
            continue
        reply = msg["Reply-To"]
        for part in ("plain", "html"):
            body = msg.get_body(preferencelist=(part,))
            assert body is not None, eml.name
            text = " ".join(str(body.get_content()).split())
            if reply is None:
                assert "Please do not reply" in text and "A reply goes to" not in text, eml.name
            else:
                to = reply.addresses[0]
                assert f"A reply goes to {to.display_name or to.addr_spec}" in text, eml.name
                assert "do not reply" not in text, eml.name
        seen[reply is None] += 1
    assert seen[True] and seen[False], seen  # both kinds were looked at
