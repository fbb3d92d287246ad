"""Database and file-system failures as one sentence each: what failed and what to do.

Every command's errors pass through ``explain`` (cpmail/cli/app.py). A failure
of the world outside cpmail — the database down, locked past the wait,
read-only, full or damaged, a disk full — becomes ``Unavailable`` (exit 3).
Only what is left is a bug in cpmail (exit 70).
"""

from __future__ import annotations

import errno
import re

from cpmail.errors import ConfigError, CpmailError, Unavailable

# Phrases the drivers use, first match wins: (pattern, what failed, what to do).
_SQLITE = (
    (
        r"database is locked|database table is locked",
        "is locked by another process past the wait (database.busy_seconds)",
        "try again when the other cpmail command (a long `data import`, say) has finished",
    ),
    (
        r"readonly database|read-only file system|attempt to write a readonly",
        "cannot be written (it or its folder is read-only)",
        "check the permissions of the file and its folder (the cpmail home)",
    ),
    (
        r"unable to open database file",
        "cannot be opened",
        "check that the file and its folder (the cpmail home) exist and are readable "
        "and writable by this user",
    ),
    (
        r"database or disk is full|disk i/o error|no space left",
        "cannot be written: the disk is full (or failing)",
        "free some space and run the command again; mail the server accepted is kept",
    ),
    (
        r"file is not a database|malformed|file is encrypted",
        "is damaged (not a readable SQLite database)",
        "restore it from a backup, or move it aside and run `cpmail init` to start empty",
    ),
)
_SERVER = (
    (
        r"password authentication failed|authentication failed|access denied|"
        r"role \S+ does not exist|no pg_hba.conf entry",
        "refused the login",
        "check the user and password in database.url",
    ),
    (
        r"database \S+ does not exist|unknown database",
        "names a database that does not exist on the server",
        "create it (`createdb NAME`) or correct the database name in database.url",
    ),
    (
        r"connection refused|could not connect|connection timed out|"
        r"name or service not known|could not translate host name|no route to host",
        "cannot be reached",
        "check that the database server is running and that database.url names its host and port",
    ),
    (
        r"server closed the connection|terminating connection|connection .* (lost|closed)|"
        r"ssl syscall|eof detected|the database system is (starting up|shutting down)|"
        r"cannot connect now",
        "was lost or restarted while cpmail was using it",
        "run the command again once it is back; nothing that was sent is sent twice",
    ),
    (
        r"no space left|disk full|could not extend file",
        "has no disk space left",
        "free space on the database server and run the command again",
    ),
    (
        r"read-only|readonly|recovery is in progress",
        "is read-only (a standby, or in recovery)",
        "point database.url at the primary server",
    ),
)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0].strip() if text else type(orig).__name__


# What libpq says, before it connects, of an option after the '?' of database.url.
_BAD_OPTION = re.compile(
    r'invalid \w+ value: "|invalid integer value "[^"]*" for connection option|'
    r'invalid connection option "|bad value for \w+: |could not parse network address "|'
    r"invalid port number: "
)


def explain_database(exc: BaseException, where: str, *, sqlite: bool) -> CpmailError | None:
    """Turn a driver's OperationalError (or similar) into one sentence; None if unknown.

    An option of database.url the driver does not take is a setting to fix (exit 2).
    """
    said = _first_line(exc)
    low = said.lower()
    if not sqlite and _BAD_OPTION.search(said):
        return ConfigError(
            f"database.url has an option the database driver does not take ({_shown(said)}); "
            "correct it after the '?' of database.url and try again."
        )
    if sqlite and re.search(r"readonly|read-only|unable to open", low):
        folder_said = _folder_problem(where)
        if folder_said:
            return Unavailable(f"the database {where} {folder_said} ({_shown(said)}).")
    table = _SQLITE if sqlite else _SERVER
    for pattern, what, todo in table:
        if re.search(pattern, low):
            return Unavailable(f"the database {where} {what} ({_shown(said)}); {todo}.")
    name = type(getattr(exc, "orig", None) or exc).__name__
    if name in ("OperationalError", "InterfaceError", "DatabaseError", "InternalError"):
        return Unavailable(
            f"the database {where} failed ({_shown(said)}); check that it is reachable and "
            "has space, then run the command again."
        )
    return None


def _folder_problem(where: str) -> str | None:
    """Why an SQLite file cannot be opened or written, read off its folder."""
    import os
    from pathlib import Path

    path = Path(where)
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return (
                f"cannot be written: {folder} is on a read-only file system; mount it "
                "read-write, or point --home at a writable folder"
            )
    except OSError:
        return f"cannot be opened: its folder {folder} cannot be read"
    for target in (folder, path):
        if target.exists() and not os.access(target, os.W_OK):
            return (
                f"cannot be written: {target} is not writable by this user; fix its owner "
                "or mode (cpmail writes its database and folder)"
            )
    return None


def explain_os_error(exc: OSError) -> Unavailable | None:
    """A full, read-only or forbidden file system, naming the file."""
    path = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Unavailable(
            f"cannot write {path}: the disk is full; free some space and run the command "
            "again (mail the server accepted is kept)."
        )
    if exc.errno == errno.EROFS:
        return Unavailable(f"cannot write {path}: the file system is read-only.")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Unavailable(
            f"cannot use {path}: permission denied; check its owner and mode "
            "(cpmail runs as this user)."
        )
    if exc.errno == errno.EIO:
        return Unavailable(f"cannot use {path}: input/output error (a failing disk?).")
    return None


def explain(exc: BaseException, *, where: str, sqlite: bool) -> CpmailError | None:
    """The sentence for ``exc`` when it is a failure outside cpmail; None for a bug."""
    if isinstance(exc, CpmailError):
        return exc
    module = type(exc).__module__
    if module.startswith(("sqlalchemy", "sqlite3", "psycopg", "pymysql")):
        return explain_database(exc, where, sqlite=sqlite)
    if isinstance(exc, OSError):
        return explain_os_error(exc)
    return None


def _shown(text: str) -> str:
    # Driver messages may quote a connection string: never show a password.
    from cpmail.settings import redact

    return redact(text)[:300]
