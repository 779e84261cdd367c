"""The ingest pipeline: one path from a byte stream (SMTP DATA or HTTP upload) to a stored message.

Stages, in order, each explicit so that plugin hooks can sit between them later:

1. split the header section from the body as the bytes stream in (HeaderSplitter);
2. hash the body for DKIM while it streams (BodyHasher, both canonicalisations);
3. write the body to the store in ~256 KiB chunks (never the whole message in memory);
4. at the end of data: parse the headers, add Message-ID and Date when missing, work out the
   delivery time (a future Date: delays delivery), route each recipient to a zone;
5. commit the message and one delivery row per recipient in one durable transaction.

Only after step 5 returns may the caller tell the client "250 queued as <id>".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import idna

from zonerelay import metrics
from zonerelay.config import Config
from zonerelay.dkim.policy import DkimPolicy
from zonerelay.ingest.dkim_hash import BodyHasher
from zonerelay.ingest.headers import (
    Headers,
    HeaderSplitter,
    HeaderTooLarge,
    delivery_time,
    ensure_required,
    parsed_envelope,
)
from zonerelay.smtp.replies import Reply
from zonerelay.store.base import BodyWriter, NewDelivery, NewMessage, Notice, QueueStore
from zonerelay.store.ids import new_queue_id, seq
from zonerelay.zones.routing import SENDING_ZONE_HEADER, Router, UnknownZone

log = logging.getLogger("zonerelay.ingest")

#: Body bytes are handed to the store in chunks of this size: large enough that per-chunk
#: overhead vanishes, small enough that a 1 GiB message never weighs on memory.
CHUNK_SIZE = 256 * 1024

HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section too large")


#: (dropped recipients as {"seq", "recipient", "zone"}, now) -> notices stored with the message
DropNotices = Callable[[list[dict[str, str]], float], tuple[Notice, ...]]


class IngestRejected(Exception):
    """The submission is refused; ``reply`` says why (sent to the SMTP client / HTTP caller)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Who submitted the message and how: kept in the message metadata."""

    interface: str  # "feeder", "api", ...
    origin: str  # peer IP address
    originhost: str  # peer host name, or "[ip]"
    transhost: str | None = None  # EHLO name
    transtype: str = "ESMTP"  # ESMTP, ESMTPS, ESMTPSA, HTTP
    user: str | None = None  # authenticated user
    tls: dict[str, str] | None = None  # {"version", "cipher"}
    extra: dict[str, Any] = field(default_factory=dict)


def recipient_domain(address: str) -> str:
    """The destination key of a recipient: its domain, lower-case, as an IDNA A-label."""
    domain = address.rpartition("@")[2].strip().lower()
    if not domain or domain.startswith("["):
        return domain
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return domain


class Submission:
    """One message on its way in. Feed it body bytes, then ``finish`` or ``abort``."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        session: SessionInfo,
        sender: str,
        recipients: list[str],
        *,
        smtputf8: bool = False,
        body8bit: bool = False,
    ) -> None:
        self._pipeline = pipeline
        self.smtputf8 = smtputf8
        self.body8bit = body8bit
        self.session = session
        self.sender = sender
        self.recipients = recipients
        self.id = new_queue_id()
        self.received = time.time()
        self._splitter = HeaderSplitter(max_header_size=pipeline.max_header_size)
        self._hasher = BodyHasher()
        self._buffer = bytearray()
        self._writer: BodyWriter | None = None
        self._body_size = 0
        self._rejected: Reply | None = None
        self._closed = False
        self.suppressed: set[str] = set()

    @property
    def rejected(self) -> Reply | None:
        """Set once the submission is known to fail; the caller keeps draining input."""
        return self._rejected

    async def feed(self, data: bytes) -> None:
        if self._rejected is not None or self._closed:
            return
        try:
            body = self._splitter.feed(data)
        except HeaderTooLarge:
            await self._reject(HEADER_TOO_BIG)
            return
        if body:
            await self._take_body(body)

    async def _take_body(self, body: bytes) -> None:
        self._hasher.update(body)
        self._body_size += len(body)
        self._buffer += body
        if len(self._buffer) >= CHUNK_SIZE:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = await self._pipeline.store.new_body(self.id)
        chunk = bytes(self._buffer)
        self._buffer.clear()
        await self._writer.write(chunk)

    async def _reject(self, reply: Reply) -> None:
        self._rejected = reply
        metrics.MESSAGE_DROP.inc()
        await self.abort()

    async def finish(self) -> str:
        """Complete the message and commit it durably; returns the queue id."""
        if self._rejected is not None:
            raise IngestRejected(self._rejected)
        try:
            tail = self._splitter.finish()
        except HeaderTooLarge:
            await self._reject(HEADER_TOO_BIG)
            raise IngestRejected(HEADER_TOO_BIG) from None
        if tail:
            await self._take_body(tail)
        try:
            # suppression stage: suppressed recipients get no delivery row and no bounce
            self.suppressed = await self._pipeline.store.is_suppressed(self.recipients)
            message = self._build()
            if self._buffer and self._writer is None:
                self._writer = await self._pipeline.store.new_body(self.id)
            await self._flush()
            await self._pipeline.store.commit_message(message)
        except BaseException:
            metrics.MESSAGE_DROP.inc()
            await self.abort()
            raise
        self._closed = True
        self._pipeline.on_committed(self, message)
        return self.id

    def _build(self) -> NewMessage:
        config = self._pipeline.config
        headers = Headers.parse(self._splitter.header_block)
        added = ensure_required(headers, hostname=config.effective_hostname, now=self.received)
        router = self._pipeline.router
        try:
            zone_for = router.route(headers=headers, sender=self.sender, interface=self.session.interface)
        except UnknownZone as exc:
            raise IngestRejected(exc.reply) from None
        headers.remove(SENDING_ZONE_HEADER)  # an instruction to us, never passed on
        envelope = parsed_envelope(headers)
        # Bcc recipients are in the envelope; the header would show them to everyone else
        # (Postfix's cleanup and ZoneMTA remove it too). Kept in parsedEnvelope for operators.
        headers.remove("bcc")
        deliveries = []
        dropped = []
        for n, rcpt in enumerate(self.recipients, start=1):
            domain = recipient_domain(rcpt)
            if rcpt in self.suppressed:  # seq keeps the recipient's position; suppressed ones leave gaps
                dropped.append({"seq": seq(n), "recipient": rcpt, "zone": zone_for(domain)})
                continue
            deliveries.append(NewDelivery(seq=seq(n), recipient=rcpt, domain=domain, zone=zone_for(domain)))
        drop_notices = self._pipeline.drop_notices
        notices = drop_notices(dropped, self.received) if dropped and drop_notices else ()
        digests = self._hasher.digests()
        meta: dict[str, Any] = {
            "id": self.id,
            "interface": self.session.interface,
            "from": self.sender,
            "to": list(self.recipients),
            "origin": self.session.origin,
            "originhost": self.session.originhost,
            "transhost": self.session.transhost,
            "transtype": self.session.transtype,
            "user": self.session.user,
            "tls": self.session.tls,
            "time": int(self.received * 1000),
            "dkim": {
                "hashAlgo": "sha256",
                "bodyHash": digests["relaxed"],
                "bodyHashSimple": digests["simple"],
            },
            "headers": headers.summary(),
            "addedHeaders": added,
            "messageId": headers.get("message-id"),
            "date": headers.get("date"),
            "parsedEnvelope": envelope,
            "bodySize": self._body_size,
            "suppressed": [r for r in self.recipients if r in self.suppressed],
            # What delivery must ask the receiver for: SMTPUTF8 only when something non-ASCII
            # really is in the envelope or the headers, 8BITMIME when the client declared it.
            "smtputf8": self.smtputf8
            and not (
                self._splitter.header_block.isascii()
                and all(a.isascii() for a in (self.sender, *self.recipients))
            ),
            "body8bit": self.body8bit or self.smtputf8,
            **self.session.extra,
        }
        not_before = delivery_time(headers, self.received)
        if not_before > self.received:
            meta["deliverAfter"] = int(not_before * 1000)
        meta["dkimSignatures"] = self._pipeline.dkim.plan(meta)  # made at send time
        meta["created"] = int(time.time() * 1000)
        return NewMessage(
            id=self.id,
            sender=self.sender,
            recipients=tuple(self.recipients),
            headers=headers.to_bytes() + b"\r\n",
            body_size=self._body_size,
            meta=meta,
            created=self.received,
            not_before=not_before,
            deliveries=tuple(deliveries),
            notices=notices,
        )

    async def abort(self) -> None:
        """Forget the submission; anything half-written is removed (or collected later)."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                await writer.abort()
            except Exception:  # the orphan-body sweep removes it later
                log.warning("could not remove partial body of %s; garbage collection will", self.id)


class IngestPipeline:
    """Builds submissions for one store and configuration; shared by SMTP and HTTP."""

    def __init__(
        self,
        store: QueueStore,
        config: Config,
        router: Router | None = None,
        drop_notices: DropNotices | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.router = router or Router(config)
        # Notices (e.g. "dropped" webhook events) for recipients removed at ingest; set by
        # the service so that ingest does not import the notification layer above it.
        self.drop_notices = drop_notices
        self.max_header_size = 1024 * 1024
        self.accepted = 0
        self.dkim = DkimPolicy(config.dkim)

    def begin(
        self,
        session: SessionInfo,
        sender: str,
        recipients: list[str],
        *,
        smtputf8: bool = False,
        body8bit: bool = False,
    ) -> Submission:
        return Submission(self, session, sender, list(recipients), smtputf8=smtputf8, body8bit=body8bit)

    def on_committed(self, submission: Submission, message: NewMessage) -> None:
        self.accepted += 1
        # each suppressed recipient counts as a drop; every one suppressed: accepted, nothing queued
        if message.deliveries:
            metrics.MESSAGE_PUSH.inc()
        if submission.suppressed:
            metrics.MESSAGE_DROP.inc(len(submission.suppressed))
        log.info(
            "queued id=%s from=<%s> rcpts=%d size=%d interface=%s origin=%s",
            message.id,
            message.sender,
            len(message.deliveries),
            message.body_size + len(message.headers),
            submission.session.interface,
            submission.session.origin,
        )
