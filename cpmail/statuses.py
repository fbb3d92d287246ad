"""The states of a message in the outbox and the log (``messages.status``)."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a message is. It compares equal to the text stored in the database."""

    QUEUED = "queued"  # waits for a run to send it
    SENDING = "sending"  # claimed by a run that is sending it now
    DEFERRED = "deferred"  # tried; tried again at next_attempt_at
    SENT = "sent"  # the server accepted it
    FAILED = "failed"  # refused for good, or too many tries
    SUPPRESSED = "suppressed"  # recorded while sending was off; never sent
    DROPPED = "dropped"  # taken out of the outbox by hand, or too late to matter


OPEN = (Status.QUEUED, Status.SENDING, Status.DEFERRED, Status.FAILED)  # `cpmail outbox` lists
WAITING = (Status.QUEUED, Status.DEFERRED)  # not sent yet, not being sent
UNDELIVERED = (Status.DEFERRED, Status.FAILED)  # what makes a command exit 1
