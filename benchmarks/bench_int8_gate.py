"""INT8 gate: how well the accuracy-aware search's held-out drop predicts the test split's, and how often what the
search accepts then passes the verification.

Run from the repository root, on trained runs (a run directory or checkpoint each), e.g. the synthetic ones:

    EDGEREID_DATA=/work/scratch2 edgereid train quickstart
    python benchmarks/bench_int8_gate.py runs/quickstart runs/quickstart_cnn32 ... --work-dir /work/scratch2/gate

Two parts per run, each INT8 target (``int8``: the TensorRT scheme run on ONNX Runtime, ``int8_cpu``) and each
calibration seed (``--seeds``; the policy's 512 train images, entropy):

1. **pairs** — the layers are ranked by sensitivity as the search ranks them, and the model is quantized with the
   0, 1, 2, 4, 8, … most sensitive layers kept in float (up to every layer). Each candidate is scored on the search's
   held-out protocol (train images the calibration did not use) and on the test query/gallery, both against the FP32
   ONNX model with the recipe's flip test: the drop in mAP points (positive: INT8 worse) on each, and the test drop's
   95 % paired bootstrap interval. The gap test − held-out is what the margin must cover.
2. **gate** — the export as a user runs it, ``edgereid export RUN --out B --int8 --target both`` (the default budget,
   0.5 mAP points, and the shipped margin; in a subprocess, with ``--calibration-seed`` where the seed is not the
   policy's), and the same export in-process with a margin of 0 (the search's acceptance rule before the margin).
   For each: the held-out drop the search accepted, the layers kept in float, the verification's test drop with
   its interval, and pass/fail.

Results go to ``--out`` (default ``benchmarks/results/int8-gate-margin.json``), written after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edgereid.atomic import atomic_write_text
from edgereid.runtime.environment import describe_environment

PRECISIONS = ("int8", "int8_cpu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or checkpoints")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "int8-gate-margin.json")
    parser.add_argument("--work-dir", type=Path, required=True, help="bundles and the calibration cache go here")
    parser.add_argument("--seeds", default="0", help="calibration seeds, comma-separated (the policy's is 0)")
    parser.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    parser.add_argument("--network", help="which network of a mutual-learning checkpoint (default: its student)")
    parser.add_argument("--skip-pairs", action="store_true", help="the gate part only")
    parser.add_argument("--skip-gate", action="store_true", help="the pairs part only")
    parser.add_argument("--other-methods", default="max",
                        help="calibration methods also scored fully quantized in the pairs part (comma-separated; "
                             "the search itself uses entropy, the export's default)")
    return parser.parse_args()


class TestScorer:
    """mAP on the recipe's test query/gallery with ONNX Runtime, against the FP32 ONNX model."""

    def __init__(self, data: Any, fp32_path: Path, flip: bool) -> None:
        from edgereid.training.data import decode_split, prepare_dataset

        dataset = prepare_dataset(data)
        self.query = decode_split(list(dataset.query), data, "query")
        self.gallery = decode_split(list(dataset.gallery), data, "gallery")
        self.mean, self.std, self.flip = data.mean, data.std, flip
        self.reference = self.rank(fp32_path)

    def rank(self, model_path: Path) -> Any:
        from edgereid.evaluation.features import evaluate_features
        from edgereid.export.bundle import _session, embed_onnx

        session = _session(model_path)
        query = embed_onnx(session, self.query.images, self.mean, self.std, flip=self.flip)
        gallery = embed_onnx(session, self.gallery.images, self.mean, self.std, flip=self.flip)
        return evaluate_features(query, gallery, self.query.records, self.gallery.records)

    def drop(self, model_path: Path) -> dict[str, Any]:
        from edgereid.evaluation.bootstrap import paired_bootstrap_delta

        scored = self.rank(model_path)
        interval = paired_bootstrap_delta(self.reference.per_query_ap, scored.per_query_ap)
        return {"mAP": float(scored.mAP), "drop_points": -interval.delta_points,
                "drop_ci95_points": [-interval.high_points, -interval.low_points]}


def counts_to_try(total: int) -> list[int]:
    counts, count = [0], 1
    while count < total:
        counts.append(count)
        count *= 2
    return counts + [total]


def pairs(checkpoint: Path, work: Path, seed: int, other_methods: list[str], network: str | None) -> dict[str, Any]:
    """Held-out and test drops of candidates with 0, 1, 2, 4, … of the most sensitive layers in float (entropy
    calibration), and of the fully quantized model calibrated by each of ``other_methods``."""
    from edgereid.export import export_checkpoint
    from edgereid.export.calibration import load_calibration_policy
    from edgereid.export.precision import prepare_calibration
    from edgereid.export.sensitivity import HeldOutScorer, Int8Candidates
    from edgereid.training.checkpoint import load_checkpoint

    source = load_checkpoint(checkpoint)
    data, flip = source.recipe.data, source.recipe.train.flip_test
    bundle = export_checkpoint(checkpoint, work / "fp32", overwrite=True, network=network)
    fp32_path = bundle.model_path("fp32")
    policy = load_calibration_policy().model_copy(update={"seed": seed})
    calibration, train = prepare_calibration(data, policy, cache_dir=work.parent / "calibration-cache")
    heldout = HeldOutScorer(train, calibration, data, fp32_path, flip=flip)
    test = TestScorer(data, fp32_path, flip)
    result: dict[str, Any] = {
        "heldout": heldout.info(),
        "test": {"num_query": len(test.query.records), "num_valid_queries": test.reference.num_valid_queries,
                 "num_gallery": len(test.gallery.records), "fp32_mAP": float(test.reference.mAP)},
        "targets": {},
    }
    for precision in PRECISIONS:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edgereid-gate-") as scratch:
            candidates = Int8Candidates(precision, fp32_path, calibration, Path(scratch), method="entropy")
            ranking = candidates.ranking()
            target = Path(scratch) / "candidate.onnx"
            rows = []
            for count in counts_to_try(len(ranking)):
                candidates.quantize(target, [layer.node for layer in ranking[:count]])
                _, heldout_drop = heldout.drop_points(target)
                rows.append({"layers_in_float": count, "of": len(ranking), "heldout_drop_points": heldout_drop,
                             **{f"test_{key}": value for key, value in test.drop(target).items()}})
                print(f"{checkpoint} seed {seed} {precision} {count:>3}/{len(ranking)} in float: held-out "
                      f"{heldout_drop:+.2f}, test {rows[-1]['test_drop_points']:+.2f}", flush=True)
            methods = {}
            for method in other_methods:
                Int8Candidates(precision, fp32_path, calibration, Path(scratch), method=method).quantize(target)
                _, heldout_drop = heldout.drop_points(target)
                methods[method] = {"layers_in_float": 0, "heldout_drop_points": heldout_drop,
                                   **{f"test_{key}": value for key, value in test.drop(target).items()}}
                print(f"{checkpoint} seed {seed} {precision} {method}: held-out {heldout_drop:+.2f}, test "
                      f"{methods[method]['test_drop_points']:+.2f}", flush=True)
        result["targets"][precision] = {"candidates": rows, "fully_quantized_other_methods": methods,
                                        "seconds": round(time.perf_counter() - started, 1)}
    return result


def gate(checkpoint: Path, work: Path, seed: int, network: str | None) -> dict[str, Any]:
    """The default export (CLI, shipped margin) and the same with a margin of 0 (in-process)."""
    from edgereid.errors import EdgeReIDError
    from edgereid.export import export_checkpoint
    from edgereid.export.calibration import load_calibration_policy

    cache = work.parent / "calibration-cache"
    default_seed = load_calibration_policy().seed
    out = work / "bundle-default"
    command = [sys.executable, "-m", "edgereid", "export", str(checkpoint), "--out", str(out), "--int8",
               "--target", "both", "--overwrite", "--calibration-cache", str(cache)]
    if seed != default_seed:
        command += ["--calibration-seed", str(seed)]
    if network is not None:
        command += ["--network", network]
    started = time.perf_counter()
    completed = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO_ROOT)
    runs: dict[str, Any] = {
        "default_margin": {
            "command": " ".join(["edgereid", *command[3:]]),
            "exit_code": completed.returncode,
            "seconds": round(time.perf_counter() - started, 1),
            "output_tail": completed.stdout[-1500:] + completed.stderr[-1500:],
        }
    }
    if (out / "manifest.json").is_file() and completed.returncode in (0, 1):
        runs["default_margin"]["targets"] = summarise(json.loads((out / "manifest.json").read_text()))
    started = time.perf_counter()
    try:
        bundle = export_checkpoint(checkpoint, work / "bundle-margin0", precisions=PRECISIONS, overwrite=True,
                                   verify=True, calibration_cache_dir=cache, calibration_seed=seed,
                                   heldout_margin=0.0, network=network)
        runs["margin_0"] = {"targets": summarise(bundle.manifest)}
    except EdgeReIDError as error:
        runs["margin_0"] = {"error": str(error)}
    runs["margin_0"]["seconds"] = round(time.perf_counter() - started, 1)
    runs["margin_0"]["call"] = (f"export_checkpoint({checkpoint}, …, precisions={PRECISIONS}, verify=True, "
                                f"calibration_seed={seed}, heldout_margin=0.0)")
    return runs


def summarise(manifest: dict[str, Any]) -> dict[str, Any]:
    verification = manifest["verification"]
    targets = {}
    for precision in PRECISIONS:
        entry, accuracy = manifest["models"][precision], manifest["models"][precision]["accuracy"]
        score = verification["precisions"][precision]
        low, high = score["delta_mAP_ci95_points"]
        targets[precision] = {
            "budget_points": accuracy["max_mAP_drop_points"],
            "heldout_margin_points": accuracy.get("heldout_margin_points"),
            "heldout_drop_before_points": accuracy["drop_points_before"],
            "heldout_drop_accepted_points": accuracy["drop_points_after"],
            "layers_in_float": len(accuracy["excluded_layers"]),
            "steps": [(step["layers_in_float"], round(step["drop_points"], 3)) for step in accuracy.get("steps", [])],
            "test_drop_points": -score["delta_mAP_points"],
            "test_drop_ci95_points": [-high, -low],
            "test_num_valid_queries": verification["num_valid_queries"],
            "cosine_min": score["cosine_min"],
            "passed": score["passed"],
            "file_bytes": entry["bytes"],
        }
    return targets


def main() -> None:
    args = parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    previous = json.loads(args.out.read_text()) if args.append and args.out.is_file() else None
    result: dict[str, Any] = previous or {
        "kind": "edgereid.bench.int8_gate",
        "machine": describe_environment(),
        "data_env": os.environ.get("EDGEREID_DATA"),
        "commands": [],
        "runs": [],
    }
    result["commands"].append("python benchmarks/bench_int8_gate.py " + " ".join(sys.argv[1:]))
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    from edgereid.training.checkpoint import load_checkpoint

    for run in args.runs:
        checkpoint = load_checkpoint(run)
        network, model, _ = checkpoint.network(args.network)
        for seed in seeds:
            work = args.work_dir / f"{checkpoint.recipe.name}-{network}-seed{seed}"
            work.mkdir(parents=True, exist_ok=True)
            entry: dict[str, Any] = {
                "run": str(run), "recipe": checkpoint.recipe.name, "network": network,
                "backbone": model.backbone.name,
                "train_seed": checkpoint.recipe.seed, "calibration_seed": seed,
                "fp32_test_mAP_checkpoint": checkpoint.metrics.get("mAP") if checkpoint.metrics else None,
                "load_average_before": [round(x, 2) for x in os.getloadavg()],
            }
            if not args.skip_pairs:
                entry["pairs"] = pairs(checkpoint.path, work, seed,
                                       [method for method in args.other_methods.split(",") if method], args.network)
            if not args.skip_gate:
                entry["gate"] = gate(checkpoint.path, work, seed, args.network)
            entry["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            result["runs"].append(entry)
            result["summary"] = summary(result["runs"])
            atomic_write_text(args.out, json.dumps(result, indent=2, default=str) + "\n")
            print(json.dumps(result["summary"], indent=2), flush=True)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The gap test − held-out over every candidate with a drop worth measuring, and the gate's pass counts."""
    gaps = [row["test_drop_points"] - row["heldout_drop_points"]
            for run in runs if "pairs" in run for target in run["pairs"]["targets"].values()
            for row in target["candidates"]]
    out: dict[str, Any] = {"candidates": len(gaps)}
    if gaps:
        values = np.array(gaps)
        out["gap_test_minus_heldout_points"] = {
            "mean": float(values.mean()), "median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "max": float(values.max()), "min": float(values.min()),
        }
    for name in ("default_margin", "margin_0"):
        verdicts = [target["passed"] for run in runs for target in run.get("gate", {}).get(name, {}).get(
            "targets", {}).values()]
        failed_exports = sum(1 for run in runs if "error" in run.get("gate", {}).get(name, {}))
        out[f"gate_{name}"] = {"passed": sum(map(bool, verdicts)), "verified": len(verdicts),
                               "exports_refused": failed_exports}
    return out


if __name__ == "__main__":
    main()
