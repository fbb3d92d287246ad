"""Use the second core: the latter half of a long, pure computation in a forked child.

``cpmail check`` renders and composes every message before it queues the
first (a template that fails leaves nothing queued), and that is the largest
part of a big run's work in Python, on one core. ``halves(fn, items)`` gives
the second half of ``items`` to a child made with ``fork`` (which inherits the
rendered templates and settings, so it starts at once) while this process does
the first half, and returns the results in order, as ``[fn(x) for x in items]``
would.

``fn`` must not write anything (files, database, the network): the child only
computes and hands its results back, pickled, in a file in memory, then ends with
``os._exit`` so nothing of the parent (database connections, buffered output)
is closed or flushed twice. Whatever goes wrong in the child — an exception,
a signal, results that do not arrive — this process computes that half itself,
so an error is raised here, as it would be without the child, with its own
traceback.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import BinaryIO, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Below this many items a fork (a few milliseconds) saves nothing.
MIN_ITEMS = 400


def halves(fn: Callable[[T], R], items: Sequence[T], *, min_items: int = MIN_ITEMS) -> list[R]:
    """``[fn(x) for x in items]``, the second half computed in a forked child when worth it."""
    if len(items) < min_items or not _can_fork():
        return [fn(x) for x in items]
    cut = len(items) // 2
    # The child's results go to a file in memory, not a pipe: a pipe holds 64 kB,
    # so the child would wait for this process to read, which it does only once
    # its own half is done.
    with _spool() as spool:
        # Objects alive now are left out of garbage collection in both processes:
        # the child's collector would otherwise touch, and so copy, every page it shares.
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the child
            _child(fn, items[cut:], spool.fileno())
        gc.unfreeze()
        try:
            first = [fn(x) for x in items[:cut]]
        except BaseException:
            _end(pid, stop=True)
            raise
        code = _end(pid)
        spool.seek(0)
        data = spool.read()
    if code == 0:
        try:
            second: list[R] = pickle.loads(data)
            if len(second) == len(items) - cut:
                return first + second
        except Exception:
            pass  # the half is computed here instead
    return first + [fn(x) for x in items[cut:]]


def _can_fork() -> bool:
    return hasattr(os, "fork") and (os.cpu_count() or 1) > 1 and sys.platform != "darwin"


def _spool() -> BinaryIO:
    """A file in memory (Linux), else an unnamed temporary file."""
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("cpmail-half"), "w+b")
    return tempfile.TemporaryFile()


def _child(fn: Callable[[T], R], items: Sequence[T], fd: int) -> None:
    code = 1
    gc.disable()  # short-lived: what it allocates goes when it ends
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        data = pickle.dumps([fn(x) for x in items], protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        code = 0
    except BaseException:
        pass  # the parent computes this half itself
    finally:
        os._exit(code)


def _end(pid: int, *, stop: bool = False) -> int:
    """Wait for the child to end (stopping it first with ``stop``); its exit code."""
    if stop:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
