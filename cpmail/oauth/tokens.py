"""What a sign-in stores, and what both providers share.

One secret per signed-in account, named ``token_name("gmail"|"microsoft",
account)`` (account = a staff ID or ``"shared"``), holds JSON
``{"address": …, "credentials"|"cache": …}``: the address that signed in, and
google-auth's authorized-user JSON or msal's serialised token cache.

Nothing here prints, logs or puts into an exception a token or a client
secret: messages name the account, the address and the command to run.

Addresses of the providers come from settings (``mail.gmail.api_base``,
``mail.gmail.token_uri``, ``mail.microsoft.api_base``,
``mail.microsoft.authority_base``). They must be https, except for a loopback
host (127.0.0.1, localhost, ::1), which is how the tests point cpmail at a
local fake server (``check_endpoint``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from cpmail.errors import AuthError, ConfigError
from cpmail.secrets import SHARED, SecretStore, token_name
from cpmail.settings import ENDPOINT_RULE, redact, secure_endpoint

if TYPE_CHECKING:
    import ssl

PROVIDER = {"gmail": "Google", "microsoft": "Microsoft"}


def signin_command(account: str) -> str:
    """The exact command that signs ``account`` in again."""
    return "cpmail staff signin --shared" if account == SHARED else f"cpmail staff signin {account}"


def who(account: str) -> str:
    """``account`` in words: a staff member, or the shared sender."""
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
            f"{who(account)} is not signed in with {PROVIDER[transport]}; "
            f"run `{signin_command(account)}`."
        )


@cache
def https_context() -> ssl.SSLContext:
    """The TLS settings of every HTTPS client cpmail makes, made once per process.

    httpx's default (certifi's authorities, or SSL_CERT_FILE / SSL_CERT_DIR):
    loading the authorities takes tens of milliseconds, which each new client
    would spend again.
    """
    import httpx

    return httpx.create_ssl_context()


def check_endpoint(url: str, key: str) -> str:
    """Return ``url`` without a trailing slash; https, or http on a loopback host only."""
    if secure_endpoint(url):
        return url.rstrip("/")
    raise ConfigError(f"{key} = {redact(url)!r}: {ENDPOINT_RULE}.")


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


def signed_in(secrets: SecretStore, transport: str, account: str) -> StoredToken:
    """The stored sign-in of ``account``; AuthError naming the command when there is none."""
    stored = load_token(secrets, transport, account)
    if stored is None:
        raise AuthError(
            f"{who(account)} is not signed in with {PROVIDER[transport]}; "
            f"run `{signin_command(account)}`."
        )
    return stored


def damaged(transport: str, account: str) -> AuthError:
    """The error for a stored sign-in the provider's library cannot read.

    Like a missing sign-in, it holds back that account's mail only (exit 3).
    """
    return AuthError(
        f"the stored {PROVIDER[transport]} sign-in of {who(account)} is damaged; "
        f"run `{signin_command(account)}`."
    )


def save_token(secrets: SecretStore, transport: str, account: str, token: StoredToken) -> None:
    """Store the sign-in of ``account`` (a 0600 file or the keyring)."""
    key = "credentials" if transport == "gmail" else "cache"
    doc = {"address": token.address, key: token.data}
    secrets.set(token_name(transport, account), json.dumps(doc))


def signed_in_address(secrets: SecretStore, transport: str, account: str) -> str | None:
    """The address ``account`` signed in as, or None when not signed in."""
    token = load_token(secrets, transport, account)
    return token.address if token else None
