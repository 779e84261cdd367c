"""The queue store interface: the only thing ingest and delivery share.

Processes never hand messages to each other in memory; they pass them through the store,
which is what makes `kill -9` safe and several instances possible. Every backend (SQLite
embedded, PostgreSQL shared) implements this one interface and passes one contract suite
(tests/store/contract.py).

Model:
- a *message*: envelope, metadata (JSON), the final header block, and a body kept as ordered
  chunks. Bodies are written chunk by chunk while the client is still sending (never whole
  in memory) and become visible only when `commit_message` stores the message row and its
  deliveries in one durable transaction.
- a *delivery*: one recipient of one message (`seq` "001", "002", ...), routed to a zone,
  with status, next-attempt time, attempt count, last response, and a *lease* (owner and
  expiry). A worker claims due deliveries with a lease; a lease that is not renewed expires,
  so a dead worker's deliveries come back by themselves; `release` gives them back at once.
- an *event*: one line of delivery history per attempt (delivered/deferred/bounced/...).

Final rows (delivered, bounced) stay queryable for a retention window, then
`collect_garbage` removes them. A body's chunks are removed as soon as no pending delivery
needs them (the message row and headers stay while any delivery row is kept).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


class StoreError(Exception):
    """Base class for store failures."""


class StoreUnavailable(StoreError):
    """The store cannot take writes right now (locked, disk full, server down): retry later (4xx)."""


class BodyGone(StoreError):
    """The body was garbage-collected (no pending delivery needed it) or never committed."""


class MessageExists(StoreError):
    """A message with this id is already stored."""


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for its first attempt
    DEFERRED = "deferred"  # failed softly, waiting for next_attempt
    DELIVERED = "delivered"  # final: a receiver said 2xx
    BOUNCED = "bounced"  # final: rejected, or out of retries

    @property
    def is_final(self) -> bool:
        return self in (DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED)


PENDING = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    seq: str
    recipient: str
    domain: str
    zone: str


@dataclass(frozen=True, slots=True)
class NewMessage:
    """Everything committed at once when a submission ends."""

    id: str
    sender: str  # envelope MAIL FROM, "" for the null sender
    recipients: tuple[str, ...]
    headers: bytes  # final header block, CRLF line endings, ending with the blank line
    body_size: int  # bytes of body chunks written (excluding headers)
    meta: dict[str, Any]  # JSON-serialisable metadata (the /message/<id> "meta")
    created: float  # unix time
    not_before: float  # first attempt time (a future Date: header delays delivery)
    deliveries: tuple[NewDelivery, ...]
    # Notifications born at submission (e.g. "dropped" webhook events of suppressed
    # recipients), stored in the outbox in the same transaction as the message.
    notices: tuple[Notice, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    sender: str
    recipients: tuple[str, ...]
    headers: bytes
    body_size: int
    meta: dict[str, Any]
    created: float


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    seq: str
    recipient: str
    domain: str
    zone: str
    status: DeliveryStatus
    attempts: int
    created: float
    next_attempt: float
    first_failure: float | None
    last_attempt: float | None
    last_response: str | None
    lease_owner: str | None
    lease_until: float | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.id, self.seq)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery attempt, recorded by `record_outcome`.

    status DELIVERED/BOUNCED is final; DEFERRED needs next_attempt. `details` (MX, local
    IP, TLS, duration, category...) is kept in the event row as JSON.
    """

    status: DeliveryStatus
    response: str
    time: float
    next_attempt: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    counts_as_attempt: bool = True  # False for "released without trying" (e.g. shutdown)
    # Notifications (webhook calls, DSNs) stored in the same transaction as the new state
    # (a transactional outbox), so a crash can neither lose them nor send them for nothing.
    notices: tuple[Notice, ...] = ()


@dataclass(frozen=True, slots=True)
class Notice:
    """Something to tell the outside world about an outcome; ``kind`` names the sender task
    ("webhook", "dsn"), ``payload`` is JSON-serialisable."""

    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A stored Notice waiting to be sent; ``oid`` grows in commit order."""

    oid: int
    kind: str
    message_id: str
    payload: dict[str, Any]
    created: float
    attempts: int
    next_try: float
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    seq: str
    time: float
    status: str
    response: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    deferred: int
    delivered: int
    bounced: int
    messages: int
    leased: int
    by_zone: dict[str, dict[str, int]]  # zone -> status -> rows


@dataclass(frozen=True, slots=True)
class GcResult:
    deliveries: int  # final rows past retention removed
    messages: int  # messages with no delivery row left removed (with their bodies)
    orphan_bodies: int  # bodies of submissions that never committed, removed


@dataclass(frozen=True, slots=True)
class SuppressionEntry:
    """A suppressed recipient address or a whole recipient domain (exactly one is set)."""

    id: str
    address: str | None = None
    domain: str | None = None


class BodyWriter(abc.ABC):
    """Appends chunks of one message body before the message is committed."""

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None:
        """Append one chunk (the caller sends chunks of ~64-256 KiB)."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Drop what was written: the submission failed and will never be committed."""


class QueueStore(abc.ABC):
    """One narrow interface over the durable queue. All methods are coroutines."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect / create the schema if needed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and close; pending writes complete first."""

    # -- ingest ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def new_body(self, message_id: str) -> BodyWriter:
        """Start a body for a message that is not committed yet."""

    @abc.abstractmethod
    async def commit_message(self, message: NewMessage) -> None:
        """Store the message row and its deliveries atomically and durably.

        When this returns, the message survives a crash or power cut (the SMTP 250 is sent
        after it). Raises MessageExists for a duplicate id, StoreUnavailable when the store
        cannot take the write.
        """

    # -- delivery -------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(
        self, owner: str, limit: int, lease_seconds: float, now: float, zones: frozenset[str] | None = None
    ) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries (pending, next_attempt <= now, lease free or
        expired), oldest due first. Two owners never hold the same delivery."""

    @abc.abstractmethod
    async def renew_leases(
        self, owner: str, keys: list[tuple[str, str]], lease_seconds: float, now: float
    ) -> int:
        """Extend the owner's leases on these deliveries; returns how many it still held."""

    @abc.abstractmethod
    async def release(
        self, owner: str, keys: list[tuple[str, str]] | None = None, *, keep: Sequence[tuple[str, str]] = ()
    ) -> int:
        """Give back leases so others may claim at once: the owner's on ``keys``, or when keys
        is None all of the owner's but those on ``keep`` (a worker's in-flight deliveries: the
        rest are leases it holds without knowing, say from a claim whose answer was lost)."""

    @abc.abstractmethod
    async def record_outcome(self, key: tuple[str, str], owner: str, outcome: Outcome) -> bool:
        """Apply an attempt's outcome, write its event, and drop the lease, in one transaction.

        Applies only if the delivery is still pending; returns False otherwise (another owner
        finished it first). A final outcome is recorded even if the lease expired meanwhile:
        the receiver has answered, and a second attempt would only duplicate. Idempotent: the
        same outcome again (a retry after its answer was lost with the connection) changes
        nothing and returns True.
        """

    @abc.abstractmethod
    def read_body(self, message_id: str) -> AsyncIterator[bytes]:
        """Yield the stored body chunks in order (never the whole body at once).

        Raises BodyGone when the message has no stored body any more."""

    # -- inspection ---------------------------------------------------------------------
    @abc.abstractmethod
    async def get_message(self, message_id: str) -> StoredMessage | None: ...

    @abc.abstractmethod
    async def get_deliveries(self, message_id: str) -> list[Delivery]: ...

    @abc.abstractmethod
    async def get_events(self, message_id: str) -> list[Event]: ...

    @abc.abstractmethod
    async def list_deliveries(
        self,
        statuses: tuple[DeliveryStatus, ...] | None = None,
        zone: str | None = None,
        limit: int = 1000,
    ) -> list[Delivery]:
        """Deliveries in created order, filtered by status and zone."""

    @abc.abstractmethod
    async def stats(self) -> QueueStats: ...

    @abc.abstractmethod
    async def next_due(self) -> float | None:
        """The earliest next_attempt among pending deliveries (for sleeping until then)."""

    @abc.abstractmethod
    async def lease_holders(self, now: float) -> dict[str, int]:
        """Live leases (``lease_until >= now``) per owner: what each worker and instance holds,
        and what a dead instance left behind for the survivors to release."""

    # -- housekeeping -------------------------------------------------------------------
    @abc.abstractmethod
    async def collect_garbage(self, now: float, retention: float, orphan_age: float) -> GcResult:
        """Remove final deliveries whose last change is older than ``retention``; messages
        with no delivery row left; body chunks of messages with no pending delivery; and
        uncommitted bodies untouched for ``orphan_age`` seconds."""

    # -- outbox (notifications written with outcomes; zonerelay/bounces/) ---------------------
    async def outbox_due(
        self,
        kinds: tuple[str, ...],
        now: float,
        limit: int = 100,
        *,
        ordered: bool = True,
        message_id: str | None = None,
    ) -> list[OutboxEntry]:
        """Entries of ``kinds`` due at ``now``, oldest first. ``ordered``: leave out any entry of
        a message that has an older entry of the same kind still waiting (in order per message).
        ``message_id``: only that message's entries."""
        raise NotImplementedError

    async def outbox_done(self, oids: list[int]) -> None:
        """Remove sent entries."""
        raise NotImplementedError

    async def outbox_retry(self, oid: int, next_try: float, error: str) -> None:
        """Count a failed send and set when to try again."""
        raise NotImplementedError

    async def outbox_backlog(self) -> dict[str, int]:
        """Entries waiting, by kind."""
        raise NotImplementedError

    async def outbox_lead(self) -> bool:
        """Whether this store object is the one that sends the outbox now. One holder at a time
        across every process and instance that shares the store (else each would send every
        DSN and webhook call); the holder keeps it until it closes, and one that dies or loses
        its connection frees it for another. Asked before every round: cheap when held."""
        raise NotImplementedError

    @abc.abstractmethod
    async def postpone(self, zone: str, domain: str, until: float, now: float) -> int:
        """Make the pending deliveries of ``zone``/``domain`` that are due at ``now`` and not
        leased due at ``until`` instead (not an attempt): a worker whose places for that
        destination are all busy keeps the rest of its backlog from being claimed meanwhile.
        Returns the number of rows changed."""

    # -- operator actions (HTTP API) -------------------------------------------------------
    @abc.abstractmethod
    async def retry_now(
        self, now: float, *, message_id: str | None = None, zone: str | None = None, domain: str | None = None
    ) -> int:
        """Make pending deliveries that match every given selector due at ``now`` (a deferred
        or delayed row is tried on the next claim); rows leased right now are left alone.
        At least one selector is required (ValueError). Returns the number of rows changed."""

    @abc.abstractmethod
    async def drop_deliveries(
        self, now: float, *, message_id: str | None = None, zone: str | None = None, domain: str | None = None
    ) -> int:
        """Remove the pending deliveries that match every given selector, leased or not.

        Dropped rows are deleted (not turned into bounces: nothing is sent, nobody is notified);
        an event with status "dropped" records each one. A message left without pending rows
        has its body marked dead exactly as after its last final outcome, so garbage collection
        removes the chunks and, once no delivery row is left, the message. A worker still
        holding a lease on a dropped row finds it gone (``record_outcome`` returns False).
        At least one selector is required (ValueError). Returns the number of rows dropped."""

    # -- suppression list -------------------------------------------------------------------
    @abc.abstractmethod
    async def add_suppression(
        self, *, address: str | None = None, domain: str | None = None
    ) -> SuppressionEntry:
        """Suppress one address or one domain (exactly one; compared case-insensitively, stored
        lower-case). Adding an existing entry returns it unchanged."""

    @abc.abstractmethod
    async def list_suppressions(self, limit: int = 10000) -> list[SuppressionEntry]:
        """Entries in the order they were added."""

    @abc.abstractmethod
    async def delete_suppression(self, entry_id: str) -> bool:
        """Remove one entry; False if there was none with this id."""

    @abc.abstractmethod
    async def is_suppressed(self, recipients: Iterable[str]) -> set[str]:
        """The recipients (as given) whose address or domain is suppressed. Called once per
        message at ingest, so one indexed lookup, not a scan of the list."""
