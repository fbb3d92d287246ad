"""Alembic environment: cpmail always hands in a connection."""

from alembic import context

from cpmail.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: use the URL in the ini
    import sqlalchemy as sa

    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
