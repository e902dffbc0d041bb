"""Training throughput against the model's own forward + backward + optimizer step on synthetic input.

The issue's target: ``edgereid train`` reaches at least 85 % of the throughput of the bare training step of the
same model (same batch, precision and optimizer, input already on the device), so that data handling,
augmentation and logging cost at most 15 %. Both are measured in the same process:

    python benchmarks/bench_training.py --recipe bot_r50                 # on the GPU machine (bf16, 256x128)
    python benchmarks/bench_training.py --recipe quickstart --iters 40   # on CPU

The bare step is timed over ``--iters`` iterations after ``--warmup``; the trainer's throughput is the median of
its logged ``images_per_s`` windows after the first (which holds the warm-up). Results go to
``benchmarks/results/training-<recipe>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from edgereid.losses import ReIDCriterion
from edgereid.modeling import create_model
from edgereid.recipes import Recipe, load_recipe
from edgereid.training import train
from edgereid.training.optim import build_optimizer
from edgereid.training.trainer import resolve_device

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="bot_r50", help="a recipe file or shipped name")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--iters", type=int, default=200, help="timed iterations of each measurement")
    parser.add_argument("--warmup", type=int, default=20, help="untimed iterations first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="JSON output (default: benchmarks/results/training-….json)")
    return parser.parse_args()


def bare_step_throughput(recipe: Recipe, device: torch.device, iters: int, warmup: int, num_classes: int) -> float:
    """Images per second of forward + loss + backward + optimizer step on a fixed random batch on the device."""
    torch.manual_seed(0)
    model = create_model(recipe.model, num_classes=num_classes).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe.solver)
    criterion = ReIDCriterion(recipe.losses)
    batch = recipe.data.sampler.p * recipe.data.sampler.k
    inputs = torch.randn(batch, 3, *recipe.data.size, device=device)
    if device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    targets = torch.arange(batch, device=device) // recipe.data.sampler.k
    use_amp = device.type == "cuda" and recipe.solver.amp != "none"
    dtype = torch.float16 if recipe.solver.amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            outputs = model(inputs, targets)
        total, _ = criterion({key: value.float() for key, value in outputs.items()}, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        step()
    _synchronize(device)
    return iters * batch / (time.perf_counter() - started)


def trainer_throughput(recipe: Recipe, device: torch.device, iters: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        timed = recipe.model_copy(
            update={
                "solver": recipe.solver.model_copy(update={"epochs": 1, "iters_per_epoch": warmup + iters}),
                "train": recipe.train.model_copy(
                    update={"output_dir": Path(scratch) / "{name}", "log_period": max(1, iters // 5),
                            "eval_period": 10**6, "tensorboard": False}
                ),
            }
        )
        started = time.perf_counter()
        result = train(timed, device=str(device), show_progress=False)
        wall = time.perf_counter() - started
        windows = [
            entry["images_per_s"]
            for entry in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
            if entry["kind"] == "train"
        ]
    return {"images_per_s": statistics.median(windows[1:] or windows), "windows": windows, "wall_s": wall}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    device = resolve_device(args.device)
    from edgereid.training.data import IdentityClasses, prepare_dataset

    num_classes = len(IdentityClasses.from_records(prepare_dataset(recipe.data).train).pids)
    trainer = trainer_throughput(recipe, device, args.iters, args.warmup)
    bare = bare_step_throughput(recipe, device, args.iters, args.warmup, num_classes)
    report = {
        "recipe": recipe.name,
        "command": "python benchmarks/bench_training.py " + " ".join(
            [f"--recipe {args.recipe}", *(f"--set {o}" for o in args.overrides), f"--iters {args.iters}"]
        ),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "input_size": list(recipe.data.size),
        "batch": recipe.data.sampler.p * recipe.data.sampler.k,
        "amp": recipe.solver.amp if device.type == "cuda" else "none",
        "bare_step_images_per_s": round(bare, 1),
        "trainer_images_per_s": round(trainer["images_per_s"], 1),
        "trainer_windows_images_per_s": [round(value, 1) for value in trainer["windows"]],
        "trainer_share_of_bare_step": round(trainer["images_per_s"] / bare, 3),
    }
    out = args.out or RESULTS / f"training-{recipe.name}-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
