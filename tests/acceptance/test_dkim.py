"""DKIM as a user sees it: the relay signs at send time, receivers verify with the keys published in DNS.

Keys are published on dnsmasq; every message that reaches the RecordingReceiver is verified by two
independent verifiers through that DNS server: dkimpy, and OpenDKIM 2.11 (``opendkim -t``, Debian's
build, which checks ed25519-sha256 too). OpenDKIM reaches dnsmasq's port through its Unbound resolver
(``ResolverConfiguration`` → an unbound.conf that forwards to 127.0.0.1@PORT).

OpenDKIM's test mode goes through the milter interface, which hands header values over without the
whitespace after the colon and re-adds one space: with ``simple`` header canonicalisation it can only
verify headers written ``Name: value`` (one space), so the simple/simple test uses such headers; dkimpy
checks the odd spacing there (and in the unit tests).
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import dns.message
import dns.query

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver
from tests.fixtures.relay import Relay
from zonerelay.dkim.canon import parse_fields
from zonerelay.dkim.keys import PrivateKey, dns_record, generate, private_pem

RelayFactory = Callable[..., Relay]
ReceiverFactory = Callable[..., RecordingReceiver]
OPENDKIM = "/usr/sbin/opendkim"


class Verifiers:
    """dkimpy and OpenDKIM, both resolving keys through the test's dnsmasq."""

    def __init__(self, dns_server: DnsServer, workdir: Path) -> None:
        self.dns = dns_server
        self.workdir = workdir
        unbound = workdir / "unbound.conf"
        unbound.write_text(
            # Unbound answers the special-use .test zone itself (NXDOMAIN) unless told not to.
            'server:\n  do-not-query-localhost: no\n  local-zone: "test." nodefault\n'
            f'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{dns_server.port}\n'
        )
        self.conf = workdir / "opendkim.conf"
        self.conf.write_text(
            f"Mode v\nSyslog no\nResolverConfiguration {unbound}\nMaximumSignaturesToVerify 10\n"
        )

    def _txt(self, name: bytes, timeout: int = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), "TXT")
        answer = dns.query.udp(query, self.dns.host, port=self.dns.port, timeout=2)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return None

    def dkimpy(self, data: bytes) -> dict[str, bool]:
        """``{"d/s": verified}`` for every DKIM-Signature, by dkimpy."""
        d = dkim.DKIM(data)
        out = {}
        for index, label in enumerate(signature_labels(data)):
            try:
                out[label] = bool(d.verify(idx=index, dnsfunc=self._txt))
            except dkim.ValidationError:
                out[label] = False
        return out

    def opendkim(self, data: bytes) -> dict[str, str]:
        """``{"d/s": "pass" | "fail" | ...}`` for every DKIM-Signature, by OpenDKIM."""
        path = self.workdir / f"msg-{time.monotonic_ns()}.eml"
        path.write_bytes(data.replace(b"\r\n", b"\n"))
        result = subprocess.run(
            [OPENDKIM, "-x", str(self.conf), "-vvv", "-t", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = result.stdout + result.stderr
        return {
            f"{m.group(2)}/{m.group(3)}": m.group(1)
            for m in re.finditer(r"dkim=(\w+)\b.*?header\.d=(\S+).*?header\.s=(\S+)", output)
        }


def signature_labels(data: bytes) -> list[str]:
    labels = []
    for name, raw in parse_fields(data.partition(b"\r\n\r\n")[0] + b"\r\n"):
        if name == "dkim-signature":
            value = re.sub(rb"\s+", b"", raw)
            d = re.search(rb"[;:]d=([^;]+)", value)
            s = re.search(rb";s=([^;]+)", value)
            assert d and s, raw
            labels.append(f"{d.group(1).decode()}/{s.group(1).decode()}")
    return labels


def new_key(tmp: Path, name: str, algorithm: str) -> tuple[PrivateKey, Path]:
    key = generate(algorithm)  # type: ignore[arg-type]
    path = tmp / f"{name}.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(private_pem(key))
    return key, path


def setup(
    dns_server: DnsServer, receiver: RecordingReceiver, dkim_settings: dict[str, Any]
) -> dict[str, Any]:
    dns_server.add_mx("example.test", "mx.example.test", 10)
    dns_server.add_a("mx.example.test", receiver.host)
    dns_server.start()
    return {
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "zones": {"default": {"port": receiver.port}},
        "dkim": dkim_settings,
    }


def big_body() -> bytes:
    """~3 MB: lines of the longest length SMTP allows (998), lines starting with dots, UTF-8, whitespace
    runs, several empty lines at the end."""
    block = (
        b"." + b"x" * 997 + b"\r\n"
        b"..two dots\r\n"
        b".\r\n" + "Grüße  aus\t Köln   \r\n".encode() + (b"y" * 990 + b" \t z\r\n") * 20 + b"\r\n"
    )
    return block * 140 + b"last line\r\n\r\n\r\n\r\n"


async def wait_for(receiver: RecordingReceiver, count: int) -> list[Any]:
    return await receiver.wait_messages(count, within=30)


async def test_rsa_and_ed25519_relaxed_big_utf8_parent_domain_sign_all_and_keys_dir(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory, tmp_path: Path
) -> None:
    rsa, rsa_path = new_key(tmp_path, "example-rsa", "rsa")
    ed, ed_path = new_key(tmp_path, "example-ed", "ed25519")
    platform, platform_path = new_key(tmp_path, "platform", "rsa")
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    dropped, _ = new_key(tmp_path / "staging", "k1", "ed25519")
    for name, key in (
        ("r1._domainkey.example.com", rsa),
        ("e1._domainkey.example.com", ed),
        ("p1._domainkey.platform.test", platform),
        ("k1._domainkey.other.test", dropped),
    ):
        dns_server.add_txt(name, dns_record(key))
    receiver = recording_receiver("127.0.0.2")
    settings = setup(
        dns_server,
        receiver,
        {
            "keys_dir": str(keys_dir),
            "keys": [
                {"domain": "example.com", "selector": "r1", "private_key": str(rsa_path)},
                {"domain": "example.com", "selector": "e1", "private_key": str(ed_path)},
                {
                    "domain": "platform.test",
                    "selector": "p1",
                    "private_key": str(platform_path),
                    "sign_all": True,
                },
            ],
        },
    )
    r = relay(settings)
    verify = Verifiers(dns_server, tmp_path)

    # 1. A subdomain From, 8-bit UTF-8 headers and body (SMTPUTF8), a 3 MB body: parent's two keys + platform.
    body = big_body()
    headers = (
        "From: Jörg Müller <news@mail.example.com>\r\n"
        "To:  Zoë <rcpt@example.test>,\r\n\t  other@example.test  \r\n"
        "Subject: Grüße\t aus   Köln \r\n"
        "Message-ID: <big@mail.example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
    ).encode()
    queue_id = r.send(
        "news@mail.example.com",
        ["rcpt@example.test"],
        headers + b"\r\n" + body,
        mail_options=["SMTPUTF8", "BODY=8BITMIME"],
    )
    assert r.show(queue_id)["meta"]["dkimSignatures"] == [
        {"domain": "example.com", "selector": "r1", "algorithm": "rsa-sha256"},
        {"domain": "example.com", "selector": "e1", "algorithm": "ed25519-sha256"},
        {"domain": "platform.test", "selector": "p1", "algorithm": "rsa-sha256"},
    ]
    shown = r.cli("queue", "show", queue_id).stdout
    assert (
        "dkim signatures: example.com/r1 (rsa-sha256), example.com/e1 (ed25519-sha256), platform.test/p1"
        in shown
    )
    [got] = await wait_for(receiver, 1)
    assert got.data.endswith(b"\r\n\r\n" + body)  # the body that was hashed, byte for byte
    expected = ["example.com/r1", "example.com/e1", "platform.test/p1"]
    assert signature_labels(got.data) == expected
    assert verify.dkimpy(got.data) == dict.fromkeys(expected, True)
    assert verify.opendkim(got.data) == dict.fromkeys(expected, "pass")

    # 2. A From domain with no key: only the platform's sign_all signature.
    plain = b"From: someone@nokey.test\r\nTo: rcpt@example.test\r\nSubject: hi\r\n\r\n.dot\r\n\r\n\r\n"
    r.send("someone@nokey.test", ["rcpt@example.test"], plain)
    got = (await wait_for(receiver, 2))[1]
    assert verify.dkimpy(got.data) == {"platform.test/p1": True}
    assert verify.opendkim(got.data) == {"platform.test/p1": "pass"}

    # 3. A key dropped into keys_dir while running is used; one that disappears before sending is
    #    logged, and the message goes out without that signature (delayed by a Date a few seconds ahead).
    (keys_dir / "other.test").mkdir()
    (tmp_path / "staging" / "k1.pem").rename(keys_dir / "other.test" / "k1.pem")
    await asyncio.sleep(1.1)  # the relay looks at keys_dir again at most once a second
    date = email.utils.formatdate(time.time() + 4, usegmt=True).encode()
    later = (
        b"From: a@other.test\r\nTo: rcpt@example.test\r\nDate: " + date + b"\r\nSubject: later\r\n\r\nx\r\n"
    )
    queue_id = r.send("a@other.test", ["rcpt@example.test"], later)
    planned = [(s["domain"], s["selector"]) for s in r.show(queue_id)["meta"]["dkimSignatures"]]
    assert planned == [("other.test", "k1"), ("platform.test", "p1")]
    (keys_dir / "other.test" / "k1.pem").unlink()
    got = (await wait_for(receiver, 3))[2]
    assert b"Subject: later" in got.data
    assert verify.dkimpy(got.data) == {"platform.test/p1": True}
    assert f"dkim key other.test/k1 is gone; message {queue_id}" in r.log()
    r.wait_status(queue_id, {"delivered"})


async def test_simple_canonicalization_expiry_and_unsigned_domains(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory, tmp_path: Path
) -> None:
    rsa, rsa_path = new_key(tmp_path, "rsa", "rsa")
    ed, ed_path = new_key(tmp_path, "ed", "ed25519")
    dns_server.add_txt("r1._domainkey.example.com", dns_record(rsa))
    dns_server.add_txt("e1._domainkey.example.com", dns_record(ed))
    receiver = recording_receiver("127.0.0.3")
    dkim_settings = {
        "canonicalization": "simple/simple",
        "expire": "7d",
        "keys": [
            {"domain": "example.com", "selector": "r1", "private_key": str(rsa_path)},
            {"domain": "example.com", "selector": "e1", "private_key": str(ed_path)},
        ],
    }
    r = relay(setup(dns_server, receiver, dkim_settings))
    verify = Verifiers(dns_server, tmp_path)

    body = b"Hello\r\n.starts with a dot\r\n..two\r\n  indented  \r\n\r\n\r\n\r\n"
    message = (
        b"From: Sender <sender@example.com>\r\nTo: rcpt@example.test\r\nSubject: simple\r\n"
        b"Subject: twice\r\nMessage-ID: <s1@example.com>\r\n\r\n" + body
    )
    r.send("sender@example.com", ["rcpt@example.test"], message)
    r.send(
        "bounce@nokey.test", ["rcpt@example.test"], message.replace(b"sender@example.com", b"x@nokey.test")
    )
    first, second = await wait_for(receiver, 2)
    if b"x@nokey.test" in first.data:
        first, second = second, first
    assert first.data.endswith(b"\r\n\r\n" + body)
    assert re.search(rb"c=simple/simple;.*t=(\d+);\s*x=(\d+);", first.data, re.S)
    t, x = (int(v) for v in re.findall(rb"[tx]=(\d+);", first.data)[:2])
    assert x - t == 7 * 86400 and abs(t - time.time()) < 60
    unfolded = re.sub(rb"\s+", b"", first.data.partition(b"\r\n\r\n")[0])
    assert b";h=from:from:subject:subject:date:message-id:to;" in unfolded  # Date: added by the relay
    expected = ["example.com/r1", "example.com/e1"]
    assert verify.dkimpy(first.data) == dict.fromkeys(expected, True)
    assert verify.opendkim(first.data) == dict.fromkeys(expected, "pass")
    # simple canonicalisation: one changed space in a signed header breaks both signatures.
    tampered = first.data.replace(b"Subject: twice", b"Subject:  twice")
    assert verify.dkimpy(tampered) == dict.fromkeys(expected, False)
    # No key for the From domain and no sign_all key: not signed at all.
    assert b"DKIM-Signature" not in second.data


def test_a_missing_key_file_stops_start_up_naming_the_key(relay: RelayFactory, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "s1.pem"
    r = relay(
        {"dkim": {"keys": [{"domain": "example.com", "selector": "s1", "private_key": str(missing)}]}},
        start=False,
    )
    result = r.cli("config", "check")
    assert result.returncode == 2
    assert f"dkim key example.com/s1 ({missing}): cannot read" in result.stderr
    try:
        r.start()
    except RuntimeError as exc:
        assert "dkim key example.com/s1" in str(exc)
    else:  # pragma: no cover - the relay must not start
        raise AssertionError("the relay started with a missing key file")
