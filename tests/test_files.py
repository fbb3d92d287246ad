"""Files written whole or not at all: the new file in place, or the old one untouched."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cpmail.files import atomic_open
from tests.conftest import Cli


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


def test_a_link_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere" / "cpmail.toml"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "cpmail.toml"
    link.symlink_to(real)
    with atomic_open(link, mode=0o600, encoding="utf-8") as f:
        f.write("new\n")
    assert link.is_symlink() and real.read_text() == "new\n"


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (("data", "export", "clients"), "cpmail.db"),
        (("data", "export", "clients"), "cpmail.db-wal"),
        (("data", "export", "clients"), "cpmail.toml"),
        (("data", "export", "staff"), "secrets/smtp-passcode-JD"),
        (("report", "cash-flow"), "cpmail.db"),
        (("data", "export", "clients"), "alert-state.json"),
        (("data", "export", "clients"), "templates/email/job-opened.txt"),
        (("report", "cash-flow"), "mail/kept.eml"),
    ],
)
def test_output_is_never_written_over_cpmails_own_files(
    initialised: Cli, home: Path, command: tuple[str, ...], name: str
) -> None:
    """--out naming the database, its journal, the settings or a secret: refused, exit 2,
    and the file as it was (written, it would be replaced: everything in it lost)."""
    target = home / name
    journal = name.endswith("-wal")  # SQLite's own: it comes and goes with connections
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() and not journal:
        target.write_bytes(b"kept")
    before = None if journal else target.read_bytes()
    link = home.parent / "innocent.csv"  # a link to it is the same file
    link.symlink_to(target)
    for out in (target, link):
        r = initialised(*command, "--out", str(out))
        assert r.exit_code == 2, r.output
        assert "one of cpmail's own files" in r.stderr, r.stderr
        if before is not None:
            assert target.read_bytes() == before
    assert initialised("data", "tables").exit_code == 0  # the database still works


def test_a_device_or_a_named_pipe_is_written_into_never_replaced(
    initialised: Cli, tmp_path: Path
) -> None:
    """`--out /dev/null` as root replaced the system's /dev/null with a plain file, and a
    named pipe became a file its reader never saw: such a target is written into."""
    import threading

    assert initialised("demo", "--force").exit_code == 0
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    r = initialised("data", "export", "jobs", "--out", str(pipe))
    reader.join(30)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    assert got and got[0].startswith(b"id,") and got[0].count(b"\n") > 5
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    with atomic_open(pipe, mode=0o600) as f:  # the module itself, for every writer
        f.write(b"text")
    reader.join(30)
    assert got[-1] == b"text" and stat.S_ISFIFO(os.lstat(pipe).st_mode)
    if os.geteuid() == 0:  # a device of its own, like /dev/null (1, 3): only root makes one
        null = tmp_path / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        for args in (("data", "export", "jobs"), ("report", "cash-flow")):
            r = initialised(*args, "--out", str(null))
            assert r.exit_code == 0, r.output
            assert stat.S_ISCHR(os.lstat(null).st_mode), args
