"""Training throughput and memory: images/second, achieved GFLOP/s and peak resident memory per preset, precision and recipe.

One training step is what ``fext train`` does per batch (``fext.training.loop.compute_gradients``
and an Adam update): the recipe's inputs, forward under autocast, its loss, backward, on a batch
already in memory (the decoded-image cache makes data loading negligible; see
benchmarks/data_throughput.py). The default recipe, ``"views"``, puts two views of each image
through the model, one view at a time (``training.VIEWS.ONE_VIEW_AT_A_TIME``); ``"seed"`` one
reconstruction per image. Images/second counts images, not views. Achieved GFLOP/s counts the
useful work, 3 x the forward FLOPs per view (forward + backward ~ 3 forward passes; the views
recipe's extra encoder pass is not counted). The machine (CPU model) and its own fp32 and bf16
matmul GFLOP/s, measured in the same run, say how close the model gets to what the CPU/GPU can do.
Every configuration runs in a fresh process, which also reports its peak resident memory (VmHWM):
what a laptop needs to train that preset at that batch size. The base preset is also measured with
the seed recipe, with both views in one pass, and with ``training.ACTIVATION_CHECKPOINTING``;
``--plain-stages`` adds the plain autograd graph of its residual stages instead of the lean ones of
``fext._lean_units`` (the training step before those: what they buy and cost).

Targets on a 2-core CPU: base fp32 >= 50% of the fp32 matmul figure; MIXED_PRECISION (bf16) on a
CPU with bf16 support >= 2x the fp32 images/second; base fp32 at batch 25 under 3 GB peak memory;
the lean stages at >= 0.95x the plain graph's images/second.

    python benchmarks/train_throughput.py            # the figures (many minutes on 2 cores)
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

from fext._allocator import keep_freed_memory
from fext.config import Config, with_overrides
from fext.device import needs_grad_scaler, select_device
from fext.model import FeXTAutoEncoder, model_complexity
from fext.training.loop import Step, compute_gradients
from fext.training.objectives import recipe_projector, training_inputs

DEFAULT = ("views", True)
"""The default recipe and whether it steps one view at a time: the rows every other row is compared with."""


def train_images_per_second(
    preset: str, img_size: int, batch: int, mixed: bool, device: torch.device, warmup: int, steps: int,
    recipe: tuple[str, bool] = DEFAULT, checkpointing: bool = False, lean: bool = True,
) -> tuple[float, int]:
    """(training images/second, forward FLOPs per image and view) of ``preset`` with ``recipe``
    (name, one view at a time), with or without bf16/fp16 autocast; ``lean``: the memory-lean stages, as
    `fext train` runs them (``enable_lean_training``)."""
    cfg = with_overrides(Config(), {"training.RECIPE": recipe[0], "training.VIEWS.ONE_VIEW_AT_A_TIME": recipe[1],
                                    "device.MIXED_PRECISION": mixed})
    torch.manual_seed(0)
    model = FeXTAutoEncoder.from_preset(preset, img_size).to(device).enable_lean_training(lean)
    model.activation_checkpointing = checkpointing
    projector = recipe_projector(cfg, model.arch.feature_dim)
    parameters = list(model.parameters())
    if projector is not None:
        parameters += list(projector.to(device).parameters())
    _, flops = model_complexity(model, img_size)
    optimizer = torch.optim.Adam(parameters, lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(device, mixed))  # as fext.training.run
    x = torch.rand(batch, 3, img_size, img_size, device=device).contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    model.train()

    parts = Step(model, model, cfg, device, scaler, projector)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)  # before the forward, as in fext.training.loop
        inputs, target = training_inputs(x, cfg, generator)
        compute_gradients(parts, inputs, target)
        scaler.step(optimizer)
        scaler.update()

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


Row = tuple[str, str, str, bool, bool, bool]
"""preset, precision, recipe, one view at a time, activation checkpointing, lean stages."""


def child(args: argparse.Namespace) -> None:
    """Measure one configuration in this fresh process; print images/second, FLOPs and peak RSS as JSON."""
    preset, precision, recipe = args.child[:3]
    one_view, checkpointing, lean = (flag == "1" for flag in args.child[3:])
    device = select_device(args.device)
    if device.type == "cpu" and not args.default_allocator and not checkpointing:
        keep_freed_memory()  # as `fext train` does on the CPU (not with ACTIVATION_CHECKPOINTING)
    ips, flops = train_images_per_second(preset, args.img_size, args.batch_size, precision == "bf16", device,
                                         args.warmup, args.steps, (recipe, one_view), checkpointing, lean)
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
                        help="add base fp32 rows with the plain autograd graph of the residual stages")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
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
    header = (f"{'preset':<7} {'precision':<10} {'recipe':<18} {'act. ckpt':<9} {'stages':<6} {'img/s':>8} "
              f"{'GFLOP/s':>8} {'% matmul':>9} {'x default':>9} {'peak RSS MiB':>12}")
    print(header)
    print("-" * len(header))
    precisions = ("fp32",) if args.no_bf16 else ("fp32", "bf16")
    default = ("base", "fp32", *DEFAULT, False, True)
    rows: list[Row] = [(preset, precision, *DEFAULT, False, True) for preset in args.presets for precision in precisions]
    if "base" in args.presets:
        rows += [("base", "fp32", "views", False, False, True), ("base", "fp32", "seed", False, False, True),
                 ("base", "fp32", *DEFAULT, True, True)]
        if args.plain_stages:
            rows += [("base", "fp32", "views", False, False, False), ("base", "fp32", "seed", False, False, False)]
    results = {}
    for row in rows:
        preset, precision, recipe, one_view, checkpointing, lean = row
        command = [sys.executable, __file__, "--child", preset, precision, recipe,
                   *(str(int(flag)) for flag in (one_view, checkpointing, lean)), *(argv if argv is not None else sys.argv[1:])]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        figures = results[row] = json.loads(out.splitlines()[-1])
        views = 2 if recipe == "views" else 1
        ips, gflops = figures["ips"], 3 * views * figures["flops"] * figures["ips"] / 1e9
        ratio = ips / results[(preset, "fp32", *DEFAULT, False, True)]["ips"]
        name = recipe + (" (one view)" if recipe == "views" and one_view else " (both views)" if recipe == "views" else "")
        print(f"{preset:<7} {precision:<10} {name:<18} {'on' if checkpointing else 'off':<9} "
              f"{'lean' if lean else 'plain':<6} {ips:>8.1f} {gflops:>8.1f} {100 * gflops / peak[precision]:>8.0f}% "
              f"{ratio:>8.2f}x {figures['rss_mb']:>12.0f}", flush=True)
    if "base" not in args.presets:
        return
    base = results[default]
    share = 3 * 2 * base["flops"] * base["ips"] / 1e9 / peak["fp32"]
    print()
    print(f"target base fp32 >= 50% of the fp32 matmul figure: {100 * share:.0f}% ({'met' if share >= 0.5 else 'not met'})")
    if ("base", "bf16", *DEFAULT, False, True) in results:
        speedup = results["base", "bf16", *DEFAULT, False, True]["ips"] / base["ips"]
        print(f"target bf16 >= 2x fp32 images/second (base): {speedup:.2f}x ({'met' if speedup >= 2 else 'not met'})")
    for row, label in ((default, "the default views recipe"), (("base", "fp32", "seed", False, False, True), "the seed recipe"),
                       (("base", "fp32", *DEFAULT, True, True), "the default with activation checkpointing")):
        gb = results[row]["rss_mb"] * 2**20 / 1e9
        print(f"target base fp32 peak memory < 3 GB, {label}: {gb:.2f} GB ({'met' if gb < 3 else 'not met'})")
    if args.plain_stages:
        for recipe, one_view, label in (("views", False, "views, both views in one pass"), ("seed", False, "seed")):
            lean, plain = results["base", "fp32", recipe, one_view, False, True], results["base", "fp32", recipe, one_view, False, False]
            print(f"lean stages against plain autograd ({label}): {lean['ips'] / plain['ips']:.2f}x images/second, "
                  f"{lean['rss_mb'] / plain['rss_mb']:.2f}x peak memory (target >= 0.95x speed)")
        plain = results["base", "fp32", "views", False, False, False]
        print(f"the default (lean stages, one view at a time) against the views step before both (plain, both views "
              f"in one pass): {base['ips'] / plain['ips']:.2f}x images/second, {base['rss_mb'] / plain['rss_mb']:.2f}x "
              f"peak memory (target >= 0.95x speed)")


if __name__ == "__main__":
    main()
