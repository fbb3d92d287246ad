"""cpmail.toml: comments survive, values are validated, the environment wins, errors name lines."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

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
    # a window that would never open, and a time past midnight
    r = initialised("config", "set", "mail.send_window", "07:00-07:00")
    assert r.exit_code == 2 and "never opens" in r.stderr, r.output
    r = initialised("config", "set", "mail.send_window", "07:00-24:59")
    assert r.exit_code == 2 and "mail.send_window" in r.stderr, r.output
    r = initialised("config", "smtp", "--host", "mail.agency.test", "--security", "tls")
    assert r.exit_code == 2 and "mail.smtp.security" in r.stderr
    assert (home / "cpmail.toml").read_text() == before


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("ssl", 465), ("none", 25)])
def test_config_smtp_without_a_port_takes_the_one_its_security_is_offered_on(
    initialised: Cli, home: Path, security: str, port: int
) -> None:
    """TLS from the first byte on 587 would wait for a greeting that never comes."""
    r = initialised("config", "smtp", "--host", "mail.agency.test", "--security", security)
    assert r.exit_code == 0, r.output
    assert f"mail.agency.test:{port} ({security})" in r.stdout
    assert initialised("config", "get", "mail.smtp.port").stdout.strip() == str(port)
    r = initialised(
        "config", "smtp", "--host", "mail.agency.test", "--security", security, "--port", "2525"
    )
    assert (
        r.exit_code == 0 and initialised("config", "get", "mail.smtp.port").stdout.strip() == "2525"
    )


@pytest.mark.parametrize("host", ["", "  "])
def test_config_smtp_with_no_host_is_refused(initialised: Cli, home: Path, host: str) -> None:
    before = (home / "cpmail.toml").read_text()
    r = initialised("config", "smtp", "--host", host)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("cpmail: --host: give the SMTP server's name") and not r.stdout
    assert (home / "cpmail.toml").read_text() == before


@pytest.mark.parametrize(
    "bad",
    ["name = = broken", 'name = "no end', "lookback_days = 7", 'name = "\\q"', "[broken"],
    ids=["two-equals", "unterminated", "duplicate-key", "bad-escape", "open-table"],
)
def test_broken_file_names_file_and_line(initialised: Cli, home: Path, bad: str) -> None:
    path = home / "cpmail.toml"
    lines = path.read_text().splitlines()
    lines.insert(4, bad)
    if bad == "lookback_days = 7":  # a key the [check] table has already
        lines.insert(lines.index("lookback_days = 7") + 1, bad)
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    line = text[: text.index(bad, 0 if bad != "lookback_days = 7" else text.index(bad) + 1)]
    line_no = line.count("\n") + 1
    for command in (("config", "show"), ("config", "set", "check.lookback_days", "3")):
        r = initialised(*command)
        assert r.exit_code == 2
        assert r.stderr.startswith(f"cpmail: {path}, line {line_no}, column "), r.stderr
        assert r.stderr.rstrip().endswith(f"fix the file at line {line_no}.")
        assert "init --force" not in r.stderr  # (it would put the defaults in its place)
        assert r.stderr.count("\n") == 1 and ".;" not in r.stderr
        assert "Traceback" not in r.output
        assert path.read_text() == text


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        ('subject_prefix = "[C&P]', "a quote on line 5 is not closed"),
        ("subject_prefix = '[C&P]", "a quote on line 5 is not closed"),
        ("[mail]\x00", "a NUL character (byte 0)"),
        ('name = "a\x00b"', "a NUL character (byte 0)"),
        ('name = "a\x07b"', "a control character (U+0007) inside quotes"),
        ("# a note\x01", "a control character (U+0001) in a comment"),
        # a value written without its quotes, as in other settings files
        ("name = Hartley & Pine  # ours", "'Hartley & Pine' is not a value TOML knows: text goes"),
        ("dir = mail/out", """text goes in quotes ("mail/out")"""),
        ("send_window = 07:00-19:00", """text goes in quotes ("07:00-19:00")"""),
        ("enabled = yes", "'yes' is not a value TOML knows: write true or false, in small"),
        ("enabled = True", "write true or false, in small letters"),
        ("lookback_days = 7x", "a number is written alone, and text goes in quotes"),
    ],
    ids=[
        *("double-quote", "single-quote", "nul", "nul-in-quotes", "bell", "in-a-comment"),
        *("words", "path", "window", "yes", "True", "number"),
    ],
)
def test_a_broken_line_is_said_in_plain_words(
    initialised: Cli, home: Path, bad: str, said: str
) -> None:
    path = home / "cpmail.toml"
    lines = path.read_text().splitlines()
    lines.insert(4, bad)
    path.write_text("\n".join(lines) + "\n")
    r = initialised("config", "show")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"cpmail: {path}, line 5, column "), r.stderr
    assert said in r.stderr
    assert r.stderr.rstrip().endswith("fix the file at line 5.")
    for tomlkit_words in ("Control characters", "\\u", "ends before", "Unexpected", "Invalid"):
        assert tomlkit_words not in r.stderr


@pytest.mark.parametrize(
    ("text", "line", "said"),
    [
        ('name = "x"\nnote = """two\nlines\n', 2, "a quote opened on line 2 is not closed"),
        ("a = [\n  1,\n  2,\n", 1, "a [ or { opened on line 1 is not closed"),
        ('name = "x\\"" # [\nb = { c = [1,\n', 2, "a [ or { opened on line 2 is not closed"),
    ],
    ids=["multi-line-text", "list", "inline-table"],
)
def test_a_file_that_ends_inside_a_value_names_where_it_began(
    initialised: Cli, home: Path, text: str, line: int, said: str
) -> None:
    path = home / "cpmail.toml"
    path.write_text(text)
    r = initialised("config", "show")
    assert r.exit_code == 2
    said = f"{said} before the file ends; fix the file at line {line}."
    assert r.stderr == f"cpmail: {path}, line {line}: {said}\n"


def test_init_force_keeps_the_file_it_replaces(initialised: Cli, home: Path) -> None:
    """A file broken by one quote is fixed where it is wrong, not replaced by the defaults:
    if it is replaced all the same, the old one is kept beside it."""
    path = home / "cpmail.toml"
    initialised("config", "set", "agency.name", "Northwind")
    initialised("config", "set", "manager.email", "kate@agency.test")
    broken = path.read_text().replace('subject_prefix = "[C&P]"', 'subject_prefix = "[C&P]')
    path.write_text(broken)
    r = initialised("config", "show")
    assert r.exit_code == 2 and "init --force" not in r.stderr
    r = initialised("init", "--force")
    assert r.exit_code == 0, r.output
    copy = home / "cpmail.toml.bak"
    assert f"Kept the old settings as {copy}\n" in r.stdout
    assert copy.read_text() == broken
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert initialised("config", "get", "agency.name").stdout.strip() == ""
    # the defaults replaced by the defaults: nothing to keep, and the copy stays as it was
    r = initialised("init", "--force")
    assert r.exit_code == 0 and "Kept" not in r.stdout
    assert copy.read_text() == broken
    # a copy is never written over: the next goes beside it
    initialised("config", "set", "agency.name", "Hartley")
    second = path.read_text()
    r = initialised("init", "--force")
    assert f"Kept the old settings as {home / 'cpmail.toml.bak.2'}\n" in r.stdout
    assert (home / "cpmail.toml.bak.2").read_text() == second
    assert copy.read_text() == broken


@pytest.mark.parametrize(
    ("text", "key", "value", "kept"),
    [
        (
            "mail = { enabled = true, digest = false }\n",
            "mail.smtp.host",
            "smtp.example.com",
            {"mail.enabled": "true", "mail.digest": "false"},
        ),
        (
            "events = { job-opened = { enabled = false } }\n",
            "events.missing-time.enabled",
            "false",
            {"events.job-opened.enabled": "false"},
        ),
        (
            "# ours\n[mail]\nsmtp = { port = 2525 }\n",
            "mail.smtp.host",
            "smtp.example.com",
            {"mail.smtp.port": "2525"},
        ),
    ],
    ids=["table-in-inline", "table-in-nested-inline", "key-in-inline"],
)
def test_a_setting_goes_into_an_inline_table(
    cli: Cli, home: Path, text: str, key: str, value: str, kept: dict[str, str]
) -> None:
    import tomllib

    home.mkdir(parents=True)
    path = home / "cpmail.toml"
    path.write_text(text)
    r = cli("config", "set", key, value)
    assert r.exit_code == 0, r.output
    tomllib.loads(path.read_text())  # still TOML
    for k, v in {key: value, **kept}.items():
        assert cli("config", "get", k).stdout.strip() == v, (k, path.read_text())
    after = path.read_text()
    assert after.count("\n") == text.count("\n")  # into the inline table, which stays
    assert after.split("{", 1)[0] == text.split("{", 1)[0]


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


# ---------------------------------------------------------------- private files


def _cpmail(home: Path, *args: str, input: str | None = None) -> None:
    """Run `cpmail` in a process of its own whose umask is 000."""
    r = subprocess.run(
        [sys.executable, "-m", "cpmail", "--home", str(home), *args],
        input=input,
        capture_output=True,
        text=True,
        umask=0,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CPMAIL_")},
    )
    assert r.returncode == 0, (args, r.stdout, r.stderr)


def test_everything_cpmail_writes_is_private_under_umask_000(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    _cpmail(home, "init")
    _cpmail(home, "staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
    _cpmail(home, "staff", "passcode", "JD", "--stdin", input="pw\n")
    _cpmail(home, "config", "set", "user.staff", "JD")
    _cpmail(home, "config", "manager", "--name", "Pat", "--email", "pat@agency.test")
    _cpmail(home, "message", "manager", "Lunch?")
    _cpmail(home, "config", "set", "mail.file.dir", "out/eml")
    _cpmail(home, "staff", "test", "JD")
    eml = [*home.rglob("*.eml")]
    assert len(eml) == 2 and {p.parent for p in eml} == {home / "mail", home / "out" / "eml"}
    modes = {
        str(p.relative_to(home)): stat.S_IMODE(p.stat().st_mode) for p in [home, *home.rglob("*")]
    }
    assert modes["."] == 0o700
    assert modes["cpmail.toml"] == 0o600
    assert modes["cpmail.db"] == 0o600
    assert modes["mail"] == modes["out"] == modes["out/eml"] == modes["secrets"] == 0o700
    assert modes["secrets/passcode.JD"] == 0o600
    assert {m for p, m in modes.items() if p.endswith(".eml")} == {0o600}
    assert {p: m for p, m in modes.items() if m & 0o077} == {}


def test_a_new_sqlite_database_named_by_its_url_is_private(cli: Cli, tmp_path: Path) -> None:
    """Not only cpmail.db in the home: any SQLite file `init` makes is 0600, in a 0700
    folder it makes, whatever the umask; a file that is there keeps its mode."""
    folder = tmp_path / "data" / "db"
    url = f"sqlite:///{folder / 'agency.db'}"
    old = os.umask(0o022)
    try:
        r = cli("init", env={"CPMAIL_DATABASE_URL": url})
        assert r.exit_code == 0, r.output
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert "agency.db" in modes and set(modes.values()) == {0o600}, modes  # (-wal, -shm)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
        (folder / "agency.db").chmod(0o640)  # the owner's choice: shared with a group
        r = cli("init", env={"CPMAIL_DATABASE_URL": url})
        assert r.exit_code == 0, r.output
        assert stat.S_IMODE((folder / "agency.db").stat().st_mode) == 0o640
        # `db upgrade` making a new database makes it private too
        other = f"sqlite:///{folder / 'other.db'}"
        r = cli("db", "upgrade", env={"CPMAIL_DATABASE_URL": other})
        assert r.exit_code == 0, r.output
        made = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.glob("other.db*")}
        assert "other.db" in made and set(made.values()) == {0o600}, made
    finally:
        os.umask(old)


def test_settings_file_is_made_0600_by_every_write(initialised: Cli, home: Path) -> None:
    path = home / "cpmail.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for args in (
        ("config", "set", "agency.name", "Northwind"),
        ("config", "smtp", "--host", "mail.agency.test"),
        ("config", "disable"),
        ("init",),
    ):
        path.chmod(0o644)
        assert initialised(*args).exit_code == 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, args
    mail = home / "mail"
    mail.chmod(0o755)
    assert initialised("init").exit_code == 0
    assert stat.S_IMODE(mail.stat().st_mode) == 0o700


# ---------------------------------------------------------------- config wording


def test_config_set_prints_the_key_as_typed(initialised: Cli) -> None:
    initialised("staff", "add", "AL", "--name", "Al Lee", "--work-email", "al@agency.test")
    r = initialised("config", "set", "user.staff", "AL")
    assert r.exit_code == 0 and r.stdout == "user.staff = AL\n"
    assert initialised("config", "set", "mail.digest", "yes").stdout == "mail.digest = true\n"


def test_a_staff_id_that_does_not_exist_is_refused(initialised: Cli, home: Path) -> None:
    initialised("staff", "add", "AL", "--name", "Al Lee", "--work-email", "al@agency.test")
    before = (home / "cpmail.toml").read_text()
    for key, value in (
        ("user.staff", "ZZ"),
        ("reports.cash-flow.to", "AL,ZZ"),
        ("events.job-opened.notify", "team,staff:ZZ"),
    ):
        r = initialised("config", "set", key, value)
        assert r.exit_code == 2, r.output
        assert "'ZZ'" in r.stderr and key in r.stderr and "cpmail staff add ZZ" in r.stderr
    assert (home / "cpmail.toml").read_text() == before
    # The command the error names makes the same `config set` work.
    r = initialised("staff", "add", "ZZ", "--name", "Zoe Z", "--work-email", "z@agency.test")
    assert r.exit_code == 0
    assert initialised("config", "set", "user.staff", "ZZ").exit_code == 0
    assert initialised("config", "set", "reports.cash-flow.to", "AL,ZZ").exit_code == 0
    assert initialised("config", "set", "user.staff", "").exit_code == 0  # unset: no check


def test_config_smtp_leaves_a_blank_line_before_the_next_table(
    initialised: Cli, home: Path
) -> None:
    path = home / "cpmail.toml"
    assert initialised("config", "smtp", "--host", "mail.agency.test").exit_code == 0
    text = path.read_text()
    assert "verify = true\n\n[check]" in text
    for line_no, line in enumerate(text.splitlines()):
        if line.startswith("[") and line_no:
            assert text.splitlines()[line_no - 1] == "", line
    # A second write keeps it so and adds no blank lines inside the table.
    assert initialised("config", "set", "mail.smtp.connections", "2").exit_code == 0
    assert "verify = true\nconnections = 2\n\n[check]" in path.read_text()
    assert not path.read_text().endswith("\n\n")


def test_docs_show_what_config_smtp_writes(initialised: Cli, home: Path) -> None:
    import tomllib

    doc = (Path(__file__).parent.parent / "docs" / "smtp.md").read_text()
    command = re.search(r"^cpmail config smtp (.*)$", doc, re.M)
    block = re.search(r"`config smtp` writes.*?```toml\n(.*?)```", doc, re.S)
    assert command and block
    r = initialised("config", "smtp", *command.group(1).split())
    assert r.exit_code == 0, r.output
    written = tomllib.loads((home / "cpmail.toml").read_text())
    shown = tomllib.loads(block.group(1))
    assert shown["mail"]["smtp"] == written["mail"]["smtp"]
    assert shown["mail"]["transport"] == written["mail"]["transport"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://cp:Se/cret@db:5432/cp", "postgresql+psycopg://cp:••••@db:5432/cp"),
        ("postgresql+psycopg://cp:Se cret@db/cp", "postgresql+psycopg://cp:••••@db/cp"),
        ("postgresql+psycopg://cp:p@ss@db/cp", "postgresql+psycopg://cp:••••@db/cp"),
        ("postgresql+psycopg://cp:p%40ss@db/cp", "postgresql+psycopg://cp:••••@db/cp"),
        ("postgresql+psycopg://cp:a?b#c:d@db/cp", "postgresql+psycopg://cp:••••@db/cp"),
        ("postgresql+psycopg://cp:p@ss/x@db/cp", "postgresql+psycopg://cp:••••@db/cp"),
        (
            "postgresql+psycopg://cp@db/cp?password=s3/c r&sslmode=require",
            "postgresql+psycopg://cp@db/cp?password=••••&sslmode=require",
        ),
        (
            "postgresql://cp@db/cp?sslmode=require&PassWord=a&b",
            "postgresql://cp@db/cp?sslmode=require&PassWord=••••",
        ),
        ("sqlite:////srv/a@b/cpmail.db", "sqlite:////srv/a@b/cpmail.db"),
        ("https://graph.microsoft.com", "https://graph.microsoft.com"),
        ("postgresql://db/cp?application_name=a@b", "postgresql://••••"),
        # an @ in a query's password: what follows the last @ is its end, not a host
        (
            "postgresql+psycopg://127.0.0.1:5432/db?password=Kv8s@Tr4Pq7",
            "postgresql+psycopg://127.0.0.1:••••",
        ),
        ("postgresql+psycopg://h/db?password=sec@ret&host=h", "postgresql+psycopg://••••"),
        # ODBC and others spell it PWD; a value may hold one (odbc_connect, libpq options)
        ("mssql+pyodbc://sa@dsn?PWD=S3cr&x=1", "mssql+pyodbc://sa@dsn?PWD=••••&x=1"),
        ("hana://u@h?pwd=S3cr", "hana://u@h?pwd=••••"),
        (
            "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BX%7D%3BUID%3Dsa%3BPWD%3DS3cr",
            "mssql+pyodbc:///?odbc_connect=••••",
        ),
        (
            "mssql+pyodbc:///?odbc_connect=DRIVER={X};UID=sa;PWD=S3cr",
            "mssql+pyodbc:///?odbc_connect=••••",
        ),
        ("postgresql://u@h/db?options=-c%20password%3DS3cr", "postgresql://u@h/db?options=••••"),
    ],
)
def test_redact_url_hides_the_password_whatever_it_holds(url: str, shown: str) -> None:
    from cpmail.settings import redact, redact_url

    assert redact_url(url) == shown
    assert redact(f"cannot open {url}") == f"cannot open {shown}"


def test_exports_reports_and_templates_are_private_under_umask_000(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    _cpmail(home, "demo", "--date", "2026-11-24")
    out = tmp_path / "out"
    out.mkdir()
    _cpmail(home, "data", "export", "billings", "--out", str(out / "billings.csv"))
    _cpmail(home, "report", "cash-flow", "--out", str(out / "cash-flow.pdf"))
    _cpmail(home, "templates", "export", str(out / "templates"))
    written = [p for p in out.rglob("*")]
    assert len(written) > 10
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in written}
    assert {p: m for p, m in modes.items() if m & 0o077} == {}
    demo_data = [p for p in home.rglob("*.csv")]
    assert all(not stat.S_IMODE(p.stat().st_mode) & 0o077 for p in demo_data)


def test_settings_set_at_the_same_time_are_all_kept(initialised: Cli, home: Path) -> None:
    """Six `config set` processes at once, each a different key: none is lost."""
    import os
    import subprocess
    import sys

    wanted = {
        "agency.name": "Hartley",
        "manager.name": "Mary",
        "check.lookback_days": "5",
        "outbox.max_attempts": "6",
        "outbox.max_age_hours": "50",
        "mail.subject_prefix": "[X]",
    }
    env = {**os.environ, "CPMAIL_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cpmail", "config", "set", key, value],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for key, value in wanted.items()
    ]
    assert [p.wait(timeout=60) for p in procs] == [0] * len(procs)
    got = {key: initialised("config", "get", key).stdout.strip() for key in wanted}
    assert got == wanted


def test_the_other_kinds_of_mail_are_named_where_they_are_made() -> None:
    """`log --event` takes these; each is the event its own module writes."""
    from cpmail import check, events, message
    from cpmail.reports import send
    from cpmail.triggers import cashflow

    made = {check.DIGEST, check.FAILURE_SUMMARY, message.EVENT, send.EVENT, cashflow.EVENT, "test"}
    assert made == set(events.OTHER_MAIL)


@pytest.mark.parametrize(
    ("backend", "env", "words"),
    [
        ("keyring.backends.null.Keyring", {}, "the keyring (null) did not keep it"),
        (
            "keyring.backends.SecretService.Keyring",
            {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"},
            "the keyring (SecretService)",
        ),
    ],
    ids=["keeps-nothing", "service-away"],
)
def test_a_keyring_that_cannot_keep_a_passcode_says_so(
    initialised: Cli, backend: str, env: dict[str, str], words: str
) -> None:
    """Not "Stored" for a passcode kept nowhere, not an internal error for a keyring away."""
    r = initialised("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
    assert r.exit_code == 0, r.output
    assert initialised("config", "set", "secrets.backend", "keyring").exit_code == 0
    import os
    import subprocess
    import sys

    # a process of its own: the keyring library picks its backend once a process
    proc = subprocess.run(
        [sys.executable, "-m", "cpmail", "staff", "passcode", "JD", "--stdin"],
        input="pw-Q7x9Kp2\n",
        env={
            **os.environ,
            "CPMAIL_HOME": str(initialised.home),
            "PYTHON_KEYRING_BACKEND": backend,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said
    assert "Stored" not in said and words in proc.stderr and "secrets.backend" in proc.stderr
    assert "Q7x9Kp2" not in said


@pytest.mark.parametrize("how", ["missing", "dangling link"])
def test_a_home_in_use_without_its_settings_file_sends_nothing(
    initialised: Cli, home: Path, how: str
) -> None:
    """It ran on the defaults: the day's mail written to the file transport from
    cpmail@localhost and recorded as sent, status HEALTHY."""
    r = initialised("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
    assert r.exit_code == 0, r.output
    settings = home / "cpmail.toml"
    settings.rename(home / "elsewhere.toml")
    if how == "dangling link":
        settings.symlink_to(home / "gone" / "cpmail.toml")
    for args in (("check", "--dry-run"), ("check",), ("status",), ("config", "show")):
        r = initialised(*args)
        assert r.exit_code in (2, 3), (args, r.output)
        assert str(settings) in r.stderr and "internal error" not in r.output, r.output
    r = initialised("config", "set", "mail.subject_prefix", "X")
    assert r.exit_code == 2, r.output
    assert settings.is_symlink() == (how == "dangling link")  # not replaced by a new file
    assert not (home / "mail").exists() or not any((home / "mail").iterdir())


def test_a_mistyped_setting_variable_is_refused_like_an_unknown_key(initialised: Cli) -> None:
    """CPMAIL_MAIL_ENABLE (one letter short) was ignored, and the mail it meant to hold
    back was sent; an unknown key in the file stops every command."""
    r = initialised("check", "--dry-run", env={"CPMAIL_MAIL_ENABLE": "false"})
    assert r.exit_code == 2, r.output
    assert "CPMAIL_MAIL_ENABLE" in one_line(r.stderr), r.stderr
    r = initialised("config", "show", env={"CPMAIL_EVENTS_JOB_OPENED_ENABLE": "false"})
    assert r.exit_code == 2 and "CPMAIL_EVENTS_JOB_OPENED_ENABLE" in r.stderr, r.output
    # the real names work, and CPMAIL_ names outside the settings' sections are not ours
    r = initialised(
        "config", "get", "mail.enabled", env={"CPMAIL_MAIL_ENABLED": "false", "CPMAIL_X": "1"}
    )
    assert r.exit_code == 0 and "false" in r.stdout.lower(), r.output


def one_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_db_upgrade_does_not_make_a_home_without_its_settings(cli: Cli, home: Path) -> None:
    """It made cpmail.db alone, and every later command refused the home."""
    r = cli("db", "upgrade")
    assert r.exit_code == 2 and "cpmail init" in r.stderr, r.output
    assert not (home / "cpmail.db").exists()


@pytest.mark.postgres
def test_a_home_whose_database_is_elsewhere_needs_no_settings_file(
    cli: Cli, home: Path, pg_url: str
) -> None:
    env = {"CPMAIL_DATABASE_URL": pg_url}
    assert cli("init", env=env).exit_code == 0
    (home / "cpmail.toml").unlink()
    (home / "cpmail.db").write_bytes(b"left over")  # a file of an earlier set-up
    r = cli("staff", "list", env=env)
    assert r.exit_code == 0, r.output


def test_extra_holidays_are_yyyy_mm_dd_only(initialised: Cli) -> None:
    for bad in ("20261224", "2026-W52-4", "2026-12-24,20261231"):
        r = initialised("config", "set", "check.extra_holidays", bad)
        assert r.exit_code == 2 and "YYYY-MM-DD" in r.stderr, (bad, r.output)
    assert initialised("config", "set", "check.extra_holidays", "2026-12-24").exit_code == 0


def test_a_bad_item_of_a_list_is_named_once(initialised: Cli, home: Path) -> None:
    (home / "cpmail.toml").write_text('[check]\nextra_holidays = ["x"]\n', encoding="utf-8")
    r = initialised("status")
    assert r.exit_code != 0 and r.stderr.count("got") == 1, r.stderr
    assert "check.extra_holidays" in r.stderr and "'x'" in r.stderr


def test_holidays_are_a_country_the_holidays_package_knows(initialised: Cli, home: Path) -> None:
    for bad in ("ZZ", "HolidaysAX", "U S"):
        r = initialised("config", "set", "check.holidays", bad)
        assert r.exit_code == 2 and "check.holidays" in r.stderr, (bad, r.output)
    for good, kept in (("gb", "GB"), ("USA", "USA"), ("", "")):
        assert initialised("config", "set", "check.holidays", good).exit_code == 0, good
        assert initialised("config", "get", "check.holidays").stdout.strip() == kept, good


def test_a_database_whose_driver_is_not_installed_is_a_setting_to_fix(cli: Cli) -> None:
    """Not an internal error (exit 70): one sentence naming the driver, exit 2."""
    import importlib.util

    missing = {
        "postgresql+pg8000": "pg8000",
        "postgresql+psycopg2": "psycopg2",
        "mysql+mysqldb": "MySQLdb",
        "sqlite+pysqlcipher": "pysqlcipher3",
    }
    urls = {
        "sqlite+pysqlcipher": "sqlite+pysqlcipher://:pa55word@//tmp/never-made.db",
    }
    for driver, module in missing.items():
        if importlib.util.find_spec(module) is not None:
            continue  # installed here: not the case this tests
        url = urls.get(driver, f"{driver}://u:pa55word@127.0.0.1:1/test")
        env = {"CPMAIL_DATABASE_URL": url}
        for args in (("init",), ("check", "--date", "2026-11-24"), ("log",)):
            r = cli(*args, env=env)
            assert r.exit_code == 2, (url, args, r.output)
            assert f"'{driver}'" in r.stderr and "not installed" in r.stderr, r.stderr
            assert "pa55word" not in r.output and "internal error" not in r.stderr
        r = cli("status", "--json", env=env)
        doc = json.loads(r.stdout)
        assert "not installed" in doc["database"]["error"], doc["database"]


@pytest.mark.parametrize("key", ["database.url", "source.url"])
def test_a_database_url_with_an_impossible_port_is_refused_when_set(
    initialised: Cli, home: Path, key: str
) -> None:
    before = (home / "cpmail.toml").read_bytes()
    for url in ("postgresql+psycopg://u@db:0/x", "postgresql+psycopg://u@db:99999/x"):
        r = initialised("config", "set", key, url)
        assert r.exit_code == 2 and key in r.stderr and "not a port" in r.stderr, r.output
    r = initialised("config", "set", key, "postgresql+psycopg://u:pa55word@db:abc/x")
    assert r.exit_code == 2 and "pa55word" not in r.output, r.output
    assert (home / "cpmail.toml").read_bytes() == before


@pytest.mark.parametrize("tail", ["[extra]\nx = [\n", '[extra]\nx = "no end'])
def test_a_file_that_stops_mid_value_says_so(initialised: Cli, home: Path, tail: str) -> None:
    """Not the parser's "Unexpected character: '\\x00'" (its mark for the end of the text)."""
    path = home / "cpmail.toml"
    path.write_text(path.read_text() + tail)
    r = initialised("status")
    assert r.exit_code == 2 and str(path) in r.stderr, r.output
    assert "\\x00" not in r.stderr and "before the file ends" in r.stderr, r.stderr
    assert r.stderr.rstrip().endswith(f"fix the file at line {len(path.read_text().splitlines())}.")


def test_the_machines_time_zone_keeps_its_summer_time(
    initialised: Cli, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without agency.timezone, a meeting in March is placed with March's offset, not with
    the offset of the day the check runs (an invitation an hour off)."""
    import datetime as dt

    monkeypatch.setenv("TZ", "America/New_York")
    from cpmail.settings import Settings

    tz = Settings.load(home).tz()
    assert dt.datetime(2027, 3, 15, 9, tzinfo=tz).utcoffset() == dt.timedelta(hours=-4)
    assert dt.datetime(2026, 11, 28, 9, tzinfo=tz).utcoffset() == dt.timedelta(hours=-5)
