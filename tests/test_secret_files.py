"""A secret file that is there but cannot be read as one: exit 2 naming the file, never its
contents, nothing sent as if there were no passcode, and nothing lost."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cpmail.errors import ConfigError
from cpmail.secrets import SecretStore, passcode_name
from tests.conftest import Cli, Result
from tests.smtpserver import SMTPTestServer
from tests.test_delivery import setup_smtp

PASSCODE = b"hunt\xe9r2-s3cret"


def _not_utf8(path: Path) -> None:
    path.write_bytes(PASSCODE)
    os.chmod(path, 0o600)


def _folder(path: Path) -> None:
    path.mkdir(mode=0o700)


def _dangling_link(path: Path) -> None:
    path.symlink_to(path.with_name("gone"))


def _named_pipe(path: Path) -> None:
    os.mkfifo(path, 0o600)


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "not-utf8": (_not_utf8, "is not UTF-8 text"),
    "folder": (_folder, "is a folder, not a secret"),
    "dangling-link": (_dangling_link, "which does not exist"),
    "named-pipe": (_named_pipe, "is not a regular file"),
}


def _said(r: Result, path: Path, words: str) -> None:
    stderr = r.stderr
    assert r.exit_code == 2, r.output
    assert stderr.startswith("cpmail: ") and stderr.count("\n") == 1, stderr
    assert str(path) in stderr and words in stderr, stderr
    assert "hunt" not in stderr and "s3cret" not in stderr and "internal error" not in stderr


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_passcode_file_that_cannot_be_read_stops_sending_naming_it(
    cli: Cli, home: Path, smtp_server: SMTPTestServer, kind: str
) -> None:
    """`staff test` and `check`: exit 2 naming the file; a link to nothing is no "no passcode"
    (the relay would take the mail without a login)."""
    setup_smtp(cli, smtp_server)
    make, words = BAD[kind]
    path = home / "secrets" / passcode_name("JD")
    make(path)
    _said(cli("staff", "test", "JD"), path, words)
    _said(cli("check", "--date", "2026-11-30"), path, words)
    if kind != "not-utf8":  # (a file is replaced by a new passcode; these are not files)
        _said(cli("staff", "passcode", "JD", "--stdin", input="new\n"), path, words)
    assert smtp_server.messages == []
    assert smtp_server.auth_attempts == []


@pytest.mark.parametrize("kind", ["folder"])
def test_staff_remove_keeps_the_person_when_their_passcode_cannot_be_removed(
    initialised: Cli, home: Path, kind: str
) -> None:
    r = initialised("staff", "add", "KM", "--name", "Kim", "--work-email", "km@agency.test")
    assert r.exit_code == 0, r.output
    make, words = BAD[kind]
    path = home / "secrets" / passcode_name("KM")
    make(path)
    _said(initialised("staff", "remove", "KM"), path, words)
    assert "KM" in initialised("staff", "list", env={"COLUMNS": "300"}).stdout


@pytest.mark.parametrize("kind", ["not-utf8", "dangling-link"])
def test_a_passcode_file_that_cannot_be_read_is_removed_with_its_owner(
    initialised: Cli, home: Path, kind: str
) -> None:
    """Removing what cannot be read is what the person wants: the file or link goes too."""
    r = initialised("staff", "add", "KM", "--name", "Kim", "--work-email", "km@agency.test")
    assert r.exit_code == 0, r.output
    path = home / "secrets" / passcode_name("KM")
    BAD[kind][0](path)
    r = initialised("staff", "remove", "KM")
    assert r.exit_code == 0, r.output
    assert not path.is_symlink() and not path.exists()


def test_a_secrets_folder_that_is_a_file_is_named(home: Path) -> None:
    home.mkdir(exist_ok=True)
    (home / "secrets").write_text("")
    os.chmod(home / "secrets", 0o600)
    with pytest.raises(ConfigError, match="is not a folder"):
        SecretStore(home).get(passcode_name("JD"))
