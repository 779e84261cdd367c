"""`zonerelay store migrate`: create or upgrade the configured store's schema.

PostgreSQL is shared by instances that may run different releases during an upgrade, so its
schema changes only when an operator says so: `serve` refuses a database whose version it
does not know, and this command creates or upgrades it (under an advisory lock, in one
transaction). The embedded SQLite store keeps creating its schema on first open (it is the
two-command default and belongs to one instance); here it is simply opened, which creates
it, and its version reported.
"""

from __future__ import annotations

from zonerelay.config import Config


async def migrate(config: Config) -> str:
    """Create/upgrade the schema; returns a line for the operator. Raises StoreError."""
    if config.store.backend == "postgres":
        from zonerelay.store.postgres import PostgresStore

        store = PostgresStore(config.store.dsn, connect_timeout=config.store.connect_timeout)
        before, after = await store.migrate()
        where = config.store.dsn.rpartition("@")[2]
        if before == after:
            return f"PostgreSQL store {where}: schema version {after} is current, nothing to do"
        was = "created" if before is None else f"upgraded from version {before}"
        return f"PostgreSQL store {where}: schema {was} to version {after}"
    from zonerelay.store.sqlite import SCHEMA_VERSION, SqliteStore

    sqlite = SqliteStore(config.queue.data_dir / "queue.db")
    await sqlite.open()
    await sqlite.close()
    return f"SQLite store {sqlite.path}: schema version {SCHEMA_VERSION} is current"
