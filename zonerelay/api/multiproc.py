"""Set up prometheus-client's multiprocess directory; imports nothing of prometheus_client.

prometheus_client picks its value store (in memory or memory-mapped files) when it is first
imported, so the supervisor must export ``PROMETHEUS_MULTIPROC_DIR`` before anything imports
``zonerelay.metrics``. Files of a previous run are removed: counters start again at zero
with the process, as Prometheus expects after a restart.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(data_dir: Path) -> Path:
    """Empty ``<data_dir>/metrics`` and export it for this process and the workers it starts."""
    if "prometheus_client" in sys.modules and os.environ.get(ENV) is None:
        raise RuntimeError("prometheus_client was imported before the multiprocess directory was set")
    directory = (data_dir / "metrics").resolve()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ[ENV] = str(directory)
    return directory
