"""cpmail.parallel: the second half in a forked child, the same results as on one core."""

from __future__ import annotations

import datetime as dt
import os
import signal
from pathlib import Path

import pytest

from cpmail.parallel import halves
from cpmail.settings import Settings
from cpmail.store import connect
from tests.agency import D, insert
from tests.conftest import Cli
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp

PARENT = os.getpid()


def square_and_where(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_the_child_computes_the_second_half_and_the_order_is_kept() -> None:
    results = halves(square_and_where, list(range(100)), min_items=10)

    assert [r[0] for r in results] == [x * x for x in range(100)]
    first, second = {r[1] for r in results[:50]}, {r[1] for r in results[50:]}
    assert first == {os.getpid()}
    assert len(second) == 1 and second != first  # another process did these


def test_few_items_stay_in_this_process() -> None:
    results = halves(square_and_where, list(range(5)), min_items=10)

    assert results == [(x * x, os.getpid()) for x in range(5)]


def fails_at_70(x: int) -> int:
    if x == 70:
        raise ValueError(f"item {x} is bad")
    return x


def test_an_error_in_the_childs_half_is_raised_here_as_on_one_core() -> None:
    with pytest.raises(ValueError, match="item 70 is bad"):
        halves(fails_at_70, list(range(100)), min_items=10)


def test_an_error_in_this_processs_half_stops_the_child_and_is_raised() -> None:
    with pytest.raises(ValueError, match="item 70 is bad"):
        halves(fails_at_70, list(range(60, 200)), min_items=10)


def dies_in_the_child(x: int) -> tuple[int, int]:
    if os.getpid() != PARENT:
        os.kill(os.getpid(), signal.SIGKILL)
    return x, os.getpid()


def test_a_child_that_dies_leaves_its_half_to_this_process() -> None:
    results = halves(dies_in_the_child, list(range(40)), min_items=10)

    assert results == [(x, PARENT) for x in range(40)]


def test_a_check_big_enough_to_use_both_cores_sends_each_message_once(
    cli: Cli, home: Path, smtp_server: SMTPTestServer
) -> None:
    setup_smtp(cli, smtp_server)
    engine = connect(Settings.load(home).db_url, where="test")
    n = 450  # above cpmail.parallel.MIN_ITEMS: rendered and composed on two processes
    insert(engine, "clients", [dict(id="C9", name="Acme")])
    insert(
        engine,
        "jobs",
        [dict(id="J9", client_id="C9", title="Catalog", opened_at=dt.datetime(2026, 1, 5, 9))],
    )
    insert(
        engine,
        "staff",
        [
            dict(id=f"P{i:03d}", name=f"Person {i:03d}", work_email=f"p{i:03d}@agency.test")
            for i in range(n)
        ],
    )
    insert(
        engine,
        "tasks",
        [
            dict(
                id=f"T{i:03d}",
                job_id="J9",
                name=f"Page {i:03d}",
                assignee_id=f"P{i:03d}",
                due_date=D,
            )
            for i in range(n)
        ],
    )

    r = cli("check", "--date", D.isoformat(), "--only", "task-due-today")

    assert r.exit_code == 0, r.output
    got = {m.rcpt_tos: m.data for m in smtp_server.messages}
    assert len(smtp_server.messages) == len(got) == n
    for i in (0, n // 2 - 1, n // 2, n - 1):
        data = got[(f"p{i:03d}@agency.test",)]
        assert f"Page {i:03d}".encode() in data
        assert f"Person {i:03d}".encode() in data
    ids = [m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in smtp_server.messages]
    assert len(set(ids)) == n
