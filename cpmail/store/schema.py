"""Every table: the agency's data (SPEC §6) and cpmail's own (outbox, ledger).

SQLAlchemy Core. Ids are text; dates are ``Date``; timestamps are naive
``DateTime`` in the agency's time zone (cpmail's own bookkeeping times are UTC);
money and hours are ``Numeric``. Lists inside a cell (notify, attendees,
events, access) stay comma-separated text, as in the CSV files.

Foreign keys are declared DEFERRABLE INITIALLY DEFERRED so that one import may
hold rows that refer to each other (a supervisor listed after the staff member);
the importer checks them row by row to name the line at fault.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = sa.Text
Money = sa.Numeric(14, 2)
Hours = sa.Numeric(10, 2)


# cpmail's own column on the tables the state triggers (task-over-budget, hours-exceeded)
# read. NULL: not looked at yet (new rows arrive so, and an import that changes a row
# sets it back); a run id: a check is looking at it; DONE: looked at. So a check reads
# what changed since the last one, not the whole history.
CHECKED = "cpmail_checked"
DONE = "y"


def _checked(table: str, column: str) -> list[Any]:
    return [
        sa.Column(CHECKED, sa.Text, info={"internal": True}),
        sa.Index(
            f"ix_{table}_unchecked",
            column,
            sqlite_where=sa.text(f"{CHECKED} IS NOT '{DONE}'"),
            postgresql_where=sa.text(f"{CHECKED} IS DISTINCT FROM '{DONE}'"),
        ),
    ]


def _fk(target: str, **kw: object) -> sa.ForeignKey:
    return sa.ForeignKey(target, deferrable=True, initially="DEFERRED", **kw)  # type: ignore[arg-type]


staff = sa.Table(
    "staff",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("work_email", sa.Text),
    sa.Column("username", sa.Text),
    sa.Column("supervisor_id", Id, _fk("staff.id")),
    sa.Column("planned_hours", Hours, nullable=False, server_default="0"),
    sa.Column("workdays", sa.Text, nullable=False, server_default="mon-fri"),
    sa.Column("role", sa.Text),
    sa.Column("access", sa.Text),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
)

time_off = sa.Table(
    "time_off",
    metadata,
    sa.Column("staff_id", Id, _fk("staff.id"), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True, index=True),  # time off near the run date
)

staff_opt_out = sa.Table(
    "staff_opt_out",
    metadata,
    sa.Column("staff_id", Id, _fk("staff.id"), primary_key=True),
    sa.Column("event", sa.Text, primary_key=True),
)

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("billing_email", sa.Text),
)

vendors = sa.Table(
    "vendors",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("email", sa.Text),
)

client_team = sa.Table(
    "client_team",
    metadata,
    sa.Column("client_id", Id, _fk("clients.id"), primary_key=True),
    sa.Column("staff_id", Id, _fk("staff.id"), primary_key=True, index=True),
    sa.Column("role", sa.Text, primary_key=True),
    sa.Column("events", sa.Text),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("client_id", Id, _fk("clients.id"), nullable=False, index=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("opened_at", sa.DateTime, index=True),
    sa.Column("production_status", sa.Text),
    sa.Column("billing_status", sa.Text),
)

job_status_codes = sa.Table(
    "job_status_codes",
    metadata,
    sa.Column("code", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("description", sa.Text),
    sa.Column("notify", sa.Text),
)

job_status_history = sa.Table(
    "job_status_history",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("job_id", Id, _fk("jobs.id"), nullable=False, index=True),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("old_value", sa.Text),
    sa.Column("new_value", sa.Text),
    sa.Column("changed_at", sa.DateTime, nullable=False, index=True),
    sa.Column("changed_by", Id),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("job_id", Id, _fk("jobs.id"), nullable=False, index=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("assignee_id", Id, _fk("staff.id"), index=True),
    sa.Column("due_date", sa.Date, index=True),
    sa.Column("completed_at", sa.DateTime, index=True),
    sa.Column("budget_amount", Money),
    sa.Column("estimated_hours", Hours),
    *_checked("tasks", "id"),
    # overdue reminders look only at open tasks: keep that scan off the finished history
    sa.Index(
        "ix_tasks_open_due",
        "due_date",
        sqlite_where=sa.text("completed_at IS NULL"),
        postgresql_where=sa.text("completed_at IS NULL"),
    ),
)

time_entries = sa.Table(
    "time_entries",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("staff_id", Id, _fk("staff.id"), nullable=False),
    sa.Column("job_id", Id, _fk("jobs.id")),
    sa.Column("task_id", Id, _fk("tasks.id"), index=True),
    sa.Column("work_date", sa.Date, nullable=False, index=True),
    sa.Column("hours", Hours, nullable=False),
    sa.Column("amount", Money),
    sa.Index(None, "staff_id", "work_date"),
    *_checked("time_entries", "task_id"),
)

job_costs = sa.Table(
    "job_costs",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("job_id", Id, _fk("jobs.id"), nullable=False, index=True),
    sa.Column("task_id", Id, _fk("tasks.id"), index=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("entered_by", Id, _fk("staff.id")),
    sa.Column("entered_at", sa.DateTime, index=True),
    *_checked("job_costs", "task_id"),
)

budget_alerts = sa.Table(
    "budget_alerts",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("job_id", Id, _fk("jobs.id"), nullable=False),
    sa.Column("task_id", Id, _fk("tasks.id")),
    sa.Column("source", sa.Text),
    sa.Column("message", sa.Text),
    sa.Column("entered_by", Id, _fk("staff.id")),
    sa.Column("entered_at", sa.DateTime, nullable=False, index=True),
)

billings = sa.Table(
    "billings",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("job_id", Id, _fk("jobs.id"), index=True),
    sa.Column("client_id", Id, _fk("clients.id"), nullable=False, index=True),
    sa.Column("number", sa.Text),
    sa.Column("amount", Money, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    sa.Column("due_date", sa.Date),
)

billing_lines = sa.Table(
    "billing_lines",
    metadata,
    sa.Column("billing_id", Id, _fk("billings.id"), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text),
    sa.Column("quantity", Hours),
    sa.Column("rate", Money),
    sa.Column("amount", Money),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("client_id", Id, _fk("clients.id"), nullable=False),
    sa.Column("billing_id", Id, _fk("billings.id"), index=True),
    sa.Column("amount", Money, nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False, index=True),
)

estimates = sa.Table(
    "estimates",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("job_id", Id, _fk("jobs.id"), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime),
)

estimate_lines = sa.Table(
    "estimate_lines",
    metadata,
    sa.Column("estimate_id", Id, _fk("estimates.id"), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text),
    sa.Column("quantity", Hours),
    sa.Column("rate", Money),
    sa.Column("amount", Money),
)

purchase_orders = sa.Table(
    "purchase_orders",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("job_id", Id, _fk("jobs.id"), index=True),
    sa.Column("vendor_id", Id, _fk("vendors.id"), nullable=False),
    sa.Column("created_at", sa.DateTime),
    sa.Column("due_date", sa.Date),
)

po_lines = sa.Table(
    "po_lines",
    metadata,
    sa.Column("po_id", Id, _fk("purchase_orders.id"), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text),
    sa.Column("quantity", Hours),
    sa.Column("rate", Money),
    sa.Column("amount", Money),
)

vendor_invoices = sa.Table(
    "vendor_invoices",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("vendor_id", Id, _fk("vendors.id"), nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("due_date", sa.Date),
    sa.Column("paid_at", sa.DateTime),
)

bank_accounts = sa.Table(
    "bank_accounts",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("balance", Money, nullable=False),
    sa.Column("as_of", sa.Date),
)

diary_entries = sa.Table(
    "diary_entries",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("party_id", Id, nullable=False),
    sa.Column("subject", sa.Text),
    sa.Column("body", sa.Text),
    sa.Column("entered_by", Id, _fk("staff.id")),
    sa.Column("entered_at", sa.DateTime, nullable=False, index=True),
    sa.Column("notify", sa.Text),
)

homebase_entries = sa.Table(
    "homebase_entries",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("subject", sa.Text),
    sa.Column("body", sa.Text),
    sa.Column("entered_by", Id, _fk("staff.id")),
    sa.Column("entered_at", sa.DateTime, nullable=False, index=True),
    sa.Column("notify", sa.Text),
)

change_orders = sa.Table(
    "change_orders",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("job_id", Id, _fk("jobs.id"), nullable=False, index=True),
    sa.Column("description", sa.Text),
    sa.Column("amount", Money),
    sa.Column("entered_by", Id, _fk("staff.id")),
    sa.Column("entered_at", sa.DateTime, nullable=False, index=True),
)

calendar_entries = sa.Table(
    "calendar_entries",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("starts_at", sa.DateTime, nullable=False),
    sa.Column("ends_at", sa.DateTime),
    sa.Column("remind_at", sa.DateTime, index=True),
    sa.Column("location", sa.Text),
    sa.Column("notes", sa.Text),
    sa.Column("attendees", sa.Text),
)

# The agency tables in an order that satisfies their foreign keys (for import/export).
AGENCY_TABLES: tuple[sa.Table, ...] = (
    staff,
    time_off,
    staff_opt_out,
    clients,
    vendors,
    client_team,
    job_status_codes,
    jobs,
    job_status_history,
    tasks,
    time_entries,
    job_costs,
    budget_alerts,
    billings,
    billing_lines,
    payments,
    estimates,
    estimate_lines,
    purchase_orders,
    po_lines,
    vendor_invoices,
    bank_accounts,
    diary_entries,
    homebase_entries,
    change_orders,
    calendar_entries,
)

# ---------------------------------------------------------------- cpmail's own

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

# One row per message: the outbox while it waits, the log once it is done.
# status: queued | sending | deferred | sent | failed | suppressed | dropped
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # the notifications it carries (comma-separated ledger keys; a digest has several)
    sa.Column("ledger_key", sa.Text),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("account", sa.Text, nullable=False, server_default=""),
    sa.Column("from_addr", sa.Text, nullable=False),
    sa.Column("to_addrs", sa.Text, nullable=False),
    sa.Column("pending_rcpts", sa.Text, nullable=False, server_default=""),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("size", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    # when it last entered the queue (created, or a failed one retried by hand): max_age_hours
    # counts from here, and status's "waiting since"
    sa.Column("queued_at", sa.DateTime, nullable=False),
    sa.Column("next_attempt_at", sa.DateTime),
    sa.Column("claimed_at", sa.DateTime),
    sa.Column("claimed_by", sa.Text),
    sa.Column("sent_at", sa.DateTime),
    # when it failed for good (UTC), whenever it was queued: status's "failed lately"
    sa.Column("failed_at", sa.DateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("run_id", sa.Text),
    # refused for good in an earlier attempt, while others were deferred (comma-separated)
    sa.Column("refused_rcpts", sa.Text, nullable=False, server_default=""),
    # not sent after this (UTC): a reminder whose event has begun no longer matters
    sa.Column("not_after", sa.DateTime),
    # the staff each address of to_addrs is of (JSON, null for none; '' for no staff):
    # mail that waits goes to the address a staff member has when it goes
    sa.Column("staff_ids", sa.Text, nullable=False, server_default=""),
    sa.Index(None, "status", "id"),  # a claim reads the oldest of each status in order
    # Deferred messages only: an index of every message's status changed with each one sent.
    sa.Index(
        "ix_messages_deferred_next_attempt_at",
        "next_attempt_at",
        sqlite_where=sa.text("status = 'deferred'"),
        postgresql_where=sa.text("status = 'deferred'"),
    ),
)

# The text of each message that may still go (queued, sending, deferred, failed),
# as the server receives it. Apart from the message's row: claiming and recording
# change that row two or three times on its way, and SQLite rewrites a whole row to
# change one column of it. Removed once the message is sent or dropped.
message_bodies = sa.Table(
    "message_bodies",
    metadata,
    # (no foreign key: SQLite rebuilds a table to change it, and with a cascade the
    # rebuild of ``messages`` by a later migration would delete every text)
    sa.Column("message_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),
)

# One row per command that claims or sends mail. A live run renews
# ``heartbeat_at``; claims of a run whose heartbeat stopped are taken up again
# after ``outbox.stale_claim_minutes``. ``cpmail status`` reads the last check here.
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False, server_default=""),
    sa.Column("pid", sa.Integer, nullable=False, server_default="0"),
    sa.Column("started_at", sa.DateTime, nullable=False, index=True),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    # Its claims are its own until then: its last heartbeat plus its own
    # outbox.stale_claim_minutes (another home on the database may set another).
    sa.Column("expires_at", sa.DateTime),
    sa.Column("ended_at", sa.DateTime),
    sa.Column("run_date", sa.Date),
    sa.Column("exit_code", sa.Integer),
    sa.Column("counts", sa.Text),  # JSON: the summary totals of a check
    sa.Column("note", sa.Text),
)

# A staff member's own choices about the mail cpmail sends them (cpmail's, not
# the agency system's): digest NULL = as [mail] digest says.
staff_prefs = sa.Table(
    "staff_prefs",
    metadata,
    sa.Column("staff_id", sa.Text, primary_key=True),
    sa.Column("digest", sa.Boolean),
)

# Conditions an alert was sent for (cpmail status / [alerts]): one row per
# condition while it lasts, so that it is alerted once, then once resolved.
alert_state = sa.Table(
    "alert_state",
    metadata,
    sa.Column("condition", sa.Text, primary_key=True),
    sa.Column("raised_at", sa.DateTime, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
)

AGENCY_TABLE_NAMES = tuple(t.name for t in AGENCY_TABLES)
