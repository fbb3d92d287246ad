"""Send now through the outbox: one-off messages (tests, reports, messages) and retried ones."""

from __future__ import annotations

import platform
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage

import sqlalchemy as sa

from cpmail import __version__, interrupt
from cpmail.addresses import check_address
from cpmail.compose import Draft, Mailbox, build_message, subject_line
from cpmail.errors import (
    MAIL_STAYS,
    ConfigError,
    CpmailError,
    InputError,
    NotDelivered,
    TransportError,
    settled,
)
from cpmail.outbox import (
    ONCE,
    Delivery,
    deliver,
    give_up,
    lease,
    new_run_id,
    queue_many,
    ready_of,
)
from cpmail.outbox import retry as requeue
from cpmail.people import resolve_sender
from cpmail.secrets import SecretStore
from cpmail.settings import Settings
from cpmail.sizes import size_pair
from cpmail.statuses import Status
from cpmail.transports.base import get_transport


def send_now(
    engine: sa.Engine,
    settings: Settings,
    secrets: SecretStore,
    drafts: Sequence[Draft],
    *,
    once: bool = False,
) -> tuple[list[int], Delivery]:
    """Queue ``drafts`` in one transaction, then deliver exactly those; return ids and outcome.

    They are one-off messages, with no ledger key. Nothing is queued when the
    master switch is off or an account cannot send.
    With ``once`` (test messages) what was not sent now fails for good: it is
    never sent later by another run.
    """
    if not settings["mail.enabled"]:
        raise ConfigError(
            "mail is switched off ([mail] enabled = false), so nothing was sent; "
            "run `cpmail config enable` first."
        )
    transport = get_transport(settings, secrets)
    for account in sorted({d.account for d in drafts}):
        transport.check_account(account)
    run_id = new_run_id()
    command = "test" if once else "send"
    # Queued already claimed by this run, inside its lease: no other run (a check
    # started meanwhile) can take them up and send them under it. From the queueing
    # on, a signal only asks the run to stop (as while delivering): stopped there,
    # a message queued (its COMMIT under way) would wait in the outbox, and go with
    # the next run, unsaid; so the delivery that follows says what became of it.
    with lease(engine, settings, run_id, command), interrupt.graceful():
        with engine.begin() as conn:
            ids = queue_many(
                conn,
                drafts,
                run_id=run_id,
                ledger_keys=[None] * len(drafts),
                max_bytes=transport.max_message_bytes,
                claimed=True,
            )
        ready = ready_of(ids, drafts)
        if not once:
            return ids, deliver(engine, transport, settings, run_id=run_id, ids=ids, ready=ready)
        try:
            result = deliver(
                engine, transport, settings, run_id=run_id, ids=ids, ready=ready, command=command
            )
        finally:
            give_up(engine, ids, "a test message is sent at once or not at all", run_id=run_id)
    if result.stopped is not None:  # (its words may say the mail stays queued: it does not)
        result.stopped = _not_kept(result.stopped)
    for i in ids:
        if result.status.get(i, Status.DEFERRED) != Status.SENT:
            result.status[i] = Status.FAILED
            if result.waiting:  # held for the send window: failed too, never sent later
                result.errors[i] = (
                    "the send window ([mail] send_window) is closed, and a test message is "
                    "sent at once or not at all"
                )
    result.waiting = 0
    return ids, result


def _not_kept(error: TransportError) -> TransportError:
    """``error`` as said of a test message, which is not kept to be sent later."""
    text = str(error)
    if not text.endswith(MAIL_STAYS):
        return error
    said = text.removesuffix(MAIL_STAYS).rstrip()
    return type(error)(
        f"{said} The test message was not sent: a test message is sent at once or not at all.",
        retry_after=error.retry_after,
        maybe_sent=error.maybe_sent,
    )


def send_message(
    engine: sa.Engine,
    settings: Settings,
    secrets: SecretStore,
    msg: EmailMessage,
    *,
    event: str,
    account: str,
    envelope_from: str,
    what: str,
    once: bool = False,
    attachment: str | None = None,
) -> tuple[Draft, Delivery]:
    """Send one built message now; raise the error the command should end with, if any.

    The one sequence behind `staff test`, `config test`, `message` and
    `send-report`: draft, queue, deliver, say what became of it. With ``once``
    (test messages) what is not sent now is never sent later. ``attachment``
    names the file the message carries: a message larger than the transport
    takes is refused naming it, before anything is queued.
    """
    draft = Draft.from_message(
        msg, event=event, key=None, account=account, envelope_from=envelope_from
    )
    if attachment is not None:
        _check_size(draft, settings, secrets, attachment)
    _, result = send_now(engine, settings, secrets, [draft], once=once)
    err = delivery_error(result, what=what)
    if err is not None:
        raise err
    return draft, result


def _check_size(draft: Draft, settings: Settings, secrets: SecretStore, attachment: str) -> None:
    limit = get_transport(settings, secrets).max_message_bytes
    if len(draft.raw) > limit:
        shown, most = size_pair(len(draft.raw), limit)
        raise InputError(
            f"{attachment} makes a message of {shown}; the "
            f"{settings['mail.transport']} transport takes at most {most}."
        )


@dataclass(frozen=True)
class Retried:
    """What `outbox retry` did: how many messages went back in the queue, and their delivery."""

    queued: int
    delivery: Delivery | None  # None when none was queued or mail is switched off
    left: dict[int, str]  # ids asked for that were not queued again, and why

    @property
    def error(self) -> CpmailError | None:
        """The error the command should end with (None when all went out)."""
        return None if self.delivery is None else delivery_error(self.delivery, what="some mail")


def retry(
    engine: sa.Engine,
    settings: Settings,
    secrets: SecretStore,
    ids: Sequence[int] | None,
    *,
    queued: Callable[[int], None] = lambda n: None,
) -> Retried:
    """Queue failed or deferred messages again (``ids``, or all when None) and send them now,
    with those of them queued already (by a retry while sending was off, say).

    ``queued`` hears how many went back in the queue before sending starts.
    With mail switched off they wait in the outbox.
    """
    delivery = None
    with interrupt.graceful():  # (from the queueing on: see send_now)
        n, left = requeue(engine, ids)
        _stop_if_asked(n)
        queued(n)
        if settings["mail.enabled"] and (n or _queued(engine, ids)):
            transport = get_transport(settings, secrets)
            delivery = deliver(engine, transport, settings, run_id=new_run_id(), ids=ids)
    if delivery is None:
        _stop_if_asked(n)
    return Retried(n, delivery, left)


def _stop_if_asked(n: int) -> None:
    """Stop the command if a signal asked it to, saying that ``n`` messages were queued
    again (and nothing sent)."""
    signum = interrupt.requested()
    if signum is not None:
        raise interrupt.Stopped(
            signum,
            f"{n} message(s) queued again, not sent: they wait in the outbox for the next "
            "run (see `cpmail outbox`)",
        )


def _queued(engine: sa.Engine, ids: Sequence[int] | None) -> bool:
    """Whether any of ``ids`` (any message, when None) waits in the queue untried."""
    from cpmail.store.schema import messages

    m = messages.c
    q = sa.select(m.id).where(m.status == Status.QUEUED, m.attempts == 0).limit(1)
    if ids is not None:
        q = q.where(m.id.in_(list(ids)))
    with engine.connect() as conn:
        return conn.execute(q).first() is not None


def send_test_message(
    engine: sa.Engine,
    settings: Settings,
    secrets: SecretStore,
    *,
    as_staff: str | None,
    to: str | None,
    to_name: str = "",
) -> tuple[str, str]:
    """Send one test message from the account cpmail would use; return its sender and recipient.

    It goes to ``to``, else to the sender itself, now or never.
    """
    sender = resolve_sender(settings, engine, as_staff)
    rcpt = check_address(to, where="--to") if to else sender.address
    text = (
        f"This is a test message from cpmail {__version__} on {socket.gethostname()}.\n\n"
        f"Transport: {settings['mail.transport']}\n"
        f"Sent from: {sender.address} (account {sender.account or '-'})\n"
        f"Python {platform.python_version()} on {platform.system()}\n\n"
        "If you can read this, mail from cpmail reaches you.\n"
    )
    msg = build_message(
        sender=Mailbox(sender.address, sender.name),
        to=[Mailbox(rcpt, to_name)],
        subject=subject_line(settings, "Test message from cpmail"),
        text=text,
        event=ONCE,
        key=f"test:{new_run_id()}",
    )
    send_message(
        engine,
        settings,
        secrets,
        msg,
        event=ONCE,
        account=sender.account,
        envelope_from=sender.address,
        what=f"the test message to {rcpt}",
        once=True,
    )
    return sender.address, rcpt


def delivery_error(result: Delivery, *, what: str = "the message") -> CpmailError | None:
    """The error a command should end with after ``result`` (None when all went out).

    A signal that stopped the pass ends the command as it ends `check`
    (``interrupt.Stopped``, raised here), whatever went out before it.
    """
    signum = interrupt.requested()
    if signum is not None:
        sent = result.count(Status.SENT)
        raise interrupt.Stopped(
            signum,
            f"{sent} message(s) sent and recorded, {len(result.status) - sent} not sent "
            "(see `cpmail outbox`)",
        )
    if result.stopped is not None:
        return result.stopped
    if result.waiting:
        return NotDelivered(
            f"{what} waits in the outbox until the send window ([mail] send_window) opens."
        )
    unsent = [i for i, s in result.status.items() if s == Status.QUEUED]
    if unsent:  # put back untried: the run's claim lapsed, or it ended early
        note = "; ".join(result.notes) or result.errors.get(unsent[0], "not sent")
        return NotDelivered(
            f"{what} was not sent ({note}); it waits in the outbox for the next run."
        )
    failed = [i for i, s in result.status.items() if s == Status.FAILED]
    deferred = [i for i, s in result.status.items() if s == Status.DEFERRED]
    if failed:
        i = failed[0]
        why = _why(result.errors.get(i, "refused"))
        if i in result.unsure:  # a test message, given up: it is not sent again
            return NotDelivered(
                f"{what} went to the server, which did not say it took it ({why}); it may "
                "have arrived, and it is not sent again."
            )
        return NotDelivered(f"{what} failed: {why}; see `cpmail log --status failed`.")
    if deferred:
        i = deferred[0]
        why = _why(result.errors.get(i, "temporary failure"))
        if i in result.held:  # never offered to the server (an account's daily limit)
            return NotDelivered(f"{what} was not sent yet ({why}); it waits in the outbox.")
        if i in result.unsure:
            # Saying "not accepted" would be untrue, and sending it again by hand
            # would be one copy more.
            return NotDelivered(
                f"{what} went to the server, which did not say it took it ({why}); it may "
                "have arrived, and it stays in the outbox for the next `cpmail check` to "
                "send again: do not send it again yourself."
            )
        if i in result.partly:  # some have it: "not accepted" would be untrue of them
            return NotDelivered(
                f"{what} reached some of its recipients, not all ({why}); it stays in the "
                "outbox for the others: the next `cpmail check` tries again for those the "
                "server said to try later, and `cpmail outbox retry` for every one not reached."
            )
        return NotDelivered(
            f"{what} was not accepted yet ({why}); it stays in the outbox and the next "
            "`cpmail check` tries again (or `cpmail outbox retry`)."
        )
    return None


def _why(error: str) -> str:
    """A recorded error as a clause inside a sentence: without its full stop, and without
    "it will be sent again", which the sentence itself says or denies."""
    return settled(error).rstrip(".")
