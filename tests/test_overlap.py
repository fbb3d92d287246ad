"""Two things at once: a run that wakes after another took its mail over, commands
that change the outbox while a check sends, counters shared between runs.

Real processes against a real aiosmtpd server (tests/smtpserver.py) and real
databases; what the server received and what the database says are compared.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cpmail.settings import Settings
from cpmail.store import connect
from cpmail.store.schema import message_bodies, messages
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_faults import (
    DATE,
    prepare,
    queue_messages,
    received,
    spawn,
    statuses,
    wait_for,
)


def _rows(home: Path) -> list[sa.Row[tuple[int, str, bool]]]:
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    m = messages.c
    kept = sa.exists().where(message_bodies.c.message_id == m.id)  # its text
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(m.id, m.status, kept)).all())
    engine.dispose()
    return rows


def _data_sent(server: SMTPTestServer) -> bool:
    return any(b"\r\n.\r\n" in r for r in list(server.reads))


@pytest.mark.serial
def test_a_run_that_wakes_after_its_mail_was_taken_over_does_not_undo_the_takers_record(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    """Stopped while the server had its message, past the stale limit: another run
    sends that message and records it sent. The first run, woken, learns nothing of
    its own attempt (the server's answer never came): that must not turn the record
    of a sent message back into mail waiting (to be sent again, with no text)."""
    prepare(
        cli,
        smtp_server,
        **{"outbox.stale_claim_minutes": "0.05", "mail.smtp.timeout": "2"},  # 3 s
    )
    ids = queue_messages(home, 1)
    smtp_server.stall_data = 1  # the first message's answer never comes
    first = spawn(home)
    try:
        wait_for(lambda: _data_sent(smtp_server))
        first.send_signal(signal.SIGSTOP)
        time.sleep(4)  # past the stale limit, and past the first run's timeout
        r = cli("check", "--date", DATE)
        assert r.exit_code == 0, r.output
        assert set(received(smtp_server)) == ids
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=60)
    assert "internal error" not in err, err
    assert statuses(home) == {"sent": 1}, (_rows(home), out + err)
    r = cli("outbox", "--json")
    assert r.exit_code == 0 and r.stdout.strip() == "[]", r.output


@pytest.mark.serial
def test_runs_side_by_side_share_the_accounts_daily_limit(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, backend: str
) -> None:
    """Two checks at once (cron runs that overlap, or two machines) send no more from
    one account in a day than ``mail.pace.per_day`` between them."""
    db = backend
    prepare(cli, smtp_server, db=db, **{"mail.pace.per_day": "20"})
    queue_messages(home, 30)
    smtp_server.accept_delay = 0.5
    runs = [spawn(home)]
    wait_for(lambda: len(smtp_server.messages) >= 2)
    queue_messages(home, 30)  # new mail, which a second run finds while the first sends
    runs.append(spawn(home))
    for p in runs:
        out, err = p.communicate(timeout=120)
        assert "internal error" not in err, err
        assert p.returncode == 1, out + err
    # (at most what the other run had in the server's hands at the moment, unseen: one
    # message per connection, 3)
    sent = len(smtp_server.messages)
    assert 20 <= sent <= 23, sent
    s = statuses(home)
    assert s["sent"] == sent and s["deferred"] == 60 - sent and s["sending"] == 0, s


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["drop", "retry"])
def test_a_message_claimed_while_drop_or_retry_waits_for_it_is_named(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, pg_url: str, command: str
) -> None:
    """A run claims a message while `outbox drop`/`retry` waits for its row: the command
    says what became of it ("a run has it claimed"), never "Dropped 0" and nothing else."""
    import threading

    prepare(cli, smtp_server, db=pg_url)
    queue_messages(home, 1)
    engine = connect(Settings.load(home).db_url, where="test")
    m = messages.c
    with engine.begin() as conn:
        [mid] = conn.execute(sa.select(m.id)).scalars()
        conn.execute(messages.update().values(status="deferred"))
    said: dict[str, Any] = {}
    with engine.connect() as run:  # a run about to claim it, holding its row
        tx = run.begin()
        run.execute(sa.select(m.id).where(m.id == mid).with_for_update())
        worker = threading.Thread(
            target=lambda: said.update(r=cli("outbox", command, str(mid))), daemon=True
        )
        worker.start()
        time.sleep(1.0)  # the command now waits for the row
        run.execute(messages.update().where(m.id == mid).values(status="sending"))
        tx.commit()
    worker.join(30)
    engine.dispose()
    r = said["r"]
    assert r.exit_code == 0, r.output
    assert f"Message {mid} was not" in r.output and "a run has it claimed" in r.output, r.output
    assert [row.status for row in _rows(home)] == ["sending"]
