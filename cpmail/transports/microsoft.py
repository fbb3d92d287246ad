"""Send through Microsoft Graph (``sendMail`` with the MIME message), as each signed-in account.

The message goes out byte for byte as standard base64 MIME with
``Content-Type: text/plain``. Graph takes at most 4 MB in one request, which
is 3 MiB of message once base64-encoded; larger messages would need a draft
and an upload session (and the Mail.ReadWrite permission), so they are
refused before they are queued (``max_message_bytes``).

Messages are sent one after another, well within Graph's limit of four
concurrent requests per mailbox. In one-account mode, when a client secret is
stored (``cpmail config microsoft --client-secret``), the shared sender's mail
goes out with an app-only token to ``/users/{sender}/sendMail`` instead of a
signed-in user's token.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterable
from typing import Any

import httpx

from cpmail import oauth
from cpmail.errors import AuthError, ConfigError, PermanentFailure, TemporaryFailure
from cpmail.secrets import SHARED
from cpmail.sizes import size_pair
from cpmail.transports.base import Envelope, Outcome, Report, Transport

SERVICE = "Microsoft Graph"
#: Graph error codes that mean the account or app may not send at all (not this message).
ACCESS_CODES = frozenset({"ErrorAccessDenied", "Authorization_RequestDenied", "AccessDenied"})

Session = oauth.MicrosoftSession | oauth.MicrosoftAppSession


class MicrosoftTransport(Transport):
    """Microsoft Graph with per-account msal token caches, refreshed silently."""

    name = "microsoft"
    max_message_bytes = 3 * 1024 * 1024

    def app_secret(self) -> str | None:
        """The stored client secret for app-only sending, if any."""
        secret = self.secrets.get(oauth.MICROSOFT_APP_SECRET)
        return secret.reveal() if secret else None

    def check_account(self, account: str) -> None:
        if account == SHARED and self.secrets.has(oauth.MICROSOFT_APP_SECRET):
            if not self.settings["mail.sender"]:
                raise ConfigError(
                    "app-only sending needs the shared sender's address; "
                    "run `cpmail config one-account --sender ADDRESS`."
                )
            return
        oauth.check_signed_in(self.secrets, "microsoft", account)

    def deliver(self, envelopes: Iterable[Envelope], report: Report) -> None:
        """Send each envelope as its account; report each outcome as soon as it is known."""
        base = oauth.check_endpoint(
            str(self.settings["mail.microsoft.api_base"]), "mail.microsoft.api_base"
        )
        sessions: dict[str, Session | TemporaryFailure] = {}
        http_cache: dict[str, Any] = {}  # msal's discovery answers, shared by the accounts
        try:
            timeout = httpx.Timeout(float(self.settings["mail.microsoft.timeout"]), connect=15.0)
            with httpx.Client(timeout=timeout) as http:
                for env in envelopes:
                    report(self._send(http, base, env, sessions, http_cache))
        finally:
            for session in sessions.values():
                if not isinstance(session, TemporaryFailure):
                    session.close()

    def _session(self, account: str, http_cache: dict[str, Any]) -> Session:
        secret = self.app_secret() if account == SHARED else None
        if secret:
            return oauth.MicrosoftAppSession(self.settings, secret, http_cache)
        return oauth.MicrosoftSession(self.settings, self.secrets, account, http_cache)

    def _send(
        self,
        http: httpx.Client,
        base: str,
        env: Envelope,
        sessions: dict[str, Session | TemporaryFailure],
        http_cache: dict[str, Any],
    ) -> Outcome:
        if len(env.raw) > self.max_message_bytes:
            return Outcome(
                env.id,
                error=PermanentFailure(
                    "the message is {}; Microsoft Graph accepts at most {} in one message. "
                    "Make the attachment smaller or send it through SMTP.".format(
                        *size_pair(len(env.raw), self.max_message_bytes)
                    )
                ),
            )
        session = sessions.get(env.account)
        if session is None:
            try:
                session = self._session(env.account, http_cache)
            except TemporaryFailure as e:
                session = e
            sessions[env.account] = session
        if isinstance(session, TemporaryFailure):
            return Outcome(env.id, error=session)
        if isinstance(session, oauth.MicrosoftAppSession):
            sender = str(self.settings["mail.sender"])
            url = f"{base}/v1.0/users/{urllib.parse.quote(sender, safe='@')}/sendMail"
        else:
            url = f"{base}/v1.0/me/sendMail"
        body = base64.b64encode(oauth.with_missing_bcc(env.raw, env.rcpt_to))
        try:
            response = self._post(http, url, session.access_token(), body)
            if response.status_code == 401:  # revoked early or clock skew: renew once
                response = self._post(http, url, session.access_token(force_refresh=True), body)
                if response.status_code == 401:
                    raise AuthError(
                        f"Microsoft Graph refused the renewed sign-in of {env.account}; "
                        f"run `{oauth.signin_command(env.account)}`."
                    )
        except TemporaryFailure as e:
            return Outcome(env.id, error=e)
        return self._outcome(env, response, app_only=isinstance(session, oauth.MicrosoftAppSession))

    @staticmethod
    def _post(http: httpx.Client, url: str, token: str, body: bytes) -> httpx.Response:
        return oauth.api_post(
            http,
            url,
            service=SERVICE,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
            content=body,
        )

    def _outcome(self, env: Envelope, response: httpx.Response, *, app_only: bool) -> Outcome:
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(env.id, accepted=env.rcpt_to)
        code, message, _ = oauth.api_error(response)
        said = f"HTTP {status}{' ' + code if code else ''}: {message}"
        wait = oauth.retry_after(response.headers.get("Retry-After"))
        if status == 429:
            return Outcome(
                env.id,
                error=TemporaryFailure(
                    f"Microsoft Graph is limiting the rate ({said}).", retry_after=wait
                ),
            )
        if status >= 500:
            return Outcome(
                env.id,
                error=TemporaryFailure(
                    f"Microsoft Graph had a server error ({said}).", retry_after=wait
                ),
            )
        if status == 403 and code in ACCESS_CODES:
            if app_only:
                raise AuthError(
                    f"Microsoft Graph denied app-only sending as {self.settings['mail.sender']} "
                    f"({said}); grant the app the Mail.Send application permission with admin "
                    "consent, and check the application access policy covers that mailbox."
                )
            raise AuthError(
                f"Microsoft Graph denied sending for {env.account} ({said}); an administrator "
                "must grant the app the Mail.Send permission (with admin consent), then "
                f"run `{oauth.signin_command(env.account)}`."
            )
        return Outcome(
            env.id, error=PermanentFailure(f"Microsoft Graph refused the message ({said}).")
        )
