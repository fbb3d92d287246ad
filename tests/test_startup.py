"""`cpmail --help` stays fast: it must not import the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sqlalchemy", "aiosmtplib", "weasyprint", "msal", "google", "alembic", "jinja2", "httpx")


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from cpmail.cli.app import app\n"
        "try:\n"
        "    app(['--help'], prog_name='cpmail')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cpmail", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("cpmail ")
