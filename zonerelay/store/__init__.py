"""The durable queue: the store interface (base), queue ids, and the backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zonerelay.store.base import (
    PENDING,
    BodyGone,
    BodyWriter,
    Delivery,
    DeliveryStatus,
    Event,
    GcResult,
    MessageExists,
    NewDelivery,
    NewMessage,
    Outcome,
    QueueStats,
    QueueStore,
    StoredMessage,
    StoreError,
    StoreUnavailable,
)
from zonerelay.store.ids import is_queue_id, new_queue_id, seq

if TYPE_CHECKING:
    from zonerelay.config import Config

__all__ = [
    "PENDING",
    "BodyGone",
    "BodyWriter",
    "Delivery",
    "DeliveryStatus",
    "Event",
    "GcResult",
    "MessageExists",
    "NewDelivery",
    "NewMessage",
    "Outcome",
    "QueueStats",
    "QueueStore",
    "StoreError",
    "StoreUnavailable",
    "StoredMessage",
    "is_queue_id",
    "new_queue_id",
    "open_store",
    "seq",
]


def open_store(config: Config) -> QueueStore:
    """The configured backend, not yet opened: ``await store.open()`` before use."""
    backend = config.store.backend
    if backend == "sqlite":
        from zonerelay.store.sqlite import SqliteStore

        return SqliteStore(config.queue.data_dir / "queue.db")
    if backend == "postgres":
        from zonerelay.store.postgres import PostgresStore

        return PostgresStore(
            config.store.dsn, pool_size=config.store.pool_size, connect_timeout=config.store.connect_timeout
        )
    raise ValueError(f"unknown store backend {backend!r}")
