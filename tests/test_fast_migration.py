"""The shortcut in tests/conftest.py for migrating a new SQLite file gives what Alembic gives."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

import cpmail.store
from tests.conftest import Cli, _real_upgrade


def _state(home: Path) -> dict[str, object]:
    """Every file and folder of a home with its mode; the settings; the database's schema."""
    modes = {
        str(p.relative_to(home)): stat.S_IMODE(p.stat().st_mode) for p in [home, *home.rglob("*")]
    }
    db = sqlite3.connect(home / "cpmail.db")
    try:
        schema = sorted(
            db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        )
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
        journal = db.execute("PRAGMA journal_mode").fetchall()
        counts = {
            name: db.execute(f'SELECT count(*) FROM "{name}"').fetchone()
            for (kind, name, _, _) in schema
            if kind == "table"
        }
    finally:
        db.close()
    return {
        "modes": {k: v for k, v in modes.items() if not k.startswith("cpmail.db-")},
        "settings": (home / "cpmail.toml").read_text(),
        "schema": schema,
        "revision": revision,
        "journal": journal,
        "rows": counts,
    }


def test_init_here_leaves_the_home_a_real_init_leaves(cli: Cli, home: Path, tmp_path: Path) -> None:
    assert cpmail.store.upgrade is not _real_upgrade  # the shortcut is in place
    r = cli("init")
    assert r.exit_code == 0, r.output
    real = tmp_path / "real"
    done = subprocess.run(
        [sys.executable, "-m", "cpmail", "--home", str(real), "init"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CPMAIL_")},
    )
    assert done.returncode == 0, done.stderr
    assert _state(home) == _state(real)
    assert r.stdout.replace(str(home), "HOME") == done.stdout.replace(str(real), "HOME")


def _catalog(url: str) -> dict[str, object]:
    """What a PostgreSQL schema holds: columns, constraints, indexes, types, the revision."""
    engine = sa.create_engine(url)
    queries = {
        "columns": "SELECT table_name, column_name, ordinal_position, data_type, "
        "character_maximum_length, numeric_precision, numeric_scale, is_nullable, "
        "column_default FROM information_schema.columns WHERE table_schema = current_schema()",
        "constraints": "SELECT c.conrelid::regclass::text, c.conname, "
        "pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = current_schema()",
        "indexes": "SELECT tablename, indexname, replace(indexdef, current_schema(), 'S') "
        "FROM pg_indexes WHERE schemaname = current_schema()",
        "relations": "SELECT c.relname, c.relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()",
        "types": "SELECT t.typname, t.typtype FROM pg_type t "
        "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = current_schema()",
        "revision": "SELECT version_num FROM alembic_version",
    }
    try:
        with engine.connect() as conn:
            return {k: sorted(map(tuple, conn.execute(sa.text(q)))) for k, q in queries.items()}
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_postgres_schema_gets_what_alembic_gives(pg_url: str) -> None:
    import uuid

    here = cpmail.store.make_engine(pg_url)
    cpmail.store.upgrade(here)  # the recorded statements, sent again
    here.dispose()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    server = pg_url.split("?")[0]
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    real_url = f"{server}?options=-csearch_path%3D{schema}"
    try:
        real = cpmail.store.make_engine(real_url)
        _real_upgrade(real)  # Alembic itself
        real.dispose()
        ours, theirs = _catalog(pg_url), _catalog(real_url)
        assert ours["relations"] and ours == theirs
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
