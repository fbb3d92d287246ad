"""messages.refused_rcpts and messages.not_after

refused_rcpts: a message to several people can be refused for one (550) and
deferred for another (451); when the deferred one is accepted later, the
message must still say that the first never got it. The column keeps those
addresses until the message is put back in the queue by hand.

not_after: a calendar reminder held back (by the send window, a server that
was away) is not sent once its event has begun; the time it stops mattering.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 02:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("refused_rcpts", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("not_after", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("not_after")
        batch_op.drop_column("refused_rcpts")
