"""billing-created and payment-received."""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa

from cpmail.store.schema import billings, clients, jobs, payments
from cpmail.triggers import Notification, Run, key_of, money


def billing_created(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    b = billings.c
    q = (
        sa.select(
            b.id,
            b.number,
            b.amount,
            b.created_at,
            b.due_date,
            b.job_id,
            b.client_id,
            clients.c.name.label("client_name"),
            jobs.c.title.label("job_title"),
        )
        .select_from(
            billings.join(clients, clients.c.id == b.client_id).outerjoin(
                jobs, jobs.c.id == b.job_id
            )
        )
        .where(run.in_window(b.created_at))
        .order_by(b.created_at, b.id)
    )
    for r in conn.execute(q):
        yield Notification(
            event="billing-created",
            key=key_of("billing-created", r.id),
            item={
                "billing": {
                    "id": r.id,
                    "number": r.number or r.id,
                    "amount": money(r.amount),
                    "created_at": r.created_at,
                    "due_date": r.due_date,
                },
                "job": {"id": r.job_id, "title": r.job_title} if r.job_id else None,
                "client": {"id": r.client_id, "name": r.client_name},
            },
            client_id=r.client_id,
            thread=f"job:{r.job_id}" if r.job_id else None,
        )


def payment_received(conn: sa.Connection, run: Run) -> Iterator[Notification]:
    p = payments.c
    q = (
        sa.select(
            p.id,
            p.amount,
            p.received_at,
            p.client_id,
            p.billing_id,
            clients.c.name.label("client_name"),
            billings.c.number.label("billing_number"),
            billings.c.amount.label("billing_amount"),
            billings.c.job_id,
        )
        .select_from(
            payments.join(clients, clients.c.id == p.client_id).outerjoin(
                billings, billings.c.id == p.billing_id
            )
        )
        .where(run.in_window(p.received_at))
        .order_by(p.received_at, p.id)
    )
    for r in conn.execute(q):
        yield Notification(
            event="payment-received",
            key=key_of("payment-received", r.id),
            item={
                "payment": {"id": r.id, "amount": money(r.amount), "received_at": r.received_at},
                "billing": (
                    {
                        "id": r.billing_id,
                        "number": r.billing_number or r.billing_id,
                        "amount": money(r.billing_amount),
                    }
                    if r.billing_id
                    else None
                ),
                "client": {"id": r.client_id, "name": r.client_name},
            },
            client_id=r.client_id,
            thread=f"job:{r.job_id}" if r.job_id else None,
        )
