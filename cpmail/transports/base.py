"""The one contract every transport keeps: send many messages, report each outcome.

A transport receives ``Envelope`` objects (the exact bytes to send and who to
send them to) and calls ``report`` once for every envelope with an
``Outcome``. It never queries agency data and never touches the outbox: the
outbox decides what a temporary or permanent failure means.

To stop the whole run (the server refused to authenticate, or cannot be
reached at all) a transport raises ``AuthError`` or ``Unreachable``; envelopes
not yet reported stay in the outbox for the next run.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from cpmail.errors import ConfigError, PermanentFailure, TemporaryFailure

if TYPE_CHECKING:
    from cpmail.secrets import SecretStore
    from cpmail.settings import Settings


# Upload speed assumed when giving a server time to answer a large message: the
# time for an answer starts once everything is buffered, so a slow link would
# otherwise turn a 20 MB attachment into a false timeout.
UPLOAD_BYTES_PER_SECOND = 100_000


@dataclass(frozen=True)
class Envelope:
    """One message to send: ``raw`` is the RFC 5322 message, byte for byte."""

    id: int
    account: str  # whose credentials: a staff ID, SHARED, or "" for none
    mail_from: str
    rcpt_to: tuple[str, ...]
    raw: bytes


@dataclass
class Outcome:
    """What became of one envelope.

    ``error`` set: the whole message failed (``TemporaryFailure`` -> try again,
    ``PermanentFailure`` -> failed for good). Otherwise the server accepted the
    message for ``accepted``; ``deferred`` and ``refused`` map recipients it
    did not accept (for now / for good) to the server's words.
    """

    id: int
    accepted: tuple[str, ...] = ()
    deferred: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    error: TemporaryFailure | PermanentFailure | None = None
    # decided before anything went to the server (too big, an address it cannot take):
    # no answer of the server's, so it says nothing of whether the server still answers
    local: bool = False
    # the whole message went to the server for the recipients in ``deferred`` and no
    # answer said what became of it: they may have it already
    unsure: bool = False

    @property
    def maybe_sent(self) -> bool:
        """Whether the server may have the message for someone it is sent to again."""
        return self.unsure or bool(self.error is not None and self.error.maybe_sent)

    @property
    def retry_after(self) -> float | None:
        return self.error.retry_after if isinstance(self.error, TemporaryFailure) else None


Report = Callable[[Outcome], None]


class Transport(abc.ABC):
    """Base of every transport."""

    name: ClassVar[str]
    #: Largest message the transport can send (bytes). Checked before queueing.
    max_message_bytes: int = 35 * 1024 * 1024

    def __init__(self, settings: Settings, secrets: SecretStore) -> None:
        self.settings = settings
        self.secrets = secrets

    def size_limit(self) -> int:
        """The largest message the server takes now, asked before a digest is composed
        to fit it: ``max_message_bytes`` unless the server says less."""
        return self.max_message_bytes

    @abc.abstractmethod
    def deliver(self, envelopes: Iterable[Envelope], report: Report) -> None:
        """Send every envelope and call ``report`` once for each, as soon as it is known."""

    def check_account(self, account: str) -> None:
        """Raise ConfigError when ``account`` cannot send (no sign-in, say)."""
        return None


def get_transport(settings: Settings, secrets: SecretStore) -> Transport:
    """Return the configured transport; its library is imported only now."""
    return transport_class(settings)(settings, secrets)


def transport_class(settings: Settings) -> type[Transport]:
    """The configured transport's class (what it takes, ``max_message_bytes``, without
    opening it: a dry run plans as a real run does)."""
    name = settings["mail.transport"]
    import importlib

    modules = {
        "file": ("cpmail.transports.file", "FileTransport"),
        "smtp": ("cpmail.transports.smtp", "SMTPTransport"),
        "gmail": ("cpmail.transports.gmail", "GmailTransport"),
        "microsoft": ("cpmail.transports.microsoft", "MicrosoftTransport"),
    }
    if name not in modules:  # settings validation makes this impossible
        raise ConfigError(f"mail.transport: unknown transport {name!r}.")
    module, cls_name = modules[name]
    cls: type[Transport] = getattr(importlib.import_module(module), cls_name)
    return cls
