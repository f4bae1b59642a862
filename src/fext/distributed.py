"""Several processes, one run: DistributedDataParallel training and sharded encoding under ``torchrun``.

``torchrun`` (``python -m torch.distributed.run``) starts one process per GPU (or per CPU
worker) and tells each who it is through environment variables: ``RANK`` (0 .. WORLD_SIZE-1
over all machines), ``WORLD_SIZE``, ``LOCAL_RANK`` (its number on this machine, hence its GPU
``cuda:LOCAL_RANK``), ``MASTER_ADDR`` and ``MASTER_PORT`` (where rank 0 listens). These are the
launcher's contract, not configuration: this module reads them, as ``torch.distributed`` does (the
CLI only looks at RANK and WORLD_SIZE, to log and prompt once, through :mod:`fext.environment`).


- :func:`session` opens the process group of a command (nccl for training on GPUs, gloo on
  CPUs and for encoding) and yields this process's device; outside torchrun, or with one
  process, it opens nothing and every helper below is a cheap no-op, so single-process runs
  stay exactly what they were.
- :func:`rank`, :func:`world_size`, :func:`is_main`, :func:`barrier`, :func:`all_reduce_sum`
  (metrics are averaged exactly as sums and counts), :func:`all_true`, :func:`broadcast_object`, :func:`gather_objects`.
- :func:`shard` (training and validation rows of a rank) and :func:`contiguous_shard`
  (encoding: a block of the sorted listing per rank, so merging the parts in rank order gives
  the single-process row order).
- :func:`launch_torchrun`: ``fext train --nproc N`` runs torchrun on this machine.

When a rank fails, torchrun sends SIGTERM to the others: inside a session that raises
``SystemExit`` (exit status 143), so they unwind (a new run removes its unsaved checkpoint
folder, an encoding keeps what it has done) instead of waiting on the failed rank.

How long a collective (a barrier, a gradient all-reduce) may wait for the other ranks before the
run fails is set once, at the command line's edge, by :func:`set_timeout` (the CLI reads
``FEXT_DIST_TIMEOUT``; default 1800 s).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from fext import environment
from fext.environment import launched
from fext.errors import ConfigError, FeXTError

log = logging.getLogger(__name__)

TIMEOUT_ENV = environment.DIST_TIMEOUT
"""The environment variable the CLI reads for :func:`set_timeout`."""
DEFAULT_TIMEOUT_SECONDS = 1800.0
_timeout_seconds = DEFAULT_TIMEOUT_SECONDS


def active() -> bool:
    """Whether a process group of more than one process is open."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes of the run (1 when not distributed)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files, logs and draws progress bars."""
    return rank() == 0


def set_timeout(seconds: float) -> None:
    """How long a collective of the sessions opened from now on may wait for the other ranks (at least 1 s)."""
    global _timeout_seconds
    _timeout_seconds = max(float(seconds), 1.0)


def device_for(device: str, device_id: int = 0) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` under torchrun with GPUs, else as configured."""
    from fext.device import select_device

    if not launched():
        return select_device(device, device_id)
    if device in ("auto", "GPU") and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise FeXTError(
                f"This process is LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                f"start at most {torch.cuda.device_count()} processes per machine (--nproc_per_node)."
            )
        return torch.device("cuda", local_rank)
    return select_device(device, device_id)


@contextlib.contextmanager
def session(device: str, device_id: int = 0, *, gpu_collectives: bool = True) -> Iterator[torch.device]:
    """Open the process group of a command run under torchrun; yield this process's device.

    ``device``/``device_id`` are the configuration's DEVICE and DEVICE_ID (DEVICE_ID is
    ignored under torchrun: rank r of a machine uses ``cuda:LOCAL_RANK``). The backend is
    nccl when the device is a GPU and ``gpu_collectives`` (training: gradients are reduced on
    the GPUs), gloo otherwise (CPUs; encoding, which only exchanges a few small messages).
    Outside torchrun, with one process, or inside an already open session, nothing is
    opened. The group is closed when the block ends normally; after an error it is left to
    the exiting process, as closing it could wait on ranks that are still running.
    """
    dev = device_for(device, device_id)
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield dev
        return
    if not dist.is_available():
        raise FeXTError("This PyTorch build has no torch.distributed; install the standard torch wheel "
                        "to use torchrun.")
    backend = "nccl" if dev.type == "cuda" and gpu_collectives else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=_timeout_seconds), device_id=dev if backend == "nccl" else None)
    log.info("Process %d of %d (%s backend) on %s", dist.get_rank(), dist.get_world_size(), backend, dev)
    # torchrun stops the other ranks with SIGTERM when one fails: unwind (run `finally` blocks) rather than vanish.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        yield dev
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    # Tear down together: a rank that destroys its group while rank 0 is still saving can abort
    # (gloo: "terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def barrier() -> None:
    """Wait until every rank gets here."""
    if active():
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """The sums over all ranks of ``values`` (float64; the values themselves when not distributed)."""
    if not active():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (every rank gets the same answer)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any] | None:
    """On rank 0, the list of every rank's ``obj`` in rank order; None on the others."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def shard(rows: torch.Tensor, pad: bool, rank_: int | None = None, world: int | None = None) -> torch.Tensor:
    """This rank's share of ``rows``: every ``world_size``-th element, starting at its rank.

    Training (``pad``): like ``torch.utils.data.DistributedSampler`` over the epoch's order
    (the same seeded permutation on every rank), the order is first extended with its own
    beginning to a multiple of the world size, so every rank takes the same number of steps
    (a few images are seen twice in an epoch). Validation (no ``pad``): disjoint shares that
    together hold each row once, possibly one shorter than another, so metric sums reduced
    over the ranks give exact averages. With one process: ``rows`` itself. ``rank_`` and
    ``world`` default to this process's.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if w == 1 or len(rows) == 0:
        return rows
    if pad:
        total = -(-len(rows) // w) * w
        rows = rows.repeat(-(-total // len(rows)))[:total]
    return rows[r::w]


def contiguous_shard(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of this rank's block of ``n`` items: consecutive blocks in rank order, sizes within one."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return r * n // w, (r + 1) * n // w


def rank_seed(seed: int, rank_: int) -> int:
    """The seed of rank ``rank_``'s generators: ``seed`` itself on rank 0, distinct ones on the others."""
    return seed if rank_ == 0 else (seed + 1_000_003 * rank_) % 2**63


def ddp_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel (rank 0's weights broadcast; gradients averaged
    over the ranks in backward); ``model`` itself when not distributed."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m fext ARGV`` (``--nproc`` removed)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "fext", *args]


def launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Run ``fext ARGV`` in ``nproc`` processes of this machine under torchrun; return its exit status.

    ``argv`` is the command line after ``fext`` (its ``--nproc N`` is dropped). Ctrl-C reaches
    torchrun and its processes too; this process waits for torchrun to stop them.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if launched():
        raise ConfigError("--nproc starts torchrun itself; under torchrun, run the command without --nproc.")
    command = torchrun_command(nproc, argv)
    log.info("Starting %d processes: %s", nproc, " ".join(command))
    proc = subprocess.Popen(command)
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            continue  # torchrun got the Ctrl-C as well and is stopping its processes
    return 128 - code if code < 0 else code


__all__ = [
    "TIMEOUT_ENV",
    "active",
    "all_reduce_sum",
    "all_true",
    "barrier",
    "broadcast_object",
    "contiguous_shard",
    "ddp_model",
    "device_for",
    "gather_objects",
    "is_main",
    "launch_torchrun",
    "launched",
    "rank",
    "rank_seed",
    "session",
    "set_timeout",
    "shard",
    "torchrun_command",
    "world_size",
]
