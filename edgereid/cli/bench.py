"""`edgereid bench`: latency, throughput and memory of a bundle, engine or checkpoint on this machine (a thin
wrapper over edgereid.report.bench)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgereid.atomic import atomic_write_text
from edgereid.bundle_format import PRECISIONS
from edgereid.cli._output import console, parse_options, print_json
from edgereid.errors import ConfigError
from edgereid.runtime.runners import BACKENDS


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` as [1, 8, 32]; anything but positive integers a ConfigError naming the value."""
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        batches = []
    if not batches or any(batch < 1 for batch in batches):
        raise ConfigError(f"--batch {text!r} is not a comma-separated list of positive batch sizes, e.g. 1,8,32")
    return batches


@click.command("bench")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--backend", "backends", type=click.Choice(BACKENDS), multiple=True,
              help="A backend to measure (repeatable; default: onnxruntime for a bundle, tensorrt for an engine, "
                   "torch for a checkpoint).")
@click.option("--precision", "precisions", type=click.Choice(PRECISIONS), multiple=True,
              help="A precision to measure (repeatable; default: every one the target has that the backend runs).")
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed iterations.")
@click.option("--iters", type=click.IntRange(min=1), default=50, show_default=True, help="Timed iterations.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A backend option, e.g. -o providers=[cuda] -o threads=4 (onnxruntime), -o device=cuda (torch).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--out", "out_file", type=click.Path(path_type=Path), help="Also write the result JSON here.")
def bench_command(
    target: Path,
    backends: tuple[str, ...],
    precisions: tuple[str, ...],
    batches: str,
    warmup: int,
    iters: int,
    options: tuple[str, ...],
    as_json: bool,
    out_file: Path | None,
) -> None:
    """Measure TARGET (a bundle, an engine file in a bundle, or a checkpoint / run directory): latency p50/p90/p99
    and throughput per batch size, host/device copies apart from compute where the backend separates them, peak
    memory, model size, parameters and FLOPs, with the machine and library versions."""
    from edgereid.report.bench import bench_target

    result = bench_target(
        target,
        backends=list(backends) or None,
        precisions=list(precisions) or None,
        batches=parse_batches(batches),
        warmup=warmup,
        iters=iters,
        **parse_options(options),
    )
    if out_file is not None:
        atomic_write_text(out_file, json.dumps(result, indent=2, sort_keys=True) + "\n")
    if as_json:
        print_json(result)
    else:
        print_bench(result)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_bench(result: dict[str, Any]) -> None:
    """The model and the machine, then per backend one row per precision × batch."""
    from edgereid.runtime.environment import machine_summary

    height, width = result["input"]
    params = "?" if result["params"] is None else f"{result['params'] / 1e6:.2f} M params"
    flops = "?" if result["flops"] is None else f"{result['flops'] / 1e9:.3f} GFLOPs/image"
    title = (
        f"{result['target']} ({result['target_kind']}): {result['backbone']} ({result['recipe']}/{result['network']}), "
        f"{height}×{width}, {params}, {flops}, on {machine_summary(result['environment'])}"
    )
    console.print(title, highlight=False)
    # One table per backend, within 80 columns: the copy/compute split only where the backend separates copies
    # (on the CPU compute is all of it).
    for backend in dict.fromkeys(run["backend"] for run in result["runs"]):
        runs = [run for run in result["runs"] if run["backend"] == backend]
        split = any(run["host_to_device_ms"] is not None for run in runs)
        table = Table("prec", "batch", "p50", "p90", "p99", "img/s", *(["compute", "H→D", "D→H"] if split else []),
                      "peak MB", "MiB", title=f"{runs[0]['backend_detail']}, times in ms")
        for run in runs:
            latency = run["latency_ms"]
            table.add_row(
                run["precision"], str(run["batch"]), _ms(latency["p50"]), _ms(latency["p90"]), _ms(latency["p99"]),
                f"{run['throughput_ips']:.1f}",
                *([_ms(run["compute_ms"]), _ms(run["host_to_device_ms"]), _ms(run["device_to_host_ms"])]
                  if split else []),
                f"{run['peak_memory_mb']:.0f}", f"{run['model_bytes'] / 2**20:.1f}",
            )
        console.print(table)
    settings = result["settings"]
    console.print(
        f"{settings['warmup']} warm-up + {settings['iters']} timed iterations per row, each row in a fresh process; "
        "peak MB: that process's peak resident memory"
    )
