"""SIGTERM, SIGINT and SIGHUP: stop cleanly, never leave mail claimed or half recorded.

While mail is being delivered (inside ``graceful()``), the first signal only
asks the run to stop: transports take no new message, every outcome already
known is recorded, and what was claimed but not sent goes back to the queue.
Anywhere else — and on a second signal — ``Stopped`` is raised at once; the
database transactions it passes through roll back, so nothing is half done.

Except while a message is in the server's hands without an answer on record
(``shielded()``): stopped there, it could not be known whether the server has
it, and it would go back to the queue and be sent twice. A second signal then
takes effect once those answers are in (each waits at most the transport's
timeout) and on record (for Gmail and Graph the outcome is written inside;
with the database away that write keeps trying, up to RECORD_PATIENCE); no new
message is handed over meanwhile.

Around the step that makes a command's work permanent (``committing()``: a
COMMIT, say) a signal waits until the step is over, so that what the command
says of its work is true. Once the step is over, the work is done: a first
signal then lets the command finish (print what it did) and ends it saying
so; a second one stops it at once, saying so too.

The command exits 128 + the signal's number (143, 130, 129), as shells expect.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(BaseException):
    """A signal stopped the command. A BaseException, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum = signum
        self.detail = detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_lock = threading.Lock()
_requested: int | None = None
_graceful = 0
_shielded = 0  # messages handed to a server whose answer is not on record yet
_held_back: int | None = None  # a second signal that waits for them
_committing = 0  # inside the step that makes the command's work permanent
_done: str | None = None  # what is said of the command's work once that step is over


def _handler(signum: int, _frame: FrameType | None) -> None:
    global _requested, _held_back
    first = _requested is None
    _requested = signum if first else _requested
    if _committing:
        return
    if _done is not None:
        if first:
            return
        raise Stopped(signum, _done)
    if first and _graceful:
        return
    if _shielded:
        _held_back = signum
        return
    raise Stopped(signum)


def install() -> None:
    """Handle the stop signals (main thread only; the console script calls this)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def requested() -> int | None:
    """The signal that asked the command to stop, or None."""
    return _requested


@contextmanager
def graceful() -> Iterator[None]:
    """Inside this block a first signal only sets ``requested()``; the code looks at it."""
    global _graceful
    with _lock:
        _graceful += 1
    try:
        yield
    finally:
        with _lock:
            _graceful -= 1


class _Shield:
    """``shielded()``'s context: a class, not a generator, as it is entered twice for
    every message sent."""

    def __enter__(self) -> None:
        global _shielded
        with _lock:
            _shielded += 1

    def __exit__(self, *_exc: object) -> None:
        global _shielded, _held_back
        with _lock:
            _shielded -= 1
            signum = _held_back if _shielded == 0 else None
            if signum is not None:
                _held_back = None
        if signum is not None:
            raise Stopped(signum)


_SHIELD = _Shield()


def shielded() -> _Shield:
    """Around handing one message to a server until its answer is taken for the record.

    A second signal in here waits until no message is in the server's hands
    without its answer, then stops the command (see the module's text).
    """
    return _SHIELD


@contextmanager
def committing(done: str) -> Iterator[None]:
    """Around the step that makes the command's work permanent (a COMMIT).

    A signal in here waits until the step is over. If it ends well, the
    command's work is done: from then on a first signal (or one that waited)
    lets the command finish, and it ends with ``finished()`` saying ``done``.
    If it fails, a signal that waited stops the command at once (nothing was
    kept).
    """
    global _committing, _done
    with _lock:
        _committing += 1
    try:
        yield
    except BaseException as e:
        with _lock:
            _committing -= 1
        if _requested is not None and not isinstance(e, Stopped):
            raise Stopped(_requested) from e
        raise
    with _lock:
        _committing -= 1
        _done = done


def finished() -> Stopped | None:
    """The stop to end a command with whose work was done (``committing()``) before a
    signal came, or None."""
    if _done is None or _requested is None:
        return None
    return Stopped(_requested, _done)
