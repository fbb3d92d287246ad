"""Fixtures every test may use: a fresh home and a way to run the CLI in it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cpmail.cli.app import app

# Real servers every test module may ask for: SMTP (aiosmtpd) and PostgreSQL schemas.
pytest_plugins = ["tests.smtpserver", "tests.pg"]


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Cli:
    """Runs `cpmail …` in-process with CPMAIL_HOME pointed at a temporary folder."""

    home: Path

    def __call__(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        runner = CliRunner()
        r = runner.invoke(
            app,
            ["--home", str(self.home), *args],
            input=input,
            env=env,
            catch_exceptions=False,
        )
        return Result(r.exit_code, r.stdout, r.stderr)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh home folder; CPMAIL_* variables from the caller's shell are cleared."""
    for k in list(os.environ):
        if k.startswith("CPMAIL_"):
            monkeypatch.delenv(k)
    h = tmp_path / "home"
    monkeypatch.setenv("CPMAIL_HOME", str(h))
    yield h


@pytest.fixture
def cli(home: Path) -> Cli:
    return Cli(home)


@pytest.fixture
def initialised(cli: Cli) -> Cli:
    """A home after `cpmail init`."""
    r = cli("init")
    assert r.exit_code == 0, r.output
    return cli
