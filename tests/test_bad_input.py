"""Bad input anywhere: exit 2, one sentence naming what is at fault, nothing changed.

Each case here once ended in an internal error (exit 70) or a traceback: the
input was out of a range the code did not expect (a year past 9998, a number
too large for the database, "nan" hours, a lone half of a UTF-16 pair in
JSON), or a file was not what it should be (a template not in UTF-8, a file
where the home folder should be).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import DEEP, Cli


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cpmail: "), stderr
    return lines[0]


def dump(home: Path) -> str:
    with sqlite3.connect(home / "cpmail.db") as db:
        return "\n".join(db.iterdump())


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("clients.ndjson", '{"id": "C9", "name": "A\\ud800B"}\n', "half of a character"),
        ("clients.json", '[{"id": "C9", "name": "\\udfff"}]', "half of a character"),
        # in a key, a reference and a choice, which are read apart from other text
        ("clients.json", '[{"id": "C9\\ud800", "name": "A"}]', "half of a character"),
        ("jobs.json", '[{"id": "J9", "client_id": "C\\ud800", "title": "T"}]', "half of a"),
        (
            "calendar_entries.csv",
            "id,title,starts_at\nCE9,Late,9999-12-31T23:59-05:00\n",
            "out of the range of dates",
        ),
    ],
)
def test_an_import_refuses_values_no_database_holds(
    initialised: Cli, home: Path, tmp_path: Path, name: str, content: str, said: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    before = dump(home)
    r = initialised("data", "import", str(path))
    assert r.exit_code == 2, r.output
    line = one_sentence(r.stderr)
    assert name in line and said in line, line
    assert dump(home) == before


NEW = ("staff", "add", "NN", "--name", "N", "--work-email", "n@x.test", "--planned-hours")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("check", "--date", "9999-12-31", "--dry-run"), "--date"),
        (("check", "--date", "0001-01-01"), "--date"),
        (("check", "--date", ""), "--date"),
        (("log", "--since", "0001-01-01"), "--since"),
        # only YYYY-MM-DD, which the help promises (Python also reads these), and never empty
        (("log", "--since", ""), "--since"),
        (("log", "--since", "20261201"), "--since"),
        (("check", "--date", "2026-W48", "--dry-run"), "--date"),
        (("report", "cash-flow", "--as-of", "", "--out", "{home}/x.pdf"), "--as-of"),
        (("check", "--date", "2026-02-30"), "no such day"),
        (("check", "--only", "", "--dry-run"), "--only"),
        (("check", "--skip", " , ", "--dry-run"), "--skip"),
        ((*NEW, "nan"), "--planned-hours"),
        ((*NEW, "inf"), "--planned-hours"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_option(
    initialised: Cli, home: Path, args: tuple[str, ...], option: str
) -> None:
    before = dump(home)
    r = initialised(*(a.replace("{home}", str(home)) for a in args))  # (a file made goes there)
    assert r.exit_code == 2, r.output
    assert option in one_sentence(r.stderr)
    assert dump(home) == before and not (home / "x.pdf").exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ("outbox", "retry", "99999999999999999999999"),
            "ID: 99999999999999999999999 is more than 9223372036854775807, the most it takes; "
            "see `cpmail outbox retry -h`.",
        ),
        (
            ("outbox", "drop", "0"),
            "ID: 0 is less than 1, the least it takes; see `cpmail outbox drop -h`.",
        ),
        (
            ("log", "--limit", "99999999999999999999999"),
            "--limit: 99999999999999999999999 is more than 9223372036854775807, the most it takes",
        ),
    ],
)
def test_numbers_no_database_holds_are_usage_errors(
    initialised: Cli, args: tuple[str, ...], said: str
) -> None:
    r = initialised(*args)
    assert r.exit_code == 2, r.output
    assert said in one_sentence(r.stderr)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ("log", "--limit", "ten"),
            "cpmail: --limit: 'ten' is not a whole number; see `cpmail log -h`.",
        ),
        (("log", "--limit", "1.5"), "--limit: '1.5' is not a whole number"),
        (("outbox", "retry", "abc"), "ID: 'abc' is not a whole number"),
        (
            ("staff", "edit", "NN", "--planned-hours", "six"),
            "--planned-hours: 'six' is not a number",
        ),
        (
            ("config", "smtp", "--host", "h", "--timeout", "soon"),
            "--timeout: 'soon' is not a number",
        ),
        (("chek",), "cpmail: No such command 'chek'. Did you mean 'check'? See `cpmail -h`."),
    ],
)
def test_a_mistyped_value_is_said_in_cpmails_words(
    initialised: Cli, home: Path, args: tuple[str, ...], said: str
) -> None:
    """Not the words of the library that reads the command line ("Input should be a valid
    integer, unable to parse string as an integer"), and one sentence that reads as one."""
    before = dump(home)
    r = initialised(*args)
    assert r.exit_code == 2, r.output
    line = one_sentence(r.stderr)
    assert said in line and "Input should" not in line and "?;" not in line, line
    assert dump(home) == before


def test_a_whole_number_setting_of_inf_is_a_setting_error(initialised: Cli, home: Path) -> None:
    path = home / "cpmail.toml"
    path.write_text(path.read_text(encoding="utf-8") + "\n[mail.smtp]\nport = inf\n")
    r = initialised("config", "show")
    assert r.exit_code == 2, r.output
    assert "mail.smtp.port" in one_sentence(r.stderr)


@pytest.mark.parametrize(
    "tail",
    [
        "a = " + "[" * 5000 + "\n",
        "\n[extra]\nx = " + "{b=" * 3000 + "1" + "}" * 3000 + "\n",
        "\n[alerts]\nurls = " + "[" * 500 + "]" * 500 + "\n",
    ],
    ids=["lists", "inline-tables", "closed-lists"],
)
def test_a_settings_file_nested_too_deeply_names_its_line(
    initialised: Cli, home: Path, tail: str
) -> None:
    """tomllib has no limit of its own: RecursionError, exit 70, for any command."""
    path = home / "cpmail.toml"
    text = path.read_text(encoding="utf-8") + tail
    path.write_text(text, encoding="utf-8")
    line_no = len(text.splitlines())
    for args in (("config", "show"), ("config", "set", "agency.name", "X"), ("status",)):
        r = initialised(*args)
        assert r.exit_code == 2, r.output
        said = one_sentence(r.stderr)
        assert said.startswith(f"cpmail: {path}, line {line_no}, column "), said
        assert "nested more than 100 levels deep" in said
        assert said.endswith(f"fix the file at line {line_no}.")
    assert path.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("deep", ["[" * 5000, "{b=" * 3000 + "1" + "}" * 3000])
def test_no_collection_runs_deep_in_a_nested_settings_file(
    initialised: Cli, home: Path, deep: str, collection_depths: list[int]
) -> None:
    """With no stack left, a collection's finalizers fail and Python prints "Exception
    ignored in ..." over the one-line error."""
    path = home / "cpmail.toml"
    path.write_text(path.read_text(encoding="utf-8") + f"\n[extra]\nx = {deep}\n")
    r = initialised("config", "show")
    assert r.exit_code == 2 and "nested more than 100 levels deep" in one_sentence(r.stderr)
    assert collection_depths, "no collection ran: the test proves nothing"
    assert max(collection_depths) < DEEP, max(collection_depths)


def test_a_demo_with_a_date_out_of_range_leaves_no_home(cli: Cli, home: Path) -> None:
    r = cli("demo", "--date", "9999-12-31")
    assert r.exit_code == 2, r.output
    assert "--date" in one_sentence(r.stderr)
    assert not home.exists()


def test_a_file_where_the_home_should_be(tmp_path: Path) -> None:
    afile = tmp_path / "not-a-folder"
    afile.write_text("x", encoding="utf-8")
    for home in (afile, afile / "below"):
        r = Cli(home)("init")
        assert r.exit_code == 2, r.output
        assert str(afile) in one_sentence(r.stderr)
    assert afile.read_text(encoding="utf-8") == "x"


def test_a_template_that_is_not_utf8_is_named(initialised: Cli, home: Path) -> None:
    override = home / "templates" / "email" / "job-opened.txt"
    override.parent.mkdir(parents=True)
    override.write_bytes(b"{% block subject %}caf\xe9{% endblock %}")
    r = initialised("templates", "preview", "job-opened")
    assert r.exit_code == 2, r.output
    line = one_sentence(r.stderr)
    assert str(override) in line and "not UTF-8" in line, line


@pytest.mark.parametrize(
    "expression",
    ["{{ 1/0 }}", "{{ '%d' % 'x' }}", "{{ 'abc'.index('z') }}"],
    ids=["division", "format", "method"],
)
def test_a_template_that_fails_while_rendering_names_its_file_and_line(
    initialised: Cli, home: Path, expression: str
) -> None:
    """Any error an expression raises: exit 2 naming the file and line, nothing queued —
    not an internal error (exit 70) for every check."""
    override = home / "templates" / "email" / "job-opened.txt"
    override.parent.mkdir(parents=True)
    override.write_text(
        "{% block subject %}Job opened{% endblock %}\n{% block body %}\nHello.\n"
        + expression
        + "\n{% endblock %}\n",
        encoding="utf-8",
    )
    r = initialised("templates", "preview", "job-opened")
    assert r.exit_code == 2, r.output
    line = one_sentence(r.stderr)
    assert f"{override}, line 4" in line, line


def test_a_bad_row_in_a_pull_is_one_sentence_and_no_traceback(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    source = tmp_path / "agency.db"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE s (id TEXT, name TEXT, work_email TEXT)")
        rows = [(f"S{i}", f"P {i}", f"p{i}@x.test") for i in range(300)]
        db.executemany("INSERT INTO s VALUES (?, ?, ?)", [*rows, ("B1", "B", "not an address")])
    assert initialised("config", "set", "source.url", f"sqlite:///{source}").exit_code == 0
    query = "SELECT id, name, work_email FROM s"
    assert initialised("config", "set", "source.tables.staff.query", query).exit_code == 0
    before = dump(home)
    r = initialised("data", "pull")
    assert r.exit_code == 2, r.output
    line = one_sentence(r.stderr)  # nothing printed after it, when the source is closed
    assert "row 301 (id B1), column work_email" in line, line
    assert dump(home) == before


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("staff", "add", "NN", "--name", " ", "--work-email", "n@x.test"), "--name is empty"),
        (("staff", "edit", "JD", "--name", ""), "--name is empty"),
        (("staff", "mute", "JD", ""), "name at least one event"),
        (("config", "set", "mail.smtp.host", "smtp example.com"), "mail.smtp.host"),
        (("config", "set", "mail.smtp.host", "smtp.example.com\nX: y"), "mail.smtp.host"),
        (("config", "set", "database.url", "postgresql+psycopg://u:pw@h:99999/db"), "port"),
    ],
)
def test_empty_or_malformed_values_are_refused(
    initialised: Cli, home: Path, args: tuple[str, ...], said: str
) -> None:
    r = initialised("staff", "add", "JD", "--name", "Jane", "--work-email", "jd@x.test")
    assert r.exit_code == 0, r.output
    before = (dump(home), (home / "cpmail.toml").read_text(encoding="utf-8"))
    r = initialised(*args)
    assert r.exit_code == 2, r.output
    line = one_sentence(r.stderr)
    assert said in line and "pw@" not in line, line
    assert (dump(home), (home / "cpmail.toml").read_text(encoding="utf-8")) == before


def test_a_settings_file_saved_with_a_byte_order_mark_is_read(initialised: Cli, home: Path) -> None:
    path = home / "cpmail.toml"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert initialised("config", "set", "agency.name", "Hartley").exit_code == 0
    r = initialised("config", "get", "agency.name")
    assert r.exit_code == 0 and r.stdout.strip() == "Hartley", r.output


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mail.gmail.token_uri", "http://oauth2.example.com/token"),
        ("mail.gmail.api_base", "http://gmail.example.com"),
        ("mail.microsoft.api_base", "ftp://graph.example.com"),
        ("mail.microsoft.authority_base", "http://10.0.0.1"),
        ("mail.microsoft.authority_base", "https://"),
    ],
)
def test_a_sign_in_or_api_address_in_clear_is_refused_when_set(
    initialised: Cli, home: Path, key: str, value: str
) -> None:
    before = (home / "cpmail.toml").read_bytes()
    r = initialised("config", "set", key, value)
    assert r.exit_code == 2, r.output
    assert key in one_sentence(r.stderr) and "https://" in r.stderr
    assert (home / "cpmail.toml").read_bytes() == before


def test_a_local_stand_in_may_use_http(initialised: Cli) -> None:
    for key in ("mail.gmail.token_uri", "mail.microsoft.api_base"):
        r = initialised("config", "set", key, "http://127.0.0.1:8080/x")
        assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "args",
    [
        ("staff", "edit", "Y" * 100_000, "--name", "A"),
        ("report", "invoice", "B" * 100_000, "--out", "{home}/x.pdf"),
    ],
)
def test_a_huge_value_is_not_echoed_whole(
    initialised: Cli, home: Path, args: tuple[str, ...]
) -> None:
    r = initialised(*(a.replace("{home}", str(home)) for a in args))
    assert r.exit_code == 2, r.output[:300]
    assert len(r.stderr) < 400 and "… (100000 characters)" in r.stderr, r.stderr[:400]


def test_a_setting_from_the_environment_not_in_utf8_is_exit_2(initialised: Cli, home: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "CPMAIL_HOME": str(home), "CPMAIL_MAIL_SUBJECT_PREFIX": "[C\udce9]"}
    r = subprocess.run(
        [sys.executable, "-m", "cpmail", "config", "show"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr
    assert "CPMAIL_MAIL_SUBJECT_PREFIX is not UTF-8" in one_sentence(r.stderr)


def test_a_bad_address_in_the_settings_file_names_the_key(initialised: Cli, home: Path) -> None:
    path = home / "cpmail.toml"
    path.write_text(
        path.read_text(encoding="utf-8") + '\n[helpdesk]\nemail = "not-an-email"\n',
        encoding="utf-8",
    )
    r = initialised("config", "show")
    assert r.exit_code == 2, r.output
    assert "cpmail.toml: helpdesk.email: 'not-an-email' is not an e-mail address" in one_sentence(
        r.stderr
    )


def test_a_mail_folder_that_cannot_be_made_keeps_the_mail_and_is_exit_3(
    initialised: Cli, home: Path
) -> None:
    """Not a bad setting refused before anything (exit 2): the message is queued and waits."""
    assert initialised("config", "set", "mail.file.dir", "/proc/no-such-place").exit_code == 0
    assert initialised("config", "manager", "--name", "Max", "--email", "max@x.test").exit_code == 0
    r = initialised("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@x.test")
    assert r.exit_code == 0, r.output
    assert initialised("config", "set", "user.staff", "JD").exit_code == 0
    r = initialised("message", "manager", "hello")
    assert r.exit_code == 3, r.output
    assert one_sentence(r.stderr).startswith("cpmail: mail.file.dir: cannot make the folder")
    assert "hello" not in r.stdout
    rows = json.loads(initialised("outbox", "--json").stdout)
    assert [row["status"] for row in rows] == ["deferred"]


def test_the_end_of_input_at_a_prompt_is_exit_2_and_changes_nothing(
    initialised: Cli, home: Path
) -> None:
    """Ctrl-D at the passcode prompt, on a real terminal (a pty): not click's "Aborted!"."""
    import os
    import pty
    import subprocess
    import sys
    import time

    r = initialised("staff", "add", "PQ", "--name", "Pat Q", "--work-email", "pq@x.test")
    assert r.exit_code == 0, r.output
    main, side = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpmail", "--home", str(home), "staff", "passcode", "PQ"],
        stdin=side,
        stdout=side,
        stderr=side,
        close_fds=True,
        start_new_session=True,
    )
    os.close(side)
    seen = b""
    deadline = time.monotonic() + 30
    while b"Passcode for PQ" not in seen and time.monotonic() < deadline:  # the prompt
        seen += os.read(main, 1024)
    time.sleep(0.5)  # reading now
    os.write(main, b"\x04")
    proc.wait(timeout=30)
    try:
        while chunk := os.read(main, 1024):
            seen += chunk
    except OSError:
        pass  # the other end closed
    os.close(main)
    said = seen.decode(errors="replace")
    assert proc.returncode == 2, said
    assert "no answer was given at the prompt" in said and "Aborted" not in said, said
    assert initialised("staff", "passcode", "PQ", "--stdin", input="x\n").exit_code == 0


def test_errors_name_what_is_at_fault_not_another_option(
    initialised: Cli, home: Path, tmp_path: Path
) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("x", encoding="utf-8")
    r = initialised("report", "cash-flow", "--out", str(in_the_way / "x.pdf"))
    assert r.exit_code == 2, r.output
    said = one_sentence(r.stderr)
    assert str(in_the_way) in said and "--home" not in said
    # (config set refuses an unknown ID: here it comes from the environment, or an edited file)
    assert initialised("config", "manager", "--name", "Max", "--email", "max@x.test").exit_code == 0
    r = initialised("message", "manager", "hello", env={"CPMAIL_USER_STAFF": "ZZ"})
    assert r.exit_code == 2, r.output
    assert "[user] staff = 'ZZ' names no staff member" in one_sentence(r.stderr)
    r = initialised("message", "manager", "hello", "--as", "YY")
    assert r.exit_code == 2 and "no staff member 'YY'" in one_sentence(r.stderr)


def test_init_over_a_settings_path_that_is_a_folder_changes_nothing(cli: Cli, home: Path) -> None:
    (home / "cpmail.toml").mkdir(parents=True, mode=0o755)
    r = cli("init")
    assert r.exit_code == 2, r.output
    assert str(home / "cpmail.toml") in one_sentence(r.stderr)
    assert (home / "cpmail.toml").stat().st_mode & 0o777 == 0o755  # it was made 0600
    assert not (home / "cpmail.db").exists()


@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_a_template_override_that_cannot_be_read_is_named(
    initialised: Cli, home: Path, kind: str
) -> None:
    """It was passed over silently, the built-in used instead of what the agency wrote."""
    override = home / "templates" / "email" / "job-opened.txt"
    override.parent.mkdir(parents=True)
    if kind == "folder":
        override.mkdir()
    else:
        override.symlink_to(home / "gone.txt")
    for args in (("templates", "preview", "job-opened"), ("check", "--dry-run")):
        r = initialised(*args)
        assert r.exit_code == 2, r.output
        assert str(override) in one_sentence(r.stderr)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("log", "--limit", "0"), "--limit"),
        (("outbox", "retry", "abc"), "ID"),
        (("check", "--nonsense"), "--nonsense"),
        (("nosuchcommand",), "nosuchcommand"),
        (("staff", "add"), "ID"),
    ],
)
def test_a_mistyped_option_or_value_is_one_sentence_naming_it(
    initialised: Cli, args: tuple[str, ...], named: str
) -> None:
    """As every other bad input: one sentence, exit 2, and where to look."""
    r = initialised(*args)
    assert r.exit_code == 2, r.output
    line = one_sentence(r.stderr)
    assert named in line and line.startswith("cpmail: ") and "-h`" in line, line
    assert "Usage:" not in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (("check", "--date"), "cpmail check -h"),
        (("check", "-q", "--only"), "cpmail check -h"),
        (("staff", "list", "--json=yes"), "cpmail staff list -h"),
        (("--home",), "cpmail -h"),
    ],
)
def test_an_option_missing_its_value_points_to_its_own_command(
    initialised: Cli, args: tuple[str, ...], where: str
) -> None:
    """The parser says these without naming a command: the help named is that of the command."""
    r = initialised(*args)
    assert r.exit_code == 2, r.output
    assert f"see `{where}`" in one_sentence(r.stderr), r.stderr
