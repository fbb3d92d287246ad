"""messages indexed by next attempt among deferred ones only

The index of (status, next_attempt_at) changed with every message sent: each
claim and each sent message moved an entry of it, in every commit on the way
of delivery. Only deferred messages have a next attempt to look up, so the
index now holds them alone; the (status, id) index serves the rest.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 11:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_DEFERRED = sa.text("status = 'deferred'")


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_status_next_attempt_at"))
        batch_op.create_index(
            batch_op.f("ix_messages_deferred_next_attempt_at"),
            ["next_attempt_at"],
            unique=False,
            sqlite_where=_DEFERRED,
            postgresql_where=_DEFERRED,
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_deferred_next_attempt_at"))
        batch_op.create_index(
            batch_op.f("ix_messages_status_next_attempt_at"),
            ["status", "next_attempt_at"],
            unique=False,
        )
