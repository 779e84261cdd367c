"""A delivery worker process: claim due deliveries with leases, deliver, record outcomes.

Several workers (processes) run side by side; they share nothing but the store. A worker
claims a batch of due deliveries under a lease, groups them by (zone, domain, message) so
that one SMTP transaction carries all recipients of a message at one domain, delivers them
concurrently (bounded per process and per destination), and records each verdict. Leases of
deliveries in flight are renewed; on SIGTERM the worker stops claiming, lets in-flight
deliveries finish for a while, then gives the rest back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Hashable
from typing import TypeVar

from zonerelay import metrics
from zonerelay.bounces.events import notices_for
from zonerelay.bounces.handler import BounceHandler
from zonerelay.config import Config
from zonerelay.coord import Coordinator, open_coordinator
from zonerelay.delivery.retry import RetryPolicy
from zonerelay.delivery.transport import DestinationPaused, Transport, Verdict
from zonerelay.logs import setup_logging
from zonerelay.store import open_store
from zonerelay.store.base import Delivery, DeliveryStatus, Outcome, QueueStore, StoreError, StoreUnavailable
from zonerelay.zones.limits import Limits, RateExhausted

log = logging.getLogger("zonerelay.delivery")

#: Longest idle sleep between two looks at the queue (a new message waits at most this).
IDLE_POLL = 0.25
#: A delivery cut short by a queue store failure is tried again this soon (not an attempt).
STORE_RETRY = 5.0
#: A delivery that waits this long for one of its destination's places in the worker (all
#: taken by slow transactions) goes back to the queue, with the destination's other due rows,
#: for ``[delivery] busy_hold_seconds`` to 1.5 times that.
BUSY_WAIT = 3.0
#: Pauses between tries to record an outcome while the store is away (about 15 s in all).
RECORD_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)
#: How often a worker gives back leases it holds without knowing (and at once after a failed
#: claim): a claim whose answer was lost, an outcome that could not be recorded.
ORPHAN_SWEEP = 15.0
#: The response shown for a held delivery that has none yet, by why it is held.
_HELD = {
    "rate_limit": "destination paused after a rate-limit reply",
    "rate": "waiting for the rate",
    "store": "queue store unavailable during delivery",
    "busy": "waiting: every connection to this destination is busy",
}
SHUTDOWN_GRACE = 20.0


def owner_id(instance_id: str, index: int, pid: int) -> str:
    """Lease owner name of a worker process; the supervisor derives it to release leases."""
    return f"{instance_id}/w{index}/{pid}"


K = TypeVar("K", bound=Hashable)


def _remember(times: dict[K, float], key: K, until: float, now: float) -> None:
    """Set ``times[key] = until``; past a thousand keys, forget those whose time is over."""
    times[key] = until
    if len(times) > 1000:
        for old in [k for k, t in times.items() if t <= now]:
            del times[old]


class Worker:
    def __init__(
        self, config: Config, store: QueueStore, owner: str, coordinator: Coordinator | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.owner = owner
        # Zone connection caps and rates go through the shared coordinator (all processes).
        limits = Limits(config, coordinator, owner) if coordinator is not None else None
        self.transport = Transport(config, store, limits)
        self.bounces = BounceHandler(config, coordinator, self.transport.pools)
        self.transport.parked_sources = self.bounces.parked_sources  # skip blocklisted source IPs
        parking = self.bounces.parking
        self.transport.slowdown = lambda zone, target: parking.slowdown(zone, target, time.time())
        queue = config.queue
        self.retry = RetryPolicy(queue.defer_times, queue.max_queue_time)
        self._inflight: dict[tuple[str, str], Delivery] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._turns: dict[str, float] = {}  # rate key -> when the next delivery given back returns
        self._held_until: dict[tuple[str, str], float] = {}  # (zone, domain) -> pause end logged
        self._postponed: dict[tuple[str, str], float] = {}  # (zone, domain) -> busy hold's end
        self._stopping = asyncio.Event()
        self._next_sweep = time.time() + ORPHAN_SWEEP
        self._destination_slots: dict[tuple[str, str], asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(config.delivery.destination_concurrency)
        )

    def stop(self) -> None:
        self._stopping.set()
        self._slot_freed.set()

    async def run(self) -> None:
        housekeeping = asyncio.create_task(self._housekeeping())
        try:
            await self._claim_loop()
        finally:
            housekeeping.cancel()
            await self._drain()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
            await self.transport.close()

    async def _claim_loop(self) -> None:
        queue = self.config.queue
        limit = self.config.delivery.concurrency
        while not self._stopping.is_set():
            free = limit - len(self._inflight)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            now = time.time()
            if now >= self._next_sweep:
                await self._release_orphans(now)
            try:
                claimed = await self.store.claim(
                    self.owner, min(free, queue.claim_batch), queue.lease_seconds, now
                )
            except StoreError as exc:
                log.warning("claim failed (%s); retrying", exc)
                self._next_sweep = 0.0  # it may have committed: leases this worker never saw
                await self._sleep(1.0)
                continue
            if not claimed:
                await self._sleep(IDLE_POLL)
                continue
            groups: dict[tuple[str, str, str], list[Delivery]] = defaultdict(list)
            for delivery in claimed:
                self._inflight[delivery.key] = delivery
                groups[(delivery.zone, delivery.domain, delivery.id)].append(delivery)
            per_transaction = self.config.delivery.max_recipients_per_transaction
            for (zone, domain, _), group in groups.items():
                for start in range(0, len(group), per_transaction):
                    batch = group[start : start + per_transaction]
                    task = asyncio.create_task(self._deliver(zone, domain, batch))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _release_orphans(self, now: float) -> None:
        """Give back this worker's leases on deliveries it is not working on. A claim whose
        connection broke after its commit leased rows the worker never heard of, and an outcome
        that could not be recorded keeps its lease; either would wait out ``lease_seconds``
        (a minute by default) before anyone tried them again. Runs between claims, never beside
        one, so a claim's fresh leases are always in ``_inflight`` when it looks."""
        try:
            released = await self.store.release(self.owner, keep=list(self._inflight))
        except StoreError:
            self._next_sweep = now + 1.0
            return
        self._next_sweep = now + ORPHAN_SWEEP
        if released:
            log.warning("gave back %d leases this worker held without working on them", released)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _deliver(self, zone: str, domain: str, batch: list[Delivery]) -> None:
        try:
            async with self._destination_place(zone, domain) as placed:
                if not placed:  # the destination is busy: free this worker place for others
                    await self._busy(zone, domain, batch)
                    return
                message = await self.store.get_message(batch[0].id)
                if message is None:
                    verdicts = {
                        d.key: Verdict("bounced", "554 5.3.0 Message data is missing from the queue")
                        for d in batch
                    }
                else:
                    try:
                        verdicts = await self.transport.deliver(zone, domain, message, batch)
                    except DestinationPaused as paused:  # it said "too fast": not an attempt
                        await self._hold(batch, paused.until, "rate_limit")
                        return
                    except RateExhausted as full:  # the zone's own rate: come back at its turn
                        await self._hold(batch, self._turn(full), "rate")
                        return
            for delivery in batch:
                await self._record(delivery, verdicts[delivery.key])
        except asyncio.CancelledError:
            await self._give_back(batch)
            raise
        except StoreError as exc:  # our own store failed (say, reading the body): not an attempt
            log.warning("queue store failed during delivery of %s to %s (%s); trying again in %gs",
                        batch[0].id, domain, exc, STORE_RETRY)  # fmt: skip
            await self._hold(batch, time.time() + STORE_RETRY, "store")
        except Exception:
            log.exception("delivery of %s to %s failed unexpectedly; deferring", batch[0].id, domain)
            for delivery in batch:
                if delivery.key in self._inflight:
                    await self._record(
                        delivery, Verdict("deferred", "451 4.3.0 Internal error during delivery")
                    )
        finally:
            for delivery in batch:
                self._inflight.pop(delivery.key, None)
            self._slot_freed.set()

    @contextlib.asynccontextmanager
    async def _destination_place(self, zone: str, domain: str) -> AsyncIterator[bool]:
        """One of the destination's ``destination_concurrency`` places in this worker; False
        after BUSY_WAIT seconds without one. A delivery waiting here holds a worker place, so a
        slow destination with a backlog would otherwise fill the worker and starve the rest."""
        slots = self._destination_slots[(zone, domain)]
        try:
            async with asyncio.timeout(BUSY_WAIT):  # cancels the acquire cleanly, no lost place
                await slots.acquire()
        except TimeoutError:
            yield False
            return
        try:
            yield True
        finally:
            slots.release()

    async def _busy(self, zone: str, domain: str, batch: list[Delivery]) -> None:
        """Every place of this worker for the destination stayed taken for BUSY_WAIT: hold the
        batch, and (once per hold) postpone the destination's other due rows too, so that
        the claims that follow take other destinations' mail rather than more of this backlog."""
        now = time.time()
        until = now + self.config.delivery.busy_hold_seconds * (1 + random.random() / 2)
        await self._hold(batch, until, "busy")
        if self._postponed.get((zone, domain), 0.0) <= now:
            _remember(self._postponed, (zone, domain), until, now)
            with contextlib.suppress(StoreError):
                moved = await self.store.postpone(zone, domain, until, now)
                log.info("destination %s/%s is busy (all %d places of this worker taken for %gs): "
                         "%d more deliveries wait until %s", zone, domain,
                         self.config.delivery.destination_concurrency, BUSY_WAIT, moved + len(batch),
                         time.strftime("%H:%M:%SZ", time.gmtime(until)))  # fmt: skip

    def _turn(self, full: RateExhausted) -> float:
        """When a delivery that found ``full.key`` exhausted comes back: each one this worker
        gives back gets the next token after the previous one's, so a backlog returns at the
        rate's pace instead of all at once (to be given back again, all but one)."""
        now = time.time()
        at = max(now + full.wait, self._turns.get(full.key, 0.0))
        _remember(self._turns, full.key, at + full.period / full.count, now)
        return at

    async def _hold(self, batch: list[Delivery], until: float, why: str) -> None:
        """Give ``batch`` back to the queue until ``until`` without counting an attempt: its
        destination is paused after a rate-limit reply (``rate_limit``), its zone's rate has
        no token for it yet (``rate``), its places in this worker are all busy (``busy``), or
        the queue store failed mid-way (``store``)."""
        now = time.time()
        paused = why == "rate_limit"
        waiting = _HELD[why]
        for delivery in batch:
            outcome = Outcome(
                status=DeliveryStatus.DEFERRED,
                response=delivery.last_response or waiting,
                time=now,
                next_attempt=until,
                details={"held": why, "zone": delivery.zone, "domain": delivery.domain},
                counts_as_attempt=False,
            )
            await self._store_outcome(delivery, outcome)
        # once per destination and pause at INFO: a paused destination's backlog is held batch
        # by batch, and a line for each would bury the log
        where = (batch[0].zone, batch[0].domain)
        first = paused and self._held_until.get(where) != until
        if first:
            _remember(self._held_until, where, until, now)
        log.log(logging.INFO if first else logging.DEBUG,
                "held %d deliveries to %s/%s until %s (%s)", len(batch), batch[0].zone, batch[0].domain,
                time.strftime("%H:%M:%SZ", time.gmtime(until)), waiting)  # fmt: skip

    async def _store_outcome(self, delivery: Delivery, outcome: Outcome) -> bool:
        """Record ``outcome``, trying again for a while if the store is away (a restart of
        PostgreSQL takes seconds; the worker renews the lease meanwhile). If it stays away, the
        next sweep gives the lease back and the delivery is tried again: a duplicate at worst,
        never a loss."""
        for pause in (*RECORD_RETRIES, None):
            try:
                await self.store.record_outcome(delivery.key, self.owner, outcome)
                return True
            except StoreError as exc:
                if pause is None or self._stopping.is_set():
                    log.error("could not record outcome for %s.%s: %s", delivery.id, delivery.seq, exc)
                    self._next_sweep = 0.0
                    return False
                await asyncio.sleep(pause)
        return False

    async def _give_back(self, batch: list[Delivery]) -> None:
        keys = [d.key for d in batch if d.key in self._inflight]
        if keys:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(self.owner, keys))

    async def _record(self, delivery: Delivery, verdict: Verdict) -> None:
        now = time.time()
        details = dict(verdict.details)
        status = DeliveryStatus(verdict.kind)
        response = verdict.response
        next_attempt = None
        if status is not DeliveryStatus.DELIVERED:  # classify, act on it, plan the retry (bounces/)
            status, next_attempt, response = await self.bounces.decide(
                delivery, response, details, now, self.retry
            )
        outcome = Outcome(
            status=status, response=response, time=now, next_attempt=next_attempt, details=details,
            notices=notices_for(self.config, delivery, status, response, details, now),  # webhooks, DSN
        )  # fmt: skip
        if await self._store_outcome(delivery, outcome):
            metrics.DELIVERY_STATUS.labels(result=metrics.result(status.value), zone=delivery.zone).inc()
        log.info(
            "%s id=%s seq=%s to=<%s> zone=%s mx=%s ip=%s local=%s tls=%s attempt=%d duration=%s "
            "next=%s response=%r",
            status.value,
            delivery.id,
            delivery.seq,
            delivery.recipient,
            delivery.zone,
            details.get("mx"),
            details.get("ip"),
            details.get("local_address"),
            (details.get("tls") or {}).get("version"),
            delivery.attempts + 1,
            details.get("duration"),
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(next_attempt)) if next_attempt else "-",
            response,
        )

    async def _housekeeping(self) -> None:
        """Renew leases of deliveries in flight and retire idle pooled connections."""
        interval = max(1.0, self.config.queue.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            if self._inflight:
                try:
                    await self.store.renew_leases(
                        self.owner, list(self._inflight), self.config.queue.lease_seconds, time.time()
                    )
                except StoreError as exc:
                    log.warning("lease renewal failed: %s", exc)
            await self.transport.pool.expire()
            # every worker sees the same shared entries: the gauge keeps the largest count
            metrics.RATE_LIMITED.set(len(await self.bounces.parking.slowed(time.time())))

    async def _drain(self) -> None:
        """Let in-flight deliveries finish for a while, then cancel and release the rest."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.release(self.owner)


async def run_worker(config: Config, index: int) -> None:
    owner = owner_id(config.effective_instance_id, index, os.getpid())
    store = open_store(config)
    while True:  # a shared store may be down right now: wait for it rather than crash-loop
        try:
            await store.open()
            break
        except StoreUnavailable as exc:
            log.warning("queue store unavailable (%s); worker %s waits for it", exc, owner)
            await asyncio.sleep(2.0)
    coordinator = open_coordinator(config)
    await coordinator.open()
    worker = Worker(config, store, owner, coordinator)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    log.info("delivery worker %s started", owner)
    try:
        await worker.run()
    finally:
        await coordinator.close()
        await store.close()
        log.info("delivery worker %s stopped", owner)


def main() -> None:
    """Entry point of a worker process: config (JSON) in $ZONERELAY_CONFIG_JSON, index in argv."""
    config = Config.model_validate(
        json.loads(os.environ["ZONERELAY_CONFIG_JSON"]), context={"dkim_keys_checked": True}
    )
    index = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    setup_logging(config.log, process=f"worker{index}")
    from zonerelay.runloop import run

    run(run_worker(config, index))


if __name__ == "__main__":
    main()
