"""The microsoft transport, Microsoft sign-in and `config microsoft`, against a real local server.

msal talks to https://login.microsoftonline.com; the ``authority_base`` setting
points at the fake (http on 127.0.0.1), so cpmail gives msal an HTTP client
that sends those requests there.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import stat
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cpmail.errors import AuthError, ConfigError, PermanentFailure, TemporaryFailure, Unreachable
from cpmail.oauth.microsoft import MICROSOFT_APP_SECRET, microsoft_sign_in
from cpmail.oauth.tokens import signed_in_address
from cpmail.secrets import SHARED, SecretStore, token_name
from cpmail.settings import Settings
from cpmail.transports.base import Envelope, Outcome, get_transport
from cpmail.transports.microsoft import MicrosoftTransport
from tests.conftest import Cli
from tests.fakeapi import MS_APP_SECRET, MS_CLIENT_ID, MS_TENANT_ID, FakeAPI, Reply, mime

ME = "/v1.0/me/sendMail"
TOKEN = "/organizations/oauth2/v2.0/token"


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as f:
        yield f


@pytest.fixture
def ms_home(home: Path, fake: FakeAPI) -> Path:
    settings = Settings.load(home)
    settings.set("mail.transport", "microsoft")
    settings.set("mail.microsoft.client_id", MS_CLIENT_ID)
    settings.set("mail.microsoft.authority_base", fake.base)
    settings.set("mail.microsoft.api_base", fake.base)
    settings.set("mail.sender", "office@agency.example")
    settings.save()
    return home


def sign_in(home: Path, account: str = "JD", **kw: Any) -> tuple[str, list[str]]:
    """The real device-code sign-in against the fake; return the address and what it showed."""
    shown: list[str] = []
    address = microsoft_sign_in(
        Settings.load(home),
        SecretStore(home),
        account,
        device_code=True,
        open_browser=False,
        say=shown.append,
        **kw,
    )
    return address, shown


def transport(home: Path) -> MicrosoftTransport:
    settings = Settings.load(home)
    t = get_transport(settings, SecretStore(home, settings["secrets.backend"]))
    assert isinstance(t, MicrosoftTransport)
    return t


def deliver(home: Path, *envelopes: Envelope) -> list[Outcome]:
    outcomes: list[Outcome] = []
    transport(home).deliver(iter(envelopes), outcomes.append)
    return outcomes


def env(n: int = 1, account: str = "JD", raw: bytes | None = None) -> Envelope:
    return Envelope(n, account, "jd@agency.example", ("pat@agency.example",), raw or mime())


def secret_file(home: Path, account: str = "JD") -> Path:
    return home / "secrets" / token_name("microsoft", account)


# ---------------------------------------------------------------- sign-in


def test_device_code_sign_in_stores_the_cache_and_address(ms_home: Path, fake: FakeAPI) -> None:
    fake.device_pending = 1  # the person needs one polling interval to enter the code
    address, shown = sign_in(ms_home)
    assert address == "jd@agency.example"
    assert shown == [
        "To sign in, use a web browser to open the page https://microsoft.com/devicelogin "
        "and enter the code FAKE-CODE to authenticate."
    ]
    grants = [r.form().get("grant_type") for r in fake.requests if r.path == TOKEN]
    assert grants == ["urn:ietf:params:oauth:grant-type:device_code"] * 2
    scope = next(r for r in fake.requests if r.path.endswith("/devicecode")).form()["scope"]
    assert set(scope.split()) == {"Mail.Send", "openid", "profile", "offline_access"}
    path = secret_file(ms_home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["address"] == "jd@agency.example"
    cache = json.loads(doc["cache"])
    [acct] = cache["Account"].values()
    assert acct["username"] == "jd@agency.example"
    assert signed_in_address(SecretStore(ms_home), "microsoft", "JD") == "jd@agency.example"


def test_a_device_code_quoted_by_the_token_endpoint_is_never_repeated(
    ms_home: Path, fake: FakeAPI
) -> None:
    """What the sign-in sent (a device code, an authorization code, a PKCE verifier) is
    masked by its value in the error, whatever its shape."""
    fake.echo_device_code = True
    with pytest.raises(AuthError) as caught:
        sign_in(ms_home)
    [code] = fake.device_codes
    said = str(caught.value)
    assert "AADSTS70000" in said and code not in said, said


def test_public_client_flows_off_is_explained(ms_home: Path, fake: FakeAPI) -> None:
    fake.device_error = (
        "invalid_client",
        "AADSTS7000218: The request body must contain the following parameter: "
        "'client_assertion' or 'client_secret'.",
    )
    with pytest.raises(AuthError) as info:
        sign_in(ms_home)
    assert "Allow public client flows" in str(info.value)
    assert info.value.exit_code == 3


def test_interactive_sign_in_on_a_loopback_redirect(ms_home: Path, fake: FakeAPI) -> None:
    shown: queue.Queue[str] = queue.Queue()
    result: dict[str, Any] = {}
    settings = Settings.load(ms_home)

    def run() -> None:
        try:
            result["address"] = microsoft_sign_in(
                settings,
                SecretStore(ms_home),
                "JD",
                device_code=False,
                open_browser=False,
                say=shown.put,
                login_hint="jd@agency.example",
            )
        except Exception as e:
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text = shown.get(timeout=10)
    assert text.startswith("Open this address in a browser to sign in:")
    auth_uri = text.splitlines()[-1]
    assert auth_uri.startswith(
        "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize?"
    )
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(auth_uri).query)
    assert query["login_hint"] == ["jd@agency.example"]
    assert query["redirect_uri"][0].startswith("http://localhost:")
    assert query["response_mode"] == ["form_post"]
    # The person approves; the browser posts the answer to cpmail's loopback server.
    redirect, params = fake.ms_authorize(auth_uri)
    redirect = redirect.replace("http://localhost:", "http://127.0.0.1:")
    assert httpx.post(redirect, data={**params, "state": "forged"}).status_code == 400
    page = httpx.post(redirect, data=params)
    assert page.status_code == 200 and "received the answer" in page.text
    thread.join(10)
    assert result == {"address": "jd@agency.example"}
    assert deliver(ms_home, env())[0].error is None


def test_cli_device_code_sign_in_then_staff_test(
    initialised: Cli, ms_home: Path, fake: FakeAPI
) -> None:
    cli = initialised
    r = cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.example")
    assert r.exit_code == 0, r.output
    r = cli("staff", "signin", "JD", "--device-code")
    assert r.exit_code == 0, r.output
    assert "enter the code FAKE-CODE" in r.stderr
    assert r.stdout.strip() == "Signed in JD (Jane Doe) as jd@agency.example with Microsoft."
    r = cli("staff", "test", "JD")
    assert r.exit_code == 0, r.output
    [sent] = fake.sent
    assert (sent.user, sent.path) == ("jd@agency.example", ME)


def test_cli_warns_when_another_account_signed_in(
    initialised: Cli, ms_home: Path, fake: FakeAPI
) -> None:
    fake.ms_user = "someone.else@agency.example"
    r = initialised("staff", "signin", "--shared", "--device-code")
    assert r.exit_code == 0, r.output
    assert "as someone.else@agency.example with Microsoft" in r.stdout
    assert "the shared sender sends as office@agency.example" in r.stderr


def test_cli_public_client_flows_off_exits_3(
    initialised: Cli, ms_home: Path, fake: FakeAPI
) -> None:
    fake.device_error = ("invalid_client", "AADSTS7000218: The request body must contain …")
    r = initialised("staff", "signin", "--shared", "--device-code")
    assert r.exit_code == 3
    assert "'Allow public client flows' to Yes" in r.stderr


# ---------------------------------------------------------------- sending


def test_graph_receives_exactly_the_bytes_sent(ms_home: Path, fake: FakeAPI) -> None:
    sign_in(ms_home)
    e = env()
    [outcome] = deliver(ms_home, e)
    assert outcome.error is None and outcome.accepted == ("pat@agency.example",)
    [sent] = fake.sent
    assert (sent.path, sent.content_type, sent.user) == (ME, "text/plain", "jd@agency.example")
    assert sent.mime == e.raw
    body = fake.requests[-1].body
    assert body == base64.b64encode(e.raw)  # standard base64, not the URL-safe kind


def test_message_over_the_graph_limit_is_refused(ms_home: Path, fake: FakeAPI) -> None:
    sign_in(ms_home)
    t = transport(ms_home)
    assert t.max_message_bytes == 3 * 1024 * 1024
    assert len(base64.b64encode(b"x" * t.max_message_bytes)) == 4 * 1024 * 1024
    [outcome] = deliver(ms_home, env(raw=b"x" * (t.max_message_bytes + 1)))
    assert isinstance(outcome.error, PermanentFailure)
    assert "3,145,729 bytes; Microsoft Graph accepts at most 3,145,728 bytes" in str(outcome.error)
    assert fake.sent == []


def test_expired_token_is_refreshed_and_the_cache_saved_0600(ms_home: Path, fake: FakeAPI) -> None:
    fake.expires_in = 60  # msal renews tokens with less than five minutes left
    sign_in(ms_home)
    fake.expires_in = 3600
    path = secret_file(ms_home)
    before = path.read_text()
    [outcome] = deliver(ms_home, env())
    assert outcome.error is None
    refreshes = [r for r in fake.requests if r.path == TOKEN and "refresh_token" in r.form()]
    assert len(refreshes) == 1
    after = path.read_text()
    assert after != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The rotated refresh token is the one stored (the old one is spent).
    cache = json.loads(json.loads(after)["cache"])
    [rt] = [v["secret"] for v in cache["RefreshToken"].values()]
    assert rt in fake.refresh
    # Now valid: a second run sends without refreshing and does not rewrite the file.
    mtime = path.stat().st_mtime_ns
    assert deliver(ms_home, env(2))[0].error is None
    assert path.stat().st_mtime_ns == mtime and path.read_text() == after
    assert len([r for r in fake.requests if r.path == TOKEN]) == 2  # device code + 1 refresh


def test_401_forces_one_refresh_and_retries(ms_home: Path, fake: FakeAPI) -> None:
    sign_in(ms_home)
    fake.expire_access_tokens()
    e = env()
    [outcome] = deliver(ms_home, e)
    assert outcome.error is None
    posts = [p for p in fake.paths("POST") if p in (ME, TOKEN)]
    assert posts[-3:] == [ME, TOKEN, ME]
    assert fake.sent[0].mime == e.raw


@pytest.mark.parametrize(
    ("account", "command"),
    [("JD", "cpmail staff signin JD"), (SHARED, "cpmail staff signin --shared")],
)
def test_revoked_sign_in_names_the_command(
    ms_home: Path, fake: FakeAPI, account: str, command: str
) -> None:
    fake.expires_in = 60
    sign_in(ms_home, account)
    fake.revoke_refresh_tokens()
    with pytest.raises(AuthError) as info:
        deliver(ms_home, env(account=account))
    assert f"run `{command}`" in str(info.value)
    assert "invalid_grant" in str(info.value)
    assert fake.sent == []


def graph_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def test_429_is_temporary_and_honours_retry_after(ms_home: Path, fake: FakeAPI) -> None:
    sign_in(ms_home)
    fake.script(
        ME,
        Reply(429, graph_error("ApplicationThrottled", "Too many requests"), {"Retry-After": "37"}),
    )
    [outcome] = deliver(ms_home, env())
    assert isinstance(outcome.error, TemporaryFailure)
    assert outcome.retry_after == 37
    assert "ApplicationThrottled: Too many requests" in str(outcome.error)


def test_server_errors_are_temporary(ms_home: Path, fake: FakeAPI) -> None:
    sign_in(ms_home)
    fake.script(
        ME,
        Reply(503, graph_error("ServiceUnavailable", "busy"), {"Retry-After": "5"}),
        Reply(500, "upstream failed"),
    )
    first, second = deliver(ms_home, env(1), env(2))
    assert isinstance(first.error, TemporaryFailure) and first.retry_after == 5
    assert isinstance(second.error, TemporaryFailure) and second.retry_after is None
    assert "upstream failed" in str(second.error)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(202, b"accepted for delivery", {"Content-Encoding": "gzip"}, take=True),
        Reply(202, b"accepted for delivery", take=True, cut=4),
    ],
    ids=["undecodable", "cut-off"],
)
def test_a_202_whose_body_goes_wrong_is_sent_once(
    ms_home: Path, fake: FakeAPI, reply: Reply
) -> None:
    """Graph said 202: it has the message, whatever becomes of the body after the status
    (an internal error ended the run, and the message went again)."""
    sign_in(ms_home)
    fake.script(ME, reply)
    first, second = deliver(ms_home, env(1), env(2))
    assert first.error is None and first.accepted == ("pat@agency.example",), first
    assert second.error is None
    assert len(fake.sent) == 2


@pytest.mark.parametrize("status", [200, 202])
def test_a_2xx_web_page_is_no_answer_of_graphs_and_keeps_the_mail_queued(
    initialised: Cli, ms_home: Path, fake: FakeAPI, status: int
) -> None:
    """A proxy's page or a captive portal with a 2xx status: Graph never answers with
    markup (202 has no body), so it did not take the message. It was counted as sent."""
    from tests.test_faults import DATE, queue_messages, statuses

    queue_messages(_as_jd(initialised, ms_home), 2)
    page = b"<!DOCTYPE html><html><body>Sign in to the guest network</body></html>"
    fake.script(ME, Reply(status, page, {"Content-Type": "text/html"}))
    r = initialised("check", "--date", DATE)
    assert r.exit_code == 3, r.output
    assert f"HTTP {status} with a web page" in r.stderr, r.stderr
    assert "nothing was sent" in r.stderr and "mail.microsoft.api_base" in r.stderr, r.stderr
    assert statuses(ms_home)["sent"] == 0 and statuses(ms_home)["failed"] == 0
    assert fake.sent == []
    assert initialised("check", "--date", DATE).exit_code == 0
    assert statuses(ms_home) == {"sent": 2} and len(fake.sent) == 2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("words", ["Gateway", "The request was throttled, please slow down"])
def test_a_server_error_after_the_message_went_says_it_may_have_arrived(
    initialised: Cli, ms_home: Path, fake: FakeAPI, status: int, words: str
) -> None:
    """A 5xx comes once the whole message went: Exchange may have sent it (here it did),
    as a gateway that gave up waiting for it says 504. "Deferred", as if Graph had said
    it did not take it, was untrue: whoever reads it may send it again by hand. Whatever
    its words (a throttling one included), it is not offered again in the same run."""
    from tests.test_faults import DATE, queue_messages, statuses

    queue_messages(_as_jd(initialised, ms_home), 1)
    fake.script(ME, Reply(status, graph_error("UnknownError", words), take=True))
    r = initialised("check", "--date", DATE)
    assert r.exit_code == 1, r.output
    said = " ".join(r.output.split())
    assert "1 of the deferred may have arrived already" in said, said
    assert "answer was lost" not in said and "a server error after the message" in said, said
    assert statuses(ms_home) == {"deferred": 1}
    assert len(fake.sent) == 1


def test_400_is_permanent_with_graphs_words(ms_home: Path, fake: FakeAPI) -> None:
    sign_in(ms_home)
    message = "At least one recipient is not valid., Recipient 'x@' is not resolved."
    fake.script(ME, Reply(400, graph_error("ErrorInvalidRecipients", message)))
    first, second = deliver(ms_home, env(1), env(2))
    assert isinstance(first.error, PermanentFailure)
    assert str(first.error) == (
        f"Microsoft Graph refused the message (HTTP 400 ErrorInvalidRecipients: {message})."
    )
    assert second.error is None


def test_access_denied_stops_the_run(ms_home: Path, fake: FakeAPI) -> None:
    sign_in(ms_home)
    fake.script(ME, Reply(403, graph_error("ErrorAccessDenied", "Access is denied.")))
    with pytest.raises(AuthError, match=r"Mail\.Send permission"):
        deliver(ms_home, env())


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "ErrorSendAsDenied"), (404, "MailboxNotEnabledForRESTAPI"), (404, "ErrorInvalidUser")],
)
def test_a_refusal_of_the_sending_mailbox_stops_its_mail_not_each_message(
    ms_home: Path, fake: FakeAPI, status: int, code: str
) -> None:
    """Refused as the sender (no right to send as it, no mailbox): each message was failed
    for good, exit 1; every message from it would be refused alike, so its mail waits."""
    sign_in(ms_home)
    fake.script(ME, Reply(status, graph_error(code, "The user account cannot send.")))
    with pytest.raises(AuthError, match=r"refused to send from JD's account.*Exchange Online"):
        deliver(ms_home, env())


def test_unreachable_sign_in_service(ms_home: Path) -> None:
    sign_in(ms_home)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.load(ms_home)
    settings.set("mail.microsoft.authority_base", f"http://127.0.0.1:{port}")
    settings.save()
    said = (
        r"cannot reach Microsoft's sign-in service \(while looking up the tenant\); check the net"
    )
    with pytest.raises(Unreachable, match=said):
        deliver(ms_home, env())


def test_check_account(ms_home: Path, fake: FakeAPI) -> None:
    t = transport(ms_home)
    with pytest.raises(ConfigError, match=r"JD is not signed in.*run `cpmail staff signin JD`"):
        t.check_account("JD")
    sign_in(ms_home)
    t.check_account("JD")


# ---------------------------------------------------------------- app-only (one account)


def test_app_only_sends_as_the_shared_sender(cli: Cli, ms_home: Path, fake: FakeAPI) -> None:
    r = cli(
        "config", "microsoft", "--client-id", MS_CLIENT_ID, "--tenant", MS_TENANT_ID,
        "--client-secret", input=MS_APP_SECRET + "\n",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert MS_APP_SECRET not in r.output
    assert "app-only" in r.stdout
    path = ms_home / "secrets" / MICROSOFT_APP_SECRET
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    t = transport(ms_home)
    t.check_account(SHARED)  # no sign-in needed
    e = env(account=SHARED)
    [outcome] = deliver(ms_home, e)
    assert outcome.error is None
    [sent] = fake.sent
    assert (sent.path, sent.user) == (
        "/v1.0/users/office@agency.example/sendMail",
        "office@agency.example",
    )
    assert sent.mime == e.raw
    grants = [r.form()["grant_type"] for r in fake.requests if r.path.endswith("/token")]
    assert grants == ["client_credentials"]
    r = cli("config", "microsoft", "--client-id", MS_CLIENT_ID, "--no-client-secret")
    assert r.exit_code == 0 and not path.exists()


def test_app_only_needs_a_tenant_id(cli: Cli, ms_home: Path, fake: FakeAPI) -> None:
    SecretStore(ms_home).set(MICROSOFT_APP_SECRET, MS_APP_SECRET)
    with pytest.raises(ConfigError, match="needs your tenant ID"):
        deliver(ms_home, env(account=SHARED))
    # said before any mail is queued (check's account check), and by `config microsoft`
    # itself, which accepted a secret without a tenant and said mail goes app-only
    with pytest.raises(ConfigError, match="needs your tenant ID"):
        transport(ms_home).check_account(SHARED)
    SecretStore(ms_home).delete(MICROSOFT_APP_SECRET)
    before = (ms_home / "cpmail.toml").read_text(encoding="utf-8")
    r = cli(
        "config", "microsoft", "--client-id", MS_CLIENT_ID, "--client-secret",
        input=MS_APP_SECRET + "\n",
    )  # fmt: skip
    assert r.exit_code == 2 and "needs your tenant ID" in r.stderr, r.output
    assert (ms_home / "cpmail.toml").read_text(encoding="utf-8") == before
    assert not SecretStore(ms_home).has(MICROSOFT_APP_SECRET)


def test_app_only_wrong_secret(ms_home: Path, fake: FakeAPI) -> None:
    settings = Settings.load(ms_home)
    settings.set("mail.microsoft.tenant", MS_TENANT_ID)
    settings.save()
    SecretStore(ms_home).set(MICROSOFT_APP_SECRET, "not-the-secret")
    with pytest.raises(AuthError, match="client secret is wrong or expired"):
        deliver(ms_home, env(account=SHARED))


def test_a_client_secret_quoted_by_the_token_endpoint_is_never_repeated(
    ms_home: Path, fake: FakeAPI
) -> None:
    secret = "Hx!9kQ#vv2Lp%Zr8"  # nothing like a token: only knowing it can hide it
    settings = Settings.load(ms_home)
    settings.set("mail.microsoft.tenant", MS_TENANT_ID)
    settings.save()
    SecretStore(ms_home).set(MICROSOFT_APP_SECRET, secret)
    said = {"error": "invalid_client", "error_description": f"client_secret={secret} is wrong"}
    fake.script(f"/{MS_TENANT_ID}/oauth2/v2.0/token", Reply(401, said), Reply(401, said))
    with pytest.raises(AuthError) as e:
        deliver(ms_home, env(account=SHARED))
    assert secret not in str(e.value) and secret[:8] not in str(e.value), str(e.value)
    assert "invalid_client" in str(e.value)


def test_app_only_refused_twice_names_the_app_not_a_sign_in(ms_home: Path, fake: FakeAPI) -> None:
    """No person signs in app-only: the advice is about the app's permission and secret."""
    settings = Settings.load(ms_home)
    settings.set("mail.microsoft.tenant", MS_TENANT_ID)
    settings.save()
    SecretStore(ms_home).set(MICROSOFT_APP_SECRET, MS_APP_SECRET)
    unauthorized = Reply(401, {"error": {"code": "InvalidAuthenticationToken", "message": "no"}})
    fake.script("/v1.0/users/office@agency.example/sendMail", unauthorized, unauthorized)
    with pytest.raises(AuthError) as info:
        deliver(ms_home, env(account=SHARED))
    assert "Mail.Send application permission" in str(info.value)
    assert "staff signin" not in str(info.value)


# ---------------------------------------------------------------- config microsoft


def test_config_microsoft_sets_the_transport(cli: Cli, home: Path) -> None:
    r = cli("config", "microsoft", "--client-id", MS_CLIENT_ID.upper())
    assert r.exit_code == 0, r.output
    settings = Settings.load(home)
    assert settings["mail.transport"] == "microsoft"
    assert settings["mail.microsoft.client_id"] == MS_CLIENT_ID.upper()
    assert settings["mail.microsoft.tenant"] == "organizations"
    assert "in tenant organizations" in r.stdout
    r = cli(
        "config", "microsoft", "--client-id", MS_CLIENT_ID, "--tenant", "Contoso.onmicrosoft.com"
    )
    assert r.exit_code == 0, r.output
    assert Settings.load(home)["mail.microsoft.tenant"] == "Contoso.onmicrosoft.com"
    r = cli("config", "microsoft", "--client-id", MS_CLIENT_ID, "--tenant", "COMMON")
    assert Settings.load(home)["mail.microsoft.tenant"] == "common"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--client-id", "my-app"), "is not an application (client) ID"),
        (("--client-id", MS_CLIENT_ID, "--tenant", "not a tenant"), "--tenant 'not a tenant'"),
    ],
)
def test_config_microsoft_refuses_bad_values(
    cli: Cli, home: Path, args: tuple[str, ...], message: str
) -> None:
    r = cli("config", "microsoft", *args)
    assert r.exit_code == 2
    assert message in r.stderr
    assert Settings.load(home)["mail.transport"] == "file"


# ---------------------------------------------------------------- no secret anywhere


def test_no_token_or_secret_in_any_output(
    initialised: Cli, ms_home: Path, fake: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    cli = initialised
    texts: list[str] = []
    cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.example")
    fake.expires_in = 60
    for args in (("staff", "signin", "JD", "--device-code"), ("staff", "test", "JD")):
        r = cli(*args)
        assert r.exit_code == 0, r.output
        texts += [r.stdout, r.stderr]
    fake.script(ME, Reply(400, graph_error("ErrorInvalidRecipients", "bad")), Reply(429, {}))
    for o in deliver(ms_home, env(1), env(2)):
        texts += [str(o.error), repr(o.error)]
    fake.revoke_refresh_tokens()
    r = cli("staff", "test", "JD")
    assert r.exit_code == 3
    texts += [r.stdout, r.stderr]
    r = cli(
        "config", "microsoft", "--client-id", MS_CLIENT_ID, "--tenant", MS_TENANT_ID,
        "--client-secret", input=MS_APP_SECRET + "\n",
    )  # fmt: skip
    texts += [r.stdout, r.stderr]
    SecretStore(ms_home).set(MICROSOFT_APP_SECRET, "wrong" + MS_APP_SECRET)
    with pytest.raises(AuthError) as info:
        deliver(ms_home, env(account=SHARED))
    texts += [str(info.value), repr(info.value)]
    texts += [cli("config", "show").output, cli("config", "show", "--json").output]
    texts += [rec.getMessage() for rec in caplog.records]
    everything = "\n".join(texts)
    assert "cpmail staff signin JD" in everything and "FAKE-CODE" in everything
    assert len(fake.issued) >= 4
    leaked = [s for s in [*fake.issued, MS_APP_SECRET] if s in everything]
    assert leaked == []


def _as_jd(cli: Cli, home: Path) -> Path:
    """A home whose staff member JD, signed in, sends; no agency work of their own."""
    r = cli("staff", "add", "JD", "--name", "Jane Doe", "--work-email", "jd@agency.example")
    assert r.exit_code == 0, r.output
    assert cli("staff", "edit", "JD", "--planned-hours", "0").exit_code == 0
    assert cli("config", "set", "user.staff", "JD").exit_code == 0
    sign_in(home)
    return home


def _check_process(home: Path) -> subprocess.Popen[str]:
    """`cpmail check` on the faults' date, as a process of its own (to be signalled)."""
    from tests.test_faults import DATE

    return subprocess.Popen(
        [sys.executable, "-m", "cpmail", "check", "--date", DATE],
        env={**os.environ, "CPMAIL_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.serial
def test_a_second_signal_waits_for_graphs_answer_to_the_message_it_has(
    initialised: Cli, ms_home: Path, fake: FakeAPI
) -> None:
    """Stop, then stop again while Graph holds a message: it is on record as sent, not
    given back to the queue and sent again by the next run."""
    import collections
    import email
    import signal
    import time

    from tests.test_faults import DATE, queue_messages, statuses, wait_for

    cli = initialised
    ids = queue_messages(_as_jd(cli, ms_home), 6)
    fake.stall = 1.0  # Graph takes each message, then answers a second later
    proc = _check_process(ms_home)
    wait_for(lambda: fake.paths("POST").count(ME) >= 2 or proc.poll() is not None)
    assert proc.poll() is None, (proc.communicate(), fake.paths())
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    s = statuses(ms_home)
    assert s["sending"] == 0 and s["sent"] == len(fake.sent) == 2, (s, len(fake.sent))
    fake.stall = 0.0
    assert cli("check", "--date", DATE).exit_code == 0
    got = collections.Counter(
        str(email.message_from_bytes(m.mime)["Message-ID"]) for m in fake.sent
    )
    assert set(got) == ids and max(got.values()) == 1, got


def test_a_secret_in_a_token_endpoints_answer_is_not_shown_with_v(
    initialised: Cli, ms_home: Path, fake: FakeAPI
) -> None:
    """-v adds tracebacks, never values: msal logs an answer that is not JSON whole."""
    import os
    import subprocess
    import sys

    secret = "Hx!9kQ#vv2Lp%Zr8Wq"
    settings = Settings.load(ms_home)
    settings.set("mail.microsoft.tenant", MS_TENANT_ID)
    settings.set("mail.one_account", True)
    settings.set("manager.email", "boss@agency.example")
    settings.save()
    SecretStore(ms_home).set(MICROSOFT_APP_SECRET, secret)
    quoted = f"<html>Bad request: client_id={MS_CLIENT_ID}&client_secret={secret}</html>"
    fake.script(f"/{MS_TENANT_ID}/oauth2/v2.0/token", *[Reply(400, quoted) for _ in range(8)])
    said = []
    for args in (("-v", "config", "test"), ("-v", "message", "manager", "hello")):
        proc = subprocess.run(
            [sys.executable, "-m", "cpmail", *args],
            env={**os.environ, "CPMAIL_HOME": str(ms_home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0, proc.stdout + proc.stderr
        said.append(proc.stdout + proc.stderr)
    assert fake.paths("POST").count(f"/{MS_TENANT_ID}/oauth2/v2.0/token") >= 2
    everything = "\n".join(said)
    assert secret not in everything and secret[:8] not in everything, everything


@pytest.mark.serial
def test_a_trickled_answer_holds_a_stopping_run_no_longer_than_the_timeout(
    initialised: Cli, ms_home: Path, fake: FakeAPI
) -> None:
    """Stopped twice while Graph trickles its answer a byte at a time (each byte well
    within the timeout): the run waits at most the timeout for that answer, then ends,
    with the message waiting in the outbox (possibly sent), not claimed or lost."""
    import signal
    import time

    from tests.test_faults import queue_messages, statuses, wait_for

    assert initialised("config", "set", "mail.microsoft.timeout", "2").exit_code == 0
    queue_messages(_as_jd(initialised, ms_home), 4)
    fake.trickle = 0.25  # an answer of about 100 bytes: half a minute
    proc = _check_process(ms_home)
    wait_for(lambda: fake.paths("POST").count(ME) >= 1 or proc.poll() is not None)
    assert proc.poll() is None, (proc.communicate(), fake.paths())
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    _, err = proc.communicate(timeout=60)
    waited = time.monotonic() - stopped
    assert proc.returncode == 143, err
    assert waited < 2 + 3, f"{waited:.1f} s for an answer the timeout gives 2 s"
    s = statuses(ms_home)
    assert s["sending"] == 0 and s["sent"] == 0, s
    assert s["deferred"] + s["queued"] == 4, s


def test_a_trickling_sign_in_service_holds_an_account_no_longer_than_the_timeout(
    ms_home: Path, fake: FakeAPI
) -> None:
    """Opening the sign-in asks Microsoft for its settings (and may renew the token): an
    answer trickled a byte at a time is given up after the timeout, once for the account."""
    import time

    sign_in(ms_home)
    settings = Settings.load(ms_home)
    settings.set("mail.microsoft.timeout", "2")
    settings.save()
    fake.trickle_tokens = 0.1  # a few kB of settings: minutes
    started = time.monotonic()
    outcomes = deliver(ms_home, env(1), env(2), env(3))
    elapsed = time.monotonic() - started
    assert elapsed < 8, f"{elapsed:.1f} s"
    assert all(isinstance(o.error, TemporaryFailure) for o in outcomes), outcomes
    assert fake.paths("POST").count(ME) == 0


@pytest.mark.parametrize(
    "refresh_token",
    [
        "M.C540_BAY.0.U.-Cq7*Tr4Pq!Kv8s$Zq9xW*Lm3nB7!Hs2$Dk",  # a personal account's: * ! $
        "0.AXYA*Kv8sTr4Pq!Zq9xW*Lm3nB7!",
        "QwvbzXlkjhGfdsaPoiuyTrewqMnbvcZxq",  # no digit: no token shape
        "Kv8s Tr4Pq Zq9x Lm3n",  # short words
    ],
)
def test_a_refresh_token_quoted_by_the_token_endpoint_is_never_repeated(
    ms_home: Path, fake: FakeAPI, refresh_token: str
) -> None:
    """The refresh token cpmail sent, quoted back in the endpoint's error, is masked by its
    value whatever its shape (it was masked only where it looked like a token)."""
    fake.expires_in = 60  # the next message renews the sign-in
    sign_in(ms_home)
    path = secret_file(ms_home)
    doc = json.loads(path.read_text())
    cache = json.loads(doc["cache"])
    for item in cache["RefreshToken"].values():
        item["secret"] = refresh_token
    doc["cache"] = json.dumps(cache)
    SecretStore(ms_home).set(token_name("microsoft", "JD"), json.dumps(doc))
    error = f"invalid_grant: the refresh_token {refresh_token} was revoked"
    fake.script(TOKEN, Reply(400, {"error": error, "error_description": "AADSTS70000"}))
    with pytest.raises(AuthError) as info:
        deliver(ms_home, env())
    said = str(info.value)
    assert "invalid_grant" in said and "cpmail staff signin JD" in said
    words = refresh_token.replace(" ", "")
    assert [words[i : i + 4] for i in range(len(words) - 3) if words[i : i + 4] in said] == []
