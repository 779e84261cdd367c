"""Delivery status notifications (RFC 3464) for bounced and delayed recipients.

``build_dsn`` is pure: it turns the original message's envelope and headers plus the reported
recipients into the bytes of one ``multipart/report; report-type=delivery-status`` message: a
human-readable part, the ``message/delivery-status`` fields, and the original header block as
``text/rfc822-headers``. Several recipients of one message share one DSN. ``action`` is
``failed`` (a bounce: 5.x.x) or ``delayed`` (a warning while retries go on: 4.x.x and
``Will-Retry-Until``).

``should_send_dsn`` holds the loop rules: never to the null sender, never about a DSN.
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: The interface name DSNs are submitted on (routing headers are trusted there).
DSN_INTERFACE = "bounce"

Action = Literal["failed", "delayed"]


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One recipient a DSN reports on (bounced, or delayed and still retried)."""

    recipient: str
    response: str  # the receiver's reply (or our failure text)
    status: str | None  # enhanced status code of the reply
    reason: str  # the classification's short label
    mx: str | None
    time: float  # last attempt
    will_retry_until: float | None = None  # delayed only: when retries stop (queued + max_queue_time)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> FailedRecipient:
        return cls(
            recipient=str(payload.get("recipient", "")),
            response=str(payload.get("response", "")),
            status=payload.get("status"),
            reason=str(payload.get("reason", "")),
            mx=payload.get("mx"),
            time=float(payload.get("time", 0.0)),
            will_retry_until=payload.get("will_retry_until"),
        )


def should_send_dsn(sender: str, meta: dict[str, Any]) -> bool:
    """No DSN to the null sender ``<>`` and none about a DSN (no bounce loops)."""
    return bool(sender) and meta.get("interface") != DSN_INTERFACE


def dsn_status(status: str | None, response: str, action: Action = "failed") -> str:
    """The Status field: 5.x.x for a failed recipient (a retried 4.x.x that expired), 4.x.x for a
    delayed one (even after a 5xx that is retried, e.g. a blocklist or full-mailbox reply)."""
    if action == "delayed":
        return "4" + status[1:] if status else "4.0.0"
    if status:
        return "5" + status[1:]
    return "5.0.0" if not response[:1].isdigit() or response.startswith("5") else "5.4.7"


def _header_text(value: str) -> str:
    return " ".join(value.replace("\r", " ").replace("\n", " ").split())


def build_dsn(
    *,
    reporting_mta: str,
    dsn_from: str,
    sender: str,
    queue_id: str,
    arrival: float,
    original_headers: bytes,
    failed: Sequence[FailedRecipient],
    zone: str = "",
    now: float,
    action: Action = "failed",
) -> bytes:
    """The DSN as CRLF-terminated bytes, ready for the ingest pipeline."""
    boundary = f"=_zonerelay_{secrets.token_hex(12)}"
    date = email.utils.formatdate(now, usegmt=True)
    delayed = action == "delayed"
    subject = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    lines = [
        f"From: Mail Delivery System <{dsn_from}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.{secrets.token_hex(4)}.dsn@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    if zone:
        lines.append(f"X-Sending-Zone: {zone}")
    human = [f"This is the mail system at host {reporting_mta}.", ""]
    if delayed:
        human += [
            "Your message could not be delivered yet to one or more recipients. It is still",
            "being retried; you do not need to send it again. If it cannot be delivered by",
            "the time shown below, you will be told. Its headers are attached below.",
            "",
        ]
    else:
        human += [
            "Your message could not be delivered to one or more recipients. It has been",
            "returned to you; its headers are attached below.",
            "",
        ]
    for item in failed:
        human.append(f"<{item.recipient}>: {item.reason}")
        remote = f"host {item.mx} said: " if item.mx else ""
        human.append(f"    {remote}{_header_text(item.response)}")
        if delayed and item.will_retry_until is not None:
            until = email.utils.formatdate(item.will_retry_until, usegmt=True)
            human.append(f"    still being retried until {until}")
        human.append("")
    report = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Zonerelay-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, usegmt=True)}",
    ]
    for item in failed:
        report += [
            "",
            f"Final-Recipient: rfc822; {item.recipient}",
            f"Action: {action}",
            f"Status: {dsn_status(item.status, item.response, action)}",
        ]
        if item.mx:
            report.append(f"Remote-MTA: dns; {item.mx}")
        kind = "smtp" if item.response[:3].isdigit() else "x-zonerelay"
        report.append(f"Diagnostic-Code: {kind}; {_header_text(item.response)}")
        report.append(f"Last-Attempt-Date: {email.utils.formatdate(item.time, usegmt=True)}")
        if delayed and item.will_retry_until is not None:
            report.append(f"Will-Retry-Until: {email.utils.formatdate(item.will_retry_until, usegmt=True)}")
    headers = original_headers.rstrip(b"\r\n")
    eight_bit = not headers.isascii() or any(not f.recipient.isascii() for f in failed)
    cte = "8bit" if eight_bit else "7bit"
    parts = [
        "\r\n".join(lines),
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Transfer-Encoding: {cte}",
        "Content-Description: Notification",
        "",
        "\r\n".join(human),
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        f"Content-Transfer-Encoding: {cte}",
        "Content-Description: Delivery report",
        "",
        "\r\n".join(report),
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        f"Content-Transfer-Encoding: {cte}",
        f"Content-Description: {'Delayed' if delayed else 'Undelivered'} message headers",
        "",
    ]
    head = "\r\n".join(parts).encode("utf-8") + b"\r\n"
    return head + headers + f"\r\n\r\n--{boundary}--\r\n".encode()
