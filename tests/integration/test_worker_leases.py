"""A delivery worker's leases against a real SQLite store, DNS server and receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver
from tests.fixtures.relay import route_to
from tests.store.contract import put_message
from zonerelay.config import Config
from zonerelay.delivery import worker as worker_module
from zonerelay.delivery.worker import Worker
from zonerelay.store.base import DeliveryStatus
from zonerelay.store.sqlite import SqliteStore


async def test_leases_a_worker_holds_without_knowing_are_given_back_long_before_they_expire(
    tmp_path: Path,
    dns_server: DnsServer,
    recording_receiver: Callable[..., RecordingReceiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim can commit and its answer be lost (the store's connection broke in between):
    the rows are leased to the worker, which never heard of them. They are delivered after the
    next sweep, not after ``lease_seconds``."""
    monkeypatch.setattr(worker_module, "ORPHAN_SWEEP", 1.0)
    receiver = recording_receiver("127.0.0.1")
    settings = {"hostname": "relay.test", "queue": {"data_dir": str(tmp_path), "lease_seconds": 600},
                **route_to(dns_server, receiver)}  # fmt: skip
    config = Config.model_validate(settings)
    store = SqliteStore(tmp_path / "queue.db")
    await store.open()
    worker = Worker(config, store, "test/w0/1")
    try:
        message = await put_message(store, rcpts=("a@example.test", "b@example.test"), created=time.time())
        lost = await store.claim(worker.owner, 10, 600, time.time())  # the answer that never came
        assert len(lost) == 2
        running = asyncio.create_task(worker.run())
        started = time.monotonic()
        while {d.status for d in await store.get_deliveries(message.id)} != {DeliveryStatus.DELIVERED}:
            assert time.monotonic() - started < 15, await store.get_deliveries(message.id)
            await asyncio.sleep(0.2)
        assert sorted(receiver.messages[0].rcpt_tos) == ["a@example.test", "b@example.test"]
        worker.stop()
        await running
    finally:
        await store.close()
