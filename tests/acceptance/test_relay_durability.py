"""Nothing accepted is lost: kill -9 of the relay or of a worker, clean shutdown, config errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver
from tests.fixtures.relay import Relay

RelayFactory = Callable[..., Relay]
ReceiverFactory = Callable[..., RecordingReceiver]

MESSAGE = b"From: s@example.com\r\nTo: r@example.test\r\nSubject: durable\r\n\r\nbody\r\n"


async def test_accepted_message_survives_kill_9_right_after_250(relay: RelayFactory) -> None:
    r = relay({"queue": {"workers": 0}})
    ids = [r.send("s@example.com", ["r@example.test"], MESSAGE) for _ in range(5)]
    r.kill9()
    r.start()
    for queue_id in ids:
        data = r.show(queue_id)
        assert [m["status"] for m in data["messages"]] == ["queued"]


async def test_worker_killed_mid_transaction_is_restarted_and_the_message_delivered(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.10")
    receiver.respond("data", hang=30, times=1)  # the first DATA never gets its answer
    dns_server.add_mx("example.test", "mx.example.test").add_a("mx.example.test", receiver.host).start()
    r = relay(
        {
            "dns": {"nameservers": [dns_server.address]},
            "zones": {"default": {"port": receiver.port}},
            "queue": {"lease_seconds": 600},  # only the supervisor's release can bring it back quickly
        }
    )
    queue_id = r.send("s@example.com", ["r@example.test"], MESSAGE)
    deadline = time.monotonic() + 20
    while receiver.current_connections == 0 or not r.show(queue_id)["messages"][0]["leased_by"]:
        assert time.monotonic() < deadline, r.log()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the body is on its way
    [worker] = r.worker_pids()
    os.kill(worker, signal.SIGKILL)
    r.wait_status(queue_id, {"delivered"}, timeout=30)
    assert len(receiver.messages) >= 1
    assert "exited with -9; released 1 leases" in r.log()
    assert worker not in r.worker_pids()


async def test_sigterm_stops_cleanly(relay: RelayFactory) -> None:
    r = relay({"queue": {"workers": 2}})
    assert len(r.worker_pids()) == 2
    assert r.stop() == 0
    assert "stopped" in r.log()


def test_config_check_names_a_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[queue]\nworkrs = 2\n[smtp.feeder]\nmax_size = "lots"\n')
    result = subprocess.run(
        [sys.executable, "-m", "zonerelay.cli", "config", "check", "-c", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "queue.workrs: unknown key" in result.stderr
    assert "smtp.feeder.max_size" in result.stderr

    good = tmp_path / "good.toml"
    good.write_text('[smtp.feeder]\nport = 2600\n[smtp.msa]\nport = 2601\nmax_size = "10MB"\n')
    result = subprocess.run(
        [sys.executable, "-m", "zonerelay.cli", "config", "check", "-c", str(good)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "[smtp.msa]\n" in result.stdout and "max_size = 10000000" in result.stdout
    assert "port = 2601" in result.stdout
