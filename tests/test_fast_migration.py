"""The shortcut in tests/conftest.py for migrating a new SQLite file gives what Alembic gives."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

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
