"""MX resolution against a real DNS server (dnsmasq on loopback)."""

from __future__ import annotations

import socket
import time

import idna
import pytest

from tests.fixtures.dns import DnsServer
from zonerelay.delivery.mx import DnsPermanentError, DnsTemporaryError, MxHost, MxResolver


def resolver_for(server: DnsServer, **kwargs: object) -> MxResolver:
    return MxResolver([server.address], timeout=2.0, **kwargs)  # type: ignore[arg-type]


async def test_mx_priorities_and_address_order(dns_server: DnsServer) -> None:
    dns_server.add_mx("example.test", "mx2.example.test", 20)
    dns_server.add_mx("example.test", "mx1.example.test", 10)
    dns_server.add_a("mx1.example.test", "127.0.0.2")
    dns_server.add_aaaa("mx1.example.test", "::1")
    dns_server.add_a("mx2.example.test", "127.0.0.3")
    dns_server.start()
    resolver = resolver_for(dns_server)

    hosts = await resolver.resolve("Example.TEST.", ignore_ipv6=False)
    assert hosts == [
        MxHost(10, "mx1.example.test", ("127.0.0.2", "::1")),
        MxHost(20, "mx2.example.test", ("127.0.0.3",)),
    ]
    hosts = await resolver.resolve("example.test", ignore_ipv6=True)
    assert [h.addresses for h in hosts] == [("127.0.0.2",), ("127.0.0.3",)]


async def test_equal_priorities_are_shuffled(dns_server: DnsServer) -> None:
    for i in range(4):
        dns_server.add_mx("many.test", f"mx{i}.many.test", 10)
        dns_server.add_a(f"mx{i}.many.test", f"127.0.1.{i + 1}")
    dns_server.add_mx("many.test", "backup.many.test", 50)
    dns_server.add_a("backup.many.test", "127.0.1.99")
    dns_server.start()
    resolver = resolver_for(dns_server)
    orders = set()
    for _ in range(30):
        hosts = await resolver.resolve("many.test", ignore_ipv6=True)
        assert hosts[-1].hostname == "backup.many.test"
        orders.add(tuple(h.hostname for h in hosts[:4]))
    assert len(orders) > 1


async def test_implicit_mx(dns_server: DnsServer) -> None:
    dns_server.add_a("implicit.test", "127.0.0.4")
    dns_server.add_aaaa("implicit.test", "::1")
    dns_server.start()
    hosts = await resolver_for(dns_server).resolve("implicit.test", ignore_ipv6=False)
    assert hosts == [MxHost(0, "implicit.test", ("127.0.0.4", "::1"))]


async def test_ipv6_only_host_with_ignore_ipv6_is_permanent(dns_server: DnsServer) -> None:
    dns_server.add_mx("v6.test", "mx.v6.test", 10)
    dns_server.add_aaaa("mx.v6.test", "::1")
    dns_server.start()
    resolver = resolver_for(dns_server)
    assert await resolver.resolve("v6.test", ignore_ipv6=False) == [MxHost(10, "mx.v6.test", ("::1",))]
    with pytest.raises(DnsPermanentError) as info:
        await resolver.resolve("v6.test", ignore_ipv6=True)
    assert info.value.status == "5.1.2"


async def test_null_mx(dns_server: DnsServer) -> None:
    dns_server.null_mx("nomail.test")
    dns_server.start()
    with pytest.raises(DnsPermanentError) as info:
        await resolver_for(dns_server).resolve("nomail.test", ignore_ipv6=True)
    assert info.value.status == "5.1.10"
    assert not info.value.transient
    assert "null MX" in str(info.value)


async def test_nxdomain(dns_server: DnsServer) -> None:
    dns_server.start()
    with pytest.raises(DnsPermanentError) as info:
        await resolver_for(dns_server).resolve("does-not-exist.test", ignore_ipv6=True)
    assert info.value.status == "5.1.2"


async def test_mx_hosts_without_addresses(dns_server: DnsServer) -> None:
    dns_server.add_mx("dangling.test", "gone.dangling.test", 10)
    dns_server.start()
    with pytest.raises(DnsPermanentError) as info:
        await resolver_for(dns_server).resolve("dangling.test", ignore_ipv6=False)
    assert info.value.status == "5.1.2"


async def test_unusable_mx_is_skipped(dns_server: DnsServer) -> None:
    dns_server.add_mx("partial.test", "gone.partial.test", 5)
    dns_server.add_mx("partial.test", "mx.partial.test", 10)
    dns_server.add_a("mx.partial.test", "127.0.0.7")
    dns_server.start()
    hosts = await resolver_for(dns_server).resolve("partial.test", ignore_ipv6=True)
    assert hosts == [MxHost(10, "mx.partial.test", ("127.0.0.7",))]


async def test_idn_domain(dns_server: DnsServer) -> None:
    a_label = "xn--80aalaxjd5d.xn--c1avg"
    u_label = idna.decode(a_label)  # a Cyrillic name; built here to keep the source ASCII
    assert idna.encode(u_label, uts46=True).decode() == a_label
    dns_server.add_mx(a_label, f"mx.{a_label}", 10)
    dns_server.add_a(f"mx.{a_label}", "127.0.0.8")
    dns_server.start()
    resolver = resolver_for(dns_server)
    expected = [MxHost(10, f"mx.{a_label}", ("127.0.0.8",))]
    assert await resolver.resolve(u_label, ignore_ipv6=True) == expected
    assert await resolver.resolve(u_label.upper(), ignore_ipv6=True) == expected
    assert await resolver.resolve(a_label, ignore_ipv6=True) == expected


async def test_domain_literals_need_no_dns() -> None:
    resolver = MxResolver(["127.0.0.1:9"], timeout=0.5)
    assert await resolver.resolve("[127.0.0.1]", ignore_ipv6=True) == [
        MxHost(0, "[127.0.0.1]", ("127.0.0.1",))
    ]
    assert await resolver.resolve("[IPv6:::1]", ignore_ipv6=False) == [MxHost(0, "[IPv6:::1]", ("::1",))]
    with pytest.raises(DnsPermanentError):
        await resolver.resolve("[IPv6:::1]", ignore_ipv6=True)
    with pytest.raises(DnsPermanentError):
        await resolver.resolve("[300.1.1.1]", ignore_ipv6=True)


async def test_cache_honours_ttl(tmp_path_factory: pytest.TempPathFactory) -> None:
    now = [1000.0]
    with DnsServer(tmp_path_factory.mktemp("dns"), ttl=30) as server:
        server.add_mx("cached.test", "mx1.cached.test", 10).add_a("mx1.cached.test", "127.0.0.2")
        server.restart()
        resolver = MxResolver([server.address], timeout=2.0, clock=lambda: now[0])
        first = await resolver.resolve("cached.test", ignore_ipv6=True)
        assert first[0].addresses == ("127.0.0.2",)

        server.clear().add_mx("cached.test", "mx1.cached.test", 10).add_a("mx1.cached.test", "127.0.0.3")
        server.restart()
        now[0] += 29
        assert await resolver.resolve("cached.test", ignore_ipv6=True) == first
        now[0] += 2
        again = await resolver.resolve("cached.test", ignore_ipv6=True)
        assert again[0].addresses == ("127.0.0.3",)

        uncached = MxResolver([server.address], timeout=2.0, cache=False)
        assert (await uncached.resolve("cached.test", ignore_ipv6=True))[0].addresses == ("127.0.0.3",)


async def test_cache_max_ttl_caps_ttl(tmp_path_factory: pytest.TempPathFactory) -> None:
    now = [0.0]
    with DnsServer(tmp_path_factory.mktemp("dns"), ttl=3600) as server:
        server.add_a("capped.test", "127.0.0.2").restart()
        resolver = MxResolver([server.address], timeout=2.0, cache_max_ttl=10, clock=lambda: now[0])
        assert (await resolver.resolve("capped.test", ignore_ipv6=True))[0].addresses == ("127.0.0.2",)
        server.clear().add_a("capped.test", "127.0.0.9").restart()
        now[0] = 11
        assert (await resolver.resolve("capped.test", ignore_ipv6=True))[0].addresses == ("127.0.0.9",)


async def test_negative_answers_are_cached_briefly(dns_server: DnsServer) -> None:
    now = [0.0]
    dns_server.start()
    resolver = MxResolver([dns_server.address], timeout=2.0, clock=lambda: now[0])
    with pytest.raises(DnsPermanentError):
        await resolver.resolve("later.test", ignore_ipv6=True)
    dns_server.add_a("later.test", "127.0.0.5").restart()
    with pytest.raises(DnsPermanentError):
        await resolver.resolve("later.test", ignore_ipv6=True)
    now[0] = 61
    assert (await resolver.resolve("later.test", ignore_ipv6=True))[0].addresses == ("127.0.0.5",)


def _dead_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_dead_nameserver_is_temporary_within_timeout() -> None:
    resolver = MxResolver([f"127.0.0.1:{_dead_udp_port()}"], timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DnsTemporaryError) as info:
        await resolver.resolve("example.test", ignore_ipv6=True)
    assert time.monotonic() - started < 2.5
    assert info.value.status == "4.4.3"
    assert info.value.transient


async def test_silent_nameserver_times_out() -> None:
    # A bound socket that never answers: a real timeout rather than ICMP "port unreachable".
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        resolver = MxResolver([f"127.0.0.1:{port}"], timeout=0.5)
        started = time.monotonic()
        with pytest.raises(DnsTemporaryError):
            await resolver.resolve("example.test", ignore_ipv6=True)
        assert time.monotonic() - started < 2.0
