"""The queue store contract: behaviour every backend must show, unchanged.

A backend's test module subclasses ``StoreContract`` and supplies a ``store`` fixture that
yields an opened, empty store and closes it afterwards::

    class TestSqliteStore(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path):
            s = SqliteStore(tmp_path / "queue.db")
            await s.open()
            yield s
            await s.close()

Tests use explicit times (``T0`` and offsets) and never sleep. The one clock the store reads
itself is the "touched" time of uncommitted bodies, which the orphan tests bracket with
``time.time()``.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from typing import Any

import pytest

from zonerelay.store.base import (
    BodyGone,
    DeliveryStatus,
    MessageExists,
    NewDelivery,
    NewMessage,
    Notice,
    Outcome,
    QueueStore,
    StoreError,
)
from zonerelay.store.ids import is_queue_id, new_queue_id, queue_id_time, seq

T0 = 1_700_000_000.0
CHUNK = 256 * 1024
HEADERS = b"From: sender@example.org\r\nTo: rcpt@example.com\r\nSubject: test\r\n\r\n"
LEASE = 60.0

QUEUED = DeliveryStatus.QUEUED
DEFERRED = DeliveryStatus.DEFERRED
DELIVERED = DeliveryStatus.DELIVERED
BOUNCED = DeliveryStatus.BOUNCED


async def put_message(
    store: QueueStore,
    *,
    rcpts: tuple[str, ...] = ("rcpt@example.com",),
    zones: tuple[str, ...] | None = None,
    body: bytes = b"Hello\r\n",
    chunk: int = CHUNK,
    created: float = T0,
    not_before: float | None = None,
    meta: dict[str, Any] | None = None,
    mid: str | None = None,
) -> NewMessage:
    """Write a body chunk by chunk and commit a message with one delivery per recipient."""
    mid = mid or new_queue_id()
    writer = await store.new_body(mid)
    for i in range(0, len(body), chunk):
        await writer.write(body[i : i + chunk])
    deliveries = tuple(
        NewDelivery(seq(i + 1), r, r.rpartition("@")[2], zones[i] if zones else "default")
        for i, r in enumerate(rcpts)
    )
    message = NewMessage(
        id=mid,
        sender="sender@example.org",
        recipients=rcpts,
        headers=HEADERS,
        body_size=len(body),
        meta=meta if meta is not None else {"origin": "127.0.0.1", "interface": "feeder"},
        created=created,
        not_before=created if not_before is None else not_before,
        deliveries=deliveries,
    )
    await store.commit_message(message)
    return message


async def read_all(store: QueueStore, mid: str) -> list[bytes]:
    return [chunk async for chunk in store.read_body(mid)]


def delivered(t: float, **details: Any) -> Outcome:
    return Outcome(DELIVERED, "250 2.0.0 OK queued as 1234", t, details=details)


def deferred(t: float, next_attempt: float, *, counts: bool = True) -> Outcome:
    return Outcome(
        DEFERRED, "451 4.7.1 Try again later", t, next_attempt=next_attempt, counts_as_attempt=counts
    )


def bounced(t: float) -> Outcome:
    return Outcome(BOUNCED, "550 5.1.1 No such user", t, details={"category": "recipient"})


class StoreContract:
    """Backend-independent behaviour of QueueStore; subclasses provide the ``store`` fixture."""

    # -- ingest: commit, bodies ---------------------------------------------------------
    async def test_commit_round_trip(self, store: QueueStore) -> None:
        msg = await put_message(
            store,
            rcpts=("a@one.example", "b@two.example"),
            zones=("default", "bulk"),
            body=b"Line 1\r\nLine 2\r\n",
            created=T0,
            not_before=T0 + 30,
            meta={"origin": "192.0.2.1", "tags": ["x", "y"], "n": 3, "nested": {"ok": True}},
        )
        stored = await store.get_message(msg.id)
        assert stored is not None
        assert stored.id == msg.id
        assert stored.sender == "sender@example.org"
        assert stored.recipients == ("a@one.example", "b@two.example")
        assert stored.headers == HEADERS
        assert stored.body_size == len(b"Line 1\r\nLine 2\r\n")
        assert stored.meta == {"origin": "192.0.2.1", "tags": ["x", "y"], "n": 3, "nested": {"ok": True}}
        assert stored.created == T0

        rows = await store.get_deliveries(msg.id)
        assert [(d.seq, d.recipient, d.domain, d.zone) for d in rows] == [
            ("001", "a@one.example", "one.example", "default"),
            ("002", "b@two.example", "two.example", "bulk"),
        ]
        for d in rows:
            assert d.key == (msg.id, d.seq)
            assert d.status is QUEUED
            assert d.attempts == 0
            assert d.created == T0
            assert d.next_attempt == T0 + 30
            assert d.first_failure is None and d.last_attempt is None and d.last_response is None
            assert d.lease_owner is None and d.lease_until is None
        assert b"".join(await read_all(store, msg.id)) == b"Line 1\r\nLine 2\r\n"
        assert await store.get_events(msg.id) == []

    async def test_multi_megabyte_body_streams_in_chunks(self, store: QueueStore) -> None:
        body = os.urandom(3 * CHUNK * 4 + 12345)  # ~3 MiB, the last chunk short
        msg = await put_message(store, body=body)
        chunks = await read_all(store, msg.id)
        assert len(chunks) > 1
        assert max(len(c) for c in chunks) <= CHUNK
        assert b"".join(chunks) == body

    async def test_empty_body(self, store: QueueStore) -> None:
        msg = await put_message(store, body=b"")
        assert await read_all(store, msg.id) == []
        stored = await store.get_message(msg.id)
        assert stored is not None and stored.body_size == 0

    async def test_many_small_chunks_keep_their_order(self, store: QueueStore) -> None:
        body = b"".join(b"%05d\r\n" % i for i in range(500))
        msg = await put_message(store, body=body, chunk=7)
        assert b"".join(await read_all(store, msg.id)) == body

    async def test_duplicate_id_is_refused_and_original_kept(self, store: QueueStore) -> None:
        msg = await put_message(store, body=b"original\r\n", rcpts=("a@x.example",))
        with pytest.raises(MessageExists):
            await put_message(store, mid=msg.id, body=b"", rcpts=("b@y.example", "c@z.example"))
        rows = await store.get_deliveries(msg.id)
        assert [d.recipient for d in rows] == ["a@x.example"]
        assert b"".join(await read_all(store, msg.id)) == b"original\r\n"

    async def test_uncommitted_body_is_invisible(self, store: QueueStore) -> None:
        mid = new_queue_id()
        writer = await store.new_body(mid)
        await writer.write(b"part one\r\n")
        await writer.write(b"part two\r\n")
        assert await store.get_message(mid) is None
        assert await store.get_deliveries(mid) == []
        with pytest.raises(BodyGone):
            await read_all(store, mid)
        assert await store.claim("w1", 10, LEASE, T0 + 10**6) == []
        assert (await store.stats()).messages == 0

    async def test_aborted_body_is_gone(self, store: QueueStore) -> None:
        mid = new_queue_id()
        writer = await store.new_body(mid)
        await writer.write(b"never committed\r\n")
        await writer.abort()
        with pytest.raises(BodyGone):
            await read_all(store, mid)
        # nothing left for the orphan collector, and the id is free again with none of the old chunks
        result = await store.collect_garbage(time.time() + 10**6, retention=1, orphan_age=1)
        assert result.orphan_bodies == 0
        await put_message(store, mid=mid, body=b"second try\r\n")
        assert b"".join(await read_all(store, mid)) == b"second try\r\n"

    async def test_read_body_of_unknown_message(self, store: QueueStore) -> None:
        with pytest.raises(BodyGone):
            await read_all(store, new_queue_id())

    async def test_concurrent_commits_and_one_failure(self, store: QueueStore) -> None:
        first = await put_message(store)
        results = await asyncio.gather(
            *(put_message(store, body=b"m%d\r\n" % i) for i in range(10)),
            put_message(store, mid=first.id),
            *(put_message(store, body=b"n%d\r\n" % i) for i in range(10)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 1 and isinstance(failures[0], MessageExists)
        for r in results:
            if isinstance(r, NewMessage):
                assert await store.get_message(r.id) is not None
                body = b"".join(await read_all(store, r.id))
                assert body in {b"m%d\r\n" % i for i in range(10)} | {b"n%d\r\n" % i for i in range(10)}
        assert (await store.stats()).messages == 21

    # -- claiming -----------------------------------------------------------------------
    async def test_claim_returns_only_due_rows_and_sets_lease(self, store: QueueStore) -> None:
        due = await put_message(store, not_before=T0)
        later = await put_message(store, not_before=T0 + 100)
        got = await store.claim("w1", 10, 1000, T0 + 10)
        assert [d.key for d in got] == [(due.id, "001")]
        assert got[0].lease_owner == "w1"
        assert got[0].lease_until == T0 + 10 + 1000
        rows = await store.get_deliveries(due.id)
        assert rows[0].lease_owner == "w1" and rows[0].lease_until == T0 + 10 + 1000
        assert (await store.get_deliveries(later.id))[0].lease_owner is None
        # due exactly at its next_attempt
        got = await store.claim("w1", 10, LEASE, T0 + 100)
        assert [d.key for d in got] == [(later.id, "001")]

    async def test_claim_oldest_due_first_and_limit(self, store: QueueStore) -> None:
        offsets = [5, 1, 3, 4, 2]
        msgs = {off: await put_message(store, not_before=T0 + off) for off in offsets}
        got = await store.claim("w1", 2, LEASE, T0 + 10)
        assert [d.id for d in got] == [msgs[1].id, msgs[2].id]
        got = await store.claim("w1", 10, LEASE, T0 + 10)
        assert [d.id for d in got] == [msgs[3].id, msgs[4].id, msgs[5].id]
        assert await store.claim("w1", 10, LEASE, T0 + 10) == []
        assert await store.claim("w1", 0, LEASE, T0 + 10) == []

    async def test_claim_zones_filter(self, store: QueueStore) -> None:
        msg = await put_message(
            store,
            rcpts=("a@a.example", "b@b.example", "c@c.example", "d@a.example"),
            zones=("za", "zb", "zc", "za"),
        )
        assert await store.claim("w1", 10, LEASE, T0, zones=frozenset()) == []
        got = await store.claim("w1", 10, LEASE, T0, zones=frozenset({"za", "zc"}))
        assert sorted(d.seq for d in got) == ["001", "003", "004"]
        assert {d.zone for d in got} == {"za", "zc"}
        got = await store.claim("w2", 10, LEASE, T0)
        assert [(d.id, d.seq, d.zone) for d in got] == [(msg.id, "002", "zb")]

    async def test_claim_skips_rows_leased_by_others(self, store: QueueStore) -> None:
        for _ in range(3):
            await put_message(store)
        first = await store.claim("w1", 2, LEASE, T0)
        second = await store.claim("w2", 10, LEASE, T0 + 1)
        assert len(first) == 2 and len(second) == 1
        assert not {d.key for d in first} & {d.key for d in second}
        assert await store.claim("w3", 10, LEASE, T0 + 2) == []

    async def test_concurrent_claimers_never_share_a_delivery(self, store: QueueStore) -> None:
        rcpts = tuple(f"r{i}@example.com" for i in range(10))
        await asyncio.gather(*(put_message(store, rcpts=rcpts, not_before=T0 + i) for i in range(20)))
        batches = await asyncio.gather(*(store.claim(f"w{i}", 15, LEASE, T0 + 100) for i in range(20)))
        keys = [d.key for batch in batches for d in batch]
        assert len(keys) == 200
        assert len(set(keys)) == 200
        for i, batch in enumerate(batches):
            assert all(d.lease_owner == f"w{i}" for d in batch)

    async def test_expired_lease_becomes_claimable(self, store: QueueStore) -> None:
        msg = await put_message(store)
        assert len(await store.claim("w1", 10, 30, T0)) == 1
        assert await store.claim("w2", 10, 30, T0 + 29) == []
        got = await store.claim("w2", 10, 30, T0 + 31)
        assert [d.key for d in got] == [(msg.id, "001")]
        assert got[0].lease_owner == "w2" and got[0].lease_until == T0 + 61

    async def test_release_all_and_some(self, store: QueueStore) -> None:
        for _ in range(3):
            await put_message(store)
        held = await store.claim("w1", 10, LEASE, T0)
        keys = [d.key for d in held]
        assert len(keys) == 3
        assert await store.release("w2") == 0
        assert await store.release("w2", [keys[0]]) == 0
        assert await store.release("w1", [keys[0]]) == 1
        got = await store.claim("w2", 10, LEASE, T0 + 1)
        assert [d.key for d in got] == [keys[0]]
        assert await store.release("w1") == 2
        got = await store.claim("w3", 10, LEASE, T0 + 2)
        assert sorted(d.key for d in got) == sorted(keys[1:])
        assert (await store.get_deliveries(keys[1][0]))[0].lease_owner == "w3"

    async def test_release_all_but_the_deliveries_in_flight(self, store: QueueStore) -> None:
        """A worker gives back leases it holds without knowing (a claim whose answer was lost)
        and keeps those of its deliveries in flight."""
        for _ in range(4):
            await put_message(store)
        keys = [d.key for d in await store.claim("w1", 10, LEASE, T0)]
        other = await put_message(store)
        assert [d.key for d in await store.claim("w2", 10, LEASE, T0)] == [(other.id, "001")]
        assert await store.release("w1", keep=keys[:1]) == 3
        assert await store.release("w1", keep=keys[:1]) == 0
        got = await store.claim("w3", 10, LEASE, T0 + 1)
        assert sorted(d.key for d in got) == sorted(keys[1:])  # not w1's kept one, not w2's
        assert (await store.get_deliveries(keys[0][0]))[0].lease_owner == "w1"
        assert await store.release("w1", keep=[]) == 1

    async def test_renew_extends_only_own_leases(self, store: QueueStore) -> None:
        for _ in range(2):
            await put_message(store)
        held = await store.claim("w1", 10, 30, T0)
        keys = [d.key for d in held]
        assert await store.renew_leases("w2", keys, 30, T0 + 20) == 0
        assert await store.renew_leases("w1", keys, 30, T0 + 20) == 2
        assert await store.claim("w2", 10, 30, T0 + 40) == []  # would have expired at T0 + 30
        got = await store.claim("w2", 10, 30, T0 + 51)
        assert sorted(d.key for d in got) == sorted(keys)
        assert await store.renew_leases("w1", keys, 30, T0 + 52) == 0
        assert await store.renew_leases("w1", [], 30, T0 + 52) == 0

    # -- outcomes -----------------------------------------------------------------------
    async def test_outcome_delivered(self, store: QueueStore) -> None:
        msg = await put_message(store)
        (d,) = await store.claim("w1", 10, LEASE, T0)
        ok = await store.record_outcome(d.key, "w1", delivered(T0 + 2, mx="mx.example.com", tls=True))
        assert ok is True
        (row,) = await store.get_deliveries(msg.id)
        assert row.status is DELIVERED and row.status.is_final
        assert row.attempts == 1
        assert row.last_attempt == T0 + 2
        assert row.last_response == "250 2.0.0 OK queued as 1234"
        assert row.lease_owner is None and row.lease_until is None
        (event,) = await store.get_events(msg.id)
        assert (event.id, event.seq, event.time, event.status) == (msg.id, "001", T0 + 2, "delivered")
        assert event.response == "250 2.0.0 OK queued as 1234"
        assert event.details == {"mx": "mx.example.com", "tls": True}
        assert await store.claim("w1", 10, LEASE, T0 + 10**6) == []
        assert await store.next_due() is None
        assert await store.record_outcome(d.key, "w1", delivered(T0 + 3)) is False

    async def test_outcome_deferred_then_retry(self, store: QueueStore) -> None:
        msg = await put_message(store)
        (d,) = await store.claim("w1", 10, LEASE, T0)
        assert await store.record_outcome(d.key, "w1", deferred(T0 + 1, T0 + 300)) is True
        (row,) = await store.get_deliveries(msg.id)
        assert row.status is DEFERRED
        assert row.attempts == 1
        assert row.next_attempt == T0 + 300
        assert row.first_failure == T0 + 1
        assert row.last_attempt == T0 + 1
        assert row.last_response == "451 4.7.1 Try again later"
        assert row.lease_owner is None
        assert await store.claim("w1", 10, LEASE, T0 + 299) == []
        (d,) = await store.claim("w2", 10, LEASE, T0 + 300)
        assert d.status is DEFERRED and d.attempts == 1
        assert await store.record_outcome(d.key, "w2", deferred(T0 + 301, T0 + 900)) is True
        (row,) = await store.get_deliveries(msg.id)
        assert row.attempts == 2 and row.first_failure == T0 + 1 and row.next_attempt == T0 + 900
        assert [e.status for e in await store.get_events(msg.id)] == ["deferred", "deferred"]
        assert await store.next_due() == T0 + 900

    async def test_an_outcome_recorded_again_applies_once(self, store: QueueStore) -> None:
        """A worker retries record_outcome when the connection breaks; if the first try had
        committed, the retry must not count a second attempt or queue each notice again (under
        new event ids, which a webhook receiver could not recognise as duplicates)."""
        msg = await put_message(store, rcpts=("x@example.com", "y@example.com"))
        dx, dy = await store.claim("w1", 10, LEASE, T0)
        hook = Notice("webhook", {"event": "deferred"})
        outcome = replace(deferred(T0 + 1, T0 + 300), notices=(hook,))
        assert await store.record_outcome(dx.key, "w1", outcome) is True
        assert await store.record_outcome(dx.key, "w1", outcome) is True
        (row, _) = await store.get_deliveries(msg.id)
        assert row.attempts == 1 and len(await store.get_events(msg.id)) == 1
        assert await store.outbox_backlog() == {"webhook": 1}
        final = replace(bounced(T0 + 2), notices=(hook,))
        assert await store.record_outcome(dy.key, "w1", final) is True
        assert await store.record_outcome(dy.key, "w1", final) is True
        assert [e.status for e in await store.get_events(msg.id)] == ["deferred", "bounced"]
        assert await store.outbox_backlog() == {"webhook": 2}
        # a later attempt's outcome is another outcome, even with the same words
        (again,) = await store.claim("w2", 10, LEASE, T0 + 300)
        assert await store.record_outcome(again.key, "w2", deferred(T0 + 301, T0 + 900)) is True
        (row, _) = await store.get_deliveries(msg.id)
        assert row.attempts == 2

    async def test_outcome_bounced(self, store: QueueStore) -> None:
        msg = await put_message(store)
        (d,) = await store.claim("w1", 10, LEASE, T0)
        assert await store.record_outcome(d.key, "w1", bounced(T0 + 5)) is True
        (row,) = await store.get_deliveries(msg.id)
        assert row.status is BOUNCED and row.status.is_final
        assert row.attempts == 1
        assert row.last_response == "550 5.1.1 No such user"
        assert row.lease_owner is None
        (event,) = await store.get_events(msg.id)
        assert event.status == "bounced" and event.details == {"category": "recipient"}
        assert await store.claim("w1", 10, LEASE, T0 + 10**6) == []

    async def test_release_without_attempt(self, store: QueueStore) -> None:
        msg = await put_message(store)
        (d,) = await store.claim("w1", 10, LEASE, T0)
        assert await store.record_outcome(d.key, "w1", deferred(T0 + 1, T0 + 5, counts=False)) is True
        (row,) = await store.get_deliveries(msg.id)
        assert row.status is QUEUED
        assert row.attempts == 0
        assert row.first_failure is None and row.last_attempt is None
        assert row.next_attempt == T0 + 5
        assert row.lease_owner is None
        assert len(await store.get_events(msg.id)) == 1
        assert await store.claim("w2", 10, LEASE, T0 + 4) == []
        assert len(await store.claim("w2", 10, LEASE, T0 + 5)) == 1

    async def test_late_outcome_after_another_owner_finished(self, store: QueueStore) -> None:
        msg = await put_message(store)
        (d,) = await store.claim("w1", 10, 30, T0)
        (d2,) = await store.claim("w2", 10, 30, T0 + 31)  # w1's lease expired
        assert d2.key == d.key
        assert await store.record_outcome(d.key, "w2", delivered(T0 + 32)) is True
        assert await store.record_outcome(d.key, "w1", deferred(T0 + 33, T0 + 300)) is False
        assert await store.record_outcome(d.key, "w1", bounced(T0 + 34)) is False
        (row,) = await store.get_deliveries(msg.id)
        assert row.status is DELIVERED and row.attempts == 1
        assert len(await store.get_events(msg.id)) == 1

    async def test_deferral_does_not_override_another_owners_live_lease(self, store: QueueStore) -> None:
        msg = await put_message(store)
        (d,) = await store.claim("w1", 10, 30, T0)
        await store.claim("w2", 10, 30, T0 + 31)
        assert await store.record_outcome(d.key, "w1", deferred(T0 + 32, T0 + 300)) is False
        (row,) = await store.get_deliveries(msg.id)
        assert row.lease_owner == "w2" and row.attempts == 0 and row.status is QUEUED

    async def test_final_outcome_recorded_even_after_lease_expired(self, store: QueueStore) -> None:
        msg = await put_message(store, rcpts=("a@x.example", "b@x.example"))
        first, second = await store.claim("w1", 10, 30, T0)
        # expired, nobody else took it
        assert await store.record_outcome(first.key, "w1", delivered(T0 + 100)) is True
        # expired and taken by w2: the receiver answered w1, so the final answer still counts
        await store.claim("w2", 10, 30, T0 + 101)
        assert await store.record_outcome(second.key, "w1", bounced(T0 + 102)) is True
        rows = await store.get_deliveries(msg.id)
        assert [r.status for r in rows] == [DELIVERED, BOUNCED]
        assert all(r.lease_owner is None for r in rows)
        assert await store.record_outcome(second.key, "w2", deferred(T0 + 103, T0 + 200)) is False

    async def test_outcome_for_unknown_delivery(self, store: QueueStore) -> None:
        assert await store.record_outcome((new_queue_id(), "001"), "w1", delivered(T0)) is False

    async def test_lease_holders(self, store: QueueStore) -> None:
        for _ in range(5):
            await put_message(store)
        assert await store.lease_holders(T0) == {}
        await store.claim("a/w0/11", 2, LEASE, T0)
        await store.claim("b/w1/12", 2, 10, T0)
        assert await store.lease_holders(T0 + 1) == {"a/w0/11": 2, "b/w1/12": 2}
        assert await store.lease_holders(T0 + 11) == {"a/w0/11": 2}  # b's leases expired
        assert await store.release("a/w0/11") == 2
        assert await store.lease_holders(T0 + 1) == {"b/w1/12": 2}

    # -- inspection ---------------------------------------------------------------------
    async def test_stats(self, store: QueueStore) -> None:
        empty = await store.stats()
        assert (empty.queued, empty.deferred, empty.delivered, empty.bounced) == (0, 0, 0, 0)
        assert (empty.messages, empty.leased) == (0, 0)
        now = time.time()  # "leased" counts leases live now
        await put_message(
            store, rcpts=("a@x.example", "b@x.example", "c@x.example"), zones=("za", "za", "zb")
        )
        await put_message(store, rcpts=("d@x.example", "e@x.example"), zones=("za", "zb"))
        held = await store.claim("w1", 3, LEASE, now)
        assert len(held) == 3
        await store.record_outcome(held[0].key, "w1", delivered(now + 1))
        await store.record_outcome(held[1].key, "w1", deferred(now + 1, now + 600))
        await store.record_outcome(held[2].key, "w1", bounced(now + 1))
        await store.claim("w2", 1, 3600, now + 2)
        s = await store.stats()
        assert (s.queued, s.deferred, s.delivered, s.bounced) == (2, 1, 1, 1)
        assert s.messages == 2
        assert s.leased == 1
        assert sum(s.by_zone["za"].values()) == 3
        assert sum(s.by_zone["zb"].values()) == 2
        per_status: dict[str, int] = {}
        for counts in s.by_zone.values():
            for status, n in counts.items():
                per_status[status] = per_status.get(status, 0) + n
        assert {k: v for k, v in per_status.items() if v} == {
            "queued": 2,
            "deferred": 1,
            "delivered": 1,
            "bounced": 1,
        }

    async def test_list_deliveries(self, store: QueueStore) -> None:
        a = await put_message(store, rcpts=("a1@x.example", "a2@x.example"), zones=("za", "zb"), created=T0)
        b = await put_message(store, rcpts=("b1@x.example",), zones=("za",), created=T0 + 1)
        c = await put_message(store, rcpts=("c1@x.example",), zones=("zb",), created=T0 + 2)
        (d,) = await store.claim("w1", 1, LEASE, T0 + 10, zones=frozenset({"zb"}))
        assert d.key == (a.id, "002")
        await store.record_outcome(d.key, "w1", deferred(T0 + 11, T0 + 500))

        every = await store.list_deliveries()
        assert [x.key for x in every] == [(a.id, "001"), (a.id, "002"), (b.id, "001"), (c.id, "001")]
        assert [x.key for x in await store.list_deliveries(limit=2)] == [(a.id, "001"), (a.id, "002")]
        queued = await store.list_deliveries(statuses=(QUEUED,))
        assert [x.key for x in queued] == [(a.id, "001"), (b.id, "001"), (c.id, "001")]
        assert [x.key for x in await store.list_deliveries(statuses=(DEFERRED,))] == [(a.id, "002")]
        zb = await store.list_deliveries(zone="zb")
        assert [x.key for x in zb] == [(a.id, "002"), (c.id, "001")]
        zb_queued = await store.list_deliveries(statuses=(QUEUED, DEFERRED), zone="zb")
        assert [x.key for x in zb_queued] == [(a.id, "002"), (c.id, "001")]
        assert await store.list_deliveries(statuses=(DELIVERED, BOUNCED)) == []
        assert await store.list_deliveries(zone="nowhere") == []

    async def test_next_due(self, store: QueueStore) -> None:
        assert await store.next_due() is None
        await put_message(store, not_before=T0 + 50)
        first = await put_message(store, not_before=T0 + 20)
        assert await store.next_due() == T0 + 20
        (d,) = await store.claim("w1", 1, LEASE, T0 + 20)
        assert d.id == first.id
        await store.record_outcome(d.key, "w1", deferred(T0 + 21, T0 + 90))
        assert await store.next_due() == T0 + 50

    # -- garbage collection ---------------------------------------------------------------
    async def _finish(self, store: QueueStore, t: float, *keys: tuple[str, str]) -> None:
        got = {d.key for d in await store.claim("gc-test", 1000, LEASE, t)}
        for key in keys:
            assert key in got
            assert await store.record_outcome(key, "gc-test", delivered(t))
        await store.release("gc-test")

    async def test_gc_drops_body_once_no_delivery_is_pending(self, store: QueueStore) -> None:
        msg = await put_message(store, rcpts=("a@x.example", "b@x.example"), body=b"body\r\n")
        await self._finish(store, T0 + 1, (msg.id, "001"))
        await store.collect_garbage(T0 + 2, retention=3600, orphan_age=3600)
        assert b"".join(await read_all(store, msg.id)) == b"body\r\n"  # 002 still needs it
        await self._finish(store, T0 + 3, (msg.id, "002"))
        result = await store.collect_garbage(T0 + 4, retention=3600, orphan_age=3600)
        assert (result.deliveries, result.messages) == (0, 0)
        with pytest.raises(BodyGone):
            await read_all(store, msg.id)
        # message, deliveries and events stay queryable for the retention window
        assert await store.get_message(msg.id) is not None
        assert [d.status for d in await store.get_deliveries(msg.id)] == [DELIVERED, DELIVERED]
        assert len(await store.get_events(msg.id)) == 2

    async def test_gc_respects_retention(self, store: QueueStore) -> None:
        msg = await put_message(store)
        await self._finish(store, T0 + 10, (msg.id, "001"))
        result = await store.collect_garbage(T0 + 10 + 99, retention=100, orphan_age=3600)
        assert (result.deliveries, result.messages) == (0, 0)
        assert len(await store.get_deliveries(msg.id)) == 1
        result = await store.collect_garbage(T0 + 10 + 101, retention=100, orphan_age=3600)
        assert (result.deliveries, result.messages) == (1, 1)
        assert await store.get_message(msg.id) is None
        assert await store.get_deliveries(msg.id) == []
        assert await store.get_events(msg.id) == []
        assert (await store.stats()).messages == 0

    async def test_gc_keeps_message_while_any_delivery_is_pending(self, store: QueueStore) -> None:
        msg = await put_message(store, rcpts=("a@x.example", "b@x.example"), body=b"still needed\r\n")
        await self._finish(store, T0 + 1, (msg.id, "001"))
        result = await store.collect_garbage(T0 + 10**6, retention=100, orphan_age=10**7)
        assert (result.deliveries, result.messages, result.orphan_bodies) == (1, 0, 0)
        assert await store.get_message(msg.id) is not None
        assert [d.seq for d in await store.get_deliveries(msg.id)] == ["002"]
        assert b"".join(await read_all(store, msg.id)) == b"still needed\r\n"

    async def test_gc_leaves_pending_messages_alone(self, store: QueueStore) -> None:
        msgs = [await put_message(store, body=b"m%d\r\n" % i, not_before=T0 + i * 1000) for i in range(5)]
        (d,) = await store.claim("w1", 1, LEASE, T0)
        await store.record_outcome(d.key, "w1", deferred(T0 + 1, T0 + 5000))
        result = await store.collect_garbage(T0 + 10**7, retention=1, orphan_age=10**8)
        assert (result.deliveries, result.messages, result.orphan_bodies) == (0, 0, 0)
        for i, m in enumerate(msgs):
            assert b"".join(await read_all(store, m.id)) == b"m%d\r\n" % i
            assert len(await store.get_deliveries(m.id)) == 1

    async def test_gc_collects_orphan_bodies(self, store: QueueStore) -> None:
        mid = new_queue_id()
        writer = await store.new_body(mid)
        before = time.time()
        await writer.write(b"abandoned\r\n")
        after = time.time()
        result = await store.collect_garbage(before, retention=1, orphan_age=3600)
        assert result.orphan_bodies == 0
        result = await store.collect_garbage(after + 3600 - 5, retention=1, orphan_age=3600)
        assert result.orphan_bodies == 0
        result = await store.collect_garbage(after + 3600 + 5, retention=1, orphan_age=3600)
        assert result.orphan_bodies == 1
        # a submission whose body was collected cannot commit a message without it
        with pytest.raises(StoreError):
            await writer.write(b"more\r\n")
            await store.commit_message(
                NewMessage(mid, "s@x.example", ("r@x.example",), HEADERS, 17, {}, T0, T0,
                           (NewDelivery("001", "r@x.example", "x.example", "default"),))
            )  # fmt: skip
        assert await store.get_deliveries(mid) == []

    async def test_gc_in_bulk(self, store: QueueStore) -> None:
        rcpts = ("a@x.example", "b@x.example", "c@x.example")
        msgs = await asyncio.gather(
            *(put_message(store, rcpts=rcpts, body=b"x" * 3000, chunk=1000) for _ in range(250))
        )
        keep = await put_message(store, body=b"keep\r\n")
        held = await store.claim("w1", 10_000, LEASE, T0)
        assert len(held) == 751
        done = await asyncio.gather(
            *(store.record_outcome(d.key, "w1", bounced(T0 + 1)) for d in held if d.id != keep.id)
        )
        assert all(done)
        await store.release("w1")
        result = await store.collect_garbage(T0 + 1000, retention=100, orphan_age=3600)
        assert (result.deliveries, result.messages, result.orphan_bodies) == (750, 250, 0)
        assert await store.get_message(msgs[0].id) is None
        assert (await store.stats()).messages == 1
        assert b"".join(await read_all(store, keep.id)) == b"keep\r\n"

    # -- operator actions: retry now, drop --------------------------------------------------
    async def test_retry_now_makes_deferred_and_delayed_rows_due(self, store: QueueStore) -> None:
        msg = await put_message(store, rcpts=("a@x.example", "b@y.example"))
        later = await put_message(store, not_before=T0 + 7200)
        other = await put_message(store)
        held = await store.claim("w1", 10, LEASE, T0)
        for d in held:
            outcome = deferred(T0 + 1, T0 + 3600) if d.id == msg.id else delivered(T0 + 1)
            assert await store.record_outcome(d.key, "w1", outcome)
        assert await store.claim("w2", 10, LEASE, T0 + 2) == []
        with pytest.raises(ValueError):
            await store.retry_now(T0 + 2)
        assert await store.retry_now(T0 + 2, message_id=msg.id, domain="Y.EXAMPLE") == 1
        assert [d.key for d in await store.claim("w2", 10, LEASE, T0 + 2)] == [(msg.id, "002")]
        await store.release("w2")
        assert await store.retry_now(T0 + 3, zone="default") == 2  # 001 and the delayed one
        due = {d.key for d in await store.claim("w3", 10, LEASE, T0 + 3)}
        assert due == {(msg.id, "001"), (msg.id, "002"), (later.id, "001")}
        assert await store.retry_now(T0 + 4, message_id=msg.id) == 0  # leased rows are left alone
        assert await store.retry_now(T0 + 4, message_id=other.id) == 0  # claimed and done already
        assert await store.retry_now(T0 + 4, message_id=new_queue_id()) == 0

    async def test_postpone_moves_a_destinations_due_unleased_rows(self, store: QueueStore) -> None:
        busy = await put_message(store, rcpts=("a@slow.example", "b@slow.example", "c@fast.example"))
        later = await put_message(store, rcpts=("d@slow.example",), not_before=T0 + 7200)
        [leased] = await store.claim("w1", 1, LEASE, T0)
        assert leased.key == (busy.id, "001")
        # the due, unleased slow.example row moves; the leased one, the later one and others do not
        assert await store.postpone("default", "SLOW.example", T0 + 60, T0) == 1
        assert {d.key for d in await store.claim("w2", 10, LEASE, T0 + 1)} == {(busy.id, "003")}
        assert {d.key for d in await store.claim("w2", 10, LEASE, T0 + 60)} == {(busy.id, "002")}
        [moved] = [d for d in await store.get_deliveries(busy.id) if d.seq == "002"]
        assert moved.attempts == 0  # not an attempt
        assert await store.postpone("other", "slow.example", T0 + 90, T0 + 60) == 0
        assert [d.next_attempt for d in await store.get_deliveries(later.id)] == [T0 + 7200]

    async def test_drop_removes_pending_rows_and_frees_the_body(self, store: QueueStore) -> None:
        msg = await put_message(store, rcpts=("a@x.example", "b@y.example", "c@y.example"), body=b"drop\r\n")
        keep = await put_message(store, rcpts=("d@y.example",), zones=("other",))
        (first,) = await store.claim("w1", 1, LEASE, T0)
        assert first.key == (msg.id, "001")
        assert await store.record_outcome(first.key, "w1", delivered(T0 + 1))
        with pytest.raises(ValueError):
            await store.drop_deliveries(T0 + 2)
        assert await store.drop_deliveries(T0 + 2, message_id=msg.id, domain="y.example") == 2
        assert [(d.seq, d.status) for d in await store.get_deliveries(msg.id)] == [("001", DELIVERED)]
        events = await store.get_events(msg.id)
        assert sorted((e.seq, e.status) for e in events) == [("001", "delivered"), ("002", "dropped"),
                                                             ("003", "dropped")]  # fmt: skip
        with pytest.raises(BodyGone):
            await read_all(store, msg.id)
        assert [d.id for d in await store.claim("w2", 10, LEASE, T0 + 3)] == [keep.id]
        # a worker holding a lease on a dropped row finds it gone
        assert await store.drop_deliveries(T0 + 4, zone="other") == 1
        assert not await store.record_outcome((keep.id, "001"), "w2", delivered(T0 + 5))
        await store.collect_garbage(T0 + 6, retention=3600, orphan_age=3600)
        assert await store.get_message(keep.id) is None  # no delivery row left: gone entirely
        assert await store.get_message(msg.id) is not None  # 001 stays for the retention window
        stats = await store.stats()
        assert (stats.queued, stats.deferred, stats.delivered, stats.bounced) == (0, 0, 1, 0)

    # -- suppression list -------------------------------------------------------------------
    async def test_suppression_entries(self, store: QueueStore) -> None:
        assert await store.list_suppressions() == []
        assert await store.is_suppressed(["a@x.example"]) == set()
        one = await store.add_suppression(address="Blocked@X.example")
        two = await store.add_suppression(domain="Suppressed.example")
        assert (one.address, one.domain, two.address, two.domain) == (
            "blocked@x.example", None, None, "suppressed.example"
        )
        assert one.id and two.id and one.id != two.id
        assert await store.add_suppression(address="blocked@x.example") == one  # idempotent
        assert await store.list_suppressions() == [one, two]
        with pytest.raises(ValueError):
            await store.add_suppression(address="a@x.example", domain="x.example")
        with pytest.raises(ValueError):
            await store.add_suppression()
        rcpts = ["BLOCKED@x.example", "ok@x.example", "any@suppressed.EXAMPLE", "x@sub.suppressed.example"]
        assert await store.is_suppressed(rcpts) == {"BLOCKED@x.example", "any@suppressed.EXAMPLE"}
        assert await store.delete_suppression(one.id)
        assert not await store.delete_suppression(one.id)
        assert await store.list_suppressions() == [two]
        assert await store.is_suppressed(rcpts) == {"any@suppressed.EXAMPLE"}

    async def test_suppression_lookup_of_many_recipients(self, store: QueueStore) -> None:
        for i in range(0, 3000, 7):
            await store.add_suppression(address=f"u{i}@x.example")
        rcpts = [f"u{i}@x.example" for i in range(3000)]
        assert await store.is_suppressed(rcpts) == {f"u{i}@x.example" for i in range(0, 3000, 7)}

    # -- outbox (notifications written with outcomes) -------------------------------------
    async def test_outbox_is_written_with_the_outcome_and_kept_in_order(self, store: QueueStore) -> None:
        a = await put_message(store, rcpts=("x@example.com", "y@example.com"))
        b = await put_message(store)
        claimed = {d.key: d for d in await store.claim("w1", 10, 60, T0)}
        dx, dy, db = claimed[(a.id, "001")], claimed[(a.id, "002")], claimed[(b.id, "001")]
        hook = Notice("webhook", {"event": "bounced"})
        with_dsn = replace(bounced(T0 + 1), notices=(hook, Notice("dsn", {})))
        assert await store.record_outcome(dx.key, "w1", with_dsn)
        assert await store.record_outcome(dy.key, "w1", replace(deferred(T0 + 2, T0 + 9), notices=(hook,)))
        assert await store.record_outcome(db.key, "w1", replace(delivered(T0 + 3), notices=(hook,)))
        # an outcome that does not apply stores no notice
        assert not await store.record_outcome(dx.key, "w1", replace(delivered(T0 + 4), notices=(hook,)))
        assert await store.outbox_backlog() == {"webhook": 3, "dsn": 1}
        due = await store.outbox_due(("webhook",), T0 + 10)
        # one entry per message at a time: a's second waits until its first is done
        assert [(e.message_id, e.payload) for e in due] == [(a.id, hook.payload), (b.id, hook.payload)]
        assert due[0].oid < due[1].oid and due[0].attempts == 0
        await store.outbox_retry(due[0].oid, T0 + 100, "HTTP 500")
        assert [e.message_id for e in await store.outbox_due(("webhook",), T0 + 10)] == [b.id]
        [retried, *_] = await store.outbox_due(("webhook",), T0 + 100)
        assert (retried.oid, retried.attempts, retried.last_error) == (due[0].oid, 1, "HTTP 500")
        await store.outbox_done([due[0].oid, due[1].oid])
        [second] = await store.outbox_due(("webhook",), T0 + 100)
        assert second.message_id == a.id and second.oid > due[0].oid
        [dsn] = await store.outbox_due(("dsn",), T0 + 100)
        assert dsn.message_id == a.id
        assert len(await store.outbox_due(("webhook", "dsn"), T0 + 100, ordered=False)) == 2
        of_a = await store.outbox_due(("webhook",), T0 + 100, message_id=a.id)
        assert [e.oid for e in of_a] == [second.oid]
        assert await store.outbox_due(("webhook",), T0 + 100, message_id=b.id) == []
        await store.outbox_done([second.oid, dsn.oid])
        assert await store.outbox_backlog() == {}
        assert await store.outbox_due(("webhook", "dsn"), T0 + 1000) == []

    async def test_a_store_alone_sends_the_outbox_and_keeps_doing_so(self, store: QueueStore) -> None:
        assert await store.outbox_lead()
        assert await store.outbox_lead()  # kept, not taken anew

    async def test_notices_are_committed_with_the_message(self, store: QueueStore) -> None:
        dropped = Notice("webhook", {"event": "dropped", "seq": "002"})
        writer = await store.new_body("1a2b3c4d5e6f708192")
        await writer.write(b"body\r\n")
        message = NewMessage(
            id="1a2b3c4d5e6f708192",
            sender="sender@example.org",
            recipients=("a@example.com", "b@example.com"),
            headers=HEADERS,
            body_size=6,
            meta={},
            created=T0,
            not_before=T0,
            deliveries=(NewDelivery("001", "a@example.com", "example.com", "default"),),
            notices=(dropped,),
        )
        await store.commit_message(message)
        [entry] = await store.outbox_due(("webhook",), T0 + 1)
        assert (entry.message_id, entry.payload) == (message.id, dropped.payload)
        with pytest.raises(MessageExists):  # a refused commit stores no notice either
            await store.commit_message(message)
        assert await store.outbox_backlog() == {"webhook": 1}

    # -- ids ----------------------------------------------------------------------------
    async def test_queue_ids(self) -> None:
        before = time.time()
        ids = [new_queue_id() for _ in range(100_000)]
        after = time.time()
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids)  # time-ordered prefix, counting up within a millisecond
        assert all(len(i) == 18 and is_queue_id(i) for i in ids[:1000])
        assert before - 0.002 <= queue_id_time(ids[0]) <= queue_id_time(ids[-1]) <= after + 1
        assert not is_queue_id("0123456789ABCDEF01")
        assert not is_queue_id("0123456789abcdef0")
        assert (seq(1), seq(2), seq(999), seq(1000)) == ("001", "002", "999", "1000")
        with pytest.raises(ValueError):
            seq(0)
