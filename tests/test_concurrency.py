"""Several `cpmail check` processes at once on one SQLite home send each notification once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from email import message_from_bytes, policy
from pathlib import Path

from cpmail.settings import Settings
from cpmail.store import connect
from tests.agency import D, at, base_agency, insert
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp


def test_three_checks_at_once_deliver_each_notification_once(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    setup_smtp(cli, smtp_server)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    engine = connect(Settings.load(home).db_url, where="test")
    base_agency(engine)
    insert(
        engine,
        "jobs",
        [
            dict(id=f"J{i}", client_id="C1", title=f"Job {i}", opened_at=at(D, 9))
            for i in range(300, 360)
        ],
    )
    env = {**os.environ, "CPMAIL_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cpmail", "-q", "check", "--date", D.isoformat()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0, 0], [p.stderr.read() for p in procs if p.stderr]
    ids = Counter(
        message_from_bytes(m.data, policy=policy.default)["Message-ID"]
        for m in smtp_server.messages
    )
    assert ids and max(ids.values()) == 1
    # 60 new jobs to a team of 3, missing time for AE, CR (+ CR's supervisor AE)
    assert len(ids) == 60 * 3 + 3
