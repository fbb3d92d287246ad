"""Several `cpmail check` processes at once on one SQLite home send each notification once."""

from __future__ import annotations

import json
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
    # and 20 for a client without a team: notifications that reach nobody (skipped)
    insert(engine, "clients", [dict(id="C9", name="Lone Client", billing_email=None)])
    insert(
        engine,
        "jobs",
        [
            dict(id=f"J{i}", client_id="C9", title=f"Job {i}", opened_at=at(D, 9))
            for i in range(400, 420)
        ],
    )
    env = {**os.environ, "CPMAIL_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cpmail", "check", "--date", D.isoformat(), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0, 0], [err for _, err in outs]
    ids = Counter(
        message_from_bytes(m.data, policy=policy.default)["Message-ID"]
        for m in smtp_server.messages
    )
    assert ids and max(ids.values()) == 1
    # 60 new jobs to a team of 3, missing time for AE, CR (+ CR's supervisor AE)
    assert len(ids) == 60 * 3 + 3
    # Each notification is counted by the one run that recorded it: found once, and a
    # skipped one skipped once, however the runs' finding and queueing interleaved.
    totals = [json.loads(out)["totals"] for out, _ in outs]
    assert sum(t["found"] for t in totals) == 60 + 20 + 2, totals
    assert sum(t["skipped"] for t in totals) == 20, totals


def test_a_live_runs_claims_are_judged_by_its_own_limit_not_the_readers(
    cli: Cli, home: Path
) -> None:
    """Two homes on one database, 15 minutes and 3 seconds of stale_claim_minutes.

    The short one must not take up the long one's claims while it lives: that
    sent each of them twice.
    """
    import time

    from cpmail.outbox import claim, lease, new_run_id, stale_after, waiting
    from tests.test_faults import queue_messages

    assert cli("init").exit_code == 0
    queue_messages(home, 5)
    patient = Settings.load(home)  # the default: 15 minutes
    hasty = Settings.load(home)
    hasty.set("outbox.stale_claim_minutes", "0.05")
    engine = connect(patient.db_url, where="test")
    run = new_run_id()
    with lease(engine, patient, run, "deliver"):
        mine = claim(engine, run_id=run, stale=stale_after(patient))
        assert len(mine) == 5
        time.sleep(3.5)  # past the hasty home's limit, well within the run's own
        other = claim(engine, run_id=new_run_id(), stale=stale_after(hasty))
        assert other == []
        assert waiting(engine, hasty).orphaned == 0
    engine.dispose()


def test_mail_held_by_a_stopped_run_is_taken_up_when_its_own_claim_lapses(
    cli: Cli, home: Path
) -> None:
    """As `check` and `status` say: its last heartbeat plus its limit, not its first claim."""
    import datetime as dt

    from cpmail.outbox import claim, new_run_id, waiting
    from cpmail.store import utcnow
    from cpmail.store.schema import messages, runs
    from tests.test_faults import queue_messages

    assert cli("init").exit_code == 0
    queue_messages(home, 2)
    settings = Settings.load(home)  # 15 minutes
    engine = connect(settings.db_url, where="test")
    run, now = new_run_id(), utcnow()
    beat = now - dt.timedelta(minutes=5)  # it sent for a while after its claims, then died
    with engine.begin() as conn:
        conn.execute(
            runs.insert().values(
                id=run,
                command="check",
                host="another-box",
                pid=1,
                started_at=now - dt.timedelta(minutes=40),
                heartbeat_at=beat,
                expires_at=beat + dt.timedelta(minutes=15),
            )
        )
    assert len(claim(engine, run_id=run)) == 2
    with engine.begin() as conn:
        conn.execute(messages.update().values(claimed_at=now - dt.timedelta(minutes=40)))
    w = waiting(engine, settings)
    engine.dispose()
    assert w.orphaned == 2
    assert w.orphans_free_at is not None
    assert abs((w.orphans_free_at - (beat + dt.timedelta(minutes=15))).total_seconds()) < 1


def test_a_claim_takes_the_oldest_due_messages_of_every_status_in_order(
    cli: Cli, home: Path, backend: str
) -> None:
    """Queued, deferred and abandoned mail mixed at random, claimed a few at a time.

    Each claim must take exactly the oldest messages that are due (whatever
    their status; not those waiting, failed, sent, held by a live run or past
    their time), for the account asked, and claim each once.
    """
    import datetime as dt
    import random

    import sqlalchemy as sa

    from cpmail.outbox import claim, lease, new_run_id
    from cpmail.store import utcnow
    from cpmail.store.schema import messages, runs
    from tests.test_faults import queue_messages

    if backend:
        assert cli("config", "set", "database.url", backend).exit_code == 0
    assert cli("init").exit_code == 0
    queue_messages(home, 240)
    settings = Settings.load(home)
    engine = connect(settings.db_url, where="test")
    rnd = random.Random(7)
    now = utcnow()
    hour = dt.timedelta(hours=1)
    dead, alive = new_run_id(), new_run_id()
    with engine.begin() as conn:
        for run, beat in ((dead, now - 5 * hour), (alive, now)):
            conn.execute(
                runs.insert().values(
                    id=run,
                    command="check",
                    host="elsewhere",
                    pid=1,
                    started_at=beat,
                    heartbeat_at=beat,
                    expires_at=beat + dt.timedelta(minutes=15),
                )
            )
        ids = list(conn.execute(sa.select(messages.c.id).order_by(messages.c.id)).scalars())
        due: dict[int, str] = {}
        for i in ids:
            kind = rnd.choice(
                [
                    "queued",
                    "queued late",
                    "deferred due",
                    "deferred later",
                    "abandoned",
                    "held",
                    "sent",
                    "failed",
                    "past its time",
                ]
            )
            account = rnd.choice(["JD", "MK"])
            values: dict[str, object] = {"account": account, "status": kind.split()[0]}
            if kind == "queued late":  # given back once: a time is set but does not matter
                values.update(status="queued", next_attempt_at=now + hour)
            elif kind == "deferred due":
                values["next_attempt_at"] = now - hour
            elif kind == "deferred later":
                values.update(status="deferred", next_attempt_at=now + hour)
            elif kind in ("abandoned", "held"):
                values.update(status="sending", claimed_at=now - 5 * hour)
                values["claimed_by"] = dead if kind == "abandoned" else alive
            elif kind == "past its time":
                values.update(status="queued", not_after=now - hour)
            conn.execute(messages.update().where(messages.c.id == i).values(**values))
            if kind in ("queued", "queued late", "deferred due", "abandoned"):
                due[i] = account
    mine = new_run_id()
    taken: list[int] = []
    with lease(engine, settings, mine, "deliver"):
        for only_of in ("MK", None):
            expected = sorted(i for i, a in due.items() if only_of is None or a == only_of)
            expected = [i for i in expected if i not in taken]
            while True:
                batch = [e.id for e in claim(engine, run_id=mine, limit=7, account=only_of)]
                assert batch == expected[: len(batch)] and (batch or not expected)
                if not batch:
                    break
                expected = expected[len(batch) :]
                taken += batch
        only = sorted(set(ids) - set(due))[:5] + sorted(due)[:1]
        assert claim(engine, run_id=new_run_id(), ids=only) == []  # taken, or not due
    engine.dispose()
    assert sorted(taken) == sorted(due) and len(set(taken)) == len(taken)
    assert len(due) > 60  # the mixture holds enough of each kind to mean something


def test_a_pid_alive_on_this_machine_keeps_claims_only_for_its_own_run(
    cli: Cli, home: Path
) -> None:
    """A living process keeps its run's claims whatever the clocks say, but not: a run of
    this process's pid that is not its own (a container's pid 1 every time), a zombie, a
    process that started after the run (its pid reused), or one an hour past its expiry."""
    import datetime as dt
    import socket
    import time

    import sqlalchemy as sa

    from cpmail.outbox import claim, new_run_id
    from cpmail.store import utcnow
    from cpmail.store.schema import messages, runs
    from tests.test_faults import queue_messages

    assert cli("init").exit_code == 0
    queue_messages(home, 4)
    engine = connect(Settings.load(home).db_url, where="test")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; never waited for
    time.sleep(0.5)
    now = utcnow()
    long_ago = now - dt.timedelta(hours=30)
    hung = subprocess.Popen(["sleep", "60"])  # alive, but its run went silent 3 hours ago
    later = subprocess.Popen(["sleep", "60"])  # started after its "run" began
    try:
        holders = [
            (os.getpid(), long_ago, long_ago),
            (zombie.pid, long_ago, long_ago),
            (later.pid, long_ago, long_ago),
            (hung.pid, now - dt.timedelta(seconds=1), now - dt.timedelta(hours=3)),
        ]
        ids = sorted(queue_ids(engine))
        with engine.begin() as conn:
            for (pid, started, beat), mid in zip(holders, ids, strict=True):
                run = new_run_id()
                conn.execute(
                    runs.insert().values(
                        id=run,
                        command="check",
                        host=socket.gethostname()[:200],
                        pid=pid,
                        started_at=started,
                        heartbeat_at=beat,
                        expires_at=beat + dt.timedelta(minutes=15),
                    )
                )
                conn.execute(
                    messages.update()
                    .where(messages.c.id == mid)
                    .values(status="sending", claimed_by=run, claimed_at=beat)
                )
        taken = [e.id for e in claim(engine, run_id=new_run_id())]
        assert taken == ids, (taken, ids)
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one() == 4
    finally:
        for p in (hung, later):
            p.kill()
            p.wait()
        zombie.wait()
        engine.dispose()


def queue_ids(engine: object) -> list[int]:
    import sqlalchemy as sa

    from cpmail.store.schema import messages

    assert isinstance(engine, sa.Engine)
    with engine.connect() as conn:
        return list(conn.execute(sa.select(messages.c.id)).scalars())


def test_claims_at_once_take_each_message_once_and_no_more_than_asked(
    cli: Cli, home: Path, backend: str
) -> None:
    """Six claimers race over one outbox (each its own connection, as runs on several
    machines are): every message is claimed by exactly one, no claim holds more than
    its limit, and each claim's rows come in order. (How the 600 are shared out is
    up to the database: SQLite's write lock may let one claimer take them all.)"""
    import threading

    from cpmail.outbox import claim, new_run_id
    from tests.test_faults import queue_messages

    if backend:
        assert cli("config", "set", "database.url", backend).exit_code == 0
    assert cli("init").exit_code == 0
    queue_messages(home, 600)
    settings = Settings.load(home)
    engines = [connect(settings.db_url, where="test") for _ in range(6)]
    taken: list[list[int]] = [[] for _ in engines]
    sizes: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def claimer(n: int) -> None:
        try:
            start.wait()
            while batch := claim(engines[n], run_id=new_run_id(), limit=25):
                ids = [e.id for e in batch]
                assert ids == sorted(ids)
                sizes.append(len(ids))
                taken[n].extend(ids)
        except BaseException as e:  # seen by the test, not lost in the thread
            failures.append(e)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for e in engines:
        e.dispose()
    assert not failures, failures
    everything = [i for ids in taken for i in ids]
    assert len(everything) == 600 and len(set(everything)) == 600
    assert max(sizes) <= 25
