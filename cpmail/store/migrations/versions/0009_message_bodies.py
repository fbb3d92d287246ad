"""message texts kept apart from the messages' rows; whose address each is


Claiming a message and recording what became of it each change a few
columns of its row, and SQLite writes the whole row again to change one
column of it: the message's text, a few kilobytes, was written two or three
times on its way out, and most of the time of claiming went to it. The text
now has a table of its own, written once when the message is queued and
removed once it is sent or dropped.

Each message also records the staff member each of its addresses is of, so
that mail waiting goes to the address they have when it goes (one corrected
after a "550 no such user", say), not the one they had when it was queued.
Messages queued before this revision record none, and keep their addresses.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 00:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_bodies",
        sa.Column("message_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_bodies")),
    )
    op.execute(
        "INSERT INTO message_bodies (message_id, raw) "
        "SELECT id, raw FROM messages WHERE raw IS NOT NULL"
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("raw")
        batch_op.add_column(sa.Column("staff_ids", sa.Text(), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("staff_ids")
        batch_op.add_column(sa.Column("raw", sa.LargeBinary(), nullable=True))
    op.execute(
        "UPDATE messages SET raw = "
        "(SELECT b.raw FROM message_bodies b WHERE b.message_id = messages.id)"
    )
    op.drop_table("message_bodies")
