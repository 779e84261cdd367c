"""POST /send (JSON) and POST /send-raw (message/rfc822, streamed): both feed the ingest
pipeline exactly as SMTP DATA does, so headers, DKIM body hash, suppression and routing are
the same code. HTTP bodies may use bare LF; the pipeline expects CRLF text, so every chunk
passes a line-ending normaliser first."""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any

from aiohttp import web

from zonerelay.api.compose import MAX_RECIPIENTS, compose, parse_request, valid_mailbox
from zonerelay.api.context import context
from zonerelay.api.errors import ApiError, json_object
from zonerelay.ingest.headers import Headers, HeaderSplitter, HeaderTooLarge, parsed_envelope
from zonerelay.ingest.pipeline import CHUNK_SIZE, IngestRejected, SessionInfo, Submission
from zonerelay.zones.routing import SENDING_ZONE_HEADER

log = logging.getLogger("zonerelay.api")

#: Bytes read from the HTTP body per step of /send-raw.
READ_SIZE = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CrlfNormaliser:
    """Turns bare LF and bare CR into CRLF, for any chunking (a CR at a chunk end waits)."""

    __slots__ = ("_cr", "last")

    def __init__(self) -> None:
        self._cr = False
        self.last = b""  # last byte emitted, to know whether the message ends with a line break

    def feed(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr = True
        out = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if out:
            self.last = out[-1:]
        return out

    def finish(self) -> bytes:
        """What is still held back, plus a final CRLF when the message did not end with one."""
        if self._cr:
            self._cr = False
            self.last = b"\n"
            return b"\r\n"
        if self.last not in (b"\n", b""):
            self.last = b"\n"
            return b"\r\n"
        return b""


def session_info(request: web.Request) -> SessionInfo:
    """SessionInfo(interface="api"): X-Originating-IP (or the peer) and X-Authenticated-User."""
    peer = request.remote or "unknown"
    origin = request.headers.get("X-Originating-IP", "").strip().strip("[]")
    if origin:
        try:
            origin = str(ipaddress.ip_address(origin))
        except ValueError:
            raise ApiError(400, "invalid_header", "X-Originating-IP is not an IP address") from None
    user = request.headers.get("X-Authenticated-User")
    if user is not None and (not user.strip() or len(user) > 256 or _CONTROL.search(user)):
        raise ApiError(400, "invalid_header", "X-Authenticated-User must be 1-256 printable characters")
    origin = origin or peer
    return SessionInfo(
        interface="api",
        origin=origin,
        originhost=f"[{origin}]",
        transtype="HTTP",
        user=user.strip() if user else None,
        extra={"peer": peer},
    )


def check_zone(headers: Headers | dict[str, Any], zones: frozenset[str]) -> None:
    """An X-Sending-Zone naming no configured zone is a caller error, said as such."""
    if isinstance(headers, Headers):
        wanted: Any = headers.get(SENDING_ZONE_HEADER)
    else:
        wanted = next((v for k, v in headers.items() if k.lower() == SENDING_ZONE_HEADER), None)
        wanted = wanted[0] if isinstance(wanted, list) and wanted else wanted
    if isinstance(wanted, str) and wanted.strip() and wanted.strip() not in zones:
        raise ApiError(400, "unknown_zone", f"X-Sending-Zone names an unknown zone: {wanted.strip()!r}")


async def _finish(submission: Submission, sender: str, recipients: list[str]) -> web.Response:
    try:
        queue_id = await submission.finish()
    except IngestRejected as exc:
        reply = exc.reply
        status = 413 if reply.code == 552 else 503 if 400 <= reply.code < 500 else 400
        raise ApiError(status, "rejected", str(reply)) from None
    suppressed = sorted(submission.suppressed)
    body: dict[str, Any] = {
        "id": queue_id,
        "from": sender,
        "to": recipients,
        "response": f"Message queued as {queue_id}",
    }
    if suppressed:
        body["suppressed"] = suppressed
    return web.json_response(body)


async def send_json(request: web.Request) -> web.Response:
    """POST /send: a Nodemailer message object."""
    pipeline = context(request).pipeline
    max_size = context(request).max_size
    if request.content_length is not None and request.content_length > max_size * 4 // 3 + 65536:
        raise ApiError(413, "too_large", f"the message exceeds {max_size} bytes")
    req = parse_request(await json_object(request))
    check_zone(req.headers, frozenset(pipeline.config.zones))
    session = session_info(request)
    message = compose(req, pipeline.config.effective_hostname)
    if len(message.raw) > max_size:
        raise ApiError(413, "too_large", f"the message exceeds {max_size} bytes")
    submission = pipeline.begin(
        session, message.sender, message.recipients, smtputf8=message.smtputf8, body8bit=message.body8bit
    )
    try:
        normaliser = CrlfNormaliser()
        for start in range(0, len(message.raw), CHUNK_SIZE):
            await submission.feed(normaliser.feed(message.raw[start : start + CHUNK_SIZE]))
        await submission.feed(normaliser.finish())
    except BaseException:
        await submission.abort()
        raise
    return await _finish(submission, message.sender, message.recipients)


def _query_addresses(request: web.Request, name: str) -> list[str]:
    out: list[str] = []
    for value in request.query.getall(name, []):
        out += [a.strip() for a in value.split(",") if a.strip()]
    return out


async def send_raw(request: web.Request) -> web.Response:
    """POST /send-raw: an RFC 5322 message, read and stored chunk by chunk."""
    pipeline = context(request).pipeline
    max_size = context(request).max_size
    if request.content_length is not None and request.content_length > max_size:
        raise ApiError(413, "too_large", f"the message exceeds {max_size} bytes")
    session = session_info(request)
    normaliser = CrlfNormaliser()
    splitter = HeaderSplitter(max_header_size=pipeline.max_header_size)
    head = bytearray()  # normalised bytes read while looking for the end of the header section
    size = 0
    stream = request.content
    try:
        while not splitter.done:
            chunk = await stream.read(READ_SIZE)
            size += len(chunk)
            data = normaliser.feed(chunk) if chunk else normaliser.finish()
            head += data
            splitter.feed(data)
            if not chunk:
                splitter.finish()
                break
            if size > max_size:
                raise ApiError(413, "too_large", f"the message exceeds {max_size} bytes")
    except HeaderTooLarge:
        raise ApiError(413, "header_too_large", "the message header section is too large") from None
    headers = Headers.parse(splitter.header_block)
    check_zone(headers, frozenset(pipeline.config.zones))
    sender, recipients = _raw_envelope(request, headers)
    smtputf8 = not all(a.isascii() for a in (sender, *recipients)) or not splitter.header_block.isascii()
    submission = pipeline.begin(session, sender, recipients, smtputf8=smtputf8, body8bit=True)
    try:
        await submission.feed(bytes(head))
        del head
        while True:
            chunk = await stream.read(READ_SIZE)
            if not chunk:
                break
            size += len(chunk)
            if size > max_size:
                raise ApiError(413, "too_large", f"the message exceeds {max_size} bytes")
            await submission.feed(normaliser.feed(chunk))
        await submission.feed(normaliser.finish())
    except BaseException:
        await submission.abort()
        raise
    if size > max_size:
        await submission.abort()
        raise ApiError(413, "too_large", f"the message exceeds {max_size} bytes")
    return await _finish(submission, sender, recipients)


def _raw_envelope(request: web.Request, headers: Headers) -> tuple[str, list[str]]:
    """Envelope from the query (?from=&to=, repeated or comma-separated) or else the headers."""
    parsed = parsed_envelope(headers)
    sender = request.query.get("from")
    if sender is None:
        sender = parsed["from"] or parsed["sender"] or ""
    sender = sender.strip()
    if sender and not valid_mailbox(sender):
        raise ApiError(400, "invalid_address", f"sender {sender!r} is not an email address")
    recipients = _query_addresses(request, "to")
    if not recipients:
        recipients = [*parsed["to"], *parsed["cc"], *parsed["bcc"]]
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        raise ApiError(400, "missing_recipients", "no recipients: give To/Cc/Bcc headers or ?to=")
    if len(recipients) > MAX_RECIPIENTS:
        raise ApiError(400, "too_many_recipients", f"at most {MAX_RECIPIENTS} recipients per message")
    for rcpt in recipients:
        if not valid_mailbox(rcpt):
            raise ApiError(400, "invalid_address", f"recipient {rcpt!r} is not an email address")
    if not sender and request.query.get("from") is None:
        raise ApiError(400, "missing_from", "no sender: give a From header or ?from=")
    return sender, recipients
