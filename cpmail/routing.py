"""Recipient rules -> people and addresses.

Rules (SPEC §5): ``staff``, ``supervisor``, ``assignee``, ``entered-by``,
``team`` (the client's team members whose ``events`` include the event),
``team:ROLE``, ``staff:ID``, ``email:ADDRESS``, and ``listed`` (the entry's
own notify/attendees cell, whose items are staff IDs, staff names or rules).

A recipient with no address, inactive, who opted out of the event, or whose
stored address is not one valid address (``bad address (JD)``, naming the
staff ID) is skipped and counted, never an error: everyone else still gets
their mail. Addresses are deduplicated.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cpmail.addresses import mailbox_key, normal_address, valid_address
from cpmail.errors import InputError
from cpmail.settings import PERSON_RULES, Settings, is_rule
from cpmail.store.schema import client_team, staff, staff_opt_out
from cpmail.triggers import DEFAULT_RULES, Notification, split_cell

SKIP_NO_ADDRESS = "no address"
SKIP_INACTIVE = "inactive"
SKIP_OPTED_OUT = "opted out"
SKIP_BAD_ADDRESS = "bad address"
SKIP_AMBIGUOUS = "a name several staff have"
SKIP_NO_CLIENT = "a team rule on an entry of no client"


def bad_address(who: str) -> str:
    """The skip reason for a recipient whose stored address does not validate."""
    return f"{SKIP_BAD_ADDRESS} ({who})"


@dataclass(frozen=True)
class Person:
    """Someone a message goes to."""

    address: str
    name: str
    staff_id: str | None = None


@dataclass
class Routed:
    people: list[Person]
    skipped: Counter[str]


class Directory:
    """Staff, opt-outs and client teams, read once per run."""

    def __init__(self, conn: sa.Connection | None) -> None:
        """Read from ``conn``; with None, a directory of nobody (a run with nothing to route)."""

        def rows(table: sa.Table) -> Iterable[Any]:
            return conn.execute(sa.select(table)) if conn is not None else ()

        self.staff: dict[str, Any] = {r.id: r for r in rows(staff)}
        # A name in a notify or attendees cell means one person: a name several staff
        # have means nobody (None), never whichever row was read last.
        self.by_name: dict[str, str | None] = {}
        for r in self.staff.values():
            name = _name_key(r.name or "")
            if name:
                self.by_name[name] = None if name in self.by_name else r.id
        # The staff member whose mailbox an address is (None when several share it): mail
        # to an `email:` address of theirs is theirs, in their digest.
        self.by_mailbox: dict[str, str | None] = {}
        for r in self.staff.values():
            if r.active and valid_address(r.work_email or ""):
                key = mailbox_key(r.work_email)
                self.by_mailbox[key] = None if key in self.by_mailbox else r.id
        # An inactive staff member's mailbox that no active one has: mail there is theirs,
        # and an inactive person is never a recipient.
        for r in self.staff.values():
            if not r.active and valid_address(r.work_email or ""):
                self.by_mailbox.setdefault(mailbox_key(r.work_email), r.id)
        self.opted_out = {(r.staff_id, r.event) for r in rows(staff_opt_out)}
        self.teams: dict[str, list[tuple[str, str, frozenset[str] | None]]] = {}
        for r in rows(client_team):
            events = frozenset(split_cell(r.events)) or None
            self.teams.setdefault(r.client_id, []).append((r.staff_id, r.role or "", events))

    def rules_for(self, n: Notification, settings: Settings) -> tuple[str, ...]:
        # A rule on the thing itself (a status code's notify list) is more specific than
        # the event's setting, which is more specific than the built-in default.
        if n.rules or n.unreachable is not None:
            return n.rules or ()
        configured = settings.event_notify(n.event)
        return tuple(configured) if configured else DEFAULT_RULES[n.event]

    def route(self, n: Notification, rules: tuple[str, ...]) -> Routed:
        if n.unreachable is not None:
            return Routed([], Counter({n.unreachable: 1}))
        staff_ids: list[str] = []
        outside: list[str] = []
        skipped: Counter[str] = Counter()
        for rule in rules:
            self._expand(n, rule, staff_ids, outside, skipped, depth=0)
        # An address that is a staff member's own mailbox, however written, is that person:
        # their mute and their leaving count as for anyone named as staff (and once).
        rest: list[str] = []
        for addr in outside:
            own = self.by_mailbox.get(mailbox_key(addr)) if valid_address(addr) else None
            if own is not None:
                staff_ids.append(own)
            else:
                rest.append(addr)
        people: list[Person] = []
        seen: set[str] = set()
        for sid in dict.fromkeys(staff_ids):  # keeps order, drops repeats
            row = self.staff.get(sid)
            if row is None:
                skipped[SKIP_NO_ADDRESS] += 1
            elif not row.active:
                skipped[SKIP_INACTIVE] += 1
            elif (sid, n.event) in self.opted_out:
                skipped[SKIP_OPTED_OUT] += 1
            elif not (row.work_email or "").strip():
                skipped[SKIP_NO_ADDRESS] += 1
            elif not valid_address(row.work_email):
                skipped[bad_address(sid)] += 1
            elif mailbox_key(row.work_email) not in seen:  # one mailbox, however written
                seen.add(mailbox_key(row.work_email))
                people.append(Person(normal_address(row.work_email), row.name or "", sid))
        for addr in rest:
            if not valid_address(addr):
                skipped[bad_address(repr(addr.strip()[:40]))] += 1
            elif mailbox_key(addr) not in seen:
                seen.add(mailbox_key(addr))
                people.append(Person(normal_address(addr), ""))
        return Routed(people, skipped)

    def _expand(
        self,
        n: Notification,
        rule: str,
        staff_ids: list[str],
        outside: list[str],
        skipped: Counter[str],
        depth: int,
    ) -> None:
        if rule in PERSON_RULES:
            if rule == "supervisor":
                concerned = n.people.get("staff")
                row = self.staff.get(concerned) if concerned else None
                sid = n.people.get("supervisor") or (row.supervisor_id if row else None)
            else:
                sid = n.people.get(rule)
            if sid:
                staff_ids.append(sid)
            elif rule in ("staff", "assignee"):  # nobody is assigned: count it, don't fail
                skipped[SKIP_NO_ADDRESS] += 1
        elif rule == "team" or rule.startswith("team:"):
            if not n.client_id:  # (a Homebase or vendor entry): no client, so no team
                skipped[SKIP_NO_CLIENT] += 1
                return
            role = rule[5:].lower() if rule.startswith("team:") else None
            for sid, member_role, events in self.teams.get(n.client_id, []):
                if role is not None and member_role.lower() != role:
                    continue
                if events is not None and n.event not in events:
                    continue
                staff_ids.append(sid)
        elif rule.startswith("staff:"):
            staff_ids.append(rule[6:])
        elif rule.startswith("email:"):
            outside.append(rule[6:])
        elif rule == "listed" and depth == 0:
            for entry in n.listed:
                self._expand_listed(n, entry, staff_ids, outside, skipped)

    def _expand_listed(
        self,
        n: Notification,
        entry: str,
        staff_ids: list[str],
        outside: list[str],
        skipped: Counter[str],
    ) -> None:
        name = _name_key(entry)
        if entry in self.staff:
            staff_ids.append(entry)
        elif name in self.by_name:
            sid = self.by_name[name]
            if sid is None:
                skipped[SKIP_AMBIGUOUS] += 1
            else:
                staff_ids.append(sid)
        elif is_rule(entry) and entry != "listed" and not entry.startswith("email:"):
            self._expand(n, entry, staff_ids, outside, skipped, depth=1)
        else:
            # Not a staff member (an outside address from data is never followed:
            # only the settings can name one).
            skipped[SKIP_NO_ADDRESS] += 1


def _name_key(name: str) -> str:
    """A name as a notify or attendees cell and the staff table are matched: trimmed, in
    lower case, and in Unicode's composed form (a name typed on a Mac comes decomposed)."""
    return unicodedata.normalize("NFC", name.strip()).lower()


def named_staff(key: str, value: Any) -> list[str]:
    """The staff IDs a setting's value names (``user.staff``, ``staff:ID`` rules …)."""
    if key == "user.staff":
        return [value] if value else []
    if key == "reports.cash-flow.to":
        return list(value)
    if key.startswith("events.") and key.endswith(".notify"):
        return [rule[6:] for rule in value if rule.startswith("staff:")]
    return []


def unknown_named_staff(conn: sa.Connection, settings: Mapping[str, Any]) -> dict[str, str]:
    """Each setting of ``settings`` that names a staff member who is not in the staff
    table, with the first such ID: mail meant for them would reach nobody."""
    named = {key: ids for key, value in settings.items() if (ids := named_staff(key, value))}
    if not named:
        return {}
    every = sorted({i for ids in named.values() for i in ids})
    known = set(conn.scalars(sa.select(staff.c.id).where(staff.c.id.in_(every))))
    return {
        key: missing[0]
        for key, ids in named.items()
        if (missing := [i for i in ids if i not in known])
    }


def check_named_staff(conn: sa.Connection, settings: Mapping[str, Any]) -> None:
    """InputError naming the first setting that names a staff member who is not in the
    staff table (``unknown_named_staff``)."""
    for key, staff_id in unknown_named_staff(conn, settings).items():
        raise InputError(
            f"{key}: there is no staff member {staff_id!r}; see `cpmail staff list`, "
            f"or add them first with `cpmail staff add {staff_id} --name NAME "
            "--work-email ADDRESS`."
        )
