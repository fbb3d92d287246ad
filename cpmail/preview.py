"""`templates preview`: one event's message rendered with the demo agency's data.

The demo agency is loaded into a home of its own, made for the preview and
removed after it, so the agency's data and outbox are never touched (its
settings are its own: a ``CPMAIL_DATABASE_URL`` naming the agency's database
is not read there); the
message is rendered with the templates of the home that asks, and with its
subject prefix and holidays.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from cpmail import demo
from cpmail.check import FAILURE_SUMMARY, Planned, preview_failure_summary, run_check
from cpmail.errors import InputError
from cpmail.events import SCHEDULED, check_names
from cpmail.secrets import SecretStore
from cpmail.settings import WEEKDAY_NAMES, Settings, StrKey
from cpmail.store import make_engine, upgrade

# Who gets the scheduled cash-flow report in its preview: a demo staff member with access.
_CASH_FLOW_TO = "KM"
CASH_FLOW = "cash-flow"

# What the preview keeps of the settings of the home that asks.
_KEPT: tuple[StrKey, ...] = ("mail.subject_prefix", "check.holidays")


def preview(
    settings: Settings, home: Path, event: str, *, demo_settings: Mapping[StrKey, str]
) -> Planned:
    """The message ``event`` (an event's name, ``cash-flow``, or ``digest``) makes from the
    demo data.

    ``home`` holds the templates to render with; ``demo_settings`` are the
    demo agency's own (its name, its manager).
    """
    if event not in ("digest", FAILURE_SUMMARY):
        check_names([event], also=SCHEDULED)
    with tempfile.TemporaryDirectory(prefix="cpmail-preview-") as tmp:
        where = Path(tmp)
        s = Settings.load(where, environment=False)
        for key, value in demo_settings.items():
            s.set(key, value)
        for key in _KEPT:
            s.set(key, settings[key])
        if event == "digest":
            s.set("mail.digest", True)
        if event == CASH_FLOW:  # sent on its days to the staff named: the example date, KM
            s.set("reports.cash-flow.days", WEEKDAY_NAMES[demo.EXAMPLE_DATE.weekday()])
            s.set("reports.cash-flow.to", _CASH_FLOW_TO)
        s.save()
        s = Settings.load(where, environment=False)
        if event == FAILURE_SUMMARY:  # not an event: the summary of failed mail, to the manager
            return preview_failure_summary(s, home, demo.EXAMPLE_DATE)
        engine = make_engine(s.db_url)
        upgrade(engine)
        demo.load(engine, s, demo.EXAMPLE_DATE)
        result = run_check(
            engine,
            s,
            SecretStore(where),
            home,
            date=demo.EXAMPLE_DATE,
            only=() if event == "digest" else (event,),
            dry_run=True,
        )
        engine.dispose()
    planned = [p for p in result.planned if p.event == event]
    if not planned:
        raise InputError(f"the demo data has no {event} message to preview.")
    return planned[0]
