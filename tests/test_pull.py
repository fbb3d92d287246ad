"""`cpmail data pull`: a real second database stands in for the agency system.

It has its own table and column names (examples/source/schema.sql) and is
mapped by the queries of examples/source/cpmail.toml, on PostgreSQL (a
schema of its own) and on SQLite (a file).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from cpmail import settings as settings_module
from cpmail.store import schema
from tests.conftest import Cli
from tests.pg import SERVER, server_or_skip
from tests.test_data import engine_of, snapshot, table_rows

EXAMPLE = Path(__file__).parent.parent / "examples" / "source"
TODAY = dt.date.today()


def day(offset: int) -> str:
    return (TODAY + dt.timedelta(days=offset)).isoformat()


class Source:
    """The agency system's database: run SQL in it, and the URL cpmail reads it by."""

    def __init__(self, url: str, engine: sa.Engine) -> None:
        self.url = url
        self.engine = engine

    def run(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)


def _statements(path: Path) -> list[str]:
    text = "\n".join(
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("--")
    )
    return [s.strip() for s in text.split(";") if s.strip()]


MARIADB = os.environ.get("CPMAIL_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test")


def _mariadb_source() -> Iterator[Source]:
    """A database of its own on the MariaDB server (skipped without PyMySQL or the server)."""
    pytest.importorskip("pymysql", reason="PyMySQL is cpmail[mysql]'s driver")
    admin = sa.create_engine(MARIADB)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError:
        admin.dispose()
        pytest.skip(f"no MariaDB server at {MARIADB}")
    name = f"src_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}`")
    url = str(sa.engine.make_url(MARIADB).set(database=name).render_as_string(False))
    engine = sa.create_engine(url)
    try:
        src = Source(url, engine)
        src.run(*_statements(EXAMPLE / "schema.sql"))
        yield src
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE `{name}`")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "mariadb"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Source]:
    if request.param == "mariadb":
        yield from _mariadb_source()
        return
    if request.param == "sqlite":
        path = tmp_path / "studio.db"
        sqlite3.connect(path).close()
        engine = sa.create_engine(f"sqlite:///{path}")
        src = Source(f"sqlite:///{path}", engine)
        src.run(*_statements(EXAMPLE / "schema.sql"))
        yield src
        engine.dispose()
        return
    yield from _postgres_source()


@pytest.fixture
def pg_source() -> Iterator[Source]:
    """A source on PostgreSQL only, for what only PostgreSQL has."""
    yield from _postgres_source()


def _postgres_source() -> Iterator[Source]:
    name = f"src_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    server_or_skip(admin)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    url = f"{SERVER}?options=-csearch_path%3D{name}"
    engine = sa.create_engine(url)
    src = Source(url, engine)
    try:
        src.run(*_statements(EXAMPLE / "schema.sql"))
        yield src
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()


def first_day(src: Source) -> None:
    """The agency system's data on the first day, dated around today."""
    src.run(
        "INSERT INTO employees VALUES ('AM', 'Ana Morales', 'am@studio.test', NULL, 0, 'ae', TRUE)",
        "INSERT INTO employees VALUES ('RP', 'Rita Patel', 'rp@studio.test', 'AM', 0, 'creative',"
        " TRUE)",
        "INSERT INTO customers VALUES (101, 'Acme Foods', 'ap@acme.test')",
        "INSERT INTO account_team VALUES (101, 'AM', 'ae')",
        "INSERT INTO account_team VALUES (101, 'RP', 'creative')",
        "INSERT INTO project_statuses VALUES ('WIP', 'P', 'In production', NULL)",
        "INSERT INTO project_statuses VALUES ('PROOF', 'P', 'Proof to client', 'AM')",
        f"INSERT INTO projects VALUES (5001, 101, 'Spring catalog', '{day(-30)} 09:15:00',"
        " 'WIP', NULL)",
        f"INSERT INTO project_tasks VALUES (9001, 5001, 'Layout', 'RP', '{day(-3)}', NULL,"
        " 1500, 12)",
        f"INSERT INTO project_tasks VALUES (9002, 5001, 'Copy', 'AM', '{day(-2)}', NULL, 800, 6)",
        f"INSERT INTO project_tasks VALUES (9003, 5001, 'Proofs', 'RP', '{day(0)}', NULL, NULL,"
        " NULL)",
        f"INSERT INTO timesheet VALUES (1, 'RP', 5001, 9001, '{day(-4)}', 6, 540.50)",
    )


def next_day(src: Source) -> None:
    """What changed in the agency system overnight."""
    src.run(
        "DELETE FROM project_tasks WHERE task_no = 9002",
        "UPDATE project_tasks SET task_title = 'Layout, second round' WHERE task_no = 9001",
        f"INSERT INTO project_tasks VALUES (9004, 5001, 'Print', 'AM', '{day(-1)}', NULL, NULL,"
        " NULL)",
        "UPDATE projects SET prod_status = 'PROOF' WHERE proj_no = 5001",
        f"INSERT INTO timesheet VALUES (2, 'AM', 5001, 9004, '{day(-1)}', 1.25, NULL)",
    )


def example_settings(url: str) -> str:
    text = (EXAMPLE / "cpmail.toml").read_text(encoding="utf-8")
    lines = [f'url = "{url}"' if line.startswith("url = ") else line for line in text.splitlines()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def home_for(initialised: Cli) -> Any:
    def setup(src: Source) -> Cli:
        path = initialised.home / "cpmail.toml"
        with path.open("a", encoding="utf-8") as f:
            f.write("\n" + example_settings(src.url))
        assert initialised("config", "set", "check.holidays", "").exit_code == 0
        return initialised

    return setup


def ledger(cli: Cli) -> set[str]:
    engine = engine_of(cli.home)
    with engine.connect() as conn:
        keys = set(conn.execute(sa.select(schema.ledger.c.key)).scalars())
    engine.dispose()
    return keys


def pull(cli: Cli, *args: str) -> list[dict[str, Any]]:
    r = cli("data", "pull", "--json", *args)
    assert r.exit_code == 0, r.output
    out: list[dict[str, Any]] = json.loads(r.stdout)
    return out


def counts(results: list[dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    keys = ("new", "updated", "unchanged", "deleted")
    return {x["table"]: tuple(x[k] for k in keys) for x in results}


EVENTS = "task-overdue,task-due-today,status-changed"


def test_the_source_tables_are_the_agency_tables() -> None:
    assert settings_module.SOURCE_TABLES == schema.AGENCY_TABLE_NAMES


def test_pull_first_then_the_changes_and_check_fires_for_exactly_those(
    source: Source, home_for: Any
) -> None:
    first_day(source)
    cli = home_for(source)
    results = pull(cli)
    assert [x["table"] for x in results] == [
        "staff",
        "clients",
        "client_team",
        "job_status_codes",
        "jobs",
        "tasks",
        "time_entries",
    ]
    assert results[0]["query"] == "source.tables.staff.query"
    assert counts(results)["tasks"] == (3, 0, 0, 0)
    engine = engine_of(cli.home)
    tasks = {t["id"]: t for t in table_rows(engine, "tasks")}
    assert tasks["9001"]["due_date"] == TODAY - dt.timedelta(days=3)
    assert str(tasks["9001"]["budget_amount"]) == "1500.00"
    (entry,) = table_rows(engine, "time_entries")
    assert (entry["staff_id"], str(entry["amount"])) == ("RP", "540.50")
    assert cli("config", "set", "user.staff", "AM").exit_code == 0

    r = cli("check", "--date", day(0), "--only", EVENTS)
    assert r.exit_code == 0, r.output
    first = ledger(cli)
    assert first == {
        f"task-overdue:9001:{day(0)}",
        f"task-overdue:9002:{day(0)}",
        f"task-due-today:9003:{day(0)}",
    }

    next_day(source)
    before = snapshot(engine)
    dry = pull(cli, "--dry-run")
    assert snapshot(engine) == before
    real = pull(cli)
    assert [x | {"dry_run": True} for x in real] == dry
    assert counts(real)["tasks"] == (1, 1, 1, 1)  # 9004 new, 9001 renamed, 9002 deleted
    assert counts(real)["time_entries"] == (1, 0, 1, 0)
    assert counts(real)["jobs"] == (0, 1, 0, 0)
    assert [x["status_changes"] for x in real if x["table"] == "jobs"] == [1]
    assert set(t["id"] for t in table_rows(engine, "tasks")) == {"9001", "9003", "9004"}
    again = pull(cli)
    assert all(x["new"] == x["updated"] == x["deleted"] == 0 for x in again)
    assert [x["status_changes"] for x in again if x["table"] == "jobs"] == [0]
    history = table_rows(engine, "job_status_history")
    assert [(h["job_id"], h["old_value"], h["new_value"]) for h in history] == [
        ("5001", "WIP", "PROOF")
    ]
    engine.dispose()

    r = cli("check", "--date", day(1), "--only", EVENTS)
    assert r.exit_code == 0, r.output
    assert ledger(cli) - first == {
        f"task-overdue:9001:{day(1)}",
        f"task-overdue:9003:{day(1)}",
        f"task-overdue:9004:{day(1)}",
        f"status-changed:{history[0]['id']}",
    }  # nothing for the deleted task 9002


def test_a_bad_row_from_the_source_changes_nothing(source: Source, home_for: Any) -> None:
    first_day(source)
    cli = home_for(source)
    pull(cli)
    next_day(source)
    source.run("UPDATE employees SET email = 'rita at studio' WHERE emp_code = 'RP'")
    engine = engine_of(cli.home)
    before = snapshot(engine)
    r = cli("data", "pull")
    assert r.exit_code == 2, r.output
    msg = r.stderr.removeprefix("cpmail: ").strip()
    assert msg.startswith("source.tables.staff.query, row 2 (id RP), column work_email: ")
    assert "'rita at studio'" in msg
    assert snapshot(engine) == before
    # A row that refers to nothing, in the last table.
    source.run(
        "UPDATE employees SET email = 'rp@studio.test' WHERE emp_code = 'RP'",
        f"INSERT INTO timesheet VALUES (3, 'ZZ', 5001, 9001, '{day(0)}', 1, NULL)",
    )
    r = cli("data", "pull")
    assert r.exit_code == 2, r.output
    assert r.stderr == (
        "cpmail: source.tables.time_entries.query, row 3 (id 3), column staff_id: there is no "
        "staff row with id 'ZZ'; import staff first.\n"
    )
    assert snapshot(engine) == before
    engine.dispose()


def test_a_query_the_source_refuses_is_a_setting_to_fix(source: Source, home_for: Any) -> None:
    first_day(source)
    cli = home_for(source)
    r = cli("config", "set", "source.tables.vendors.query", "SELECT * FROM suppliers")
    assert r.exit_code == 0, r.output
    engine = engine_of(cli.home)
    before = snapshot(engine)
    r = cli("data", "pull")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(
        "cpmail: source.tables.vendors.query: the agency system's database refused the query ("
    )
    assert "suppliers" in r.stderr
    assert snapshot(engine) == before
    engine.dispose()


def test_a_query_whose_columns_are_not_cpmails_says_to_name_them(
    source: Source, home_for: Any
) -> None:
    """Not "is the header line missing?": a query has no header line."""
    first_day(source)
    cli = home_for(source)
    query = "SELECT 'C9' AS code, 'Acme' AS label"
    assert cli("config", "set", "source.tables.clients.query", query).exit_code == 0
    r = cli("data", "pull")
    assert r.exit_code == 2, r.output
    assert "unknown column 'code'" in r.stderr and "with AS" in r.stderr, r.stderr
    assert "header line" not in r.stderr


def test_a_query_that_returns_no_rows_has_its_columns_checked_too(
    source: Source, home_for: Any
) -> None:
    """A misnamed key column with no rows must not read as "the table is now empty",
    which `replace = true` would carry out by deleting every row."""
    first_day(source)
    cli = home_for(source)
    pull(cli)
    query = "SELECT task_no AS task_id, task_title AS name FROM project_tasks WHERE 1 = 0"
    assert cli("config", "set", "source.tables.tasks.query", query).exit_code == 0
    engine = engine_of(cli.home)
    before = snapshot(engine)
    r = cli("data", "pull")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("cpmail: source.tables.tasks.query: unknown column 'task_id'")
    assert snapshot(engine) == before
    engine.dispose()


def test_a_source_that_is_down_changes_nothing_and_keeps_its_password(
    home_for: Any, tmp_path: Path
) -> None:
    down = Source(
        "postgresql+psycopg://reader:Se/cr%20et@127.0.0.1:1/studio", sa.create_engine("sqlite://")
    )
    cli = home_for(down)
    engine = engine_of(cli.home)
    before = snapshot(engine)
    r = cli("data", "pull")
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith(
        "cpmail: cannot connect to the agency system's database "
        "postgresql+psycopg://reader:••••@127.0.0.1:1/studio ("
    )
    assert "check that it is running and that source.url is right" in r.stderr
    assert "Se/cr" not in r.output and "cr%20et" not in r.output
    assert snapshot(engine) == before
    missing = tmp_path / "gone.db"
    assert cli("config", "set", "source.url", f"sqlite:///{missing}").exit_code == 0
    r = cli("data", "pull")
    assert r.exit_code == 3, r.output
    assert r.stderr == (
        f"cpmail: the agency system's database {missing} does not exist; check source.url. "
        "Nothing was changed.\n"
    )
    engine.dispose()


def test_pull_needs_a_source_and_a_query(initialised: Cli) -> None:
    r = initialised("data", "pull")
    assert r.exit_code == 2
    assert r.stderr.startswith("cpmail: source.url is not set")
    assert initialised("config", "set", "source.url", "sqlite:////nowhere.db").exit_code == 0
    r = initialised("data", "pull")
    assert r.exit_code == 2
    assert r.stderr.startswith("cpmail: no table to pull")


@pytest.mark.postgres
def test_pull_into_a_postgres_home(source: Source, cli: Cli, home: Path, pg_url: str) -> None:
    from cpmail.settings import Settings

    home.mkdir(parents=True)
    s = Settings.load(home)
    s.set("database.url", pg_url)
    s.save()
    assert cli("init").exit_code == 0
    first_day(source)
    with (home / "cpmail.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + example_settings(source.url))
    first = pull(cli)
    assert counts(first)["tasks"] == (3, 0, 0, 0)
    next_day(source)
    assert counts(pull(cli))["tasks"] == (1, 1, 1, 1)
    engine = engine_of(home)
    assert {t["id"] for t in table_rows(engine, "tasks")} == {"9001", "9003", "9004"}
    assert len(table_rows(engine, "job_status_history")) == 1
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # (the settings file is checked as it is read: the file and the key are named)
        ("postgresql+psycopg://reader:pw@db:abc/studio", "source.url: its port is not a number"),
        ("postgresql+psycopg://reader:pw@db:99999/studio", "source.url: its port 99999 is not"),
        ("nosuchdb://reader:pw@db/studio", "source.url: cpmail does not know the database kind"),
    ],
)
def test_a_source_url_that_cannot_be_right_is_a_setting_to_fix(
    initialised: Cli, url: str, expected: str
) -> None:
    path = initialised.home / "cpmail.toml"
    with path.open("a", encoding="utf-8") as f:
        f.write(f'\n[source]\nurl = "{url}"\n[source.tables.clients]\nquery = "SELECT 1"\n')
    r = initialised("data", "pull")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("cpmail: ") and expected in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    assert "pw" not in r.stderr


def _pull_from(cli: Cli, url: str) -> Any:
    """`data pull` from ``url`` (one query); asserts the agency data stayed as it was."""
    engine = engine_of(cli.home)
    before = snapshot(engine)
    env = {"CPMAIL_SOURCE_URL": url, "CPMAIL_SOURCE_TABLES_CLIENTS_QUERY": "SELECT 1"}
    r = cli("data", "pull", env=env)
    assert snapshot(engine) == before
    engine.dispose()
    return r


# Options libpq refuses before it connects, and the words it refuses them with.
LIBPQ_REFUSES = [
    ("connect_timeout=abc", "bad value for connect_timeout: 'abc'"),
    ("sslmode=bogus", 'invalid sslmode value: "bogus"'),
    ("keepalives=x", 'invalid integer value "x" for connection option "keepalives"'),
    ("bogusopt=1", 'invalid connection option "bogusopt"'),
]


@pytest.mark.parametrize(("option", "said"), [*LIBPQ_REFUSES, ("port=abc", "port")])
def test_an_option_the_source_driver_refuses_is_a_setting_to_fix(
    initialised: Cli, option: str, said: str
) -> None:
    """libpq refuses these before it connects: source.url is wrong, nothing is down."""
    r = _pull_from(initialised, f"postgresql+psycopg://reader:p@127.0.0.1:1/studio?{option}")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("cpmail: source.url has an option the agency system's database")
    assert said in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.endswith("correct it after the '?' of source.url and try again.\n")


def test_an_option_pymysql_refuses_is_a_setting_to_fix(initialised: Cli) -> None:
    pytest.importorskip("pymysql", reason="PyMySQL is cpmail[mysql]'s driver")
    for option in ("bogus=1", "connect_timeout=abc"):
        r = _pull_from(initialised, f"mysql+pymysql://reader:pw@127.0.0.1:1/studio?{option}")
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("cpmail: source.url has an option"), r.stderr
        assert "pw" not in r.stderr


def test_a_short_source_password_is_hidden_without_garbling_the_drivers_words(
    initialised: Cli,
) -> None:
    r = _pull_from(initialised, "postgresql+psycopg://reader:p@127.0.0.1:1/studio")
    assert r.exit_code == 3, r.output
    assert 'connection to server at "127.0.0.1", port 1 failed' in r.stderr, r.stderr
    assert "••••ort" not in r.stderr and "reader:••••@127.0.0.1:1/studio" in r.stderr


@pytest.mark.parametrize(
    ("password", "text", "shown"),
    [
        # short: hidden where it stands alone, in a URL or after password=; kept inside words
        ("p", "port 1 failed for 'p' (p)", "port 1 failed for '••••' (••••)"),
        ("p", "at postgresql://reader:p@db/x", "at postgresql://reader:••••@db/x"),
        ("p", "user=reader password=p host=db", "user=reader password=•••• host=db"),
        ("a b", "password 'a b' or a%20b or a+b", "password '••••' or •••• or ••••"),
        ("1", "port 1 failed", "port •••• failed"),  # a password is never shown, even so
        # long: hidden wherever it is, in the words of others too
        ("Sesame42", "xSesame42x and Sesame42", "x••••x and ••••"),
    ],
)
def test_the_source_password_is_hidden_in_whatever_the_driver_says(
    password: str, text: str, shown: str
) -> None:
    from urllib.parse import quote

    from cpmail.pull import _hide

    url = f"postgresql+psycopg://reader:{quote(password, safe='')}@db/x"
    assert _hide(url, text).endswith(shown)


def test_a_source_sqlite_url_naming_a_folder_says_so(initialised: Cli, tmp_path: Path) -> None:
    r = _pull_from(initialised, f"sqlite:///{tmp_path}")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"cpmail: source.url names {tmp_path}, which is a folder; ")
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("journal", ["wal", "wal2delete"])
def test_an_sqlite_source_is_read_in_one_snapshot(
    initialised: Cli, tmp_path: Path, journal: str
) -> None:
    """The agency system writes a client and its job between the reading of clients and of
    jobs: the pull sees neither (one snapshot), not the job without its client."""
    path = tmp_path / "agency.db"
    agency = sqlite3.connect(path)
    agency.execute("PRAGMA journal_mode=WAL")
    agency.executescript(
        "CREATE TABLE customers(no TEXT, name TEXT);"
        "CREATE TABLE projects(no TEXT, cust TEXT, title TEXT);"
        "INSERT INTO customers VALUES ('C1', 'Acme');"
        "INSERT INTO projects VALUES ('J1', 'C1', 'One');"
    )
    agency.commit()
    for key, value in [
        ("source.url", f"sqlite:///{path}"),
        ("source.tables.clients.query", "SELECT no AS id, name FROM customers"),
        ("source.tables.jobs.query", "SELECT no AS id, cust AS client_id, title FROM projects"),
    ]:
        assert initialised("config", "set", key, value).exit_code == 0
    written: list[str] = []

    def meanwhile(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if "FROM projects" in statement and not written:
            agency.execute("INSERT INTO customers VALUES ('C2', 'Bluebird')")
            agency.execute("INSERT INTO projects VALUES ('J2', 'C2', 'Two')")
            agency.commit()
            written.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", meanwhile)
    try:
        r = initialised("data", "pull", "--json")
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", meanwhile)
    assert written
    assert r.exit_code == 0, r.output
    assert {t["table"]: t["rows"] for t in json.loads(r.stdout)} == {"clients": 1, "jobs": 1}
    if journal == "wal2delete":  # the next pull sees both, and the file is no longer held
        agency.execute("PRAGMA journal_mode=DELETE")
        r = initialised("data", "pull", "--json")
        assert r.exit_code == 0, r.output
        assert {t["table"]: t["new"] for t in json.loads(r.stdout)} == {"clients": 1, "jobs": 1}
    agency.close()


@pytest.mark.postgres
def test_a_databases_own_types_are_taken_as_they_are(pg_source: Source, home_for: Any) -> None:
    """PostgreSQL: a uuid as an id, a timestamp with a time zone, an array for a list column."""
    source = pg_source
    first_day(source)
    source.run(
        "CREATE TABLE notes (uid UUID PRIMARY KEY, title TEXT, at TIMESTAMPTZ, tell TEXT[])",
        "INSERT INTO notes VALUES ('6f1c2a4e-1d2b-4c3d-9e8f-0a1b2c3d4e5f', 'Office closed', "
        "'2026-11-27 09:30:00+00', ARRAY['AM', 'RP'])",
    )
    cli = home_for(source)
    assert cli("config", "set", "agency.timezone", "America/New_York").exit_code == 0
    query = "SELECT uid AS id, title AS subject, at AS entered_at, tell AS notify FROM notes"
    assert cli("config", "set", "source.tables.homebase_entries.query", query).exit_code == 0
    results = pull(cli)
    assert counts(results)["homebase_entries"] == (1, 0, 0, 0)
    engine = engine_of(cli.home)
    (note,) = table_rows(engine, "homebase_entries")
    engine.dispose()
    assert note["id"] == "6f1c2a4e-1d2b-4c3d-9e8f-0a1b2c3d4e5f"
    assert note["entered_at"] == dt.datetime(2026, 11, 27, 4, 30)  # New York time
    assert note["notify"] == "AM,RP"


@pytest.mark.parametrize(
    ("query", "said"),
    [
        # psycopg cannot make a Python date of 'infinity': the value, not the query
        (
            "SELECT 'C9' AS id, 'Far' AS name, 'infinity'::date AS created_at",
            "a value the query gives cannot be read (",
        ),
        # a statement_timeout cancels the query: the source is up, the query is too slow
        (
            "SELECT 'C9' AS id, 'Slow' AS name FROM (SELECT pg_sleep(2)) s",
            "the agency system's database refused the query (canceling statement",
        ),
    ],
    ids=["unreadable-value", "statement-timeout"],
)
@pytest.mark.postgres
def test_a_source_value_or_timeout_is_a_query_to_fix_not_a_source_down(
    pg_source: Source, home_for: Any, query: str, said: str
) -> None:
    """PostgreSQL's infinity and statement_timeout."""
    source = pg_source
    first_day(source)
    cli = home_for(source)
    url = source.url + "%20-cstatement_timeout%3D500"  # in the options= the source URL has
    assert cli("config", "set", "source.url", url).exit_code == 0
    assert cli("config", "set", "source.tables.clients.query", query).exit_code == 0
    engine = engine_of(cli.home)
    before = snapshot(engine)
    r = cli("data", "pull")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("cpmail: source.tables.clients.query") and said in r.stderr, r.stderr
    assert snapshot(engine) == before
    engine.dispose()


JOBS = (
    "SELECT proj_no AS id, cust_no AS client_id, proj_name AS title, created AS opened_at, "
    "prod_status AS production_status, bill_status AS billing_status FROM projects"
)


def test_a_key_a_query_gives_twice_with_other_values_is_refused_and_changes_nothing(
    source: Source, home_for: Any
) -> None:
    """A join that repeats job 5001, the second time with another status: the later row
    overwrote the first, and the job's status seemed to change (WIP, then PROOF) each pull,
    so the next check told of a change nobody made. Exit 2 naming the table and the key."""
    first_day(source)
    cli = home_for(source)
    pull(cli)
    engine = engine_of(cli.home)
    before = snapshot(engine)
    other = "SELECT proj_no, cust_no, proj_name, created, 'PROOF', bill_status FROM projects"
    again = f"{JOBS} UNION ALL {other}"
    assert cli("config", "set", "source.tables.jobs.query", again).exit_code == 0
    r = cli("data", "pull")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("cpmail: source.tables.jobs.query, row 2 (id 5001): "), r.stderr
    assert "jobs row (id 5001) was given already, at row 1, with other values" in r.stderr
    assert "one row per key" in r.stderr
    assert "nothing was imported" in r.stderr and r.stdout == ""
    assert snapshot(engine) == before
    # the same row twice (a join that repeats it as it is) is one row
    same = f"{JOBS} UNION ALL {JOBS}"
    assert cli("config", "set", "source.tables.jobs.query", same).exit_code == 0
    results = pull(cli)
    assert [x["status_changes"] for x in results if x["table"] == "jobs"] == [0]
    assert snapshot(engine) == before
    engine.dispose()


@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["N1", "N2", "N3"]), st.sampled_from(["Acme", "Bluebird"])),
        min_size=1,
        max_size=9,
    ),
    batch=st.sampled_from([2, 3, 5000]),
)
@hyp_settings(max_examples=30, deadline=None)
def test_a_key_given_again_with_other_values_is_refused_naming_both_rows(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str]], batch: int
) -> None:
    """However far apart (in one batch of rows or in two): the same row again is one row;
    another one under the same key is refused, naming its row and the first one's, and
    nothing is written."""
    from cpmail.dataio import importer

    folder = tmp_path_factory.mktemp("dup")
    src = sqlite3.connect(folder / "studio.db")
    src.execute("CREATE TABLE cl (seq INTEGER, id TEXT, name TEXT)")
    src.executemany("INSERT INTO cl VALUES (?, ?, ?)", [(n, *r) for n, r in enumerate(rows)])
    src.commit()
    src.close()
    cli = Cli(folder / "home")
    assert cli("init").exit_code == 0
    assert cli("config", "set", "source.url", f"sqlite:///{folder / 'studio.db'}").exit_code == 0
    query = "SELECT id, name FROM cl ORDER BY seq"
    assert cli("config", "set", "source.tables.clients.query", query).exit_code == 0
    first: dict[str, tuple[int, str]] = {}
    clash = None
    for row, (i, name) in enumerate(rows, start=1):
        at, was = first.setdefault(i, (row, name))
        if was != name:
            clash = (row, i, at)
            break
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importer, "BATCH_ROWS", batch)
        r = cli("data", "pull")
    engine = engine_of(cli.home)
    got = {c["id"]: c["name"] for c in table_rows(engine, "clients")}
    engine.dispose()
    if clash is None:
        assert r.exit_code == 0, r.output
        assert got == {i: name for i, (_, name) in first.items()}
    else:
        row, i, at = clash
        assert r.exit_code == 2 and got == {}, r.output
        assert r.stderr == (
            f"cpmail: source.tables.clients.query, row {row} (id {i}): this clients row "
            f"(id {i}) was given already, at row {at}, with other values; make the query give "
            "one row per key (a join may repeat a row); nothing was imported.\n"
        )
