"""`zonerelay dkim keygen` → publish on a real DNS server (dnsmasq) → `zonerelay dkim check`."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query

from tests.fixtures.dns import DnsServer
from zonerelay.config.render import to_toml


def zonerelay(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zonerelay.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def keygen(keys_dir: Path, domain: str, selector: str, *extra: str) -> dict[str, str]:
    result = zonerelay("dkim", "keygen", domain, selector, "--keys-dir", str(keys_dir), "--json", *extra)
    assert result.returncode == 0, result.stderr
    data: dict[str, str] = json.loads(result.stdout)
    return data


def test_keygen_publish_check_ok_missing_mismatch(tmp_path: Path, dns_server: DnsServer) -> None:
    keys_dir = tmp_path / "keys"
    rsa = keygen(keys_dir, "example.com", "r2026")
    ed = keygen(keys_dir, "example.com", "e2026", "--algorithm", "ed25519")
    other = keygen(keys_dir, "example.org", "s1")
    wrong = keygen(tmp_path / "elsewhere", "example.org", "s1")
    gone = keygen(keys_dir, "example.net", "s1", "--algorithm", "ed25519")

    assert rsa["name"] == "r2026._domainkey.example.com"
    assert rsa["path"] == str(keys_dir / "example.com" / "r2026.pem")
    assert stat.S_IMODE(Path(rsa["path"]).stat().st_mode) == 0o600
    assert rsa["value"].startswith("v=DKIM1; k=rsa; p=MIIBIjAN") and len(rsa["value"]) > 255
    assert ed["value"].startswith("v=DKIM1; k=ed25519; p=") and len(ed["value"]) == 66

    dns_server.add_txt(rsa["name"], rsa["value"]).add_txt(ed["name"], ed["value"])
    dns_server.add_txt(other["name"], wrong["value"])  # a key of the same name, but not ours
    dns_server.start()
    # The RSA record is longer than one TXT string: check it arrives as several that join up.
    answer = dns.query.udp(dns.message.make_query(rsa["name"], "TXT"), "127.0.0.1", port=dns_server.port)
    strings = answer.answer[0][0].strings
    assert len(strings) == 2 and b"".join(strings).decode() == rsa["value"]

    config = tmp_path / "relay.toml"
    settings = {
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "dkim": {
            "keys_dir": str(keys_dir),
            "keys": [{"domain": "example.com", "selector": "r2026", "private_key": rsa["path"]}],
        },
    }
    config.write_text(to_toml(settings))
    result = zonerelay("dkim", "check", "-c", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()}
    assert lines == {
        "r2026._domainkey.example.com": "ok",
        "e2026._domainkey.example.com": "ok",
        "s1._domainkey.example.org": "mismatch",
        "s1._domainkey.example.net": "missing",
    }
    as_json = json.loads(zonerelay("dkim", "check", "--json", "-c", str(config)).stdout)
    assert {(k["selector"], k["algorithm"], k["status"]) for k in as_json["keys"]} >= {
        ("e2026", "ed25519-sha256", "ok")
    }

    Path(gone["path"]).unlink()
    (keys_dir / "example.org" / "s1.pem").unlink()
    result = zonerelay("dkim", "check", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["ok", "ok"]


def test_keygen_prints_a_zone_file_record_and_never_overwrites(tmp_path: Path) -> None:
    result = zonerelay("dkim", "keygen", "example.com", "s1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "example.com.s1.pem").is_file()
    record = result.stdout.splitlines()[-1]
    assert record.startswith('s1._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=')
    strings = record.split("( ")[1].rstrip(" )").split('" "')
    assert len(strings) == 2 and len(strings[0]) == 256  # 255 bytes plus the opening quote
    again = zonerelay("dkim", "keygen", "example.com", "s1", cwd=tmp_path)
    assert again.returncode == 1 and "File exists" in again.stderr
