"""`zonerelay serve`: the supervisor process.

It opens the store, listens on the SMTP interfaces (ingest runs here), and runs the delivery
workers as separate processes. A worker that dies is restarted, and its leases are released
at once so its deliveries go to the others without waiting for the leases to expire.
SIGTERM/SIGINT: stop accepting, let SMTP sessions and in-flight deliveries finish (bounded),
release what is left, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from functools import partial

from zonerelay import metrics
from zonerelay.api.server import ApiServer
from zonerelay.bounces.events import dropped_notices
from zonerelay.bounces.notify import Notifier
from zonerelay.cluster import ClusterMember
from zonerelay.config import Config
from zonerelay.coord import CoordinationUnavailable, open_coordinator
from zonerelay.delivery.worker import owner_id
from zonerelay.ingest.pipeline import IngestPipeline
from zonerelay.smtp.server import SmtpInterface
from zonerelay.store import open_store
from zonerelay.store.base import QueueStore, StoreError

log = logging.getLogger("zonerelay.service")

GC_INTERVAL = 60.0
WORKER_STOP_TIMEOUT = 30.0


class WorkerProcess:
    """One supervised delivery worker process."""

    def __init__(self, index: int, config: Config, store: QueueStore) -> None:
        self.index = index
        self.config = config
        self.store = store
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.restarts = 0

    async def start(self) -> None:
        env = dict(os.environ)
        env["ZONERELAY_CONFIG_JSON"] = json.dumps(self.config.model_dump(mode="json"))
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "zonerelay.delivery.worker", str(self.index), env=env
        )

    async def supervise(self) -> None:
        """Wait for the process; on an unexpected exit release its leases and restart it."""
        backoff = 0.5
        while True:
            assert self.proc is not None
            started = time.monotonic()
            code = await self.proc.wait()
            metrics.process_exited(self.proc.pid)
            owner = owner_id(self.config.effective_instance_id, self.index, self.proc.pid)
            try:
                released = await self.store.release(owner)
            except StoreError as exc:
                log.error("could not release leases of %s: %s (they expire by themselves)", owner, exc)
                released = 0
            if self.stopping:
                return
            self.restarts += 1
            backoff = 0.5 if time.monotonic() - started > 30 else min(backoff * 2, 30.0)
            log.error(
                "delivery worker %s exited with %s; released %d leases; restarting in %.1fs",
                owner,
                code,
                released,
                backoff,
            )
            await asyncio.sleep(backoff)
            if self.stopping:
                return
            await self.start()

    async def stop(self) -> None:
        self.stopping = True
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), WORKER_STOP_TIMEOUT)
        except TimeoutError:
            log.error("delivery worker %d did not stop in time; killing it", self.index)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


class Relay:
    """The running relay: store, SMTP interfaces, worker processes, housekeeping."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = open_store(config)
        self.pipeline = IngestPipeline(self.store, config, drop_notices=partial(dropped_notices, config))
        self.interfaces = [
            SmtpInterface(name, iface, self.pipeline, config.effective_hostname)
            for name, iface in config.smtp.items()
            if iface.enabled
        ]
        self.workers = [WorkerProcess(i, config, self.store) for i in range(config.effective_workers)]
        # heartbeats of this instance, and the sweep of dead instances' leases (cluster.py)
        self.coordinator = open_coordinator(config, processes=1)
        self.cluster = ClusterMember(config, self.store, self.coordinator, {"workers": len(self.workers)})
        self.notifier = Notifier(config, self.store, self.pipeline, self.coordinator)  # DSNs, webhooks
        # the API lists and clears parked pairs and slow-downs through the same coordinator
        self.api = ApiServer(self.pipeline, coordinator=self.coordinator) if config.api.enabled else None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        await self.store.open()
        await self.coordinator.open()
        with contextlib.suppress(CoordinationUnavailable):
            await self.cluster.beat()  # known as live before its workers take leases
        for iface in self.interfaces:
            await iface.start()
        if self.api is not None:
            await self.api.start()
        for worker in self.workers:
            await worker.start()
            self._tasks.append(asyncio.create_task(worker.supervise()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self.cluster.run()))
        await self.notifier.start()
        log.info(
            "zonerelay started: instance %s, %d delivery workers, store %s",
            self.config.effective_instance_id,
            len(self.workers),
            self.config.store.backend,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        log.info("shutting down")
        if self.api is not None:
            await self.api.stop()
        await asyncio.gather(*(iface.stop() for iface in self.interfaces))
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        await self.notifier.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.coordinator.close()
        await self.store.close()
        log.info("stopped")

    async def _housekeeping(self) -> None:
        queue = self.config.queue
        while True:
            try:
                result = await self.store.collect_garbage(time.time(), queue.retention, queue.orphan_body_age)
                if result.deliveries or result.messages or result.orphan_bodies:
                    log.info(
                        "garbage collection: %d final deliveries, %d messages, %d orphan bodies removed",
                        result.deliveries,
                        result.messages,
                        result.orphan_bodies,
                    )
            except StoreError as exc:
                log.warning("garbage collection failed: %s", exc)
            await asyncio.sleep(GC_INTERVAL)


async def serve(config: Config) -> None:
    relay = Relay(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, relay.request_stop)
    await relay.start()
    try:
        await relay.wait()
    finally:
        await relay.stop()
