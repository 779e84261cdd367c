"""zonerelay side by side with Postfix on loopback: one command, one table, one JSON file.

    .venv/bin/python bench/run.py [--quick] [--repeat 3] [--out bench/results/NAME.json] [--profile DIR]

For each body size (10 KB x 20 000 and 100 KB x 2 000 messages; --quick: 2 000 / 200), 20 parallel
smtp-source sessions, each repetition runs, interleaved so that machine noise hits all of them:
  ceiling       smtp-source -> smtp-sink directly
  postfix       smtp-source -> private Postfix instance -> smtp-sink (injection and end-to-end rates)
  zr-ingest     smtp-source -> zonerelay with [queue] workers = 0 (accept and hold)
  zr-e2e        smtp-source -> zonerelay (default workers) -> MX on dnsmasq -> smtp-sink
Then (not with --quick) one 1 GiB message through zonerelay, and the queue-scale measurement: the
time of one `claim` of a 50-delivery batch with 1 000 and 100 000 not-yet-due deliveries queued.
``--profile DIR`` also records py-spy profiles of `zonerelay serve` (ingest) and of one delivery
worker (end to end) during extra, untimed 10 KB runs. Everything listens on 127.0.0.1; temporary
directories and processes are removed at the end. Needs root or sudo only to install postfix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BenchError,
    PostfixInstance,
    ProcessSampler,
    SmtpSink,
    Zonerelay,
    claim_times,
    ensure_postfix,
    send_big,
    sink_dns,
    smtp_source,
)

KIB = 1024
FULL_COUNTS = {10 * KIB: 20_000, 100 * KIB: 2_000}
QUICK_COUNTS = {10 * KIB: 2_000, 100 * KIB: 200}
SCENARIOS = ("ceiling", "postfix", "zr-ingest", "zr-e2e")
LOAD_TOOLS = ("smtp-source", "smtp-sink")


def _size_label(size: int) -> str:
    return f"{size // KIB} KB" if size % KIB == 0 else f"{size} B"


@contextlib.contextmanager
def _sampled(roots: dict[int, str]) -> Iterator[ProcessSampler]:
    sampler = ProcessSampler()
    for pid, label in roots.items():
        sampler.add_root(pid, label)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


def _source_row(result: Any) -> dict[str, Any]:
    return {
        "processes": 1,
        "cpu_s": round(result.cpu_s, 2),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "sum_peak_rss_mb": round(result.peak_rss_mb, 1),
    }


def run_ceiling(size: int, count: int, sessions: int) -> dict[str, Any]:
    sink = SmtpSink()
    try:
        with _sampled({sink.proc.pid: "smtp-sink"}) as sampler:
            src = smtp_source(sink.port, count, size, sessions)
            sink.wait_for(count)
        procs = {**sampler.report(), "smtp-source": _source_row(src)}
    finally:
        sink.close()
    return {"ingest_s": src.seconds, "e2e_s": src.seconds, "delivered": sink.count, "processes": procs}


def run_postfix(work: Path, size: int, count: int, sessions: int) -> dict[str, Any]:
    sink = SmtpSink()
    postfix = PostfixInstance(work, sink.port)
    try:
        postfix.start()
        with _sampled({postfix.master_pid: "postfix master", sink.proc.pid: "smtp-sink"}) as sampler:
            started = time.monotonic()
            src = smtp_source(postfix.port, count, size, sessions)
            done = sink.wait_for(count)
        empty = postfix.wait_queue_empty()
        procs = {**sampler.report(), "smtp-source": _source_row(src)}
    finally:
        postfix.stop()
        sink.close()
    return {
        "ingest_s": src.seconds,
        "e2e_s": done - started,
        "delivered": sink.count,
        "queue_empty": empty,
        "processes": procs,
    }


def run_zr_ingest(work: Path, size: int, count: int, sessions: int) -> dict[str, Any]:
    relay = Zonerelay(work, {"queue": {"workers": 0}})
    try:
        relay.start()
        with _sampled({relay.pid: "zonerelay serve"}) as sampler:
            src = smtp_source(relay.port, count, size, sessions)
        procs = {**sampler.report(), "smtp-source": _source_row(src)}
        stats = relay.queue_stats()
    finally:
        relay.stop()
    return {"ingest_s": src.seconds, "queued": stats.get("queued"), "processes": procs}


def run_zr_e2e(work: Path, size: int, count: int, sessions: int, workers: int | None) -> dict[str, Any]:
    sink = SmtpSink()
    dns = sink_dns(work / "dns")
    queue: dict[str, Any] = {} if workers is None else {"workers": workers}
    relay = Zonerelay(
        work,
        {
            "queue": queue,
            "dns": {"nameservers": [dns.address]},
            "zones": {"default": {"port": sink.port}},
            "delivery": {"starttls": False},
        },
    )
    try:
        relay.start()
        with _sampled({relay.pid: "zonerelay serve", sink.proc.pid: "smtp-sink"}) as sampler:
            started = time.monotonic()
            src = smtp_source(relay.port, count, size, sessions)
            done = sink.wait_for(count)
        procs = {**sampler.report(), "smtp-source": _source_row(src)}
        stats = relay.queue_stats()
    finally:
        relay.stop()
        sink.close()
        dns.close()
    return {
        "ingest_s": src.seconds,
        "e2e_s": done - started,
        "delivered": sink.count,
        "store_delivered": stats.get("delivered"),
        "processes": procs,
    }


def run_big(work: Path, gib: float) -> dict[str, Any]:
    relay = Zonerelay(work, {"queue": {"workers": 0}})
    try:
        relay.start()
        with _sampled({relay.pid: "zonerelay serve"}) as sampler:
            started = time.monotonic()
            sent, reply = send_big(relay.port, int(gib * KIB**3))
            elapsed = time.monotonic() - started
        procs = sampler.report()
    finally:
        relay.stop()
    return {
        "bytes": sent,
        "seconds": round(elapsed, 2),
        "mb_per_s": round(sent / elapsed / 1e6, 1),
        "reply": reply,
        "peak_rss_mb": procs["zonerelay serve"]["peak_rss_mb"],
        "processes": procs,
    }


# -- statistics and the table -------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict[str, Any]], counts: dict[int, int]) -> dict[str, Any]:
    """Rates (msg/s) as min/median/max per (size, scenario), CPU/RSS medians, and the ratios."""
    out: dict[str, Any] = {}
    for size, count in counts.items():
        per: dict[str, Any] = {}
        for name in SCENARIOS:
            rows = [r for r in runs if r["size"] == size and r["scenario"] == name and "error" not in r]
            if not rows:
                continue
            entry: dict[str, Any] = {"runs": len(rows)}
            for key in ("ingest_s", "e2e_s"):
                if all(key in r for r in rows):
                    entry[key.replace("_s", "_rate")] = _spread([round(count / r[key], 1) for r in rows])
            labels = sorted({label for r in rows for label in r["processes"]})
            entry["processes"] = {
                label: {
                    "cpu_s": statistics.median(r["processes"].get(label, {}).get("cpu_s", 0.0) for r in rows),
                    "peak_rss_mb": max(r["processes"].get(label, {}).get("peak_rss_mb", 0.0) for r in rows),
                    "processes": max(r["processes"].get(label, {}).get("processes", 0) for r in rows),
                    "sum_peak_rss_mb": max(
                        r["processes"].get(label, {}).get("sum_peak_rss_mb", 0.0) for r in rows
                    ),
                }
                for label in labels
            }
            per[name] = entry
        ratios: dict[str, Any] = {}
        pf = per.get("postfix", {})
        pairs = (
            ("ingest (zr workers=0 / postfix injection)", "zr-ingest", "ingest_rate"),
            ("injection during e2e (zr / postfix)", "zr-e2e", "ingest_rate"),
            ("end to end (zr / postfix)", "zr-e2e", "e2e_rate"),
        )
        for label, name, key in pairs:
            pf_key = "ingest_rate" if key == "ingest_rate" else "e2e_rate"
            if key in per.get(name, {}) and pf_key in pf:
                ratios[label] = round(per[name][key]["median"] / pf[pf_key]["median"], 2)
        out[_size_label(size)] = {"messages": count, "scenarios": per, "ratios_of_medians": ratios}
    return out


def _fmt_spread(s: dict[str, float] | None) -> str:
    if not s:
        return "-"
    return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"


def render_table(summary: dict[str, Any], big: dict[str, Any] | None, scale: list[dict[str, Any]]) -> str:
    """Markdown: rates as median (min-max) msg/s; CPU and RSS are medians / maxima over the runs."""
    lines = [
        "| size x msgs | scenario | ingest msg/s | end-to-end msg/s | relay CPU s (ms/msg) "
        "| top CPU users, s | relay peak RSS MB: largest process / sum of all |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, data in summary.items():
        for name, entry in data["scenarios"].items():
            procs = entry["processes"]
            relay = {k: v for k, v in procs.items() if k not in LOAD_TOOLS}
            cpu = sum(row["cpu_s"] for row in relay.values())
            top = ", ".join(f"{_short(label)} {row['cpu_s']:.1f}" for label, row in _cpu_order(procs)[:4])
            largest = max((row["peak_rss_mb"] for row in relay.values()), default=0.0)
            total = sum(row["sum_peak_rss_mb"] for row in relay.values())
            per_msg = f"{cpu:.1f} ({1000 * cpu / data['messages']:.2f})" if relay else "-"
            lines.append(
                f"| {size} x {data['messages']} | {name} | {_fmt_spread(entry.get('ingest_rate'))} | "
                f"{_fmt_spread(entry.get('e2e_rate'))} | {per_msg} | {top} | "
                + (f"{largest:.0f} / {total:.0f} |" if relay else "- |")
            )
    lines.append("")
    lines.append("Ratios zonerelay / Postfix (medians, same run):")
    for size, data in summary.items():
        for label, value in data["ratios_of_medians"].items():
            lines.append(f"- {size}: {label}: {value:.2f}")
    if big:
        lines.append("")
        lines.append(
            f"{big['bytes'] / KIB**3:.2f} GiB message through zonerelay: {big['seconds']:.1f} s "
            f"({big['mb_per_s']:.0f} MB/s), "
            f"serve peak RSS {big['peak_rss_mb']:.0f} MB, reply {big['reply']!r}"
        )
    for row in scale:
        c, e = row["claim_ms"], row["empty_claim_ms"]
        lines.append(
            f"claim of {row['batch']} due with {row['pending']:,} deferred queued: "
            f"{c['median']:.2f} ms ({c['min']:.2f}-{c['max']:.2f}); nothing due: {e['median']:.2f} ms"
        )
    return "\n".join(lines)


def _cpu_order(procs: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(procs.items(), key=lambda kv: -kv[1]["cpu_s"])


def _short(label: str) -> str:
    return label.replace("zonerelay ", "zr ").replace("postfix ", "pf ")


# -- profiles -----------------------------------------------------------------------------------


def _pyspy() -> str:
    path = Path(sys.executable).with_name("py-spy")
    if not path.exists():
        print("installing py-spy into the virtualenv", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(path)


def _start_pyspy(pid: int, out: Path, mode: str) -> subprocess.Popen[bytes]:
    """py-spy on one process: mode "gil" (Python code holding the GIL) or "native" (C frames too)."""
    flag = "--gil" if mode == "gil" else "--native"
    return subprocess.Popen(
        [
            _pyspy(),
            "record",
            "--pid",
            str(pid),
            flag,
            "--format",
            "raw",
            "--rate",
            "200",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_pyspy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_LINE = re.compile(r":\d+\)$")
# innermost native frames of a thread that waits (a lock, the event loop's epoll, a timed sleep)
_IDLE = (
    "PyThread_acquire_lock_timed",
    "epoll_wait",
    "epoll_pwait",
    "pthread_cond_timedwait",
    "pthread_cond_wait",
    "clock_nanosleep",
    "sem_clockwait",
    "sem_timedwait",
    "__futex",
)
_SITE = str(Path(sys.executable).resolve().parent.parent)


def hot_spots(raw: Path, top: int = 25) -> dict[str, Any]:
    """Top self and inclusive frames of a py-spy raw (collapsed stacks) file, in % of samples.

    Frames are functions ("func (file.py)"), not lines; unsymbolised native frames (0x...) are
    skipped, so "self" is the innermost named frame (a C function in --native profiles). Samples
    of waiting threads (innermost frame in _IDLE) are counted in idle_pct only; the percentages
    are of the busy samples.
    """
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    if not raw.exists():
        return {"samples": 0, "idle_pct": 0.0, "self": [], "inclusive": []}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [
            _LINE.sub(")", f.replace(_SITE, ""))
            for f in stack.split(";")
            if not f.startswith(("process ", "thread ", "0x"))
        ]
        if frames and frames[-1].startswith(_IDLE):
            idle += count  # a waiting thread: not part of the busy percentages
            continue
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / max(total, 1), 1)) for frame, n in c.most_common(top)]

    idle_pct = round(100 * idle / max(idle + total, 1), 1)
    return {"samples": total, "idle_pct": idle_pct, "self": pct(own), "inclusive": pct(incl)}


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's main thread and of all its other threads together."""
    out = {"main thread": 0.0, "other threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        raw = (task / "stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        key = "main thread" if int(task.name) == pid else "other threads"
        out[key] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {k: round(v, 2) for k, v in out.items()}


def run_profiles(work: Path, out_dir: Path, count: int, sessions: int) -> dict[str, Any]:
    """Untimed 10 KB runs with py-spy on `zonerelay serve` (ingest, workers = 0) and on `serve` and one
    worker (end to end), once with --gil and once with --native; plus the thread CPU split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    for mode in ("gil", "native"):
        relay = Zonerelay(work / f"ingest-{mode}", {"queue": {"workers": 0}})
        try:
            relay.start()
            spy = _start_pyspy(relay.pid, out_dir / f"ingest-serve-{mode}.txt", mode)
            time.sleep(1)
            smtp_source(relay.port, count, 10 * KIB, sessions)
            threads = _thread_cpu(relay.pid)
            _stop_pyspy(spy)
        finally:
            relay.stop()
        result[f"ingest: zonerelay serve ({mode})"] = {
            **hot_spots(out_dir / f"ingest-serve-{mode}.txt"),
            "thread_cpu_s": threads,
        }
        sink = SmtpSink()
        dns = sink_dns(work / f"e2e-{mode}" / "dns")
        relay = Zonerelay(
            work / f"e2e-{mode}",
            {
                "dns": {"nameservers": [dns.address]},
                "zones": {"default": {"port": sink.port}},
                "delivery": {"starttls": False},
            },
        )
        try:
            relay.start()
            time.sleep(1)
            worker = relay.worker_pids()[0]
            spies = [
                _start_pyspy(relay.pid, out_dir / f"e2e-serve-{mode}.txt", mode),
                _start_pyspy(worker, out_dir / f"e2e-worker-{mode}.txt", mode),
            ]
            time.sleep(1)
            smtp_source(relay.port, count, 10 * KIB, sessions)
            sink.wait_for(count)
            threads = _thread_cpu(relay.pid)
            worker_threads = _thread_cpu(worker)
            for spy in spies:
                _stop_pyspy(spy)
        finally:
            relay.stop()
            sink.close()
            dns.close()
        result[f"end to end: zonerelay serve ({mode})"] = {
            **hot_spots(out_dir / f"e2e-serve-{mode}.txt"),
            "thread_cpu_s": threads,
        }
        result[f"end to end: one delivery worker ({mode})"] = {
            **hot_spots(out_dir / f"e2e-worker-{mode}.txt"),
            "thread_cpu_s": worker_threads,
        }
    return result


# -- main ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?"
    )
    mem_kb = int(
        next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    )
    postfix = subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024**2, 1),
        "loadavg_at_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postfix": postfix,
    }


def parse_counts(text: str) -> dict[int, int]:
    """ "10240:20000,102400:2000" -> {10240: 20000, 102400: 2000}."""
    pairs = (item.split(":") for item in text.split(",") if item)
    return {int(size): int(count) for size, count in pairs}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 000 / 200 messages, no 1 GiB, 1 k queue scale only"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of every scenario (default 3)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions (default 20)")
    parser.add_argument("--counts", type=parse_counts, help="SIZE:MESSAGES,... instead of the defaults")
    parser.add_argument(
        "--workers", type=int, help="zonerelay delivery workers for zr-e2e (default: its default)"
    )
    parser.add_argument("--big-gib", type=float, help="size of the big message in GiB (default 1; 0 = skip)")
    parser.add_argument(
        "--queue-scale", help="deferred deliveries for the claim test, e.g. 1000,100000 (0 = skip)"
    )
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--profile", type=Path, help="also record py-spy profiles into this directory")
    parser.add_argument("--table", type=Path, help="only print the table of an earlier JSON result")
    parser.add_argument("--out", type=Path, help="JSON result (default bench/results/<UTC time>.json)")
    args = parser.parse_args()

    if args.table:
        print(json.loads(args.table.read_text())["table"])
        return 0
    counts = args.counts or (QUICK_COUNTS if args.quick else FULL_COUNTS)
    big_gib = args.big_gib if args.big_gib is not None else (0 if args.quick else 1.0)
    scale_text = (
        args.queue_scale if args.queue_scale is not None else ("1000" if args.quick else "1000,100000")
    )
    scale_sizes = [int(n) for n in scale_text.split(",") if int(n) > 0]
    scenarios = args.only.split(",") if args.only else list(SCENARIOS)
    started_at = datetime.now(UTC)
    out = args.out or Path(__file__).resolve().parent / "results" / f"{started_at:%Y%m%dT%H%M%SZ}.json"

    ensure_postfix()
    root = Path(tempfile.mkdtemp(prefix="zonerelay-bench-"))
    root.chmod(0o755)  # Postfix daemons (user postfix) must reach their queue directory
    runs: list[dict[str, Any]] = []
    big: dict[str, Any] | None = None
    scale: list[dict[str, Any]] = []
    profiles: dict[str, Any] | None = None
    serial = 0
    try:
        for rep in range(args.repeat):
            for size, count in counts.items():
                for name in scenarios:
                    serial += 1
                    work = root / f"{serial:03d}-{name}"
                    print(
                        f"[{rep + 1}/{args.repeat}] {_size_label(size)} x {count} {name} ...",
                        end=" ",
                        flush=True,
                    )
                    row: dict[str, Any] = {"scenario": name, "size": size, "messages": count, "repeat": rep}
                    try:
                        if name == "ceiling":
                            row.update(run_ceiling(size, count, args.sessions))
                        elif name == "postfix":
                            row.update(run_postfix(work, size, count, args.sessions))
                        elif name == "zr-ingest":
                            row.update(run_zr_ingest(work, size, count, args.sessions))
                        elif name == "zr-e2e":
                            row.update(run_zr_e2e(work, size, count, args.sessions, args.workers))
                    except BenchError as exc:
                        row["error"] = str(exc)
                        print(f"FAILED: {exc}", flush=True)
                    else:
                        rates = [
                            f"{k[:-2]} {count / row[k]:.0f} msg/s" for k in ("ingest_s", "e2e_s") if k in row
                        ]
                        print(", ".join(rates), flush=True)
                    runs.append(row)
                    shutil.rmtree(work, ignore_errors=True)
        if big_gib > 0:
            print(f"{big_gib:g} GiB message through zonerelay ...", end=" ", flush=True)
            try:
                big = run_big(root / "big", big_gib)
                print(f"{big['seconds']:.1f} s, peak RSS {big['peak_rss_mb']:.0f} MB", flush=True)
            except BenchError as exc:
                big = {"error": str(exc)}
                print(f"FAILED: {exc}", flush=True)
            shutil.rmtree(root / "big", ignore_errors=True)
        for pending in scale_sizes:
            print(f"queue scale: claim with {pending:,} deferred ...", end=" ", flush=True)
            raw = asyncio.run(claim_times(root / f"scale-{pending}.db", pending, 50, max(5, 5 * args.repeat)))
            row = {
                "pending": pending,
                "batch": raw["batch"],
                "fill_s": raw["fill_s"],
                "claim_ms": {
                    k: round(v * 1000, 3) if k != "n" else v for k, v in _spread(raw["claim_s"]).items()
                },
                "empty_claim_ms": {
                    k: round(v * 1000, 3) if k != "n" else v for k, v in _spread(raw["empty_claim_s"]).items()
                },
            }
            scale.append(row)
            print(f"{row['claim_ms']['median']:.2f} ms", flush=True)
        if args.profile:
            print("profiling (untimed) ...", flush=True)
            profiles = run_profiles(
                root / "profile", args.profile, min(counts.get(10 * KIB, 2000), 5000), args.sessions
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary = summarise(runs, counts)
    table = render_table(summary, big if big and "error" not in big else None, scale)
    result = {
        "started": started_at.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "workdir": str(root),
        "settings": {
            "counts": {str(k): v for k, v in counts.items()},
            "sessions": args.sessions,
            "repeat": args.repeat,
            "zonerelay_workers": args.workers,
            "big_gib": big_gib,
        },
        "summary": summary,
        "big": big,
        "queue_scale": scale,
        "profiles": profiles,
        "runs": runs,
        "table": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table)
    print(f"\nwritten {out}")
    return 1 if any("error" in r for r in runs) or (big and "error" in big) else 0


if __name__ == "__main__":
    sys.exit(main())
