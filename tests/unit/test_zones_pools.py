"""Source address choice: ratio shares, stability per domain, exclusions, IP versions."""

from __future__ import annotations

from collections import Counter
from typing import Any

from zonerelay.config import Config, load_config
from zonerelay.zones.pools import Pools, Source

DOMAINS = [f"domain{i}.test" for i in range(4000)]
POOL = [
    {"name": "mta2.test", "address": "127.0.0.2"},
    {"name": "mta3.test", "address": "127.0.0.3"},
    {"name": "mta4.test", "address": "127.0.0.4"},
    {"name": "warmup.test", "address": "127.0.0.5", "ratio": 0.05},  # ZoneMTA's 1/20 example
]


def config(**zone: Any) -> Config:
    return load_config(overrides={"hostname": "relay.test", "zones": {"default": zone}})


def shares(pools: Pools, zone: str = "default") -> dict[str | None, float]:
    counts = Counter(chosen.address for d in DOMAINS if (chosen := pools.choose(zone, d)) is not None)
    return {address: n / len(DOMAINS) for address, n in counts.items()}


def test_ratio_is_the_share_of_the_zone_and_unrated_addresses_split_the_rest() -> None:
    got = shares(Pools(config(pool=POOL)))
    # 4 000 domains: the binomial standard deviation of a 5 % share is 0.34 points, of a
    # 31.7 % share 0.74 points; the tolerances are about 4 of them.
    assert abs(got["127.0.0.5"] - 0.05) < 0.015, got
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        assert abs(got[address] - 0.95 / 3) < 0.03, got


def test_explicit_ratios_everywhere_and_ratio_zero() -> None:
    pool = [
        {"address": "127.0.0.2", "ratio": 0.7},
        {"address": "127.0.0.3", "ratio": 0.3},
        {"address": "127.0.0.4", "ratio": 0},
    ]
    got = shares(Pools(config(pool=pool)))
    assert "127.0.0.4" not in got
    assert abs(got["127.0.0.2"] - 0.7) < 0.03 and abs(got["127.0.0.3"] - 0.3) < 0.03


def test_a_ratio_of_one_means_only_this_address() -> None:
    pool = [{"address": "127.0.0.2"}, {"address": "127.0.0.3", "ratio": 1}]
    assert shares(Pools(config(pool=pool))) == {"127.0.0.3": 1.0}


def test_the_choice_is_stable_per_domain_and_across_processes() -> None:
    first = Pools(config(pool=POOL))
    second = Pools(config(pool=POOL))  # another worker process builds its own
    for domain in DOMAINS[:500]:
        chosen = first.choose("default", domain)
        assert chosen == first.choose("default", domain) == second.choose("default", domain)


def test_removing_an_address_moves_only_the_domains_it_had() -> None:
    # (ZoneMTA warns that any pool change reshuffles every domain; here only the removed
    # address's domains move, as long as the other addresses keep their relative weights.)
    even = [{"address": f"127.0.0.{n}"} for n in range(2, 6)]
    before = Pools(config(pool=even))
    after = Pools(config(pool=even[1:]))
    moved = 0
    for domain in DOMAINS:
        old = before.choose("default", domain)
        new = after.choose("default", domain)
        assert old is not None and new is not None
        if old.address == "127.0.0.2":
            moved += 1
        else:
            assert new == old, domain  # greylisting state elsewhere is kept
    assert moved > 1000


def test_ehlo_name_comes_from_the_pool_entry_or_the_hostname() -> None:
    pools = Pools(config(pool=[{"address": "127.0.0.2"}, {"name": "named.test", "address": "127.0.0.3"}]))
    names = {chosen.address: chosen.name for d in DOMAINS[:200] if (chosen := pools.choose("default", d))}
    assert names == {"127.0.0.2": "relay.test", "127.0.0.3": "named.test"}


def test_without_a_pool_the_os_picks_the_address() -> None:
    assert Pools(config()).choose("default", "example.com") == Source(None, "relay.test")


def test_exclude_gives_the_next_best_address_stably() -> None:
    pools = Pools(config(pool=POOL))
    for domain in DOMAINS[:300]:
        first = pools.choose("default", domain)
        assert first is not None and first.address is not None
        second = pools.choose("default", domain, exclude={first.address})
        assert second is not None and second.address != first.address
        assert pools.choose("default", domain, exclude={first.address}) == second
    everything = {str(entry["address"]) for entry in POOL}
    assert pools.choose("default", "example.com", exclude=everything) is None


def test_disabled_addresses_are_never_used_for_their_domain() -> None:
    disabled = ["domain1.test", "domain2.test", "Domain3.TEST"]
    pools = Pools(
        config(
            pool=POOL,
            disabled_addresses={d: ["127.0.0.2", "127.0.0.5"] for d in disabled[:2]},
            domain_config={
                disabled[2]: {"disabled_addresses": ["127.0.0.2", "127.0.0.5"]}
            },  # ZoneMTA's shape
        )
    )
    for domain in ("domain1.test", "domain2.test", "domain3.test"):
        for n in range(50):  # the same domain, whatever else is excluded
            chosen = pools.choose("default", domain, exclude={"127.0.0.3"} if n % 2 else set())
            assert chosen is not None and chosen.address not in {"127.0.0.2", "127.0.0.5"}
    # other domains still use every address
    assert set(shares(pools)) == {"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}


def test_ipv6_only_where_the_zone_allows_it() -> None:
    pool = [{"address": "127.0.0.2"}, {"address": "::1", "name": "v6.test"}]
    ignoring = Pools(config(pool=pool))
    assert ignoring.choose("default", "example.com", version=6) is None
    allowing = Pools(config(pool=pool, ignore_ipv6=False))
    assert allowing.choose("default", "example.com", version=6) == Source("::1", "v6.test")
    for domain in DOMAINS[:200]:  # an IPv4 MX never gets the IPv6 address, and vice versa
        assert allowing.choose("default", domain, version=4) == Source("127.0.0.2", "relay.test")
    v4_only = Pools(config(pool=pool[:1], ignore_ipv6=False))
    assert v4_only.choose("default", "example.com", version=6) is None


def test_each_zone_has_its_own_pool_and_the_same_ip_may_serve_several() -> None:
    pools = Pools(
        load_config(
            overrides={
                "zones": {
                    "default": {"pool": [{"address": "127.0.0.2"}]},
                    "bulk": {"pool": [{"address": "127.0.0.2"}, {"address": "127.0.0.3"}]},
                }
            }
        )
    )
    assert {pools.choose("default", d).address for d in DOMAINS[:100]} == {"127.0.0.2"}  # type: ignore[union-attr]
    assert {pools.choose("bulk", d).address for d in DOMAINS[:100]} == {"127.0.0.2", "127.0.0.3"}  # type: ignore[union-attr]
