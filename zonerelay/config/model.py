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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

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
    backend: Literal["sqlite"] = "sqlite"


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


class ZoneConfig(_Strict):
    port: int = Field(25, gt=0, lt=65536)
    ignore_ipv6: bool = True


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


class Config(_Strict):
    hostname: str = ""
    queue: QueueConfig = QueueConfig()
    store: StoreConfig = StoreConfig()
    log: LogConfig = LogConfig()
    dns: DnsConfig = DnsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    zones: dict[str, ZoneConfig] = Field(default_factory=lambda: {"default": ZoneConfig()})
    smtp: dict[str, SmtpInterfaceConfig] = Field(default_factory=lambda: {"feeder": SmtpInterfaceConfig()})

    @model_validator(mode="after")
    def _zones(self) -> Config:
        if "default" not in self.zones:
            raise ValueError("zones.default must exist")
        for name in list(self.zones) + list(self.smtp):
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"bad zone or interface name {name!r}")
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
