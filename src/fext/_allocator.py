"""glibc allocator tuning for the large, short-lived buffers of CPU tensor work.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
returns it to the system on ``free``. PyTorch frees a training step's activations (about 100 MB each
for the base preset at batch 25) every step, so every step faults in freshly zeroed pages again:
that roughly triples the cost of the cheap per-pixel operations. Serving everything from the heap
and never trimming it avoids that (the measurement is in benchmarks/README.md). The price: memory freed by the process is kept for reuse instead of being returned to the
system, so the resident size stays at its peak (a few batches), which is what a long run reaches
anyway. :func:`release_freed_memory` hands it back where no step is running: after every epoch (so the
holes that each epoch's validation and save leave do not add up over a long run: benchmarks/train_soak.py)
and when a training run ends, so a process that goes on (the menu, the demo, a notebook) does not keep
the training peak.
``training.ACTIVATION_CHECKPOINTING`` puts memory first and leaves glibc's default policy alone.
"""

from __future__ import annotations

import ctypes
import gc
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> None:
    """Serve every allocation from the heap and never trim it (glibc on Linux; elsewhere a no-op)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: nothing to tune
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    _done = True


def release_freed_memory() -> None:
    """Free Python's cyclic garbage, then return the heap's free pages to the system (glibc ``malloc_trim``).

    The collection comes first because some garbage holds megabytes outside Python's own allocator
    until the cycle collector reaches it: a matplotlib figure (every epoch's training curves) is a
    cycle of objects that keeps its renderer's pixel buffer (4-6 MB an epoch in the soak). Left to
    the collector's own schedule those add up over several epochs before a full collection frees
    them (the sawtooth of benchmarks/train_soak.py). Elsewhere than glibc only the collection runs.
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc
        pass
