"""INT8 of one trained model three ways, on its recipe's test split: post-training quantization of every layer,
post-training quantization with the most sensitive layers kept in float (the accuracy-aware search), and
quantization-aware training — mAP, ΔmAP to FP32 with its 95 % paired bootstrap interval, layers kept in float,
latency at batch 1 and 32 (ONNX Runtime, 2 threads), model size, and QAT's wall time. The fallback exports each
INT8 target in a bundle of its own and records the refusal where the search cannot meet the budget.

    EDGEREID_DATA=../shared/data python benchmarks/bench_qat.py runs/student_mobilenetv2_cpu/best.pt \\
        --qat-recipe qat_student_mobilenetv2_cpu --out benchmarks/results/qat-student_mobilenetv2_cpu.json

Every export is verified by ``verify_bundle`` on the recipe's full query/gallery with ONNX Runtime (the reference
runtime for accuracy); latency comes from ``bench_target``, each variant in a fresh process. The QAT run trains
``--qat-recipe`` with ``qat.init`` set to the checkpoint, in ``--work``; its wall time is the whole run
(calibration, fine-tuning, evaluation). Results are written after each step.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from int8_rows import INT8, int8_rows, print_rows

from edgereid.atomic import atomic_write_text
from edgereid.export import export_checkpoint
from edgereid.export.bundle import ExportBundle
from edgereid.export.sensitivity import BudgetNotMetError
from edgereid.recipes import load_recipe
from edgereid.report.bench import bench_target
from edgereid.runtime.environment import describe_environment
from edgereid.training import train
from edgereid.training.checkpoint import load_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the trained FP32 checkpoint")
    parser.add_argument("--qat-recipe", required=True, help="the QAT recipe (its qat.init is replaced)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the QAT recipe, as `edgereid train --set`")
    parser.add_argument("--qat-checkpoint", type=Path, help="a QAT checkpoint already trained from CHECKPOINT")
    parser.add_argument("--work", type=Path, default=Path("bench-qat-work"), help="bundles and the QAT run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=0.5, help="the fallback search's mAP budget (points)")
    parser.add_argument("--iters", type=int, default=50, help="timed inferences per batch size")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ptq_full", "ptq_fallback", "qat"])
    return parser.parse_args(argv)


def variant_row(bundle: ExportBundle, iters: int) -> dict[str, Any]:
    """What the tables quote of one bundle: accuracy per INT8 precision it has against FP32, and latency."""
    verification = bundle.manifest["verification"]
    int8 = int8_rows(bundle.manifest)
    bench = bench_target(bundle.path, backends=["onnxruntime"], precisions=["fp32", *int8], batches=[1, 32],
                         warmup=10, iters=iters, threads=2)
    latency = {
        f"{run['precision']}_b{run['batch']}": {"p50_ms": run["latency_ms"]["p50"],
                                                 "throughput_ips": run["throughput_ips"]}
        for run in bench["runs"]
    }
    row: dict[str, Any] = {
        "bundle": str(bundle.path),
        "num_query": verification["num_query"],
        "fp32_mAP": verification["precisions"]["fp32"]["mAP"],
        "latency": latency,
        "environment": bench["environment"],
    }
    for precision, entry in int8.items():
        row[precision] = {
            **entry,
            "speedup_b1": latency["fp32_b1"]["p50_ms"] / latency[f"{precision}_b1"]["p50_ms"],
            "speedup_b32": latency[f"{precision}_b32"]["throughput_ips"] / latency["fp32_b32"]["throughput_ips"],
        }
    return row


def fallback_row(checkpoint: Path, work: Path, budget: float, iters: int) -> dict[str, Any]:
    """PTQ with the accuracy-aware search, each INT8 precision in a bundle of its own (one target's search failing
    must not hide the other's); a precision whose budget cannot be met gets the refusal the user reads."""
    row: dict[str, Any] = {}
    for precision in INT8:
        started = time.perf_counter()
        try:
            bundle = export_checkpoint(checkpoint, work / f"ptq_fallback_{precision}", precisions=["fp32", precision],
                                       overwrite=True, verify=True, max_map_drop=budget)
        except BudgetNotMetError as refusal:
            row[precision] = {"refused": str(refusal)}
        else:
            own = variant_row(bundle, iters)
            row.setdefault("fp32_mAP", own["fp32_mAP"])
            row.setdefault("num_query", own["num_query"])
            row[precision] = {**own[precision], "bundle": own["bundle"], "latency": own["latency"]}
        row[precision]["export_s"] = time.perf_counter() - started
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "kind": "edgereid.bench_qat",
        "command": shlex.join([sys.executable, *sys.argv]),
        "checkpoint": str(args.checkpoint.resolve()),
        "fp32_metrics": load_checkpoint(args.checkpoint).metrics,
        "environment": describe_environment(),
        "variants": {},
    }

    def save() -> None:
        atomic_write_text(args.out, json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")

    if "qat" not in args.skip:
        qat_checkpoint = args.qat_checkpoint
        if qat_checkpoint is None:
            recipe = load_recipe(args.qat_recipe, [f"qat.init={args.checkpoint.resolve()}",
                                                   f"train.output_dir={(args.work / '{name}').resolve()}",
                                                   *args.overrides])
            started = time.perf_counter()
            trained = train(recipe, show_progress=False)
            results["qat_train_s"] = time.perf_counter() - started
            results["qat_metrics"] = trained.last_metrics
            qat_checkpoint = trained.last_checkpoint
        started = time.perf_counter()
        bundle = export_checkpoint(qat_checkpoint, args.work / "qat", precisions=["fp32", *INT8], overwrite=True,
                                   verify=True)
        results["variants"]["qat"] = {**variant_row(bundle, args.iters), "export_s": time.perf_counter() - started,
                                      "checkpoint": str(qat_checkpoint)}
        save()
    if "ptq_full" not in args.skip:
        started = time.perf_counter()
        bundle = export_checkpoint(args.checkpoint, args.work / "ptq_full", precisions=["fp32", *INT8],
                                   overwrite=True, verify=True, max_map_drop=None)
        results["variants"]["ptq_full"] = {**variant_row(bundle, args.iters),
                                           "export_s": time.perf_counter() - started}
        save()
    if "ptq_fallback" not in args.skip:
        results["variants"]["ptq_fallback"] = fallback_row(args.checkpoint, args.work, args.budget, args.iters)
        save()
    for name, row in results["variants"].items():
        for precision in INT8:
            if "refused" in row[precision]:
                print(f"{name:13} {precision:9} refused: {row[precision]['refused']}")
            else:
                entry = row[precision]
                print_rows(name, {precision: entry},
                           {precision: f"{entry['speedup_b1']:.2f}x b1  {entry['speedup_b32']:.2f}x b32"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
