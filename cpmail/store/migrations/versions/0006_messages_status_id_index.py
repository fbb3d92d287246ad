"""messages indexed by (status, id)

Claiming mail takes the oldest due messages of each status a batch at a time;
with this index each batch is read in order, instead of reading and sorting
every queued message on each claim.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 06:30:00
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_status_id"), ["status", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_status_id"))
