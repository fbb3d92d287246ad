"""The cash-flow report: cash, what clients owe (A/R), what the agency owes (A/P), aged.

Everything is seen as of one date:

- Cash: rows of ``bank_accounts`` with the same name are one account's balance
  at different dates; the latest on or before the as-of date counts (a row
  without a date counts only when the account has no dated row in range).
- A/R: billings created on or before the as-of date, less the payments applied
  to them that were received on or before it. Payments not applied to a
  billing are credits of their client. Only what is still owed is listed.
- A/P: vendor invoices not paid on the as-of date (no ``paid_at``, or paid after).
- Aging counts days past the due date (a billing without one: its created
  date); a bill not yet due is 0 days past due.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import sqlalchemy as sa

from cpmail.reports.money import ZERO, to_decimal
from cpmail.store.schema import bank_accounts, billings, clients, payments, vendor_invoices, vendors

#: (label, lowest days past due, highest or None) — the buckets, in order.
BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0–30", 0, 30),
    ("31–60", 31, 60),
    ("61–90", 61, 90),
    ("90+", 91, None),
)


def bucket_of(days_past_due: int) -> int:
    """The index in ``BUCKETS`` for a bill this many days past due (not yet due: 0)."""
    for i, (_label, _lo, hi) in enumerate(BUCKETS):
        if hi is None or days_past_due <= hi:
            return i
    raise AssertionError("the last bucket has no upper bound")


def days_past_due(due: dt.date, as_of: dt.date) -> int:
    return max((as_of - due).days, 0)


@dataclass(frozen=True)
class Balance:
    name: str
    amount: Decimal
    as_of: dt.date | None


@dataclass(frozen=True)
class Item:
    """One open bill: a client's billing (A/R) or a vendor's invoice (A/P)."""

    party: str
    reference: str
    due: dt.date | None
    days: int | None  # past due; None for a credit that has no due date
    amount: Decimal  # still owed; negative for a credit
    original: Decimal | None = None  # the bill's full amount, when part of it is paid

    @property
    def bucket(self) -> int | None:
        return None if self.days is None else bucket_of(self.days)


@dataclass
class Aging:
    items: list[Item] = field(default_factory=list)

    @property
    def buckets(self) -> list[Decimal]:
        sums = [ZERO for _ in BUCKETS]
        for it in self.items:
            if it.bucket is not None:
                sums[it.bucket] += it.amount
        return sums

    @property
    def credits(self) -> Decimal:
        return sum((it.amount for it in self.items if it.bucket is None), ZERO)

    @property
    def total(self) -> Decimal:
        return sum((it.amount for it in self.items), ZERO)


@dataclass(frozen=True)
class CashFlow:
    as_of: dt.date
    cash: Sequence[Balance]
    receivable: Aging
    payable: Aging

    @property
    def cash_total(self) -> Decimal:
        return sum((b.amount for b in self.cash), ZERO)

    @property
    def net(self) -> Decimal:
        return self.cash_total + self.receivable.total - self.payable.total


def _day(value: dt.datetime | dt.date) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value


def load_cash(conn: sa.Connection, as_of: dt.date) -> list[Balance]:
    latest: dict[str, Balance] = {}
    for r in conn.execute(sa.select(bank_accounts).order_by(bank_accounts.c.id)):
        if r.as_of is not None and r.as_of > as_of:
            continue
        name = (r.name or r.id).strip()
        seen = latest.get(name)
        if seen is None or (r.as_of is not None and (seen.as_of is None or r.as_of >= seen.as_of)):
            latest[name] = Balance(name, to_decimal(r.balance), r.as_of)
    return sorted(latest.values(), key=lambda b: b.name.lower())


def load_receivable(conn: sa.Connection, as_of: dt.date) -> Aging:
    names = {r.id: r.name for r in conn.execute(sa.select(clients.c.id, clients.c.name))}
    # The billings open on the as-of date: those created by then.
    counted = [b for b in conn.execute(sa.select(billings)) if _day(b.created_at) <= as_of]
    billed = {b.id: b for b in counted}
    applied: dict[str, Decimal] = {}
    unapplied: dict[str, Decimal] = {}
    for p in conn.execute(sa.select(payments)):
        if _day(p.received_at) > as_of:
            continue
        if p.billing_id in billed:
            applied[p.billing_id] = applied.get(p.billing_id, ZERO) + to_decimal(p.amount)
        else:
            # Not applied, or applied to a bill made after the as-of date: on that date
            # the money was on account, a credit of the client's.
            client = p.client_id
            unapplied[client] = unapplied.get(client, ZERO) + to_decimal(p.amount)
    items = []
    for b in counted:
        created = _day(b.created_at)
        amount = to_decimal(b.amount)
        owed = amount - applied.get(b.id, ZERO)
        if owed == 0:
            continue
        due = b.due_date or created
        items.append(
            Item(
                party=names.get(b.client_id, b.client_id),
                reference=(b.number or "").strip() or b.id,
                due=due,
                days=days_past_due(due, as_of),
                amount=owed,
                original=amount if owed != amount else None,
            )
        )
    for client_id, paid in unapplied.items():
        if paid:
            items.append(
                Item(names.get(client_id, client_id), "payment on account", None, None, -paid)
            )
    items.sort(key=lambda it: (it.party.lower(), it.due or dt.date.max, it.reference))
    return Aging(items)


def load_payable(conn: sa.Connection, as_of: dt.date) -> Aging:
    names = {r.id: r.name for r in conn.execute(sa.select(vendors.c.id, vendors.c.name))}
    items = []
    for v in conn.execute(sa.select(vendor_invoices)):
        if v.paid_at is not None and _day(v.paid_at) <= as_of:
            continue
        amount = to_decimal(v.amount)
        if amount == 0:
            continue
        items.append(
            Item(
                party=names.get(v.vendor_id, v.vendor_id),
                reference=v.id,
                due=v.due_date,
                days=days_past_due(v.due_date, as_of) if v.due_date else 0,
                amount=amount,
            )
        )
    items.sort(key=lambda it: (it.party.lower(), it.due or dt.date.max, it.reference))
    return Aging(items)


def load_cash_flow(conn: sa.Connection, as_of: dt.date) -> CashFlow:
    """Cash, A/R and A/P of the agency as of the end of ``as_of``."""
    return CashFlow(
        as_of=as_of,
        cash=load_cash(conn, as_of),
        receivable=load_receivable(conn, as_of),
        payable=load_payable(conn, as_of),
    )
