"""The error tree. Library code raises these; only the CLI turns them into exit codes.

Exit codes: 2 for usage, configuration and input errors (nothing was sent or
changed), 3 when the transport refused to authenticate or could not be reached,
1 when a command ran but some mail was not delivered. 3 also when the database
or the file system cannot be used (``Unavailable``).
"""

from __future__ import annotations


class CpmailError(Exception):
    """Root of every error cpmail raises on purpose.

    Its words are one sentence: words quoted from elsewhere that end in their
    own full stop (a template error, a server's answer) do not make it end in two.
    """

    exit_code = 2

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (_one_stop(args[0]), *args[1:])
        super().__init__(*args)


def _one_stop(text: str) -> str:
    """``text`` without a doubled full stop at its end ("…line 3: bad.." -> "…line 3: bad.")."""
    while text.endswith(("..", "!.", "?.")) and not text.endswith("..."):
        text = text[:-1]
    return text


class ConfigError(CpmailError):
    """A setting, the settings file or the secrets store is wrong."""


class InputError(CpmailError):
    """A file, row, argument or address given to cpmail is wrong."""


class UsageError(InputError):
    """A mistake in the command line itself (a date, an event, a staff ID): told to whoever
    typed it. `check` records no run for it and sends no alert: it is no state of mail."""


class NotDelivered(CpmailError):
    """The command ran, but some mail is still in the outbox or failed for good."""

    exit_code = 1


#: How a temporary failure's sentence ends: true while the message waits, not once it failed.
RESENT = "; it will be sent again"
#: The same of mail that waits for a service (a sign-in renewed, a token endpoint back).
WAITS = "; the mail waits and is tried again later"
#: ... for an account's pace: the server asked it to slow down, or its day's limit is reached.
SLOWER = "; it is tried again later"
#: (The limit's new day is not always tomorrow: Gmail's begins at Pacific midnight.)
TOMORROW = "; it waits until the daily limit starts again"
#: How a sentence that stops a run or an account ends: what became of the mail (a test
#: message is never kept: `cpmail.sending` says so instead).
MAIL_STAYS = "The mail stays in the outbox."
#: Every such promise: none is true of a message that failed for good or was dropped
#: (the last as rows written by earlier versions say it).
PROMISES = (RESENT, WAITS, SLOWER, TOMORROW, "; it waits for tomorrow")


def settled(error: str) -> str:
    """A recorded error once the message will not be sent again: without a promise that
    it will be (``PROMISES``)."""
    for promise in PROMISES:
        error = error.replace(promise + ".", ".").replace(promise, "")
    return error


class TransportError(CpmailError):
    """Base of delivery errors; ``retry_after`` is in seconds when the server said."""

    exit_code = 3

    def __init__(
        self, message: str, *, retry_after: float | None = None, maybe_sent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # The message was handed over and no answer said what became of it: the
        # server may have it (sent again later, the recipient may get it twice).
        self.maybe_sent = maybe_sent


class TemporaryFailure(TransportError):
    """Try again later: 4xx, a lost connection, a timeout, HTTP 429 or 5xx."""


class NoAnswer(TemporaryFailure):
    """The server did not answer in time; a few in a row end the run (it stopped answering)."""


class PermanentFailure(TransportError):
    """Do not try again: the server refused this message or recipient for good."""


class AuthError(TransportError):
    """The transport refused to sign in; the whole run stops (exit 3)."""


class Unavailable(CpmailError):
    """The database or the file system failed (down, locked, read-only, full, damaged)."""

    exit_code = 3


class Unreachable(TransportError, ConnectionError):
    """The transport could not be reached at all; the whole run stops (exit 3)."""
