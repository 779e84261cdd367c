"""The retry plan after a classified failure, and the shared parking it relies on."""

from __future__ import annotations

import pytest

from zonerelay.bounces.classify import Classification
from zonerelay.bounces.parking import (
    Parking,
    Slowdown,
    next_attempt,
    park_key,
    slow_pause,
    slow_step,
    split_park_key,
    split_slow_key,
)
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
    # from a transaction started before the pause: the same strike, not a second one
    during = await parking.slow_down("default", "example.com", "421 too fast", NOW + 1)
    second = await parking.slow_down("default", "example.com", "421 too fast", NOW + 31)
    assert (first, during, second) == (NOW + 30, NOW + 30, NOW + 91)
    assert await parking.slowed_until("default", "example.com", NOW + 32) == NOW + 91
    assert await parking.slowed_until("default", "example.com", NOW + 92) is None  # recovered
    assert await parking.slowed_until("default", "other.com", NOW + 2) is None


BASE, GAP, RECOVERY = 8, 0.5, 300


@pytest.mark.parametrize(
    ("strikes", "elapsed", "expected"),
    [
        (1, -10, (1, 4, 0.5)),  # still paused: the limits that follow the pause
        (1, 0, (1, 4, 0.5)),  # half the connections, one new transaction per gap
        (1, 299, (1, 4, 0.5)),
        (1, 300, None),  # one recovery period takes the only strike back: full speed
        (2, 0, (2, 2, 1.0)),  # a second strike halves again and doubles the gap
        (2, 300, (1, 4, 0.5)),  # one step back
        (2, 600, None),
        (3, 0, (3, 1, 2.0)),
        (4, 0, (4, 1, 4.0)),  # never below one connection; the gap keeps growing
        (4, 300, (3, 1, 2.0)),
        (4, 900, (1, 4, 0.5)),
        (12, 0, (12, 1, 60.0)),  # the gap is capped: something still goes out each minute
        (99, 16 * 300 - 1, (1, 4, 0.5)),  # strikes beyond MAX_STRIKES do not stretch recovery
    ],
)
def test_slow_step_halves_per_strike_and_recovers_one_step_per_period(
    strikes: int, elapsed: float, expected: tuple[int, int, float] | None
) -> None:
    step = slow_step(strikes, base=BASE, elapsed=elapsed, recovery=RECOVERY, gap=GAP)
    assert (None if step is None else (step.level, step.cap, step.gap)) == expected


@pytest.mark.parametrize(
    ("base", "recovery", "gap", "expected"),
    [
        (1, 300, 0.5, (1, 1, 0.5)),  # a cap of one stays one; the gap still slows it
        (20, 300, 0.0, (1, 10, 0.0)),  # no gap configured
        (20, 0, 0.5, None),  # recovery 0: a slow-down is the pause only
    ],
)
def test_slow_step_edges(
    base: int, recovery: float, gap: float, expected: tuple[int, int, float] | None
) -> None:
    step = slow_step(1, base=base, elapsed=1, recovery=recovery, gap=gap)
    assert (None if step is None else (step.level, step.cap, step.gap)) == expected


async def test_a_slowdown_is_shared_steps_back_each_period_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coordinator = MemoryCoordinator()  # one shared coordinator, two processes' Parking

    def parking() -> Parking:
        return Parking(coordinator, blacklist_ttl=3600, pause=30, max_pause=600, recovery=RECOVERY, gap=GAP,
                       base=lambda zone, target: BASE)  # fmt: skip

    here, there = parking(), parking()
    caplog.set_level("INFO", "zonerelay.bounces")
    await here.slow_down("default", "provider=microsoft", "421 4.7.0 too many connections", NOW)
    await here.slow_down("default", "provider=microsoft", "421 4.7.0 too many connections", NOW + 31)
    stepped_down = "slowing down default/provider=microsoft for 60s (strike 2), then at most 2 connections"
    assert stepped_down in caplog.text

    def seen(s: Slowdown | None) -> tuple[bool, int, float] | None:
        return None if s is None or s.step is None else (s.paused(at), s.step.cap, s.step.gap)

    timeline = []
    for at in (NOW + 32, NOW + 92, NOW + 91 + 300, NOW + 91 + 600):
        timeline.append(seen(await there.slowdown("default", "provider=microsoft", at)))
    assert timeline == [(True, 2, 1.0), (False, 2, 1.0), (False, 4, 0.5), None]
    assert "rate limit recovery: default/provider=microsoft now at most 4 connections" in caplog.text
    assert "rate limit recovered: default/provider=microsoft back to full speed" in caplog.text
    assert [s.target for s in await here.slowed(NOW + 100)] == ["provider=microsoft"]
    assert await here.slowed(NOW + 91 + 600) == []  # the entry lasts until recovered, no longer
    [entry] = await coordinator.parked(NOW + 100, "slow:")
    assert entry.reason.startswith(f"x2 until={NOW + 91:.3f} 421 4.7.0")  # the listed format
    assert split_slow_key(entry.key) == ("default", "provider=microsoft")
