"""messages record when they failed for good

`cpmail status` and the alerts count mail that failed in the last 7 days.
They counted it by when it was queued, so mail queued before a long pause
(a server off for a holiday) and failed on the first run after it was not
counted at all. Each message now records when it failed. Those that failed
before this revision have only the time they were queued: it stands in.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 13:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failed_at", sa.DateTime(), nullable=True))
    op.execute("UPDATE messages SET failed_at = queued_at WHERE status = 'failed'")


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("failed_at")
