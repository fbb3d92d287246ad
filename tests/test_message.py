"""`cpmail message`: to the manager and the help desk, bugs with diagnostics, wishes."""

from __future__ import annotations

import email
import email.policy
import platform
from email.message import EmailMessage
from pathlib import Path

import pytest

from cpmail import __version__
from cpmail.message import MASK, redact
from cpmail.secrets import SecretStore
from tests.conftest import Cli

PASSCODE = "Tr0ub4dor&3-horse-staple"


@pytest.fixture
def office(initialised: Cli) -> Cli:
    for args in (
        ("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test"),
        ("staff", "add", "KL", "--name", "Kim Lee", "--work-email", "kl@agency.test"),
        ("config", "set", "user.staff", "JD"),
        ("config", "set", "agency.name", "Hartley & Pine"),
        ("config", "manager", "--name", "Pat Manager", "--email", "pat@agency.test"),
        ("config", "helpdesk", "--email", "help@cp.test"),
    ):
        r = initialised(*args)
        assert r.exit_code == 0, r.output
    return initialised


def sent(home: Path) -> list[EmailMessage]:
    out = []
    for path in sorted((home / "mail").glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


def body_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def test_to_the_manager(office: Cli, home: Path) -> None:
    r = office("message", "manager", "Can we move the Friday review?")
    assert r.exit_code == 0, r.output
    assert "pat@agency.test" in r.stdout
    [msg] = sent(home)
    assert msg["To"].addresses[0].addr_spec == "pat@agency.test"
    assert msg["To"].addresses[0].display_name == "Pat Manager"
    assert msg["From"].addresses[0].addr_spec == "jd@agency.test"
    assert msg["Subject"] == "[C&P] Message from Jane Doe at Hartley & Pine"
    assert msg["X-Cpmail-Event"] == "message"
    assert msg["Auto-Submitted"] is None
    body = body_of(msg)
    assert body.startswith("Can we move the Friday review?\n")
    assert "Jane Doe" in body and "diagnostics" not in body


def test_to_the_help_desk_with_a_subject_from_stdin(office: Cli, home: Path) -> None:
    r = office(
        "message",
        "helpdesk",
        "--stdin",
        "--subject",
        "Licence renewal",
        "--as",
        "KL",
        input="Our licence runs out\nnext month.\n",
    )
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert msg["To"].addresses[0].addr_spec == "help@cp.test"
    assert msg["From"].addresses[0].addr_spec == "kl@agency.test"
    assert msg["Subject"] == "[C&P] Licence renewal"
    assert body_of(msg).startswith("Our licence runs out\nnext month.\n")


def test_a_wish_goes_to_the_help_desk(office: Cli, home: Path) -> None:
    r = office("message", "wish", "Put the job title in the cash-flow report\nIt would help.")
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert msg["To"].addresses[0].addr_spec == "help@cp.test"
    assert msg["Subject"] == "[Wish list] Put the job title in the cash-flow report"
    assert "diagnostics" not in body_of(msg)


def test_a_bug_carries_diagnostics_and_no_secret(office: Cli, home: Path) -> None:
    SecretStore(home).set("passcode.JD", PASSCODE)
    SecretStore(home).set("passcode.shared", PASSCODE + "-shared")
    r = office(
        "message",
        "bug",
        "The invoice total is wrong",
        env={
            "CPMAIL_MAIL_GMAIL_CLIENT_SECRETS": "/etc/cpmail/client_secret_12345.json",
            "CPMAIL_MAIL_MICROSOFT_CLIENT_ID": "9f2c1d4e7a8b4c3d9e0f1a2b3c4d5e6f",
        },
    )
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert msg["To"].addresses[0].addr_spec == "help@cp.test"
    assert msg["Subject"] == "[Bug] The invoice total is wrong"
    body = body_of(msg)
    assert body.startswith("The invoice total is wrong\n")
    diag = body.split("---- diagnostics ----", 1)[1]
    assert f"cpmail {__version__}" in diag
    assert f"Python {platform.python_version()}" in diag
    assert f"Platform: {platform.platform()}" in diag
    assert "Transport: file" in diag
    assert 'agency.name = "Hartley & Pine"' in diag
    assert 'manager.email = "pat@agency.test"' in diag
    assert f"mail.gmail.client_secrets = {MASK}  # env" in diag
    assert f'mail.microsoft.client_id = "{MASK}"  # env' in diag
    raw = b"".join(p.read_bytes() for p in (home / "mail").glob("*.eml"))
    assert PASSCODE.encode() not in raw
    assert PASSCODE not in body
    assert "client_secret_12345" not in body


def test_redaction_rules() -> None:
    assert redact("database.url", "postgresql+psycopg://cp:s3cr3t@db.local/cp") == (
        f'"postgresql+psycopg://cp:{MASK}@db.local/cp"'
    )
    assert redact("mail.microsoft.api_base", "https://x.test/?token=abc123&v=1") == (
        f'"https://x.test/?token={MASK}&v=1"'
    )
    for password in ("Se/cret", "Se cret", "p@ss", "a?b#c:d"):
        assert redact("source.url", f"postgresql+psycopg://cp:{password}@db.local/cp") == (
            f'"postgresql+psycopg://cp:{MASK}@db.local/cp"'
        )
    assert redact("database.url", "postgresql+psycopg://cp@db.local/cp?password=a b&x=1") == (
        f'"postgresql+psycopg://cp@db.local/cp?password={MASK}&x=1"'
    )
    assert redact("alerts.urls", ["tgram://123:AAbot/456"]) == MASK
    assert redact("agency.timezone", "America/New_York") == '"America/New_York"'
    assert redact("mail.gmail.client_secrets", "") == '""'
    assert redact("check.extra_holidays", ["2026-12-24"]) == '["2026-12-24"]'
    assert redact("mail.smtp.port", 587) == "587"
    assert redact("events.x.notify", ["staff", "ghp_A1b2C3d4E5f6G7h8I9j0K1l2"]) == (
        f'["staff", "{MASK}"]'
    )


@pytest.mark.parametrize(
    ("args", "unset", "says"),
    [
        (("manager",), None, "--stdin"),
        (("manager", "hi", "--stdin"), None, "not both"),
        (("manager", "   "), None, "empty"),
        (("boss", "hi"), None, "'boss'"),
        (("manager", "hi"), "manager.email", "cpmail config manager"),
        (("helpdesk", "hi"), "helpdesk.email", "cpmail config helpdesk"),
        (("bug", "it broke"), "helpdesk.email", "cpmail config helpdesk"),
        (("wish", "more"), "helpdesk.email", "cpmail config helpdesk"),
        (("manager", "hi", "--as", "NOBODY"), None, "NOBODY"),
    ],
)
def test_refusals_exit_2_and_send_nothing(
    office: Cli, home: Path, args: tuple[str, ...], unset: str | None, says: str
) -> None:
    if unset:
        assert office("config", "set", unset, "").exit_code == 0
    r = office("message", *args)
    assert r.exit_code == 2, r.output
    assert says in r.stderr
    assert sent(home) == []


def test_one_account_mode_signs_with_the_person_asking(office: Cli, home: Path) -> None:
    office("config", "set", "mail.one_account", "true")
    office("config", "set", "mail.sender", "office@agency.test")
    r = office("message", "manager", "Printer is out of toner.", "--as", "KL")
    assert r.exit_code == 0, r.output
    [msg] = sent(home)
    assert msg["From"].addresses[0].addr_spec == "office@agency.test"
    assert msg["Subject"] == "[C&P] Message from Kim Lee at Hartley & Pine"
    assert "Kim Lee\nkl@agency.test" in body_of(msg)
    # an answer reaches the person who wrote, not the shared mailbox
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == ["kl@agency.test"]


def test_a_person_sending_as_themselves_needs_no_reply_to(office: Cli, home: Path) -> None:
    assert office("message", "helpdesk", "Help, please.").exit_code == 0
    [msg] = sent(home)
    assert msg["From"].addresses[0].addr_spec == "jd@agency.test" and msg["Reply-To"] is None
