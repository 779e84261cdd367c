"""Routing priority: X-Sending-Zone > routing_headers > sender_domains > recipient_domains > default."""

from __future__ import annotations

from typing import Any

import pytest

from zonerelay.config import Config, load_config
from zonerelay.ingest.headers import Headers
from zonerelay.zones.routing import Router, UnknownZone

ZONES: dict[str, Any] = {
    "default": {},
    "byheader": {"routing_headers": {"X-User-ID": "123"}},
    "bysender": {"sender_domains": ["Trusted.Example"]},
    "byrcpt": {"recipient_domains": ["gmail.test", "kreata.test"]},
    "chosen": {},
}


def config() -> Config:
    return load_config(
        overrides={"zones": ZONES, "smtp": {"feeder": {}, "trusted": {"allow_routing_headers": True}}}
    )


def headers(*lines: str) -> Headers:
    return Headers.parse("".join(f"{line}\r\n" for line in lines).encode())


def route(interface: str, *lines: str) -> dict[str, str]:
    zone_for = Router(config()).route(headers=headers(*lines), sender="env@else.test", interface=interface)
    return {d: zone_for(d) for d in ("gmail.test", "other.test")}


ALL = (
    "X-Sending-Zone: chosen",
    "X-User-ID: 123",
    "From: Boss <boss@trusted.example>",
)


def test_each_rule_in_priority_order() -> None:
    assert route("trusted", *ALL) == {"gmail.test": "chosen", "other.test": "chosen"}
    assert route("trusted", *ALL[1:]) == {"gmail.test": "byheader", "other.test": "byheader"}
    assert route("trusted", *ALL[2:]) == {"gmail.test": "bysender", "other.test": "bysender"}
    assert route("trusted", "From: someone@else.test") == {"gmail.test": "byrcpt", "other.test": "default"}
    assert route("trusted") == {"gmail.test": "byrcpt", "other.test": "default"}


def test_routing_header_values_must_match_exactly() -> None:
    assert route("feeder", "X-User-ID: 1234")["other.test"] == "default"
    assert route("feeder", "x-user-id:   123  ")["other.test"] == "byheader"  # name case, spaces


def test_x_sending_zone_is_ignored_on_interfaces_that_do_not_allow_it() -> None:
    assert route("feeder", *ALL)["other.test"] == "byheader"
    assert route("feeder", "X-Sending-Zone: nonexistent")["other.test"] == "default"  # no error either


def test_api_and_bounce_interfaces_allow_it_by_default() -> None:
    router = Router(config())
    assert router.allows_routing_header("api") and router.allows_routing_header("bounce")
    assert not router.allows_routing_header("feeder")
    assert router.allows_routing_header("trusted")


def test_an_unknown_zone_is_refused_with_a_reason() -> None:
    with pytest.raises(UnknownZone) as caught:
        route("trusted", "X-Sending-Zone: nonexistent")
    reply = caught.value.reply
    assert reply.code == 550 and reply.status == "5.6.0" and "nonexistent" in str(reply)


def test_recipient_domains_are_matched_case_insensitively() -> None:
    zone_for = Router(config()).route(headers=headers(), sender="", interface="feeder")
    assert zone_for("KREATA.test") == "byrcpt"
