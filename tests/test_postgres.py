"""PostgreSQL as the shared backend: several machines' checks at once, each notification once."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import sqlalchemy as sa

from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store.schema import messages, runs
from tests.agency import D, at, base_agency, insert
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp

pytestmark = pytest.mark.postgres


def _agency(cli: Cli, home: Path, server: SMTPTestServer, url: str, jobs: int) -> sa.Engine:
    setup_smtp(cli, server, db=url)
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    engine = connect(Settings.load(home).db_url, where="test")
    base_agency(engine)
    insert(
        engine,
        "jobs",
        [
            dict(id=f"J{i}", client_id="C1", title=f"Job {i}", opened_at=at(D, 9))
            for i in range(1000, 1000 + jobs)
        ],
    )
    return engine


def _machines(home: Path, tmp: Path, n: int) -> list[dict[str, str]]:
    """n homes ("machines") that share the database: each its own folder and settings."""
    envs = []
    for i in range(n):
        other = tmp / f"machine{i}"
        other.mkdir()
        (other / "cpmail.toml").write_text((home / "cpmail.toml").read_text())
        envs.append({**os.environ, "CPMAIL_HOME": str(other)})
    return envs


def _check(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cpmail", "-q", "check", "--date", D.isoformat()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _ids(server: SMTPTestServer) -> Counter[str]:
    return Counter(
        message_from_bytes(m.data, policy=policy.default)["Message-ID"] for m in server.messages
    )


def test_four_machines_at_once_send_each_notification_once(
    cli: Cli, home: Path, tmp_path: Path, smtp_server: SMTPTestServer, pg_url: str
) -> None:
    _agency(cli, home, smtp_server, pg_url, jobs=80)
    procs = [_check(env) for env in _machines(home, tmp_path, 4)]
    codes = [p.wait(timeout=180) for p in procs]
    assert codes == [0, 0, 0, 0], [p.stderr.read() for p in procs if p.stderr]
    ids = _ids(smtp_server)
    assert max(ids.values()) == 1
    assert len(ids) == 80 * 3 + 3  # the team of three for each job, and missing time


def test_machine_killed_mid_send_and_a_later_run_finishes(
    cli: Cli, home: Path, tmp_path: Path, smtp_server: SMTPTestServer, pg_url: str
) -> None:
    engine = _agency(cli, home, smtp_server, pg_url, jobs=150)
    one, two = _machines(home, tmp_path, 2)
    proc = _check(one)
    deadline = time.monotonic() + 90
    while len(smtp_server.messages) < 60 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(smtp_server.messages)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one()
        stuck = conn.execute(
            sa.select(sa.func.count()).where(messages.c.status == "sending")
        ).scalar_one()
    assert killed_at < total, "the process must die before it sent everything"
    # the dead machine's claims are taken up by another machine after 15 minutes
    with engine.begin() as conn:
        conn.execute(
            messages.update()
            .where(messages.c.status == "sending")
            .values(claimed_at=messages.c.claimed_at - dt.timedelta(minutes=16))
        )
        conn.execute(
            runs.update().values(
                heartbeat_at=runs.c.heartbeat_at - dt.timedelta(minutes=16),
                expires_at=runs.c.expires_at - dt.timedelta(minutes=16),
            )
        )
    later = _check(two)
    assert later.wait(timeout=180) == 0, later.stderr.read() if later.stderr else ""
    ids = _ids(smtp_server)
    with engine.connect() as conn:
        queued = {r for (r,) in conn.execute(sa.select(messages.c.message_id))}
        statuses = {s for (s,) in conn.execute(sa.select(messages.c.status).distinct())}
    assert set(ids) == queued and statuses == {"sent"}
    assert sum(ids.values()) - len(ids) <= stuck
