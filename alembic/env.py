"""Alembic environment: the URL comes from selectit (`--db`, $SELECTIT_DATABASE_URL, ./selectit.db)."""

from alembic import context

from selectit.store.db import make_engine, resolve_url
from selectit.store.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.attributes.get("url") or resolve_url(), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(config.attributes.get("url"))
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # Batch mode copies a table and drops the old one; with foreign keys on, that drop
            # would cascade into the rows referencing it. The pragma only works outside a
            # transaction, hence on the raw connection before SQLAlchemy begins one.
            connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        # render_as_batch: SQLite can only ALTER tables by copying them.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        if engine.dialect.name == "sqlite":
            connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
