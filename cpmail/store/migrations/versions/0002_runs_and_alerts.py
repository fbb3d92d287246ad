"""runs (claims' heartbeats, the last check), alert state, staff preferences

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 17:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), server_default="", nullable=False),
        sa.Column("pid", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("run_date", sa.Date(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("counts", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_started_at"), ["started_at"], unique=False)
    op.create_table(
        "staff_prefs",
        sa.Column("staff_id", sa.Text(), nullable=False),
        sa.Column("digest", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("staff_id"),
    )
    op.create_table(
        "alert_state",
        sa.Column("condition", sa.Text(), nullable=False),
        sa.Column("raised_at", sa.DateTime(), nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("condition"),
    )


def downgrade() -> None:
    op.drop_table("alert_state")
    op.drop_table("staff_prefs")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_started_at"))
    op.drop_table("runs")
