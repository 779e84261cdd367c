"""DKIM private keys: loading and checking PEM files, the DNS record for a key, new keys, and the key ring.

The key ring answers "which keys sign a message From this domain": configured keys (loaded once, at
start-up, where a bad file stops the relay with an error naming the key) plus the files under
``keys_dir/<domain>/<selector>.pem``, looked up again at most once a second per domain so an operator can
add, replace or remove keys without a restart.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import idna
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

__all__ = [
    "Algorithm",
    "BadKeyError",
    "DkimKey",
    "KeyRing",
    "KeySpec",
    "PrivateKey",
    "a_label",
    "dns_record",
    "generate",
    "load_private_key",
    "public_key_b64",
    "split_txt",
]

log = logging.getLogger("zonerelay.dkim")

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: RFC 8301: verifiers must not accept RSA keys under 1024 bits.
MIN_RSA_BITS = 1024
#: How long a keys_dir lookup for one domain is trusted before the directory is read again.
KEYS_DIR_TTL = 1.0


class BadKeyError(ValueError):
    """A key file that cannot be used; the message names the key and the file."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A configured key: where it is and whether it signs every message (an operator's platform key)."""

    domain: str
    selector: str
    path: Path
    sign_all: bool = False


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str  # A-label, lower case
    selector: str
    key: PrivateKey
    path: Path
    sign_all: bool = False

    @property
    def algorithm(self) -> Algorithm:
        return "ed25519-sha256" if isinstance(self.key, ed25519.Ed25519PrivateKey) else "rsa-sha256"

    @property
    def label(self) -> str:
        return f"{self.domain}/{self.selector}"

    def describe(self) -> dict[str, str]:
        """What ``queue show`` lists for a signature this key will make."""
        return {"domain": self.domain, "selector": self.selector, "algorithm": self.algorithm}


def a_label(domain: str) -> str:
    """Lower-case IDNA A-label form of a domain (``d=`` and the DNS name use it)."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return domain


def load_private_key(path: str | Path, label: str = "") -> PrivateKey:
    """Read a PEM private key (RSA >= 1024 bits or Ed25519); raises BadKeyError naming the key."""
    name = f"dkim key {label} ({path})" if label else f"dkim key {path}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadKeyError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BadKeyError(f"{name}: not an unencrypted PEM private key ({exc})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise BadKeyError(f"{name}: RSA key of {key.key_size} bits, at least {MIN_RSA_BITS} needed")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise BadKeyError(f"{name}: only RSA and Ed25519 keys can sign DKIM, not {type(key).__name__}")


def public_key_b64(key: PrivateKey) -> str:
    """The ``p=`` value: RSA SubjectPublicKeyInfo DER (RFC 6376), or the raw 32 Ed25519 bytes (RFC 8463)."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def dns_record(key: PrivateKey) -> str:
    kind = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"
    return f"v=DKIM1; k={kind}; p={public_key_b64(key)}"


def split_txt(value: str, size: int = 255) -> list[str]:
    """A TXT value as the <= 255-byte character-strings a zone file needs (RFC 1035 §3.3.14)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def generate(algorithm: Literal["rsa", "ed25519"], bits: int = 2048) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if bits < MIN_RSA_BITS:
        raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def parent_domains(domain: str) -> list[str]:
    """``a.b.example.com`` → itself and every parent with a dot (DMARC relaxed alignment, roughly)."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)] or [domain]


@dataclass(slots=True)
class _DirEntry:
    checked: float
    keys: dict[str, tuple[float, DkimKey]]  # selector -> (file mtime, key)


class KeyRing:
    """Finds the keys that sign a message: configured ones plus ``keys_dir`` files, read without a restart."""

    def __init__(
        self,
        specs: Iterable[KeySpec],
        keys_dir: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Configured keys were checked when the configuration was loaded (a bad one stops start-up);
        # one that has become unusable since (a worker restarted after the file was removed) is logged
        # and left out, so mail still flows.
        self.keys: list[DkimKey] = []
        for s in specs:
            label = f"{s.domain}/{s.selector}"
            try:
                key = load_private_key(s.path, label)
            except BadKeyError as exc:
                log.error("%s; signing without it", exc)
                continue
            self.keys.append(DkimKey(a_label(s.domain), s.selector, key, s.path, s.sign_all))
        self.keys_dir = Path(keys_dir) if keys_dir else None
        self._clock = clock
        self._dirs: dict[str, _DirEntry] = {}

    def for_domain(self, from_domain: str | None) -> list[DkimKey]:
        """Keys for a From domain (its own and its parents'), then ``sign_all`` keys; no duplicates."""
        chosen: list[DkimKey] = []
        if from_domain:
            domains = parent_domains(a_label(from_domain))
            chosen += [k for k in self.keys if k.domain in domains]
            for domain in domains:
                chosen += self._from_dir(domain)
        chosen += [k for k in self.keys if k.sign_all]
        seen: set[tuple[str, str]] = set()
        unique = []
        for key in chosen:
            if (key.domain, key.selector) not in seen:
                seen.add((key.domain, key.selector))
                unique.append(key)
        return unique

    def _from_dir(self, domain: str) -> list[DkimKey]:
        if self.keys_dir is None or "/" in domain or domain.startswith("."):
            return []
        now = self._clock()
        entry = self._dirs.get(domain)
        if entry is not None and now - entry.checked < KEYS_DIR_TTL:
            return [k for _, k in entry.keys.values()]
        old = entry.keys if entry else {}
        fresh: dict[str, tuple[float, DkimKey]] = {}
        try:
            files = list(os.scandir(self.keys_dir / domain))
        except OSError:
            files = []
        for item in files:
            if not item.name.endswith(".pem") or item.name.startswith("."):
                continue
            selector = item.name[:-4]
            try:
                mtime = item.stat().st_mtime
                if selector in old and old[selector][0] == mtime:
                    fresh[selector] = old[selector]
                    continue
                key = load_private_key(item.path, f"{domain}/{selector}")
            except (OSError, BadKeyError) as exc:
                log.error("ignoring %s: %s", item.path, exc)
                continue
            fresh[selector] = (mtime, DkimKey(domain, selector, key, Path(item.path)))
            if selector not in old:
                log.info("dkim key %s/%s loaded from %s", domain, selector, item.path)
        for selector in old.keys() - fresh.keys():
            log.warning("dkim key %s/%s is no longer in %s", domain, selector, self.keys_dir)
        self._dirs[domain] = _DirEntry(now, fresh)
        return [k for _, k in fresh.values()]
