"""SqliteStore: the contract suite, plus what only the embedded backend promises.

Some tests reach into the writer thread through ``SqliteStore._submit`` to read or set
connection state (synchronous level, max_page_count, a progress counter). They test the
mechanism, not the interface, and live here rather than in the contract.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.store.contract import T0, StoreContract, delivered, put_message, read_all
from zonerelay.store.base import (
    MessageExists,
    NewDelivery,
    NewMessage,
    StoreError,
    StoreUnavailable,
)
from zonerelay.store.ids import new_queue_id
from zonerelay.store.sqlite import SCHEMA_VERSION, SqliteStore


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SqliteStore]:
        s = SqliteStore(tmp_path / "data" / "queue.db")
        await s.open()
        yield s
        await s.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "queue.db")
    await s.open()
    yield s
    await s.close()


async def on_writer(store: SqliteStore, fn: Callable[..., Any], *args: Any, durable: bool = False) -> Any:
    """Run fn(conn, *args) on the writer thread, inside a write transaction."""
    return await store._submit(fn, args, durable)


def _synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=10)


# -- durability settings ---------------------------------------------------------------------


async def test_wal_mode_and_schema_version(store: SqliteStore) -> None:
    conn = _raw(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


async def test_synchronous_full_for_durable_batches_only(store: SqliteStore) -> None:
    assert await on_writer(store, _synchronous, durable=True) == 2  # FULL
    assert await on_writer(store, _synchronous, durable=False) == 1  # NORMAL


async def test_commit_and_outcome_batches_run_with_synchronous_full(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    levels: list[tuple[str, int]] = []
    run_batch = store._run_batch

    def recording(conn: sqlite3.Connection, batch: list[Any]) -> None:
        run_batch(conn, batch)
        levels.append((batch[0][0].__name__, store._sync_level))

    monkeypatch.setattr(store, "_run_batch", recording)
    msg = await put_message(store, body=b"x" * 10)
    (d,) = await store.claim("w1", 1, 60, T0)
    await store.record_outcome(d.key, "w1", delivered(T0 + 1))
    await on_writer(store, lambda conn: None)  # the outcome's batch has been recorded by now
    assert levels[:4] == [
        ("_op_write_chunk", 1),
        ("_op_commit", 2),
        ("_op_claim", 1),
        ("_op_outcome", 2),
    ]
    assert msg.id == d.id


async def test_synchronous_full_always(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "q.db", synchronous_full_always=True)
    await s.open()
    try:
        assert await on_writer(s, _synchronous, durable=False) == 2
    finally:
        await s.close()


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "queue.db"
    s = SqliteStore(path)
    await s.open()
    msg = await put_message(s, body=b"persisted\r\n")
    await s.close()
    s = SqliteStore(path)
    await s.open()
    try:
        assert await s.get_message(msg.id) is not None
        assert b"".join(await read_all(s, msg.id)) == b"persisted\r\n"
    finally:
        await s.close()


async def test_close_finishes_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    s = SqliteStore(path)
    await s.open()
    ids = [new_queue_id() for _ in range(20)]
    commits = [asyncio.ensure_future(s.commit_message(_message(mid, 0))) for mid in ids]
    await asyncio.sleep(0)  # let every commit reach the writer queue
    await s.close()
    await asyncio.gather(*commits)
    with pytest.raises(StoreError):
        await s.commit_message(_message(new_queue_id(), 0))
    s = SqliteStore(path)
    await s.open()
    try:
        assert (await s.stats()).messages == 20
    finally:
        await s.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    conn = _raw(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    s = SqliteStore(path)
    with pytest.raises(StoreError, match="schema version 99"):
        await s.open()
    await s.close()


# -- group commit --------------------------------------------------------------------------


def _message(mid: str, body_size: int, n: int = 1) -> NewMessage:
    deliveries = tuple(
        NewDelivery(f"{i:03d}", f"r{i}@x.example", "x.example", "default") for i in range(1, n + 1)
    )
    rcpts = tuple(d.recipient for d in deliveries)
    return NewMessage(mid, "s@x.example", rcpts, b"Subject: t\r\n\r\n", body_size, {}, T0, T0, deliveries)


async def test_group_commit_shares_one_transaction_and_isolates_failures(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = await put_message(store)
    bodies = {}
    for i in range(10):
        mid = new_queue_id()
        writer = await store.new_body(mid)
        await writer.write(b"body %d\r\n" % i)
        bodies[mid] = b"body %d\r\n" % i

    sizes: list[int] = []
    run_batch = store._run_batch

    def recording(conn: sqlite3.Connection, batch: list[Any]) -> None:
        sizes.append(len(batch))
        run_batch(conn, batch)

    monkeypatch.setattr(store, "_run_batch", recording)
    started, gate = threading.Event(), threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        started.set()
        gate.wait(10)

    blocker = asyncio.ensure_future(on_writer(store, block))
    assert await asyncio.to_thread(started.wait, 10)  # the writer is busy from here on
    mids = list(bodies)
    commits = [
        asyncio.ensure_future(store.commit_message(_message(mid, len(bodies[mid])))) for mid in mids[:5]
    ]
    commits.append(asyncio.ensure_future(store.commit_message(_message(existing.id, 0))))  # duplicate
    commits.append(asyncio.ensure_future(store.commit_message(_message(mids[5], 999))))  # wrong size
    commits += [
        asyncio.ensure_future(store.commit_message(_message(mid, len(bodies[mid])))) for mid in mids[6:]
    ]
    await asyncio.sleep(0)
    gate.set()
    await blocker
    results = await asyncio.gather(*commits, return_exceptions=True)

    assert sizes == [1, 11]  # the blocker alone, then all eleven commits in one transaction
    assert isinstance(results[5], MessageExists)
    assert isinstance(results[6], StoreError) and "announced" in str(results[6])
    assert [r for i, r in enumerate(results) if i not in (5, 6)] == [None] * 9
    for mid in mids[:5] + mids[6:]:
        assert b"".join(await read_all(store, mid)) == bodies[mid]
    assert await store.get_message(mids[5]) is None
    assert (await store.stats()).messages == 10  # existing + 9


async def test_commit_checks_body_size(store: SqliteStore) -> None:
    mid = new_queue_id()
    writer = await store.new_body(mid)
    await writer.write(b"12345")
    with pytest.raises(StoreError, match="announced"):
        await store.commit_message(_message(mid, 4))
    await store.commit_message(_message(mid, 5))
    assert b"".join(await read_all(store, mid)) == b"12345"


async def test_write_to_an_existing_message_id_is_refused(store: SqliteStore) -> None:
    msg = await put_message(store, body=b"first\r\n")
    writer = await store.new_body(msg.id)
    with pytest.raises(MessageExists):
        await writer.write(b"second\r\n")
    await writer.abort()
    assert b"".join(await read_all(store, msg.id)) == b"first\r\n"


# -- unavailable store -----------------------------------------------------------------------


async def test_locked_store_raises_store_unavailable(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "queue.db", busy_timeout=0.2)
    await s.open()
    other = _raw(s.path)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable):
            await s.commit_message(_message(new_queue_id(), 0))
        # reads are not blocked by a writer in WAL mode
        assert (await s.stats()).messages == 0
        other.execute("COMMIT")
        await s.commit_message(_message(new_queue_id(), 0))
        assert (await s.stats()).messages == 1
    finally:
        other.close()
        await s.close()


def _limit_pages(conn: sqlite3.Connection, extra: int | None) -> None:
    if extra is None:
        conn.execute("PRAGMA max_page_count = 1073741823")
    else:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra}")


async def test_full_disk_raises_store_unavailable(store: SqliteStore) -> None:
    await on_writer(store, _limit_pages, 2)
    with pytest.raises(StoreUnavailable):
        await put_message(store, body=b"x" * 200_000)
    # the writer survives and works again once there is room
    await on_writer(store, _limit_pages, None)
    msg = await put_message(store, body=b"x" * 200_000)
    assert len(b"".join(await read_all(store, msg.id))) == 200_000


# -- claim cost stays flat -------------------------------------------------------------------


def _fill(
    path: Path, n: int, *, zone: str, next_attempt: float, status: str = "deferred", tag: int = 0
) -> None:
    conn = _raw(path)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO deliveries (id, seq, recipient, domain, zone, status, attempts, created,"
            " next_attempt, updated) VALUES (?, '001', 'r@x.example', 'x.example', ?, ?, 1, ?, ?, ?)",
            ((f"{tag:02x}{i:016x}", zone, status, T0, next_attempt, T0) for i in range(n)),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


class _Steps:
    """Counts SQLite VM steps (in units of 100) run by the writer connection."""

    def __init__(self) -> None:
        self.n = 0

    def tick(self) -> int:
        self.n += 1
        return 0

    def install(self, conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(self.tick, 100)

    @staticmethod
    def remove(conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(None, 0)


async def _claim_steps(store: SqliteStore, zones: frozenset[str] | None) -> tuple[int, int]:
    steps = _Steps()
    await on_writer(store, steps.install)
    got = await store.claim("w1", 50, 60, T0, zones=zones)
    await on_writer(store, steps.remove)
    await store.release("w1")
    return len(got), steps.n


async def test_claim_does_not_scan_100k_waiting_rows(store: SqliteStore) -> None:
    for _ in range(5):
        await put_message(store, not_before=T0 - 1)
    small = await _claim_steps(store, None)
    _fill(store.path, 100_000, zone="default", next_attempt=T0 + 3600)  # deferred, not due
    _fill(store.path, 100_000, zone="paused", next_attempt=T0 - 10, tag=1)  # due, in a zone nobody claims
    # (the due rows in "paused" come first in next_attempt order: claim all zones except it)
    big = await _claim_steps(store, frozenset({"default"}))
    assert small[0] == big[0] == 5
    assert big[1] < 100, big  # < 10 000 VM steps; a scan of 100 000 rows takes millions
    got, _ = await _claim_steps(store, None)
    assert got == 50


# -- several processes -----------------------------------------------------------------------

ROWS = 12000  # long enough a race that the other process, in SQLite's busy handler, gets turns


def _meet(barrier: str, owner: str) -> None:
    """Wait (blocking: both processes are at the same point) until the other one is here too."""
    Path(barrier, owner).touch()
    deadline = time.monotonic() + 60
    while len(list(Path(barrier).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)


def _claim_worker(path: str, owner: str, barrier: str) -> list[tuple[str, str]]:
    """Runs in a spawned process: wait for the other one, then claim until nothing is left."""

    async def run() -> list[tuple[str, str]]:
        s = SqliteStore(path)
        await s.open()
        try:
            # both stores open before either claims: opening costs more than claiming all rows
            _meet(barrier, owner)
            got: list[tuple[str, str]] = []
            while batch := await s.claim(owner, 7, 600, T0):
                got.extend(d.key for d in batch)
            return got
        finally:
            await s.close()

    return asyncio.run(run())


async def test_two_processes_never_claim_the_same_delivery(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    s = SqliteStore(path)
    await s.open()
    await s.close()
    _fill(path, ROWS, zone="default", next_attempt=T0 - 5, status="queued")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pending = pool.starmap_async(_claim_worker, [(str(path), f"p{i}", str(barrier)) for i in range(2)])
        results = await asyncio.to_thread(pending.get, 90)
    a, b = ({k for k in r} for r in results)
    assert len(a) + len(b) == sum(len(r) for r in results)  # no duplicates within a process
    assert not a & b
    assert len(a | b) == ROWS
    assert a and b  # both really competed


async def test_one_of_two_stores_on_a_file_sends_the_outbox_until_it_closes(tmp_path: Path) -> None:
    first, second = SqliteStore(tmp_path / "queue.db"), SqliteStore(tmp_path / "queue.db")
    await first.open()
    await second.open()
    try:
        assert await first.outbox_lead()
        assert not await second.outbox_lead()  # else both would send every DSN and webhook call
        await first.close()
        assert await second.outbox_lead()
    finally:
        await first.close()
        await second.close()
