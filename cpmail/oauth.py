"""Sign in with Google and Microsoft, and keep their tokens fresh for the API transports.

What is stored: one secret per signed-in account, named
``token_name("gmail"|"microsoft", account)`` (account = a staff ID or
``"shared"``), holding JSON ``{"address": …, "credentials"|"cache": …}``:
the address that signed in, and google-auth's authorized-user JSON or msal's
serialised token cache. The Google OAuth client file is kept as the secret
``gmail-client``; the Microsoft app's client secret (app-only sending, optional)
as ``microsoft-app-secret``.

Nothing here prints, logs or puts into an exception a token or a client
secret: messages name the account, the address and the command to run.

Addresses of the providers come from settings (``mail.gmail.api_base``,
``mail.gmail.token_uri``, ``mail.microsoft.api_base``,
``mail.microsoft.authority_base``). They must be https, except for a loopback
host (127.0.0.1, localhost, ::1), which is how the tests point cpmail at a
local fake server. msal accepts https authorities only, so when
``authority_base`` is a loopback ``http://`` address, msal is given the public
authority and an HTTP client (``MsalHttpClient``) that sends its requests for
``https://login.microsoftonline.com`` to ``authority_base`` instead.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmail.errors import (
    AuthError,
    ConfigError,
    InputError,
    NoAnswer,
    TemporaryFailure,
    Unreachable,
)
from cpmail.secrets import SHARED, SecretStore, token_name

if TYPE_CHECKING:
    import httpx

    from cpmail.settings import Settings

GMAIL_SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"
# openid + email only let cpmail read which address signed in (from the id_token);
# both are non-sensitive scopes that need no verification of the Google app.
GOOGLE_SCOPES = (GMAIL_SEND_SCOPE, "openid", "https://www.googleapis.com/auth/userinfo.email")
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
# msal adds openid, profile and offline_access itself (and refuses them if given).
GRAPH_SCOPES = ("Mail.Send",)
GRAPH_APP_SCOPES = ("https://graph.microsoft.com/.default",)
PUBLIC_AUTHORITY = "https://login.microsoftonline.com"

GOOGLE_CLIENT_SECRET = "gmail-client"
MICROSOFT_APP_SECRET = "microsoft-app-secret"
#: The value of ``mail.gmail.client_secrets`` when the client file lives in the secrets store.
STORED_CLIENT = f"secret:{GOOGLE_CLIENT_SECRET}"

SIGNIN_TIMEOUT = 300  # seconds a person has to finish signing in
HTTP_TIMEOUT = 60.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PROVIDER = {"gmail": "Google", "microsoft": "Microsoft"}

Say = Callable[[str], None]


# ----------------------------------------------------------------- messages


def signin_command(account: str) -> str:
    """The exact command that signs ``account`` in again."""
    return "cpmail staff signin --shared" if account == SHARED else f"cpmail staff signin {account}"


def _who(account: str) -> str:
    return "the shared sender (mail.sender)" if account == SHARED else f"staff member {account}"


def check_signed_in(secrets: SecretStore, transport: str, account: str) -> None:
    """Raise ConfigError when ``account`` has no stored sign-in for ``transport``."""
    if not account:
        raise ConfigError(
            f"the {transport} transport sends from a signed-in account, and this message has "
            "none; give --as STAFF or set [user] staff."
        )
    if not secrets.has(token_name(transport, account)):
        raise ConfigError(
            f"{_who(account)} is not signed in with {PROVIDER[transport]}; "
            f"run `{signin_command(account)}`."
        )


def check_endpoint(url: str, key: str) -> str:
    """Return ``url`` without a trailing slash; https, or http on a loopback host only."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url.rstrip("/")
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return url.rstrip("/")
    raise ConfigError(
        f"{key} = {url!r}: use an https:// address (plain http is allowed for 127.0.0.1 only)."
    )


# ----------------------------------------------------------------- stored tokens


@dataclass(frozen=True)
class StoredToken:
    """What a sign-in leaves behind: the address that signed in and the provider's data."""

    address: str
    # Google: authorized-user dict; Microsoft: serialised msal cache (str). Never in a repr.
    data: Any = field(repr=False)


def load_token(secrets: SecretStore, transport: str, account: str) -> StoredToken | None:
    """Return the stored sign-in of ``account``, or None when there is none."""
    name = token_name(transport, account)
    secret = secrets.get(name)
    if secret is None:
        return None
    key = "credentials" if transport == "gmail" else "cache"
    try:
        doc = json.loads(secret.reveal())
        return StoredToken(str(doc["address"]), doc[key])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"the stored sign-in {name} is damaged; run `{signin_command(account)}` again."
        ) from None


def save_token(secrets: SecretStore, transport: str, account: str, token: StoredToken) -> None:
    """Store the sign-in of ``account`` (a 0600 file or the keyring)."""
    key = "credentials" if transport == "gmail" else "cache"
    doc = {"address": token.address, key: token.data}
    secrets.set(token_name(transport, account), json.dumps(doc))


def signed_in_address(secrets: SecretStore, transport: str, account: str) -> str | None:
    """The address ``account`` signed in as, or None when not signed in."""
    token = load_token(secrets, transport, account)
    return token.address if token else None


def _jwt_claims(token: str | None) -> dict[str, Any]:
    """The claims of an id_token, unverified: it came straight from the token endpoint."""
    if not token or token.count(".") < 2:
        return {}
    part = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


# ----------------------------------------------------------------- the Google client file

_CLIENT_FIELDS = ("client_id", "client_secret", "auth_uri", "token_uri")


def parse_google_client(text: str, where: str) -> dict[str, Any]:
    """Validate a Google OAuth client file (type "installed"); InputError naming what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise InputError(
            f"{where} is not JSON; download the client file again from Google Cloud "
            "(APIs & Services → Credentials → your Desktop app client → Download JSON)."
        ) from None
    if not isinstance(doc, dict) or "installed" not in doc:
        kind = next(iter(doc), None) if isinstance(doc, dict) and len(doc) == 1 else None
        found = f" (it is of type {kind!r})" if kind in ("web", "service_account") else ""
        if isinstance(doc, dict) and doc.get("type") == "service_account":
            found = " (it is a service account key)"
        raise InputError(
            f"{where} is not an OAuth client of type 'installed'{found}; create an OAuth "
            "client ID of application type 'Desktop app' and download its JSON."
        )
    client = doc["installed"]
    if not isinstance(client, dict):
        raise InputError(f"{where}: 'installed' is not an object; download the file again.")
    for name in _CLIENT_FIELDS:
        value = client.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InputError(
                f"{where}: the client has no {name!r}; download the file again from Google Cloud."
            )
    return {"installed": dict(client)}


def read_google_client_file(path: Path) -> tuple[str, dict[str, Any]]:
    """Read and validate a client file; return its text and the parsed client."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read {path}: {reason}.") from None
    return text, parse_google_client(text, str(path))


def google_client(settings: Settings, secrets: SecretStore) -> dict[str, Any]:
    """The configured Google OAuth client (``{"installed": {...}}``)."""
    value = str(settings["mail.gmail.client_secrets"])
    if not value:
        raise ConfigError(
            "mail.gmail.client_secrets is not set; run `cpmail config gmail --client-secrets FILE`."
        )
    if value == STORED_CLIENT:
        secret = secrets.get(GOOGLE_CLIENT_SECRET)
        if secret is None:
            raise ConfigError(
                "the Google OAuth client is missing from the secrets store; "
                "run `cpmail config gmail --client-secrets FILE` again."
            )
        return parse_google_client(secret.reveal(), f"the stored secret {GOOGLE_CLIENT_SECRET}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = settings.home / path
    try:
        _, client = read_google_client_file(path)
    except InputError as e:
        raise ConfigError(f"mail.gmail.client_secrets: {e}") from None
    return client


# ----------------------------------------------------------------- browser and loopback


def can_open_browser() -> bool:
    """False on a Linux/BSD machine without a graphical session (a server, SSH)."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def open_in_browser(url: str) -> bool:
    """Try to open ``url`` in a browser; False (never an exception) when that fails."""
    import webbrowser

    try:
        return bool(webbrowser.open(url, new=1))
    except webbrowser.Error:
        return False


def _show_url(url: str, *, open_browser: bool, say: Say) -> None:
    if open_browser and open_in_browser(url):
        say(f"A browser window is open to sign in. If it did not appear, open:\n{url}")
    else:
        say(f"Open this address in a browser to sign in:\n{url}")


_DONE_PAGE = (
    "<!doctype html><meta charset=utf-8><title>cpmail</title>"
    "<p style='font:16px sans-serif'>{text}</p>"
)


class LoopbackReceiver:
    """A one-shot HTTP server on 127.0.0.1 that waits for the sign-in redirect.

    The answer comes as a GET query (Google) or a form POST (Microsoft,
    ``response_mode=form_post``). Only a request that carries the expected
    ``state`` and a ``code`` or an ``error`` ends the wait; anything else (a
    favicon, a stray visit) gets 400.
    """

    def __init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a browser's idle pre-connection must not block the wait

            def do_GET(self) -> None:
                query = urllib.parse.urlsplit(self.path).query
                receiver._handle(self, query)

            def do_POST(self) -> None:  # response_mode=form_post: the code is not in the URL
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 65536)).decode("utf-8", "replace")
                receiver._handle(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request line holds the authorization code

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self.state = ""
        self.params: dict[str, str] | None = None

    def _handle(self, handler: BaseHTTPRequestHandler, query: str) -> None:
        params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        ok = params.get("state") == self.state and ("code" in params or "error" in params)
        if not ok:
            text, status = "This is not the sign-in answer cpmail is waiting for.", 400
        elif "error" in params:
            text, status = "Sign-in was not completed. You can close this tab.", 200
        else:
            text, status = "Signed in. You can close this tab and return to cpmail.", 200
        body = _DONE_PAGE.format(text=text).encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html; charset=utf-8")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        if ok:
            self.params = params

    def wait(self, state: str, timeout: float) -> dict[str, str]:
        """Serve until the redirect with ``state`` arrives; AuthError after ``timeout`` s."""
        self.state = state
        deadline = time.monotonic() + timeout
        while self.params is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AuthError(
                    f"nobody finished signing in within {timeout:g} seconds; run the command "
                    "again (use --device-code or --no-browser on a machine without a browser)."
                )
            self._server.timeout = min(left, 1.0)
            self._server.handle_request()
        return self.params

    def close(self) -> None:
        self._server.server_close()

    def __enter__(self) -> LoopbackReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _auth_response_error(params: Mapping[str, str], provider: str) -> AuthError | None:
    error = params.get("error")
    if not error:
        return None
    if error == "access_denied":
        return AuthError(f"the {provider} sign-in was cancelled or access was denied.")
    desc = params.get("error_description", "")
    return AuthError(f"the {provider} sign-in failed: {error}{': ' + desc if desc else ''}.")


# ----------------------------------------------------------------- Google


def _google_token_uri(settings: Settings, fallback: str) -> str:
    uri = str(settings["mail.gmail.token_uri"]) or fallback or GOOGLE_TOKEN_URI
    key = "mail.gmail.token_uri" if settings["mail.gmail.token_uri"] else "the client's token_uri"
    return check_endpoint(uri, key)


def google_sign_in(
    settings: Settings,
    secrets: SecretStore,
    account: str,
    *,
    open_browser: bool,
    say: Say,
    login_hint: str = "",
    timeout: float = SIGNIN_TIMEOUT,
) -> str:
    """Sign ``account`` in with Google on a loopback redirect; store the token; return the address.

    The address is the one in the id_token (the account that really signed
    in), else ``login_hint``.
    """
    from google_auth_oauthlib.flow import InstalledAppFlow

    config = google_client(settings, secrets)
    client = config["installed"]
    client["token_uri"] = _google_token_uri(settings, client["token_uri"])
    flow = InstalledAppFlow.from_client_config(config, scopes=list(GOOGLE_SCOPES))
    with LoopbackReceiver() as receiver:
        flow.redirect_uri = f"http://127.0.0.1:{receiver.port}/"
        extra = {"login_hint": login_hint} if login_hint else {}
        # prompt=consent: Google returns a refresh token only when consent is given.
        url, state = flow.authorization_url(prompt="consent", **extra)
        _show_url(url, open_browser=open_browser, say=say)
        params = receiver.wait(state, timeout)
    if error := _auth_response_error(params, "Google"):
        raise error
    _google_fetch_token(flow, params["code"])
    creds = flow.credentials
    if not creds.refresh_token:
        raise AuthError(
            "Google did not return a refresh token, so cpmail could not send later without "
            "you; remove cpmail's access at https://myaccount.google.com/permissions and sign "
            "in again."
        )
    address = str(_jwt_claims(creds.id_token).get("email") or login_hint)
    data = json.loads(creds.to_json())
    save_token(secrets, "gmail", account, StoredToken(address, data))
    return address


def _google_fetch_token(flow: Any, code: str) -> None:
    import requests
    from oauthlib.oauth2 import (
        InsecureTransportError,
        OAuth2Error,
    )

    try:
        flow.fetch_token(code=code)
    except InsecureTransportError:
        raise ConfigError(
            "the Google token endpoint is not https; fix mail.gmail.token_uri or the client file."
        ) from None
    except Warning:
        # oauthlib raises a bare Warning when fewer scopes were granted than asked
        # (the person unticked "Send email on your behalf"); the warning holds the token.
        raise AuthError(
            "the Google sign-in did not grant permission to send e-mail; sign in again and "
            "tick 'Send email on your behalf'."
        ) from None
    except OAuth2Error as e:
        raise AuthError(f"Google refused the sign-in: {e.error}.") from None
    except requests.ConnectionError:
        raise Unreachable("cannot reach Google's token endpoint; check the network.") from None
    except requests.RequestException as e:
        raise AuthError(f"the Google sign-in failed: {type(e).__name__}.") from None


class GoogleSession:
    """One account's Google credentials, refreshed when needed and saved back when changed."""

    def __init__(self, settings: Settings, secrets: SecretStore, account: str) -> None:
        from google.oauth2.credentials import Credentials

        self.account = account
        self._secrets = secrets
        stored = load_token(secrets, "gmail", account)
        if stored is None:
            raise AuthError(
                f"{_who(account)} is not signed in with Google; run `{signin_command(account)}`."
            )
        self.address = stored.address
        info = stored.data
        try:
            creds = Credentials.from_authorized_user_info(info)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError):
            raise ConfigError(
                f"the stored Google sign-in of {_who(account)} is damaged; "
                f"run `{signin_command(account)}`."
            ) from None
        # from_authorized_user_info always sets Google's token_uri, and
        # with_token_uri makes a copy that forgets the expiry: put both back.
        expiry = creds.expiry
        creds = creds.with_token_uri(_google_token_uri(settings, str(info.get("token_uri", ""))))
        creds.expiry = expiry
        self._creds = creds
        self._down: TemporaryFailure | None = None

    def access_token(self) -> str:
        """A valid access token (refreshed first when it has expired)."""
        if not self._creds.valid:
            self.refresh()
        return str(self._creds.token)

    def refresh(self) -> None:
        """Get a new access token with the refresh token and save it (0600).

        A token endpoint that failed temporarily is not asked again by this
        session: every later message of the account is deferred at once.
        """
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        if self._down:
            raise self._down
        try:
            self._creds.refresh(Request())
        except google.auth.exceptions.RefreshError as e:
            data = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], dict) else {}
            if getattr(e, "retryable", False):
                self._down = TemporaryFailure(
                    "Google's token endpoint is not answering properly; trying again later."
                )
                raise self._down from None
            error = str(data.get("error", "")) or "refused"
            raise AuthError(
                f"Google refused to renew the sign-in of {_who(self.account)} ({error}: it "
                f"expired or was revoked); run `{signin_command(self.account)}`."
            ) from None
        except google.auth.exceptions.TransportError:
            raise Unreachable("cannot reach Google's token endpoint; check the network.") from None
        data = json.loads(self._creds.to_json())
        save_token(self._secrets, "gmail", self.account, StoredToken(self.address, data))


# ----------------------------------------------------------------- Microsoft


class MsalHttpClient:
    """The HTTP client msal uses (``get``/``post`` returning httpx responses).

    ``rewrite = (prefix, base)`` sends every URL starting with ``prefix`` to
    ``base`` instead: the seam that lets tests run msal against a local fake
    while msal itself sees the https authority it insists on.
    """

    def __init__(self, rewrite: tuple[str, str] | None = None) -> None:
        import httpx

        self._http = httpx.Client(timeout=HTTP_TIMEOUT)
        self._rewrite = rewrite

    def _url(self, url: str) -> str:
        if self._rewrite and url.startswith(self._rewrite[0]):
            return self._rewrite[1] + url[len(self._rewrite[0]) :]
        return url

    @staticmethod
    def _clean(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return None if values is None else {k: v for k, v in values.items() if v is not None}

    def get(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        return self._http.get(
            self._url(url), params=self._clean(params), headers=self._clean(headers)
        )

    def post(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | str | bytes | None = None,
        headers: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        body: dict[str, Any] = {}
        if isinstance(data, str | bytes):
            body["content"] = data
        elif data is not None:
            body["data"] = self._clean(data)
        return self._http.post(
            self._url(url), params=self._clean(params), headers=self._clean(headers), **body
        )

    def close(self) -> None:
        self._http.close()


def microsoft_authority(settings: Settings) -> tuple[str, MsalHttpClient]:
    """The authority URL for msal and the HTTP client that reaches it."""
    tenant = str(settings["mail.microsoft.tenant"]) or "organizations"
    base = check_endpoint(
        str(settings["mail.microsoft.authority_base"]), "mail.microsoft.authority_base"
    )
    if base.startswith("https://"):
        return f"{base}/{tenant}", MsalHttpClient()
    return f"{PUBLIC_AUTHORITY}/{tenant}", MsalHttpClient((PUBLIC_AUTHORITY, base))


def _client_id(settings: Settings) -> str:
    client_id = str(settings["mail.microsoft.client_id"])
    if not client_id:
        raise ConfigError(
            "mail.microsoft.client_id is not set; run `cpmail config microsoft --client-id ID`."
        )
    return client_id


def _msal_call(what: str, call: Callable[[], Any]) -> Any:
    """Run an msal call, turning network and service errors into cpmail's."""
    import httpx
    import msal

    try:
        return call()
    except httpx.ConnectError:
        raise Unreachable(f"cannot reach Microsoft's sign-in service ({what}).") from None
    except httpx.TransportError:
        raise TemporaryFailure(f"Microsoft's sign-in service did not answer ({what}).") from None
    except msal.exceptions.MsalServiceError:
        raise TemporaryFailure(
            f"Microsoft's sign-in service answered with a server error ({what})."
        ) from None
    except ValueError as e:
        # msal raises ValueError when the authority (tenant) is unknown.
        if "tenant" in str(e).lower() or "authority" in str(e).lower():
            raise ConfigError(
                "Microsoft does not know the tenant in mail.microsoft.tenant; use "
                "'organizations', 'common' or your tenant ID (`cpmail config microsoft`)."
            ) from None
        raise AuthError(f"the Microsoft sign-in failed ({what}).") from None


def _msal_app(
    settings: Settings, http_cache: dict[str, Any] | None, **kwargs: Any
) -> tuple[Any, MsalHttpClient]:
    """A msal application (confidential when ``client_credential`` is given) and its client."""
    import msal

    client_id = _client_id(settings)
    authority, http = microsoft_authority(settings)
    cls = (
        msal.ConfidentialClientApplication
        if "client_credential" in kwargs
        else msal.PublicClientApplication
    )
    try:
        app = _msal_call(
            "authority discovery",
            lambda: cls(
                client_id,
                authority=authority,
                http_client=http,
                instance_discovery=False,
                http_cache=http_cache,
                **kwargs,
            ),
        )
    except BaseException:
        http.close()
        raise
    return app, http


_AAD_ADVICE = {
    "AADSTS7000218": (
        "the app registration does not allow public client flows: in the Microsoft Entra "
        "admin center open App registrations → the app → Authentication and set "
        "'Allow public client flows' to Yes, then sign in again"
    ),
    "AADSTS65001": (
        "nobody has consented to the app's Mail.Send permission: an administrator must "
        "grant admin consent (App registrations → the app → API permissions)"
    ),
    "AADSTS700016": (
        "Microsoft does not know the client ID in this tenant: check mail.microsoft.client_id "
        "and mail.microsoft.tenant (`cpmail config microsoft`)"
    ),
    "AADSTS50011": (
        "the redirect address is not registered: add the platform 'Mobile and desktop "
        "applications' with redirect URI http://localhost to the app registration"
    ),
    "AADSTS50020": (
        "the account is not in the app's tenant: sign in with a work account of that "
        "tenant, or set `--tenant organizations`"
    ),
    "AADSTS7000215": "the stored client secret is wrong or expired: set a new one",
}


def microsoft_error(result: Mapping[str, Any], what: str) -> AuthError:
    """An AuthError that explains an msal error result in words a system manager can act on."""
    desc = str(result.get("error_description", ""))
    for code, advice in _AAD_ADVICE.items():
        if code in desc:
            return AuthError(f"{what} failed: {advice}.")
    first = desc.splitlines()[0] if desc else ""
    error = str(result.get("error", "error"))
    return AuthError(f"{what} failed: {error}{': ' + first if first else ''}.")


def microsoft_sign_in(
    settings: Settings,
    secrets: SecretStore,
    account: str,
    *,
    device_code: bool,
    open_browser: bool,
    say: Say,
    login_hint: str = "",
    timeout: float = SIGNIN_TIMEOUT,
) -> str:
    """Sign ``account`` in with Microsoft; store the msal token cache; return the address.

    Interactive sign-in uses msal's auth-code flow on a loopback redirect
    (``http://localhost:PORT``) that cpmail serves itself, so that the address
    can always be printed and a missing browser never ends the command;
    ``device_code`` uses the device-code flow instead.
    """
    import msal

    cache = msal.SerializableTokenCache()
    app, http = _msal_app(settings, None, token_cache=cache)
    try:
        return _microsoft_sign_in(
            app, cache, secrets, account, device_code, open_browser, say, login_hint, timeout
        )
    finally:
        http.close()


def _microsoft_sign_in(
    app: Any,
    cache: Any,
    secrets: SecretStore,
    account: str,
    device_code: bool,
    open_browser: bool,
    say: Say,
    login_hint: str,
    timeout: float,
) -> str:
    scopes = list(GRAPH_SCOPES)
    if device_code:
        flow = _msal_call("device code", lambda: app.initiate_device_flow(scopes=scopes))
        if "user_code" not in flow:
            raise microsoft_error(flow, "the Microsoft device-code sign-in")
        say(str(flow["message"]))
        result = _msal_call("device code", lambda: app.acquire_token_by_device_flow(flow))
    else:
        with LoopbackReceiver() as receiver:
            flow = app.initiate_auth_code_flow(
                scopes,
                redirect_uri=f"http://localhost:{receiver.port}",
                login_hint=login_hint or None,
                prompt="select_account",
                response_mode="form_post",
            )
            _show_url(flow["auth_uri"], open_browser=open_browser, say=say)
            params = receiver.wait(flow["state"], timeout)
        if error := _auth_response_error(params, "Microsoft"):
            raise error
        try:
            result = _msal_call(
                "code exchange", lambda: app.acquire_token_by_auth_code_flow(flow, params)
            )
        except RuntimeError:  # msal: the id_token's nonce does not match
            raise AuthError("the Microsoft sign-in answer did not match; sign in again.") from None
    if not isinstance(result, dict) or "access_token" not in result:
        raise microsoft_error(result or {}, "the Microsoft sign-in")
    claims = result.get("id_token_claims") or {}
    address = str(claims.get("preferred_username") or claims.get("email") or login_hint)
    save_token(secrets, "microsoft", account, StoredToken(address, cache.serialize()))
    return address


class MicrosoftSession:
    """One account's msal token cache: silent tokens for cron, saved back only when changed."""

    def __init__(
        self,
        settings: Settings,
        secrets: SecretStore,
        account: str,
        http_cache: dict[str, Any] | None = None,
    ) -> None:
        import msal

        self.account = account
        self._secrets = secrets
        stored = load_token(secrets, "microsoft", account)
        if stored is None:
            raise AuthError(
                f"{_who(account)} is not signed in with Microsoft; run `{signin_command(account)}`."
            )
        self.address = stored.address
        self._cache = msal.SerializableTokenCache()
        try:
            self._cache.deserialize(stored.data)
        except (ValueError, TypeError):
            raise ConfigError(
                f"the stored Microsoft sign-in of {_who(account)} is damaged; "
                f"run `{signin_command(account)}`."
            ) from None
        self._app, self._http = _msal_app(settings, http_cache, token_cache=self._cache)
        self._down: TemporaryFailure | None = None

    def close(self) -> None:
        self._http.close()

    def _expired(self, detail: str) -> AuthError:
        return AuthError(
            f"Microsoft refused to renew the sign-in of {_who(self.account)} ({detail}); "
            f"run `{signin_command(self.account)}`."
        )

    def access_token(self, *, force_refresh: bool = False) -> str:
        """A valid access token from the cache, refreshed silently when needed.

        A sign-in service that failed temporarily is not asked again by this
        session: every later message of the account is deferred at once.
        """
        if self._down:
            raise self._down
        try:
            return self._access_token(force_refresh)
        except TemporaryFailure as e:
            self._down = e
            raise

    def _access_token(self, force_refresh: bool) -> str:
        accounts = self._app.get_accounts(username=self.address) or self._app.get_accounts()
        if not accounts:
            raise self._expired("no account in the stored sign-in")
        result = _msal_call(
            "token refresh",
            lambda: self._app.acquire_token_silent_with_error(
                list(GRAPH_SCOPES), account=accounts[0], force_refresh=force_refresh
            ),
        )
        if self._cache.has_state_changed:
            token = StoredToken(self.address, self._cache.serialize())
            save_token(self._secrets, "microsoft", self.account, token)
            self._cache.has_state_changed = False
        if not result:
            raise self._expired("the stored sign-in has no usable refresh token")
        if "access_token" not in result:
            if result.get("error") in ("temporarily_unavailable", "server_error"):
                raise TemporaryFailure("Microsoft's sign-in service is busy; trying again later.")
            raise self._expired(str(result.get("error", "refused")))
        return str(result["access_token"])


class MicrosoftAppSession:
    """App-only tokens (client credentials) for the one-account sender; nothing to save."""

    def __init__(
        self, settings: Settings, secret: str, http_cache: dict[str, Any] | None = None
    ) -> None:
        tenant = str(settings["mail.microsoft.tenant"])
        if tenant in ("", "organizations", "common", "consumers"):
            raise ConfigError(
                "app-only sending needs your tenant ID in mail.microsoft.tenant, not "
                f"{tenant!r}; run `cpmail config microsoft --client-id ID --tenant TENANT-ID`."
            )
        self.account = SHARED
        self._app, self._http = _msal_app(settings, http_cache, client_credential=secret)

    def close(self) -> None:
        self._http.close()

    def access_token(self, *, force_refresh: bool = False) -> str:
        """An app-only Graph token (msal keeps it in memory until it expires)."""
        if force_refresh:
            self._app.remove_tokens_for_client()
        result = _msal_call(
            "app token",
            lambda: self._app.acquire_token_for_client(list(GRAPH_APP_SCOPES)),
        )
        if not isinstance(result, dict) or "access_token" not in result:
            error = microsoft_error(result or {}, "getting an app-only token")
            raise AuthError(f"{error} Check the client secret: `cpmail config microsoft`.")
        return str(result["access_token"])


# ----------------------------------------------------------------- HTTP helpers for the transports


def retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())


def seconds_until_midnight(tz_name: str, *, now: dt.datetime | None = None) -> float:
    """Seconds from now until the next midnight in ``tz_name``."""
    import zoneinfo

    tz = zoneinfo.ZoneInfo(tz_name)
    now = (now or dt.datetime.now(dt.UTC)).astimezone(tz)
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return max(60.0, (tomorrow - now).total_seconds())


def with_missing_bcc(raw: bytes, rcpt_to: tuple[str, ...]) -> bytes:
    """Return ``raw`` with a Bcc header for envelope recipients its headers do not name.

    The Gmail and Graph APIs deliver to the addresses in To, Cc and Bcc (and
    strip Bcc), not to an SMTP-style envelope; a message whose headers already
    name every recipient is returned unchanged, byte for byte.
    """
    from email.parser import HeaderParser
    from email.policy import compat32

    # The header block as UTF-8 text: international addresses are written
    # there as they are (RFC 6532), and must be found as written.
    end = raw.find(b"\r\n\r\n")
    block = raw[: end if end >= 0 else len(raw)].decode("utf-8", "replace")
    headers = HeaderParser(policy=compat32).parsestr(block, headersonly=True)
    named = {
        addr.lower()
        for field in ("to", "cc", "bcc")
        for _, addr in email.utils.getaddresses([str(v) for v in headers.get_all(field, [])])
        if addr
    }
    missing = [r for r in rcpt_to if r.lower() not in named]
    if not missing:
        return raw
    newline = b"\r\n" if b"\r\n" in raw[: raw.find(b"\n") + 1 or len(raw)] else b"\n"
    return b"Bcc: " + ", ".join(missing).encode("utf-8") + newline + raw


def api_post(http: httpx.Client, url: str, *, service: str, **kwargs: Any) -> httpx.Response:
    """POST through ``http``: Unreachable when nothing answers, TemporaryFailure when cut off."""
    import httpx

    host = urllib.parse.urlsplit(url).netloc
    try:
        return http.post(url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise Unreachable(
            f"cannot reach {service} at {host} ({type(e).__name__}); check the network."
        ) from None
    except httpx.TimeoutException as e:
        raise NoAnswer(
            f"{service} did not answer in time ({type(e).__name__}); it will be sent again."
        ) from None
    except httpx.TransportError as e:
        raise TemporaryFailure(
            f"{service} did not answer properly ({type(e).__name__}); trying again later."
        ) from None


def api_error(response: httpx.Response) -> tuple[str, str, list[str]]:
    """The (code, message, reasons) of a Google or Graph error body, as far as it has them."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        text = response.text.strip().splitlines()[0][:300] if response.text.strip() else ""
        return "", text or response.reason_phrase, []
    reasons = [
        str(e.get("reason", ""))
        for e in error.get("errors") or []
        if isinstance(e, dict) and e.get("reason")
    ]
    code = error.get("code", "")
    message = str(error.get("message", "")).strip() or response.reason_phrase
    return str(code), message, reasons
