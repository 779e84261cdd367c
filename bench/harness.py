"""Building blocks of the benchmark: process accounting, Postfix's load tools, a private Postfix
instance, a zonerelay instance, the 1 GiB message and the queue-scale measurement.

Everything listens on 127.0.0.1 only and lives in a temporary directory the caller owns.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.dns import DnsServer  # noqa: E402
from zonerelay.config.render import to_toml  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SENDER = "sender@bench.test"
RECIPIENT = "rcpt@sink.test"


class BenchError(RuntimeError):
    """A run that could not complete (a peer did not start, delivery stalled...)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, what: str, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"{what} exited before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def ensure_postfix() -> None:
    """Install Debian's postfix (smtp-source, smtp-sink, the peer relay) if it is missing."""
    if all(
        Path(f"/usr/sbin/{tool}").exists() for tool in ("smtp-source", "smtp-sink", "postfix", "postqueue")
    ):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing Debian package postfix (smtp-source, smtp-sink, the peer relay)", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    # debconf "No configuration": the system instance stays unconfigured and stopped
    subprocess.run(
        [*sudo, "debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=True,
    )
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "postfix"], check=True, env=env
    )


# -- process accounting -------------------------------------------------------------------------


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, utime+stime ticks) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, int(fields[1]), int(fields[11]) + int(fields[12])


def _read_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class _Proc:
    label: str
    base_ticks: int
    ticks: int
    hwm_kb: int


@dataclass
class ProcessSampler:
    """Samples CPU time and peak RSS (VmHWM) of process trees (a root and its descendants).

    A background thread walks /proc every ``interval`` seconds, so processes that start and exit
    between two samples are missed; Postfix's and zonerelay's processes live for the whole run.
    ``label`` names a process from its root's label and its comm.
    """

    interval: float = 0.2
    roots: dict[int, str] = field(default_factory=dict)
    procs: dict[int, _Proc] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def add_root(self, pid: int, label: str) -> None:
        with self._lock:
            self.roots[pid] = label

    def start(self) -> ProcessSampler:
        self.sample(baseline=True)
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self, baseline: bool = False) -> None:
        stats: dict[int, tuple[str, int, int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (st := _read_stat(int(entry))) is not None:
                stats[int(entry)] = st
        children: dict[int, list[int]] = {}
        for pid, (_, ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        with self._lock:
            roots = dict(self.roots)
        for root, root_label in roots.items():
            stack = [(root, 0)]
            while stack:
                pid, depth = stack.pop()
                if pid not in stats:
                    continue
                comm, _, ticks = stats[pid]
                proc = self.procs.get(pid)
                if proc is None:
                    label = root_label if depth == 0 else _child_label(root_label, comm)
                    proc = self.procs[pid] = _Proc(label, ticks if baseline else 0, ticks, 0)
                proc.ticks = max(proc.ticks, ticks)
                proc.hwm_kb = max(proc.hwm_kb, _read_hwm_kb(pid))
                stack.extend((child, depth + 1) for child in children.get(pid, ()))

    def report(self) -> dict[str, dict[str, Any]]:
        """{label: {processes, cpu_s, peak_rss_mb (largest one), sum_peak_rss_mb}} since start()."""
        out: dict[str, dict[str, Any]] = {}
        for proc in self.procs.values():
            row = out.setdefault(
                proc.label, {"processes": 0, "cpu_s": 0.0, "peak_rss_mb": 0.0, "sum_peak_rss_mb": 0.0}
            )
            row["processes"] += 1
            row["cpu_s"] += (proc.ticks - proc.base_ticks) / CLK_TCK
            row["peak_rss_mb"] = max(row["peak_rss_mb"], proc.hwm_kb / 1024)
            row["sum_peak_rss_mb"] += proc.hwm_kb / 1024
        for row in out.values():
            row["cpu_s"] = round(row["cpu_s"], 2)
            row["peak_rss_mb"] = round(row["peak_rss_mb"], 1)
            row["sum_peak_rss_mb"] = round(row["sum_peak_rss_mb"], 1)
        return out


def _child_label(root_label: str, comm: str) -> str:
    if root_label.startswith("zonerelay"):
        return "zonerelay worker" if comm.startswith("python") else f"zonerelay/{comm}"
    if root_label.startswith("postfix"):
        return f"postfix {comm}"
    return f"{root_label}/{comm}"


# -- Postfix's load tools -----------------------------------------------------------------------


class SmtpSink:
    """``smtp-sink`` on a free port, counting the messages it accepted (its ``-c`` counter)."""

    def __init__(self, backlog: int = 1000) -> None:
        self.port = free_port()
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            ["smtp-sink", *user, "-c", f"127.0.0.1:{self.port}", str(backlog)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.count = 0
        self._reader = threading.Thread(target=self._read, name="smtp-sink-counter", daemon=True)
        self._reader.start()
        wait_port(self.port, 10, "smtp-sink", lambda: self.proc.poll() is None)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        pattern = re.compile(rb"mesg=(\d+)")
        tail = b""
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            tail = (tail + chunk)[-64:]
            found = pattern.findall(tail)
            if found:
                self.count = int(found[-1])

    def wait_for(self, total: int, stall_timeout: float = 60.0) -> float:
        """Block until ``total`` messages arrived; returns monotonic time of arrival."""
        last, last_change = self.count, time.monotonic()
        while self.count < total:
            time.sleep(0.02)
            if self.count != last:
                last, last_change = self.count, time.monotonic()
            elif time.monotonic() - last_change > stall_timeout:
                raise BenchError(
                    f"smtp-sink stalled at {self.count}/{total} messages for {stall_timeout:.0f} s"
                )
        return time.monotonic()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class SourceResult:
    seconds: float
    cpu_s: float
    peak_rss_mb: float


def smtp_source(port: int, messages: int, size: int, sessions: int) -> SourceResult:
    """``smtp-source`` (one recipient per message, connections reused) until the last reply."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            "smtp-source",
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-d",
            "-f",
            SENDER,
            "-t",
            RECIPIENT,
            f"127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchError(f"smtp-source exited with {proc.returncode}")
    return SourceResult(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


# -- a private Postfix instance -----------------------------------------------------------------

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60   1 pickup
cleanup    unix  n - n -    0 cleanup
qmgr       unix  n - n 300  1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -    - trivial-rewrite
bounce     unix  - - n -    0 bounce
defer      unix  - - n -    0 bounce
trace      unix  - - n -    0 bounce
verify     unix  - - n -    1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -    - proxymap
proxywrite unix  - - n -    1 proxymap
smtp       unix  - - n -    - smtp
relay      unix  - - n -    - smtp
showq      unix  n - n -    - showq
error      unix  - - n -    - error
retry      unix  - - n -    - error
discard    unix  - - n -    - discard
anvil      unix  - - n -    1 anvil
scache     unix  - - n -    1 scache
postlog    unix-dgram n - n - 1 postlogd
"""

# Postfix defaults otherwise (fsync'd queue files, in_flow_delay = 1s, connection cache on demand).
_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = postfix.bench.test
mydomain = bench.test
mydestination =
local_recipient_maps =
relay_domains =
alias_maps =
alias_database =
biff = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
smtp_tls_security_level = none
relayhost = [127.0.0.1]:{sink_port}
default_transport = smtp
default_destination_concurrency_limit = {concurrency}
smtp_destination_concurrency_limit = {concurrency}
default_process_limit = 100
message_size_limit = 0
"""


class PostfixInstance:
    """A private Postfix (own config and queue directories, 127.0.0.1:<free port>) relaying
    everything to ``[127.0.0.1]:sink_port``. Never touches /etc/postfix or port 25."""

    def __init__(self, workdir: Path, sink_port: int, concurrency: int = 20) -> None:
        self.dir = workdir
        self.conf = workdir / "etc"
        self.conf.mkdir(parents=True)
        (workdir / "data").mkdir()
        (workdir / "spool").mkdir()
        for path in (workdir, workdir / "data", workdir / "spool"):
            path.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(workdir / "data", "postfix")  # master.lock and friends are written as postfix
        self.port = free_port()
        (self.conf / "main.cf").write_text(
            _MAIN_CF.format(dir=workdir, sink_port=sink_port, concurrency=concurrency)
        )
        (self.conf / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        self.master_pid = 0

    def _postfix(self, *args: str) -> None:
        out = subprocess.run(["postfix", "-c", str(self.conf), *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise BenchError(f"postfix {' '.join(args)} failed: {out.stderr.strip()}{self._log_tail()}")

    def _log_tail(self) -> str:
        log = self.dir / "maillog"
        return "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""

    def start(self) -> PostfixInstance:
        self._postfix("start")
        pidfile = self.dir / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()):
            if time.monotonic() > deadline:
                raise BenchError("Postfix master did not write its pid file" + self._log_tail())
            time.sleep(0.05)
        self.master_pid = int(pidfile.read_text().split()[0])
        wait_port(self.port, 15, "postfix smtpd")
        return self

    def queue_empty(self) -> bool:
        out = subprocess.run(["postqueue", "-c", str(self.conf), "-p"], capture_output=True, text=True)
        return "Mail queue is empty" in out.stdout

    def wait_queue_empty(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue_empty():
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        if not self.master_pid:
            return
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{self.master_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{self.master_pid}").exists():
            os.kill(self.master_pid, signal.SIGKILL)
        self.master_pid = 0


# -- zonerelay ----------------------------------------------------------------------------------


class Zonerelay:
    """``zonerelay serve`` on a free port with its store in ``workdir``; the HTTP API is off."""

    def __init__(self, workdir: Path, settings: dict[str, Any]) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config: dict[str, Any] = {
            "hostname": "relay.bench.test",
            "queue": {"data_dir": str(workdir / "data"), "instance_id": "bench"},
            "log": {"level": "warning"},
            "api": {"enabled": False},
            "smtp": {"feeder": {"port": self.port, "max_size": "2GiB", "max_connections": 1000}},
        }
        for key, value in settings.items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        self.config = workdir / "relay.toml"
        self.config.write_text(to_toml(config))
        self.log = workdir / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Zonerelay:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zonerelay.cli", "serve", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = self.proc
        try:
            wait_port(self.port, 30, "zonerelay serve", lambda: proc.poll() is None)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{self.log.read_text(errors='replace')[-3000:]}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        return [int(p) for p in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]

    def queue_stats(self) -> dict[str, Any]:
        import json

        out = subprocess.run(
            [sys.executable, "-m", "zonerelay.cli", "queue", "stats", "--json", "-c", str(self.config)],
            capture_output=True,
            text=True,
            check=True,
        )
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sink_dns(workdir: Path) -> DnsServer:
    """dnsmasq answering ``sink.test MX mx.sink.test``, ``mx.sink.test A 127.0.0.1``."""
    workdir.mkdir(parents=True, exist_ok=True)
    dns = DnsServer(workdir)
    return dns.add_mx("sink.test", "mx.sink.test").add_a("mx.sink.test", "127.0.0.1").start()


def send_big(port: int, total: int) -> tuple[int, str]:
    """One message of ``total`` body bytes (998-octet lines) over SMTP; (bytes sent, final reply)."""
    line = b"x" * 998 + b"\r\n"
    block = line * 256  # 256 000 bytes
    with socket.create_connection(("127.0.0.1", port)) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(f"EHLO bench\r\nMAIL FROM:<{SENDER}> SIZE={total + 64}\r\n".encode())
        while f.readline()[3:4] != b" ":  # EHLO reply lines
            pass
        for command in (f"RCPT TO:<{RECIPIENT}>\r\n", "DATA\r\n"):
            f.readline()  # MAIL / RCPT reply
            s.sendall(command.encode())
        reply = f.readline()
        if not reply.startswith(b"354"):
            raise BenchError(f"DATA refused: {reply!r}")
        s.sendall(b"Subject: big\r\n\r\n")
        sent = 0
        while sent < total:
            s.sendall(block)
            sent += len(block)
        s.sendall(b".\r\n")
        final = f.readline().decode(errors="replace").strip()
        s.sendall(b"QUIT\r\n")
    return sent, final


# -- queue scale --------------------------------------------------------------------------------


async def claim_times(path: Path, pending: int, batch: int, repeat: int) -> dict[str, Any]:
    """Claim time of ``batch`` due deliveries with ``pending`` not-yet-due deliveries queued.

    The not-yet-due rows are messages of 100 recipients each, committed with ``not_before`` a day
    ahead: to ``claim`` they are exactly deferred rows (pending, next attempt in the future).
    Each timed claim takes the due batch; its leases are released before the next one.
    """
    from zonerelay.store.base import NewDelivery, NewMessage
    from zonerelay.store.sqlite import SqliteStore

    store = SqliteStore(path)
    await store.open()
    try:
        now = time.time()
        serial = 0

        async def commit(recipients: int, not_before: float) -> None:
            nonlocal serial
            serial += 1
            mid = f"{serial:018x}"
            rcpts = tuple(f"r{i}@d{i % 97}.test" for i in range(recipients))
            await store.commit_message(
                NewMessage(
                    id=mid,
                    sender=SENDER,
                    recipients=rcpts,
                    headers=b"Subject: q\r\n\r\n",
                    body_size=0,
                    meta={},
                    created=now,
                    not_before=not_before,
                    deliveries=tuple(
                        NewDelivery(seq=f"{i + 1:03d}", recipient=r, domain=r.split("@")[1], zone="default")
                        for i, r in enumerate(rcpts)
                    ),
                )
            )

        started = time.perf_counter()
        sizes = [100] * (pending // 100) + ([pending % 100] if pending % 100 else [])
        for k in range(0, len(sizes), 50):  # 50 commits in flight share fsyncs (group commit)
            await asyncio.gather(*(commit(n, now + 86400) for n in sizes[k : k + 50]))
        await commit(batch, now - 1)
        fill = time.perf_counter() - started
        await store.claim("bench-owner", batch, 60, time.time())  # warm-up: statement cache, pages
        await store.release("bench-owner")
        times: list[float] = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            got = await store.claim("bench-owner", batch, 60, time.time())
            times.append(time.perf_counter() - t0)
            if len(got) != batch:
                raise BenchError(f"claim returned {len(got)} rows, expected {batch}")
            await store.release("bench-owner")
        empty: list[float] = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            await store.claim("bench-owner", batch, 60, now - 3600)  # nothing due then
            empty.append(time.perf_counter() - t0)
        return {
            "pending": pending,
            "batch": batch,
            "fill_s": round(fill, 2),
            "claim_s": times,
            "empty_claim_s": empty,
        }
    finally:
        await store.close()
