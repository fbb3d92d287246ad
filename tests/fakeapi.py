"""A local stand-in for Google's and Microsoft's sign-in and send endpoints.

One threaded HTTP server on 127.0.0.1 (port chosen by the system) plays:

Google
  GET  /o/oauth2/auth                 the consent page: redirects at once, like a person
                                      who clicked "Allow", with a code and the state
  POST /token                         authorization_code (PKCE checked) and refresh_token
  POST /gmail/v1/users/me/messages/send                    JSON {"raw": base64url}
  POST /upload/gmail/v1/users/me/messages/send?uploadType=media   message/rfc822

Microsoft (msal is given https://login.microsoftonline.com and cpmail sends it here)
  GET  /{tenant}/v2.0/.well-known/openid-configuration
  POST /{tenant}/oauth2/v2.0/devicecode
  POST /{tenant}/oauth2/v2.0/token    authorization_code, device_code, refresh_token,
                                      client_credentials; id_token and client_info included
  POST /v1.0/me/sendMail, /v1.0/users/{upn}/sendMail      base64 MIME, text/plain -> 202

Every request is recorded; every token it issues is remembered (``issued``) so
a test can look for leaks. ``script(path, Reply…)`` makes the next requests to
a path get the given replies before the normal behaviour resumes.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOGLE_CLIENT_ID = "1234567890-fakeclient.apps.googleusercontent.com"
GOOGLE_CLIENT_SECRET = "GOCSPX-fake-client-secret-d41d8cd98f"
MS_CLIENT_ID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
MS_TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
MS_APP_SECRET = "fake~app~secret~Q8Q~0123456789abcdef"
MS_HOST = "https://login.microsoftonline.com"


@dataclass
class Reply:
    """A scripted answer: status, body (dict -> JSON), headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow endpoint)
    # The fake takes the request as it would (a message is sent) and answers this instead:
    # a gateway's 504 after Exchange sent the mail, say.
    take: bool = False
    # Hang up without a word once the request is read (or ``read`` bytes of its body).
    hang_up: bool = False
    # Read at most this many bytes of the request's body, answer, and close the connection
    # (an upload cut off midway).
    read: int | None = None
    # Send the status line and headers whole, then only this many bytes of the body (its
    # Content-Length says all of it), and hang up.
    cut: int | None = None
    # Send the status line and headers at once, then the body a byte every so many seconds.
    trickle_body: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in urllib.parse.parse_qs(self.body.decode()).items()}


@dataclass
class Sent:
    """A message the fake accepted: who sent it (by token), where, and the MIME bytes."""

    user: str
    path: str
    mime: bytes
    content_type: str
    at: float = field(default_factory=time.monotonic)  # when it was accepted


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64url(json.dumps(claims).encode())}.c2ln"


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away midway is no error of the fake's: say nothing."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeAPI:
    """The fake server. Use as a context manager or call ``start``/``stop``."""

    def __init__(self) -> None:
        self.stall = 0.0  # seconds a send request waits before it is answered
        self.trickle = 0.0  # seconds between the bytes of a send request's answer
        self.trickle_tokens = 0.0  # the same for the token endpoints and sign-in discovery
        self.requests: list[Request] = []
        self.sent: list[Sent] = []
        self.issued: list[str] = []  # every access and refresh token ever handed out
        self.access: dict[str, str] = {}  # valid access token -> user ("app" for app-only)
        self.refresh: dict[str, tuple[str, str]] = {}  # refresh token -> (provider, user)
        self.codes: dict[str, dict[str, str]] = {}
        self.device_codes: dict[str, int] = {}  # device code -> polls still pending
        self.google_user = "jd@agency.example"
        self.google_granted = "openid https://www.googleapis.com/auth/gmail.send " + (
            "https://www.googleapis.com/auth/userinfo.email"
        )
        self.ms_user = "jd@agency.example"
        self.device_pending = 0  # how many polls answer authorization_pending first
        self.device_error: tuple[str, str] | None = None  # (error, description) for devicecode
        # Microsoft's token endpoint refuses a device code, quoting it (as an error may)
        self.echo_device_code = False
        self.expires_in = 3600
        self._scripts: dict[str, deque[Reply]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # ------------------------------------------------------------ control
    def start(self) -> FakeAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, path: str, *replies: Reply) -> None:
        """The next requests to ``path`` get ``replies``, in order."""
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(replies)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is refused (401) from now on."""
        with self._lock:
            self.access.clear()

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far is refused (invalid_grant) from now on."""
        with self._lock:
            self.refresh.clear()

    def issue(self, provider: str, user: str) -> tuple[str, str]:
        """Hand out an access and a refresh token for ``user`` (for stored sign-ins)."""
        n = next(self._ids)
        prefix = "ya29" if provider == "google" else "eyJ0eXAi"
        at = f"{prefix}.access-{n}-{secrets.token_urlsafe(9)}"
        rt = f"1//refresh-{provider}-{n}-{secrets.token_urlsafe(9)}"
        with self._lock:
            self.access[at] = user
            self.refresh[rt] = (provider, user)
            self.issued += [at, rt]
        return at, rt

    def paths(self, method: str = "") -> list[str]:
        return [r.path for r in self.requests if not method or r.method == method]

    def ms_authorize(self, auth_uri: str) -> tuple[str, dict[str, str]]:
        """Play the person approving a Microsoft sign-in: where the browser goes, with what.

        Returns the redirect URI and the parameters (code, state, client_info)
        that the browser sends there (as a form POST with response_mode=form_post).
        """
        q = {
            k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(auth_uri).query).items()
        }
        code = f"ms-code-{next(self._ids)}"
        with self._lock:
            self.codes[code] = {**q, "provider": "microsoft"}
        params = {"code": code, "state": q["state"], "client_info": self._client_info(self.ms_user)}
        return q["redirect_uri"], params

    # ------------------------------------------------------------ handler
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                with fake._lock:
                    script = fake._scripts.get(url.path)
                    reply = script.popleft() if script else None
                req = _read_request(self, reply)
                whole = int(self.headers.get("Content-Length") or 0)
                if len(req.body) < whole and (reply is None or reply.read is None):
                    self.close_connection = True  # the client is gone midway: nothing came
                    return
                if fake._hung_up(self, req, reply):
                    return
                with fake._lock:
                    fake.requests.append(req)
                    sending = url.path.endswith(("/send", "/sendMail"))
                    stall = fake.stall if sending else 0.0
                    trickle = fake.trickle if sending else 0.0
                    if url.path.endswith(("/token", "/openid-configuration")):
                        trickle = fake.trickle_tokens
                if stall:
                    time.sleep(stall)  # a server that takes the request and does not answer
                if reply is None:
                    reply = fake._route(req)
                if reply.delay:
                    time.sleep(reply.delay)
                self._reply(reply, trickle)

            def _reply(self, reply: Reply, trickle: float = 0.0) -> None:
                _write_reply(self, reply, trickle)

            do_GET = _serve
            do_POST = _serve

        return Handler

    def _hung_up(self, handler: BaseHTTPRequestHandler, req: Request, reply: Reply | None) -> bool:
        """Take the request when ``reply`` says so; True once it also says: hang up."""
        if reply is not None and reply.take:
            self._route(req)  # (the message is sent; its answer is not this one)
        if reply is None or not reply.hang_up:
            return False
        with self._lock:
            self.requests.append(req)
        handler.close_connection = True
        return True

    def _route(self, req: Request) -> Reply:
        p = req.path
        if p == "/o/oauth2/auth":
            return self._google_consent(req)
        if p == "/token":
            return self._google_token(req)
        if p in ("/gmail/v1/users/me/messages/send", "/upload/gmail/v1/users/me/messages/send"):
            return self._gmail_send(req)
        if p.endswith("/v2.0/.well-known/openid-configuration"):
            return self._ms_openid(p.split("/")[1])
        if p.endswith("/oauth2/v2.0/devicecode"):
            return self._ms_devicecode(req)
        if p.endswith("/oauth2/v2.0/token"):
            return self._ms_token(req)
        if p.startswith("/v1.0/") and p.endswith("/sendMail"):
            return self._graph_send(req)
        return Reply(404, {"error": {"code": 404, "message": f"no such path {p}"}})

    def _bearer(self, req: Request) -> str | None:
        auth = req.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        with self._lock:
            return self.access.get(token) if auth.startswith("Bearer ") else None

    # ------------------------------------------------------------ Google
    def _google_consent(self, req: Request) -> Reply:
        q = req.query
        code = f"4/google-code-{next(self._ids)}"
        with self._lock:
            self.codes[code] = {**q, "provider": "google"}
        target = (
            q["redirect_uri"]
            + "?"
            + urllib.parse.urlencode(
                {"state": q["state"], "code": code, "scope": self.google_granted}
            )
        )
        return Reply(302, b"", {"Location": target})

    def _google_client_ok(self, req: Request, form: dict[str, str]) -> bool:
        auth = req.headers.get("authorization", "")
        if auth.startswith("Basic "):
            cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        return cid == GOOGLE_CLIENT_ID and secret == GOOGLE_CLIENT_SECRET

    def _google_token(self, req: Request) -> Reply:
        form = req.form()
        if not self._google_client_ok(req, form):
            return Reply(401, {"error": "invalid_client", "error_description": "Unauthorized"})
        grant = form.get("grant_type")
        if grant == "authorization_code":
            with self._lock:
                info = self.codes.pop(form.get("code", ""), None)
            if not info or info.get("redirect_uri") != form.get("redirect_uri"):
                return Reply(400, {"error": "invalid_grant", "error_description": "Bad Request"})
            challenge = _b64url(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
            if info.get("code_challenge") != challenge:
                return Reply(400, {"error": "invalid_grant", "error_description": "PKCE failed"})
            at, rt = self.issue("google", self.google_user)
            now = int(time.time())
            id_token = _jwt(
                {
                    "iss": "https://accounts.google.com",
                    "aud": GOOGLE_CLIENT_ID,
                    "iat": now,
                    "exp": now + 3600,
                    "sub": "1098765",
                    "email": self.google_user,
                    "email_verified": True,
                }
            )
            return Reply(
                200,
                {
                    "access_token": at,
                    "expires_in": self.expires_in,
                    "refresh_token": rt,
                    "scope": self.google_granted,
                    "token_type": "Bearer",
                    "id_token": id_token,
                },
            )
        if grant == "refresh_token":
            with self._lock:
                owner = self.refresh.get(form.get("refresh_token", ""))
            if owner is None:
                return Reply(
                    400,
                    {
                        "error": "invalid_grant",
                        "error_description": "Token has been expired or revoked.",
                    },
                )
            at, _ = self.issue("google", owner[1])
            return Reply(
                200,
                {
                    "access_token": at,
                    "expires_in": self.expires_in,
                    "scope": self.google_granted,
                    "token_type": "Bearer",
                },
            )
        return Reply(400, {"error": "unsupported_grant_type"})

    def _gmail_send(self, req: Request) -> Reply:
        user = self._bearer(req)
        if user is None:
            return Reply(
                401,
                {
                    "error": {
                        "code": 401,
                        "status": "UNAUTHENTICATED",
                        "message": "Request had invalid authentication credentials.",
                        "errors": [{"reason": "authError", "message": "Invalid Credentials"}],
                    }
                },
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        ctype = req.headers.get("content-type", "")
        if req.path.startswith("/upload/"):
            if req.query.get("uploadType") != "media" or ctype != "message/rfc822":
                return Reply(400, {"error": {"code": 400, "message": "Bad upload"}})
            mime = req.body
        else:
            raw = json.loads(req.body)["raw"]
            mime = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        with self._lock:
            self.sent.append(Sent(user, req.path, mime, ctype))
            n = next(self._ids)
        return Reply(200, {"id": f"18c{n:013x}", "threadId": f"18c{n:013x}", "labelIds": ["SENT"]})

    # ------------------------------------------------------------ Microsoft
    def _ms_openid(self, tenant: str) -> Reply:
        t = f"{MS_HOST}/{tenant}"
        return Reply(
            200,
            {
                "token_endpoint": f"{t}/oauth2/v2.0/token",
                "authorization_endpoint": f"{t}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{t}/oauth2/v2.0/devicecode",
                "issuer": f"{MS_HOST}/{MS_TENANT_ID}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "response_modes_supported": ["query", "fragment", "form_post"],
            },
        )

    def _client_info(self, user: str) -> str:
        oid = hashlib.md5(user.encode()).hexdigest()
        return _b64url(json.dumps({"uid": oid, "utid": MS_TENANT_ID}).encode())

    def _ms_user_tokens(self, user: str, nonce: str | None = None) -> dict[str, Any]:
        at, rt = self.issue("microsoft", user)
        now = int(time.time())
        oid = hashlib.md5(user.encode()).hexdigest()
        claims = {
            "aud": MS_CLIENT_ID,
            "iss": f"{MS_HOST}/{MS_TENANT_ID}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": "Jane Doe",
            "oid": oid,
            "preferred_username": user,
            "sub": oid,
            "tid": MS_TENANT_ID,
            "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        return {
            "token_type": "Bearer",
            "scope": "Mail.Send openid profile",
            "expires_in": self.expires_in,
            "ext_expires_in": self.expires_in,
            "access_token": at,
            "refresh_token": rt,
            "id_token": _jwt(claims),
            "client_info": self._client_info(user),
        }

    def _ms_devicecode(self, req: Request) -> Reply:
        form = req.form()
        if form.get("client_id") != MS_CLIENT_ID:
            return Reply(
                400,
                {
                    "error": "unauthorized_client",
                    "error_description": "AADSTS700016: Application not found.",
                },
            )
        if self.device_error:
            return Reply(
                400, {"error": self.device_error[0], "error_description": self.device_error[1]}
            )
        code = f"device-{next(self._ids)}"
        with self._lock:
            self.device_codes[code] = self.device_pending
        return Reply(
            200,
            {
                "device_code": code,
                "user_code": "FAKE-CODE",
                "interval": 1,
                "expires_in": 900,
                "verification_uri": "https://microsoft.com/devicelogin",
                "message": "To sign in, use a web browser to open the page "
                "https://microsoft.com/devicelogin and enter the code FAKE-CODE to authenticate.",
            },
        )

    def _ms_token(self, req: Request) -> Reply:
        form = req.form()
        grant = form.get("grant_type", "")
        if form.get("client_id") != MS_CLIENT_ID:
            return Reply(
                400,
                {
                    "error": "unauthorized_client",
                    "error_description": "AADSTS700016: Application not found.",
                },
            )
        if grant == "client_credentials":
            if form.get("client_secret") != MS_APP_SECRET:
                return Reply(
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.",
                    },
                )
            n = next(self._ids)
            at = f"eyJ0eXAi.app-{n}"
            with self._lock:
                self.access[at] = "app"
                self.issued.append(at)
            return Reply(
                200,
                {
                    "token_type": "Bearer",
                    "expires_in": self.expires_in,
                    "ext_expires_in": self.expires_in,
                    "access_token": at,
                },
            )
        if grant == "authorization_code":
            with self._lock:
                info = self.codes.pop(form.get("code", ""), None)
            if not info or info.get("redirect_uri") != form.get("redirect_uri"):
                return Reply(
                    400, {"error": "invalid_grant", "error_description": "AADSTS70008: bad code"}
                )
            challenge = _b64url(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
            if info.get("code_challenge") != challenge:
                return Reply(
                    400, {"error": "invalid_grant", "error_description": "AADSTS501481: PKCE"}
                )
            return Reply(200, self._ms_user_tokens(self.ms_user, info.get("nonce")))
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            code = form.get("device_code", "")
            if self.echo_device_code:
                why = f"AADSTS70000: the grant {code} is not valid"
                return Reply(400, {"error": "invalid_grant", "error_description": why})
            with self._lock:
                pending = self.device_codes.get(code)
                if pending:
                    self.device_codes[code] = pending - 1
            if pending is None:
                return Reply(400, {"error": "expired_token", "error_description": "AADSTS70019"})
            if pending:
                return Reply(
                    400,
                    {"error": "authorization_pending", "error_description": "AADSTS70016: pending"},
                )
            return Reply(200, self._ms_user_tokens(self.ms_user))
        if grant == "refresh_token":
            with self._lock:
                owner = self.refresh.pop(form.get("refresh_token", ""), None)
            if owner is None:
                return Reply(
                    400,
                    {
                        "error": "invalid_grant",
                        "error_description": "AADSTS700082: The refresh token has expired "
                        "due to inactivity.",
                        "error_codes": [700082],
                        "suberror": "bad_token",
                    },
                )
            return Reply(200, self._ms_user_tokens(owner[1]))
        return Reply(400, {"error": "unsupported_grant_type"})

    def _graph_send(self, req: Request) -> Reply:
        user = self._bearer(req)
        if user is None:
            return Reply(
                401,
                {
                    "error": {
                        "code": "InvalidAuthenticationToken",
                        "message": "Access token has expired or is not yet valid.",
                    }
                },
            )
        if req.path.startswith("/v1.0/users/"):
            if user != "app":
                return Reply(
                    403, {"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}
                )
            user = urllib.parse.unquote(req.path.split("/")[3])
        elif user == "app":
            return Reply(
                400,
                {
                    "error": {
                        "code": "BadRequest",
                        "message": "/me request is only valid with delegated authentication flow.",
                    }
                },
            )
        ctype = req.headers.get("content-type", "")
        if not ctype.startswith("text/plain"):
            return Reply(
                400,
                {
                    "error": {
                        "code": "ErrorMimeContentInvalidBase64String",
                        "message": "Invalid base64 string for MIME content.",
                    }
                },
            )
        try:
            mime = base64.b64decode(req.body, validate=True)
        except ValueError:
            return Reply(
                400,
                {
                    "error": {
                        "code": "ErrorMimeContentInvalidBase64String",
                        "message": "Invalid base64 string for MIME content.",
                    }
                },
            )
        with self._lock:
            self.sent.append(Sent(user, req.path, mime, ctype))
        return Reply(202, b"")


def _write_reply(handler: BaseHTTPRequestHandler, reply: Reply, trickle: float = 0.0) -> None:
    """Answer on ``handler`` with ``reply`` (a byte at a time, every ``trickle`` seconds)."""
    body = reply.body
    headers = dict(reply.headers)
    if isinstance(body, dict | list):
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json; charset=UTF-8")
    elif isinstance(body, str):
        data = body.encode()
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    else:
        data = body or b""
    if _replied_in_part(handler, reply, headers, data):
        return
    if trickle:  # the whole answer, a byte at a time, each well within a timeout
        data = data or b" " * 64
        head = f"HTTP/1.1 {reply.status} Trickled\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(data)}\r\n\r\n"
        try:
            for byte in head.encode() + data:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(trickle)
        except OSError:  # the client gave up: so it should
            handler.close_connection = True
        return
    handler.send_response(reply.status)
    for k, v in headers.items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _read_request(handler: BaseHTTPRequestHandler, reply: Reply | None) -> Request:
    """The request on ``handler``, its body read whole (or as far as ``reply.read`` says)."""
    length = int(handler.headers.get("Content-Length") or 0)
    if reply is not None and reply.read is not None:
        length = min(length, reply.read)
        handler.close_connection = True
    body = handler.rfile.read(length) if length else b""
    url = urllib.parse.urlsplit(handler.path)
    return Request(
        handler.command,
        url.path,
        {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()},
        {k.lower(): v for k, v in handler.headers.items()},
        body,
    )


def _replied_in_part(
    handler: BaseHTTPRequestHandler, reply: Reply, headers: dict[str, str], data: bytes
) -> bool:
    """The status line and headers whole, then the body cut off or trickled, and hang up,
    when ``reply`` says so (True)."""
    if reply.cut is None and not reply.trickle_body:
        return False
    handler.send_response(reply.status)
    for k, v in headers.items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.flush()
    try:
        if reply.cut is not None:
            handler.wfile.write(data[: reply.cut])
            handler.wfile.flush()
        else:
            for byte in data:
                time.sleep(reply.trickle_body)
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
    except OSError:  # the client gave up: so it should
        pass
    handler.close_connection = True
    return True


# ---------------------------------------------------------------- helpers for tests


def google_client(base: str, kind: str = "installed") -> dict[str, Any]:
    """A Google OAuth client file whose endpoints are the fake's."""
    return {
        kind: {
            "client_id": GOOGLE_CLIENT_ID,
            "project_id": "cpmail-test",
            "auth_uri": f"{base}/o/oauth2/auth",
            "token_uri": f"{base}/token",
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_secret": GOOGLE_CLIENT_SECRET,
            "redirect_uris": ["http://localhost"],
        }
    }


def mime(
    to: str = "pat@agency.example",
    *,
    sender: str = "jd@agency.example",
    subject: str = "[C&P] Job 1234 opened",
    attachment: int = 0,
) -> bytes:
    """A real RFC 5322 message (CRLF line ends), with an attachment of that many bytes."""
    from email.message import EmailMessage
    from email.policy import SMTP

    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@agency.example>"
    msg.set_content("Job 1234 (Spring catalogue) was opened for Acme.\n")
    if attachment:
        msg.add_attachment(
            secrets.token_bytes(attachment),
            maintype="application",
            subtype="pdf",
            filename="invoice.pdf",
        )
    return msg.as_bytes()
