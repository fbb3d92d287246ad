"""messages.ledger_key no longer indexed: nothing looks a message up by it

The column stays: it records which notifications a message carries (a digest
carries several). The ledger itself is what keeps a notification from being
sent twice.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 20:30:00
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_ledger_key"))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_ledger_key"), ["ledger_key"], unique=False)
