"""Sign-in settings and sign-ins: what `config gmail|microsoft` and `staff signin` do.

Checks the OAuth client or app registration, stores it (the client's secrets
in the secret store, the rest in ``cpmail.toml``), and signs an account in
with the provider of the transport in use.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from cpmail import people
from cpmail.errors import ConfigError, InputError
from cpmail.oauth.google import (
    GOOGLE_CLIENT_SECRET,
    STORED_CLIENT,
    google_sign_in,
    read_google_client_file,
)
from cpmail.oauth.loopback import Say, can_open_browser
from cpmail.oauth.microsoft import MICROSOFT_APP_SECRET, check_app_tenant, microsoft_sign_in
from cpmail.oauth.tokens import PROVIDER
from cpmail.secrets import SHARED, SecretStore
from cpmail.settings import Settings

_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")
_NAMED_TENANTS = ("organizations", "common", "consumers")


def use_gmail(settings: Settings, secrets: SecretStore, client_secrets: Path) -> str:
    """Send through the Gmail API with the OAuth client in ``client_secrets``; return its ID.

    The client file is kept in the secret store, so the file itself may go.
    """
    text, client = read_google_client_file(client_secrets)
    secrets.set(GOOGLE_CLIENT_SECRET, text)
    settings.set("mail.transport", "gmail")
    settings.set("mail.gmail.client_secrets", STORED_CLIENT)
    settings.save()
    return str(client["installed"]["client_id"])


def _client_id(client_id: str) -> str:
    client_id = client_id.strip()
    if not _GUID.match(client_id):
        raise InputError(
            f"--client-id {client_id!r} is not an application (client) ID, which looks like "
            "00000000-0000-0000-0000-000000000000; copy it from the app's Overview page in "
            "the Microsoft Entra admin center."
        )
    return client_id


def _tenant(tenant: str | None) -> str | None:
    if tenant is None:
        return None
    tenant = tenant.strip()
    if tenant.lower() in _NAMED_TENANTS:
        return tenant.lower()
    if not (_GUID.match(tenant) or _DOMAIN.match(tenant)):
        raise InputError(
            f"--tenant {tenant!r}: use organizations, common, or your directory (tenant) "
            "ID (a GUID) or a domain such as contoso.onmicrosoft.com."
        )
    return tenant


def use_microsoft(
    settings: Settings,
    secrets: SecretStore,
    *,
    client_id: str,
    tenant: str | None,
    read_secret: Callable[[], str] | None = None,
    forget_secret: bool = False,
) -> str:
    """Send through Microsoft 365 (Graph) with this app registration; return its client ID.

    ``read_secret`` gives the app's client secret, asked for once the client ID
    and tenant passed their checks; it is kept in the secret store, so that the
    one-account sender's mail goes out app-only. ``forget_secret`` removes a
    stored one.
    """
    client_id = _client_id(client_id)
    tenant = _tenant(tenant)
    if read_secret is not None and forget_secret:
        raise InputError("give --client-secret or --no-client-secret, not both.")
    secret = ""
    if read_secret is not None:
        # (an app's tokens are one tenant's: refused before anything changes)
        check_app_tenant(tenant if tenant is not None else settings["mail.microsoft.tenant"])
        secret = read_secret().strip()
        if not secret:
            raise InputError("the client secret is empty; nothing was changed.")
    settings.set("mail.transport", "microsoft")
    settings.set("mail.microsoft.client_id", client_id)
    if tenant is not None:
        settings.set("mail.microsoft.tenant", tenant)
    if secret:
        secrets.set(MICROSOFT_APP_SECRET, secret)
    elif forget_secret:
        secrets.delete(MICROSOFT_APP_SECRET)
    settings.save()
    return client_id


@dataclass(frozen=True)
class Signer:
    """Who signs in: the account (staff ID or ``shared``), its address, how it is named."""

    transport: str  # gmail or microsoft
    account: str
    address: str
    label: str  # ``JD (Jane Doe)`` or ``the shared sender``

    @property
    def provider(self) -> str:
        return PROVIDER[self.transport]


def signer(
    settings: Settings,
    engine: Callable[[], sa.Engine],
    *,
    staff_id: str | None,
    shared: bool,
    device_code: bool = False,
) -> Signer:
    """Check that the transport signs in and how; return who signs in.

    ``engine`` gives the database, read only for a staff member.
    """
    transport = settings["mail.transport"]
    if transport not in PROVIDER:
        raise ConfigError(
            f"mail.transport is {transport!r}; signing in is for the gmail and microsoft "
            "transports: run `cpmail config gmail --client-secrets FILE` or "
            "`cpmail config microsoft --client-id ID` first."
        )
    if bool(staff_id) == shared:
        raise InputError("give a staff ID or --shared (one of them).")
    if device_code and transport == "gmail":
        raise InputError(
            "--device-code works with Microsoft only (Google does not allow sending mail "
            "from a device-code sign-in); use --no-browser and open the printed address in "
            "a browser that can reach this machine (for example through `ssh -L`)."
        )
    if shared:
        address = settings["mail.sender"]
        if not address:
            raise ConfigError(
                "there is no shared sender; run `cpmail config one-account --sender ADDRESS` first."
            )
        return Signer(transport, SHARED, address, "the shared sender")
    assert staff_id is not None
    return _staff_signer(engine(), transport, staff_id)


def _staff_signer(engine: sa.Engine, transport: str, staff_id: str) -> Signer:
    if why := people.reserved(staff_id):  # (a row from before the ID was reserved)
        raise InputError(f"staff ID {why}; sign in as the shared account with --shared.")
    with engine.connect() as conn:
        row = people.get(conn, staff_id)
    address = row.username or row.work_email
    if not address:
        raise InputError(
            f"staff member {row.id} ({row.name}) has no username or work e-mail to sign in "
            f"as; run `cpmail staff edit {row.id} --work-email ADDRESS`."
        )
    return Signer(transport, str(row.id), str(address), f"{row.id} ({row.name})")


def sign_in(
    settings: Settings,
    secrets: SecretStore,
    who: Signer,
    *,
    say: Say,
    browser: bool = True,
    device_code: bool = False,
) -> str:
    """Sign ``who`` in with their provider; store the token; return the address that signed in.

    ``say`` shows the person what to do (the address to open, a device code);
    a browser is opened only when ``browser`` allows it and the machine has one.
    """
    open_browser = browser and can_open_browser()
    if who.transport == "gmail":
        return google_sign_in(
            settings,
            secrets,
            who.account,
            open_browser=open_browser,
            say=say,
            login_hint=who.address,
        )
    return microsoft_sign_in(
        settings,
        secrets,
        who.account,
        device_code=device_code,
        open_browser=open_browser,
        say=say,
        login_hint=who.address,
    )
