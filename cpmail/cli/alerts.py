"""`cpmail alerts test`: try each alert URL of ``[alerts] urls``."""

from __future__ import annotations

import typer

from cpmail.cli.common import ctx_of, emit_json
from cpmail.errors import ConfigError

app = typer.Typer(
    help="Alerts through a second channel (Apprise URLs in [alerts] urls).",
    no_args_is_help=True,
)


@app.command("test")
def test(
    ctx: typer.Context,
    json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Send a test alert to each URL in [alerts] urls and say which worked.

    Exit 1 when any URL failed, 2 when none is configured.
    """
    import socket

    from cpmail import __version__
    from cpmail.alerts import send

    c = ctx_of(ctx)
    urls = list(c.settings["alerts.urls"])
    if not urls:
        raise ConfigError(
            "no alert URLs are set; add Apprise URLs with "
            "`cpmail config set alerts.urls '[\"slack://…\"]'` (see docs/monitoring.md)."
        )
    host = socket.gethostname()
    results = send(
        urls,
        f"cpmail on {host}: test alert",
        f"This is a test alert from cpmail {__version__} on {host}. "
        "If you can read this, cpmail can tell you when mail stops working.",
        "info",
    )
    if json:
        emit_json([{"url": r.url, "ok": r.ok, "reason": r.reason} for r in results])
    else:
        for r in results:
            c.say(
                f"{'sent  ' if r.ok else 'FAILED'}  {r.url}"
                + (f"  ({r.reason})" if r.reason else "")
            )
        ok = sum(r.ok for r in results)
        c.say(f"{ok} of {len(results)} alert URL(s) worked.")
    if not all(r.ok for r in results):
        raise typer.Exit(1)
