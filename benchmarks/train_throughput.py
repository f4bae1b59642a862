"""Training throughput and memory: images/second, achieved GFLOP/s and peak resident memory per preset and precision.

One training step is what ``fext train`` does per batch: forward under autocast, the MAE loss,
backward, an Adam update, on a batch already in memory (the decoded-image cache makes data
loading negligible; see benchmarks/data_throughput.py). Achieved GFLOP/s counts 3 x the forward
FLOPs per image (forward + backward ~ 3 forward passes). The machine (CPU model) and its own fp32
and bf16 matmul GFLOP/s, measured in the same run, say how close the model gets to what the CPU/GPU
can do. Every configuration runs in a fresh process, which also reports its peak resident memory
(VmHWM): what a laptop needs to train that preset at that batch size. The base preset is also
measured with ``training.ACTIVATION_CHECKPOINTING``, and with ``--plain-stages`` also with the plain
autograd graph of its residual stages instead of the lean ones of ``fext._lean_units`` (what that
choice buys).

Targets on a 2-core CPU: base fp32 >= 50% of the fp32 matmul figure; MIXED_PRECISION (bf16) on a
CPU with bf16 support >= 2x the fp32 images/second; base fp32 at batch 25 under 3 GB peak memory.

    python benchmarks/train_throughput.py            # the figures (several minutes on 2 cores)
    python benchmarks/train_throughput.py --quick    # a check that it runs (small sizes, seconds)
    python benchmarks/train_throughput.py --presets base --no-bf16 --plain-stages --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from _machine import machine_header, matmul_gflops, peak_rss_mb

import fext.layers
from fext._allocator import keep_freed_memory
from fext.device import autocast, select_device
from fext.model import FeXTAutoEncoder, model_complexity
from fext.training.objectives import reconstruction_loss


def train_images_per_second(
    preset: str, img_size: int, batch: int, mixed: bool, device: torch.device, warmup: int, steps: int,
    checkpointing: bool = False,
) -> tuple[float, int]:
    """(training images/second, forward FLOPs per image) of ``preset`` with or without bf16/fp16 autocast."""
    torch.manual_seed(0)
    model = FeXTAutoEncoder.from_preset(preset, img_size).to(device)
    model.activation_checkpointing = checkpointing
    _, flops = model_complexity(model, img_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, img_size, img_size, device=device).contiguous(memory_format=torch.channels_last)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)  # before the forward, as in fext.training.loop
        with autocast(device, mixed):
            reconstruction = model(x)["reconstruction"]
        loss = reconstruction_loss(reconstruction, x)
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


def child(args: argparse.Namespace) -> None:
    """Measure one configuration in this fresh process; print images/second, FLOPs and peak RSS as JSON."""
    preset, precision, checkpointing, lean = args.child[0], args.child[1], args.child[2] == "1", args.child[3] == "1"
    fext.layers.LEAN_TRAINING = lean
    device = select_device(args.device)
    if device.type == "cpu" and not args.default_allocator and not checkpointing:
        keep_freed_memory()  # as `fext train` does on the CPU (not with ACTIVATION_CHECKPOINTING)
    ips, flops = train_images_per_second(preset, args.img_size, args.batch_size, precision == "bf16", device,
                                         args.warmup, args.steps, checkpointing)
    print(json.dumps({"ips": ips, "flops": flops, "rss_mb": peak_rss_mb()}))


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
    parser.add_argument("--no-bf16", action="store_true", help="leave out the bf16 rows (slow where bf16 is emulated)")
    parser.add_argument("--plain-stages", action="store_true",
                        help="add a base fp32 row with the plain autograd graph of the residual stages")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.img_size, args.batch_size, args.steps, args.warmup, args.matmul_size = 64, 4, 2, 1, 512
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    device = select_device(args.device)
    seconds = 0.5 if args.quick else 3.0
    peak = {"fp32": machine_header(device, args.matmul_size, seconds),
            "bf16": matmul_gflops(args.matmul_size, torch.bfloat16, device, seconds)}
    print(f"bf16 matmul {args.matmul_size}x{args.matmul_size}: {peak['bf16']:.1f} GFLOP/s; batch {args.batch_size}, "
          f"{args.img_size} px, {args.steps} timed steps after {args.warmup} warm-up, each row a fresh process")
    if device.type == "cpu":
        flags = {name: getattr(torch.cpu, f"_is_{name}_supported", lambda: None)() for name in ("avx512_bf16", "amx_tile")}
        print("CPU bf16 instructions: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
              + ("" if any(flags.values()) else " (bf16 is emulated here: the 2x target is for CPUs with bf16 support)"))
    print()
    header = (f"{'preset':<7} {'precision':<10} {'act. ckpt':<9} {'stages':<6} {'img/s':>8} {'GFLOP/s':>8} "
              f"{'% matmul':>9} {'x fp32':>7} {'peak RSS MB':>12}")
    print(header)
    print("-" * len(header))
    precisions = ("fp32",) if args.no_bf16 else ("fp32", "bf16")
    rows = [(preset, precision, False, True) for preset in args.presets for precision in precisions]
    rows += [("base", "fp32", True, True)] if "base" in args.presets else []
    rows += [("base", "fp32", False, False)] if "base" in args.presets and args.plain_stages else []
    results = {}
    for preset, precision, checkpointing, lean in rows:
        command = [sys.executable, __file__, "--child", preset, precision, str(int(checkpointing)), str(int(lean)),
                   *(argv if argv is not None else sys.argv[1:])]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        figures = results[preset, precision, checkpointing, lean] = json.loads(out.splitlines()[-1])
        ips, gflops = figures["ips"], 3 * figures["flops"] * figures["ips"] / 1e9
        ratio = ips / results[preset, "fp32", False, True]["ips"]
        print(f"{preset:<7} {precision:<10} {'on' if checkpointing else 'off':<9} {'lean' if lean else 'plain':<6} "
              f"{ips:>8.1f} {gflops:>8.1f} {100 * gflops / peak[precision]:>8.0f}% {ratio:>6.2f}x "
              f"{figures['rss_mb']:>12.0f}", flush=True)
    if "base" in args.presets:
        base = results["base", "fp32", False, True]
        share = 3 * base["flops"] * base["ips"] / 1e9 / peak["fp32"]
        print()
        print(f"target base fp32 >= 50% of the fp32 matmul figure: {100 * share:.0f}% ({'met' if share >= 0.5 else 'not met'})")
        if ("base", "bf16", False, True) in results:
            speedup = results["base", "bf16", False, True]["ips"] / base["ips"]
            print(f"target bf16 >= 2x fp32 images/second (base): {speedup:.2f}x ({'met' if speedup >= 2 else 'not met'})")
        for checkpointing in (False, True):
            rss = results["base", "fp32", checkpointing, True]["rss_mb"]
            print(f"target base fp32 peak memory < 3 GB (activation checkpointing {'on' if checkpointing else 'off'}): "
                  f"{rss / 1024:.2f} GB ({'met' if rss < 3072 else 'not met'})")

        if ("base", "fp32", False, False) in results:
            plain = results["base", "fp32", False, False]
            print(f"lean stages against plain autograd (base fp32): {base['ips'] / plain['ips']:.2f}x images/second, "
                  f"{base['rss_mb'] / plain['rss_mb']:.2f}x peak memory (target >= 0.95x speed)")


if __name__ == "__main__":
    main()
