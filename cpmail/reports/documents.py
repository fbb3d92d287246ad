"""Invoices, estimates and purchase orders: read one from the agency's data.

Each loader returns a plain dataclass that a template prints; every amount is
a Decimal. An id that is not in the data raises InputError naming it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cpmail.errors import InputError
from cpmail.reports.money import ZERO, cents, to_decimal
from cpmail.store.schema import (
    billing_lines,
    billings,
    clients,
    estimate_lines,
    estimates,
    jobs,
    payments,
    po_lines,
    purchase_orders,
    vendors,
)


@dataclass(frozen=True)
class Party:
    """Who a document is addressed to: a client or a vendor."""

    id: str
    name: str
    email: str


@dataclass(frozen=True)
class Job:
    id: str
    title: str
    client_name: str


@dataclass(frozen=True)
class Line:
    number: int
    description: str
    quantity: Decimal | None
    rate: Decimal | None
    amount: Decimal


@dataclass(frozen=True)
class Invoice:
    id: str
    number: str
    date: dt.date
    due_date: dt.date | None
    client: Party
    job: Job | None
    lines: Sequence[Line]
    subtotal: Decimal  # the lines
    total: Decimal  # the billing's amount
    paid: Decimal  # payments received on or before ``as_of``
    as_of: dt.date

    @property
    def adjustment(self) -> Decimal:
        """What the billing's amount adds to its lines (tax, fees); zero when they agree."""
        return self.total - self.subtotal if self.lines else ZERO

    @property
    def balance(self) -> Decimal:
        return self.total - self.paid


@dataclass(frozen=True)
class Estimate:
    id: str
    date: dt.date | None
    client: Party
    job: Job
    lines: Sequence[Line]
    total: Decimal


@dataclass(frozen=True)
class PurchaseOrder:
    id: str
    date: dt.date | None
    due_date: dt.date | None
    vendor: Party
    job: Job | None
    lines: Sequence[Line]
    total: Decimal


def _date(value: dt.datetime | dt.date | None) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    return value


def _lines(conn: sa.Connection, table: sa.Table, key: sa.Column[Any], id_: str) -> list[Line]:
    out = []
    for r in conn.execute(sa.select(table).where(key == id_).order_by(table.c.line)):
        qty = None if r.quantity is None else to_decimal(r.quantity)
        rate = None if r.rate is None else to_decimal(r.rate)
        if r.amount is not None:
            amount = to_decimal(r.amount)
        elif qty is not None and rate is not None:
            amount = cents(qty * rate)  # as printed: the totals add up what the page shows
        else:
            amount = ZERO
        out.append(Line(int(r.line), r.description or "", qty, rate, amount))
    return out


def _job(conn: sa.Connection, job_id: str | None) -> Job | None:
    if not job_id:
        return None
    r = conn.execute(
        sa.select(jobs.c.id, jobs.c.title, clients.c.name)
        .select_from(jobs.outerjoin(clients, clients.c.id == jobs.c.client_id))
        .where(jobs.c.id == job_id)
    ).first()
    if r is None:
        return Job(job_id, "", "")
    return Job(r.id, r.title or "", r.name or "")


def _client(conn: sa.Connection, client_id: str) -> Party:
    r = conn.execute(sa.select(clients).where(clients.c.id == client_id)).first()
    if r is None:
        return Party(client_id, client_id, "")
    return Party(r.id, r.name, (r.billing_email or "").strip())


def find_billing(conn: sa.Connection, ref: str) -> Any:
    """The billing whose id is ``ref``, else the one whose number is; InputError if none."""
    b = conn.execute(sa.select(billings).where(billings.c.id == ref)).first()
    if b is not None:
        return b
    found = conn.execute(
        sa.select(billings).where(sa.func.trim(billings.c.number) == ref.strip()).limit(2)
    ).all()
    if len(found) == 1:
        return found[0]
    if found:
        ids = conn.execute(
            sa.select(billings.c.id)
            .where(sa.func.trim(billings.c.number) == ref.strip())
            .order_by(billings.c.id)
        ).scalars()
        raise InputError(
            f"billing number {ref!r} belongs to several billings ({', '.join(ids)}); "
            "give the billing's id instead."
        )
    raise InputError(f"no billing with id or number {ref!r} in the agency's data.")


def load_invoice(conn: sa.Connection, billing_id: str, *, as_of: dt.date) -> Invoice:
    """The billing ``billing_id`` as an invoice; payments count up to ``as_of``.

    ``billing_id`` is a billing's id or, when no id matches, its number (what
    people and the mail call it: "Billing 10234").
    """
    b = find_billing(conn, billing_id)
    billing_id = b.id
    lines = _lines(conn, billing_lines, billing_lines.c.billing_id, billing_id)
    received = [
        to_decimal(p.amount)
        for p in conn.execute(
            sa.select(payments.c.amount, payments.c.received_at).where(
                payments.c.billing_id == billing_id
            )
        )
        if p.received_at.date() <= as_of
    ]
    created = _date(b.created_at)
    assert created is not None  # created_at is NOT NULL
    return Invoice(
        id=b.id,
        number=(b.number or "").strip() or b.id,
        date=created,
        due_date=b.due_date,
        client=_client(conn, b.client_id),
        job=_job(conn, b.job_id),
        lines=lines,
        subtotal=sum((ln.amount for ln in lines), ZERO),
        total=to_decimal(b.amount),
        paid=sum(received, ZERO),
        as_of=as_of,
    )


def load_estimate(conn: sa.Connection, estimate_id: str) -> Estimate:
    """The estimate ``estimate_id``, with its job's client."""
    e = conn.execute(sa.select(estimates).where(estimates.c.id == estimate_id)).first()
    if e is None:
        raise InputError(f"no estimate with id {estimate_id!r} in the agency's data.")
    client_id = conn.execute(sa.select(jobs.c.client_id).where(jobs.c.id == e.job_id)).scalar()
    job = _job(conn, e.job_id)
    assert job is not None  # job_id is NOT NULL
    lines = _lines(conn, estimate_lines, estimate_lines.c.estimate_id, estimate_id)
    return Estimate(
        id=e.id,
        date=_date(e.created_at),
        client=_client(conn, client_id) if client_id else Party("", "", ""),
        job=job,
        lines=lines,
        total=sum((ln.amount for ln in lines), ZERO),
    )


def load_purchase_order(conn: sa.Connection, po_id: str) -> PurchaseOrder:
    """The purchase order ``po_id``, with its vendor."""
    p = conn.execute(sa.select(purchase_orders).where(purchase_orders.c.id == po_id)).first()
    if p is None:
        raise InputError(f"no purchase order with id {po_id!r} in the agency's data.")
    v = conn.execute(sa.select(vendors).where(vendors.c.id == p.vendor_id)).first()
    vendor = (
        Party(v.id, v.name, (v.email or "").strip())
        if v is not None
        else Party(p.vendor_id, p.vendor_id, "")
    )
    lines = _lines(conn, po_lines, po_lines.c.po_id, po_id)
    return PurchaseOrder(
        id=p.id,
        date=_date(p.created_at),
        due_date=p.due_date,
        vendor=vendor,
        job=_job(conn, p.job_id),
        lines=lines,
        total=sum((ln.amount for ln in lines), ZERO),
    )
