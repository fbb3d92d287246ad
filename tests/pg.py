"""PostgreSQL for tests: each test gets a schema of its own on 127.0.0.1:5432, dropped after.

``pg_url`` yields a SQLAlchemy URL whose search_path is that schema, so
cpmail's migrations and queries run there without knowing it. ``backend`` is
a fixture parametrised over both databases cpmail supports.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

SERVER = os.environ.get("CPMAIL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Read once, at collection: the `home` fixture clears CPMAIL_* variables for each test.
REQUIRED = os.environ.get("CPMAIL_REQUIRE_PG") == "1"


def server_or_skip(admin: sa.Engine) -> None:
    """Skip (with the reason) when PostgreSQL is not there, unless CPMAIL_REQUIRE_PG=1."""
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as e:
        reason = f"PostgreSQL is not reachable at {SERVER.split('@')[-1]}: {e.orig}"
        if REQUIRED:
            pytest.fail(reason + " (CPMAIL_REQUIRE_PG=1)")
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _close_lost_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a PostgreSQL test, close the connections of the engines it left behind.

    Each command makes an engine; one nobody disposed of keeps its pooled
    connections open until the garbage collector gets to it, and a suite on
    two workers (or two suites at once) would reach the server's
    max_connections.
    """
    yield
    if request.node.get_closest_marker("postgres") is not None:
        gc.collect()


@pytest.fixture
def pg_url() -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    server_or_skip(admin)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{SERVER}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """'' for the default SQLite file in the home, else a PostgreSQL URL."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("pg_url")
    return url
