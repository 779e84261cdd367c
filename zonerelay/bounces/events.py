"""The notices a delivery outcome leaves in the outbox (sent later by bounces/notify.py)."""

from __future__ import annotations

from typing import Any

from zonerelay.config import Config
from zonerelay.store.base import Delivery, DeliveryStatus, Notice

WEBHOOK_EVENTS = "webhook:events"  # every delivered/deferred/bounced event, to [webhooks] events_url
WEBHOOK_BOUNCE = "webhook:bounce"  # bounced recipients, to [webhooks] bounce_url
DSN = "dsn"  # bounced recipients, a DSN to the envelope sender
DSN_DELAYED = "dsn:delayed"  # recipients still retried after [bounces] delay_warning


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


def crossed_delay_warning(delivery: Delivery, now: float, delay_warning: float) -> bool:
    """True for the one attempt at which a delivery first has been queued ``delay_warning`` long.

    The previous attempt (``last_attempt``, None before the first) was still under the limit and
    this one is past it, so each delivery is warned about exactly once, with no state of its own.
    """
    if delay_warning <= 0:
        return False
    limit = delivery.created + delay_warning
    return now >= limit and (delivery.last_attempt is None or delivery.last_attempt < limit)


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
    """What to store with this outcome, as configured: webhook calls, a DSN request for a bounce,
    and a "delayed" DSN request for the deferral that first passes ``[bounces] delay_warning``."""
    hooks = config.webhooks
    wanted = []
    if hooks.events_url:
        wanted.append(WEBHOOK_EVENTS)
    if status is DeliveryStatus.BOUNCED:
        if hooks.bounce_url:
            wanted.append(WEBHOOK_BOUNCE)
        if config.bounces.dsn:
            wanted.append(DSN)
    delayed = (
        status is DeliveryStatus.DEFERRED
        and config.bounces.dsn
        and crossed_delay_warning(delivery, now, config.bounces.delay_warning)
    )
    if not wanted and not delayed:
        return ()
    payload = event_payload(delivery, status, response, details, now)
    notices = [Notice(kind, payload) for kind in wanted]
    if delayed:
        until = delivery.created + config.queue.max_queue_time
        notices.append(Notice(DSN_DELAYED, {**payload, "will_retry_until": until}))
    return tuple(notices)
