"""The gmail transport, Google sign-in and `config gmail`, against a real local HTTP server."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cpmail.errors import AuthError, ConfigError, PermanentFailure, TemporaryFailure, Unreachable
from cpmail.oauth import google
from cpmail.oauth.tokens import StoredToken, save_token, signed_in_address
from cpmail.secrets import SHARED, SecretStore, token_name
from cpmail.settings import Settings
from cpmail.transports.base import Envelope, Outcome, get_transport
from cpmail.transports.gmail import GmailTransport, seconds_until_midnight
from tests.conftest import Cli
from tests.fakeapi import (
    GOOGLE_CLIENT_ID,
    GOOGLE_CLIENT_SECRET,
    FakeAPI,
    Reply,
    google_client,
    mime,
)

SEND = "/gmail/v1/users/me/messages/send"
UPLOAD = "/upload/gmail/v1/users/me/messages/send"


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as f:
        yield f


@pytest.fixture
def gmail_home(home: Path, fake: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home set up for Gmail with the fake's client, endpoints and the shared sender."""
    use_gmail(home, fake, monkeypatch, sender="office@agency.example")
    return home


def use_gmail(
    home: Path, fake: FakeAPI, monkeypatch: pytest.MonkeyPatch, *, sender: str | None = None
) -> None:
    """Send through the Gmail API of ``fake``, with its OAuth client stored."""
    # The code exchange refuses a plain-http token endpoint unless told this is a test.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    settings = Settings.load(home)
    settings.set("mail.transport", "gmail")
    settings.set("mail.gmail.client_secrets", google.STORED_CLIENT)
    settings.set("mail.gmail.api_base", fake.base)
    if sender is not None:
        settings.set("mail.sender", sender)
    settings.save()
    SecretStore(home).set(google.GOOGLE_CLIENT_SECRET, json.dumps(google_client(fake.base)))


def store_signin(
    home: Path,
    fake: FakeAPI,
    account: str,
    address: str,
    *,
    expired: bool = False,
    expiry: dt.datetime | None = None,
) -> dict[str, Any]:
    """Put a sign-in in the secrets as `staff signin` leaves it, with tokens the fake issued."""
    at, rt = fake.issue("google", address)
    if expiry is None:
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=-1 if expired else 1)
    creds = {
        "token": at,
        "refresh_token": rt,
        "token_uri": f"{fake.base}/token",
        "client_id": GOOGLE_CLIENT_ID,
        "client_secret": GOOGLE_CLIENT_SECRET,
        "scopes": list(google.GOOGLE_SCOPES),
        "expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    save_token(SecretStore(home), "gmail", account, StoredToken(address, creds))
    return creds


def transport(home: Path) -> GmailTransport:
    settings = Settings.load(home)
    t = get_transport(settings, SecretStore(home, settings["secrets.backend"]))
    assert isinstance(t, GmailTransport)
    return t


def deliver(home: Path, *envelopes: Envelope) -> list[Outcome]:
    outcomes: list[Outcome] = []
    transport(home).deliver(iter(envelopes), outcomes.append)
    return outcomes


def env(
    n: int = 1, account: str = "JD", raw: bytes | None = None, to: str = "pat@agency.example"
) -> Envelope:
    return Envelope(n, account, "jd@agency.example", (to,), raw or mime(to))


def stored(home: Path, account: str = "JD") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "secrets" / token_name("gmail", account)).read_text())
    return data


# ---------------------------------------------------------------- sending


def test_gmail_receives_exactly_the_bytes_sent(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    e = env()
    [outcome] = deliver(gmail_home, e)
    assert outcome.error is None and outcome.accepted == ("pat@agency.example",)
    [sent] = fake.sent
    assert sent.path == SEND and sent.user == "jd@agency.example"
    assert sent.mime == e.raw
    assert "/token" not in fake.paths()  # a valid token is used as it is


def test_large_message_goes_through_the_upload_endpoint(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    e = env(raw=mime(attachment=5 * 1024 * 1024))
    assert len(e.raw) > 5 * 1024 * 1024
    [outcome] = deliver(gmail_home, e)
    assert outcome.error is None
    [sent] = fake.sent
    assert (sent.path, sent.content_type) == (UPLOAD, "message/rfc822")
    assert sent.mime == e.raw
    assert fake.requests[-1].query == {"uploadType": "media"}


def test_message_over_35_mb_is_refused_without_sending(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    t = transport(gmail_home)
    assert t.max_message_bytes == 35 * 1024 * 1024
    [outcome] = deliver(gmail_home, env(raw=b"x" * (t.max_message_bytes + 1)))
    assert isinstance(outcome.error, PermanentFailure)
    # one byte over: exact bytes, since rounding would say the same size twice
    assert "36,700,161 bytes; Gmail accepts at most 36,700,160 bytes" in str(outcome.error)
    assert fake.sent == []


def test_each_account_sends_with_its_own_token(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    store_signin(gmail_home, fake, SHARED, "office@agency.example")
    outcomes = deliver(gmail_home, env(1, "JD"), env(2, SHARED), env(3, "JD"))
    assert [o.error for o in outcomes] == [None, None, None]
    assert [s.user for s in fake.sent] == [
        "jd@agency.example",
        "office@agency.example",
        "jd@agency.example",
    ]


def test_envelope_recipient_missing_from_the_headers_is_added_as_bcc(
    gmail_home: Path, fake: FakeAPI
) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    raw = mime("pat@agency.example")
    e = Envelope(1, "JD", "jd@agency.example", ("pat@agency.example", "ae@agency.example"), raw)
    [outcome] = deliver(gmail_home, e)
    assert outcome.accepted == e.rcpt_to
    assert fake.sent[0].mime == b"Bcc: ae@agency.example\r\n" + raw


# ---------------------------------------------------------------- tokens


def test_expired_token_is_refreshed_and_saved_back_0600(gmail_home: Path, fake: FakeAPI) -> None:
    old = store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=True)
    [outcome] = deliver(gmail_home, env())
    assert outcome.error is None
    assert fake.paths("POST") == ["/token", SEND]
    assert fake.requests[0].form()["grant_type"] == "refresh_token"
    path = gmail_home / "secrets" / token_name("gmail", "JD")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = stored(gmail_home)
    assert saved["address"] == "jd@agency.example"
    assert saved["credentials"]["token"] != old["token"]
    assert saved["credentials"]["token"] in fake.access
    assert saved["credentials"]["refresh_token"] == old["refresh_token"]
    assert dt.datetime.fromisoformat(saved["credentials"]["expiry"]) > dt.datetime.now(dt.UTC)


def test_the_sign_in_test_fails_when_google_no_longer_grants_sending(
    gmail_home: Path, fake: FakeAPI
) -> None:
    """`status --probe` renews the token; a renewal without gmail.send cannot send a thing."""
    from cpmail.status import Account, probe_accounts

    store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=True)
    settings, secrets = Settings.load(gmail_home), SecretStore(gmail_home)
    ok = Account("JD", "jd@agency.example", signed_in=True)
    probe_accounts(settings, secrets, [ok])
    assert ok.probe == "ok" and ok.problem is None
    fake.google_granted = "openid https://www.googleapis.com/auth/userinfo.email"
    store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=True)
    refused = Account("JD", "jd@agency.example", signed_in=True, problem="refused at the last try")
    probe_accounts(settings, secrets, [refused])
    assert refused.problem is not None and "does not allow sending" in refused.problem
    assert "staff signin JD" in refused.problem


def test_a_valid_token_is_not_written_again(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    path = gmail_home / "secrets" / token_name("gmail", "JD")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    deliver(gmail_home, env(1), env(2))
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert len(fake.sent) == 2


def test_401_refreshes_once_and_sends(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    fake.expire_access_tokens()  # the server no longer takes the unexpired token
    e = env()
    [outcome] = deliver(gmail_home, e)
    assert outcome.error is None
    assert fake.paths("POST") == [SEND, "/token", SEND]
    assert fake.sent[0].mime == e.raw


def test_401_after_a_fresh_token_stops_with_auth_error(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    unauthorized = Reply(401, {"error": {"code": 401, "message": "Invalid Credentials"}})
    fake.script(SEND, unauthorized, unauthorized)
    with pytest.raises(AuthError, match=r"run `cpmail staff signin JD`"):
        deliver(gmail_home, env())


@pytest.mark.parametrize(
    ("account", "command"),
    [("JD", "cpmail staff signin JD"), (SHARED, "cpmail staff signin --shared")],
)
def test_revoked_refresh_token_names_the_command(
    gmail_home: Path, fake: FakeAPI, account: str, command: str
) -> None:
    store_signin(gmail_home, fake, account, "jd@agency.example", expired=True)
    fake.revoke_refresh_tokens()
    with pytest.raises(AuthError) as info:
        deliver(gmail_home, env(account=account))
    assert f"run `{command}`" in str(info.value)
    assert "invalid_grant" in str(info.value)
    assert info.value.exit_code == 3
    assert fake.sent == []


@pytest.mark.parametrize("error", ["deleted_client", "invalid_client", "unauthorized_client"])
def test_a_refused_oauth_client_holds_the_mail_and_names_the_client_file(
    gmail_home: Path, fake: FakeAPI, error: str
) -> None:
    """The client itself refused (deleted in the console, its secret changed): deferring
    as "busy or down" failed the mail for good in the end, and "sign in again" fails
    alike. The account's mail waits (exit 3), and the fix named is a new client file."""
    store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=True)
    fake.script("/token", *[Reply(401, {"error": error})] * 5)
    with pytest.raises(AuthError) as info:
        deliver(gmail_home, env())
    said = str(info.value)
    assert error in said and "config gmail --client-secrets" in said, said
    assert info.value.exit_code == 3 and fake.sent == []


def test_token_endpoint_server_error_defers_that_account(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=True)
    store_signin(gmail_home, fake, "AB", "ab@agency.example")
    # google-auth retries a 5xx from the token endpoint itself; every try fails here.
    fake.script("/token", *[Reply(503, {"error": "temporarily_unavailable"})] * 5)
    outcomes = deliver(gmail_home, env(1, "JD"), env(2, "AB"), env(3, "JD"))
    assert isinstance(outcomes[0].error, TemporaryFailure)
    assert outcomes[1].error is None
    assert outcomes[2].error is outcomes[0].error  # the token endpoint is not asked again
    assert [s.user for s in fake.sent] == ["ab@agency.example"]


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, "<html><body>Sign in to the proxy</body></html>"),
        Reply(200, b""),
        Reply(200, {"token_type": "Bearer"}),  # no access_token
        Reply(502, "<html>Bad gateway</html>"),
        Reply(400, {"error": "invalid_request"}),
    ],
    ids=["html", "empty", "no-token", "502-html", "invalid_request"],
)
def test_a_token_endpoint_that_gives_no_token_defers_not_revokes(
    gmail_home: Path, fake: FakeAPI, reply: Reply
) -> None:
    """Only invalid_grant and the like mean "sign in again"; anything else is temporary."""
    store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=True)
    fake.script("/token", *[reply] * 5)
    [outcome] = deliver(gmail_home, env(1, "JD"))
    assert isinstance(outcome.error, TemporaryFailure), outcome
    assert "signin" not in str(outcome.error)


def test_a_slow_token_endpoint_is_given_mail_gmail_timeout(gmail_home: Path, fake: FakeAPI) -> None:
    settings = Settings.load(gmail_home)
    settings.set("mail.gmail.timeout", 1)
    settings.save()
    store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=True)
    fake.script("/token", Reply(200, {"error": "slow"}, delay=5))
    started = time.monotonic()
    with contextlib.suppress(Exception):
        deliver(gmail_home, env(1, "JD"))
    assert time.monotonic() - started < 4


def test_a_damaged_sign_in_holds_back_only_that_account(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    path = gmail_home / "secrets" / token_name("gmail", "JD")
    path.write_text(json.dumps({"address": "jd@agency.example", "credentials": {"token": 5}}))
    with pytest.raises(AuthError, match=r"damaged; run `cpmail staff signin JD`"):
        deliver(gmail_home, env(1, "JD"))


def test_check_account(gmail_home: Path, fake: FakeAPI) -> None:
    t = transport(gmail_home)
    with pytest.raises(ConfigError, match=r"JD is not signed in.*run `cpmail staff signin JD`"):
        t.check_account("JD")
    with pytest.raises(ConfigError, match=r"run `cpmail staff signin --shared`"):
        t.check_account(SHARED)
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    t.check_account("JD")
    assert signed_in_address(t.secrets, "gmail", "JD") == "jd@agency.example"


# ---------------------------------------------------------------- errors -> outcomes


def gmail_error(code: int, message: str, reason: str = "") -> dict[str, Any]:
    errors = [{"message": message, "domain": "usageLimits", "reason": reason}] if reason else []
    return {"error": {"code": code, "message": message, "errors": errors}}


def test_429_is_temporary_and_honours_retry_after(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    fake.script(SEND, Reply(429, gmail_error(429, "Too many requests"), {"Retry-After": "120"}))
    [outcome] = deliver(gmail_home, env())
    assert isinstance(outcome.error, TemporaryFailure)
    assert outcome.retry_after == 120
    assert "Too many requests" in str(outcome.error)


def test_rate_limit_403_is_temporary_with_the_time_gmail_names(
    gmail_home: Path, fake: FakeAPI
) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    body = gmail_error(403, f"User-rate limit exceeded.  Retry after {at}", "userRateLimitExceeded")
    fake.script(SEND, Reply(403, body))
    [outcome] = deliver(gmail_home, env())
    assert isinstance(outcome.error, TemporaryFailure)
    assert outcome.retry_after is not None and 1700 < outcome.retry_after <= 1800


@pytest.mark.parametrize(
    ("at", "wait"),
    [
        ("2026-13-45T10:00:00.000Z", None),  # no time at all: stopped every check (exit 70)
        ("9999-12-31T23:59:59.000Z", 24 * 3600.0),  # held the account's mail for ever
    ],
)
def test_a_time_gmail_names_that_is_no_time_or_far_off_is_bounded(
    gmail_home: Path, fake: FakeAPI, at: str, wait: float | None
) -> None:
    """The time in a rate-limit message is taken as a Retry-After header is: at most a
    day, and nothing when it cannot be read (the message is still deferred)."""
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    body = gmail_error(403, f"User-rate limit exceeded.  Retry after {at}", "userRateLimitExceeded")
    fake.script(SEND, Reply(403, body))
    [outcome] = deliver(gmail_home, env())
    assert isinstance(outcome.error, TemporaryFailure)
    assert outcome.retry_after == wait


def test_daily_limit_waits_until_tomorrow(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    fake.script(SEND, Reply(403, gmail_error(403, "Daily Limit Exceeded", "dailyLimitExceeded")))
    [outcome] = deliver(gmail_home, env())
    assert isinstance(outcome.error, TemporaryFailure)
    expected = seconds_until_midnight("America/Los_Angeles")
    assert outcome.retry_after is not None and abs(outcome.retry_after - expected) < 60
    assert "daily sending limit" in str(outcome.error)


def test_server_error_is_temporary_with_an_http_date_retry_after(
    gmail_home: Path, fake: FakeAPI
) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=600)
    date = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    fake.script(SEND, Reply(500, gmail_error(500, "Backend Error"), {"Retry-After": date}))
    [outcome] = deliver(gmail_home, env())
    assert isinstance(outcome.error, TemporaryFailure)
    assert outcome.retry_after is not None and 590 < outcome.retry_after <= 600


@pytest.mark.parametrize(
    ("header", "expected"), [("1e12", 86400.0), ("inf", None), ("nan", None), ("-inf", None)]
)
def test_an_absurd_retry_after_is_bounded_or_ignored(
    gmail_home: Path, fake: FakeAPI, header: str, expected: float | None
) -> None:
    """A wait of 31,000 years, or no number, is no reason to stop the run or the account."""
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    fake.script(SEND, Reply(429, gmail_error(429, "Too many requests"), {"Retry-After": header}))
    [outcome] = deliver(gmail_home, env())
    assert isinstance(outcome.error, TemporaryFailure)
    assert outcome.retry_after == expected


@pytest.mark.parametrize("errors", [5, {"reason": "backendError"}, [5, "x", None], "text"])
def test_an_error_body_of_an_unexpected_shape_is_still_read(
    gmail_home: Path, fake: FakeAPI, errors: Any
) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    body = {"error": {"code": 503, "message": "Backend Error", "errors": errors}}
    fake.script(SEND, Reply(503, body))
    outcomes = deliver(gmail_home, env(1), env(2))
    assert isinstance(outcomes[0].error, TemporaryFailure)
    assert "Backend Error" in str(outcomes[0].error)
    assert outcomes[1].error is None  # the next message is not affected


@pytest.mark.parametrize(
    "body", ["[" * 100_000 + "]" * 100_000, '{"error": ' * 50_000 + "1" + "}" * 50_000]
)
def test_an_error_body_nested_too_deep_is_still_read(
    gmail_home: Path, fake: FakeAPI, body: str
) -> None:
    """JSON nested deeper than Python's parser goes ended the run as an internal error."""
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    fake.script(SEND, Reply(400, body, {"Content-Type": "application/json"}))
    first, second = deliver(gmail_home, env(1), env(2))
    assert isinstance(first.error, PermanentFailure), first
    assert str(first.error).startswith("Gmail refused the message (HTTP 400: ")
    assert second.error is None


def test_408_is_temporary(gmail_home: Path, fake: FakeAPI) -> None:
    """The server gave up waiting for the request: nothing was taken, try again later."""
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    fake.script(SEND, Reply(408, gmail_error(408, "Request Timeout")))
    [outcome] = deliver(gmail_home, env())
    assert isinstance(outcome.error, TemporaryFailure), outcome


def test_a_message_with_no_answer_is_not_said_to_be_refused(
    gmail_home: Path, fake: FakeAPI
) -> None:
    """The server took the message and answered too late: the command must not say the
    message was not accepted (the person would send it again: a third copy)."""
    cli = Cli(gmail_home)
    assert cli("init").exit_code == 0
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    add = ("staff", "add", "JD", "--name", "Jo Doe", "--work-email", "jd@agency.example")
    assert cli(*add).exit_code == 0
    assert cli("config", "set", "user.staff", "JD").exit_code == 0
    assert (
        cli("config", "manager", "--name", "Boss", "--email", "boss@agency.example").exit_code == 0
    )
    assert cli("config", "set", "mail.gmail.timeout", "1").exit_code == 0
    fake.stall = 2.5
    r = cli("message", "manager", "hello")
    assert r.exit_code == 1, r.output
    deadline = time.monotonic() + 10
    while not fake.sent and time.monotonic() < deadline:  # it answers late, then keeps it
        time.sleep(0.05)
    assert len(fake.sent) == 1  # the server has it
    said = r.stderr
    assert "not accepted" not in said and "may have arrived" in said, said
    assert "do not send it again yourself" in said and ".)" not in said, said


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, {"id": "18c0000000000001", "labelIds": ["SENT"]}, take=True, cut=5),
        Reply(200, b"not gzip at all", {"Content-Encoding": "gzip"}, take=True),
        Reply(200, {"id": "18c0000000000001", "labelIds": ["SENT"]}, take=True, trickle_body=0.2),
    ],
    ids=["cut-off", "undecodable", "trickled"],
)
def test_a_200_whose_body_goes_wrong_is_sent_once(
    gmail_home: Path, fake: FakeAPI, reply: Reply
) -> None:
    """The status line said Gmail took the message: what becomes of the body after it
    changes nothing. Deferred as possibly sent, it went again (two copies); a body that
    could not be decoded ended the run as an internal error, and it went again too."""
    settings = Settings.load(gmail_home)
    settings.set("mail.gmail.timeout", 1)
    settings.save()
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    fake.script(SEND, reply)
    first, second = deliver(gmail_home, env(1), env(2))
    assert first.error is None and first.accepted == ("pat@agency.example",), first
    assert second.error is None
    assert len(fake.sent) == 2


@pytest.mark.parametrize(
    "reply",
    [
        Reply(429, gmail_error(429, "Too many requests"), {"Retry-After": "120"}, cut=3),
        Reply(429, gmail_error(429, "Too many requests"), {"Retry-After": "120"}, trickle_body=1),
    ],
    ids=["cut-off", "trickled"],
)
def test_a_refusal_whose_body_goes_wrong_is_still_the_refusal(
    gmail_home: Path, fake: FakeAPI, reply: Reply
) -> None:
    """Its status and headers came whole: a 429 is a request to slow down (nothing was
    taken), not an answer that never came."""
    settings = Settings.load(gmail_home)
    settings.set("mail.gmail.timeout", 1)
    settings.save()
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    fake.script(SEND, reply)
    [outcome] = deliver(gmail_home, env())
    assert isinstance(outcome.error, TemporaryFailure), outcome
    assert "limiting the rate (HTTP 429" in str(outcome.error)
    assert outcome.retry_after == 120 and not outcome.error.maybe_sent


LOGIN_PAGE = {"Location": "https://proxy.agency.example/login?s=1"}
NOT_FOUND = b"<html><body>Not Found</body></html>"
HTML_TYPE = {"Content-Type": "text/html; charset=utf-8"}


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        *((s, b"", LOGIN_PAGE) for s in (301, 302, 303, 307, 308)),
        (404, NOT_FOUND, {}),
        (405, NOT_FOUND, {}),
    ],
)
def test_an_answer_that_is_not_gmails_keeps_the_mail_queued(
    initialised: Cli,
    gmail_home: Path,
    fake: FakeAPI,
    status: int,
    body: bytes,
    headers: dict[str, str],
) -> None:
    """A proxy that sends its sign-in page, an API address that moved (a redirect: a POST
    is not followed), a wrong address answered by a 404 or 405 page: no answer of Gmail's.
    Every message was failed for good as "refused" by Gmail, the whole outbox in one run;
    the run stops with the mail queued, naming the address and the setting."""
    from tests.test_faults import DATE, queue_messages, statuses

    cli = initialised
    add = ("staff", "add", "JD", "--name", "Jo Doe", "--work-email", "jd@agency.example")
    assert cli(*add).exit_code == 0
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    assert cli("config", "set", "user.staff", "JD").exit_code == 0
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    queue_messages(gmail_home, 3)
    fake.script(SEND, Reply(status, body, headers))
    r = cli("check", "--date", DATE)
    assert r.exit_code == 3, r.output
    assert f"HTTP {status}" in r.stderr and "mail.gmail.api_base" in r.stderr, r.stderr
    if headers:
        assert "proxy.agency.example" in r.stderr, r.stderr
    assert statuses(gmail_home)["failed"] == 0 and fake.sent == []
    assert cli("check", "--date", DATE).exit_code == 0
    assert statuses(gmail_home) == {"sent": 3} and len(fake.sent) == 3


def _gmail_check_home(cli: Cli, home: Path, fake: FakeAPI, n: int) -> None:
    """JD signed in with Gmail, no agency data, ``n`` messages queued."""
    from tests.test_faults import queue_messages

    add = ("staff", "add", "JD", "--name", "Jo Doe", "--work-email", "jd@agency.example")
    assert cli(*add).exit_code == 0
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    assert cli("config", "set", "user.staff", "JD").exit_code == 0
    store_signin(home, fake, "JD", "jd@agency.example")
    queue_messages(home, n)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b"<!DOCTYPE html><html><body>Blocked by policy</body></html>", HTML_TYPE),
        Reply(200, b"\r\n  <html><body>Welcome! Accept the terms to go on</body></html>"),
        Reply(202, b"<?xml version='1.0'?><html xmlns='http://www.w3.org/1999/xhtml'/>"),
    ],
    ids=["html", "html-untyped", "xhtml-202"],
)
def test_a_2xx_web_page_is_no_answer_of_gmails_and_keeps_the_mail_queued(
    initialised: Cli, gmail_home: Path, fake: FakeAPI, reply: Reply
) -> None:
    """A proxy's page or a captive portal with a 2xx status: the Gmail API never answers
    with markup, so it did not take the message. It was counted as sent, and lost."""
    from tests.test_faults import DATE, statuses

    cli = initialised
    _gmail_check_home(cli, gmail_home, fake, 3)
    fake.script(SEND, reply)
    r = cli("check", "--date", DATE)
    assert r.exit_code == 3, r.output
    assert f"HTTP {reply.status} with a web page" in r.stderr, r.stderr
    assert "nothing was sent" in r.stderr and "mail.gmail.api_base" in r.stderr, r.stderr
    assert statuses(gmail_home)["sent"] == 0 and statuses(gmail_home)["failed"] == 0
    assert fake.sent == []
    assert cli("check", "--date", DATE).exit_code == 0
    assert statuses(gmail_home) == {"sent": 3} and len(fake.sent) == 3


def test_a_web_page_names_the_api_without_the_password_of_its_address(
    initialised: Cli, gmail_home: Path, fake: FakeAPI
) -> None:
    """An api_base with a user part: a short password is masked by no rule of value."""
    from tests.test_faults import DATE

    cli = initialised
    _gmail_check_home(cli, gmail_home, fake, 1)
    base = fake.base.replace("http://", "http://gw:pw99@")
    assert cli("config", "set", "mail.gmail.api_base", base).exit_code == 0
    fake.script(SEND, Reply(200, b"<html><body>Blocked</body></html>", HTML_TYPE))
    r = cli("check", "--date", DATE)
    assert r.exit_code == 3 and "with a web page" in r.stderr, r.output
    log = cli("log", "--json").stdout + cli("outbox", "--json").stdout
    assert "pw99" not in r.output + log, r.output + log


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b"{}", {"Content-Type": "application/json"}, take=True),
        Reply(200, b"", HTML_TYPE, take=True),
        Reply(200, b'{"status": "ok"}', take=True),
    ],
    ids=["json-without-id", "empty-typed-html", "other-json"],
)
def test_a_2xx_that_is_no_web_page_is_gmails_acceptance(
    initialised: Cli, gmail_home: Path, fake: FakeAPI, reply: Reply
) -> None:
    """The status line is the answer: a 2xx without markup is on record as sent, and never
    sent again (a second copy), whatever its body or its Content-Type says."""
    from tests.test_faults import DATE, statuses

    cli = initialised
    _gmail_check_home(cli, gmail_home, fake, 2)
    fake.script(SEND, reply)
    r = cli("check", "--date", DATE)
    assert r.exit_code == 0, r.output
    assert statuses(gmail_home) == {"sent": 2}
    assert cli("check", "--date", DATE).exit_code == 0
    assert len(fake.sent) == 2


def test_400_is_permanent_with_gmails_words(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    fake.script(SEND, Reply(400, gmail_error(400, "Invalid To header", "invalidArgument")))
    outcomes = deliver(gmail_home, env(1), env(2))
    assert isinstance(outcomes[0].error, PermanentFailure)
    assert str(outcomes[0].error) == "Gmail refused the message (HTTP 400: Invalid To header)."
    assert outcomes[1].error is None  # the next message is not affected


def test_missing_scope_stops_the_run_naming_the_command(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    body = gmail_error(
        403, "Request had insufficient authentication scopes.", "insufficientPermissions"
    )
    fake.script(SEND, Reply(403, body))
    with pytest.raises(AuthError, match=r"cpmail staff signin JD"):
        deliver(gmail_home, env())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_raises_unreachable(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    settings = Settings.load(gmail_home)
    settings.set("mail.gmail.api_base", f"http://127.0.0.1:{free_port()}")
    settings.save()
    with pytest.raises(Unreachable, match="cannot reach the Gmail API"):
        deliver(gmail_home, env())


def test_an_untrusted_certificate_is_named_not_the_network(gmail_home: Path, fake: FakeAPI) -> None:
    """A proxy that inspects HTTPS with an authority this machine does not trust: "check
    the network" sent the reader to what works. Nothing was sent; the run stops (exit 3)."""
    import ssl

    import trustme

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def handshake() -> None:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                    pass

        threading.Thread(target=handshake, daemon=True).start()
        store_signin(gmail_home, fake, "JD", "jd@agency.example")
        settings = Settings.load(gmail_home)
        settings.set("mail.gmail.api_base", f"https://127.0.0.1:{listener.getsockname()[1]}")
        settings.save()
        with pytest.raises(Unreachable) as info:
            deliver(gmail_home, env())
    said = str(info.value)
    assert "certificate of the Gmail API" in said and "could not be verified" in said, said
    assert "check the network" not in said and info.value.exit_code == 3


def test_unreachable_token_endpoint_raises_unreachable(gmail_home: Path, fake: FakeAPI) -> None:
    store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=True)
    settings = Settings.load(gmail_home)
    settings.set("mail.gmail.token_uri", f"http://127.0.0.1:{free_port()}/token")
    settings.save()
    with pytest.raises(Unreachable, match="cannot reach Google's token endpoint"):
        deliver(gmail_home, env())
    assert fake.sent == []


def test_a_plain_http_api_address_off_this_machine_is_refused(
    gmail_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"mail\.gmail\.api_base"):
        Settings.load(gmail_home).set("mail.gmail.api_base", "http://gmail.example.com")
    monkeypatch.setenv("CPMAIL_MAIL_GMAIL_API_BASE", "http://gmail.example.com")
    with pytest.raises(ConfigError, match="CPMAIL_MAIL_GMAIL_API_BASE: use an https://"):
        deliver(gmail_home, env())


# ---------------------------------------------------------------- sign-in


def sign_in_in_thread(
    home: Path, **kw: Any
) -> tuple[threading.Thread, queue.Queue[str], dict[str, Any]]:
    """Run the real sign-in in a thread; what it shows arrives on the queue."""
    settings = Settings.load(home)
    shown: queue.Queue[str] = queue.Queue()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["address"] = google.google_sign_in(
                settings, SecretStore(home), "JD", open_browser=False, say=shown.put, **kw
            )
        except Exception as e:
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, shown, result


def test_loopback_sign_in_stores_the_token_and_the_address(gmail_home: Path, fake: FakeAPI) -> None:
    fake.google_user = "jane.doe@agency.example"
    thread, shown, result = sign_in_in_thread(gmail_home, login_hint="jd@agency.example")
    text = shown.get(timeout=10)
    assert text.startswith("Open this address in a browser to sign in:")
    url = text.splitlines()[-1]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["scope"][0].split() == list(google.GOOGLE_SCOPES)
    assert query["login_hint"] == ["jd@agency.example"]
    assert query["access_type"] == ["offline"] and query["code_challenge_method"] == ["S256"]
    redirect = query["redirect_uri"][0]
    assert redirect.startswith("http://127.0.0.1:")
    # A stray request (no state) does not end the wait.
    assert httpx.get(redirect + "?code=forged").status_code == 400
    # The browser: the consent page redirects to the loopback address with code and state.
    page = httpx.get(url, follow_redirects=True)
    # The page is shown before the code is exchanged: it says what it knows, no more.
    assert page.status_code == 200 and "received the answer" in page.text
    assert "Signed in" not in page.text
    thread.join(10)
    assert result == {"address": "jane.doe@agency.example"}
    saved = stored(gmail_home)
    assert saved["address"] == "jane.doe@agency.example"
    assert saved["credentials"]["refresh_token"] in fake.refresh
    mode = stat.S_IMODE((gmail_home / "secrets" / token_name("gmail", "JD")).stat().st_mode)
    assert mode == 0o600
    # And the stored sign-in sends.
    assert deliver(gmail_home, env())[0].error is None


def test_sign_in_uses_the_token_uri_setting(gmail_home: Path, fake: FakeAPI) -> None:
    client = google_client("https://accounts.google.invalid")
    client["installed"]["auth_uri"] = f"{fake.base}/o/oauth2/auth"
    SecretStore(gmail_home).set(google.GOOGLE_CLIENT_SECRET, json.dumps(client))
    settings = Settings.load(gmail_home)
    settings.set("mail.gmail.token_uri", f"{fake.base}/token")
    settings.save()
    thread, shown, result = sign_in_in_thread(gmail_home)
    httpx.get(shown.get(timeout=10).splitlines()[-1], follow_redirects=True)
    thread.join(10)
    assert result == {"address": "jd@agency.example"}
    assert stored(gmail_home)["credentials"]["token_uri"] == f"{fake.base}/token"


def test_sign_in_refused_in_the_browser(gmail_home: Path) -> None:
    thread, shown, result = sign_in_in_thread(gmail_home)
    url = shown.get(timeout=10).splitlines()[-1]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    redirect, state = query["redirect_uri"][0], query["state"][0]
    httpx.get(redirect, params={"error": "access_denied", "state": state})
    thread.join(10)
    assert isinstance(result["error"], AuthError)
    assert "cancelled or access was denied" in str(result["error"])
    assert not SecretStore(gmail_home).has(token_name("gmail", "JD"))


def test_sign_in_times_out_with_a_clear_error(gmail_home: Path) -> None:
    thread, shown, result = sign_in_in_thread(gmail_home, timeout=0.5)
    shown.get(timeout=10)
    thread.join(10)
    assert isinstance(result["error"], AuthError)
    assert "nobody finished signing in within 0.5 seconds" in str(result["error"])


def test_unticked_send_permission_is_explained(gmail_home: Path, fake: FakeAPI) -> None:
    fake.google_granted = "openid https://www.googleapis.com/auth/userinfo.email"
    thread, shown, result = sign_in_in_thread(gmail_home)
    httpx.get(shown.get(timeout=10).splitlines()[-1], follow_redirects=True)
    thread.join(10)
    assert isinstance(result["error"], AuthError)
    assert "did not grant permission to send e-mail" in str(result["error"])
    assert not SecretStore(gmail_home).has(token_name("gmail", "JD"))


def run_signin_process(
    home: Path, *args: str, display: str | None, browser: str | None = None
) -> tuple[int, str, str]:
    """`cpmail staff signin …` as a real process; play the browser with what it prints."""
    drop = ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(CPMAIL_HOME=str(home), OAUTHLIB_INSECURE_TRANSPORT="1", COLUMNS="80")
    if display:
        env["DISPLAY"] = display
    if browser:
        env["BROWSER"] = browser
    code = "from cpmail.cli.app import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "staff", "signin", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.stderr is not None
    err_lines = []
    for line in proc.stderr:
        err_lines.append(line)
        if line.startswith("http://"):
            httpx.get(line.strip(), follow_redirects=True, timeout=10)
            break
    out, rest = proc.communicate(timeout=60)
    return proc.returncode, out, "".join(err_lines) + rest


@pytest.mark.parametrize(
    ("args", "display", "browser"),
    [((), None, None), (("--no-browser",), ":99", None), ((), ":99", "false")],
    ids=["no-display", "no-browser", "browser-fails"],
)
def test_staff_signin_command_prints_the_address_and_signs_in(
    initialised: Cli,
    gmail_home: Path,
    fake: FakeAPI,
    args: tuple[str, ...],
    display: str | None,
    browser: str | None,
) -> None:
    cli = initialised
    r = cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.example")
    assert r.exit_code == 0, r.output
    code, out, err = run_signin_process(gmail_home, "JD", *args, display=display, browser=browser)
    assert code == 0, err
    assert "Signing in JD (Jane Doe) as jd@agency.example with Google." in err
    if not browser:  # with a browser that fails to start, the address is printed just the same
        assert "Open this address in a browser to sign in:" in err
    assert out.strip() == "Signed in JD (Jane Doe) as jd@agency.example with Google."
    assert signed_in_address(SecretStore(gmail_home), "gmail", "JD") == "jd@agency.example"
    # The whole way round: `staff test` sends through the Gmail API as JD.
    r = cli("staff", "test", "JD")
    assert r.exit_code == 0, r.output
    [sent] = fake.sent
    assert sent.user == "jd@agency.example" and b"To: " in sent.mime


def test_staff_signin_refuses_device_code_for_google(initialised: Cli, gmail_home: Path) -> None:
    r = initialised("staff", "signin", "--shared", "--device-code")
    assert r.exit_code == 2
    assert "--device-code works with Microsoft only" in r.stderr


def test_staff_signin_needs_an_api_transport(initialised: Cli) -> None:
    r = initialised("staff", "signin", "JD")
    assert r.exit_code == 2
    assert "mail.transport is 'file'" in r.stderr


def test_staff_signin_unknown_staff(initialised: Cli, gmail_home: Path) -> None:
    r = initialised("staff", "signin", "ZZ")
    assert r.exit_code == 2
    assert "no staff member 'ZZ'" in r.stderr


# ---------------------------------------------------------------- config gmail


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_config_gmail_keeps_a_0600_copy_and_sets_the_transport(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    src = write_json(
        tmp_path / "client_secret_123.json", google_client("https://accounts.google.com")
    )
    r = cli("config", "gmail", "--client-secrets", str(src))
    assert r.exit_code == 0, r.output
    assert GOOGLE_CLIENT_SECRET not in r.output
    assert GOOGLE_CLIENT_ID in r.stdout
    copy = home / "secrets" / google.GOOGLE_CLIENT_SECRET
    assert copy.read_text() == src.read_text()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    src.unlink()  # the original may go
    settings = Settings.load(home)
    assert settings["mail.transport"] == "gmail"
    assert settings["mail.gmail.client_secrets"] == google.STORED_CLIENT
    assert (
        google.google_client(settings, SecretStore(home))["installed"]["client_id"]
        == GOOGLE_CLIENT_ID
    )
    r = cli("config", "show")
    assert GOOGLE_CLIENT_SECRET not in r.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        (
            google_client("https://x", kind="web"),
            "not an OAuth client of type 'installed' (it is of type 'web')",
        ),
        ({"type": "service_account", "private_key": "k"}, "it is a service account key"),
        (
            {
                "installed": {
                    k: v
                    for k, v in google_client("https://x")["installed"].items()
                    if k != "client_secret"
                }
            },
            "the client has no 'client_secret'",
        ),
        (
            {"installed": {**google_client("https://x")["installed"], "token_uri": ""}},
            "the client has no 'token_uri'",
        ),
    ],
    ids=["not-json", "web", "service-account", "no-secret", "empty-token-uri"],
)
def test_config_gmail_refuses_a_bad_client_file(
    cli: Cli, home: Path, tmp_path: Path, content: Any, message: str
) -> None:
    src = write_json(tmp_path / "client.json", content)
    r = cli("config", "gmail", "--client-secrets", str(src))
    assert r.exit_code == 2
    assert str(src) in r.stderr and message in r.stderr
    assert not (home / "secrets" / google.GOOGLE_CLIENT_SECRET).exists()
    assert Settings.load(home)["mail.transport"] == "file"


def test_config_gmail_missing_file(cli: Cli, tmp_path: Path) -> None:
    r = cli("config", "gmail", "--client-secrets", str(tmp_path / "nope.json"))
    assert r.exit_code == 2
    assert "nope.json: no such file" in r.stderr


# ---------------------------------------------------------------- no secret anywhere


def test_no_token_or_client_secret_in_any_output(
    initialised: Cli, gmail_home: Path, fake: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    texts: list[str] = []
    cli = initialised
    cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.example")
    code, out, err = run_signin_process(gmail_home, "JD", display=None)
    assert code == 0, err
    texts += [out, err]
    r = cli("staff", "test", "JD")
    texts += [r.stdout, r.stderr]
    # Error paths: a 400 and a 429 recorded as outcomes, then a revoked sign-in.
    fake.script(SEND, Reply(400, gmail_error(400, "Invalid To header")), Reply(429, {}))
    for o in deliver(gmail_home, env(1), env(2)):
        texts += [str(o.error), repr(o.error)]
    fake.expire_access_tokens()
    fake.revoke_refresh_tokens()
    with pytest.raises(AuthError) as info:
        deliver(gmail_home, env(3))
    texts += [str(info.value), repr(info.value)]
    r = cli("staff", "test", "JD")
    assert r.exit_code == 3
    texts += [r.stdout, r.stderr]
    texts += [cli("config", "show").output, cli("config", "show", "--json").output]
    texts += [rec.getMessage() for rec in caplog.records]
    everything = "\n".join(texts)
    assert "cpmail staff signin JD" in everything  # the texts really were collected
    secrets = [*fake.issued, GOOGLE_CLIENT_SECRET]
    assert len(fake.issued) >= 2
    leaked = [s for s in secrets if s in everything]
    assert leaked == []


@pytest.mark.parametrize("how", ["stall", "trickle"])
def test_an_api_that_stops_answering_ends_the_run_early(
    gmail_home: Path, fake: FakeAPI, how: str
) -> None:
    """Three messages in a row without an answer: the pass ends, the rest stay queued.

    An answer that comes a byte at a time, each well within the timeout, is no
    answer in time either: the timeout bounds the whole answer, not each read.
    """
    import time

    from cpmail.compose import Draft, Mailbox, build_message
    from cpmail.errors import Unreachable
    from cpmail.outbox import deliver, new_run_id, queue
    from cpmail.store import connect
    from cpmail.store.schema import messages
    from tests.conftest import Cli

    assert Cli(gmail_home)("init").exit_code == 0
    store_signin(gmail_home, fake, "JD", "jd@agency.example")
    settings = Settings.load(gmail_home)
    settings.set("mail.gmail.timeout", "1")
    settings.save()
    settings = Settings.load(gmail_home)
    engine = connect(settings.db_url, where="test")
    with engine.begin() as conn:
        for i in range(12):
            msg = build_message(
                sender=Mailbox("jd@agency.example"),
                to=[Mailbox(f"p{i}@agency.example")],
                subject=f"Message {i}",
                text="hello",
                event="message",
                key=f"stall:{i}",
            )
            draft = Draft.from_message(
                msg, event="message", key=None, account="JD", envelope_from="jd@agency.example"
            )
            assert queue(conn, draft, run_id="q") is not None
    if how == "stall":
        fake.stall = 3.0
    else:
        fake.trickle = 0.2  # an answer of about 300 bytes: a minute
    started = time.monotonic()
    result = deliver(engine, transport(gmail_home), settings, run_id=new_run_id())
    elapsed = time.monotonic() - started
    assert isinstance(result.stopped, Unreachable)
    assert "stopped answering" in str(result.stopped)
    assert elapsed < 8, f"{elapsed:.1f} s: every message waited out its timeout"
    with engine.connect() as conn:
        statuses = [s for (s,) in conn.execute(sa.select(messages.c.status))]
    assert statuses.count("sending") == 0 and statuses.count("failed") == 0
    assert statuses.count("deferred") + statuses.count("queued") == 12


@pytest.mark.parametrize(
    "shape",
    ["json", "json-code", "text", "refresh"],
)
def test_a_server_quoting_a_token_never_gets_it_stored(
    gmail_home: Path, fake: FakeAPI, shape: str
) -> None:
    """A refusal that quotes the request (the Authorization header, a token) is kept masked."""
    creds = store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=shape == "refresh")
    at, rt = creds["token"], creds["refresh_token"]
    if shape == "json":
        fake.script(SEND, Reply(400, gmail_error(400, f"Invalid header: Bearer {at}")))
    elif shape == "json-code":
        fake.script(SEND, Reply(503, {"error": {"code": at, "message": f"token {at} broken"}}))
    elif shape == "text":
        fake.script(SEND, Reply(403, f"Forbidden: Authorization: Bearer {at[:20]}\n{at[20:]}"))
    else:
        fake.script("/token", Reply(400, {"error": f"invalid_grant {rt} {GOOGLE_CLIENT_SECRET}"}))
    try:
        outcomes = deliver(gmail_home, env())
        said = " ".join(str(o.error) for o in outcomes)
    except AuthError as e:
        said = str(e)
    assert said.strip()
    for secret in (at, rt, GOOGLE_CLIENT_SECRET, at[:20], rt[4:24]):
        assert secret not in said, said


def test_a_client_secret_quoted_when_the_code_is_exchanged_is_not_repeated(
    gmail_home: Path, fake: FakeAPI
) -> None:
    said = {"error": f"invalid_client: client_secret={GOOGLE_CLIENT_SECRET} unknown"}
    fake.script("/token", Reply(401, said))
    thread, shown, result = sign_in_in_thread(gmail_home)
    httpx.get(shown.get(timeout=10).splitlines()[-1], follow_redirects=True)
    thread.join(10)
    assert isinstance(result["error"], AuthError)
    words = str(result["error"])
    assert "invalid_client" in words and GOOGLE_CLIENT_SECRET not in words, words
    assert GOOGLE_CLIENT_SECRET[:8] not in words, words


def test_a_trickling_token_endpoint_holds_an_account_no_longer_than_the_timeout(
    gmail_home: Path, fake: FakeAPI
) -> None:
    """Google trickles its answer to the renewal a byte at a time, each byte well within
    the timeout: the renewal is given up after the timeout, once for the account; its
    messages wait in the outbox, none is posted with a stale token."""
    import time

    store_signin(gmail_home, fake, "JD", "jd@agency.example", expired=True)
    settings = Settings.load(gmail_home)
    settings.set("mail.gmail.timeout", "1")
    settings.save()
    fake.trickle_tokens = 0.2  # an answer of a few hundred bytes: a minute or more
    started = time.monotonic()
    outcomes = deliver(gmail_home, env(1), env(2), env(3))
    elapsed = time.monotonic() - started
    assert elapsed < 4, f"{elapsed:.1f} s: the renewal was waited out"
    assert all(isinstance(o.error, TemporaryFailure) for o in outcomes), outcomes
    assert all("within 1 s" in str(o.error) for o in outcomes), outcomes
    assert fake.sent == []


def test_a_client_file_whose_sign_in_page_is_not_https_is_named(
    gmail_home: Path, fake: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auth_uri: http://…` in the client file stopped `staff signin` with an internal error
    (exit 70): it is the client file to fix, said so."""
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT")
    thread, _shown, result = sign_in_in_thread(gmail_home)
    thread.join(10)
    assert isinstance(result.get("error"), ConfigError), result
    assert "'auth_uri' is not https" in str(result["error"])
