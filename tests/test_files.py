"""Files written whole or not at all: the new file in place, or the old one untouched."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cpmail.files import atomic_open


def test_a_write_that_fails_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "export.csv"
    target.write_text("id\nC1\n", encoding="utf-8")
    with (
        pytest.raises(RuntimeError, match="disk gone"),
        atomic_open(target, mode=0o600, encoding="utf-8") as f,
    ):
        f.write("id\nC2\n")
        f.flush()
        raise RuntimeError("disk gone")
    assert target.read_text(encoding="utf-8") == "id\nC1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["export.csv"]  # no temporary file left


def test_a_write_replaces_the_target_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "settings.toml"
    target.write_bytes(b"old")
    old = os.umask(0o077)
    try:
        with atomic_open(target, mode=0o640) as f:
            f.write(b"new")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["settings.toml"]


def test_a_missing_folder_fails_before_anything_is_written(tmp_path: Path) -> None:
    with (
        pytest.raises(FileNotFoundError),
        atomic_open(tmp_path / "missing" / "x.json", mode=0o600) as f,
    ):
        f.write(b"never")
    assert list(tmp_path.iterdir()) == []
