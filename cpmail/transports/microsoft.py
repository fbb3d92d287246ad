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

from cpmail.errors import AuthError, ConfigError, PermanentFailure, TemporaryFailure
from cpmail.oauth.microsoft import (
    MICROSOFT_APP_SECRET,
    MicrosoftAppSession,
    MicrosoftSession,
    check_app_tenant,
)
from cpmail.oauth.tokens import check_signed_in, signin_command
from cpmail.secrets import SHARED
from cpmail.transports.api import ApiTransport, Poster, Refusal
from cpmail.transports.base import Envelope, Report

#: Graph error codes that mean the account or app may not send at all (not this message).
ACCESS_CODES = frozenset({"ErrorAccessDenied", "Authorization_RequestDenied", "AccessDenied"})
# Refusals of the sending mailbox itself (not of one message): it may not send as that
# address, has no Exchange Online mailbox (or none Graph may use), or is no user at all.
# Every message from it would be refused alike: the account's mail waits (exit 3).
SENDER_CODES = frozenset(
    {
        "ErrorSendAsDenied",
        "MailboxNotEnabledForRESTAPI",
        "ErrorMailboxNotEnabledForRESTAPI",
        "ErrorInvalidUser",
        "MailboxNotFound",
    }
)

GraphSession = MicrosoftSession | MicrosoftAppSession


class MicrosoftTransport(ApiTransport[GraphSession]):
    """Microsoft Graph with per-account msal token caches, refreshed silently."""

    name = "microsoft"
    max_message_bytes = 3 * 1024 * 1024
    brand = "Microsoft Graph"
    service = "Microsoft Graph"
    too_big = (
        "the message is {}; Microsoft Graph accepts at most {} in one message. "
        "Make the attachment smaller or send it through SMTP."
    )

    def check_account(self, account: str) -> None:
        if account == SHARED and self.secrets.has(MICROSOFT_APP_SECRET):
            if not self.settings["mail.sender"]:
                raise ConfigError(
                    "app-only sending needs the shared sender's address; "
                    "run `cpmail config one-account --sender ADDRESS`."
                )
            check_app_tenant(self.settings["mail.microsoft.tenant"])  # (before any is queued)
            return
        check_signed_in(self.secrets, "microsoft", account)

    #: msal's discovery answers, shared by the accounts of one delivery.
    _http_cache: dict[str, Any]

    def deliver(self, envelopes: Iterable[Envelope], report: Report) -> None:
        """Send each envelope as its account; report each outcome as soon as it is known."""
        self._http_cache = {}
        super().deliver(envelopes, report)

    def _renew_advice(self, account: str) -> str:
        if account == SHARED and self.secrets.has(MICROSOFT_APP_SECRET):
            # App-only: no person signs in; the app's secret or its permission is at fault.
            return (
                "check that the app has the Mail.Send application permission with admin "
                "consent, and its secret (`cpmail config microsoft … --client-secret`)"
            )
        return super()._renew_advice(account)

    def _session(self, account: str) -> GraphSession:
        stored = self.secrets.get(MICROSOFT_APP_SECRET) if account == SHARED else None
        secret = stored.reveal() if stored else None
        if secret:
            return MicrosoftAppSession(self.settings, secret, self._http_cache)
        return MicrosoftSession(self.settings, self.secrets, account, self._http_cache)

    def _post(
        self, http: Poster, base: str, session: GraphSession, token: str, raw: bytes
    ) -> httpx.Response:
        if isinstance(session, MicrosoftAppSession):
            sender = self.settings["mail.sender"]
            url = f"{base}/v1.0/users/{urllib.parse.quote(sender, safe='@')}/sendMail"
        else:
            url = f"{base}/v1.0/me/sendMail"
        body = base64.b64encode(raw)
        return http.post(
            url,
            size=len(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
            content=body,
        )

    def _failure(
        self, env: Envelope, session: GraphSession, refusal: Refusal
    ) -> TemporaryFailure | PermanentFailure:
        said = refusal.said(with_code=True)
        if failure := self._temporary(refusal, said, refusal.retry_after):
            return failure
        if refusal.status == 403 and refusal.code in ACCESS_CODES:
            if isinstance(session, MicrosoftAppSession):
                raise AuthError(
                    f"Microsoft Graph denied app-only sending as {self.settings['mail.sender']} "
                    f"({said}); grant the app the Mail.Send application permission with admin "
                    "consent, and check the application access policy covers that mailbox."
                )
            raise AuthError(
                f"Microsoft Graph denied sending for {env.account} ({said}); an administrator "
                "must grant the app the Mail.Send permission (with admin consent), then "
                f"run `{signin_command(env.account)}`."
            )
        if refusal.code in SENDER_CODES:
            who = (
                self.settings["mail.sender"]
                if isinstance(session, MicrosoftAppSession)
                else f"{env.account}'s account"
            )
            raise AuthError(
                f"Microsoft Graph refused to send from {who} ({said}); check that it has an "
                "Exchange Online mailbox (a licence) and may send as the address it sends from."
            )
        return self._refused(said)
