"""Sign in with Google and Microsoft: `config gmail|microsoft`, `staff signin`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer

from cpmail.cli.common import Ctx, ctx_of
from cpmail.errors import ConfigError, InputError

_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")
_NAMED_TENANTS = ("organizations", "common", "consumers")


def config_gmail(
    ctx: typer.Context,
    client_secrets: Path = typer.Option(
        ...,
        "--client-secrets",
        metavar="FILE",
        help="The OAuth client JSON of a 'Desktop app' client, downloaded from Google Cloud.",
    ),
) -> None:
    """Send through the Gmail API, with this Google OAuth client (type "installed")."""
    from cpmail.oauth.google import GOOGLE_CLIENT_SECRET, STORED_CLIENT, read_google_client_file

    c = ctx_of(ctx)
    text, client = read_google_client_file(client_secrets)
    settings = c.settings
    c.secrets.set(GOOGLE_CLIENT_SECRET, text)
    settings.set("mail.transport", "gmail")
    settings.set("mail.gmail.client_secrets", STORED_CLIENT)
    settings.save()
    where = "the OS keyring" if c.secrets.backend == "keyring" else str(c.secrets.dir)
    c.say(f"Transport: gmail, with OAuth client {client['installed']['client_id']}.")
    c.say(f"The client file is kept in {where}; {client_secrets} may be deleted.")
    c.say(_next_steps())


def config_microsoft(
    ctx: typer.Context,
    client_id: str = typer.Option(
        ...,
        "--client-id",
        metavar="ID",
        help="The application (client) ID of the Entra app registration.",
    ),
    tenant: str | None = typer.Option(
        None,
        "--tenant",
        help="organizations (default), common, or your directory (tenant) ID or domain.",
    ),
    client_secret: bool = typer.Option(
        False,
        "--client-secret",
        help="Ask for the app's client secret (or read it from stdin), kept in secrets, to "
        "send the one-account sender's mail app-only.",
    ),
    no_client_secret: bool = typer.Option(
        False, "--no-client-secret", help="Forget a stored client secret."
    ),
) -> None:
    """Send through Microsoft 365 (Graph), with this Entra app registration."""
    from cpmail.oauth.microsoft import MICROSOFT_APP_SECRET

    c = ctx_of(ctx)
    client_id = client_id.strip()
    if not _GUID.match(client_id):
        raise InputError(
            f"--client-id {client_id!r} is not an application (client) ID, which looks like "
            "00000000-0000-0000-0000-000000000000; copy it from the app's Overview page in "
            "the Microsoft Entra admin center."
        )
    if tenant is not None:
        tenant = tenant.strip()
        if tenant.lower() in _NAMED_TENANTS:
            tenant = tenant.lower()
        elif not (_GUID.match(tenant) or _DOMAIN.match(tenant)):
            raise InputError(
                f"--tenant {tenant!r}: use organizations, common, or your directory (tenant) "
                "ID (a GUID) or a domain such as contoso.onmicrosoft.com."
            )
    if client_secret and no_client_secret:
        raise InputError("give --client-secret or --no-client-secret, not both.")
    secret = ""
    if client_secret:
        if sys.stdin.isatty():
            secret = typer.prompt("Client secret (the Value, not the Secret ID)", hide_input=True)
        else:  # piped in by a script; getpass would read the terminal instead
            secret = sys.stdin.readline()
        secret = secret.strip()
        if not secret:
            raise InputError("the client secret is empty; nothing was changed.")
    settings = c.settings
    settings.set("mail.transport", "microsoft")
    settings.set("mail.microsoft.client_id", client_id)
    if tenant is not None:
        settings.set("mail.microsoft.tenant", tenant)
    if secret:
        c.secrets.set(MICROSOFT_APP_SECRET, secret)
    elif no_client_secret:
        c.secrets.delete(MICROSOFT_APP_SECRET)
    settings.save()
    c.say(
        f"Transport: microsoft, with app {client_id} in tenant {settings['mail.microsoft.tenant']}."
    )
    if secret:
        c.say("Client secret stored: the one-account sender's mail goes out app-only.")
    elif no_client_secret:
        c.say("Client secret forgotten: every account sends with its own sign-in.")
    c.say(_next_steps())


def _next_steps() -> str:
    return (
        "Next: sign in each sender with `cpmail staff signin ID` (or `cpmail staff signin "
        "--shared` in one-account mode), then try `cpmail staff test ID`."
    )


def staff_signin(
    ctx: typer.Context,
    staff_id: str | None = typer.Argument(
        None, metavar="ID", help="The staff member to sign in (their staff ID)."
    ),
    shared: bool = typer.Option(
        False, "--shared", help="Sign in the one-account sender (mail.sender) instead."
    ),
    device_code: bool = typer.Option(
        False,
        "--device-code",
        help="Microsoft only: sign in on another device with a code (no browser here).",
    ),
    no_browser: bool = typer.Option(
        False, "--no-browser", help="Do not open a browser; print the address to open instead."
    ),
) -> None:
    """Sign in with Google or Microsoft (per the transport) so cpmail can send as this account."""
    from cpmail.oauth.google import google_sign_in
    from cpmail.oauth.loopback import can_open_browser
    from cpmail.oauth.microsoft import microsoft_sign_in
    from cpmail.oauth.tokens import PROVIDER
    from cpmail.secrets import SHARED

    c = ctx_of(ctx)
    transport = str(c.settings["mail.transport"])
    if transport not in ("gmail", "microsoft"):
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
        account, address, label = SHARED, str(c.settings["mail.sender"]), "the shared sender"
        if not address:
            raise ConfigError(
                "there is no shared sender; run `cpmail config one-account --sender ADDRESS` first."
            )
    else:
        assert staff_id is not None
        account, address, label = _staff_address(c, staff_id)

    def show(text: str) -> None:  # shown even with --quiet: the person must act on it
        c.err.print(text, markup=False, highlight=False)

    provider = PROVIDER[transport]
    show(f"Signing in {label} as {address} with {provider}.")
    open_browser = not no_browser and can_open_browser()
    if transport == "gmail":
        signed_in = google_sign_in(
            c.settings,
            c.secrets,
            account,
            open_browser=open_browser,
            say=show,
            login_hint=address,
        )
    else:
        signed_in = microsoft_sign_in(
            c.settings,
            c.secrets,
            account,
            device_code=device_code,
            open_browser=open_browser,
            say=show,
            login_hint=address,
        )
    c.say(f"Signed in {label} as {signed_in} with {provider}.")
    if signed_in and signed_in.lower() != address.lower():
        c.note(
            f"Note: {label} sends as {address}, but {signed_in} signed in; mail will come "
            f"from {signed_in}. If that is wrong, run the command again and choose {address}."
        )
    if shared and not c.settings["mail.one_account"]:
        c.note("Note: one-account mode is off; turn it on with `cpmail config one-account`.")


def _staff_address(c: Ctx, staff_id: str) -> tuple[str, str, str]:
    """The account (staff ID), the address to sign in as, and a label for messages."""
    from cpmail import people

    with c.engine().connect() as conn:
        row = people.get(conn, staff_id)
    address = row.username or row.work_email
    if not address:
        raise InputError(
            f"staff member {row.id} ({row.name}) has no username or work e-mail to sign in "
            f"as; run `cpmail staff edit {row.id} --work-email ADDRESS`."
        )
    return str(row.id), str(address), f"{row.id} ({row.name})"


def register(config_app: typer.Typer, staff_app: typer.Typer) -> None:
    """Add the sign-in commands to the config and staff groups."""
    config_app.command("gmail")(config_gmail)
    config_app.command("microsoft")(config_microsoft)
    staff_app.command("signin")(staff_signin)
