"""Connection slots and rates through the real local coordinator (the SQLite file that the
worker processes of one instance share), with two Limits standing for two processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from zonerelay.config import load_config
from zonerelay.coord.local import LocalCoordinator
from zonerelay.zones.limits import Limits, destination

CONFIG = load_config(
    overrides={"zones": {"default": {"connections": 2, "domain_config": {"rated.test": {"rate": "3/1s"}}}}}
)


@pytest.fixture
async def coordinators(tmp_path: Path) -> AsyncIterator[list[LocalCoordinator]]:
    coords = [LocalCoordinator(tmp_path / "coord.db") for _ in range(2)]
    for coord in coords:
        await coord.open()
    yield coords
    for coord in coords:
        await coord.close()


async def test_connection_slots_are_shared_and_given_back(coordinators: list[LocalCoordinator]) -> None:
    first, second = (Limits(CONFIG, c, f"w{n}") for n, c in enumerate(coordinators))
    dest = destination(CONFIG, "default", "example.test", [])
    a, _ = await first.try_acquire(dest)
    b, _ = await second.try_acquire(dest)
    assert a is not None and b is not None
    full, blocked = await second.try_acquire(dest)
    assert full is None and blocked == "zone:default"  # the third connection of the instance waits
    await first.release_grant(a)
    again, _ = await second.try_acquire(dest)
    assert again is not None
    for limits in (first, second):
        await limits.close()


async def test_a_rate_is_shared_and_waits_instead_of_failing(coordinators: list[LocalCoordinator]) -> None:
    first, second = (Limits(CONFIG, c, f"w{n}") for n, c in enumerate(coordinators))
    dest = destination(CONFIG, "default", "rated.test", [])
    started = time.monotonic()
    await asyncio.gather(
        *(limits.take_rate(dest) for limits in (first, second, first, second, first, second))
    )
    # 6 tokens at 3 per second: the second three wait for the window, generously bounded.
    assert 0.8 <= time.monotonic() - started < 5
