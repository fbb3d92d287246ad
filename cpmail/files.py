"""Files written whole or not at all.

The data goes to a temporary file in the target's folder, which is fsync'ed
and then renamed over the target (``os.replace``): a reader sees the old file
or the new one, never half of one. If writing fails, the temporary file is
removed and the target is left as it was.

A target that is there and is no regular file (``/dev/null``, ``/dev/stdout``,
a named pipe) is written into, as a shell's ``>`` would: replaced, the device
or pipe would become a plain file, and a reader waiting on it would get nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO, overload

from cpmail.errors import CpmailError, InputError, Unavailable


@overload
def atomic_open(
    path: Path, *, mode: int, encoding: None = None, newline: None = None
) -> AbstractContextManager[BinaryIO]: ...


@overload
def atomic_open(
    path: Path, *, mode: int, encoding: str, newline: str | None = None
) -> AbstractContextManager[TextIO]: ...


def atomic_open(
    path: Path, *, mode: int, encoding: str | None = None, newline: str | None = None
) -> AbstractContextManager[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the ``with`` block ends.

    The file gets permission ``mode`` exactly, whatever the umask; it is binary
    unless an ``encoding`` is given. The folder must exist: an ``OSError`` from
    making the temporary file (``FileNotFoundError`` when the folder is missing)
    comes out of entering the block, before anything is written.
    """
    return _replacing(path, mode, encoding, newline)


@contextlib.contextmanager
def _replacing(
    path: Path, mode: int, encoding: str | None, newline: str | None
) -> Iterator[IO[Any]]:
    import tempfile  # here: not on the `cpmail --help` path

    try:
        kind = os.stat(path).st_mode  # (through links: /dev/stdout is one)
    except OSError:
        kind = stat.S_IFREG  # not there yet (or not to be looked at): made as a file
    if stat.S_ISCHR(kind) or stat.S_ISFIFO(kind):
        with open(path, "w" if encoding else "wb", encoding=encoding, newline=newline) as f:
            yield f
        return
    # A link is written through: the file it names is replaced, and the link stays.
    path = Path(os.path.realpath(path)) if path.is_symlink() else path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w" if encoding else "wb", encoding=encoding, newline=newline) as f:
            os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# A file that could not be written for its disk's sake, not its name's: exit 3.
_DISK_FAILED = {
    errno.ENOSPC: "the disk is full; free some space and run the command again",
    errno.EDQUOT: "the disk quota is used up; free some space and run the command again",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "input/output error (a failing disk?)",
}


def write_failed(path: Path, e: OSError) -> CpmailError:
    """The error to end with when ``path`` could not be written: the disk's failure
    (full, read-only: exit 3, as for the database) or the name's (exit 2)."""
    said = _DISK_FAILED.get(e.errno or 0)
    if said is not None:
        return Unavailable(f"cannot write {path}: {said}.")
    return InputError(f"cannot write {path}: {e.strerror or type(e).__name__}.")
