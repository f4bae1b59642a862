"""What this machine lets a run use: CPU cores, and the data-loading workers that fit them.

The one owner of ``device.NUM_PROCESSORS``: :func:`data_workers` turns the setting ("auto" or a
number) into a worker count. A leaf module (no torch), so the configuration can document it and
``fext --help`` stays fast.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_AUTO_WORKERS = 16
""""auto" never starts more decoding workers than this: beyond it, each one costs memory and start-up, and rarely speed."""

_warned: set[tuple[int, int]] = set()


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's container in cores (cgroup v2 ``cpu.max``, or v1 CFS quota), None if unlimited.

    Containers (Docker ``--cpus``, Kubernetes limits) cap CPU time this way while the affinity mask still
    lists every core of the host: counting the mask alone would start workers that only wait for CPU time.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPU cores this process may run on: its affinity mask (where the OS has one), capped by a cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity masks
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def local_processes() -> int:
    """Processes of this run on this machine: torchrun's LOCAL_WORLD_SIZE (the launcher's contract), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def auto_workers(cores: int, processes: int = 1) -> int:
    """The "auto" worker count: each process's share of the cores, less the one its own model work runs on.

    1 worker on 2 cores, 0 on one core (decoding in the process itself beats starting a worker there),
    3 per process for 4 processes on 16 cores; at most :data:`MAX_AUTO_WORKERS`.
    """
    return max(0, min(cores // processes - 1, MAX_AUTO_WORKERS))


def data_workers(setting: int | str) -> int:
    """The decoding workers for ``device.NUM_PROCESSORS``: "auto" fits the usable cores; a number is honoured.

    A number above the usable cores is kept (the user asked for it) with one warning per run that says
    what to change: PyTorch's DataLoader otherwise only hints at it, and such workers can slow a run down.
    """
    cores = usable_cores()
    if setting == "auto":
        return auto_workers(cores, local_processes())
    workers = int(setting)
    if workers > cores and (workers, cores) not in _warned:
        _warned.add((workers, cores))
        log.warning(
            'device.NUM_PROCESSORS is %d but this process may use %d CPU core(s): the extra decoding workers '
            'compete for them and can slow the run down; set device.NUM_PROCESSORS to "auto" or to at most %d',
            workers, cores, cores,
        )
    return workers
