"""Retry policy: when to try a soft-failed delivery again, and when to give up.

A pure function of (attempts so far, when it was queued, now, configuration), so that it is
tested as a table with no clock and no sleeps. The default schedule follows ZoneMTA: 5, 7, 8,
25, 75, 120 minutes, then every 4 hours, until the maximum queue time, then a bounce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    defer_minutes: Sequence[float]  # the n-th deferral waits defer_minutes[n-1] (last one repeats)
    max_queue_time: float  # seconds since the message was queued

    def delay(self, deferrals: int) -> float:
        """Seconds to wait after the ``deferrals``-th soft failure (1-based)."""
        index = min(max(deferrals, 1), len(self.defer_minutes)) - 1
        return float(self.defer_minutes[index]) * 60.0

    def next_attempt(self, *, deferrals: int, queued_at: float, now: float) -> float | None:
        """When to try again after a soft failure, or None when the delivery must bounce.

        ``deferrals`` counts this failure too. A delivery whose next try would fall past the
        maximum queue time gets one last attempt at that limit, then bounces.
        """
        deadline = queued_at + self.max_queue_time
        if now >= deadline:
            return None
        return min(now + self.delay(deferrals), deadline)
