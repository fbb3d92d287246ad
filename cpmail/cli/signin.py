"""Sign in with Google and Microsoft: `config gmail|microsoft`, `staff signin`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cpmail.cli.common import ctx_of, printable, read_stdin_text


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
    from cpmail.signin import use_gmail

    c = ctx_of(ctx)
    client_id = use_gmail(c.settings, c.secrets, client_secrets)
    where = "the OS keyring" if c.secrets.backend == "keyring" else str(c.secrets.dir)
    c.say(f"Transport: gmail, with OAuth client {client_id}.")
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
    from cpmail.signin import use_microsoft

    c = ctx_of(ctx)
    client_id = use_microsoft(
        c.settings,
        c.secrets,
        client_id=client_id,
        tenant=tenant,
        read_secret=_read_client_secret if client_secret else None,
        forget_secret=no_client_secret,
    )
    c.say(
        f"Transport: microsoft, with app {client_id} in tenant "
        f"{c.settings['mail.microsoft.tenant']}."
    )
    if client_secret:
        c.say("Client secret stored: the one-account sender's mail goes out app-only.")
    elif no_client_secret:
        c.say("Client secret forgotten: every account sends with its own sign-in.")
    c.say(_next_steps())


def _read_client_secret() -> str:
    if sys.stdin.isatty():
        return str(typer.prompt("Client secret (the Value, not the Secret ID)", hide_input=True))
    # piped in by a script; getpass would read the terminal instead
    return read_stdin_text(line=True, secret=True)


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
    from cpmail.signin import sign_in, signer

    c = ctx_of(ctx)
    who = signer(c.settings, c.engine, staff_id=staff_id, shared=shared, device_code=device_code)

    def show(text: str) -> None:  # shown even with --quiet: the person must act on it
        c.err.print(printable(text), markup=False, highlight=False)

    show(f"Signing in {who.label} as {who.address} with {who.provider}.")
    signed_in = sign_in(
        c.settings, c.secrets, who, say=show, browser=not no_browser, device_code=device_code
    )
    c.say(f"Signed in {who.label} as {signed_in} with {who.provider}.")
    if signed_in and signed_in.lower() != who.address.lower():
        c.note(
            f"Note: {who.label} sends as {who.address}, but {signed_in} signed in; mail will "
            f"come from {signed_in}. If that is wrong, run the command again and choose "
            f"{who.address}."
        )
    if shared and not c.settings["mail.one_account"]:
        c.note("Note: one-account mode is off; turn it on with `cpmail config one-account`.")


def register(config_app: typer.Typer, staff_app: typer.Typer) -> None:
    """Add the sign-in commands to the config and staff groups."""
    config_app.command("gmail")(config_gmail)
    config_app.command("microsoft")(config_microsoft)
    staff_app.command("signin")(staff_signin)
