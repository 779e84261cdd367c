"""The DSN round of the outbox sender against a real SQLite store and ingest pipeline."""

from __future__ import annotations

import time
from pathlib import Path

from tests.store.contract import put_message
from zonerelay.bounces.events import DSN
from zonerelay.bounces.notify import DSN_BATCH, Notifier
from zonerelay.config import Config
from zonerelay.ingest.pipeline import IngestPipeline
from zonerelay.store.base import DeliveryStatus, Notice, Outcome
from zonerelay.store.sqlite import SqliteStore


async def test_a_message_whose_first_pass_goes_on_does_not_hold_up_other_dsns(tmp_path: Path) -> None:
    settings = {"hostname": "relay.test", "queue": {"data_dir": str(tmp_path), "workers": 0}}
    config = Config.model_validate(settings)
    store = SqliteStore(tmp_path / "queue.db")
    await store.open()
    try:
        now = time.time()
        # a big message: more failed recipients than one outbox read, and one still waiting for
        # its first attempt, so its DSN is not ready yet
        rcpts = (*(f"u{n}@example.com" for n in range(DSN_BATCH + 50)), "later@example.net")
        big = await put_message(store, rcpts=rcpts, created=now - 10)
        small = await put_message(store, rcpts=("gone@example.com",), created=now - 10)
        claimed = await store.claim("w1", 10_000, 60, now)
        for d in claimed:
            if d.recipient == "later@example.net":
                continue
            payload = {"recipient": d.recipient, "response": "550 5.1.1 No such user", "status": "5.1.1",
                       "time": now - 5}  # fmt: skip
            outcome = Outcome(DeliveryStatus.BOUNCED, "550 5.1.1 No such user", now - 5,
                              notices=(Notice(DSN, payload),))  # fmt: skip
            assert await store.record_outcome(d.key, "w1", outcome)
        await store.release("w1")  # later@example.net: pending, never attempted

        notifier = Notifier(config, store, IngestPipeline(store, config))
        assert await notifier._dsn_round()  # small's DSN went out though big's notices come first
        pending = await store.list_deliveries((DeliveryStatus.QUEUED,), limit=10)
        dsns = [d for d in pending if d.id not in (big.id, small.id)]
        assert [d.recipient for d in dsns] == ["sender@example.org"]  # one DSN, about small
        [dsn] = [m for d in dsns if (m := await store.get_message(d.id)) is not None]
        assert dsn.sender == "" and small.id.encode() in dsn.headers + b"".join(
            [c async for c in store.read_body(dsn.id)])
        backlog = await store.outbox_backlog()
        assert backlog == {DSN: DSN_BATCH + 50}  # big's wait for its first pass to end
    finally:
        await store.close()
