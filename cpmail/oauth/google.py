"""Sign in with Google (a loopback redirect), and keep each account's token fresh.

The Google OAuth client file (type "installed") is kept as the secret
``gmail-client`` (``STORED_CLIENT``); a sign-in stores google-auth's
authorized-user JSON (see ``cpmail.oauth.tokens``).
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmail.errors import (
    WAITS,
    AuthError,
    ConfigError,
    InputError,
    TemporaryFailure,
    Unreachable,
)
from cpmail.oauth.loopback import (
    SIGNIN_TIMEOUT,
    LoopbackReceiver,
    Say,
    auth_response_error,
    show_url,
)
from cpmail.oauth.tokens import (
    StoredToken,
    check_endpoint,
    damaged,
    save_token,
    signed_in,
    signin_command,
    who,
)
from cpmail.scrub import Scrubber, mask_tokens, remember_document
from cpmail.secrets import SecretStore

if TYPE_CHECKING:
    from cpmail.settings import Settings

GMAIL_SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"
# openid + email only let cpmail read which address signed in (from the id_token);
# both are non-sensitive scopes that need no verification of the Google app.
GOOGLE_SCOPES = (GMAIL_SEND_SCOPE, "openid", "https://www.googleapis.com/auth/userinfo.email")
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"

GOOGLE_CLIENT_SECRET = "gmail-client"
#: The value of ``mail.gmail.client_secrets`` when the client file lives in the secrets store.
STORED_CLIENT = f"secret:{GOOGLE_CLIENT_SECRET}"


# ----------------------------------------------------------------- the client file

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
    remember_document(doc)  # its client secret, or a service account's private key
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
    value = settings["mail.gmail.client_secrets"]
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


# ----------------------------------------------------------------- signing in


def _google_token_uri(settings: Settings, fallback: str) -> str:
    uri = settings["mail.gmail.token_uri"] or fallback or GOOGLE_TOKEN_URI
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
        url, state = _authorization_url(flow, prompt="consent", **extra)
        show_url(url, open_browser=open_browser, say=say)
        params = receiver.wait(state, timeout)
    if error := auth_response_error(params, "Google"):
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


def _authorization_url(flow: Any, **params: str) -> tuple[str, str]:
    from oauthlib.oauth2 import InsecureTransportError

    try:
        url, state = flow.authorization_url(**params)
    except InsecureTransportError:
        raise ConfigError(
            "the client file's 'auth_uri' is not https; download the client file again from "
            "Google Cloud and run `cpmail config gmail --client-secrets FILE`."
        ) from None
    return str(url), str(state)


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
        # The endpoint's words may quote what was sent (the client secret, the code).
        client = getattr(flow, "client_config", None) or {}
        known = Scrubber([str(client.get("client_secret") or ""), code])
        said = known(mask_tokens(str(e.error)))
        raise AuthError(f"Google refused the sign-in: {said}.") from None
    except requests.ConnectionError:
        raise Unreachable("cannot reach Google's token endpoint; check the network.") from None
    except requests.RequestException as e:
        raise AuthError(f"the Google sign-in failed: {type(e).__name__}.") from None


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


# The token endpoint's errors that mean the sign-in itself is gone (RFC 6749 §5.2).
_REVOKED = frozenset({"invalid_grant"})
# Refusals of the OAuth client itself (the client file's ID and secret): signing in again
# would fail alike; a client file of a client that exists is the fix.
_CLIENT_REFUSED = frozenset({"invalid_client", "unauthorized_client", "deleted_client"})


class _TimedRequest:
    """google-auth's HTTP request with cpmail's timeout (its own default waits 120 s)."""

    def __init__(self, request: Any, timeout: float) -> None:
        self._request = request
        self._timeout = timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = self._timeout
        return self._request(*args, **kwargs)


class GoogleSession:
    """One account's Google credentials, refreshed when needed and saved back when changed."""

    def __init__(self, settings: Settings, secrets: SecretStore, account: str) -> None:
        from google.oauth2.credentials import Credentials

        self.account = account
        self._secrets = secrets
        stored = signed_in(secrets, "gmail", account)
        self.address = stored.address
        info = stored.data
        try:
            creds = Credentials.from_authorized_user_info(info)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError):
            raise damaged("gmail", account) from None
        # from_authorized_user_info always sets Google's token_uri, and
        # with_token_uri makes a copy that forgets the expiry: put both back.
        expiry = creds.expiry
        creds = creds.with_token_uri(_google_token_uri(settings, str(info.get("token_uri", ""))))
        creds.expiry = expiry
        self._creds = creds
        self._down: TemporaryFailure | None = None
        self._timeout = float(settings["mail.gmail.timeout"])

    def _unwell(self, what: str) -> TemporaryFailure:
        """The token endpoint failed (not the sign-in): this session asks it no more."""
        del what  # its words may quote the request; the sentence below says what matters
        self._down = TemporaryFailure(
            "Google's token endpoint did not answer with a token (busy, down, or a page that "
            f"is not Google's){WAITS}."
        )
        return self._down

    def close(self) -> None:
        """Nothing to let go of: google-auth opens a connection per refresh."""

    def access_token(self, *, force_refresh: bool = False) -> str:
        """A valid access token (refreshed first when it has expired, or when forced)."""
        if force_refresh:
            self.refresh()
        if not self._creds.valid:
            self.refresh()
        return str(self._creds.token)

    @property
    def may_send(self) -> bool:
        """False when Google's last answer granted scopes without ``gmail.send``."""
        granted = getattr(self._creds, "granted_scopes", None)
        return not granted or GMAIL_SEND_SCOPE in granted

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
            self._creds.refresh(_TimedRequest(Request(), self._timeout))
        except google.auth.exceptions.RefreshError as e:
            data = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], dict) else {}
            error = str(data.get("error", ""))
            code = (error.split() or [""])[0]
            if code not in _REVOKED | _CLIENT_REFUSED:
                # Busy, down, or answering something that is not a token (a proxy's
                # page, an empty body): not the sign-in's fault; try again later.
                raise self._unwell(str(e)) from None
            # A token endpoint may quote what it was sent: never repeat a token or the secret.
            known = Scrubber([self._creds.refresh_token or "", self._creds.client_secret or ""])
            said = known(mask_tokens(error))
            if code in _CLIENT_REFUSED:
                raise AuthError(
                    f"Google refused cpmail's OAuth client when renewing the sign-in of "
                    f"{who(self.account)} ({said}: the client was deleted, disabled or its "
                    "secret changed); download its client file again from the Google Cloud "
                    "console and run `cpmail config gmail --client-secrets FILE`, then sign in "
                    "again."
                ) from None
            raise AuthError(
                f"Google refused to renew the sign-in of {who(self.account)} ({said}: it "
                f"expired or was revoked); run `{signin_command(self.account)}`."
            ) from None
        except google.auth.exceptions.TransportError:
            raise Unreachable("cannot reach Google's token endpoint; check the network.") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            # google-auth reading an answer that is not JSON, or JSON without a token
            raise self._unwell(type(e).__name__) from None
        data = json.loads(self._creds.to_json())
        save_token(self._secrets, "gmail", self.account, StoredToken(self.address, data))
