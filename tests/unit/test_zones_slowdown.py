"""What a rate-limit slow-down does to a destination's limits: which key it is counted under,
the cap it steps down from, and the extra slot and gap a slowed destination gets."""

from __future__ import annotations

from zonerelay.config import load_config
from zonerelay.zones.limits import base_connections, destination, slow_target, slowed

CONFIG = load_config(
    overrides={
        "delivery": {"destination_concurrency": 20},
        "zones": {
            "default": {"connections": 10, "domain_config": {"small.test": {"max_connections": 3}}},
            "bulk": {},
        },
        "providers": {
            "microsoft": {"mx_suffixes": ["protection.outlook.test"], "max_connections": 6},
            "nocap": {"mx_suffixes": ["nocap.test"]},
        },
    }
)


def test_a_provider_rollup_is_slowed_as_one_destination() -> None:
    one = destination(CONFIG, "default", "a.test", ["a-test.mail.protection.outlook.test"])
    two = destination(CONFIG, "default", "b.test", ["b-test.mail.protection.outlook.test"])
    assert one.target == two.target == "provider=microsoft"
    assert destination(CONFIG, "default", "plain.test", ["mx.plain.test"]).target == "plain.test"
    assert slow_target("plain.test", None) == "plain.test"


def test_the_cap_a_slowdown_steps_down_from_is_the_tightest_configured() -> None:
    assert base_connections(CONFIG, "default", "provider=microsoft") == 6  # provider under zone's 10
    assert base_connections(CONFIG, "default", "small.test") == 3  # the domain's own
    assert base_connections(CONFIG, "default", "plain.test") == 10  # the zone's
    assert base_connections(CONFIG, "bulk", "provider=nocap") == 20  # none: destination_concurrency
    assert base_connections(CONFIG, "bulk", "plain.test") == 20


def test_a_slowed_destination_gets_a_slot_per_strike_and_a_gap() -> None:
    dest = destination(CONFIG, "default", "a.test", ["mx.protection.outlook.test"])
    one = slowed(dest, strikes=1, cap=3, gap=0.5)
    assert one.slots[-1] == ("slowed:default:provider=microsoft:x1", 3)
    assert one.rates[-1] == ("rate:default:slowed:provider=microsoft", 1, 0.5)
    # a new strike is a new limit group: connections from before it are not reused
    two = slowed(dest, strikes=2, cap=1, gap=1.0)
    assert len({dest.group, one.group, two.group}) == 3
    assert slowed(dest, strikes=1, cap=6, gap=0.0).rates == dest.rates  # no gap configured
