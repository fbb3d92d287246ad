"""The browser side of a sign-in: show the address, and wait for the redirect on 127.0.0.1."""

from __future__ import annotations

import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from cpmail.errors import AuthError

SIGNIN_TIMEOUT = 300  # seconds a person has to finish signing in

Say = Callable[[str], None]


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


def show_url(url: str, *, open_browser: bool, say: Say) -> None:
    """Open the sign-in page in a browser when asked and possible; always say its address."""
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
            # The code is exchanged for tokens after this page is shown: only the
            # terminal can say whether the sign-in succeeded.
            text = "cpmail received the answer. Close this tab; the terminal says if it worked."
            status = 200
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
                    "again (on a machine without a browser, with --no-browser; with Microsoft, "
                    "--device-code too)."
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


def auth_response_error(params: Mapping[str, str], provider: str) -> AuthError | None:
    """The AuthError a redirect carries (cancelled, or refused), or None when it has a code."""
    error = params.get("error")
    if not error:
        return None
    if error == "access_denied":
        return AuthError(f"the {provider} sign-in was cancelled or access was denied.")
    desc = params.get("error_description", "")
    return AuthError(f"the {provider} sign-in failed: {error}{': ' + desc if desc else ''}.")
