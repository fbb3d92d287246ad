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
