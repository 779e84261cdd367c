"""The embedded queue store: one SQLite file (WAL mode) shared by the processes of one host.

Threads and connections
    One writer thread per store instance owns the only write connection. Coroutines put write
    operations on a queue and await a future. The writer takes the first operation, drains what
    else is queued (up to ``_MAX_BATCH``), runs them all in ONE transaction (``BEGIN IMMEDIATE``
    ... ``COMMIT``, each operation inside its own SAVEPOINT so a failing one fails only its own
    future), and only then resolves the futures, with one ``call_soon_threadsafe`` per batch.
    Concurrent SMTP sessions therefore share commits (group commit). Reads run on a small pool
    of reader threads, each with its own connection; in WAL mode readers never block the writer
    and see a consistent snapshot. No sqlite call ever runs on the event-loop thread.

Several processes
    The SMTP process writes messages while delivery processes claim and update deliveries in
    the same file. Every write transaction starts with ``BEGIN IMMEDIATE`` (take the write lock
    first, so a transaction never fails half way on an upgrade), and ``busy_timeout`` (10 s by
    default) lets a transaction wait for another process's. A claim is one ``UPDATE ...
    RETURNING`` under that lock, so two processes can never lease the same delivery. A store
    that stays locked, a full disk or an I/O error raise ``StoreUnavailable`` (SMTP 451 4.3.0).

Durability: why a returned ``commit_message`` survives a power cut
    The database runs in WAL mode. A transaction commits by appending its pages to the WAL file
    followed by a commit frame; frames carry checksums chained from the start of the WAL, and
    recovery replays frames up to the last valid commit frame. A batch that contains a message
    commit or an outcome (``record_outcome``) runs with ``synchronous=FULL``: the WAL is fsync'd
    before COMMIT returns, so the commit frame is on the platter before any future resolves and
    before the SMTP layer answers 250.

    Batches that contain only body chunks, aborts, leases (claim/renew/release) or garbage
    collection run with ``synchronous=NORMAL`` (no fsync at commit). That is safe because:
    - fsync flushes the whole WAL file, so the later FULL commit of a message also makes every
      earlier frame durable, including that message's chunks written before it (checkpoints in
      NORMAL mode fsync the WAL before copying it back and the database file after, so frames
      from before a WAL restart are durable in the database file);
    - a process crash (``kill -9``) loses nothing even in NORMAL mode: the frames are in the OS
      page cache; only an OS crash or power cut can drop unsynced frames;
    - a lease change lost to a power cut only matters to a holder that survived it, and a power
      cut kills every process sharing this file (SQLite is never shared across hosts); a lost
      chunk write belongs to a submission that was never answered 250; a lost GC step is redone.
    Set ``synchronous_full_always=True`` to use FULL for every batch.

Garbage collection
    A body's chunks are dropped once no pending delivery needs them: the transaction that
    records the last final outcome of a message marks its body dead (``body_state = 1``, after
    which ``read_body`` raises BodyGone), and ``collect_garbage`` deletes the chunks in batches
    bounded by chunk count, so a huge GC never holds the write lock for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
    PENDING_VALUES,
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

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

T = TypeVar("T")

SCHEMA_VERSION = 1

_MAX_BATCH = 500  # write operations per group-commit transaction
_READ_CHUNKS = 4  # body chunks fetched per reader round trip (~1 MiB at 256 KiB chunks)
_GC_CHUNK_BUDGET = 64  # body chunks deleted per GC transaction (~16 MiB)
_GC_ROW_BATCH = 500  # delivery rows deleted per GC transaction
_GC_MESSAGE_BATCH = 100  # messages / orphan bodies looked at per GC transaction

_PENDING_SQL = "status IN ('queued','deferred')"
_FINAL_SQL = "status IN ('delivered','bounced')"

_DELIVERY_COLS = (
    "id, seq, recipient, domain, zone, status, attempts, created, next_attempt, first_failure,"
    " last_attempt, last_response, lease_owner, lease_until"
)

_SCHEMA = (
    """CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        recipients TEXT NOT NULL,           -- JSON array
        headers BLOB NOT NULL,
        body_size INTEGER NOT NULL,
        meta TEXT NOT NULL,                 -- JSON object
        created REAL NOT NULL,
        body_state INTEGER NOT NULL DEFAULT 0
    )""",
    # only messages whose chunks wait for GC are in this index
    "CREATE INDEX messages_body_dead ON messages(id) WHERE body_state = 1",
    # rowid table: chunks are large (overflow pages), WITHOUT ROWID suits small rows only
    """CREATE TABLE chunks (
        message_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (message_id, idx)
    )""",
    # only bodies being received right now (and orphans): small, so GC scans it without an index
    """CREATE TABLE pending_bodies (
        message_id TEXT PRIMARY KEY,
        touched REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE deliveries (
        id TEXT NOT NULL,
        seq TEXT NOT NULL,
        recipient TEXT NOT NULL,
        domain TEXT NOT NULL,
        zone TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        next_attempt REAL NOT NULL,
        first_failure REAL,
        last_attempt REAL,
        last_response TEXT,
        lease_owner TEXT,
        lease_until REAL,
        updated REAL NOT NULL,
        PRIMARY KEY (id, seq)
    )""",
    # claim without zones: walk pending rows in next_attempt order, stop after LIMIT matches
    f"CREATE INDEX deliveries_due ON deliveries(next_attempt) WHERE {_PENDING_SQL}",
    # claim with zones: one ordered range per zone
    f"CREATE INDEX deliveries_zone_due ON deliveries(zone, next_attempt) WHERE {_PENDING_SQL}",
    # stats (GROUP BY status, zone) and list_deliveries by status [and zone] in created order
    "CREATE INDEX deliveries_status ON deliveries(status, zone, created)",
    # release(owner) and the leased count
    "CREATE INDEX deliveries_lease ON deliveries(lease_owner) WHERE lease_owner IS NOT NULL",
    # GC of final rows past retention
    f"CREATE INDEX deliveries_final ON deliveries(updated) WHERE {_FINAL_SQL}",
    """CREATE TABLE events (
        eid INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        seq TEXT NOT NULL,
        time REAL NOT NULL,
        status TEXT NOT NULL,
        response TEXT NOT NULL,
        details TEXT NOT NULL               -- JSON object
    )""",
    "CREATE INDEX events_id ON events(id)",
)

# Added after schema version 1 shipped: created on every open (IF NOT EXISTS), so older
# files gain it without a version bump. UNIQUE(kind, value) is also the ingest lookup index.
_SCHEMA_SUPPRESSION = """CREATE TABLE IF NOT EXISTS suppression (
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,                 -- 'address' or 'domain'
        value TEXT NOT NULL,                -- lower-case
        created REAL NOT NULL,
        UNIQUE (kind, value)
    )"""
# Notifications written in the same transaction as an outcome (zonerelay/bounces/); also
# created on every open. AUTOINCREMENT: oids never reused, so they order and identify events.
_SCHEMA_OUTBOX = (
    """CREATE TABLE IF NOT EXISTS outbox (
        oid INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        message_id TEXT NOT NULL,
        payload TEXT NOT NULL,              -- JSON object
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL,
        last_error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_message ON outbox(kind, message_id, oid)",
)
_SUPPRESSION_LOOKUP_BATCH = 400  # recipients per lookup statement (2 parameters each)
_EMPTY_SUPPRESSION_TTL = 1.0  # seconds; another process adding the first entry waits this long

_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOMEM,
    }
)

# (operation, its arguments, loop of the waiting coroutine, future, needs synchronous=FULL)
_Op = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, asyncio.Future[Any], bool]


def _map_error(exc: BaseException) -> BaseException:
    """Turn a sqlite3 error into the store's exceptions (StoreErrors pass unchanged)."""
    if isinstance(exc, StoreError) or not isinstance(exc, sqlite3.Error):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    mapped: StoreError
    if code is not None and (code & 0xFF) in _UNAVAILABLE_CODES:
        mapped = StoreUnavailable(f"queue store unavailable: {exc}")
    else:
        mapped = StoreError(f"queue store error: {exc}")
    mapped.__cause__ = exc
    return mapped


# -- write operations: run on the writer thread inside the batch transaction ------------------


def _op_write_chunk(conn: sqlite3.Connection, mid: str, idx: int, data: bytes, now: float) -> None:
    if idx == 0:
        if conn.execute("SELECT 1 FROM messages WHERE id = ?", (mid,)).fetchone() is not None:
            raise MessageExists(f"message {mid} is already stored")
        try:
            conn.execute("INSERT INTO pending_bodies (message_id, touched) VALUES (?, ?)", (mid, now))
        except sqlite3.IntegrityError as exc:
            raise MessageExists(f"a body for {mid} is already being written") from exc
    elif conn.execute("UPDATE pending_bodies SET touched = ? WHERE message_id = ?", (now, mid)).rowcount == 0:
        raise BodyGone(f"uncommitted body of {mid} was collected as an orphan")
    conn.execute("INSERT INTO chunks (message_id, idx, data) VALUES (?, ?, ?)", (mid, idx, data))


def _op_abort(conn: sqlite3.Connection, mid: str) -> None:
    # only a body still pending (never a committed message's) is dropped
    if conn.execute("DELETE FROM pending_bodies WHERE message_id = ?", (mid,)).rowcount:
        conn.execute("DELETE FROM chunks WHERE message_id = ?", (mid,))


def _op_commit(conn: sqlite3.Connection, m: NewMessage, recipients: str, meta: str) -> None:
    try:
        conn.execute(
            "INSERT INTO messages (id, sender, recipients, headers, body_size, meta, created, body_state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (m.id, m.sender, recipients, m.headers, m.body_size, meta, m.created,
             BODY_LIVE if m.deliveries else BODY_DEAD),
        )  # fmt: skip
    except sqlite3.IntegrityError as exc:
        raise MessageExists(f"message {m.id} is already stored") from exc
    # length() of a blob reads the record header only, not the overflow pages
    size = conn.execute("SELECT total(length(data)) FROM chunks WHERE message_id = ?", (m.id,)).fetchone()[0]
    if int(size) != m.body_size:
        raise StoreError(f"body of {m.id} has {int(size)} bytes stored, {m.body_size} announced")
    rows = [
        (m.id, d.seq, d.recipient, d.domain, d.zone, m.created, m.not_before, m.created) for d in m.deliveries
    ]
    try:
        conn.executemany(
            "INSERT INTO deliveries (id, seq, recipient, domain, zone, status, attempts, created,"
            " next_attempt, updated) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
            rows,
        )
    except sqlite3.IntegrityError as exc:
        raise StoreError(f"message {m.id} lists a delivery seq twice") from exc
    conn.execute("DELETE FROM pending_bodies WHERE message_id = ?", (m.id,))
    if m.notices:
        conn.executemany(
            "INSERT INTO outbox (kind, message_id, payload, created, attempts, next_try)"
            " VALUES (?, ?, ?, ?, 0, ?)",
            [(n.kind, m.id, to_json(n.payload), m.created, m.created) for n in m.notices],
        )


def _op_claim(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> list[Delivery]:
    rows = conn.execute(sql, params).fetchall()
    out = [delivery(r) for r in rows]
    out.sort(key=lambda d: (d.next_attempt, d.created))  # RETURNING order is unspecified
    return out


def _op_renew(conn: sqlite3.Connection, rows: list[tuple[float, str, str, str]]) -> int:
    cur = conn.executemany(
        "UPDATE deliveries SET lease_until = ? WHERE id = ? AND seq = ? AND lease_owner = ?"
        f" AND {_PENDING_SQL}",
        rows,
    )
    return cur.rowcount


def _op_release(
    conn: sqlite3.Connection, owner: str, keys: list[tuple[str, str]] | None, keep: Sequence[tuple[str, str]]
) -> int:
    if keys is None:
        kept = set(keep)
        held = conn.execute("SELECT id, seq FROM deliveries WHERE lease_owner = ?", (owner,)).fetchall()
        keys = [(mid, seq) for mid, seq in held if (mid, seq) not in kept]
    sql = (
        "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL"
        " WHERE id = ? AND seq = ? AND lease_owner = ?"
    )
    return conn.executemany(sql, [(k[0], k[1], owner) for k in keys]).rowcount


def _op_outcome(conn: sqlite3.Connection, mid: str, seq: str, owner: str, o: Outcome, details: str) -> bool:
    row = conn.execute(
        "SELECT status, lease_owner, lease_until, updated, last_response FROM deliveries"
        " WHERE id = ? AND seq = ?",
        (mid, seq),
    ).fetchone()
    if row is not None and (row[3], row[4]) == (o.time, o.response):
        return True  # recorded by an earlier try whose answer was lost (as in the PostgreSQL store)
    if row is None or row[0] not in PENDING_VALUES:
        return False  # finished (or removed) meanwhile
    status = o.status.value
    final = status in FINAL_VALUES
    if not final and row[1] is not None and row[1] != owner and row[2] is not None and row[2] >= o.time:
        return False  # another owner holds a live lease: its outcome will count, not ours
    tries = 1 if o.counts_as_attempt else 0
    if final:
        conn.execute(
            "UPDATE deliveries SET status = ?, attempts = attempts + ?,"
            " last_attempt = CASE WHEN ? THEN ? ELSE last_attempt END, last_response = ?,"
            " first_failure = CASE WHEN ? = 'bounced' THEN coalesce(first_failure, ?) ELSE first_failure END,"
            " lease_owner = NULL, lease_until = NULL, updated = ? WHERE id = ? AND seq = ?",
            (status, tries, tries, o.time, o.response, status, o.time, o.time, mid, seq),
        )
    elif tries:
        conn.execute(
            "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt = ?,"
            " first_failure = coalesce(first_failure, ?), last_attempt = ?, last_response = ?,"
            " lease_owner = NULL, lease_until = NULL, updated = ? WHERE id = ? AND seq = ?",
            (status, o.next_attempt, o.time, o.time, o.response, o.time, mid, seq),
        )
    else:
        conn.execute(
            "UPDATE deliveries SET next_attempt = ?, last_response = ?, lease_owner = NULL,"
            " lease_until = NULL, updated = ? WHERE id = ? AND seq = ?",
            (o.next_attempt, o.response, o.time, mid, seq),
        )
    conn.execute(
        "INSERT INTO events (id, seq, time, status, response, details) VALUES (?, ?, ?, ?, ?, ?)",
        (mid, seq, o.time, status, o.response, details),
    )
    if o.notices:  # the outbox: same transaction as the new state
        conn.executemany(
            "INSERT INTO outbox (kind, message_id, payload, created, attempts, next_try)"
            " VALUES (?, ?, ?, ?, 0, ?)",
            [(n.kind, mid, to_json(n.payload), o.time, o.time) for n in o.notices],
        )
    if (
        final
        and conn.execute(f"SELECT 1 FROM deliveries WHERE id = ? AND {_PENDING_SQL}", (mid,)).fetchone()
        is None
    ):
        conn.execute(
            f"UPDATE messages SET body_state = {BODY_DEAD} WHERE id = ? AND body_state = {BODY_LIVE}",
            (mid,),
        )
    return True


def _read_outbox_due(
    conn: sqlite3.Connection,
    kinds: tuple[str, ...],
    now: float,
    limit: int,
    ordered: bool,
    message_id: str | None,
) -> list[OutboxEntry]:
    marks = ", ".join("?" * len(kinds))
    first = (
        " AND NOT EXISTS (SELECT 1 FROM outbox p"
        " WHERE p.kind = o.kind AND p.message_id = o.message_id AND p.oid < o.oid)"
    )
    sql = (
        "SELECT oid, kind, message_id, payload, created, attempts, next_try, last_error FROM outbox o"
        f" WHERE kind IN ({marks}) AND next_try <= ?{first if ordered else ''}"
        f"{' AND message_id = ?' if message_id is not None else ''} ORDER BY oid LIMIT ?"
    )
    one = (message_id,) if message_id is not None else ()
    return [outbox_entry(r) for r in conn.execute(sql, (*kinds, now, *one, limit))]


def _op_outbox_done(conn: sqlite3.Connection, oids: list[int]) -> None:
    conn.executemany("DELETE FROM outbox WHERE oid = ?", [(oid,) for oid in oids])


def _op_outbox_retry(conn: sqlite3.Connection, oid: int, next_try: float, error: str) -> None:
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_try = ?, last_error = ? WHERE oid = ?",
        (next_try, error[:1000], oid),
    )


def _read_outbox_backlog(conn: sqlite3.Connection) -> dict[str, int]:
    return {k: n for k, n in conn.execute("SELECT kind, count(*) FROM outbox GROUP BY kind")}


def _delete_chunks(conn: sqlite3.Connection, mid: str, budget: int) -> tuple[int, bool]:
    """Delete up to ``budget`` chunks of a body; returns (budget left, all chunks gone)."""
    n = conn.execute(
        "DELETE FROM chunks WHERE rowid IN (SELECT rowid FROM chunks WHERE message_id = ? LIMIT ?)",
        (mid, budget),
    ).rowcount
    budget -= n
    if budget > 0:
        return budget, True
    return 0, conn.execute("SELECT 1 FROM chunks WHERE message_id = ?", (mid,)).fetchone() is None


def _delete_message(conn: sqlite3.Connection, mid: str) -> None:
    conn.execute("DELETE FROM messages WHERE id = ?", (mid,))
    conn.execute("DELETE FROM events WHERE id = ?", (mid,))
    conn.execute("DELETE FROM chunks WHERE message_id = ?", (mid,))  # normally none left


def _op_gc_dead_bodies(conn: sqlite3.Connection) -> tuple[int, bool]:
    """Delete chunks of dead bodies; returns (messages removed, more to do)."""
    ids = conn.execute(
        f"SELECT id FROM messages WHERE body_state = {BODY_DEAD} LIMIT {_GC_MESSAGE_BATCH}"
    ).fetchall()
    budget, removed = _GC_CHUNK_BUDGET, 0
    for (mid,) in ids:
        budget, done = _delete_chunks(conn, mid, budget)
        if not done:
            return removed, True
        if conn.execute("SELECT 1 FROM deliveries WHERE id = ?", (mid,)).fetchone() is None:
            _delete_message(conn, mid)
            removed += 1
        else:
            conn.execute(f"UPDATE messages SET body_state = {BODY_DELETED} WHERE id = ?", (mid,))
        if budget == 0:
            return removed, True
    return removed, len(ids) == _GC_MESSAGE_BATCH


def _op_gc_final(conn: sqlite3.Connection, cutoff: float) -> tuple[int, int, bool]:
    """Delete final deliveries last changed before cutoff, then their messages if no row is left."""
    rows = conn.execute(
        f"DELETE FROM deliveries WHERE rowid IN (SELECT rowid FROM deliveries INDEXED BY deliveries_final"
        f" WHERE {_FINAL_SQL}"
        f" AND updated < ? LIMIT {_GC_ROW_BATCH}) RETURNING id",
        (cutoff,),
    ).fetchall()
    removed = 0
    for mid in {r[0] for r in rows}:
        if conn.execute("SELECT 1 FROM deliveries WHERE id = ?", (mid,)).fetchone() is None:
            _delete_message(conn, mid)
            removed += 1
    return len(rows), removed, len(rows) == _GC_ROW_BATCH


def _op_gc_orphans(conn: sqlite3.Connection, cutoff: float) -> tuple[int, bool]:
    """Delete uncommitted bodies untouched since cutoff; returns (bodies removed, more to do)."""
    ids = conn.execute(
        f"SELECT message_id FROM pending_bodies WHERE touched < ? ORDER BY touched LIMIT {_GC_MESSAGE_BATCH}",
        (cutoff,),
    ).fetchall()
    budget, removed = _GC_CHUNK_BUDGET, 0
    for (mid,) in ids:
        budget, done = _delete_chunks(conn, mid, budget)
        if not done:
            return removed, True
        conn.execute("DELETE FROM pending_bodies WHERE message_id = ?", (mid,))
        removed += 1
        if budget == 0:
            return removed, True
    return removed, len(ids) == _GC_MESSAGE_BATCH


# -- operator actions and the suppression list ---------------------------------------------


def _op_postpone(conn: sqlite3.Connection, zone: str, domain: str, until: float, now: float) -> int:
    sql = (
        f"UPDATE deliveries SET next_attempt = ?, updated = ? WHERE {_PENDING_SQL} AND zone = ?"
        " AND domain = ? AND next_attempt <= ? AND (lease_until IS NULL OR lease_until < ?)"
    )
    return conn.execute(sql, (until, now, zone, domain, now, now)).rowcount


def _op_retry_now(conn: sqlite3.Connection, where: str, params: list[Any], now: float) -> int:
    sql = (
        f"UPDATE deliveries SET next_attempt = ?, updated = ? WHERE {_PENDING_SQL} AND next_attempt > ?"
        f" AND (lease_until IS NULL OR lease_until < ?) AND {where}"
    )
    return conn.execute(sql, (now, now, now, now, *params)).rowcount


def _op_drop(conn: sqlite3.Connection, where: str, params: list[Any], now: float) -> int:
    rows = conn.execute(f"DELETE FROM deliveries WHERE {_PENDING_SQL} AND {where} RETURNING id, seq", params)
    dropped = rows.fetchall()
    conn.executemany(
        "INSERT INTO events (id, seq, time, status, response, details) VALUES (?, ?, ?, 'dropped', ?, '{}')",
        [(mid, seq, now, "Dropped by the operator") for mid, seq in dropped],
    )
    for mid in {mid for mid, _ in dropped}:
        pending = conn.execute(f"SELECT 1 FROM deliveries WHERE id = ? AND {_PENDING_SQL}", (mid,))
        if pending.fetchone() is None:
            conn.execute(
                f"UPDATE messages SET body_state = {BODY_DEAD} WHERE id = ? AND body_state = {BODY_LIVE}",
                (mid,),
            )
    return len(dropped)


def _op_add_suppression(conn: sqlite3.Connection, kind: str, value: str, now: float) -> SuppressionEntry:
    conn.execute(
        "INSERT INTO suppression (id, kind, value, created) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (kind, value) DO NOTHING",
        (secrets.token_hex(12), kind, value, now),
    )
    row = conn.execute("SELECT id, kind, value FROM suppression WHERE kind = ? AND value = ?", (kind, value))
    return suppression_entry(row.fetchone())


def _op_delete_suppression(conn: sqlite3.Connection, entry_id: str) -> bool:
    return conn.execute("DELETE FROM suppression WHERE id = ?", (entry_id,)).rowcount > 0


def _read_suppressions(conn: sqlite3.Connection, limit: int) -> list[SuppressionEntry]:
    sql = "SELECT id, kind, value FROM suppression ORDER BY created, rowid LIMIT ?"
    return [suppression_entry(r) for r in conn.execute(sql, (limit,))]


def _read_suppressed(conn: sqlite3.Connection, recipients: list[str]) -> tuple[set[str], bool]:
    """(the suppressed recipients, whether the list is empty)."""
    if conn.execute("SELECT 1 FROM suppression LIMIT 1").fetchone() is None:
        return set(), True
    hits: set[tuple[str, str]] = set()
    for start in range(0, len(recipients), _SUPPRESSION_LOOKUP_BATCH):
        batch = recipients[start : start + _SUPPRESSION_LOOKUP_BATCH]
        addresses, domains = suppression_keys(batch)
        sql = (
            "SELECT kind, value FROM suppression"
            f" WHERE (kind = 'address' AND value IN ({', '.join('?' * len(addresses))}))"
            f" OR (kind = 'domain' AND value IN ({', '.join('?' * len(domains))}))"
        )
        hits.update(conn.execute(sql, (*addresses, *domains)).fetchall())
    return suppressed(recipients, hits), False


# -- read operations: run on a reader thread ------------------------------------------------


def _read_message(conn: sqlite3.Connection, mid: str) -> StoredMessage | None:
    r = conn.execute(
        "SELECT id, sender, recipients, headers, body_size, meta, created FROM messages WHERE id = ?", (mid,)
    ).fetchone()
    return None if r is None else stored_message(r)


def _read_deliveries(conn: sqlite3.Connection, mid: str) -> list[Delivery]:
    sql = f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE id = ? ORDER BY length(seq), seq"
    return [delivery(r) for r in conn.execute(sql, (mid,))]


def _read_events(conn: sqlite3.Connection, mid: str) -> list[Event]:
    sql = "SELECT id, seq, time, status, response, details FROM events WHERE id = ? ORDER BY eid"
    return [event(r) for r in conn.execute(sql, (mid,))]


def _read_list(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Delivery]:
    return [delivery(r) for r in conn.execute(sql, params)]


def _read_stats(conn: sqlite3.Connection, now: float) -> QueueStats:
    conn.execute("BEGIN")  # one snapshot for all counts
    try:
        rows = conn.execute("SELECT status, zone, count(*) FROM deliveries GROUP BY status, zone").fetchall()
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        leased = conn.execute(
            "SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL AND lease_until >= ?", (now,)
        ).fetchone()[0]
    finally:
        conn.execute("COMMIT")
    return queue_stats(rows, messages, leased)


def _read_lease_holders(conn: sqlite3.Connection, now: float) -> dict[str, int]:
    sql = (
        "SELECT lease_owner, count(*) FROM deliveries INDEXED BY deliveries_lease"
        " WHERE lease_owner IS NOT NULL AND lease_until >= ? GROUP BY lease_owner"
    )
    return {owner: n for owner, n in conn.execute(sql, (now,))}


def _read_next_due(conn: sqlite3.Connection) -> float | None:
    value: float | None = conn.execute(
        f"SELECT min(next_attempt) FROM deliveries INDEXED BY deliveries_due WHERE {_PENDING_SQL}"
    ).fetchone()[0]
    return value


def _read_chunks(conn: sqlite3.Connection, mid: str, idx: int) -> list[tuple[int, bytes]]:
    # one snapshot: a body still live here has all its chunks (GC deletes only dead bodies)
    conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT body_state FROM messages WHERE id = ?", (mid,)).fetchone()
        if row is None:
            raise BodyGone(f"message {mid} is not stored")
        if row[0] != BODY_LIVE:
            raise BodyGone(f"body of {mid} was collected: no pending delivery needs it")
        rows: list[tuple[int, bytes]] = conn.execute(
            "SELECT idx, data FROM chunks WHERE message_id = ? AND idx >= ?"
            f" ORDER BY idx LIMIT {_READ_CHUNKS}",
            (mid, idx),
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    return rows


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive flock, or None if another has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class SqliteStore(GroupCommitStore):
    """QueueStore on one SQLite file; see the module docstring for threads and durability."""

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
        param=lambda n: "?",
    )

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 10.0,
        readers: int = 4,
        synchronous_full_always: bool = False,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._n_readers = readers
        self._full_always = synchronous_full_always
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._sync_level = -1  # synchronous level of the write connection, set per batch
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()
        self._closed = False
        self._claim_sql: dict[int, str] = {}
        # An empty suppression list (the usual case) is believed for a second without asking:
        # saves a reader round trip per ingested message. Changes made through this store reset it.
        self._suppression_empty_until = 0.0
        self._lead_fd: int | None = None  # the locked file while this store sends the outbox

    # -- plumbing -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False,
            cached_statements=256,
        )  # fmt: skip
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _init_db(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            self._sync_level = 2
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA cache_size = -16384")
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: schema version {version}, this code knows {SCHEMA_VERSION}"
                    )
                conn.execute(_SCHEMA_SUPPRESSION)
                for statement in _SCHEMA_OUTBOX:
                    conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _writer_main(self, ready: ThreadFuture[None]) -> None:
        try:
            conn = self._init_db()
        except BaseException as exc:
            ready.set_exception(_map_error(exc))
            return
        ready.set_result(None)
        q = self._queue
        try:
            stop = False
            while not stop:
                op = q.get()
                if op is None:
                    break
                batch = [op]
                while len(batch) < _MAX_BATCH:
                    try:
                        op = q.get_nowait()
                    except queue.Empty:
                        break
                    if op is None:
                        stop = True
                        break
                    batch.append(op)
                try:
                    self._run_batch(conn, batch)
                except BaseException as exc:  # never let the writer die with futures waiting
                    self._rollback(conn)
                    self._fail(batch, exc)
        finally:
            conn.close()
            leftover: list[_Op] = []
            while True:
                try:
                    op = q.get_nowait()
                except queue.Empty:
                    break
                if op is not None:
                    leftover.append(op)
            self._fail(leftover, StoreError("queue store is closed"))

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        level = 2 if self._full_always or any(op[4] for op in batch) else 1
        try:
            if level != self._sync_level:
                conn.execute("PRAGMA synchronous = FULL" if level == 2 else "PRAGMA synchronous = NORMAL")
                self._sync_level = level
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(batch, exc)
            return
        settled: list[tuple[asyncio.AbstractEventLoop, Settled]] = []
        if len(batch) == 1:
            fn, args, loop, fut, _ = batch[0]
            try:
                result = fn(conn, *args)
            except Exception as exc:
                self._rollback(conn)
                self._fail(batch, exc)
                return
            settled.append((loop, (fut, None, result)))
        else:
            for fn, args, loop, fut, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn, *args)
                except Exception as exc:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                    if not conn.in_transaction:  # the error rolled back the whole transaction
                        self._rollback(conn)
                        self._fail(batch, exc)
                        return
                    settled.append((loop, (fut, _map_error(exc), None)))
                else:
                    conn.execute("RELEASE op")
                    settled.append((loop, (fut, None, result)))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            self._fail(batch, exc)
            return
        self._settle(settled)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _fail(self, batch: Iterable[_Op], exc: BaseException) -> None:
        mapped = _map_error(exc)
        settled: list[tuple[asyncio.AbstractEventLoop, Settled]] = []
        for _, _, loop, fut, _ in batch:
            # a fresh exception per future: they are raised in different tasks
            one = mapped
            if isinstance(mapped, StoreError):
                one = type(mapped)(*mapped.args)
                one.__cause__ = mapped.__cause__ or (exc if exc is not mapped else None)
            settled.append((loop, (fut, one, None)))
        self._settle(settled)

    @staticmethod
    def _settle(settled: list[tuple[asyncio.AbstractEventLoop, Settled]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Settled]] = {}
        for loop, item in settled:
            by_loop.setdefault(loop, []).append(item)
        for loop, items in by_loop.items():
            # RuntimeError: the loop is closed, nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, items)

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], durable: bool) -> asyncio.Future[T]:
        if self._closed or self._thread is None:
            raise StoreError("queue store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, args, loop, fut, durable))
        return fut

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._read_lock:
                self._read_conns.append(conn)
        return conn

    def _run_read(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._reader_conn()
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                self._rollback(conn)
            raise _map_error(exc) from exc

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed or self._readers is None:
            raise StoreError("queue store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, fn, args)

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        if self._thread is not None:
            return
        ready: ThreadFuture[None] = ThreadFuture()
        thread = threading.Thread(
            target=self._writer_main, args=(ready,), name="zonerelay-store-writer", daemon=True
        )
        thread.start()
        await asyncio.wrap_future(ready)
        self._thread = thread
        self._readers = ThreadPoolExecutor(self._n_readers, thread_name_prefix="zonerelay-store-read")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)  # after every write already queued
            await asyncio.to_thread(self._thread.join)
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, True)
        with self._read_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
        if self._lead_fd is not None:
            os.close(self._lead_fd)  # frees the lock
            self._lead_fd = None

    # -- ingest ---------------------------------------------------------------------------
    async def new_body(self, message_id: str) -> BodyWriter:
        if self._closed or self._thread is None:
            raise StoreError("queue store is not open")
        return ChunkWriter(self, message_id)

    # -- delivery -------------------------------------------------------------------------
    def _claim_statement(self, zones: int) -> str:
        sql = self._claim_sql.get(zones)
        if sql is not None:
            return sql
        # INDEXED BY pins the plan: without ANALYZE statistics the planner picks deliveries_status
        # (status = ?) and sorts every pending row, which is not flat with 100 000 deferred rows.
        due = f"{_PENDING_SQL} AND next_attempt <= :now AND (lease_until IS NULL OR lease_until < :now)"
        if zones == 0:
            pick = (
                f"SELECT rowid FROM deliveries INDEXED BY deliveries_due WHERE {due}"
                " ORDER BY next_attempt LIMIT :limit"
            )
        else:
            # one ordered index range per zone, each stopping after :limit rows, then merged
            parts = " UNION ALL ".join(
                "SELECT * FROM (SELECT rowid AS r, next_attempt AS n"
                f" FROM deliveries INDEXED BY deliveries_zone_due WHERE zone = :z{i} AND {due}"
                " ORDER BY next_attempt LIMIT :limit)"
                for i in range(zones)
            )
            pick = f"SELECT r FROM ({parts}) ORDER BY n LIMIT :limit"
        sql = (
            f"UPDATE deliveries SET lease_owner = :owner, lease_until = :until WHERE rowid IN ({pick})"
            f" RETURNING {_DELIVERY_COLS}"
        )
        self._claim_sql[zones] = sql
        return sql

    async def claim(
        self, owner: str, limit: int, lease_seconds: float, now: float, zones: frozenset[str] | None = None
    ) -> list[Delivery]:
        if limit <= 0 or (zones is not None and not zones):
            return []
        params: dict[str, Any] = {"owner": owner, "until": now + lease_seconds, "now": now, "limit": limit}
        if zones is None:
            sql = self._claim_statement(0)
        else:
            sql = self._claim_statement(len(zones))
            for i, zone in enumerate(sorted(zones)):
                params[f"z{i}"] = zone
        return await self._submit(_op_claim, (sql, params), False)

    async def renew_leases(
        self, owner: str, keys: list[tuple[str, str]], lease_seconds: float, now: float
    ) -> int:
        if not keys:
            return 0
        until = now + lease_seconds
        return await self._submit(_op_renew, ([(until, k[0], k[1], owner) for k in keys],), False)

    async def release(
        self, owner: str, keys: list[tuple[str, str]] | None = None, *, keep: Sequence[tuple[str, str]] = ()
    ) -> int:
        if keys is not None and not keys:
            return 0
        args = (owner, None if keys is None else list(keys), list(keep))
        return await self._submit(_op_release, args, False)

    async def read_body(self, message_id: str) -> AsyncIterator[bytes]:
        idx = 0
        while True:
            rows = await self._read(_read_chunks, message_id, idx)
            for i, data in rows:
                if i != idx:
                    raise StoreError(f"body of {message_id} is missing chunk {idx}")
                idx += 1
                yield data
            if len(rows) < _READ_CHUNKS:
                return

    # -- inspection -----------------------------------------------------------------------
    async def get_message(self, message_id: str) -> StoredMessage | None:
        return await self._read(_read_message, message_id)

    async def get_deliveries(self, message_id: str) -> list[Delivery]:
        return await self._read(_read_deliveries, message_id)

    async def get_events(self, message_id: str) -> list[Event]:
        return await self._read(_read_events, message_id)

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
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(s.value for s in statuses)
        if zone is not None:
            where.append("zone = ?")
            params.append(zone)
        sql = f"SELECT {_DELIVERY_COLS} FROM deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, rowid LIMIT ?"
        params.append(limit)
        return await self._read(_read_list, sql, tuple(params))

    async def stats(self) -> QueueStats:
        return await self._read(_read_stats, time.time())

    async def next_due(self) -> float | None:
        return await self._read(_read_next_due)

    async def lease_holders(self, now: float) -> dict[str, int]:
        return await self._read(_read_lease_holders, now)

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
        return await self._read(_read_outbox_due, kinds, now, limit, ordered, message_id)

    async def outbox_lead(self) -> bool:
        # An flock on a file beside the database: the kernel frees it when the process ends,
        # however it ends, so a second `serve` on the same file takes over from a dead one.
        if self._lead_fd is None and not self._closed:
            self._lead_fd = _try_lock(self.path.with_name(self.path.name + ".outbox-lock"))
        return self._lead_fd is not None

    async def outbox_backlog(self) -> dict[str, int]:
        return await self._read(_read_outbox_backlog)

    # -- the suppression list ---------------------------------------------------------------
    async def add_suppression(
        self, *, address: str | None = None, domain: str | None = None
    ) -> SuppressionEntry:
        entry = await super().add_suppression(address=address, domain=domain)
        self._suppression_empty_until = 0.0
        return entry

    async def list_suppressions(self, limit: int = 10000) -> list[SuppressionEntry]:
        return await self._read(_read_suppressions, limit)

    async def is_suppressed(self, recipients: Iterable[str]) -> set[str]:
        rcpts = list(recipients)
        if not rcpts or time.monotonic() < self._suppression_empty_until:
            return set()
        found, empty = await self._read(_read_suppressed, rcpts)
        if empty:
            self._suppression_empty_until = time.monotonic() + _EMPTY_SUPPRESSION_TTL
        return found
