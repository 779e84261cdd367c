"""The shared queue store: PostgreSQL, for several instances on one database (asyncpg).

Connections
    Each process (the supervisor, every delivery worker) has one asyncpg pool for reads,
    claims and lease changes, and one *writer* connection for everything that must be
    durable or that arrives often in small pieces (body chunks, message commits, outcomes,
    garbage collection). Coroutines queue writer operations and await a future; the writer
    task takes the first operation, drains what else is queued (up to ``_MAX_BATCH``), runs
    them all in ONE transaction and resolves the futures after COMMIT returns: concurrent SMTP
    sessions share commits (group commit), so the durability promise costs one WAL flush per
    batch instead of one per message.

    Operations are written so that a refusal (MessageExists, BodyGone, a size mismatch) is
    raised before they write anything; the batch goes on without them. An unexpected
    database error aborts the transaction; the batch is then rolled back and each operation
    re-run in a transaction of its own, so only the faulty one fails.

Durability
    The writer connection runs with ``synchronous_commit = on``: COMMIT returns after the WAL
    up to the commit record is flushed (and, with synchronous standbys configured, replicated),
    and only then does the SMTP layer answer 250. Batches holding only body chunks, aborts or
    GC steps use ``SET LOCAL synchronous_commit = off``; that is safe because WAL is one
    sequence: the later synchronous commit of the message flushes every earlier record,
    including its chunks, and an unacknowledged submission may be lost anyway.

Claims
    ``UPDATE ... FROM (SELECT ... ORDER BY next_attempt LIMIT n FOR UPDATE SKIP LOCKED) ...
    RETURNING``: concurrent claimers in any process or instance skip each other's rows instead
    of waiting, and the lease (owner, expiry) is set in the same statement, so two owners never
    hold one delivery. Lease owners are ``instance/wN/pid``; a dead instance's leases expire or
    are released by the survivors' sweep (see cluster.py). Claims, renewals and releases run on
    pooled connections with ``synchronous_commit = off``: they commit at once but skip the WAL
    flush (a claimer per worker would otherwise flush the WAL many times a second and slow every
    message commit down). A lease lost to a PostgreSQL crash only makes a delivery claimable
    again: at worst a duplicate, never a loss, since outcomes are durable.

Bodies
    Chunks are ``bytea`` rows of ~256 KiB in a table whose data column is stored uncompressed
    out of line (``STORAGE EXTERNAL``: mail bodies rarely compress well, and pglz costs CPU).
    They are read back a few at a time, each round one statement (one snapshot) that also
    checks the body is still live, so a 1 GiB body never sits in memory.

Errors
    A refused connection, a server restarting or shutting down, too many connections, a full
    disk, deadlocks and serialization failures raise StoreUnavailable (SMTP 451 4.3.0); the
    pool and the writer reconnect by themselves on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

import asyncpg

from zonerelay.store.base import (
    BodyGone,
    BodyWriter,
    Delivery,
    DeliveryStatus,
    Event,
    MessageExists,
    NewMessage,
    OutboxEntry,
    Outcome,
    QueueStats,
    StoredMessage,
    StoreError,
    StoreUnavailable,
    SuppressionEntry,
)
from zonerelay.store.common import (
    BODY_DEAD,
    BODY_DELETED,
    BODY_LIVE,
    FINAL_VALUES,
    ChunkWriter,
    GroupCommitStore,
    Settled,
    WriterOps,
    delivery,
    event,
    outbox_entry,
    queue_stats,
    settle,
    stored_message,
    suppressed,
    suppression_entry,
    suppression_keys,
    to_json,
)

__all__ = ["SCHEMA_VERSION", "PostgresStore", "SchemaMismatch"]

T = TypeVar("T")

SCHEMA_VERSION = 1

_MAX_BATCH = 500
#: Writer connections per process: each runs one group-commit batch at a time, so several
#: keep the network round trips of one batch from holding up everybody else's.
_WRITERS = 3
_READ_CHUNKS = 4
_GC_CHUNK_BUDGET = 64
_GC_ROW_BATCH = 500
_GC_MESSAGE_BATCH = 100
_LOCK_ID = 0x7A6F6E6572656C61  # pg_advisory_xact_lock key of `store migrate` ("zonerela")
# The outbox sender's session advisory lock. Advisory locks are per database, so the key names
# the schema too: two clusters in two schemas of one database each have their own sender.
_OUTBOX_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('zonerelay outbox ' || current_schema(), 0))"
_LEAD_CHECK = 1.0  # seconds the outbox sender trusts its lock connection without asking
_LEAD_RETRY = 2.0  # seconds between tries of an instance that does not send the outbox

_PENDING_SQL = "status IN ('queued','deferred')"
_FINAL_SQL = "status IN ('delivered','bounced')"

_DELIVERY_COLS = (
    "id, seq, recipient, domain, zone, status, attempts, created, next_attempt, first_failure,"
    " last_attempt, last_response, lease_owner, lease_until"
)

_SCHEMA_V1 = (
    """CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        recipients TEXT NOT NULL,
        headers BYTEA NOT NULL,
        body_size BIGINT NOT NULL,
        meta TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        body_state SMALLINT NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX messages_body_dead ON messages(id) WHERE body_state = 1",
    """CREATE TABLE chunks (
        message_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (message_id, idx)
    )""",
    "ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL",
    """CREATE TABLE pending_bodies (
        message_id TEXT PRIMARY KEY,
        touched DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE deliveries (
        id TEXT NOT NULL,
        seq TEXT NOT NULL,
        recipient TEXT NOT NULL,
        domain TEXT NOT NULL,
        zone TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created DOUBLE PRECISION NOT NULL,
        next_attempt DOUBLE PRECISION NOT NULL,
        first_failure DOUBLE PRECISION,
        last_attempt DOUBLE PRECISION,
        last_response TEXT,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION,
        updated DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (id, seq)
    )""",
    f"CREATE INDEX deliveries_due ON deliveries(next_attempt) WHERE {_PENDING_SQL}",
    f"CREATE INDEX deliveries_zone_due ON deliveries(zone, next_attempt) WHERE {_PENDING_SQL}",
    "CREATE INDEX deliveries_status ON deliveries(status, zone, created)",
    "CREATE INDEX deliveries_lease ON deliveries(lease_owner) WHERE lease_owner IS NOT NULL",
    f"CREATE INDEX deliveries_final ON deliveries(updated) WHERE {_FINAL_SQL}",
    """CREATE TABLE events (
        eid BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL,
        seq TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        response TEXT NOT NULL,
        details TEXT NOT NULL
    )""",
    "CREATE INDEX events_id ON events(id)",
    """CREATE TABLE suppression (
        n BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        UNIQUE (kind, value)
    )""",
    # notifications written in the same transaction as an outcome (zonerelay/bounces/)
    """CREATE TABLE outbox (
        oid BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        message_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try DOUBLE PRECISION NOT NULL,
        last_error TEXT
    )""",
    "CREATE INDEX outbox_message ON outbox(kind, message_id, oid)",
)

#: version -> statements that bring the schema from version - 1 to version
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA_V1}

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection left mid-operation when the server went away
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


#: errors after which the connection is unusable (the others fail one statement only)
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


class SchemaMismatch(StoreError):
    """The database has no zonerelay schema, or one this code does not know: run migrate."""


def _map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreError | ValueError):
        return exc
    mapped: StoreError
    if isinstance(exc, _UNAVAILABLE):
        mapped = StoreUnavailable(f"queue store unavailable: {type(exc).__name__}: {exc}")
    elif isinstance(exc, asyncpg.PostgresError):
        mapped = StoreError(f"queue store error: {exc}")
    else:
        return exc
    mapped.__cause__ = exc
    return mapped


# -- writer operations: run on the writer connection inside the batch transaction -----------
# Each raises its refusals (StoreError subclasses, ValueError) before writing anything.

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
PooledConn: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"


async def _op_write_chunk(conn: Conn, mid: str, idx: int, data: bytes, now: float) -> None:
    # one round trip: the chunk goes in only if its body may take it
    if idx == 0:
        added = await conn.fetchval(
            "WITH body AS (INSERT INTO pending_bodies (message_id, touched)"
            " SELECT $1, $4 WHERE NOT EXISTS (SELECT 1 FROM messages WHERE id = $1)"
            " ON CONFLICT DO NOTHING RETURNING message_id)"
            " INSERT INTO chunks (message_id, idx, data) SELECT message_id, $2, $3 FROM body RETURNING 1",
            mid, idx, data, now,
        )  # fmt: skip
        if added is None:
            raise MessageExists(f"message {mid} is already stored or its body is being written")
        return
    added = await conn.fetchval(
        "WITH body AS (UPDATE pending_bodies SET touched = $4 WHERE message_id = $1 RETURNING message_id)"
        " INSERT INTO chunks (message_id, idx, data) SELECT message_id, $2, $3 FROM body RETURNING 1",
        mid, idx, data, now,
    )  # fmt: skip
    if added is None:
        raise BodyGone(f"uncommitted body of {mid} was collected as an orphan")


async def _op_abort(conn: Conn, mid: str) -> None:
    await conn.execute(
        "WITH body AS (DELETE FROM pending_bodies WHERE message_id = $1 RETURNING message_id)"
        " DELETE FROM chunks WHERE message_id IN (SELECT message_id FROM body)",
        mid,
    )


async def _op_commit(conn: Conn, m: NewMessage, recipients: str, meta: str) -> None:
    seqs = [d.seq for d in m.deliveries]
    if len(set(seqs)) != len(seqs):
        raise StoreError(f"message {m.id} lists a delivery seq twice")
    # one round trip: the message row goes in only if the stored body has the announced size
    # and the id is new; the deliveries and the end of the pending body follow it
    row = await conn.fetchrow(
        "WITH size AS (SELECT coalesce(sum(octet_length(data)), 0) AS n FROM chunks WHERE message_id = $1),"
        " msg AS (INSERT INTO messages"
        "  (id, sender, recipients, headers, body_size, meta, created, body_state)"
        "  SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM size WHERE n = $5"
        "  ON CONFLICT (id) DO NOTHING RETURNING id),"
        " dl AS (INSERT INTO deliveries (id, seq, recipient, domain, zone, status, attempts, created,"
        "  next_attempt, updated) SELECT msg.id, s, r, d, z, 'queued', 0, $7, $9, $7"
        "  FROM msg, unnest($10::text[], $11::text[], $12::text[], $13::text[]) AS t(s, r, d, z)),"
        " pb AS (DELETE FROM pending_bodies WHERE message_id IN (SELECT id FROM msg))"
        " SELECT (SELECT n FROM size), (SELECT count(*) FROM msg),"
        "  EXISTS (SELECT 1 FROM messages WHERE id = $1)",
        m.id, m.sender, recipients, m.headers, m.body_size, meta, m.created,
        BODY_LIVE if m.deliveries else BODY_DEAD, m.not_before,
        seqs, [d.recipient for d in m.deliveries], [d.domain for d in m.deliveries],
        [d.zone for d in m.deliveries],
    )  # fmt: skip
    assert row is not None
    size, inserted, existed = int(row[0]), row[1], row[2]
    if inserted:
        if m.notices:
            await conn.executemany(
                "INSERT INTO outbox (kind, message_id, payload, created, attempts, next_try)"
                " VALUES ($1, $2, $3, $4, 0, $4)",
                [(n.kind, m.id, to_json(n.payload), m.created) for n in m.notices],
            )
        return
    if existed:  # (the snapshot predates this statement's own insert)
        raise MessageExists(f"message {m.id} is already stored")
    if size != m.body_size:
        raise StoreError(f"body of {m.id} has {size} bytes stored, {m.body_size} announced")
    raise MessageExists(f"message {m.id} is already stored")


async def _mark_dead_if_done(conn: Conn, mid: str) -> None:
    # Lock the message row first: two processes finishing the last two deliveries of one
    # message at once would otherwise each still see the other's row pending (READ COMMITTED)
    # and neither would mark the body dead. The second waits here, and its next statement
    # sees the first's commit.
    await conn.execute("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", mid)
    await conn.execute(
        f"UPDATE messages SET body_state = {BODY_DEAD} WHERE id = $1 AND body_state = {BODY_LIVE}"
        f" AND NOT EXISTS (SELECT 1 FROM deliveries WHERE id = $1 AND {_PENDING_SQL})",
        mid,
    )


# One statement applies an outcome: the row is updated only if still pending and, for a
# deferral, not leased live by another owner; its event and outbox entries follow the update.
# It is not applied twice: a retry after a lost answer (its first try committed) finds the
# row it left, ``updated`` being the outcome's own time, and says so in ``recorded`` (read
# from the snapshot before the update) instead of counting a second attempt and queueing each
# notice again under new event ids, which would defeat de-duplication.
_OUTCOME_SQL = f"""
WITH upd AS (
  UPDATE deliveries SET
    status = CASE WHEN $3 OR $4 > 0 THEN $5 ELSE status END,
    attempts = attempts + $4,
    next_attempt = CASE WHEN $3 THEN next_attempt ELSE $6 END,
    first_failure = CASE
      WHEN $3 THEN CASE WHEN $5 = 'bounced' THEN coalesce(first_failure, $7) ELSE first_failure END
      WHEN $4 > 0 THEN coalesce(first_failure, $7) ELSE first_failure END,
    last_attempt = CASE WHEN $4 > 0 THEN $7 ELSE last_attempt END,
    last_response = $8, lease_owner = NULL, lease_until = NULL, updated = $7
  WHERE id = $1 AND seq = $2 AND {_PENDING_SQL}
    AND ($3 OR lease_owner IS NULL OR lease_owner = $9 OR lease_until IS NULL OR lease_until < $7)
    AND (updated <> $7 OR last_response IS DISTINCT FROM $8)
  RETURNING id, seq),
ev AS (INSERT INTO events (id, seq, time, status, response, details)
  SELECT id, seq, $7, $5, $8, $10 FROM upd),
ob AS (INSERT INTO outbox (kind, message_id, payload, created, attempts, next_try)
  SELECT k, upd.id, p, $7, 0, $7 FROM upd, unnest($11::text[], $12::text[]) WITH ORDINALITY AS n(k, p, i)
  ORDER BY i)
SELECT (SELECT count(*) FROM upd) AS applied,
  EXISTS (SELECT 1 FROM deliveries WHERE id = $1 AND seq = $2 AND updated = $7 AND last_response = $8)
    AS recorded
"""


async def _op_outcome(conn: Conn, mid: str, seq: str, owner: str, o: Outcome, details: str) -> bool:
    status = o.status.value
    final = status in FINAL_VALUES
    row = await conn.fetchrow(
        _OUTCOME_SQL,
        mid, seq, final, 1 if o.counts_as_attempt else 0, status, o.next_attempt, o.time, o.response,
        owner, details, [n.kind for n in o.notices], [to_json(n.payload) for n in o.notices],
    )  # fmt: skip
    assert row is not None  # a SELECT without FROM always yields its one row
    if row["recorded"]:
        return True  # by an earlier try whose answer was lost
    if not row["applied"]:
        return False
    if final:
        await _mark_dead_if_done(conn, mid)
    return True


async def _op_outbox_done(conn: Conn, oids: list[int]) -> None:
    await conn.execute("DELETE FROM outbox WHERE oid = ANY($1::bigint[])", oids)


async def _op_outbox_retry(conn: Conn, oid: int, next_try: float, error: str) -> None:
    await conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_try = $1, last_error = $2 WHERE oid = $3",
        next_try,
        error[:1000],
        oid,
    )


async def _delete_chunks(conn: Conn, mid: str, budget: int) -> tuple[int, bool]:
    n = len(
        await conn.fetch(
            "DELETE FROM chunks WHERE message_id = $1 AND idx IN"
            " (SELECT idx FROM chunks WHERE message_id = $1 ORDER BY idx LIMIT $2) RETURNING 1",
            mid,
            budget,
        )
    )
    budget -= n
    if budget > 0:
        return budget, True
    return 0, await conn.fetchval("SELECT 1 FROM chunks WHERE message_id = $1 LIMIT 1", mid) is None


async def _delete_message(conn: Conn, mid: str) -> None:
    await conn.execute("DELETE FROM messages WHERE id = $1", mid)
    await conn.execute("DELETE FROM events WHERE id = $1", mid)
    await conn.execute("DELETE FROM chunks WHERE message_id = $1", mid)


async def _op_gc_dead_bodies(conn: Conn) -> tuple[int, bool]:
    ids = await conn.fetch(
        f"SELECT id FROM messages WHERE body_state = {BODY_DEAD} LIMIT {_GC_MESSAGE_BATCH}"
        " FOR UPDATE SKIP LOCKED"
    )
    budget, removed = _GC_CHUNK_BUDGET, 0
    for (mid,) in ids:
        budget, done = await _delete_chunks(conn, mid, budget)
        if not done:
            return removed, True
        if await conn.fetchval("SELECT 1 FROM deliveries WHERE id = $1 LIMIT 1", mid) is None:
            await _delete_message(conn, mid)
            removed += 1
        else:
            await conn.execute(f"UPDATE messages SET body_state = {BODY_DELETED} WHERE id = $1", mid)
        if budget == 0:
            return removed, True
    return removed, len(ids) == _GC_MESSAGE_BATCH


async def _op_gc_final(conn: Conn, cutoff: float) -> tuple[int, int, bool]:
    rows = await conn.fetch(
        "DELETE FROM deliveries WHERE (id, seq) IN (SELECT id, seq FROM deliveries"
        f" WHERE {_FINAL_SQL} AND updated < $1 LIMIT {_GC_ROW_BATCH} FOR UPDATE SKIP LOCKED) RETURNING id",
        cutoff,
    )
    removed = 0
    for mid in {r[0] for r in rows}:
        if await conn.fetchval("SELECT 1 FROM deliveries WHERE id = $1 LIMIT 1", mid) is None:
            await _delete_message(conn, mid)
            removed += 1
    return len(rows), removed, len(rows) == _GC_ROW_BATCH


async def _op_gc_orphans(conn: Conn, cutoff: float) -> tuple[int, bool]:
    ids = await conn.fetch(
        "SELECT message_id FROM pending_bodies WHERE touched < $1 ORDER BY touched"
        f" LIMIT {_GC_MESSAGE_BATCH} FOR UPDATE SKIP LOCKED",
        cutoff,
    )
    budget, removed = _GC_CHUNK_BUDGET, 0
    for (mid,) in ids:
        budget, done = await _delete_chunks(conn, mid, budget)
        if not done:
            return removed, True
        await conn.execute("DELETE FROM pending_bodies WHERE message_id = $1", mid)
        removed += 1
        if budget == 0:
            return removed, True
    return removed, len(ids) == _GC_MESSAGE_BATCH


async def _op_postpone(conn: Conn, zone: str, domain: str, until: float, now: float) -> int:
    rows = await conn.fetch(
        f"UPDATE deliveries SET next_attempt = $3, updated = $4 WHERE {_PENDING_SQL} AND zone = $1"
        " AND domain = $2 AND next_attempt <= $4 AND (lease_until IS NULL OR lease_until < $4)"
        " RETURNING 1",
        zone,
        domain,
        until,
        now,
    )
    return len(rows)


async def _op_retry_now(conn: Conn, where: str, params: list[Any], now: float) -> int:
    n = len(params)
    rows = await conn.fetch(
        f"UPDATE deliveries SET next_attempt = ${n + 1}, updated = ${n + 1} WHERE {_PENDING_SQL}"
        f" AND next_attempt > ${n + 1} AND (lease_until IS NULL OR lease_until < ${n + 1}) AND {where}"
        " RETURNING 1",
        *params,
        now,
    )
    return len(rows)


async def _op_drop(conn: Conn, where: str, params: list[Any], now: float) -> int:
    dropped = await conn.fetch(
        f"DELETE FROM deliveries WHERE {_PENDING_SQL} AND {where} RETURNING id, seq", *params
    )
    if dropped:
        await conn.executemany(
            "INSERT INTO events (id, seq, time, status, response, details)"
            " VALUES ($1, $2, $3, 'dropped', 'Dropped by the operator', '{}')",
            [(r[0], r[1], now) for r in dropped],
        )
    for mid in {r[0] for r in dropped}:
        await _mark_dead_if_done(conn, mid)
    return len(dropped)


async def _op_add_suppression(conn: Conn, kind: str, value: str, now: float) -> SuppressionEntry:
    await conn.execute(
        "INSERT INTO suppression (id, kind, value, created) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (kind, value) DO NOTHING",
        secrets.token_hex(12),
        kind,
        value,
        now,
    )
    row = await conn.fetchrow(
        "SELECT id, kind, value FROM suppression WHERE kind = $1 AND value = $2", kind, value
    )
    assert row is not None  # inserted or already there, in this transaction
    return suppression_entry(row)


async def _op_delete_suppression(conn: Conn, entry_id: str) -> bool:
    return await conn.fetchval("DELETE FROM suppression WHERE id = $1 RETURNING 1", entry_id) is not None


# (operation, its arguments, future, needs synchronous commit)
_Op = tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], asyncio.Future[Any], bool]


class PostgresStore(GroupCommitStore):
    """QueueStore on a PostgreSQL database shared by every instance; see the module docstring."""

    # what GroupCommitStore submits for commits, outcomes, the outbox, GC and operator actions
    _ops = WriterOps(
        write_chunk=_op_write_chunk,
        abort=_op_abort,
        commit=_op_commit,
        outcome=_op_outcome,
        outbox_done=_op_outbox_done,
        outbox_retry=_op_outbox_retry,
        gc_dead_bodies=_op_gc_dead_bodies,
        gc_final=_op_gc_final,
        gc_orphans=_op_gc_orphans,
        retry_now=_op_retry_now,
        postpone=_op_postpone,
        drop=_op_drop,
        add_suppression=_op_add_suppression,
        delete_suppression=_op_delete_suppression,
        param=lambda n: f"${n}",
    )

    def __init__(
        self, dsn: str, *, pool_size: int = 10, connect_timeout: float = 5.0, writers: int = _WRITERS
    ) -> None:
        self.dsn = dsn
        self._pool_size = pool_size
        self._timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._n_writers = writers
        self._writers: list[asyncio.Task[None]] = []
        self._closed = False
        self._lead_conn: Conn | None = None  # holds the outbox lock while this store sends it
        self._lead_next = 0.0  # monotonic time of the next check (held) or try (not held)

    # -- schema ---------------------------------------------------------------------------
    async def _connect(self) -> Conn:
        try:
            return await asyncpg.connect(
                self.dsn, timeout=self._timeout, server_settings={"synchronous_commit": "on"}
            )
        except BaseException as exc:
            raise _map_error(exc) from exc

    async def schema_version(self) -> int | None:
        """The version recorded in the database, None when it has no zonerelay schema."""
        conn = await self._connect()
        try:
            return await _read_version(conn)
        except BaseException as exc:
            raise _map_error(exc) from exc
        finally:
            await conn.close()

    async def migrate(self) -> tuple[int | None, int]:
        """Create or upgrade the schema; returns (version before, version after)."""
        conn = await self._connect()
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
                before = await _read_version(conn)
                if before is not None and before > SCHEMA_VERSION:
                    raise SchemaMismatch(
                        f"the database has schema version {before}; this zonerelay knows up to "
                        f"{SCHEMA_VERSION}: upgrade zonerelay"
                    )
                if before is None:
                    await conn.execute("CREATE TABLE zonerelay_schema (version INTEGER NOT NULL)")
                    await conn.execute("INSERT INTO zonerelay_schema (version) VALUES (0)")
                for version in range((before or 0) + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[version]:
                        await conn.execute(statement)
                    await conn.execute("UPDATE zonerelay_schema SET version = $1", version)
            return before, SCHEMA_VERSION
        except BaseException as exc:
            raise _map_error(exc) from exc
        finally:
            await conn.close()

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        version = await self.schema_version()
        if version != SCHEMA_VERSION:
            found = "no zonerelay schema" if version is None else f"schema version {version}"
            raise SchemaMismatch(
                f"the PostgreSQL database has {found}, this zonerelay needs version {SCHEMA_VERSION}: "
                "run `zonerelay store migrate -c <config>` first"
            )
        try:
            # the pool runs reads and lease changes only: see "Claims" in the module docstring
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._timeout,
                server_settings={"synchronous_commit": "off"},
            )
        except BaseException as exc:
            raise _map_error(exc) from exc
        self._writers = [
            asyncio.create_task(self._writer_main(i), name=f"zonerelay-pg-writer{i}")
            for i in range(self._n_writers)
        ]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writers:
            self._queue.put_nowait(None)  # after every write already queued
            await asyncio.gather(*self._writers, return_exceptions=True)
        await self._drop_lead()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 10)

    # -- the writer -----------------------------------------------------------------------
    def _submit(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], durable: bool
    ) -> asyncio.Future[T]:
        if self._closed or not self._writers:
            raise StoreError("queue store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((fn, args, fut, durable))
        return fut

    async def _writer_main(self, index: int) -> None:
        q = self._queue
        conn: Conn | None = None
        try:
            while True:
                op = await q.get()
                if op is None:
                    q.put_nowait(None)  # the other writers stop too, after what is queued
                    return
                batch = [op]
                while len(batch) < _MAX_BATCH and not q.empty():
                    nxt = q.get_nowait()
                    if nxt is None:
                        q.put_nowait(None)
                        break
                    batch.append(nxt)
                try:
                    conn = await self._run_batch(conn, batch)
                except BaseException as exc:  # never leave a future waiting
                    settle([(op[2], _map_error(exc), None) for op in batch])
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)

    async def _run_batch(self, conn: Conn | None, batch: list[_Op]) -> Conn | None:
        """Run a batch in one transaction; returns the connection to use next (None: reconnect)."""
        if conn is None or conn.is_closed():
            try:
                conn = await self._connect()
            except StoreError as exc:
                settle([(op[2], _fresh(exc), None) for op in batch])
                return None
        durable = any(op[3] for op in batch)
        results: list[Settled] = []
        try:
            async with conn.transaction():
                if not durable:
                    await conn.execute("SET LOCAL synchronous_commit = off")
                for fn, args, fut, _ in batch:
                    try:
                        results.append((fut, None, await fn(conn, *args)))
                    except (StoreError, ValueError) as exc:  # refused before writing anything
                        results.append((fut, exc, None))
        except BaseException as exc:
            if (
                isinstance(exc, asyncpg.PostgresError)
                and not isinstance(exc, _CONNECTION_LOST)
                and not conn.is_closed()
                and not conn.is_in_transaction()
            ):
                # a statement failed (a constraint, a deadlock with another process...): the
                # transaction is gone; run each operation alone so only the faulty one fails
                if len(batch) > 1:
                    for op in batch:
                        conn = await self._run_batch(conn, [op])
                    return conn
                settle([(batch[0][2], _fresh(_map_error(exc)), None)])
                return conn
            with contextlib.suppress(Exception):
                conn.terminate()
            settle([(op[2], _fresh(_map_error(exc)), None) for op in batch])
            if isinstance(exc, asyncio.CancelledError):
                raise
            return None
        settle(results)
        return conn

    # -- pooled statements ----------------------------------------------------------------
    async def _pooled(self, fn: Callable[[PooledConn], Awaitable[T]]) -> T:
        if self._closed or self._pool is None:
            raise StoreError("queue store is not open")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return await fn(conn)
        except BaseException as exc:
            raise _map_error(exc) from exc

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._pooled(lambda c: c.fetch(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._pooled(lambda c: c.fetchval(sql, *args))

    # -- ingest ---------------------------------------------------------------------------
    async def new_body(self, message_id: str) -> BodyWriter:
        if self._closed or not self._writers:
            raise StoreError("queue store is not open")
        return ChunkWriter(self, message_id)

    # -- delivery -------------------------------------------------------------------------
    async def claim(
        self, owner: str, limit: int, lease_seconds: float, now: float, zones: frozenset[str] | None = None
    ) -> list[Delivery]:
        if limit <= 0 or (zones is not None and not zones):
            return []
        due = f"{_PENDING_SQL} AND next_attempt <= $3 AND (lease_until IS NULL OR lease_until < $3)"
        args: list[Any] = [owner, now + lease_seconds, now, limit]
        if zones is not None:
            due += " AND zone = ANY($5::text[])"
            args.append(sorted(zones))
        sql = (
            "UPDATE deliveries d SET lease_owner = $1, lease_until = $2"
            f" FROM (SELECT id, seq FROM deliveries WHERE {due} ORDER BY next_attempt LIMIT $4"
            " FOR UPDATE SKIP LOCKED) p WHERE d.id = p.id AND d.seq = p.seq"
            f" RETURNING {', '.join('d.' + c.strip() for c in _DELIVERY_COLS.split(','))}"
        )
        rows = await self._fetch(sql, *args)
        out = [delivery(r) for r in rows]
        out.sort(key=lambda d: (d.next_attempt, d.created))
        return out

    async def renew_leases(
        self, owner: str, keys: list[tuple[str, str]], lease_seconds: float, now: float
    ) -> int:
        if not keys:
            return 0
        rows = await self._fetch(
            "UPDATE deliveries d SET lease_until = $1 FROM unnest($3::text[], $4::text[]) AS k(id, seq)"
            f" WHERE d.id = k.id AND d.seq = k.seq AND d.lease_owner = $2 AND d.{_PENDING_SQL} RETURNING 1",
            now + lease_seconds,
            owner,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return len(rows)

    async def release(
        self, owner: str, keys: list[tuple[str, str]] | None = None, *, keep: Sequence[tuple[str, str]] = ()
    ) -> int:
        if keys is None:
            rows = await self._fetch(
                "UPDATE deliveries d SET lease_owner = NULL, lease_until = NULL WHERE d.lease_owner = $1"
                " AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) AS k(id, seq)"
                " WHERE k.id = d.id AND k.seq = d.seq) RETURNING 1",
                owner,
                [k[0] for k in keep],
                [k[1] for k in keep],
            )
            return len(rows)
        if not keys:
            return 0
        rows = await self._fetch(
            "UPDATE deliveries d SET lease_owner = NULL, lease_until = NULL"
            " FROM unnest($2::text[], $3::text[]) AS k(id, seq)"
            " WHERE d.id = k.id AND d.seq = k.seq AND d.lease_owner = $1 RETURNING 1",
            owner,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return len(rows)

    async def read_body(self, message_id: str) -> AsyncIterator[bytes]:
        idx = 0
        sql = (
            "SELECT m.body_state, c.idx, c.data FROM messages m LEFT JOIN LATERAL"
            " (SELECT idx, data FROM chunks WHERE message_id = m.id AND idx >= $2 ORDER BY idx"
            f" LIMIT {_READ_CHUNKS}) c ON true WHERE m.id = $1"
        )
        while True:
            rows = await self._fetch(sql, message_id, idx)  # one statement: one snapshot
            if not rows:
                raise BodyGone(f"message {message_id} is not stored")
            if rows[0][0] != BODY_LIVE:
                raise BodyGone(f"body of {message_id} was collected: no pending delivery needs it")
            n = 0
            for _, i, data in rows:
                if i is None:
                    break
                if i != idx:
                    raise StoreError(f"body of {message_id} is missing chunk {idx}")
                idx += 1
                n += 1
                yield data
            if n < _READ_CHUNKS:
                return

    # -- inspection -----------------------------------------------------------------------
    async def get_message(self, message_id: str) -> StoredMessage | None:
        rows = await self._fetch(
            "SELECT id, sender, recipients, headers, body_size, meta, created FROM messages WHERE id = $1",
            message_id,
        )
        return stored_message(rows[0]) if rows else None

    async def get_deliveries(self, message_id: str) -> list[Delivery]:
        rows = await self._fetch(
            f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE id = $1 ORDER BY length(seq), seq", message_id
        )
        return [delivery(r) for r in rows]

    async def get_events(self, message_id: str) -> list[Event]:
        rows = await self._fetch(
            "SELECT id, seq, time, status, response, details FROM events WHERE id = $1 ORDER BY eid",
            message_id,
        )
        return [event(r) for r in rows]

    async def list_deliveries(
        self,
        statuses: tuple[DeliveryStatus, ...] | None = None,
        zone: str | None = None,
        limit: int = 1000,
    ) -> list[Delivery]:
        where: list[str] = []
        params: list[Any] = []
        if statuses is not None:
            if not statuses:
                return []
            params.append([s.value for s in statuses])
            where.append(f"status = ANY(${len(params)}::text[])")
        if zone is not None:
            params.append(zone)
            where.append(f"zone = ${len(params)}")
        sql = f"SELECT {_DELIVERY_COLS} FROM deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(limit)
        sql += f" ORDER BY created, id, length(seq), seq LIMIT ${len(params)}"
        return [delivery(r) for r in await self._fetch(sql, *params)]

    async def stats(self) -> QueueStats:
        now = time.time()

        async def _stats(conn: PooledConn) -> tuple[list[asyncpg.Record], int, int]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):  # one snapshot
                rows = await conn.fetch("SELECT status, zone, count(*) FROM deliveries GROUP BY status, zone")
                messages = await conn.fetchval("SELECT count(*) FROM messages")
                leased = await conn.fetchval(
                    "SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL AND lease_until >= $1", now
                )
            return rows, messages, leased

        rows, messages, leased = await self._pooled(_stats)
        return queue_stats(rows, messages, leased)

    async def next_due(self) -> float | None:
        value: float | None = await self._fetchval(
            f"SELECT min(next_attempt) FROM deliveries WHERE {_PENDING_SQL}"
        )
        return value

    async def lease_holders(self, now: float) -> dict[str, int]:
        rows = await self._fetch(
            "SELECT lease_owner, count(*) FROM deliveries WHERE lease_owner IS NOT NULL AND lease_until >= $1"
            " GROUP BY lease_owner",
            now,
        )
        return {r[0]: r[1] for r in rows}

    # -- outbox -------------------------------------------------------------------------
    async def outbox_due(
        self,
        kinds: tuple[str, ...],
        now: float,
        limit: int = 100,
        *,
        ordered: bool = True,
        message_id: str | None = None,
    ) -> list[OutboxEntry]:
        if not kinds or limit <= 0:
            return []
        first = (
            " AND NOT EXISTS (SELECT 1 FROM outbox p"
            " WHERE p.kind = o.kind AND p.message_id = o.message_id AND p.oid < o.oid)"
        )
        rows = await self._fetch(
            "SELECT oid, kind, message_id, payload, created, attempts, next_try, last_error FROM outbox o"
            f" WHERE kind = ANY($1::text[]) AND next_try <= $2{first if ordered else ''}"
            " AND ($4::text IS NULL OR message_id = $4) ORDER BY oid LIMIT $3",
            list(kinds),
            now,
            limit,
            message_id,
        )
        return [outbox_entry(r) for r in rows]

    async def outbox_lead(self) -> bool:
        # A session advisory lock on a connection of its own: PostgreSQL frees it when that
        # connection ends, so a dead instance's lock goes with its TCP connection.
        now = time.monotonic()
        if now < self._lead_next:
            return self._lead_conn is not None
        if self._lead_conn is not None:
            try:
                await self._lead_conn.fetchval("SELECT 1", timeout=self._timeout)
                self._lead_next = now + _LEAD_CHECK
                return True
            except Exception:  # the connection, and with it the lock, is gone
                await self._drop_lead()
        self._lead_next = now + _LEAD_RETRY
        if self._closed:
            return False
        conn = await self._connect()
        try:
            held = bool(await conn.fetchval(_OUTBOX_LOCK))
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.close(timeout=self._timeout)
            raise _map_error(exc) from exc
        if not held:
            with contextlib.suppress(Exception):
                await conn.close(timeout=self._timeout)
            return False
        self._lead_conn, self._lead_next = conn, now + _LEAD_CHECK
        return True

    async def _drop_lead(self) -> None:
        conn, self._lead_conn = self._lead_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=self._timeout)

    async def outbox_backlog(self) -> dict[str, int]:
        rows = await self._fetch("SELECT kind, count(*) FROM outbox GROUP BY kind")
        return {r[0]: r[1] for r in rows}

    # -- the suppression list ---------------------------------------------------------------
    async def list_suppressions(self, limit: int = 10000) -> list[SuppressionEntry]:
        rows = await self._fetch("SELECT id, kind, value FROM suppression ORDER BY n LIMIT $1", limit)
        return [suppression_entry(r) for r in rows]

    async def is_suppressed(self, recipients: Iterable[str]) -> set[str]:
        rcpts = list(recipients)
        if not rcpts:
            return set()
        addresses, domains = suppression_keys(rcpts)
        rows = await self._fetch(
            "SELECT kind, value FROM suppression WHERE (kind = 'address' AND value = ANY($1::text[]))"
            " OR (kind = 'domain' AND value = ANY($2::text[]))",
            addresses,
            domains,
        )
        return suppressed(rcpts, {(r[0], r[1]) for r in rows})


async def _read_version(conn: Conn) -> int | None:
    if await conn.fetchval("SELECT to_regclass('zonerelay_schema')") is None:
        return None
    value = await conn.fetchval("SELECT version FROM zonerelay_schema")
    return None if value is None else int(value)


def _fresh(exc: BaseException) -> BaseException:
    """A new exception per future: they are raised in different tasks."""
    if isinstance(exc, StoreError):
        one = type(exc)(*exc.args)
        one.__cause__ = exc.__cause__
        return one
    return exc
