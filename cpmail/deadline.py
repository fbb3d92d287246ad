"""A call that must end within a time: run on a thread of its own, given up when it does not.

For what a timeout of its own cannot bound: an HTTP answer trickled a byte at
a time (each read within its timeout), an alert service that accepts the
connection and never answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


def within(seconds: float, call: Callable[[], T], *, then: Callable[[], None] | None = None) -> T:
    """``call()`` on a thread of its own: its result, or its exception; TimeoutError when it
    has not ended within ``seconds``. It is then left to end by itself, and ``then`` runs
    on its thread when it does (to close what it used)."""
    lock = threading.Lock()
    got: list[Any] = []
    given_up = False
    done = threading.Event()

    def run() -> None:
        try:
            got.append(call())
        except BaseException as e:  # handed to the waiting thread
            got.append(e)
        with lock:
            done.set()
            if given_up and then is not None:
                then()

    threading.Thread(target=run, name="cpmail-within", daemon=True).start()
    if not done.wait(max(0.0, seconds)):
        with lock:
            if not done.is_set():  # not just now: give it up
                given_up = True
                raise TimeoutError
    result = got[0]
    if isinstance(result, BaseException):
        raise result
    return cast(T, result)
