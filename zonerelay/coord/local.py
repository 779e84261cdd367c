"""Coordination for one instance: its supervisor and worker processes share a SQLite file.

The worker processes of one instance are separate OS processes, so a limit such as "10
connections to gmail.com" needs state outside any one of them. A small SQLite file in
data_dir holds it. The state is ephemeral by design (every entry carries an expiry, and a
crash of the whole host frees everything anyway), so the file runs with
``synchronous=OFF``: no fsync, a call costs tens of microseconds. Every check-and-add runs
in one ``BEGIN IMMEDIATE`` transaction, which serialises processes on SQLite's write lock.

Calls run on one thread per coordinator (sqlite3 blocks), never on the event loop.
Hand-written rather than a library: nothing small does leased slots + sliding windows on a
file shared by processes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from zonerelay.coord.base import CoordinationUnavailable, Coordinator, InstanceInfo, Parked

__all__ = ["LocalCoordinator"]

T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS slots (
        key TEXT NOT NULL, holder TEXT NOT NULL, expires REAL NOT NULL,
        PRIMARY KEY (key, holder)) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS rates (key TEXT NOT NULL, t REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rates_key_t ON rates(key, t)",
    """CREATE TABLE IF NOT EXISTS parks (
        key TEXT PRIMARY KEY, until REAL NOT NULL, reason TEXT NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS instances (
        id TEXT PRIMARY KEY, last_seen REAL NOT NULL, expires REAL NOT NULL,
        info TEXT NOT NULL) WITHOUT ROWID""",
)


def _acquire(conn: sqlite3.Connection, key: str, limit: int, holder: str, ttl: float, now: float) -> bool:
    conn.execute("DELETE FROM slots WHERE key = ? AND expires <= ?", (key, now))
    held = conn.execute("SELECT 1 FROM slots WHERE key = ? AND holder = ?", (key, holder)).fetchone()
    if held is None:
        (n,) = conn.execute("SELECT count(*) FROM slots WHERE key = ?", (key,)).fetchone()
        if n >= limit:
            return False
    conn.execute(
        "INSERT OR REPLACE INTO slots (key, holder, expires) VALUES (?, ?, ?)", (key, holder, now + ttl)
    )
    return True


def _release(conn: sqlite3.Connection, key: str, holder: str) -> None:
    conn.execute("DELETE FROM slots WHERE key = ? AND holder = ?", (key, holder))


def _renew(conn: sqlite3.Connection, rows: list[tuple[str, str]], ttl: float, now: float) -> None:
    conn.executemany(
        "UPDATE slots SET expires = ? WHERE key = ? AND holder = ? AND expires > ?",
        [(now + ttl, key, holder, now) for key, holder in rows],
    )


def _count(conn: sqlite3.Connection, key: str, now: float) -> int:
    (n,) = conn.execute("SELECT count(*) FROM slots WHERE key = ? AND expires > ?", (key, now)).fetchone()
    return int(n)


def _rate(conn: sqlite3.Connection, key: str, count: int, period: float, now: float) -> float:
    conn.execute("DELETE FROM rates WHERE key = ? AND t <= ?", (key, now - period))
    (n,) = conn.execute("SELECT count(*) FROM rates WHERE key = ?", (key,)).fetchone()
    if n < count:
        conn.execute("INSERT INTO rates (key, t) VALUES (?, ?)", (key, now))
        return 0.0
    # the window frees up when the (n - count + 1)-th oldest event leaves it
    (t,) = conn.execute(
        "SELECT t FROM rates WHERE key = ? ORDER BY t LIMIT 1 OFFSET ?", (key, n - count)
    ).fetchone()
    return max(float(t) + period - now, 1e-6)


def _park(conn: sqlite3.Connection, key: str, until: float, reason: str) -> None:
    conn.execute("INSERT OR REPLACE INTO parks (key, until, reason) VALUES (?, ?, ?)", (key, until, reason))


def _unpark(conn: sqlite3.Connection, key: str) -> bool:
    return conn.execute("DELETE FROM parks WHERE key = ?", (key,)).rowcount > 0


def _parked(conn: sqlite3.Connection, now: float, prefix: str) -> list[Parked]:
    conn.execute("DELETE FROM parks WHERE until <= ?", (now,))
    rows = conn.execute(
        "SELECT key, until, reason FROM parks WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix)
    ).fetchall()
    return [Parked(r[0], r[1], r[2]) for r in rows]


def _heartbeat(conn: sqlite3.Connection, instance_id: str, info: str, ttl: float, now: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO instances (id, last_seen, expires, info) VALUES (?, ?, ?, ?)",
        (instance_id, now, now + ttl, info),
    )


def _instances(conn: sqlite3.Connection, now: float) -> list[InstanceInfo]:
    rows = conn.execute(
        "SELECT id, last_seen, info FROM instances WHERE expires > ? ORDER BY id", (now,)
    ).fetchall()
    return [InstanceInfo(r[0], r[1], json.loads(r[2])) for r in rows]


class LocalCoordinator(Coordinator):
    """Coordinator on a SQLite file shared by the processes of one instance."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def _open_conn(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("COMMIT")
        self._conn = conn

    def _tx(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._conn
        if conn is None:
            raise CoordinationUnavailable("local coordinator is not open")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise CoordinationUnavailable(f"{self.path}: {exc}") from exc

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise CoordinationUnavailable("local coordinator is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._tx, fn, args)

    async def open(self) -> None:
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(1, thread_name_prefix="zonerelay-coord")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_conn)
        except sqlite3.Error as exc:
            executor.shutdown()
            raise CoordinationUnavailable(f"{self.path}: {exc}") from exc
        self._executor = executor

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(executor, _close)
        executor.shutdown()

    async def acquire_slot(self, key: str, limit: int, holder: str, ttl: float, now: float) -> bool:
        return await self._call(_acquire, key, limit, holder, ttl, now)

    async def release_slot(self, key: str, holder: str) -> None:
        await self._call(_release, key, holder)

    async def renew_slots(self, keys_holders: list[tuple[str, str]], ttl: float, now: float) -> None:
        if keys_holders:
            await self._call(_renew, list(keys_holders), ttl, now)

    async def slot_count(self, key: str, now: float) -> int:
        return await self._call(_count, key, now)

    async def rate_take(self, key: str, count: int, period: float, now: float) -> float:
        return await self._call(_rate, key, count, period, now)

    async def park(self, key: str, until: float, reason: str) -> None:
        await self._call(_park, key, until, reason)

    async def unpark(self, key: str) -> bool:
        return await self._call(_unpark, key)

    async def parked(self, now: float, prefix: str = "") -> list[Parked]:
        return await self._call(_parked, now, prefix)

    async def heartbeat(self, instance_id: str, info: dict[str, object], ttl: float, now: float) -> None:
        await self._call(_heartbeat, instance_id, json.dumps(info), ttl, now)

    async def instances(self, now: float) -> list[InstanceInfo]:
        return await self._call(_instances, now)
