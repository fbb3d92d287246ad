"""Send through the Gmail API, as each account signed in with ``cpmail staff signin``.

Messages go out byte for byte: ``messages/send`` with ``{"raw": base64url}``,
or, above ``SIMPLE_LIMIT``, the media upload endpoint with ``message/rfc822``.
Gmail sends to the addresses in the message's To, Cc and Bcc headers; an
envelope recipient the headers do not name is added as Bcc first.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterable

import httpx

from cpmail import oauth
from cpmail.errors import AuthError, PermanentFailure, TemporaryFailure
from cpmail.sizes import size_pair
from cpmail.transports.base import Envelope, Outcome, Report, Transport

#: Above this, the message goes through the upload endpoint instead of JSON.
SIMPLE_LIMIT = 5 * 1024 * 1024
RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
DAILY_REASONS = frozenset({"dailyLimitExceeded", "quotaExceeded"})
SCOPE_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})
DISABLED_REASONS = frozenset({"accessNotConfigured", "SERVICE_DISABLED"})
QUOTA_TIMEZONE = "America/Los_Angeles"  # Google's daily quotas restart at midnight Pacific
SERVICE = "the Gmail API"
_RETRY_AT = re.compile(r"Retry after (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)")


class GmailTransport(Transport):
    """Gmail API (scope gmail.send) with per-account OAuth tokens refreshed silently."""

    name = "gmail"
    max_message_bytes = 35 * 1024 * 1024

    def check_account(self, account: str) -> None:
        oauth.check_signed_in(self.secrets, "gmail", account)

    def deliver(self, envelopes: Iterable[Envelope], report: Report) -> None:
        """Send each envelope as its account; report each outcome as soon as it is known."""
        base = oauth.check_endpoint(
            str(self.settings["mail.gmail.api_base"]), "mail.gmail.api_base"
        )
        sessions: dict[str, oauth.GoogleSession] = {}
        timeout = httpx.Timeout(float(self.settings["mail.gmail.timeout"]), connect=15.0)
        with httpx.Client(timeout=timeout) as http:
            for env in envelopes:
                report(self._send(http, base, env, sessions))

    def _send(
        self,
        http: httpx.Client,
        base: str,
        env: Envelope,
        sessions: dict[str, oauth.GoogleSession],
    ) -> Outcome:
        if len(env.raw) > self.max_message_bytes:
            return Outcome(
                env.id,
                error=PermanentFailure(
                    "the message is {}; Gmail accepts at most {}.".format(
                        *size_pair(len(env.raw), self.max_message_bytes)
                    )
                ),
            )
        session = sessions.get(env.account)
        if session is None:
            session = sessions[env.account] = oauth.GoogleSession(
                self.settings, self.secrets, env.account
            )
        raw = oauth.with_missing_bcc(env.raw, env.rcpt_to)
        try:
            response = self._post(http, base, session.access_token(), raw)
            if response.status_code == 401:  # revoked early or clock skew: renew once
                session.refresh()
                response = self._post(http, base, session.access_token(), raw)
                if response.status_code == 401:
                    raise AuthError(
                        f"Gmail refused the renewed sign-in of {env.account}; "
                        f"run `{oauth.signin_command(env.account)}`."
                    )
        except TemporaryFailure as e:
            return Outcome(env.id, error=e)
        return self._outcome(env, response)

    @staticmethod
    def _post(http: httpx.Client, base: str, token: str, raw: bytes) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if len(raw) > SIMPLE_LIMIT:
            return oauth.api_post(
                http,
                f"{base}/upload/gmail/v1/users/me/messages/send",
                service=SERVICE,
                params={"uploadType": "media"},
                headers={**headers, "Content-Type": "message/rfc822"},
                content=raw,
            )
        return oauth.api_post(
            http,
            f"{base}/gmail/v1/users/me/messages/send",
            service=SERVICE,
            headers=headers,
            json={"raw": base64.urlsafe_b64encode(raw).decode("ascii")},
        )

    def _outcome(self, env: Envelope, response: httpx.Response) -> Outcome:
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(env.id, accepted=env.rcpt_to)
        _, message, reasons = oauth.api_error(response)
        said = f"HTTP {status}: {message}"
        wait = oauth.retry_after(response.headers.get("Retry-After")) or _retry_at(message)
        if DAILY_REASONS.intersection(reasons):
            wait = oauth.seconds_until_midnight(QUOTA_TIMEZONE)
            return Outcome(
                env.id,
                error=TemporaryFailure(
                    f"Gmail's daily sending limit is reached ({said}); trying again tomorrow.",
                    retry_after=wait,
                ),
            )
        if status == 429 or (status == 403 and RATE_REASONS.intersection(reasons)):
            return Outcome(
                env.id,
                error=TemporaryFailure(f"Gmail is limiting the rate ({said}).", retry_after=wait),
            )
        if status >= 500:
            return Outcome(
                env.id,
                error=TemporaryFailure(f"Gmail had a server error ({said}).", retry_after=wait),
            )
        if status == 403 and SCOPE_REASONS.intersection(reasons):
            raise AuthError(
                f"the Google sign-in of {env.account} does not allow sending mail ({said}); "
                f"run `{oauth.signin_command(env.account)}` and allow 'Send email on your behalf'."
            )
        if status == 403 and DISABLED_REASONS.intersection(reasons):
            raise AuthError(
                "the Gmail API is not enabled in the Google Cloud project of the OAuth client "
                f"({said}); enable it under APIs & Services → Library → Gmail API."
            )
        return Outcome(env.id, error=PermanentFailure(f"Gmail refused the message ({said})."))


def _retry_at(message: str) -> float | None:
    """Seconds until the 'Retry after <time>' that Gmail puts in some rate-limit messages."""
    match = _RETRY_AT.search(message)
    if not match:
        return None
    when = dt.datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
