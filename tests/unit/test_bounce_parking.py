"""The retry plan after a classified failure, and the shared parking it relies on."""

from __future__ import annotations

import pytest

from zonerelay.bounces.classify import Classification
from zonerelay.bounces.parking import Parking, next_attempt, park_key, slow_pause, split_park_key
from zonerelay.coord.memory import MemoryCoordinator

NOW = 1_000_000.0
SCHEDULED = NOW + 300


def c(category: str, action: str) -> Classification:
    return Classification(category, action, "x", 550, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("classification", "scheduled", "other_source", "resume_at", "expected"),
    [
        (c("recipient", "reject"), SCHEDULED, False, None, (None, "final")),
        (c("greylist", "defer"), SCHEDULED, False, None, (SCHEDULED, "schedule")),
        (c("transient", "defer"), None, False, None, (None, "expired")),  # bounces with its category
        (c("blacklist", "defer"), SCHEDULED, True, NOW + 21600, (NOW, "other-source")),  # at once
        (c("blacklist", "defer"), SCHEDULED, False, NOW + 21600, (SCHEDULED, "parked")),  # all parked
        (c("blacklist", "defer"), SCHEDULED, False, NOW + 60, (NOW + 60, "parked")),  # park ends first
        (c("blacklist", "defer"), None, True, NOW + 60, (None, "expired")),
        (c("rate_limit", "defer"), SCHEDULED, False, NOW + 30, (NOW + 30, "slowed")),
        (c("mailbox_full", "defer"), SCHEDULED, False, None, (SCHEDULED, "schedule")),
    ],
)
def test_next_attempt_table(
    classification: Classification,
    scheduled: float | None,
    other_source: bool,
    resume_at: float | None,
    expected: tuple[float | None, str],
) -> None:
    plan = next_attempt(
        classification, scheduled=scheduled, now=NOW, other_source=other_source, resume_at=resume_at
    )
    assert (plan.next_attempt, plan.reason) == expected


@pytest.mark.parametrize(("strikes", "pause"), [(1, 30), (2, 60), (3, 120), (8, 1800), (50, 1800)])
def test_slow_down_pause_doubles_up_to_a_cap(strikes: int, pause: float) -> None:
    assert slow_pause(strikes, 30, 1800) == pause


def test_park_keys_round_trip_ipv6() -> None:
    assert split_park_key(park_key("2001:db8::1", "MX.Example.com.")) == ("2001:db8::1", "mx.example.com")


async def test_parking_is_per_mx_and_slow_downs_grow_then_recover() -> None:
    parking = Parking(MemoryCoordinator(), blacklist_ttl=3600, pause=30, max_pause=600)
    await parking.park("127.0.0.2", "mx1.example.com", "554 blocked", NOW)
    assert await parking.parked_sources("mx1.example.com", NOW + 10) == {"127.0.0.2"}
    assert await parking.parked_sources("mx2.example.com", NOW + 10) == frozenset()
    assert await parking.parked_sources("mx1.example.com", NOW + 3601) == frozenset()  # expired
    first = await parking.slow_down("default", "example.com", "421 too fast", NOW)
    second = await parking.slow_down("default", "example.com", "421 too fast", NOW + 1)
    assert (first, second) == (NOW + 30, NOW + 61)
    assert await parking.slowed_until("default", "example.com", NOW + 2) == NOW + 61
    assert await parking.slowed_until("default", "example.com", NOW + 62) is None  # recovered
    assert await parking.slowed_until("default", "other.com", NOW + 2) is None
