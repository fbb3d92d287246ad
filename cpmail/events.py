"""Every event cpmail knows, in one table: its name, who hears of it, how it is found.

Adding an event means a row here, a finder in ``cpmail.triggers`` and a pair
of templates (``templates/email/<event>.txt`` and ``.html``); settings keys,
``--only``/``--skip``, ``staff mute`` and routing follow from the row. This
module is light (no database, no templates): ``cpmail --help`` reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cpmail.errors import InputError


@dataclass(frozen=True)
class Event:
    """One event of SPEC §5."""

    name: str
    rules: tuple[str, ...]  # default recipient rules
    finder: str  # "module:function" in cpmail.triggers
    listed: bool = False  # one list per recipient per run (task reminders)
    state: bool = False  # looks at a task's totals whatever the dates


EVENT_TABLE: tuple[Event, ...] = (
    Event("missing-time", ("staff", "supervisor"), "timecards:missing_time"),
    Event("job-opened", ("team",), "jobs:job_opened"),  # the opening status code's notify wins
    Event("billing-created", ("team",), "billing:billing_created"),
    Event("payment-received", ("team",), "billing:payment_received"),
    Event("status-changed", ("team",), "jobs:status_changed"),  # the new code's notify wins
    Event("task-due-today", ("assignee",), "tasks:due_today", listed=True),
    Event("task-due-tomorrow", ("assignee",), "tasks:due_tomorrow", listed=True),
    Event("task-overdue", ("assignee",), "tasks:overdue", listed=True),
    Event("task-over-budget", ("team:ae",), "tasks:over_budget", state=True),
    Event("budget-alert", ("team:ae", "entered-by"), "tasks:budget_alert"),
    Event("hours-exceeded", ("team:ae", "assignee"), "tasks:hours_exceeded", state=True),
    Event("diary-entry", ("listed",), "entries:diary_entry"),
    Event("homebase-entry", ("listed",), "entries:homebase_entry"),
    Event("change-order", ("team:ae", "team:production"), "jobs:change_order"),
    Event("calendar-reminder", ("listed",), "entries:calendar_reminder"),
)

NAMES: tuple[str, ...] = tuple(e.name for e in EVENT_TABLE)
BY_NAME: dict[str, Event] = {e.name: e for e in EVENT_TABLE}
# What else a message's event can be, besides the events above: the scheduled cash-flow
# report, a digest, the manager's failure summary, and one-off mail (`staff test`,
# `send-report`, `message`). tests/test_settings.py checks each against its module.
OTHER_MAIL: tuple[str, ...] = (
    "cash-flow",
    "digest",
    "failure-summary",
    "test",
    "report",
    "message",
)
DEFAULT_RULES: dict[str, tuple[str, ...]] = {e.name: e.rules for e in EVENT_TABLE}
LIST_EVENTS: frozenset[str] = frozenset(e.name for e in EVENT_TABLE if e.listed)
STATE_EVENTS: frozenset[str] = frozenset(e.name for e in EVENT_TABLE if e.state)


# Reports `check` sends on a schedule, not events of the agency's data: its --only and
# --skip name them as they name events (cpmail.triggers.scheduled finds them).
SCHEDULED: tuple[str, ...] = ("cash-flow",)


def check_names(names: Iterable[str], *, where: str = "", also: tuple[str, ...] = ()) -> list[str]:
    """Return ``names`` as a list, or raise InputError naming the first that is no event
    (nor one of ``also``)."""
    out = list(names)
    known = (*NAMES, *also)
    for name in out:
        if name not in known:
            label = f"{where}: " if where else ""
            raise InputError(f"{label}unknown event {name!r}; the events are: {', '.join(known)}.")
    return out
