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

import httpx

from cpmail.errors import TOMORROW, AuthError, PermanentFailure, TemporaryFailure
from cpmail.oauth.google import GoogleSession
from cpmail.oauth.tokens import check_signed_in, signin_command
from cpmail.transports.api import ApiTransport, Poster, Refusal, wait_until
from cpmail.transports.base import Envelope

#: Above this, the message goes through the upload endpoint instead of JSON.
SIMPLE_LIMIT = 5 * 1024 * 1024
RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
DAILY_REASONS = frozenset({"dailyLimitExceeded", "quotaExceeded"})
SCOPE_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})
DISABLED_REASONS = frozenset({"accessNotConfigured", "SERVICE_DISABLED"})
QUOTA_TIMEZONE = "America/Los_Angeles"  # Google's daily quotas restart at midnight Pacific
_RETRY_AT = re.compile(r"Retry after (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)")


class GmailTransport(ApiTransport[GoogleSession]):
    """Gmail API (scope gmail.send) with per-account OAuth tokens refreshed silently."""

    name = "gmail"
    max_message_bytes = 35 * 1024 * 1024
    brand = "Gmail"
    service = "the Gmail API"
    too_big = "the message is {}; Gmail accepts at most {}."

    def check_account(self, account: str) -> None:
        check_signed_in(self.secrets, "gmail", account)

    def _session(self, account: str) -> GoogleSession:
        return GoogleSession(self.settings, self.secrets, account)

    def _post(
        self, http: Poster, base: str, session: GoogleSession, token: str, raw: bytes
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if len(raw) > SIMPLE_LIMIT:
            return http.post(
                f"{base}/upload/gmail/v1/users/me/messages/send",
                size=len(raw),
                params={"uploadType": "media"},
                headers={**headers, "Content-Type": "message/rfc822"},
                content=raw,
            )
        encoded = base64.urlsafe_b64encode(raw).decode("ascii")
        return http.post(
            f"{base}/gmail/v1/users/me/messages/send",
            size=len(encoded),
            headers=headers,
            json={"raw": encoded},
        )

    def _failure(
        self, env: Envelope, session: GoogleSession, refusal: Refusal
    ) -> TemporaryFailure | PermanentFailure:
        status, reasons = refusal.status, refusal.reasons
        said = refusal.said(with_code=False)
        wait = refusal.retry_after or _retry_at(refusal.message)
        if DAILY_REASONS.intersection(reasons):
            return TemporaryFailure(
                f"Gmail's daily sending limit is reached ({said}){TOMORROW}.",
                retry_after=seconds_until_midnight(QUOTA_TIMEZONE),
            )
        rate_limited = status == 403 and bool(RATE_REASONS.intersection(reasons))
        if failure := self._temporary(refusal, said, wait, rate_limited=rate_limited):
            return failure
        if status == 403 and SCOPE_REASONS.intersection(reasons):
            raise AuthError(
                f"the Google sign-in of {env.account} does not allow sending mail ({said}); "
                f"run `{signin_command(env.account)}` and allow 'Send email on your behalf'."
            )
        if status == 403 and DISABLED_REASONS.intersection(reasons):
            raise AuthError(
                "the Gmail API is not enabled in the Google Cloud project of the OAuth client "
                f"({said}); enable it under APIs & Services → Library → Gmail API."
            )
        return self._refused(said)


def _retry_at(message: str) -> float | None:
    """Seconds until the 'Retry after <time>' that Gmail puts in some rate-limit messages
    (at most a day; None for a time that cannot be read)."""
    match = _RETRY_AT.search(message)
    if not match:
        return None
    try:  # (a time that is no time, 2026-13-45, says nothing usable)
        when = dt.datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    except ValueError:
        return None
    return wait_until(when)  # at most a day, as a Retry-After header


def seconds_until_midnight(tz_name: str) -> float:
    """Seconds from now until the next midnight in ``tz_name`` (real seconds: on a day the
    clocks change, not what the wall clock says)."""
    import zoneinfo

    from cpmail.pace import next_day_start

    now = dt.datetime.now(dt.UTC)
    midnight = next_day_start(zoneinfo.ZoneInfo(tz_name), now).replace(tzinfo=dt.UTC)
    return max(60.0, (midnight - now).total_seconds())
