"""The coordinator contract: behaviour every Coordinator shows, whatever holds the state.

A backend's test module subclasses ``CoordinatorContract`` and supplies a ``coord``
fixture yielding an opened coordinator with no state. Tests pass explicit ``now`` values
(``T0`` plus offsets) and never sleep.
"""

from __future__ import annotations

import asyncio

from zonerelay.coord.base import Coordinator

T0 = 1_700_000_000.0


class CoordinatorContract:
    # -- slots ---------------------------------------------------------------------------
    async def test_slots_are_capped(self, coord: Coordinator) -> None:
        got = [await coord.acquire_slot("zone:default", 3, f"h{i}", 30, T0) for i in range(5)]
        assert got == [True, True, True, False, False]
        assert await coord.slot_count("zone:default", T0) == 3
        assert await coord.slot_count("zone:other", T0) == 0

    async def test_reacquire_by_the_same_holder_does_not_take_another_slot(self, coord: Coordinator) -> None:
        assert await coord.acquire_slot("k", 1, "h", 30, T0)
        assert await coord.acquire_slot("k", 1, "h", 30, T0 + 1)
        assert await coord.slot_count("k", T0 + 1) == 1

    async def test_released_slot_is_free_again(self, coord: Coordinator) -> None:
        assert await coord.acquire_slot("k", 1, "a", 30, T0)
        assert not await coord.acquire_slot("k", 1, "b", 30, T0)
        await coord.release_slot("k", "a")
        await coord.release_slot("k", "never-held")  # harmless
        assert await coord.acquire_slot("k", 1, "b", 30, T0)

    async def test_slot_expires_without_renewal(self, coord: Coordinator) -> None:
        assert await coord.acquire_slot("k", 1, "a", 10, T0)
        assert await coord.slot_count("k", T0 + 9.9) == 1
        assert not await coord.acquire_slot("k", 1, "b", 10, T0 + 9.9)
        assert await coord.slot_count("k", T0 + 10) == 0
        assert await coord.acquire_slot("k", 1, "b", 10, T0 + 10)

    async def test_renew_keeps_slots_alive(self, coord: Coordinator) -> None:
        assert await coord.acquire_slot("k1", 2, "a", 10, T0)
        assert await coord.acquire_slot("k2", 2, "b", 10, T0)
        await coord.renew_slots([("k1", "a"), ("k2", "b")], 10, T0 + 8)
        assert await coord.slot_count("k1", T0 + 15) == 1
        assert await coord.slot_count("k2", T0 + 15) == 1
        assert await coord.slot_count("k1", T0 + 18) == 0

    async def test_renew_does_not_revive_an_expired_or_released_slot(self, coord: Coordinator) -> None:
        assert await coord.acquire_slot("k", 1, "a", 10, T0)
        await coord.renew_slots([("k", "a")], 10, T0 + 11)
        assert await coord.slot_count("k", T0 + 11) == 0
        assert await coord.acquire_slot("k", 1, "b", 10, T0 + 11)
        await coord.release_slot("k", "b")
        await coord.renew_slots([("k", "b"), ("k", "ghost")], 10, T0 + 12)
        await coord.renew_slots([], 10, T0 + 12)
        assert await coord.slot_count("k", T0 + 12) == 0

    async def test_concurrent_acquirers_never_exceed_the_limit(self, coord: Coordinator) -> None:
        got = await asyncio.gather(*(coord.acquire_slot("k", 4, f"h{i}", 30, T0) for i in range(20)))
        assert sum(got) == 4
        assert await coord.slot_count("k", T0) == 4

    async def test_a_lower_limit_applies_to_new_holders_only(self, coord: Coordinator) -> None:
        for i in range(3):
            assert await coord.acquire_slot("k", 3, f"h{i}", 30, T0)
        assert not await coord.acquire_slot("k", 2, "new", 30, T0)
        assert await coord.acquire_slot("k", 2, "h0", 30, T0)  # an existing holder renews

    # -- rates ---------------------------------------------------------------------------
    async def test_rate_allows_count_then_says_how_long_to_wait(self, coord: Coordinator) -> None:
        for i in range(5):
            assert await coord.rate_take("r", 5, 60, T0 + i) == 0.0
        wait = await coord.rate_take("r", 5, 60, T0 + 10)
        assert abs(wait - 50.0) < 0.01  # the first event leaves the window at T0 + 60
        assert await coord.rate_take("r", 5, 60, T0 + 59.9) > 0  # refused: nothing was reserved
        assert await coord.rate_take("r", 5, 60, T0 + 60) == 0.0
        assert await coord.rate_take("r", 5, 60, T0 + 60.5) > 0

    async def test_rate_keys_are_independent(self, coord: Coordinator) -> None:
        assert await coord.rate_take("a", 1, 10, T0) == 0.0
        assert await coord.rate_take("b", 1, 10, T0) == 0.0
        assert await coord.rate_take("a", 1, 10, T0) > 0

    async def test_rate_holds_over_a_long_run(self, coord: Coordinator) -> None:
        # demand every 0.1 s for 10 minutes against 30 per minute: about 300 events pass,
        # and no 60-second window ever holds more than 30
        taken: list[float] = []
        for step in range(6000):
            now = T0 + step * 0.1
            if await coord.rate_take("r", 30, 60, now) == 0.0:
                taken.append(now)
        assert 290 <= len(taken) <= 330
        for i in range(len(taken) - 30):
            assert taken[i + 30] - taken[i] >= 60 - 1e-6

    async def test_concurrent_rate_takers_share_the_budget(self, coord: Coordinator) -> None:
        waits = await asyncio.gather(*(coord.rate_take("r", 7, 60, T0) for _ in range(20)))
        assert sum(1 for w in waits if w == 0.0) == 7

    # -- parking -------------------------------------------------------------------------
    async def test_park_until_and_expiry(self, coord: Coordinator) -> None:
        await coord.park("park:127.0.0.2:mx.example.com", T0 + 600, "550 5.7.1 blocklisted")
        await coord.park("park:127.0.0.3:mx.example.com", T0 + 60, "421 try later")
        await coord.park("other:x", T0 + 600, "r")
        parked = await coord.parked(T0, prefix="park:")
        assert [(p.key, p.until, p.reason) for p in parked] == [
            ("park:127.0.0.2:mx.example.com", T0 + 600, "550 5.7.1 blocklisted"),
            ("park:127.0.0.3:mx.example.com", T0 + 60, "421 try later"),
        ]
        assert [p.key for p in await coord.parked(T0 + 60, prefix="park:")] == [
            "park:127.0.0.2:mx.example.com"
        ]
        assert len(await coord.parked(T0)) == 2  # the expired one is gone for good
        assert await coord.parked(T0 + 600) == []

    async def test_unpark_and_repark(self, coord: Coordinator) -> None:
        await coord.park("p", T0 + 60, "first")
        await coord.park("p", T0 + 120, "second")  # parking again replaces
        assert [(p.until, p.reason) for p in await coord.parked(T0)] == [(T0 + 120, "second")]
        assert await coord.unpark("p") is True
        assert await coord.unpark("p") is False
        assert await coord.parked(T0) == []

    # -- instances -----------------------------------------------------------------------
    async def test_heartbeats_and_instances(self, coord: Coordinator) -> None:
        await coord.heartbeat("a", {"workers": 2, "version": "0.1"}, 10, T0)
        await coord.heartbeat("b", {}, 10, T0 + 5)
        live = await coord.instances(T0 + 6)
        assert [(i.instance_id, i.last_seen, i.info) for i in live] == [
            ("a", T0, {"workers": 2, "version": "0.1"}),
            ("b", T0 + 5, {}),
        ]
        assert [i.instance_id for i in await coord.instances(T0 + 10)] == ["b"]  # a went silent
        await coord.heartbeat("a", {"workers": 3}, 10, T0 + 12)  # and came back
        assert [(i.instance_id, i.info) for i in await coord.instances(T0 + 13)] == [
            ("a", {"workers": 3}),
            ("b", {}),
        ]
        assert await coord.instances(T0 + 30) == []
