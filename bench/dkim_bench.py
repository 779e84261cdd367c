"""DKIM signing cost (not a test; figures depend on the machine).

python bench/dkim_bench.py sign [--n 2000]
    microseconds per message to make one signature at send time (header canonicalisation, hashing,
    signing, folding), for RSA-2048 and Ed25519, on a typical 9-header message.
python bench/dkim_bench.py e2e [--messages 2000 --size 10240 --sessions 20 --workers 2]
    smtp-source → zonerelay → smtp-sink with bench/harness.py (as bench/run.py's zr-e2e): without DKIM,
    then with two sign_all keys (RSA-2048 + Ed25519), so every message leaves with two signatures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zonerelay.dkim.keys import DkimKey, generate, private_pem  # noqa: E402
from zonerelay.dkim.signer import DEFAULT_HEADERS, SignatureRequest, sign_message  # noqa: E402

HEADERS = (
    b"From: Example News <news@example.com>\r\n"
    b"To: Someone <someone@example.net>\r\n"
    b"Subject: Your weekly digest: 12 new articles\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <20261127100000.1234@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n'
    b"List-Unsubscribe: <https://example.com/u/abc>, <mailto:u@example.com?subject=abc>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"\r\n"
)
META = {"dkim": {"bodyHash": "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=", "bodyHashSimple": "x" * 44}}


def cmd_sign(args: argparse.Namespace) -> None:
    request = SignatureRequest("relaxed", "relaxed", DEFAULT_HEADERS)
    for name, algorithm in (("RSA-2048", "rsa"), ("Ed25519", "ed25519")):
        key = DkimKey("example.com", "s1", generate(algorithm), Path("-"))  # type: ignore[arg-type]
        for _ in range(50):
            sign_message([key], request, HEADERS, META)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(args.n):
                sign_message([key], request, HEADERS, META)
            best = min(best, (time.perf_counter() - started) / args.n)
        print(f"{name:9} {best * 1e6:8.0f} µs per signature (best of 5 x {args.n})")


def e2e_once(args: argparse.Namespace, dkim: dict[str, Any]) -> str:
    """smtp-source → zonerelay → smtp-sink with bench/harness.py (the #6 harness), DKIM as given."""
    from harness import SmtpSink, Zonerelay, sink_dns, smtp_source  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sink = SmtpSink()
        dns = sink_dns(work / "dns")
        settings: dict[str, Any] = {
            "queue": {"workers": args.workers},
            "dns": {"nameservers": [dns.address]},
            "zones": {"default": {"port": sink.port}},
            "delivery": {"starttls": False},
        }
        if dkim:
            settings["dkim"] = dkim
        relay = Zonerelay(work / "relay", settings)
        try:
            relay.start()
            started = time.monotonic()
            src = smtp_source(relay.port, args.messages, args.size, args.sessions)
            done = sink.wait_for(args.messages)
            worker_cpu = sum(_cpu_seconds(pid) for pid in relay.worker_pids())
        finally:
            relay.stop()
            sink.close()
            dns.close()
    elapsed = done - started
    return (
        f"{args.messages} x {args.size} B: ingest {args.messages / src.seconds:.0f} msg/s, end to end "
        f"{elapsed:.2f} s = {args.messages / elapsed:.0f} msg/s, delivery workers' CPU {worker_cpu:.1f} s"
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmd_e2e(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = []
        for selector, algorithm in (("rsa", "rsa"), ("ed", "ed25519")):
            path = Path(tmp) / f"{selector}.pem"
            path.write_bytes(private_pem(generate(algorithm)))  # type: ignore[arg-type]
            keys.append({"domain": "platform.test", "selector": selector, "private_key": str(path),
                         "sign_all": True})  # fmt: skip
        for _ in range(args.rounds):
            for label, dkim in (("no DKIM     ", {}), ("2 signatures", {"keys": keys})):
                print(f"{label}: {e2e_once(args, dkim)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sign = sub.add_parser("sign")
    sign.add_argument("--n", type=int, default=2000)
    sign.set_defaults(func=cmd_sign)
    e2e = sub.add_parser("e2e")
    e2e.add_argument("--messages", type=int, default=2000)
    e2e.add_argument("--size", type=int, default=10240)
    e2e.add_argument("--sessions", type=int, default=20)
    e2e.add_argument("--workers", type=int, default=2)
    e2e.add_argument("--rounds", type=int, default=2)
    e2e.set_defaults(func=cmd_e2e)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    args.func(args)


if __name__ == "__main__":
    main()
