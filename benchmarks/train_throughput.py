"""Training throughput: images/second and achieved GFLOP/s per preset and precision, beside the matmul peak.

One training step is what ``fext train`` does per batch: forward under autocast, the MAE loss,
backward, an Adam update, on a batch already in memory (the decoded-image cache makes data
loading negligible; see benchmarks/data_throughput.py). Achieved GFLOP/s counts 3 x the forward
FLOPs per image (forward + backward ~ 3 forward passes). The machine's own fp32 and bf16 matmul
GFLOP/s, measured in the same run, say how close the model gets to what the CPU/GPU can do.

Targets on a 2-core CPU: base fp32 >= 50% of the fp32 matmul figure; MIXED_PRECISION (bf16) on a
CPU with bf16 support >= 2x the fp32 images/second.

    python benchmarks/train_throughput.py            # the figures (a few minutes on 2 cores)
    python benchmarks/train_throughput.py --quick    # a check that it runs (small sizes, seconds)
"""

from __future__ import annotations

import argparse
import time

import torch

from fext._allocator import keep_freed_memory
from fext.device import autocast, select_device
from fext.model import FeXTAutoEncoder, model_complexity
from fext.training.objectives import reconstruction_loss


def matmul_gflops(n: int, dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    """GFLOP/s of n x n @ n x n matrix products in ``dtype``, repeated for about ``seconds``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: kernel selection, page faults
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and reps >= 3:
            return 2 * n**3 * reps / elapsed / 1e9


def train_images_per_second(
    preset: str, img_size: int, batch: int, mixed: bool, device: torch.device, warmup: int, steps: int
) -> tuple[float, int]:
    """(training images/second, forward FLOPs per image) of ``preset`` with or without bf16/fp16 autocast."""
    torch.manual_seed(0)
    model = FeXTAutoEncoder.from_preset(preset, img_size).to(device)
    _, flops = model_complexity(model, img_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, img_size, img_size, device=device).contiguous(memory_format=torch.channels_last)
    model.train()

    def step() -> None:
        with autocast(device, mixed):
            reconstruction = model(x)["reconstruction"]
        loss = reconstruction_loss(reconstruction, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start), flops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["base", "small"])
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--device", default="CPU", choices=["CPU", "GPU"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--default-allocator", action="store_true", help="measure without fext's glibc tuning")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.img_size, args.batch_size, args.steps, args.warmup, args.matmul_size = 64, 4, 2, 1, 512
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    if device.type == "cpu" and not args.default_allocator:
        keep_freed_memory()  # as `fext train` does on the CPU

    seconds = 0.5 if args.quick else 3.0
    peak = {"fp32": matmul_gflops(args.matmul_size, torch.float32, device, seconds),
            "bf16": matmul_gflops(args.matmul_size, torch.bfloat16, device, seconds)}
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}, {args.img_size} px, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"matmul {args.matmul_size}x{args.matmul_size}: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s")
    if device.type == "cpu":
        flags = {name: getattr(torch.cpu, f"_is_{name}_supported", lambda: None)() for name in ("avx512_bf16", "amx_tile")}
        print("CPU bf16 instructions: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
              + ("" if any(flags.values()) else " (bf16 is emulated here: the 2x target is for CPUs with bf16 support)"))
    print()
    header = f"{'preset':<7} {'precision':<10} {'img/s':>9} {'GFLOP/s':>9} {'% of matmul':>12} {'x fp32':>7}"
    print(header)
    print("-" * len(header))
    results, flops_per_image = {}, {}
    for preset in args.presets:
        for precision in ("fp32", "bf16"):
            ips, flops = train_images_per_second(preset, args.img_size, args.batch_size, precision == "bf16",
                                                 device, args.warmup, args.steps)
            results[preset, precision], flops_per_image[preset] = ips, flops
            gflops = 3 * flops * ips / 1e9
            ratio = ips / results[preset, "fp32"]
            print(f"{preset:<7} {precision:<10} {ips:>9.1f} {gflops:>9.1f} {100 * gflops / peak[precision]:>11.0f}% "
                  f"{ratio:>6.2f}x", flush=True)
    if "base" in args.presets:
        share = 3 * flops_per_image["base"] * results["base", "fp32"] / 1e9 / peak["fp32"]
        speedup = results["base", "bf16"] / results["base", "fp32"]
        print()
        print(f"target base fp32 >= 50% of the fp32 matmul figure: {100 * share:.0f}% "
              f"({'met' if share >= 0.5 else 'not met'})")
        print(f"target bf16 >= 2x fp32 images/second (base): {speedup:.2f}x ({'met' if speedup >= 2 else 'not met'})")


if __name__ == "__main__":
    main()
