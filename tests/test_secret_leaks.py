"""No secret is ever shown or mailed, whatever it holds and wherever it was given.

Every secret form — an SMTP passcode, OAuth tokens, OAuth client secrets, a
database password holding ``/``, a space, ``@`` (encoded or not), ``?``, ``#``
or ``:``, a ``?password=`` in the query, a URL password in ``source.url`` and
tokens in ``alerts.urls`` — is given in ``cpmail.toml`` (through ``config set``
or by hand) or in the environment. Then the commands run for real (SQLite or
the PostgreSQL server on 127.0.0.1, the ``file`` transport, a real SMTP
server), and everything they leave is searched for the secret: stdout, stderr,
``--json``, ``cpmail log``, Python log records, ``.eml`` files (raw and
decoded), bug reports, and the traceback ``-v`` prints.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmail.secrets import SecretStore, passcode_name
from tests.conftest import Cli
from tests.fakeapi import GOOGLE_CLIENT_SECRET, google_client
from tests.pg import SERVER, server_or_skip
from tests.smtpserver import SMTPTestServer

MASK = "••••"
Factory = Callable[..., SMTPTestServer]
PG = urllib.parse.urlsplit(SERVER)
PG_HOST = f"{PG.hostname}:{PG.port or 5432}"


def pieces(secret: str) -> list[str]:
    """The secret, its URL-decoded form, and every run of 4+ characters between the
    characters a parser might split it at: a misparse must not leak half of it either."""
    decoded = urllib.parse.unquote(secret)
    parts = {secret, decoded}
    for text in (secret, decoded):
        parts.update(p for p in re.split(r"[/ @?&#:=%]", text) if len(p) >= 4)
    return sorted(parts)


def leaks(secrets: list[str], texts: list[str]) -> list[str]:
    everything = "\n".join(texts)
    return [p for s in secrets for p in pieces(s) if p in everything]


def mail_texts(home: Path) -> list[str]:
    """Every .eml file, raw and decoded (a secret in a base64 body is still a secret)."""
    out = []
    for path in sorted(home.rglob("*.eml")):
        raw = path.read_bytes()
        out.append(raw.decode("utf-8", "replace"))
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.extend(str(v) for v in msg.values())
        for part in msg.walk():
            if not part.is_multipart():
                content = part.get_content()
                out.append(content if isinstance(content, str) else repr(content))
    return out


class Run:
    """Runs commands and keeps everything they printed."""

    def __init__(self, cli: Cli, env: dict[str, str] | None = None) -> None:
        self.cli = cli
        self.env = env if env is not None else {}
        self.texts: list[str] = []

    def __call__(self, *args: str, ok: bool = True, input: str | None = None) -> str:
        r = self.cli(*args, env=self.env, input=input)
        self.texts += [r.stdout, r.stderr]
        if ok:
            assert r.exit_code == 0, (args, r.output)
        return r.output


# ---------------------------------------------------------------- the database URL

_SLASH = "Kv8s/Tr4Pq1"
_SPACE = "Kv8s Tr4Pq2"
_ENCODED_AT = "Kv8s%40Tr4Pq3"
_MIXED = "Kv8s/ ?#:Tr4Pq4"
_QUERY = "Qr9x-Tr4Pq5"
_QUERY_AMP = "Qr9x&Tr4Pq6"


def pg_url(password: str = "", query: str = "", *, port: str = "") -> str:
    """The test server's URL with this password in its user part and this query."""
    userinfo = f"{PG.username}:{password}" if password else PG.username or ""
    host = f"{PG.hostname}:{port or PG.port or 5432}"
    return f"postgresql+psycopg://{userinfo}@{host}{PG.path}" + (f"?{query}" if query else "")


# name -> (password in the user part, extra query, the secret text)
DB_FORMS: dict[str, tuple[str, str, str]] = {
    "slash": (_SLASH, "", _SLASH),
    "space": (_SPACE, "", _SPACE),
    "encoded-at": (_ENCODED_AT, "", _ENCODED_AT),
    "mixed": (_MIXED, "", _MIXED),
    "query": ("", f"password={_QUERY}&", _QUERY),
    "query-amp": ("", f"password={_QUERY_AMP}&", _QUERY_AMP),
    # the driver decodes the parameter's name: these are "password" too
    "query-encoded-name": ("", f"pass%77ord={_QUERY}&", _QUERY),
    "query-encoded-first": ("", f"%70assword={_QUERY}&", _QUERY),
}


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema of its own on the test server; the URL option that selects it."""
    name = "t_" + re.sub(r"[^a-z0-9]", "", str(id(object())))[-10:]
    admin = sa.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    server_or_skip(admin)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"options=-csearch_path%3D{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("where", ["file", "env"])
@pytest.mark.parametrize("form", list(DB_FORMS))
def test_database_password_never_shown_or_mailed(
    cli: Cli, home: Path, schema: str, form: str, where: str
) -> None:
    password, query, secret = DB_FORMS[form]
    url = pg_url(password, query + schema)
    run = Run(cli, {"CPMAIL_DATABASE_URL": url} if where == "env" else {})
    if where == "file":
        run("config", "set", "database.url", url)
    run("init")
    run("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test")
    run("config", "set", "user.staff", "JD")
    run("config", "helpdesk", "--email", "help@cp.test")
    run("config", "manager", "--name", "Pat Manager", "--email", "pat@agency.test")
    got = run("config", "get", "database.url")
    shown = run("config", "show")
    listed = run("config", "show", "--json")
    run("message", "bug", "The totals are off")
    run("message", "manager", "Lunch at noon?")
    run("staff", "test", "JD")
    run("check", "--json")
    run("check", "--dry-run")
    run("log")
    run("log", "--json")
    run("outbox", "--json", ok=False)
    run("staff", "list", "--json")
    run("db", "upgrade")
    run("data", "tables")
    # The same URL with a port where nothing listens: the error, and -v's traceback.
    down = Run(cli, {"CPMAIL_DATABASE_URL": pg_url(password, query + schema, port="1")})
    for args in (("staff", "list"), ("-v", "staff", "list"), ("-v", "check", "--json")):
        assert down.cli(*args, env=down.env).exit_code != 0
        down(*args, ok=False)
    texts = [*run.texts, *down.texts, *mail_texts(home), (home / "cpmail.toml").read_text()]
    if where == "file":  # the file holds it, as it must: leave the file out of the search
        texts.pop()
    assert leaks([secret], texts) == []
    # The texts really were collected, and the URL is shown with its password hidden.
    assert MASK in got and "127.0.0.1" in got
    assert MASK in shown and MASK in listed
    [row] = [r for r in json.loads(listed)["settings"] if r["key"] == "database.url"]
    assert row["source"] == where and MASK in row["value"]
    bug = "\n".join(mail_texts(home))
    assert "---- diagnostics ----" in bug and "database.url = " in bug


def _bare_at_url(shape: str, secret: str) -> str:
    """A URL with ``secret`` (which holds a bare @) where a password may be written."""
    host = f"{PG.hostname}:{PG.port or 5432}"
    if shape == "user part":
        # SQLAlchemy and the driver would read "Kv8s" as the password and
        # "Tr4Pq7@127.0.0.1" as the host; the driver's "cannot resolve host" shows it.
        return pg_url(secret)
    if shape == "query":  # the user's @ ends the user part; the query's is taken as one too
        return pg_url("", f"password={secret}")
    if shape == "query, no user part":  # "127.0.0.1" read as the user, "5432/…" as password
        return f"postgresql+psycopg://{host}{PG.path}?password={secret}"
    # "?" right after the @: the rest is a query without a value, which SQLAlchemy drops
    first, _, rest = secret.partition("@")
    return f"postgresql+psycopg://{PG.username}:{first}@?{rest}@{host}{PG.path}"


@pytest.mark.parametrize("shape", ["user part", "query", "query, no user part", "@?"])
@pytest.mark.parametrize("key", ["database.url", "source.url"])
@pytest.mark.parametrize("where", ["config set", "file", "env"])
def test_a_password_with_a_bare_at_is_refused_without_showing_it(
    initialised: Cli, home: Path, where: str, key: str, shape: str
) -> None:
    secret = "Kv8s@Tr4Pq7"
    url = _bare_at_url(shape, secret)
    env_name = "CPMAIL_" + key.replace(".", "_").upper()
    run = Run(initialised, {env_name: url} if where == "env" else {})
    if where == "config set":
        r = initialised("config", "set", key, url)
        assert r.exit_code == 2 and "%40" in r.stderr, r.output
        run.texts += [r.stdout, r.stderr]
    elif where == "file":
        section, name = key.split(".")
        path = home / "cpmail.toml"
        path.write_text(path.read_text() + f'\n[{section}]\n{name} = "{url}"\n')
    if where != "config set":
        for args in (
            ("init",),
            ("-v", "init"),
            ("staff", "list"),
            ("-v", "db", "upgrade"),
            ("status",),
            ("status", "--json"),
            ("config", "show"),
            ("config", "get", key),
        ):
            r = initialised(*args, env=run.env)
            assert r.exit_code == 2, (args, r.output)
            assert "%40" in r.stderr, (args, r.stderr)  # says how to write it
            run.texts += [r.stdout, r.stderr]
    from cpmail.errors import ConfigError
    from cpmail.store import make_engine

    with pytest.raises(ConfigError) as info:
        make_engine(url)
    run.texts.append(str(info.value))
    assert leaks([secret], run.texts) == []


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ("Kv8s-Tr4Pq8 no scheme", "Kv8s-Tr4Pq8"),
        ("nonsense:Kv8s-Tr4Pq8@db", "Kv8s-Tr4Pq8"),
        ("postgresql+psycopg://u:Kv8s-Tr4Pq8@db:54x/c", "Kv8s-Tr4Pq8"),
        ("postgresql+psycopg://u:Kv8s@Tr4Pq8:x@db/c", "Kv8s@Tr4Pq8:x"),
        ("nodriver://u:Kv8s-Tr4Pq8@db/c", "Kv8s-Tr4Pq8"),
    ],
)
def test_a_bad_database_url_is_refused_without_echoing_it(
    initialised: Cli, home: Path, value: str, secret: str
) -> None:
    texts: list[str] = []
    args: tuple[str, ...]
    for args, env in (
        (("config", "set", "database.url", value), {}),
        (("-v", "staff", "list"), {"CPMAIL_DATABASE_URL": value}),
        (("config", "set", "source.url", value), {}),
        (("config", "show"), {"CPMAIL_SOURCE_URL": value}),
    ):
        r = initialised(*args, env=env)
        texts += [r.stdout, r.stderr]
        if args[0] == "-v":
            assert r.exit_code in (2, 3), r.output
    path = home / "cpmail.toml"
    original = path.read_text()
    path.write_text(original + f'\n[database]\nurl = "{value}"\n')
    for args in (("config", "show"), ("-v", "staff", "list")):
        r = initialised(*args)
        assert r.exit_code in (2, 3), r.output
        texts += [r.stdout, r.stderr]
    assert leaks([secret], texts) == []


# ---------------------------------------------------------------- everything else


SMTP_PASSCODE = "Pc7/horse battery@staple?"
GMAIL_TOKEN = "ya29.a0Fake-Access-Tok3n-5zQ"
GMAIL_REFRESH = "1//0gFake-Refresh-Tok3n-7yW"
MS_SECRET = "Ms~App~Secr3t~Q8Q~9yz"
SOURCE_PASSWORD = "Src/Pw d%40x9"  # an @ must be written %40 in a URL
ALERT_URLS = [
    "mailtos://alerts:Ap9-mail-pass@smtp.agency.test",
    "tgram://123456789:AAFakeBotTok3nXyz/987654",
    "json://hooks.agency.test/path?token=Hk3-hook-tok3n",
]
ALERT_SECRETS = ["Ap9-mail-pass", "AAFakeBotTok3nXyz", "Hk3-hook-tok3n"]


@pytest.mark.parametrize("where", ["file", "env"])
def test_no_secret_in_any_output_log_mail_or_traceback(
    initialised: Cli,
    home: Path,
    tmp_path: Path,
    smtp_server_factory: Factory,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    # The agency system's database: nothing listens there, so `data pull` fails to connect.
    source_raw = f"postgresql+psycopg://agency:{SOURCE_PASSWORD}@127.0.0.1:1/ag"
    caplog.set_level(logging.DEBUG)  # every library's records, debug included
    env: dict[str, str] = {}
    run = Run(initialised, env)
    args: tuple[str, ...]
    if where == "file":
        run("config", "set", "source.url", source_raw)
        run("config", "set", "alerts.urls", ",".join(ALERT_URLS))
    else:
        env["CPMAIL_SOURCE_URL"] = source_raw
        env["CPMAIL_ALERTS_URLS"] = json.dumps(ALERT_URLS)
    for args in (
        ("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.test"),
        ("config", "set", "user.staff", "JD"),
        ("config", "helpdesk", "--email", "help@cp.test"),
        ("config", "manager", "--name", "Pat Manager", "--email", "pat@agency.test"),
    ):
        run(*args)
    run("staff", "passcode", "JD", "--stdin", input=SMTP_PASSCODE + "\n")
    # An OAuth sign-in and client, as `staff signin` and `config gmail` leave them.
    token = {"token": GMAIL_TOKEN, "refresh_token": GMAIL_REFRESH, "client_secret": "x"}
    SecretStore(home).set("token.gmail.JD", json.dumps(token))
    client = tmp_path / "client_secret.json"
    client.write_text(json.dumps(google_client("http://127.0.0.1:9")))
    run("config", "gmail", "--client-secrets", str(client))
    client.unlink()
    run("config", "microsoft", "--client-id", "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "--tenant", "9a0c3f25-04e0-4f89-11d3-0305e82c3301",
        "--client-secret", input=MS_SECRET + "\n")  # fmt: skip
    run("config", "file")

    # A careless SMTP server that echoes the login it was given, then one that accepts it.
    server = smtp_server_factory(tls="starttls", users={"jd@agency.test": SMTP_PASSCODE})
    server.fail_auth = f"535 5.7.8 bad credentials {SMTP_PASSCODE}"
    env.update(server.env())
    env["CPMAIL_MAIL_TRANSPORT"] = "smtp"
    for args in (("staff", "test", "JD"), ("-v", "staff", "test", "JD")):
        run(*args, ok=False)
    server.fail_auth = None
    run("staff", "test", "JD")
    run("message", "manager", "Lunch?")
    assert server.messages and server.auth_attempts[-1].ok, run.texts[-8:]
    env["CPMAIL_MAIL_TRANSPORT"] = "file"
    run("message", "bug", "The totals are off")
    run("check", "--json")
    for args in (
        ("config", "show"),
        ("config", "show", "--json"),
        ("config", "get", "source.url"),
        ("config", "get", "alerts.urls"),
        ("config", "get", "mail.gmail.client_secrets"),
        ("log",),
        ("log", "--json"),
        ("staff", "list", "--json"),
    ):
        run(*args)
    run("outbox", "--json", ok=False)
    env["CPMAIL_SOURCE_TABLES_JOBS_QUERY"] = "SELECT job_no AS id FROM jobs"
    for args in (("data", "pull", "--dry-run"), ("-v", "data", "pull", "--json")):
        run(*args, ok=False)
    texts = [*run.texts, *mail_texts(home), *(rec.getMessage() for rec in caplog.records)]
    secrets = [
        SMTP_PASSCODE,
        GMAIL_TOKEN,
        GMAIL_REFRESH,
        GOOGLE_CLIENT_SECRET,
        MS_SECRET,
        SOURCE_PASSWORD,
        *ALERT_SECRETS,
    ]
    assert leaks(secrets, texts) == []
    # Collected for real: the refusal, the bug report, the masked values.
    everything = "\n".join(texts)
    assert "535" in everything and "---- diagnostics ----" in everything
    assert f"agency:{MASK}@127.0.0.1:1/ag" in everything
    assert "cannot connect to the agency system's database" in everything
    assert "alerts.urls = ••••" in everything and "source.url = " in everything
    assert len(server.messages) >= 2


def test_secret_setting_is_masked_by_get_set_and_show(initialised: Cli) -> None:
    r = initialised("config", "set", "alerts.urls", ALERT_URLS[1])
    assert r.exit_code == 0 and r.stdout.strip() == f"alerts.urls = {MASK}"
    assert initialised("config", "get", "alerts.urls").stdout.strip() == MASK
    r = initialised("config", "set", "alerts.urls", "")
    assert initialised("config", "get", "alerts.urls").stdout.strip() == ""


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql+psycopg://u@127.0.0.1/db?pass%77ord=S3CRETpw", "S3CRETpw"),
        ("postgresql+psycopg://u@127.0.0.1/db?sslmode=require&%70assword=S3CRETpw", "S3CRETpw"),
        ("postgresql+psycopg://cpmail:S3CRETpw/test", "S3CRETpw"),  # the @ left out
        ("postgresql+psycopg://cpmail:S3CRETpw", "S3CRETpw"),
        ("sqlite://:S3CRETpw@", "S3CRETpw"),
        ("cannot connect to postgresql://u:S3CRETpw@h:1/db (refused)", "S3CRETpw"),
        ("dblink('host=h user=u password=S3CRETbb dbname=x', 'select 1')", "S3CRETbb"),
        ("dblink('host=h password=''S3CRET cc'' dbname=x', 'q')", "cc''"),
        ("dsn \"user=u password='S3 CRET' host=h\"", "CRET"),
        ("token=eyJhbGciOi.S3CRET.sig and api_key = K3yK3yK3y", "K3yK3yK3y"),
    ],
)
def test_redaction_hides_every_form_of_a_password(text: str, secret: str) -> None:
    from cpmail.message import redact as diagnostics_redact
    from cpmail.settings import redact, shown

    assert secret not in redact(text), redact(text)
    assert secret not in str(shown("source.tables.staff.query", text))
    assert secret not in diagnostics_redact("source.tables.staff.query", text)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u@127.0.0.1:5432/db?sslmode=require",
        "postgresql+psycopg://[::1]:5432/d",
    ],
)
def test_redaction_leaves_a_url_without_secrets_as_it_is(url: str) -> None:
    from cpmail.settings import redact

    assert redact(url) == url


@settings(max_examples=200, deadline=None)
@given(
    passcode=st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"),
        min_size=8,
        max_size=40,
    ).filter(lambda p: len("".join(p.split())) >= 8),
    cut=st.integers(min_value=0, max_value=60),
    how=st.sampled_from(
        [
            "as-is",
            "spaces",
            "plain-b64",
            "login-b64",
            "split-b64",
            "no-spaces",
            "chunks",
            "b64-chunks",
        ]
    ),
)
def test_an_echoed_passcode_is_masked_whole_or_in_pieces(passcode: str, cut: int, how: str) -> None:
    """What an SMTP server might send back about a login never carries the passcode."""
    import base64

    from cpmail.scrub import login_scrubber
    from cpmail.transports.smtp_words import words_of

    user = "jd@agency.test"
    plain = base64.b64encode(f"\0{user}\0{passcode}".encode()).decode()
    login = base64.b64encode(passcode.encode()).decode()
    echo = {
        "as-is": f"Bad credentials [{user}|{passcode}]",
        "spaces": "Bad credentials " + " ".join(passcode.split()),
        "no-spaces": "Bad credentials " + "".join(passcode.split()),
        "plain-b64": f"AUTH PLAIN {plain} refused",
        "login-b64": f"got {login}",
        "split-b64": f"AUTH PLAIN {plain[: cut % len(plain)]}\n5.7.8 {plain[cut % len(plain) :]}",
        # pieces shorter than eight characters, each on a line of its own
        "chunks": "\n".join(_chunks("".join(passcode.split()), cut % 7 + 1)),
        "b64-chunks": "\n".join(_chunks(plain, cut % 7 + 1)),
        "coded-chunks": "\n".join(
            f"535-5.7.8 {c}" for c in _chunks("".join(passcode.split()), cut % 7 + 1)
        ),
    }[how]
    said = login_scrubber(user, passcode)(words_of(535, echo))
    # no eight characters in a row of the base64 forms, or of the passcode (spaces aside)
    for secret, text in ((plain, said), (login, said), ("".join(passcode.split()), said)):
        pieces = [secret[i : i + 8] for i in range(len(secret) - 7)]
        assert not [p for p in pieces if p in text], (said, secret)
    if how in ("as-is", "spaces", "no-spaces", "chunks", "b64-chunks", "coded-chunks"):
        # nor can the words be put back together into it, reply codes aside
        words = "".join(w for w in said.split() if not re.fullmatch(r"[\d.-]+", w))
        assert "".join(passcode.split()) not in words and plain not in words, said


def _chunks(text: str, n: int) -> list[str]:
    return [text[i : i + n] for i in range(0, len(text), n)]


def test_a_passcode_that_is_not_utf8_is_refused_without_showing_it(
    initialised: Cli, home: Path
) -> None:
    r = initialised("staff", "add", "JD", "--name", "Jane", "--work-email", "jd@agency.test")
    assert r.exit_code == 0, r.output
    r = initialised("staff", "passcode", "JD", "--stdin", input=b"S3cr\xffT-pass\n")
    assert r.exit_code == 2, r.output
    assert r.stderr == "cpmail: standard input is not UTF-8 text.\n"
    assert SecretStore(home).get(passcode_name("JD")) is None


def test_a_passcode_of_digit_groups_echoed_a_group_a_line_is_masked() -> None:
    from cpmail.scrub import Scrubber

    said = Scrubber(["491 283 756 120"])(
        "535-5.7.8 491\n535-5.7.8 283\n535-5.7.8 756\n535 5.7.8 120 rejected"
    )
    assert not any(group in said for group in ("491", "283", "756", "120")), said
    assert said.startswith("535-5.7.8 ") and said.endswith(" rejected")


def test_an_encrypted_sqlite_urls_password_is_never_shown(initialised: Cli, home: Path) -> None:
    """``sqlite+pysqlcipher://:PASSWORD@/file``: the file was read as everything after
    ``///``, so messages naming it carried the password (also to alert webhooks)."""
    secret = "S3cretPWxyz"
    url = f"sqlite+pysqlcipher://:{secret}@/{home}/vault.db"
    r = initialised("config", "set", "database.url", url)
    assert r.exit_code == 0 and secret not in r.output, r.output
    said = []
    for args in (
        ("log",),
        ("log", "--json"),
        ("status",),
        ("status", "--json"),
        ("check", "--dry-run"),
        ("staff", "list"),
        ("data", "tables"),
    ):
        r = initialised(*args)
        assert r.exit_code != 0, (args, r.output)
        said.append(r.output)
    everything = "\n".join(said)
    assert leaks([secret], [everything]) == [], everything
    assert "vault.db" in everything  # the file is still named


@pytest.mark.parametrize(
    "url",
    [
        pg_url("", "password=Kv8s%40Tr4Pq9"),  # the @ written as the message asks
        pg_url("Kv8s%3Fx%3DTr4Pq9"),  # a password holding "?x=", written so
        pg_url("Kv8s%40Tr4Pq9", "application_name=ops%40agency"),
        pg_url("", "options=-c%20search_path%3Dme%40x"),
    ],
)
def test_an_at_written_as_the_refusal_asks_is_taken(initialised: Cli, url: str) -> None:
    """What a bare @ is refused for, written %40 (or a ? and = as %3F, %3D), is a URL
    cpmail takes; and its password is not shown."""
    r = initialised("config", "set", "database.url", url)
    assert r.exit_code == 0, r.output
    assert "Tr4Pq9" not in r.output
    assert initialised("config", "get", "database.url").exit_code == 0


@settings(max_examples=300, deadline=None)
@given(
    password=st.text(
        alphabet=st.sampled_from("Kv8sTr4Pq@?=&/:# %"), min_size=6, max_size=24
    ).filter(lambda p: sum(ch.isalnum() for ch in p) >= 6),
    where=st.sampled_from(["user part", "query", "query, no user part"]),
)
def test_a_database_url_is_refused_or_shown_without_any_of_its_password(
    password: str, where: str
) -> None:
    """Whatever a password holds (@ ? = & / : # space %) and wherever it is written: the
    URL is refused where it is given, or its redacted form holds no piece of the password
    (a run of four of its letters and digits). In a query an & ends the value, as URLs
    have it: what follows is another parameter, not the password (documented)."""
    from hypothesis import assume

    from cpmail.errors import ConfigError

    assume(where == "user part" or "&" not in password)
    from cpmail.settings import KEYS, redact

    host = "127.0.0.1:5432/agency"
    url = {
        "user part": f"postgresql+psycopg://cp:{password}@{host}",
        "query": f"postgresql+psycopg://cp@{host}?password={password}",
        "query, no user part": f"postgresql+psycopg://{host}?password={password}",
    }[where]
    try:
        KEYS["database.url"].check(url)
    except (ValueError, ConfigError):
        return  # refused where it is given, without being repeated
    shown = redact(url).replace(host, "")
    letters = "".join(ch if ch.isalnum() else " " for ch in password).split()
    pieces = [w[i : i + 4] for w in letters for i in range(len(w) - 3)]
    assert [p for p in pieces if p in shown] == [], (url, redact(url))


def _libpq_quoted(value: str) -> str:
    """``value`` as libpq reads a quoted one: a quote or backslash in it after a backslash."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _libpq_bare(value: str) -> str:
    """``value`` as libpq reads a bare one (up to a space): a backslash escapes what follows."""
    return value.replace("\\", "\\\\")


def _sql_quoted(text: str) -> str:
    """``text`` inside an SQL string literal: each quote doubled."""
    return text.replace("'", "''")


def _e_quoted(text: str) -> str:
    """``text`` inside a PostgreSQL escape string (E'…'): a quote or backslash after a
    backslash."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _written(password: str, form: str) -> str:
    """``password`` in a connection string inside a query's text, written as ``form`` has it."""
    return {
        # ODBC, as OPENROWSET takes it: braces, a closing brace doubled
        "odbc braces": "SELECT * FROM OPENROWSET('MSOLEDBSQL', 'Server=srv;UID=sa;PWD={"
        + password.replace("}", "}}")
        + "};', 'SELECT 1')",
        # ODBC bare: the value runs to the ";"
        "odbc bare": f"'Server=srv;User ID=sa;Password={password};'",
        # libpq in dblink(…): quoted (a quote or backslash in it escaped with a backslash),
        # inside an SQL string (each quote doubled); or bare
        "libpq quoted": "SELECT * FROM dblink('host=db password="
        + _sql_quoted(_libpq_quoted(password))
        + "', 'q')",
        "libpq bare": "SELECT * FROM dblink('host=db user=u password="
        + _sql_quoted(_libpq_bare(password))
        + " port=5', 'q')",
        # the same in a PostgreSQL escape string, E'…', where a quote is written \'
        "libpq quoted in E''": "SELECT * FROM dblink(E'host=db password="
        + _e_quoted(_libpq_quoted(password))
        + " port=5', 'q')",
        "libpq bare in E''": "SELECT * FROM dblink(E'host=db password="
        + _e_quoted(_libpq_bare(password))
        + " port=5', 'q')",
    }[form]


@settings(max_examples=300, deadline=None)
@given(
    password=st.text(
        alphabet=st.sampled_from("Kv8sTr4Pq&,()!{}=@ ;'\\"), min_size=6, max_size=24
    ).filter(lambda p: sum(ch.isalnum() for ch in p) >= 6),
    form=st.sampled_from(
        [
            "odbc braces",
            "odbc bare",
            "libpq quoted",
            "libpq bare",
            "libpq quoted in E''",
            "libpq bare in E''",
        ]
    ),
)
def test_a_password_in_a_querys_connection_string_is_hidden_whole(password: str, form: str) -> None:
    """A source query's text (shown by `config show`, mailed in a bug report's diagnostics)
    may hold a connection string: its password is hidden whole, whatever it holds. The
    mask stopped at the first &, "," or ")" (or a space inside ODBC's braces), and the
    rest of the password was shown."""
    from hypothesis import assume

    from cpmail.settings import redact

    # Forms that cannot hold some characters: a bare value ends at a space or ";" (as the
    # drivers read it); an ODBC one inside an SQL string here at a quote too.
    if "bare" in form:
        assume(not any(ch in password for ch in " ;"))
    if form == "odbc bare":
        assume("'" not in password)
    if "bare" in form:  # (a value that begins with a brace or a quote is not a bare one)
        assume(password[:1] not in "{'")
    text = _written(password, form)
    shown = redact(text)
    letters = "".join(ch if ch.isalnum() else " " for ch in password).split()
    pieces = [w[i : i + 4] for w in letters for i in range(len(w) - 3)]
    assert [p for p in pieces if p in shown] == [], (text, shown)
