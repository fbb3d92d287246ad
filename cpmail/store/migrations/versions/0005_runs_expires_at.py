"""runs.expires_at

Homes that share a database may set different outbox.stale_claim_minutes. A
run's claims must be judged by the limit of the run that holds them, not of
the one looking: each run writes, with every heartbeat, until when its claims
are its own.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 04:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
