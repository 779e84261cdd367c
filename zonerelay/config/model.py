"""Typed configuration, validated with pydantic.

Every model forbids unknown keys so that a typo stops start-up with an error that names the
key, instead of being silently ignored. Sizes ("50MB") and durations ("5d") are parsed here
once so the rest of the code only sees bytes and seconds.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(value: Any) -> int:
    """Parse "50MB", "10 KiB", "1g" or an integer into bytes (KB=1000, KiB=1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 50MB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size (examples: 1048576, 10KB, 50MB, 1GiB)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    binary = "i" in unit
    base = unit.replace("i", "").replace("b", "")
    factor = 1024 ** "kmgt".index(base) * 1024 if binary and base else _SIZE_UNITS[base]
    return int(number * factor)


def parse_duration(value: Any) -> float:
    """Parse "5d", "6h", "30s", "250ms" or a number of seconds into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 6h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (examples: 30s, 15m, 6h, 5d)")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueConfig(_Strict):
    data_dir: Path = Path("./data")
    instance_id: str = ""
    workers: int = Field(-1, ge=-1, le=256)
    claim_batch: int = Field(50, ge=1, le=10000)
    lease_seconds: float = Field(60, gt=1)
    defer_times: list[float] = Field(
        default_factory=lambda: [5.0, 7.0, 8.0, 25.0, 75.0, 120.0, 240.0], min_length=1
    )
    max_queue_time: Duration = 5 * 86400
    retention: Duration = 3 * 86400
    orphan_body_age: Duration = 3600

    @field_validator("defer_times")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("defer times are minutes and must be positive")
        return value

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
            raise ValueError("instance_id may hold letters, digits, '.', '_' and '-' (at most 64)")
        return value


class StoreConfig(_Strict):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    dsn: str = ""
    pool_size: int = Field(10, ge=1, le=1000)
    connect_timeout: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _dsn(self) -> StoreConfig:
        if self.backend == "postgres" and not self.dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError('backend = "postgres" needs dsn = "postgresql://user@host:5432/db"')
        return self


class RedisConfig(_Strict):
    url: str = ""
    prefix: str = "zonerelay:"
    timeout: float = Field(1.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        return value


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class DnsConfig(_Strict):
    nameservers: list[str] = Field(default_factory=list)
    timeout: float = Field(5.0, gt=0)
    cache: bool = True
    cache_max_ttl: int = Field(3600, ge=0)

    @field_validator("nameservers")
    @classmethod
    def _hostports(cls, value: list[str]) -> list[str]:
        for entry in value:
            host, port = split_host_port(entry, 53)
            ipaddress.ip_address(host)  # raises ValueError with the bad address
            if not 0 < port < 65536:
                raise ValueError(f"bad port in {entry!r}")
        return value


class DeliveryConfig(_Strict):
    starttls: bool = True
    max_recipients_per_transaction: int = Field(50, ge=1, le=1000)
    max_messages_per_connection: int = Field(100, ge=1)
    idle_connection_seconds: float = Field(30, ge=0)
    connect_timeout: float = Field(30, gt=0)
    command_timeout: float = Field(300, gt=0)
    data_timeout: float = Field(600, gt=0)
    concurrency: int = Field(100, ge=1, le=10000)
    destination_concurrency: int = Field(20, ge=1, le=10000)
    busy_hold_seconds: float = Field(10, gt=0)


_RATE_RE = re.compile(
    r"^\s*(\d+)\s*(?:messages?|msgs?)?\s*/\s*(\d+(?:\.\d+)?\s*)?(second|sec|s|minute|min|m|hour|h|day|d)\s*$",
    re.IGNORECASE,
)
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_rate(value: Any) -> tuple[int, float] | None:
    """Parse "10 messages/minute", "100/minute", "5/10s" into (count, period in seconds)."""
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        count, period = int(value[0]), float(value[1])
    else:
        match = _RATE_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a rate (examples: 10 messages/minute, 100/hour)")
        count = int(match.group(1))
        period = float(match.group(2) or 1) * _RATE_UNITS[match.group(3)[0].lower()]
    if count < 1 or period <= 0:
        raise ValueError(f"{value!r}: a rate needs at least 1 message per positive period")
    return count, period


def _rate_text(value: tuple[int, float] | None) -> str | None:
    return None if value is None else f"{value[0]}/{value[1]:g}s"


Rate = Annotated[
    tuple[int, float] | None, BeforeValidator(parse_rate), PlainSerializer(_rate_text, when_used="always")
]


def _bindable(address: str) -> str:
    """Validate a local source address by binding it: a pool this host cannot use is a typo."""
    ip = ipaddress.ip_address(address)  # ValueError names the bad value
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((str(ip), 0))
    except OSError as exc:
        raise ValueError(f"this host cannot bind {ip}: {exc.strerror}") from None
    return str(ip)


class PoolAddressConfig(_Strict):
    """One local source address of a zone's pool (ZoneMTA's `{name, address, ratio}`)."""

    name: str = ""  # EHLO name used from this address; empty: `hostname`
    address: str
    # Share of the zone's traffic (0..1). Entries without a ratio share what is left evenly.
    ratio: float | None = Field(None, ge=0, le=1)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _bindable(value)


class DestinationLimits(_Strict):
    """Limits towards one recipient domain (or one provider) from one zone."""

    max_connections: int | None = Field(None, ge=1)
    rate: Rate = None  # messages per period, e.g. "100/minute"
    disabled_addresses: list[str] = Field(default_factory=list)


def _domain_key(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


class ZoneConfig(_Strict):
    port: int = Field(25, gt=0, lt=65536)
    ignore_ipv6: bool = True
    # None: the OS picks the source address. An explicit empty list is a mistake.
    pool: list[PoolAddressConfig] | None = None
    connections: int | None = Field(None, ge=1)  # per instance, across worker processes
    throttling: Rate = None  # per connection, e.g. "10 messages/minute"
    routing_headers: dict[str, str] = Field(default_factory=dict)
    sender_domains: list[str] = Field(default_factory=list)
    recipient_domains: list[str] = Field(default_factory=list)
    disabled_addresses: dict[str, list[str]] = Field(default_factory=dict)
    domain_config: dict[str, DestinationLimits] = Field(default_factory=dict)

    @field_validator("pool")
    @classmethod
    def _pool(cls, value: list[PoolAddressConfig] | None) -> list[PoolAddressConfig] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty pool sends nothing; leave pool out to let the OS pick the address")
        given = sum(entry.ratio for entry in value if entry.ratio is not None)
        if given > 1.0 + 1e-9:
            raise ValueError(f"the ratios add up to {given:g}; they are shares of the zone and must be <= 1")
        unrated = [entry for entry in value if entry.ratio is None]
        if given <= 0 and not unrated:
            raise ValueError("every address has ratio 0: nothing could be sent")
        return value

    @field_validator("sender_domains", "recipient_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [_domain_key(d) for d in value]

    @field_validator("routing_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.strip().lower(): v.strip() for k, v in value.items()}

    @field_validator("disabled_addresses")
    @classmethod
    def _disabled(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {_domain_key(k): [str(ipaddress.ip_address(a)) for a in v] for k, v in value.items()}

    @field_validator("domain_config")
    @classmethod
    def _domain_config(cls, value: dict[str, DestinationLimits]) -> dict[str, DestinationLimits]:
        return {_domain_key(k): v for k, v in value.items()}

    def disabled_for(self, domain: str) -> frozenset[str]:
        """Local addresses never to be used towards ``domain`` (both config shapes merged)."""
        limits = self.domain_config.get(domain)
        extra = limits.disabled_addresses if limits else []
        return frozenset(self.disabled_addresses.get(domain, [])) | frozenset(extra)


class ProviderConfig(_Strict):
    """MX rollup: domains whose MX host names end with one of ``mx_suffixes`` share limits."""

    mx_suffixes: list[str] = Field(min_length=1)
    max_connections: int | None = Field(None, ge=1)  # per zone, across the instance
    rate: Rate = None  # per zone, e.g. "600/minute"

    @field_validator("mx_suffixes")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        return [_domain_key(s).lstrip(".") for s in value]


class SmtpInterfaceConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(2525, ge=0, lt=65536)
    auth: bool = False
    auth_insecure: bool = False
    users: dict[str, str] = Field(default_factory=dict)
    allowed_networks: list[str] = Field(default_factory=list)
    max_size: Size = 50_000_000
    max_recipients: int = Field(1000, ge=1, le=100_000)
    max_connections: int = Field(1000, ge=1)
    tls_cert: str = ""
    tls_key: str = ""
    line_endings: Literal["reject", "normalize"] = "reject"
    idle_timeout: float = Field(300, gt=0)
    # May mail from this interface pick its zone with an X-Sending-Zone header? (ZoneMTA:
    # allowRoutingHeaders; false for SMTP interfaces, true for the API and bounce interfaces.)
    allow_routing_headers: bool = False

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SmtpInterfaceConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        for path in (self.tls_cert, self.tls_key):
            if path and not Path(path).is_file():
                raise ValueError(f"no such file: {path}")
        if self.auth and not self.users:
            raise ValueError("auth = true needs at least one entry in users")
        if self.auth and not self.tls_cert and not self.auth_insecure:
            raise ValueError("auth = true needs tls_cert/tls_key (or auth_insecure = true)")
        return self

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]


class DkimKeyConfig(_Strict):
    """One signing key; the file is read (and checked) when the configuration is loaded."""

    domain: str
    selector: str = Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    private_key: Path
    sign_all: bool = False  # an operator's platform signature, added to every message

    @model_validator(mode="after")
    def _loadable(self, info: ValidationInfo) -> DkimKeyConfig:
        # Delivery workers get a configuration the supervisor checked: they skip this, so a key file
        # removed later cannot stop a restarted worker (it logs the key and signs without it).
        if not (info.context or {}).get("dkim_keys_checked"):
            from zonerelay.dkim.keys import load_private_key

            load_private_key(self.private_key, f"{self.domain}/{self.selector}")  # ValueError names the key
        return self


class DkimConfig(_Strict):
    canonicalization: Literal["relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"] = (
        "relaxed/relaxed"
    )
    keys_dir: str = ""  # <keys_dir>/<domain>/<selector>.pem, looked up again without a restart
    headers: list[str] = Field(default_factory=lambda: list(_dkim_default_headers()), min_length=1)
    expire: Duration = 0  # 0: no x= tag
    keys: list[DkimKeyConfig] = Field(default_factory=list)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        from zonerelay.dkim.signer import NEVER_SIGNED

        for name in value:
            if not re.fullmatch(r"[!-9;-~]+", name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in NEVER_SIGNED:
                raise ValueError(f"{name} is added or removed in transit and cannot be signed")
        if "from" not in {n.lower() for n in value}:
            raise ValueError("From must be signed (RFC 6376 5.4)")
        return value


def _dkim_default_headers() -> tuple[str, ...]:
    from zonerelay.dkim.signer import DEFAULT_HEADERS

    return DEFAULT_HEADERS


class ApiConfig(_Strict):
    """The HTTP API (submission, queue inspection, suppression list, metrics)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(12080, ge=0, lt=65536)
    # "" (none), "Bearer <token>" or "Basic <user>:<password>": the API can read every message.
    auth: str = ""
    max_size: Size = 50_000_000

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str) -> str:
        scheme, _, secret = value.partition(" ")
        if value and (scheme not in ("Bearer", "Basic") or not secret.strip()):
            raise ValueError('auth is "", "Bearer <token>" or "Basic <user>:<password>"')
        if scheme == "Basic" and ":" not in secret:
            raise ValueError('basic auth is written "Basic <user>:<password>"')
        return value


class BouncesConfig(_Strict):
    """Bounce classification and what is done about it (zonerelay/bounces/)."""

    rules_file: str = ""  # operator rules (same form as bounces/rules.toml), tried first
    blacklist_ttl: Duration = 6 * 3600  # a blocklisted (local IP, MX host) pair stays parked this long
    rate_limit_pause: Duration = 30  # first pause of a destination that said "slow down"; doubles
    rate_limit_max_pause: Duration = 1800  # ... up to this
    rate_limit_recovery: Duration = 300  # then each such period takes one strike back; 0: pause only
    rate_limit_gap: Duration = 0.5  # gap between new transactions after one strike; doubles per strike
    dsn: bool = True  # send RFC 3464 delivery status notifications to the envelope sender
    dsn_from: str = ""  # From: of DSNs; empty: MAILER-DAEMON@<hostname>
    zone: str = ""  # zone DSNs are sent through; empty: routed like any message
    delay_warning: Duration = 0  # "delayed" DSN once a delivery is queued this long; 0: off

    @field_validator("rules_file")
    @classmethod
    def _rules_file(cls, value: str) -> str:
        if value:
            from zonerelay.bounces.classify import load_rules_file

            load_rules_file(Path(value))  # RulesError (a ValueError) names the file and rule
        return value


class WebhooksConfig(_Strict):
    """Durable HTTP notifications of delivery events (zonerelay/bounces/webhooks.py)."""

    bounce_url: str = ""  # one POST per bounced recipient
    events_url: str = ""  # delivered, deferred, bounced, dropped
    secret: str = ""  # HMAC-SHA256 of the body in X-Zonerelay-Signature
    timeout: Duration = 10
    max_backoff: Duration = 3 * 3600

    @field_validator("bounce_url", "events_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("a webhook URL starts with http:// or https://")
        return value


class Config(_Strict):
    hostname: str = ""
    queue: QueueConfig = QueueConfig()
    store: StoreConfig = StoreConfig()
    redis: RedisConfig = RedisConfig()
    log: LogConfig = LogConfig()
    dns: DnsConfig = DnsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    zones: dict[str, ZoneConfig] = Field(default_factory=lambda: {"default": ZoneConfig()})
    smtp: dict[str, SmtpInterfaceConfig] = Field(default_factory=lambda: {"feeder": SmtpInterfaceConfig()})
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    dkim: DkimConfig = DkimConfig()
    api: ApiConfig = ApiConfig()
    bounces: BouncesConfig = BouncesConfig()
    webhooks: WebhooksConfig = WebhooksConfig()

    @model_validator(mode="after")
    def _zones(self) -> Config:
        if "default" not in self.zones:
            raise ValueError("zones.default must exist")
        for name in list(self.zones) + list(self.smtp):
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"bad zone or interface name {name!r}")
        for key in ("sender_domains", "recipient_domains"):
            owner: dict[str, str] = {}
            for zone_name, zone in self.zones.items():
                for domain in getattr(zone, key):
                    if owner.setdefault(domain, zone_name) != zone_name:
                        raise ValueError(
                            f"zones.{zone_name}.{key}: {domain!r} is already routed to zone "
                            f"{owner[domain]!r}; a domain may route to one zone only"
                        )
        if self.bounces.zone and self.bounces.zone not in self.zones:
            raise ValueError(f"bounces.zone: there is no zone named {self.bounces.zone!r}")
        return self

    @property
    def effective_hostname(self) -> str:
        return self.hostname or socket.getfqdn() or "localhost"

    @property
    def effective_instance_id(self) -> str:
        if self.queue.instance_id:
            return self.queue.instance_id
        return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "zonerelay"

    @property
    def effective_workers(self) -> int:
        import os

        return (os.cpu_count() or 1) if self.queue.workers < 0 else self.queue.workers


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """Split "1.2.3.4:53", "[::1]:53", "::1" or "1.2.3.4" into host and port."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, default_port
