"""Prometheus metrics with ZoneMTA's names and labels, shared by ingest, delivery and the API.

Deliveries happen in several worker processes, so the counters use prometheus-client's
multiprocess mode: ``zonerelay serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at
``<data_dir>/metrics`` and empties it *before* this module is first imported (see
``zonerelay.api.multiproc``); the workers inherit the variable, each process writes its own
memory-mapped files, and ``GET /metrics`` in the supervisor sums them. When a worker exits the
supervisor calls ``process_exited`` so its live gauges (pool size) stop counting. Without the
variable (tests, tools) the metrics live in this process's default registry.

The queue size gauge is not kept here: the API reads it from the store at scrape time, so it
is exactly what the queue holds, whichever process changed it.

Increment with one line where things happen, e.g.
``metrics.DELIVERY_STATUS.labels(result="delivered", zone=zone).inc()``.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge

ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Outcome of each delivery attempt. result: delivered | rejected (hard bounce) | deferred.
DELIVERY_STATUS = Counter(
    "zonemta_delivery_status", "Delivery attempts by result and sending zone", ["result", "zone"]
)
#: Notifications waiting in the outbox, by kind (dsn, webhook:events, webhook:bounce); set by
#: the supervisor from the store.
OUTBOX_BACKLOG = Gauge(
    "zonerelay_outbox_backlog", "DSNs and webhook calls not sent yet", ["kind"], multiprocess_mode="livesum"
)
#: Failed delivery attempts by bounce category and action (zonerelay/bounces/).
BOUNCES = Counter(
    "zonerelay_bounces",
    "Failed delivery attempts by bounce category and action",
    ["category", "action", "zone"],
)
#: Messages accepted and stored for delivery.
MESSAGE_PUSH = Counter("zonemta_message_push", "Messages stored for delivery")
#: Messages (or suppressed recipients) not accepted for delivery.
MESSAGE_DROP = Counter(
    "zonemta_message_drop",
    "Messages not accepted for delivery (rejected, failed to store) and suppressed recipients dropped",
)
#: Parked (blacklisted) localAddress:MX pairs; set by the supervisor from the coordinator.
BLACKLISTED = Gauge(
    "zonemta_blacklisted", "Blacklisted domain:localAddress pairs", multiprocess_mode="livesum"
)
#: Destinations (domains or providers, per zone) paused or slowed after a rate-limit reply;
#: every worker sets it from the shared coordinator, so the live maximum is the count.
RATE_LIMITED = Gauge(
    "zonerelay_rate_limited_destinations",
    "Destinations paused or running at reduced connections after a rate-limit reply",
    multiprocess_mode="livemax",
)
#: Times an idle pooled connection was reused instead of opening a new one.
CONNECTION_REUSES = Counter("zonemta_connection_reuses", "Pooled SMTP connections reused")
#: Idle connections held in the pools of all live worker processes.
CONNECTION_POOL_SIZE = Gauge(
    "zonemta_connection_pool_size", "Idle pooled SMTP connections", multiprocess_mode="livesum"
)

#: Worker verdict kind -> the reference's ``result`` label.
RESULT = {"delivered": "delivered", "bounced": "rejected", "deferred": "deferred"}


def result(status: str) -> str:
    """The ``result`` label for a delivery status (unknown ones pass through unchanged)."""
    return RESULT.get(status, status)


def process_exited(pid: int) -> None:
    """Forget a dead process's live gauges (its counters keep counting in the sums)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    return os.environ.get(ENV) or None


__all__ = [
    "BLACKLISTED",
    "BOUNCES",
    "CONNECTION_POOL_SIZE",
    "CONNECTION_REUSES",
    "DELIVERY_STATUS",
    "MESSAGE_DROP",
    "MESSAGE_PUSH",
    "OUTBOX_BACKLOG",
    "RATE_LIMITED",
    "RESULT",
    "multiprocess_dir",
    "process_exited",
    "result",
]
