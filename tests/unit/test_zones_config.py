"""Bad zone configurations stop start-up with a message naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zonerelay.config import ConfigError, load_config


def error(**overrides: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    return str(caught.value)


def test_an_explicit_empty_pool() -> None:
    assert "zones.default.pool" in error(zones={"default": {"pool": []}})


def test_a_ratio_outside_zero_to_one() -> None:
    message = error(zones={"default": {"pool": [{"address": "127.0.0.2", "ratio": 1.5}]}})
    assert "zones.default.pool.0.ratio" in message
    message = error(zones={"default": {"pool": [{"address": "127.0.0.2", "ratio": -0.1}]}})
    assert "zones.default.pool.0.ratio" in message


def test_ratios_that_add_up_to_more_than_the_whole_zone() -> None:
    pool = [{"address": "127.0.0.2", "ratio": 0.7}, {"address": "127.0.0.3", "ratio": 0.7}]
    assert "add up to 1.4" in error(zones={"default": {"pool": pool}})


def test_an_address_this_host_cannot_bind() -> None:
    message = error(zones={"default": {"pool": [{"address": "127.0.0.2"}, {"address": "192.0.2.1"}]}})
    assert "zones.default.pool.1.address" in message and "cannot bind 192.0.2.1" in message
    assert "zones.default.pool.0.address" in error(zones={"default": {"pool": [{"address": "not-an-ip"}]}})


def test_a_domain_routed_to_two_zones() -> None:
    message = error(
        zones={
            "default": {"recipient_domains": ["gmail.test"]},
            "bulk": {"recipient_domains": ["GMAIL.test"]},
        }
    )
    assert "zones.bulk.recipient_domains" in message and "'default'" in message


def test_bad_limits_and_unknown_keys() -> None:
    assert "zones.default.throttling" in error(zones={"default": {"throttling": "fast"}})
    assert "zones.default.connections" in error(zones={"default": {"connections": 0}})
    rate = error(zones={"default": {"domain_config": {"gmail.test": {"rate": "0/minute"}}}})
    assert "zones.default.domain_config.gmail.test.rate" in rate
    assert "providers.google.mx_suffixes" in error(providers={"google": {"rate": "10/s"}})
    assert "zones.default.pol: unknown key" in error(zones={"default": {"pol": []}})


def test_rates_in_every_spelling() -> None:
    zone = {
        "throttling": "10 messages/minute",
        "domain_config": {
            "a.test": {"rate": "100/minute"},
            "b.test": {"rate": "5/10s"},
            "c.test": {"rate": "2/hour"},
        },
    }
    config = load_config(overrides={"zones": {"default": zone}})
    default = config.zones["default"]
    assert default.throttling == (10, 60.0)
    assert [default.domain_config[d].rate for d in ("a.test", "b.test", "c.test")] == [
        (100, 60.0),
        (5, 10.0),
        (2, 3600.0),
    ]


def test_serve_refuses_to_start_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[zones.bulk]\npool = [{ name = "a.test", address = "127.0.0.2", ratio = 2 }]\n')
    result = subprocess.run(
        [sys.executable, "-m", "zonerelay.cli", "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "zones.bulk.pool.0.ratio" in result.stderr
