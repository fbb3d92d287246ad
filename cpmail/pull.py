"""`cpmail data pull`: read the agency system's own database and import what its queries give.

``[source] url`` names the agency system's database (any SQLAlchemy URL);
``[source.tables.<table>] query`` gives, per agency table, a SELECT whose
columns carry cpmail's column names (SPEC §6), and ``replace = true`` makes
its rows the whole table. Every configured table is read in foreign-key
order, inside one read-only snapshot of the source where the database has
one, and imported through the same checks as ``data import``, all in one
transaction of cpmail's database. Rows are streamed (a server-side cursor on
PostgreSQL and MySQL), so memory does not grow with the size of a table.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from cpmail import dataio
from cpmail.errors import ConfigError, Unavailable
from cpmail.settings import MASK, SOURCE_TABLES, Settings, redact, redact_url

# Rows fetched from the source at a time.
FETCH_ROWS = dataio.BATCH_ROWS
# Drivers that cpmail's extras install, by the URL's dialect.
DRIVER_HINTS = {
    "mysql": "pip install 'cpmail[mysql]' (PyMySQL), and use mysql+pymysql://",
    "mariadb": "pip install 'cpmail[mysql]' (PyMySQL), and use mariadb+pymysql://",
    "mssql": "install pyodbc and Microsoft's ODBC driver (untested with cpmail)",
    "oracle": "pip install oracledb (untested with cpmail)",
}


class SourceUnavailable(Unavailable):
    """The agency system's database could not be reached or read (exit 3)."""


def configured(settings: Settings) -> list[tuple[str, str, bool]]:
    """The tables ``data pull`` reads: (table, query, replace), in foreign-key order."""
    out = []
    for name in SOURCE_TABLES:
        query = str(settings.get(f"source.tables.{name}.query")).strip()
        if query:
            out.append((name, query, bool(settings.get(f"source.tables.{name}.replace"))))
    return out


def pull(
    engine: sa.Engine,
    settings: Settings,
    *,
    dry_run: bool = False,
    changed_at: dt.datetime | None = None,
    done: str | None = None,
) -> list[dataio.ImportResult]:
    """Import every configured table from the source, in one transaction; see the module doc.

    Raise ConfigError when nothing is configured or a query is refused,
    InputError (nothing changed) for a bad row, SourceUnavailable when the
    source cannot be reached or fails while it is read.
    """
    url = settings["source.url"].strip()
    if not url:
        raise ConfigError(
            "source.url is not set: give the agency system's database, e.g. "
            "`cpmail config set source.url postgresql+psycopg://reader@agency-db/agency`."
        )
    tables = configured(settings)
    if not tables:
        raise ConfigError(
            "no table to pull: give at least one query, e.g. `cpmail config set "
            'source.tables.jobs.query "SELECT job_no AS id, … FROM …"` (see docs/data.md).'
        )
    source = _source_engine(url)
    shown = redact_url(url)
    try:
        try:
            conn = source.connect()
        except sa.exc.DBAPIError as e:
            raise _unavailable(url, shown, e, "cannot connect to") from None
        except (sa.exc.ArgumentError, TypeError, ValueError) as e:
            # the dialect or the driver refused an option after '?' (a port that is no
            # number, a keyword the driver does not take) before it tried to connect
            raise _bad_option(url, str(e)) from None
        with conn:
            streaming = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS)
            opened: list[Iterator[Any]] = []  # closed before the connection, however it ends
            sources = [
                dataio.ImportSource(
                    table=dataio.get_table(name),
                    records=_records_of(streaming, url, shown, name, query, opened),
                    source=f"source.tables.{name}.query",
                    unit="row",
                    replace=replace,
                    origin="query",
                    gone="is no longer given by the query",
                    once=True,
                )
                for name, query, replace in tables
            ]
            try:
                return dataio.import_sources(
                    engine, settings, sources, changed_at=changed_at, dry_run=dry_run, done=done
                )
            finally:
                for records in opened:  # a bad row ends the import mid-query
                    close = getattr(records, "close", None)
                    if close is not None:
                        close()
                _end_read(conn)
    finally:
        source.dispose()


def _end_read(conn: sa.Connection) -> None:
    """End the source's read transaction; a source gone by now has nothing left to lose."""
    try:
        if conn.in_transaction():
            conn.rollback()
    except sa.exc.DBAPIError:
        conn.invalidate()


def _records_of(
    conn: sa.Connection,
    url: str,
    shown: str,
    table: str,
    query: str,
    opened: list[Iterator[Any]],
) -> Any:  # Callable[[], Iterator[_Record]]; the record type is private to dataio
    def records() -> Iterator[tuple[int, tuple[str, ...], Any]]:
        it = _query_records(conn, url, shown, table, query)
        opened.append(it)
        return it

    return records


def _query_records(
    conn: sa.Connection, url: str, shown: str, table: str, query: str
) -> Iterator[tuple[int, tuple[str, ...], Any]]:
    """Run one table's query and yield its rows as (row number, column names, values)."""
    key = f"source.tables.{table}.query"
    first = _FIRST_WORD.match(query)
    if first is None or first.group(1).upper() not in ("SELECT", "WITH", "VALUES", "TABLE"):
        raise ConfigError(f"{key}: give a SELECT; a pull only reads the agency system's database.")
    try:
        result = conn.exec_driver_sql(_escape_percent(conn, query))
    except sa.exc.DBAPIError as e:
        if _is_down(e):
            raise _unavailable(url, shown, e, "lost the connection to") from None
        if isinstance(e, sa.exc.DataError):  # a driver reads the first rows at once
            raise ConfigError(f"{key}: {_unreadable(url, e)}") from None
        raise ConfigError(
            f"{key}: the agency system's database refused the query "
            f"({_hide(url, _first_line(e.orig))}); correct it and try again."
        ) from None
    if not result.returns_rows:
        raise ConfigError(f"{key}: the query returns no rows; give a SELECT.")
    keys = result.keys()
    names = tuple(str(k).lower() for k in keys)
    # The names alone first, as a CSV file's header: they are checked even when no row comes
    # (an empty result with a misnamed key column would otherwise empty a replaced table).
    yield 0, names, ()
    n = 0
    try:
        for partition in result.partitions(FETCH_ROWS):
            for row in partition:
                n += 1
                yield n, names, row
    except sa.exc.DBAPIError as e:
        if _is_down(e):
            raise _unavailable(url, shown, e, "lost the connection to") from None
        if isinstance(e, sa.exc.DataError):  # rows come in batches: not this row exactly
            raise ConfigError(f"{key}, after row {n}: {_unreadable(url, e)}") from None
        raise ConfigError(
            f"{key}, after row {n}: the agency system's database failed to give the rest "
            f"({_hide(url, _first_line(e.orig))})."
        ) from None
    finally:
        result.close()


def _unreadable(url: str, e: sa.exc.DBAPIError) -> str:
    return (
        f"a value the query gives cannot be read ({_hide(url, _first_line(e.orig))}); "
        "convert it in the query (a date of 'infinity', say, to NULL) and try again."
    )


def _escape_percent(conn: sa.Connection, query: str) -> str:
    """Drivers with the ``format`` paramstyle read ``%`` as a placeholder: double it."""
    if conn.dialect.paramstyle in ("format", "pyformat"):
        return query.replace("%", "%%")
    return query


def _source_engine(url: str) -> sa.Engine:
    """An engine for the source; an SQLite file is opened read-only and must exist."""
    try:
        u = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(
            "source.url is not a database URL such as postgresql+psycopg://user@host/dbname "
            "(see docs/data.md); check its port and punctuation."
        ) from None
    if u.port is not None and not 1 <= u.port <= 65535:
        raise ConfigError(f"source.url: the port {u.port} is not a port (1 to 65535).")
    backend = u.get_backend_name()
    if backend == "sqlite":
        import sqlite3
        from pathlib import Path
        from urllib.parse import quote

        path = u.database or ""
        if not path or path == ":memory:":
            raise ConfigError(
                "source.url names no SQLite file; give its full path, as in "
                "sqlite:////full/path/to/agency.db."
            )
        if Path(path).is_dir():
            raise ConfigError(
                f"source.url names {path}, which is a folder; give the agency system's "
                "SQLite database file in it, as in sqlite:////full/path/to/agency.db."
            )
        if Path(path).exists() and not Path(path).is_file():
            raise ConfigError(
                f"source.url names {path}, which is not a file; give the agency system's "
                "SQLite database file, as in sqlite:////full/path/to/agency.db."
            )
        if not Path(path).is_file():
            raise SourceUnavailable(
                f"the agency system's database {path} does not exist; "
                "check source.url. Nothing was changed."
            )
        uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
        # isolation_level=None: the driver begins nothing itself (it never does before a
        # SELECT), and BEGIN is said when SQLAlchemy begins: every table's query is read in
        # one transaction, one snapshot of the file, as REPEATABLE READ does elsewhere.
        engine = sa.create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(
                uri, uri=True, check_same_thread=False, isolation_level=None
            ),
        )
        sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        return engine
    options: dict[str, Any] = {}
    if backend in ("postgresql", "mysql", "mariadb"):
        # One snapshot for every table of the pull: rows that refer to each other agree.
        options["isolation_level"] = "REPEATABLE READ"
    try:
        return sa.create_engine(u, **options)
    except sa.exc.NoSuchModuleError:
        raise ConfigError(
            f"source.url: cpmail does not know the database kind {u.drivername!r}; "
            "see docs/data.md for the URLs of the databases it reads."
        ) from None
    except ImportError as e:
        hint = DRIVER_HINTS.get(backend, f"install the Python driver {e.name or ''}".strip())
        raise ConfigError(
            f"source.url: the driver for {u.drivername} is not installed; {hint}."
        ) from None
    except (sa.exc.ArgumentError, TypeError, ValueError) as e:  # an option after '?'
        raise _bad_option(url, str(e)) from None


# SQLite says OperationalError for a bad query too; these are the ones about the file.
# The query's first word, after any comments.
_FIRST_WORD = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*(\w+)", re.S)
_SQLITE_DOWN = re.compile(
    r"unable to open|disk i/o|locked|not a database|malformed|readonly|no such file", re.I
)


def _is_down(e: sa.exc.DBAPIError) -> bool:
    """True when the source failed (unreachable, gone), not the query."""
    if e.connection_invalidated:
        return True
    if not isinstance(e, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    if type(e.orig).__name__ == "QueryCanceled":  # a statement_timeout: the query, not the source
        return False
    if type(e.orig).__module__.startswith("sqlite3"):
        return bool(_SQLITE_DOWN.search(str(e.orig)))
    return True


def _unavailable(
    url: str, shown: str, e: sa.exc.DBAPIError, what: str
) -> SourceUnavailable | ConfigError:
    said = _hide(url, _first_line(e.orig))
    if what == "cannot connect to":
        if isinstance(e, sa.exc.ProgrammingError) or _BAD_OPTION.search(said):
            return _bad_option(url, said)
        if not _is_down(e):
            return SourceUnavailable(
                f"the agency system's database {shown} refused the connection ({said}); "
                "check source.url. Nothing was changed."
            )
    return SourceUnavailable(
        f"{what} the agency system's database {shown} ({said}); "
        "check that it is running and that source.url is right. Nothing was changed."
    )


# What libpq and the PostgreSQL server say of an option in the URL they cannot take; at
# connect time psycopg raises ProgrammingError for the rest ("invalid connection option").
_BAD_OPTION = re.compile(
    r"invalid [\w ]*value|invalid connection option|invalid port number|bad value for|"
    r"could not parse network address|unrecognized configuration parameter|"
    r'missing "=" after|unterminated quoted string',
    re.I,
)


def _bad_option(url: str, said: str) -> ConfigError:
    """The source's driver refused what source.url gives it: a setting to correct (exit 2)."""
    return ConfigError(
        f"source.url has an option the agency system's database does not take "
        f"({_hide(url, said)}); correct it after the '?' of source.url and try again."
    )


def _first_line(e: BaseException | None) -> str:
    lines = str(e).strip().splitlines()
    return lines[0].strip() if lines else type(e).__name__


# A password shorter than this is masked only where it stands alone: masked everywhere, a
# password "p" would turn "port 1 failed" into "••••ort 1 failed". A driver that quotes a
# password sets it apart ('p', password=p, user:p@host); inside a longer word it says nothing.
_SHORT_PASSWORD = 6


def _hide(url: str, text: str) -> str:
    """``text`` with the source's password, should a driver quote it, replaced by ••••.

    Also hidden: any URL's password and any ``password=…`` value in ``text``.
    """
    from urllib.parse import quote, quote_plus

    try:
        password = sa.engine.make_url(url).password
    except (sa.exc.ArgumentError, ValueError):
        password = None
    text = redact(text)
    if not password:
        return text
    plain = str(password)
    for form in sorted({plain, quote(plain, safe=""), quote_plus(plain)}, key=len, reverse=True):
        if len(form) >= _SHORT_PASSWORD:
            text = text.replace(form, MASK)
        else:
            text = re.sub(rf"(?<!\w){re.escape(form)}(?!\w)", MASK, text)
    return text
