"""Sign in with Microsoft (msal), and keep each account's token cache fresh.

A sign-in stores msal's serialised token cache (see ``cpmail.oauth.tokens``);
the app's client secret, for app-only sending by the one-account sender, is
kept as the secret ``microsoft-app-secret``.

msal accepts https authorities only, so when ``mail.microsoft.authority_base``
is a loopback ``http://`` address, msal is given the public authority and an
HTTP client (``MsalHttpClient``) that sends its requests for
``https://login.microsoftonline.com`` to ``authority_base`` instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cpmail.errors import WAITS, AuthError, ConfigError, TemporaryFailure, Unreachable
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
    https_context,
    save_token,
    signed_in,
    signin_command,
    who,
)
from cpmail.scrub import Scrubber, mask_tokens
from cpmail.secrets import SHARED, SecretStore

if TYPE_CHECKING:
    import httpx

    from cpmail.settings import Settings

# msal adds openid, profile and offline_access itself (and refuses them if given).
GRAPH_SCOPES = ("Mail.Send",)
GRAPH_APP_SCOPES = ("https://graph.microsoft.com/.default",)
PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
MICROSOFT_APP_SECRET = "microsoft-app-secret"
HTTP_TIMEOUT = 60.0


class MsalHttpClient:
    """The HTTP client msal uses (``get``/``post`` returning httpx responses).

    ``rewrite = (prefix, base)`` sends every URL starting with ``prefix`` to
    ``base`` instead: the seam that lets tests run msal against a local fake
    while msal itself sees the https authority it insists on.
    """

    def __init__(self, rewrite: tuple[str, str] | None = None) -> None:
        import httpx

        self._http = httpx.Client(timeout=HTTP_TIMEOUT, verify=https_context())
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
    tenant = settings["mail.microsoft.tenant"] or "organizations"
    base = check_endpoint(
        settings["mail.microsoft.authority_base"], "mail.microsoft.authority_base"
    )
    if base.startswith("https://"):
        return f"{base}/{tenant}", MsalHttpClient()
    return f"{PUBLIC_AUTHORITY}/{tenant}", MsalHttpClient((PUBLIC_AUTHORITY, base))


def _client_id(settings: Settings) -> str:
    client_id = settings["mail.microsoft.client_id"]
    if not client_id:
        raise ConfigError(
            "mail.microsoft.client_id is not set; run `cpmail config microsoft --client-id ID`."
        )
    return client_id


# What each msal call was doing, in a person's words (msal's names are its own).
_STEP = {
    "authority discovery": "while looking up the tenant",
    "device code": "while asking for a sign-in code",
    "code exchange": "while finishing the sign-in",
    "token refresh": "while renewing the sign-in",
    "app token": "while getting the app's token",
}


def _msal_call(what: str, call: Callable[[], Any]) -> Any:
    """Run an msal call, turning network and service errors into cpmail's."""
    import httpx
    import msal

    what = _STEP.get(what, what)
    # msal logs its own failures with the answer's body, which may quote a client
    # secret or a token: never shown, not even with -v; the one sentence below
    # (scrubbed) is what a person reads.
    quiet = logging.getLogger("msal")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())

    try:
        return call()
    except httpx.ConnectError:
        raise Unreachable(
            f"cannot reach Microsoft's sign-in service ({what}); check the network, and that "
            "no firewall or proxy stands in the way."
        ) from None
    except httpx.TransportError:
        raise TemporaryFailure(f"Microsoft's sign-in service did not answer ({what}).") from None
    except msal.exceptions.MsalServiceError:
        raise TemporaryFailure(
            f"Microsoft's sign-in service answered with a server error ({what})."
        ) from None
    except ValueError as e:
        if isinstance(e, json.JSONDecodeError):  # a page that is not Microsoft's answer
            raise TemporaryFailure(
                f"Microsoft's sign-in service did not answer with a token ({what}: busy, down, "
                f"or a page that is not Microsoft's){WAITS}."
            ) from None
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


def microsoft_error(result: Mapping[str, Any], what: str, known: Iterable[str] = ()) -> AuthError:
    """An AuthError that explains an msal error result in words a system manager can act on.

    ``known`` secrets (the client secret) are masked wherever the answer quotes them.
    """
    scrub = Scrubber(known)
    desc = scrub(mask_tokens(str(result.get("error_description", ""))))
    for code, advice in _AAD_ADVICE.items():
        if code in desc:
            return AuthError(f"{what} failed: {advice}.")
    first = desc.splitlines()[0] if desc else ""
    error = scrub(mask_tokens(str(result.get("error", "error"))))
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
    sent: list[str] = []  # what the sign-in sends that an error must not repeat
    if device_code:
        flow = _msal_call("device code", lambda: app.initiate_device_flow(scopes=scopes))
        if "user_code" not in flow:
            raise microsoft_error(flow, "the Microsoft device-code sign-in")
        sent.append(str(flow.get("device_code") or ""))
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
            show_url(flow["auth_uri"], open_browser=open_browser, say=say)
            params = receiver.wait(flow["state"], timeout)
        if error := auth_response_error(params, "Microsoft"):
            raise error
        sent += [str(params.get("code") or ""), str(flow.get("code_verifier") or "")]
        try:
            result = _msal_call(
                "code exchange", lambda: app.acquire_token_by_auth_code_flow(flow, params)
            )
        except RuntimeError:  # msal: the id_token's nonce does not match
            raise AuthError("the Microsoft sign-in answer did not match; sign in again.") from None
    if not isinstance(result, dict) or "access_token" not in result:
        raise microsoft_error(result or {}, "the Microsoft sign-in", [k for k in sent if k])
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
        stored = signed_in(secrets, "microsoft", account)
        self.address = stored.address
        self._cache = msal.SerializableTokenCache()
        try:
            self._cache.deserialize(stored.data)
        except (ValueError, TypeError):
            raise damaged("microsoft", account) from None
        self._app, self._http = _msal_app(settings, http_cache, token_cache=self._cache)
        self._down: TemporaryFailure | None = None

    def close(self) -> None:
        self._http.close()

    def _expired(self, detail: str) -> AuthError:
        return AuthError(
            f"Microsoft refused to renew the sign-in of {who(self.account)} ({detail}); "
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
        # The endpoint's words may quote the refresh token sent (one of a personal
        # account holds "*" and "!", which no token shape covers): masked by its value.
        scrub = Scrubber(str(rt.get("secret") or "") for rt in self._refresh_tokens())
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
            raise self._expired(mask_tokens(scrub(str(result.get("error", "refused")))))
        return str(result["access_token"])

    def _refresh_tokens(self) -> list[dict[str, Any]]:
        import msal

        kind = msal.TokenCache.CredentialType.REFRESH_TOKEN
        return list(self._cache.search(kind))


def check_app_tenant(tenant: str) -> None:
    """ConfigError unless ``tenant`` names one tenant: app-only tokens are a tenant's own."""
    if tenant in ("", "organizations", "common", "consumers"):
        raise ConfigError(
            "app-only sending needs your tenant ID in mail.microsoft.tenant, not "
            f"{tenant!r}; run `cpmail config microsoft --client-id ID --tenant TENANT-ID`."
        )


class MicrosoftAppSession:
    """App-only tokens (client credentials) for the one-account sender; nothing to save."""

    def __init__(
        self, settings: Settings, secret: str, http_cache: dict[str, Any] | None = None
    ) -> None:
        check_app_tenant(settings["mail.microsoft.tenant"])
        self.account = SHARED
        self._app, self._http = _msal_app(settings, http_cache, client_credential=secret)
        self._known = (secret,)  # masked in what the token endpoint answers

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
            error = microsoft_error(result or {}, "getting an app-only token", self._known)
            raise AuthError(f"{error} Check the client secret: `cpmail config microsoft`.")
        return str(result["access_token"])
