"""Keys an operator manages: bad files stop start-up naming the key, keys_dir changes apply without a restart,
the right keys are chosen for a From domain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from zonerelay.config import Config, ConfigError, load_config
from zonerelay.dkim.keys import (
    BadKeyError,
    KeyRing,
    KeySpec,
    generate,
    load_private_key,
    private_pem,
    split_txt,
)
from zonerelay.dkim.policy import DkimPolicy

# A throwaway 512-bit RSA key (cryptography refuses to generate one, but loads it).
RSA_512 = b"""-----BEGIN PRIVATE KEY-----
MIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6AgEAAkEAvdp7QK8cYFbmM5Hy
7YnVKkHGWqPj4b+czQ8viHm6OhsiC3L1GiwAgVexXRkU1U4BBuhqkr6nIS7MffB5
QOrbkwIDAQABAkA6U3LmLmYDWu8iDMabH2szrj1n/021Pw7HGNE7lloWG1OkPolA
7TIC+s62WXOpm9STiUnDUvlrYxFQEEWRkXoRAiEA9RHlskvwGthFW3pqjadqF+dZ
yllOFkORbrW9dIh6OjcCIQDGUiV2sFk0nf/TnshWxfDAD/71GcU8sGUH5E3m+EfL
hQIgfpBtpfUd3V9QAnxoRxvs6MdsUdppP4pJs3lcjLBnH2UCIQCPal4/O333B/81
6NBVt+TG74pfcthob+NP1rDjQ06gBQIgWdonLOokOoC/eUD6QU6kBcDEhEmjOyzO
k2yE9FVsTRc=
-----END PRIVATE KEY-----
"""


def write_key(path: Path, algorithm: str = "ed25519") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(private_pem(generate(algorithm)))  # type: ignore[arg-type]
    return path


def key_config(path: Path, domain: str = "example.com", selector: str = "s1") -> dict[str, object]:
    return {"dkim": {"keys": [{"domain": domain, "selector": selector, "private_key": str(path)}]}}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read"),
        (b"not a key", "not an unencrypted PEM private key"),
        (RSA_512, "RSA key of 512 bits, at least 1024 needed"),
        ("ec", "only RSA and Ed25519 keys can sign DKIM"),
    ],
)
def test_a_bad_key_file_stops_start_up_naming_the_key(tmp_path: Path, content: object, reason: str) -> None:
    path = tmp_path / "k.pem"
    if content == "ec":
        path.write_bytes(private_pem(ec.generate_private_key(ec.SECP256R1())))  # type: ignore[arg-type]
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(overrides=key_config(path, "shop.example", "may2026"))
    message = str(info.value)
    assert "dkim key shop.example/may2026" in message and str(path) in message and reason in message


def test_headers_that_change_in_transit_cannot_be_configured(tmp_path: Path) -> None:
    for headers, reason in ((["From", "Received"], "cannot be signed"), (["Subject"], "From must be signed")):
        with pytest.raises(ConfigError, match=reason):
            load_config(overrides={"dkim": {"headers": headers}})


def test_keys_for_from_domain_parents_and_sign_all(tmp_path: Path) -> None:
    specs = [
        KeySpec("example.com", "rsa", write_key(tmp_path / "a.pem", "rsa")),
        KeySpec("example.com", "ed", write_key(tmp_path / "b.pem")),
        KeySpec("news.example.com", "n1", write_key(tmp_path / "c.pem")),
        KeySpec("platform.test", "p1", write_key(tmp_path / "d.pem"), sign_all=True),
    ]
    ring = KeyRing(specs)

    def labels(domain: str | None) -> list[str]:
        return [k.label for k in ring.for_domain(domain)]

    assert labels("example.com") == ["example.com/rsa", "example.com/ed", "platform.test/p1"]
    assert labels("a.news.EXAMPLE.com") == [
        "example.com/rsa",
        "example.com/ed",
        "news.example.com/n1",
        "platform.test/p1",
    ]
    assert labels("notexample.com") == ["platform.test/p1"]
    assert labels(None) == ["platform.test/p1"]
    assert [k.algorithm for k in ring.for_domain("example.com")] == [
        "rsa-sha256",
        "ed25519-sha256",
        "ed25519-sha256",
    ]


def test_keys_dir_is_read_again_without_a_restart(tmp_path: Path) -> None:
    now = [1000.0]
    ring = KeyRing([], tmp_path, clock=lambda: now[0])
    assert ring.for_domain("example.com") == []
    write_key(tmp_path / "example.com" / "s1.pem")
    assert ring.for_domain("example.com") == []  # cached for a second
    now[0] += 1.5
    assert [k.label for k in ring.for_domain("example.com")] == ["example.com/s1"]
    write_key(tmp_path / "example.com" / "s2.pem", "rsa")
    (tmp_path / "example.com" / "broken.pem").write_text("garbage")
    now[0] += 1.5
    assert sorted(k.label for k in ring.for_domain("example.com")) == ["example.com/s1", "example.com/s2"]
    os.remove(tmp_path / "example.com" / "s1.pem")
    now[0] += 1.5
    assert [k.label for k in ring.for_domain("example.com")] == ["example.com/s2"]


def test_metadata_lists_the_signatures_to_make(tmp_path: Path) -> None:
    config = load_config(overrides=key_config(write_key(tmp_path / "k.pem"), "example.com", "e1"))
    policy = DkimPolicy(config.dkim)
    meta = {"parsedEnvelope": {"from": "someone@mail.example.com"}}
    assert policy.plan(meta) == [{"domain": "example.com", "selector": "e1", "algorithm": "ed25519-sha256"}]
    assert policy.plan({"parsedEnvelope": {"from": False}}) == []


def test_load_private_key_and_txt_splitting(tmp_path: Path) -> None:
    with pytest.raises(BadKeyError):
        load_private_key(tmp_path / "none.pem")
    value = "v=DKIM1; k=rsa; p=" + "A" * 392
    parts = split_txt(value)
    assert [len(p) for p in parts] == [255, 155] and "".join(parts) == value


def test_a_worker_restarted_after_a_key_file_vanished_still_delivers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_key(tmp_path / "k.pem")
    config = load_config(overrides=key_config(path, "example.com", "s1"))
    path.unlink()
    # The supervisor checked the key at start-up; a worker re-reads the configuration without that check.
    data = config.model_dump(mode="json")
    worker_config = Config.model_validate(data, context={"dkim_keys_checked": True})
    policy = DkimPolicy(worker_config.dkim)
    assert "dkim key example.com/s1" in caplog.text and "signing without it" in caplog.text
    meta = {
        "parsedEnvelope": {"from": "a@example.com"},
        "dkimSignatures": [{"domain": "example.com", "selector": "s1", "algorithm": "ed25519-sha256"}],
        "dkim": {"bodyHash": "x", "bodyHashSimple": "y"},
    }
    assert policy.signatures("q1", b"From: a@example.com\r\n\r\n", meta) == b""
    assert "dkim key example.com/s1 is gone; message q1 goes out without its signature" in caplog.text


def test_a_message_without_a_stored_body_hash_goes_out_unsigned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(overrides=key_config(write_key(tmp_path / "k.pem"), "example.com", "s1"))
    policy = DkimPolicy(config.dkim)
    meta = {"parsedEnvelope": {"from": "a@example.com"}}
    assert policy.signatures("q2", b"From: a@example.com\r\n\r\n", meta) == b""
    assert "dkim signing of message q2 failed; sending it unsigned" in caplog.text
