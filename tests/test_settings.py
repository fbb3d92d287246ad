"""cpmail.toml: comments survive, values are validated, the environment wins, errors name lines."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cpmail.secrets import SecretStore
from tests.conftest import Cli


def test_comments_and_order_survive_config_commands(initialised: Cli, home: Path) -> None:
    path = home / "cpmail.toml"
    text = path.read_text()
    text = text.replace("[check]", "# our own note about checks\n[check]  # trailing note")
    path.write_text(text)
    assert initialised("config", "set", "check.lookback_days", "3").exit_code == 0
    assert (
        initialised("config", "manager", "--name", "Kate", "--email", "kate@agency.test").exit_code
        == 0
    )
    assert initialised("config", "disable").exit_code == 0
    after = path.read_text()
    assert "# our own note about checks" in after
    assert "[check]  # trailing note" in after
    assert "lookback_days = 3" in after
    assert after.index("[agency]") < after.index("[mail]") < after.index("[check]")
    assert initialised("config", "get", "manager.email").stdout.strip() == "kate@agency.test"
    assert initialised("config", "get", "mail.enabled").stdout.strip() == "false"


def test_bad_value_names_the_key_and_changes_nothing(initialised: Cli, home: Path) -> None:
    before = (home / "cpmail.toml").read_text()
    r = initialised("config", "set", "mail.smtp.port", "seventy")
    assert r.exit_code == 2
    assert "mail.smtp.port" in r.stderr
    r = initialised("config", "set", "mail.nonsense", "1")
    assert r.exit_code == 2 and "mail.nonsense" in r.stderr
    r = initialised("config", "set", "mail.send_window", "7-19")
    assert r.exit_code == 2 and "HH:MM-HH:MM" in r.stderr
    r = initialised("config", "smtp", "--host", "mail.agency.test", "--security", "tls")
    assert r.exit_code == 2 and "mail.smtp.security" in r.stderr
    assert (home / "cpmail.toml").read_text() == before


def test_broken_file_names_file_and_line(initialised: Cli, home: Path) -> None:
    path = home / "cpmail.toml"
    lines = path.read_text().splitlines()
    lines.insert(4, "name = = broken")
    path.write_text("\n".join(lines) + "\n")
    r = initialised("config", "show")
    assert r.exit_code == 2
    assert str(path) in r.stderr and "line 5" in r.stderr
    assert "Traceback" not in r.output


def test_wrong_type_in_file_names_the_key(initialised: Cli, home: Path) -> None:
    path = home / "cpmail.toml"
    path.write_text(path.read_text().replace("lookback_days = 7", 'lookback_days = "week"'))
    r = initialised("check", "--dry-run")
    assert r.exit_code == 2
    assert "check.lookback_days" in r.stderr and str(path) in r.stderr


def test_environment_overrides_file(initialised: Cli) -> None:
    r = initialised(
        "config", "get", "mail.subject_prefix", env={"CPMAIL_MAIL_SUBJECT_PREFIX": "[X]"}
    )
    assert r.stdout.strip() == "[X]"
    r = initialised("config", "show", "--json", env={"CPMAIL_CHECK_LOOKBACK_DAYS": "2"})
    import json

    rows = {x["key"]: x for x in json.loads(r.stdout)["settings"]}
    assert rows["check.lookback_days"] == {
        "key": "check.lookback_days",
        "value": 2,
        "source": "env",
    }
    r = initialised("config", "show", env={"CPMAIL_MAIL_SMTP_PORT": "x"})
    assert r.exit_code == 2 and "CPMAIL_MAIL_SMTP_PORT" in r.stderr


def test_init_is_idempotent_and_force_resets(initialised: Cli, home: Path) -> None:
    initialised("config", "set", "agency.name", "Northwind")
    assert initialised("init").exit_code == 0
    assert initialised("config", "get", "agency.name").stdout.strip() == "Northwind"
    assert initialised("init", "--force").exit_code == 0
    assert initialised("config", "get", "agency.name").stdout.strip() == ""
    assert stat.S_IMODE((home / "secrets").stat().st_mode) == 0o700


def test_passcode_file_is_private_and_never_shown(initialised: Cli, home: Path) -> None:
    initialised("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
    r = initialised("staff", "passcode", "JD", "--stdin", input="hunter2-secret\n")
    assert r.exit_code == 0
    path = home / "secrets" / "passcode.JD"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for args in (["config", "show"], ["config", "show", "--json"], ["staff", "list", "--json"]):
        out = initialised(*args)
        assert "hunter2-secret" not in out.output
    assert "passcode.JD = ••••" in initialised("config", "show").stdout


def test_readable_secret_is_refused(initialised: Cli, home: Path) -> None:
    initialised("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
    initialised("staff", "passcode", "JD", "--stdin", input="pw\n")
    path = home / "secrets" / "passcode.JD"
    os.chmod(path, 0o644)
    r = initialised(
        "staff",
        "test",
        "JD",
        env={"CPMAIL_MAIL_TRANSPORT": "smtp", "CPMAIL_MAIL_SMTP_HOST": "127.0.0.1"},
    )
    assert r.exit_code == 2
    assert str(path) in r.stderr and "chmod 600" in r.stderr


def test_secret_repr_hides_value(home: Path) -> None:
    store = SecretStore(home)
    store.set("passcode.X", "topsecret")
    s = store.get("passcode.X")
    assert s is not None and s.reveal() == "topsecret"
    assert "topsecret" not in repr(s) and "topsecret" not in str(s) and "topsecret" not in f"{s}"


def test_no_database_yet_says_run_init(cli: Cli, home: Path) -> None:
    r = cli("staff", "list")
    assert r.exit_code == 2
    assert "cpmail init" in r.stderr
    assert not (home / "cpmail.db").exists()


def test_database_password_is_never_shown(initialised: Cli) -> None:
    url = "postgresql+psycopg://cpmail:pa55word@db.agency.test:5432/cpmail"
    r = initialised("config", "set", "database.url", url)
    assert r.exit_code == 0 and "pa55word" not in r.output
    assert "pa55word" not in initialised("config", "show").output
    for args in (["config", "show", "--json"], ["config", "get", "database.url"]):
        out = initialised(*args).output
        assert "pa55word" not in out and "cpmail:••••@db.agency.test" in out
    r = initialised("config", "set", "database.url", "nonsense:pa55word@x")
    assert r.exit_code == 2 and "pa55word" not in r.output


def test_schema_revision_constant_is_alembics_head() -> None:
    from cpmail.store import SCHEMA_REVISION, head_revision

    assert head_revision() == SCHEMA_REVISION
