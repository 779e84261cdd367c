"""Telling the outside world, from the outbox: DSNs to senders and webhook POSTs.

Workers store notices in the same transaction as an outcome (``Outcome.notices``); the
supervisor runs ``Notifier``, which reads them back and sends them; of several instances
sharing a store, one sends (``QueueStore.outbox_lead``) and another takes over when it dies.
A notice is removed only after it was sent (the DSN committed to the queue, the webhook
answered 2xx), so a crash or ``kill -9`` anywhere means at worst a second copy, never a lost
one. Failed webhook calls are retried with back-off (5 s, 10 s, 20 s ... up to ``max_backoff``);
a message's later events wait until its earlier ones are through, so each receiver sees a
message's events in order.

A message's bounce DSN waits until its first pass is over (``dsn_ready``), so every recipient
that fails on it is in one DSN; a "delayed" DSN likewise waits for the message's other
recipients that are about to pass ``delay_warning``. Neither waits longer than DSN_GROUP_MAX.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections import defaultdict
from typing import Any

import aiohttp

from zonerelay import metrics
from zonerelay.bounces.dsn import DSN_INTERFACE, Action, FailedRecipient, build_dsn, should_send_dsn
from zonerelay.bounces.events import DSN, DSN_DELAYED, WEBHOOK_BOUNCE, WEBHOOK_EVENTS
from zonerelay.bounces.parking import PARK_PREFIX
from zonerelay.config import Config
from zonerelay.coord.base import CoordinationUnavailable, Coordinator
from zonerelay.ingest.pipeline import IngestPipeline, IngestRejected, SessionInfo
from zonerelay.store.base import Delivery, OutboxEntry, QueueStore, StoredMessage, StoreError

log = logging.getLogger("zonerelay.bounces")

POLL = 0.25  # seconds between looks at an empty outbox
DSN_KINDS = (DSN, DSN_DELAYED)
DSN_SETTLE = 1.0  # a notice this old: outcomes of one batch, recorded one by one, are read together
# The longest a DSN waits for the message's other recipients. A first pass normally ends within
# seconds; 5 min covers a destination that times out (connect_timeout 30 s per MX host, several
# hosts) and keeps a bounce prompt when one destination stalls for longer (command_timeout 300 s,
# rate-limit holds, a future Date:). A constant: an operator gains nothing by tuning it.
DSN_GROUP_MAX = 300.0
DSN_RECHECK = 1.0  # seconds between looks at a message whose DSN is still waiting
DSN_BATCH = 200
DSN_MAX_RECIPIENTS = 10_000  # in one DSN; a message with more failed recipients gets several
FIRST_RETRY = 5.0
PARALLEL_POSTS = 8
GAUGE_INTERVAL = 5.0


def retry_delay(attempts: int, cap: float) -> float:
    """Back-off after the ``attempts``-th failure (1-based): 5, 10, 20 s ... cap."""
    return float(min(cap, FIRST_RETRY * 2 ** max(0, attempts - 1)))


def dsn_ready(
    kind: str, entries: list[OutboxEntry], deliveries: list[Delivery], now: float, delay_warning: float
) -> bool:
    """Pure: may the DSN of ``kind`` about these notices of one message be sent now?

    A bounce DSN waits for every pending delivery not yet attempted (the first pass); a delayed
    one for every pending delivery not yet attempted past ``delay_warning`` (it may get its own
    warning in a moment). A delivery not due before the waiting would end anyway is not waited
    for, and nothing waits beyond DSN_GROUP_MAX after the oldest notice.
    """
    horizon = min(e.created for e in entries) + DSN_GROUP_MAX
    if now >= horizon:
        return True
    for d in deliveries:
        if d.status.is_final or d.next_attempt > horizon:
            continue
        if kind == DSN_DELAYED:
            waiting = d.last_attempt is None or d.last_attempt < d.created + delay_warning
        else:
            waiting = d.attempts == 0
        if waiting:
            return False
    return True


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _subject(message: StoredMessage | None) -> str | None:
    if message is None:
        return None
    for header in message.meta.get("headers") or []:
        if header.get("key") == "subject":
            return str(header.get("line", "")).partition(":")[2].strip()
    return None


def webhook_body(entry: OutboxEntry, message: StoredMessage | None) -> dict[str, Any]:
    """The JSON document of one event: the stored fields plus the message's."""
    p = entry.payload
    return {
        "event": p.get("event"),
        "event_id": f"{entry.message_id}.{p.get('seq')}.{entry.oid}",
        "id": entry.message_id,
        "seq": p.get("seq"),
        "from": message.sender if message is not None else p.get("from"),
        "recipient": p.get("recipient"),
        "zone": p.get("zone"),
        "category": p.get("category"),
        "action": p.get("action"),
        "code": p.get("code"),
        "status": p.get("status"),
        "response": p.get("response"),
        "mx": p.get("mx"),
        "local_address": p.get("local_address"),
        "message_id": message.meta.get("messageId") if message is not None else None,
        "subject": _subject(message),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(p.get("time") or entry.created))),
    }


def _by_message(entries: list[OutboxEntry]) -> dict[tuple[str, str], list[OutboxEntry]]:
    groups: dict[tuple[str, str], list[OutboxEntry]] = defaultdict(list)
    for entry in entries:
        groups[(entry.message_id, entry.kind)].append(entry)
    return groups


class Notifier:
    """Supervisor task: send DSNs and webhook calls from the outbox."""

    def __init__(
        self,
        config: Config,
        store: QueueStore,
        pipeline: IngestPipeline,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self.coordinator = coordinator
        self.urls = {WEBHOOK_EVENTS: config.webhooks.events_url, WEBHOOK_BOUNCE: config.webhooks.bounce_url}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._recheck: dict[tuple[str, str], float] = {}  # (message id, kind) -> next look
        self._leading: bool | None = None  # whether this instance sends the outbox

    async def start(self) -> None:
        try:
            await self.store.outbox_backlog()
        except NotImplementedError:
            log.error("this store backend has no outbox yet: no DSNs or webhooks are sent")
            return
        self._tasks.append(asyncio.create_task(self._loop(self._dsn_round)))
        self._tasks.append(asyncio.create_task(self._gauges()))
        if any(self.urls.values()):
            timeout = aiohttp.ClientTimeout(total=self.config.webhooks.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
            self._tasks.append(asyncio.create_task(self._loop(self._webhook_round)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def backlog(self) -> dict[str, int]:
        return await self.store.outbox_backlog()

    async def _loop(self, round_: Any) -> None:
        while True:
            try:
                busy = await self._lead() and await round_()
            except StoreError as exc:
                log.warning("outbox: store unavailable (%s); retrying", exc)
                busy = False
            except Exception:
                log.exception("outbox round failed; retrying")
                busy = False
            if not busy:
                await asyncio.sleep(POLL)

    async def _lead(self) -> bool:
        """Whether this instance sends the outbox now: one instance of a cluster does, or every
        DSN and webhook call would go out once per instance."""
        leading = await self.store.outbox_lead()
        if leading != self._leading:
            self._leading = leading
            log.info("this instance sends the outbox (DSNs, webhooks)" if leading else
                     "another instance sends the outbox; this one takes over if it stops")  # fmt: skip
        return leading

    async def _gauges(self) -> None:
        """Outbox backlog and parked pairs as gauges (this process is the only one setting them)."""
        seen: set[str] = set()
        while True:
            with contextlib.suppress(StoreError, CoordinationUnavailable):
                backlog = await self.store.outbox_backlog()
                for kind in seen | set(backlog):
                    metrics.OUTBOX_BACKLOG.labels(kind=kind).set(backlog.get(kind, 0))
                seen |= set(backlog)
                if self.coordinator is not None:
                    parked = await self.coordinator.parked(time.time(), PARK_PREFIX)
                    metrics.BLACKLISTED.set(len(parked))
            await asyncio.sleep(GAUGE_INTERVAL)

    # -- DSNs -----------------------------------------------------------------------------

    async def _dsn_round(self) -> bool:
        """Send the DSNs that are ready; True when one was (look again at once)."""
        now = time.time()
        groups = await self._dsn_due(now - DSN_SETTLE)
        self._recheck = {key: t for key, t in self._recheck.items() if key in groups}
        ready: dict[tuple[str, str], list[Delivery]] = {}
        for key, group in groups.items():
            if self._recheck.get(key, 0.0) > now:
                continue
            deliveries = await self.store.get_deliveries(key[0])
            if dsn_ready(key[1], group, deliveries, now, self.config.bounces.delay_warning):
                ready[key] = deliveries
            else:
                self._recheck[key] = now + DSN_RECHECK
        if not ready:
            return False
        # Read the message's notices again, all of them (not just those in the first batch):
        # the notice of every outcome the deliveries above show is visible now (it was
        # committed with the outcome), so no recipient that failed meanwhile is left out.
        for (message_id, kind), deliveries in ready.items():
            notices = await self.store.outbox_due(
                (kind,), time.time(), DSN_MAX_RECIPIENTS, ordered=False, message_id=message_id
            )
            if not notices:
                continue
            try:
                await self._send_dsn(message_id, kind, notices, deliveries)
            except IngestRejected as exc:  # retrying cannot help; StoreError propagates (retry)
                log.error("dsn about %s refused by ingest: %s; not sent", message_id, exc)
            await self.store.outbox_done([e.oid for e in notices])  # only once the DSN is queued
            self._recheck.pop((message_id, kind), None)
        return True

    async def _dsn_due(self, before: float) -> dict[tuple[str, str], list[OutboxEntry]]:
        """The oldest DSN notice written before ``before`` of each (message id, kind), for up to
        DSN_BATCH messages: one message's many notices never hide the other messages' DSNs
        (readiness needs only the oldest; a ready DSN reads all of its message's notices)."""
        return _by_message(await self.store.outbox_due(DSN_KINDS, before, DSN_BATCH, ordered=True))

    async def _send_dsn(
        self, message_id: str, kind: str, group: list[OutboxEntry], deliveries: list[Delivery]
    ) -> None:
        action: Action = "delayed" if kind == DSN_DELAYED else "failed"
        if action == "delayed":  # delivered or bounced since the warning was due: not worth one
            pending = {d.seq for d in deliveries if not d.status.is_final}
            group = [e for e in group if e.payload.get("seq") in pending]
        message = await self.store.get_message(message_id)
        if (
            not group
            or message is None
            or not self.config.bounces.dsn
            or not should_send_dsn(message.sender, message.meta)
        ):
            return
        hostname = self.config.effective_hostname
        data = build_dsn(
            reporting_mta=hostname,
            dsn_from=self.config.bounces.dsn_from or f"MAILER-DAEMON@{hostname}",
            sender=message.sender,
            queue_id=message_id,
            arrival=message.created,
            original_headers=message.headers,
            failed=[FailedRecipient.from_payload(e.payload) for e in group],
            zone=self.config.bounces.zone,
            now=time.time(),
            action=action,
        )
        session = SessionInfo(interface=DSN_INTERFACE, origin="127.0.0.1", originhost="[127.0.0.1]",
                              transhost=hostname, transtype="ESMTP")  # fmt: skip
        eight_bit = not data.isascii()
        submission = self.pipeline.begin(session, "", [message.sender], body8bit=eight_bit,
                                         smtputf8=not message.sender.isascii())  # fmt: skip
        await submission.feed(data)
        dsn_id = await submission.finish()
        log.info("dsn id=%s action=%s about %s to=<%s> recipients=%d", dsn_id, action, message_id,
                 message.sender, len(group))  # fmt: skip

    # -- webhooks -------------------------------------------------------------------------

    async def _webhook_round(self) -> bool:
        kinds = tuple(k for k, url in self.urls.items() if url)
        entries = await self.store.outbox_due(kinds, time.time(), 100)
        if not entries:
            return False
        gate = asyncio.Semaphore(PARALLEL_POSTS)

        async def one(entry: OutboxEntry) -> None:
            async with gate:
                await self._post(entry)

        await asyncio.gather(*(one(e) for e in entries))
        return True

    async def _post(self, entry: OutboxEntry) -> None:
        assert self._session is not None
        message = await self.store.get_message(entry.message_id)
        body = json.dumps(webhook_body(entry, message), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.webhooks.secret:
            headers["X-Zonerelay-Signature"] = signature(self.config.webhooks.secret, body)
        error: str | None = None
        try:
            async with self._session.post(self.urls[entry.kind], data=body, headers=headers) as response:
                if not 200 <= response.status < 300:
                    error = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            await self.store.outbox_done([entry.oid])
            return
        delay = retry_delay(entry.attempts + 1, self.config.webhooks.max_backoff)
        log.warning("webhook %s for %s.%s failed (%s); retry in %.0fs", entry.kind, entry.message_id,
                    entry.payload.get("seq"), error, delay)  # fmt: skip
        with contextlib.suppress(StoreError):
            await self.store.outbox_retry(entry.oid, time.time() + delay, error)
