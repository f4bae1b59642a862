"""What machine a benchmark ran on: CPU model, cores, torch, its own matmul ceiling and peak memory.

Every benchmark prints ``machine_header()`` first, so a figure always travels with the machine it
came from (speed figures from one CPU say little about another), and compares the model with
``matmul_gflops`` measured in the same run: the share of the matmul ceiling is the figure that
carries over between machines. Benchmarks run as scripts (``python benchmarks/x.py``), so this
module is imported as ``from _machine import machine_header, matmul_gflops, peak_rss_mb``.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time

import torch


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 7763 64-Core Processor"), or the platform's best guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device | str = "cpu") -> str:
    """The CPU model for a CPU device, the GPU's name for a CUDA device."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def matmul_gflops(n: int = 2048, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                  seconds: float = 3.0) -> float:
    """Best GFLOP/s of an (n, n) @ (n, n) product in ``dtype`` over about ``seconds``: the ceiling.

    Best of many, not the mean: on a shared machine the best repetition is the one least disturbed.
    """
    device = torch.device(device)
    a = torch.rand(n, n, device=device).to(dtype)
    b = torch.rand(n, n, device=device).to(dtype)
    a @ b  # warm-up: kernel selection, page faults
    best, reps, deadline = 0.0, 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or reps < 3:
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
        reps += 1
    return best


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec; ru_maxrss does not (a forked
    child keeps its parent's figure), so it could report the parent's memory.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def machine_header(device: torch.device | str = "cpu", matmul_size: int = 2048, seconds: float = 3.0) -> float:
    """Print the machine line and the fp32 matmul ceiling; return that ceiling in GFLOP/s."""
    device = torch.device(device)
    ceiling = matmul_gflops(matmul_size, torch.float32, device, seconds)
    print(f"machine: {device_name(device)} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads), "
          f"torch {torch.__version__}, device {device}")
    print(f"fp32 matmul {matmul_size}x{matmul_size}: {ceiling:.1f} GFLOP/s (this machine's ceiling)")
    return ceiling
