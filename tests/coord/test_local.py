"""LocalCoordinator (a SQLite file shared by one instance's processes) and the in-memory one."""

from __future__ import annotations

import asyncio
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.coord.contract import T0, CoordinatorContract
from zonerelay.config import Config
from zonerelay.coord import MemoryCoordinator, open_coordinator
from zonerelay.coord.local import LocalCoordinator


class TestLocalCoordinator(CoordinatorContract):
    @pytest.fixture
    async def coord(self, tmp_path: Path) -> AsyncIterator[LocalCoordinator]:
        c = LocalCoordinator(tmp_path / "coord.db")
        await c.open()
        yield c
        await c.close()


class TestMemoryCoordinator(CoordinatorContract):
    @pytest.fixture
    async def coord(self) -> AsyncIterator[MemoryCoordinator]:
        c = MemoryCoordinator()
        await c.open()
        yield c
        await c.close()


_CHILD = """
import asyncio, sys, time
from zonerelay.coord.local import LocalCoordinator

async def main(path, name):
    c = LocalCoordinator(path)
    await c.open()
    got = []
    for i in range(200):
        if await c.acquire_slot("dest:default:example.com", 5, f"{name}-{i}", 600, time.time()):
            got.append(f"{name}-{i}")
    print(len(got), flush=True)
    sys.stdin.readline()  # hold the slots until the parent has counted
    await c.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_processes_share_slots(tmp_path: Path) -> None:
    path = tmp_path / "coord.db"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, str(path), f"p{i}", stdin=PIPE, stdout=PIPE
        )
        for i in range(3)
    ]
    try:
        counts = [int(await asyncio.wait_for(p.stdout.readline(), 30)) for p in procs]  # type: ignore[union-attr]
        assert sum(counts) == 5  # one cap for all processes, not 5 each
        c = LocalCoordinator(path)
        await c.open()
        assert await c.slot_count("dest:default:example.com", time.time()) == 5
        assert not await c.acquire_slot("dest:default:example.com", 5, "parent", 600, time.time())
        await c.close()
    finally:
        for p in procs:
            await asyncio.wait_for(p.communicate(b"\n"), 30)


async def test_state_survives_reopen_and_calls_are_fast(tmp_path: Path) -> None:
    c = LocalCoordinator(tmp_path / "coord.db")
    await c.open()
    await c.park("park:x", T0 + 60, "r")
    n = 500
    start = time.perf_counter()
    for i in range(n):
        await c.acquire_slot("k", 1000, f"h{i}", 60, T0)
    per_call = (time.perf_counter() - start) / n
    await c.close()
    c = LocalCoordinator(tmp_path / "coord.db")
    await c.open()
    assert [p.key for p in await c.parked(T0)] == ["park:x"]
    assert await c.slot_count("k", T0) == n
    await c.close()
    assert per_call < 0.01  # typically ~0.1 ms; generous for a loaded machine


def test_open_coordinator_is_local_without_redis(tmp_path: Path) -> None:
    config = Config.model_validate({"queue": {"data_dir": str(tmp_path)}})
    coord = open_coordinator(config)
    assert isinstance(coord, LocalCoordinator)
    assert coord.path == tmp_path / "coord.db"
