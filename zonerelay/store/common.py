"""What the SQLite and PostgreSQL stores share, apart from their SQL.

Both backends queue named write operations (``_op_*`` functions, one SQL dialect each) with
``_submit(op, args, durable)`` to a writer that group-commits them. `GroupCommitStore` holds the
orchestration that is the same on both sides (argument checks, which operation runs with which
durability, the garbage-collection loops); a backend names its operations in a `WriterOps` and
implements ``_submit`` and everything else. The helpers below turn rows into the interface's
records the same way for both.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from zonerelay.store.base import (
    BodyWriter,
    Delivery,
    DeliveryStatus,
    Event,
    GcResult,
    NewMessage,
    OutboxEntry,
    Outcome,
    QueueStats,
    QueueStore,
    StoredMessage,
    StoreError,
    SuppressionEntry,
)

# body_state of a message row
BODY_LIVE = 0  # chunks stored and needed
BODY_DEAD = 1  # no pending delivery needs the body; chunks are waiting for GC
BODY_DELETED = 2  # chunks deleted, message row kept while delivery rows are

PENDING_VALUES = frozenset(s.value for s in (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED))
FINAL_VALUES = frozenset(s.value for s in (DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED))
STATUS = {s.value: s for s in DeliveryStatus}

# a waiting future and what to resolve it with: (future, exception or None, result)
Settled = tuple[asyncio.Future[Any], BaseException | None, Any]


class Row(Protocol):
    """A result row: an sqlite3 tuple or an asyncpg Record."""

    def __getitem__(self, index: int, /) -> Any: ...


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def delivery(r: Row) -> Delivery:
    return Delivery(
        r[0], r[1], r[2], r[3], r[4], STATUS[r[5]], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13]
    )


def stored_message(r: Row) -> StoredMessage:
    return StoredMessage(r[0], r[1], tuple(json.loads(r[2])), bytes(r[3]), r[4], json.loads(r[5]), r[6])


def event(r: Row) -> Event:
    return Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))


def outbox_entry(r: Row) -> OutboxEntry:
    return OutboxEntry(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7])


def suppression_entry(row: Row) -> SuppressionEntry:
    if row[1] == "address":
        return SuppressionEntry(row[0], address=row[2])
    return SuppressionEntry(row[0], domain=row[2])


def queue_stats(rows: Iterable[Iterable[Any]], messages: int, leased: int) -> QueueStats:
    """QueueStats from (status, zone, count) rows and the message and live-lease counts."""
    totals = dict.fromkeys(STATUS, 0)
    by_zone: dict[str, dict[str, int]] = {}
    for status, zone, n in rows:
        totals[status] = totals.get(status, 0) + n
        by_zone.setdefault(zone, dict.fromkeys(STATUS, 0))[status] = n
    return QueueStats(
        queued=totals["queued"],
        deferred=totals["deferred"],
        delivered=totals["delivered"],
        bounced=totals["bounced"],
        messages=messages,
        leased=leased,
        by_zone=by_zone,
    )


def suppression_keys(recipients: list[str]) -> tuple[list[str], list[str]]:
    """The (addresses, domains) values to look up in the suppression list for these recipients."""
    return sorted({r.lower() for r in recipients}), sorted({r.rpartition("@")[2].lower() for r in recipients})


def suppressed(recipients: Iterable[str], hits: set[tuple[str, str]]) -> set[str]:
    """The recipients (as given) matched by the (kind, value) suppression entries found."""
    if not hits:
        return set()
    return {
        r
        for r in recipients
        if ("address", r.lower()) in hits or ("domain", r.rpartition("@")[2].lower()) in hits
    }


def selector(
    message_id: str | None, zone: str | None, domain: str | None, param: Callable[[int], str]
) -> tuple[str, list[Any]]:
    """The WHERE condition and parameters of an operator action on deliveries.

    ``param(n)`` is the backend's marker of its n-th (1-based) statement parameter."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("id", message_id), ("zone", zone), ("domain", domain)):
        if value is not None:
            params.append(value.lower() if column == "domain" else value)
            where.append(f"{column} = {param(len(params))}")
    if not where:
        raise ValueError("select deliveries by message id, zone or domain")
    return " AND ".join(where), params


def settle(items: Iterable[Settled]) -> None:
    """Resolve the futures of finished writer operations (on their event loop's thread)."""
    for fut, exc, result in items:
        if fut.done():  # the waiter was cancelled; the write happened anyway
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


@dataclass(frozen=True, slots=True)
class WriterOps:
    """A backend's writer operations (its ``_op_*`` functions, run by its writer inside a
    batch transaction with the connection as first argument) and its parameter marker."""

    write_chunk: Callable[..., Any]  # (mid, idx, data, now) -> None
    abort: Callable[..., Any]  # (mid) -> None
    commit: Callable[..., Any]  # (message, recipients JSON, meta JSON) -> None
    outcome: Callable[..., Any]  # (mid, seq, owner, outcome, details JSON) -> bool
    outbox_done: Callable[..., Any]  # (oids) -> None
    outbox_retry: Callable[..., Any]  # (oid, next_try, error) -> None
    gc_dead_bodies: Callable[..., Any]  # () -> (messages removed, more)
    gc_final: Callable[..., Any]  # (cutoff) -> (deliveries removed, messages removed, more)
    gc_orphans: Callable[..., Any]  # (cutoff) -> (bodies removed, more)
    retry_now: Callable[..., Any]  # (where, params, now) -> rows changed
    postpone: Callable[..., Any]  # (zone, domain, until, now) -> rows changed
    drop: Callable[..., Any]  # (where, params, now) -> rows dropped
    add_suppression: Callable[..., Any]  # (kind, value, now) -> SuppressionEntry
    delete_suppression: Callable[..., Any]  # (entry id) -> bool
    param: Callable[[int], str]  # SQL marker of the n-th (1-based) parameter: "?" or "$n"


class ChunkWriter(BodyWriter):
    """Chunks go through the store's writer, group-committed without durability of their own
    (the message commit makes them durable). The pending_bodies row is created with the first
    chunk, so an empty body costs no write. Calls must be awaited one after the other.
    """

    __slots__ = ("_closed", "_id", "_idx", "_store")

    def __init__(self, store: GroupCommitStore, message_id: str) -> None:
        self._store = store
        self._id = message_id
        self._idx = 0
        self._closed = False

    async def write(self, chunk: bytes) -> None:
        if self._closed:
            raise StoreError(f"body writer of {self._id} was aborted")
        if not chunk:
            return
        data = chunk if type(chunk) is bytes else bytes(chunk)
        store = self._store
        await store._submit(store._ops.write_chunk, (self._id, self._idx, data, time.time()), False)
        self._idx += 1

    async def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._idx:
            await self._store._submit(self._store._ops.abort, (self._id,), False)


class GroupCommitStore(QueueStore):
    """The orchestration both backends share, over their own `WriterOps` and ``_submit``."""

    _ops: ClassVar[WriterOps]

    @abc.abstractmethod
    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], durable: bool) -> asyncio.Future[Any]:
        """Queue ``fn(conn, *args)`` for the writer; ``durable``: its batch commits durably."""

    # -- ingest ---------------------------------------------------------------------------
    async def commit_message(self, message: NewMessage) -> None:
        recipients = to_json(list(message.recipients))
        meta = to_json(message.meta)
        await self._submit(self._ops.commit, (message, recipients, meta), True)

    # -- delivery -------------------------------------------------------------------------
    async def record_outcome(self, key: tuple[str, str], owner: str, outcome: Outcome) -> bool:
        if not outcome.status.is_final and outcome.next_attempt is None:
            raise ValueError("a non-final outcome needs next_attempt")
        details = to_json(outcome.details)
        applied: bool = await self._submit(self._ops.outcome, (key[0], key[1], owner, outcome, details), True)
        return applied

    # -- outbox -------------------------------------------------------------------------
    async def outbox_done(self, oids: list[int]) -> None:
        if oids:
            await self._submit(self._ops.outbox_done, (list(oids),), True)

    async def outbox_retry(self, oid: int, next_try: float, error: str) -> None:
        await self._submit(self._ops.outbox_retry, (oid, next_try, error), False)

    # -- housekeeping ---------------------------------------------------------------------
    async def collect_garbage(self, now: float, retention: float, orphan_age: float) -> GcResult:
        messages = deliveries = orphans = 0
        more = True
        while more:  # each step is its own short transaction; other writes go in between
            n, more = await self._submit(self._ops.gc_dead_bodies, (), False)
            messages += n
        more = True
        while more:
            d, n, more = await self._submit(self._ops.gc_final, (now - retention,), False)
            deliveries += d
            messages += n
        more = True
        while more:
            n, more = await self._submit(self._ops.gc_orphans, (now - orphan_age,), False)
            orphans += n
        return GcResult(deliveries=deliveries, messages=messages, orphan_bodies=orphans)

    # -- operator actions and the suppression list ------------------------------------------
    async def postpone(self, zone: str, domain: str, until: float, now: float) -> int:
        changed: int = await self._submit(self._ops.postpone, (zone, domain.lower(), until, now), False)
        return changed

    async def retry_now(
        self, now: float, *, message_id: str | None = None, zone: str | None = None, domain: str | None = None
    ) -> int:
        where, params = selector(message_id, zone, domain, self._ops.param)
        changed: int = await self._submit(self._ops.retry_now, (where, params, now), False)
        return changed

    async def drop_deliveries(
        self, now: float, *, message_id: str | None = None, zone: str | None = None, domain: str | None = None
    ) -> int:
        where, params = selector(message_id, zone, domain, self._ops.param)
        dropped: int = await self._submit(self._ops.drop, (where, params, now), True)
        return dropped

    async def add_suppression(
        self, *, address: str | None = None, domain: str | None = None
    ) -> SuppressionEntry:
        if (address is None) == (domain is None):
            raise ValueError("give exactly one of address or domain")
        kind, value = ("address", address) if address is not None else ("domain", domain)
        assert value is not None
        value = value.strip().lower()
        if not value:
            raise ValueError(f"empty {kind}")
        now = time.time()
        entry: SuppressionEntry = await self._submit(self._ops.add_suppression, (kind, value, now), True)
        return entry

    async def delete_suppression(self, entry_id: str) -> bool:
        deleted: bool = await self._submit(self._ops.delete_suppression, (entry_id,), True)
        return deleted
