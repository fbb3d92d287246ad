"""No password given with an address is shown with it.

An API's address (``mail.gmail.api_base``) given as ``https://USER:PASSWORD@HOST``
is named by its host and port wherever cpmail names it: errors, `status`,
`--json`, what the outbox and the log keep, a bug report. An SMTP server given
as ``USER:PASSWORD@HOST`` is refused without being repeated.
A setting's text is searched for its secrets at once, however long its words.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import urllib.parse
from pathlib import Path

import pytest

from cpmail.oauth import google
from cpmail.oauth.tokens import StoredToken, save_token
from cpmail.secrets import SecretStore
from cpmail.settings import Settings
from tests.conftest import Cli
from tests.fakeapi import GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET, google_client

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
    show, and every command now reads each setting for its secrets."""
    import time

    word = "x1" * 30_000
    query = f"SELECT '{word}' AS id FROM dblink('host=db password=S3cret-pw', 'q')"
    path = home / "cpmail.toml"
    path.write_text(path.read_text() + f'\n[source.tables.jobs]\nquery = "{query}"\n')
    start = time.monotonic()
    r = initialised("config", "show", "--json")
    took = time.monotonic() - start
    assert r.exit_code == 0, r.output
    assert took < 10, took
    [row] = [x for x in json.loads(r.stdout)["settings"] if x["key"] == "source.tables.jobs.query"]
    assert "S3cret-pw" not in r.stdout and f"password={MASK}" in row["value"]
