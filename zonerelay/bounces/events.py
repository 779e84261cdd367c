"""The notices a delivery outcome leaves in the outbox (sent later by bounces/notify.py)."""

from __future__ import annotations

from typing import Any

from zonerelay.config import Config
from zonerelay.store.base import Delivery, DeliveryStatus, Notice

WEBHOOK_EVENTS = "webhook:events"  # every delivered/deferred/bounced event, to [webhooks] events_url
WEBHOOK_BOUNCE = "webhook:bounce"  # bounced recipients, to [webhooks] bounce_url
DSN = "dsn"  # bounced recipients, a DSN to the envelope sender


def event_payload(
    delivery: Delivery, status: DeliveryStatus, response: str, details: dict[str, Any], now: float
) -> dict[str, Any]:
    return {
        "event": status.value,
        "seq": delivery.seq,
        "recipient": delivery.recipient,
        "zone": delivery.zone,
        "category": details.get("category"),
        "action": details.get("action"),
        "code": details.get("code"),
        "status": details.get("enhanced_status"),
        "reason": details.get("reason"),
        "response": response,
        "mx": details.get("mx"),
        "local_address": details.get("local_address"),
        "time": now,
    }


def dropped_notices(config: Config, dropped: list[dict[str, str]], now: float) -> tuple[Notice, ...]:
    """``dropped`` webhook events for recipients removed at ingest (suppression list).

    Stored with the message itself (NewMessage.notices), so they are as durable as the 250.
    """
    if not config.webhooks.events_url:
        return ()
    return tuple(
        Notice(
            WEBHOOK_EVENTS,
            {
                "event": "dropped",
                "seq": d["seq"],
                "recipient": d["recipient"],
                "zone": d["zone"],
                "category": None,
                "action": None,
                "code": None,
                "status": None,
                "reason": "suppressed",
                "response": "Recipient is on the suppression list; not delivered",
                "mx": None,
                "local_address": None,
                "time": now,
            },
        )
        for d in dropped
    )


def notices_for(
    config: Config,
    delivery: Delivery,
    status: DeliveryStatus,
    response: str,
    details: dict[str, Any],
    now: float,
) -> tuple[Notice, ...]:
    """What to store with this outcome: webhook calls and a DSN request, as configured."""
    hooks = config.webhooks
    wanted = []
    if hooks.events_url:
        wanted.append(WEBHOOK_EVENTS)
    if status is DeliveryStatus.BOUNCED:
        if hooks.bounce_url:
            wanted.append(WEBHOOK_BOUNCE)
        if config.bounces.dsn:
            wanted.append(DSN)
    if not wanted:
        return ()
    payload = event_payload(delivery, status, response, details, now)
    return tuple(Notice(kind, payload) for kind in wanted)
