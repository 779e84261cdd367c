"""The benchmark harness (bench/run.py) runs end to end on a tiny workload, so it cannot rot.

No timing assertions: only that every scenario completes and the JSON has the promised shape.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench" / "run.py"

needs_tools = pytest.mark.skipif(
    not (shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists())
    or not Path("/usr/sbin/dnsmasq").exists(),
    reason="needs Postfix's smtp-source/smtp-sink and dnsmasq (./scripts/test installs them)",
)


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_tools
def test_harness_runs_a_tiny_workload(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    # the private Postfix instance needs root (its master runs as root, daemons as user postfix)
    only = [] if os.geteuid() == 0 else ["--only", "ceiling,zr-ingest,zr-e2e"]
    proc = subprocess.run(
        [sys.executable, str(RUN), "--counts", "2048:30", "--repeat", "1", "--sessions", "5",
         "--workers", "1", "--big-gib", "0.002", "--queue-scale", "300", "--out", str(out), *only],
        capture_output=True, text=True, timeout=110, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    scenarios = result["summary"]["2 KB"]["scenarios"]
    expected = {"ceiling", "zr-ingest", "zr-e2e"} | ({"postfix"} if not only else set())
    assert set(scenarios) == expected
    assert scenarios["zr-e2e"]["e2e_rate"]["n"] == 1
    assert "zonerelay serve" in scenarios["zr-e2e"]["processes"]
    assert "zonerelay worker" in scenarios["zr-e2e"]["processes"]
    if not only:
        assert "postfix master" in scenarios["postfix"]["processes"]
        assert "end to end (zr / postfix)" in result["summary"]["2 KB"]["ratios_of_medians"]
    assert all(run.get("delivered", 30) == 30 for run in result["runs"])
    assert result["big"]["reply"].startswith("250 ")
    assert result["queue_scale"][0]["pending"] == 300
    assert "| 2 KB x 30 |" in result["table"]
    assert not Path(result["workdir"]).exists()
    leftovers = subprocess.run(["pgrep", "-f", result["workdir"]], capture_output=True, text=True).stdout
    assert leftovers == ""


def test_hot_spots_reads_py_spy_raw_output(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        'process 1:"python";thread (0x1);main (a.py:1);work (a.py:5) 30\n'
        'process 1:"python";thread (0x1);main (a.py:1);idle (a.py:9) 10\n'
    )
    spots = _load_run().hot_spots(raw)
    assert spots["samples"] == 40
    assert spots["self"][0] == ("work (a.py)", 75.0)
    assert ("main (a.py)", 100.0) in spots["inclusive"]
