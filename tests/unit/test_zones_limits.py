"""Which limits a delivery is subject to: zone, domain and provider (MX rollup) keys."""

from __future__ import annotations

from typing import Any

from zonerelay.config import Config, load_config
from zonerelay.zones.limits import destination, provider_for


def config(**overrides: Any) -> Config:
    return load_config(overrides=overrides)


CONFIG = config(
    zones={
        "default": {
            "connections": 10,
            "domain_config": {"Gmail.test": {"max_connections": 2, "rate": "100/minute"}},
        },
        "bulk": {},
    },
    providers={
        "google": {"mx_suffixes": [".google.test", "googlemail.test"], "max_connections": 5, "rate": "5/s"},
        "other": {"mx_suffixes": ["other.test"]},
    },
)


def test_provider_is_found_by_mx_host_suffix_on_a_label_boundary() -> None:
    assert provider_for(CONFIG, ["aspmx.l.google.test."]) == "google"
    assert provider_for(CONFIG, ["mx.example.test", "alt1.googlemail.test"]) == "google"
    assert provider_for(CONFIG, ["googlemail.test"]) == "google"
    assert provider_for(CONFIG, ["mx.notgoogle.test", "evilgooglemail.test"]) is None
    assert provider_for(CONFIG, ["MX.OTHER.TEST"]) == "other"


def test_zone_domain_and_provider_limits_all_apply() -> None:
    dest = destination(CONFIG, "default", "gmail.test", ["aspmx.l.google.test"])
    assert dest.provider == "google"
    assert dest.slots == (("zone:default", 10), ("dest:default:gmail.test", 2), ("prov:default:google", 5))
    assert dest.rates == (("rate:default:gmail.test", 100, 60.0), ("rate:default:prov:google", 5, 1.0))
    assert dest.group == "dest:default:gmail.test|prov:default:google"


def test_domains_on_one_provider_share_its_keys_and_pooled_connections() -> None:
    one = destination(CONFIG, "bulk", "a.test", ["mx1.google.test"])
    two = destination(CONFIG, "bulk", "b.test", ["mx2.google.test"])
    assert one.slots == two.slots == (("prov:bulk:google", 5),)  # counted per zone
    assert one.group == two.group


def test_an_unlimited_destination_has_no_keys() -> None:
    dest = destination(CONFIG, "bulk", "example.test", ["mx.example.test"])
    assert dest.slots == () and dest.rates == () and dest.group == ""
