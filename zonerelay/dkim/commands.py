"""``zonerelay dkim keygen`` and ``zonerelay dkim check``: make a key and its DNS record, and check that
what DNS publishes for each configured key is that key, through the resolvers the relay itself uses."""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from zonerelay.config.model import Config, split_host_port
from zonerelay.dkim.keys import (
    DkimKey,
    KeyRing,
    KeySpec,
    a_label,
    dns_record,
    generate,
    private_pem,
    public_key_b64,
    split_txt,
)

__all__ = ["CheckResult", "check_keys", "keygen", "record_name", "zone_file_line"]

Status = Literal["ok", "missing", "mismatch", "error"]


def record_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{a_label(domain)}"


def zone_file_line(name: str, value: str) -> str:
    """A zone-file TXT record with the value split into <= 255-byte strings."""
    strings = " ".join(f'"{s}"' for s in split_txt(value))
    return f"{name}. IN TXT ( {strings} )"


def keygen(
    domain: str,
    selector: str,
    algorithm: Literal["rsa", "ed25519"],
    bits: int,
    keys_dir: str | None,
) -> tuple[Path, str, str]:
    """Writes a new private key (mode 0600, never over an existing file); returns (path, name, value)."""
    if keys_dir:
        path = Path(keys_dir) / a_label(domain) / f"{selector}.pem"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        path = Path(f"{a_label(domain)}.{selector}.pem")
    key = generate(algorithm, bits)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem(key))
    return path.resolve(), record_name(domain, selector), dns_record(key)


@dataclass(frozen=True, slots=True)
class CheckResult:
    key: DkimKey
    name: str
    status: Status
    detail: str


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        tag, eq, value = part.partition("=")
        if eq:
            tags[tag.strip()] = "".join(value.split())
    return tags


def _same_key(key: DkimKey, published: dict[str, str]) -> tuple[bool, str]:
    kind = published.get("k", "rsa")
    ours = "ed25519" if isinstance(key.key, ed25519.Ed25519PrivateKey) else "rsa"
    if kind != ours:
        return False, f"published k={kind}, the private key is {ours}"
    p = published.get("p", "")
    if p == public_key_b64(key.key):
        return True, "published key matches"
    if ours == "rsa":  # the same key may be encoded differently (another DER length form, say)
        try:
            public = serialization.load_der_public_key(base64.b64decode(p))
        except ValueError:
            return False, "published p= is not a public key"
        ours_public = key.key.public_key()
        if (
            isinstance(public, rsa.RSAPublicKey)
            and isinstance(ours_public, rsa.RSAPublicKey)
            and public.public_numbers() == ours_public.public_numbers()
        ):
            return True, "published key matches"
    return False, "published p= is another key"


async def _check_one(resolver: dns.asyncresolver.Resolver, key: DkimKey) -> CheckResult:
    name = record_name(key.domain, key.selector)
    try:
        answer = await resolver.resolve(name, dns.rdatatype.TXT)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return CheckResult(key, name, "missing", "no TXT record")
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        return CheckResult(key, name, "error", f"DNS lookup failed: {exc}")
    records = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    dkim = [_tags(r) for r in records if "p=" in r]
    if not dkim:
        return CheckResult(key, name, "missing", "TXT record is not a DKIM key record")
    if len(dkim) > 1:
        return CheckResult(key, name, "mismatch", f"{len(dkim)} DKIM key records; verifiers need one")
    if not dkim[0].get("p"):
        return CheckResult(key, name, "missing", "the published key is revoked (empty p=)")
    same, detail = _same_key(key, dkim[0])
    return CheckResult(key, name, "ok" if same else "mismatch", detail)


def _resolver(config: Config) -> dns.asyncresolver.Resolver:
    if config.dns.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[str | dns.nameserver.Nameserver] = []
        for entry in config.dns.nameservers:
            host, port = split_host_port(entry, 53)
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        resolver.nameservers = servers
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.timeout = resolver.lifetime = config.dns.timeout
    return resolver


def configured_keys(config: Config) -> list[DkimKey]:
    """Keys in ``[[dkim.keys]]`` and every readable ``keys_dir/<domain>/<selector>.pem``."""
    dkim = config.dkim
    ring = KeyRing(
        [KeySpec(k.domain, k.selector, k.private_key, k.sign_all) for k in dkim.keys], dkim.keys_dir
    )
    keys = list(ring.keys)
    if ring.keys_dir is not None and ring.keys_dir.is_dir():
        for domain_dir in sorted(p for p in ring.keys_dir.iterdir() if p.is_dir()):
            keys += sorted(ring.for_domain(domain_dir.name), key=lambda k: k.selector)
    unique: dict[tuple[str, str], DkimKey] = {}
    for key in keys:
        unique.setdefault((key.domain, key.selector), key)
    return list(unique.values())


async def check_keys(config: Config) -> list[CheckResult]:
    resolver = _resolver(config)
    return list(await asyncio.gather(*(_check_one(resolver, k) for k in configured_keys(config))))
