"""No secret cpmail has read is shown, by its place or by its value.

An address given with a user part (``https://USER:PASSWORD@HOST``) is named by its
host and port; an SMTP server given as ``USER:PASSWORD@HOST`` is refused without
being repeated. What rules of shape (``cpmail.settings.redact``, ``cpmail.scrub``)
cannot see — a URL in a library's log line, an error an earlier version kept, a
token quoted in a sentence — is caught by value: every secret a command reads (a
setting's password, an alert URL's tokens, a proxy's password, a stored passcode,
sign-in or OAuth client) is masked in everything it prints, writes as JSON,
records as an error, alerts or mails as diagnostics.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmail.oauth import google
from cpmail.oauth.tokens import StoredToken, save_token
from cpmail.secrets import SecretStore
from cpmail.settings import Settings
from tests.conftest import Cli
from tests.fakeapi import GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, FakeAPI, google_client

MASK = "••••"

# Passwords of awkward shapes: short, digits only, unicode with spaces, punctuation
# (each percent-encoded where a URL holds it).
PASSWORDS = ["x1", "483920", "pä ss wörd", "p@s:s/w?r#d%&=", "q'u\"o\\te{}"]


def _gmail_home(home: Path, api_base: str, token_uri: str) -> None:
    """``home`` set up to send as JD through Gmail at ``api_base``, signed in."""
    s = Settings.load(home)
    s.set("mail.transport", "gmail")
    s.set("mail.gmail.client_secrets", google.STORED_CLIENT)
    s.set("mail.gmail.api_base", api_base)
    s.set("user.staff", "JD")
    s.set("helpdesk.email", "help@agency.example")
    s.save()
    store = SecretStore(home)
    store.set(google.GOOGLE_CLIENT_SECRET, json.dumps(google_client(token_uri)))
    expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    creds = {
        "token": "ya29.a0Fake-Access-Tok3n-5zQ",
        "refresh_token": "1//0gFake-Refresh-Tok3n-7yW",
        "token_uri": f"{token_uri}/token",
        "client_id": GOOGLE_CLIENT_ID,
        "client_secret": GOOGLE_CLIENT_SECRET,
        "scopes": list(google.GOOGLE_SCOPES),
        "expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    save_token(store, "gmail", "JD", StoredToken("jd@agency.example", creds))


def _database_texts(home: Path) -> list[str]:
    """Every text cell of every table of the home's database."""
    out = []
    with sqlite3.connect(home / "cpmail.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                out += [v for v in row if isinstance(v, str)]
    return out


def _home_texts(home: Path) -> list[str]:
    """Every file cpmail wrote in the home but its settings and secrets (which hold them)."""
    out = []
    for path in sorted(home.rglob("*")):
        if path.is_file() and "secrets" not in path.parts and path.suffix not in (".db", ".toml"):
            out.append(path.read_bytes().decode("utf-8", "replace"))
    return out


@pytest.mark.parametrize("password", PASSWORDS)
def test_an_api_address_with_a_password_is_never_shown(
    initialised: Cli, home: Path, password: str
) -> None:
    """``mail.gmail.api_base`` with a user part: the API named in an error ("cannot reach
    the Gmail API at gw:PASSWORD@127.0.0.1:1"), in `status` and in what the outbox and the
    log keep, was named with it."""
    r = initialised("staff", "add", "JD", "--name", "Jane", "--work-email", "jd@agency.example")
    assert r.exit_code == 0, r.output
    written = urllib.parse.quote(password, safe="")
    # Nothing listens on port 1 of this machine: nothing can be sent.
    _gmail_home(home, f"http://gw:{written}@127.0.0.1:1", "http://127.0.0.1:1")
    said = []
    for args, code in (
        (("staff", "test", "JD"), 3),
        (("check", "--json"), 3),
        (("status",), 3),
        (("status", "--json"), 3),
        (("log", "--json"), 0),
        (("outbox", "--json"), 0),
        (("config", "show", "--json"), 0),
        (("config", "get", "mail.gmail.api_base"), 0),
    ):
        r = initialised(*args)
        assert r.exit_code == code, (args, r.output)
        said += [r.stdout, r.stderr]
    r = initialised("message", "bug", "It does not send", env={"CPMAIL_MAIL_TRANSPORT": "file"})
    assert r.exit_code == 0, r.output
    texts = said + _database_texts(home) + _home_texts(home)
    everything = "\n".join(texts)
    # Collected for real: the refusals, the address without its password, the bug report.
    assert "cannot reach the Gmail API at" in everything, everything
    assert f"gw:{MASK}@127.0.0.1:1" in everything
    assert "---- diagnostics ----" in everything
    for form in {password, written}:
        assert f"gw:{form}@" not in everything
        if len(form) >= 6:
            assert form not in everything, form
    assert "the Gmail API at 127.0.0.1:1" in "\n".join(_database_texts(home))  # recorded


@pytest.mark.parametrize("password", PASSWORDS)
def test_an_smtp_host_with_a_password_is_refused_without_showing_it(
    initialised: Cli, home: Path, password: str
) -> None:
    """``USER:PASSWORD@HOST`` as the SMTP server (a URL's habit) was taken as a host name,
    then shown by `config set`, `config show`, `status` and every error naming the server."""
    host = f"jd:{password}@mail.agency.example"
    said = []
    for args, env in (
        (("config", "set", "mail.smtp.host", host), {}),
        (("config", "smtp", "--host", host, "--port", "25", "--security", "none"), {}),
        (("status",), {"CPMAIL_MAIL_SMTP_HOST": host}),
        (("config", "show"), {"CPMAIL_MAIL_SMTP_HOST": host}),
    ):
        r = initialised(*args, env=env)
        assert r.exit_code == 2, (args, r.output)
        assert "holds no '@'" in r.stderr, r.stderr
        said.append(r.output)
    everything = "\n".join(said)
    assert f"jd:{password}@" not in everything
    if len(password) >= 6:
        assert password not in everything
    r = initialised("config", "set", "mail.smtp.host", "mail.agency.example")
    assert r.exit_code == 0, r.output


def test_a_long_word_in_a_setting_is_read_at_once(initialised: Cli, home: Path) -> None:
    """Looking for a URL in a setting's text tried every character of a long word as the
    start of a scheme: a query holding a word of 60 000 characters took most of a minute to
    show, and every command now reads each setting for its secrets. Here: that what is found
    in such a word is the same."""
    word = "x1" * 30_000
    query = f"SELECT '{word}' AS id FROM dblink('host=db password=S3cret-pw', 'q')"
    path = home / "cpmail.toml"
    path.write_text(path.read_text() + f'\n[source.tables.jobs]\nquery = "{query}"\n')
    r = initialised("config", "show", "--json")
    assert r.exit_code == 0, r.output
    [row] = [x for x in json.loads(r.stdout)["settings"] if x["key"] == "source.tables.jobs.query"]
    assert "S3cret-pw" not in r.stdout and f"password={MASK}" in row["value"]


def test_a_url_a_library_logs_with_v_is_shown_without_its_password(
    home: Path, tmp_path: Path
) -> None:
    """-v prints the records of the libraries cpmail uses: httpx names each request's URL,
    user part and all."""
    secret = "Pw-Secr3t9"
    with FakeAPI() as fake:
        cli = Cli(home)
        assert cli("init").exit_code == 0
        r = cli("staff", "add", "JD", "--name", "Jane", "--work-email", "jd@agency.example")
        assert r.exit_code == 0, r.output
        _gmail_home(home, fake.base.replace("http://", f"http://gw:{secret}@"), fake.base)
        proc = subprocess.run(
            [sys.executable, "-m", "cpmail", "-v", "staff", "test", "JD"],
            env={**os.environ, "CPMAIL_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    said = proc.stdout + proc.stderr
    assert "HTTP Request: POST http://gw:" in said, said  # the record is there
    assert secret not in said, said


_AWKWARD = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"),
    min_size=3,
    max_size=20,
).filter(lambda t: len(t.rstrip()) >= 3)  # six characters at least: shorter ones are
# masked where their place is known (a URL's user part), not wherever they occur


@settings(max_examples=200, deadline=None)
@given(
    tail=_AWKWARD,
    where=st.sampled_from(
        [
            "database.url",
            "database.url?",
            "source.url",
            "api_base",
            "alerts.urls",
            "proxy",
        ]
    ),
    quoted=st.sampled_from(["as it is", "url-encoded", "in JSON"]),
)
def test_a_secret_in_a_setting_is_masked_by_value_wherever_it_is_quoted(
    tmp_path_factory: pytest.TempPathFactory, tail: str, where: str, quoted: str
) -> None:
    """A password of any shape, given in any setting that holds one (or a proxy's, in the
    environment), is masked when a library quotes it in words of its own: as it is,
    URL-encoded, or inside JSON (cpmail's --json)."""
    from cpmail import scrub

    secret = "Zq9" + tail  # (its own beginning: it cannot be some other text of the test)
    written = urllib.parse.quote(secret, safe="")
    url = f"postgresql+psycopg://cp:{written}@127.0.0.1:5432/agency"
    cases: dict[str, dict[str, Any]] = {
        "database.url": {"database": {"url": url}},
        "database.url?": {"database": {"url": f"postgresql+psycopg://cp@h/a?password={written}"}},
        "source.url": {"source": {"url": url}},
        "api_base": {"mail": {"gmail": {"api_base": f"https://gw:{written}@127.0.0.1:1"}}},
        "alerts.urls": {"alerts": {"urls": [f"json://alerts:{written}@127.0.0.1:9/hook"]}},
        "proxy": {},
    }
    data = cases[where]
    home = tmp_path_factory.mktemp("home")
    scrub.forget()
    old = os.environ.get("HTTPS_PROXY")
    os.environ["HTTPS_PROXY"] = f"http://px:{written}@127.0.0.1:9" if where == "proxy" else ""
    try:
        Settings(home, home / "cpmail.toml", data)
    finally:
        if old is None:
            del os.environ["HTTPS_PROXY"]
        else:
            os.environ["HTTPS_PROXY"] = old
    said = {
        "as it is": secret,
        "url-encoded": written,
        "in JSON": json.dumps(secret, ensure_ascii=False)[1:-1],
    }[quoted]
    shown = scrub.hide(f"connection to server failed: password {said} was refused")
    scrub.forget()
    assert said not in shown, shown
    assert shown.startswith("connection to server failed: password ") and MASK in shown


def test_the_names_and_addresses_of_an_alert_url_are_shown_its_tokens_are_not(
    tmp_path: Path,
) -> None:
    """Only an alert URL's password and tokens are secrets: its user name, host, port and
    the addresses it sends to are shown elsewhere (the sender, a recipient) as they are."""
    from cpmail import scrub

    urls = [
        "mailtos://ops-team:S3cretPw99@smtp.example.com:587?to=ops-team@agency.com",
        "slack://TokenA1x/TokenB22x/TokenC333x/#general",
        "tgram://123456:ABCdef-ghi/-100123456",
        "json://hooks@127.0.0.1:9000/hook?token=abc123XYZ",
    ]
    scrub.forget()
    try:
        Settings(tmp_path, tmp_path / "cpmail.toml", {"alerts": {"urls": urls}})
        for public in (
            "From ops-team@agency.com to ops-team@agency.com",
            "cannot reach smtp.example.com:587 or 127.0.0.1:9000 as hooks",
        ):
            assert scrub.hide(public) == public
        for token in ("S3cretPw99", "TokenB22x", "ABCdef-ghi", "abc123XYZ", urls[1]):
            assert scrub.hide(f"said {token}.") == f"said {MASK}.", token
    finally:
        scrub.forget()


def test_a_secret_recorded_by_an_earlier_version_is_not_shown(initialised: Cli, home: Path) -> None:
    """An error an earlier version kept with a secret in it (the API named with its user
    part) is masked when `log`, `outbox` and `status` show it: the password is known from
    the settings, whatever words hold it."""
    secret = "Pw-Secr3t9"
    r = initialised("staff", "add", "JD", "--name", "Jane", "--work-email", "jd@agency.example")
    assert r.exit_code == 0, r.output
    _gmail_home(home, f"http://gw:{secret}@127.0.0.1:1", "http://127.0.0.1:1")
    assert initialised("check", "--json").exit_code == 3
    old = f"cannot reach the Gmail API at gw:{secret}@127.0.0.1:1 (ConnectError)"
    with sqlite3.connect(home / "cpmail.db") as conn:
        assert conn.execute("UPDATE messages SET last_error = ?", (old,)).rowcount > 0
    said = []
    for args in (
        ("log",),
        ("log", "--json"),
        ("outbox",),
        ("outbox", "--json"),
        ("status",),
    ):
        r = initialised(*args)
        said.append(r.output)
    everything = "\n".join(said)
    assert f"Gmail API at gw:{MASK}@127.0.0.1:1" in everything, everything
    assert secret not in everything, everything


def test_the_secrets_a_command_reads_from_the_store_are_masked_and_nothing_else(
    home: Path,
) -> None:
    """A passcode, a sign-in's tokens and an OAuth client's secret, read from the store,
    are masked wherever they turn up; the rest of a sign-in (the address, the token
    endpoint, the kind of token) is not."""
    from cpmail import scrub

    store = SecretStore(home)
    passcode, access, refresh = "pä ss-wörd 9", "ya29.Zq9-access", "1//Zq9-refresh"
    store.set("passcode.JD", passcode)
    cache = {
        "AccessToken": {"k": {"secret": access, "token_type": "Bearer"}},
        "RefreshToken": {"k": {"secret": refresh, "home_account_id": "uid.utid"}},
    }
    store.set(
        "token.microsoft.JD",
        json.dumps({"address": "jd@agency.example", "cache": cache}),
    )
    store.set(google.GOOGLE_CLIENT_SECRET, json.dumps(google_client("https://oauth2.example")))
    scrub.forget()
    for name in ("passcode.JD", "token.microsoft.JD", google.GOOGLE_CLIENT_SECRET):
        assert store.get(name) is not None
    said = (
        f"refused {passcode!r}, {access}, {json.dumps(refresh)}, {GOOGLE_CLIENT_SECRET}; "
        "jd@agency.example Bearer uid.utid https://oauth2.example/token"
    )
    shown = scrub.hide(said)
    scrub.forget()
    for secret in (passcode, access, refresh, GOOGLE_CLIENT_SECRET):
        assert secret not in shown, shown
    assert shown == (
        f"refused '{MASK}', {MASK}, \"{MASK}\", {MASK}; "
        "jd@agency.example Bearer uid.utid https://oauth2.example/token"
    )


@pytest.mark.parametrize("at", [60, 75, 85, 95, 590])
def test_a_secret_cut_by_a_short_title_is_masked_before_the_cut(at: int) -> None:
    """An alert's title and a condition are cut to a length: cut first, a secret across the
    cut was masked by neither half, and its beginning was sent."""
    from cpmail import alerts, scrub

    secret = "Tr0ub4dor-horse-battery"
    text = "x" * at + f" said 535 {secret} to us."
    scrub.forget()
    try:
        scrub.remember([secret])
        raised = [alerts._clean(alerts.Condition("transport", text))]
        title, body, _ = alerts.message(alerts._Changes(raised, []), "office-pc")
    finally:
        scrub.forget()
    for said in (title, body):
        assert "Tr0ub" not in said, said


@pytest.mark.parametrize("before", ["é", "Ошибка", "日本", "x ", "("])
def test_a_url_right_after_a_letter_of_any_script_has_its_password_hidden(before: str) -> None:
    from cpmail.settings import redact

    for url in ("http://user:hunter22@host/x", "postgresql://u:hunter22@h/d"):
        shown = redact(before + url)
        assert "hunter22" not in shown and MASK in shown, shown
