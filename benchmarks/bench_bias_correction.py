"""Does bias correction (:mod:`edgereid.export.bias_correction`) make fully post-training quantized INT8 better?

Takes a bundle exported with every layer INT8 (``edgereid export CK --out B --int8 --target both --max-map-drop
none``) and quantizes its FP32 model again both ways with the export's own settings — the same calibration set
(the default policy on the train split), calibration method and equalization default per target — once as the
export does and once with the biases corrected for the target's weight grid first; both bundles are verified on the
recipe's test split (ΔmAP to FP32 with its 95 % paired bootstrap interval over queries).

    EDGEREID_DATA=../shared/data python benchmarks/bench_bias_correction.py runs/bench-qat/ptq_full \\
        --out benchmarks/results/bias-correction-student_mobilenetv2_cpu.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edgereid.atomic import atomic_write_text
from edgereid.bundle_format import MANIFEST_NAME, load_bundle, manifest_text, model_file_name, sha256_file
from edgereid.export.bias_correction import FULL_RANGE_LEVELS, REDUCED_RANGE_LEVELS, correct_biases
from edgereid.export.bundle import verify_bundle
from edgereid.export.calibration import load_calibration_policy
from edgereid.export.equalize import EQUALIZE_BY_DEFAULT, equalize_activations
from edgereid.export.precision import (
    DEFAULT_CALIBRATION_METHOD,
    prepare_calibration,
    quantize_int8,
    quantize_int8_cpu,
)
from edgereid.runtime.environment import describe_environment
from edgereid.training.checkpoint import load_checkpoint

INT8 = ("int8", "int8_cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="a bundle with every layer INT8 (its FP32 model is re-quantized)")
    parser.add_argument("--work", type=Path, default=Path("bench-bias-correction-work"))
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def quantize(precision: str, fp32: Path, target: Path, calibration: Any, corrected: bool, scratch: Path) -> dict:
    """``precision``'s INT8 model of ``fp32`` as the export makes it, with the biases corrected first if asked."""
    source, record = fp32, {}
    if EQUALIZE_BY_DEFAULT[precision]:
        source = scratch / f"{precision}-equalized.onnx"
        record["equalization_pairs"] = len(equalize_activations(fp32, source, calibration.images)["pairs"])
    if corrected:
        levels = FULL_RANGE_LEVELS if precision == "int8" else REDUCED_RANGE_LEVELS
        corrected_source = scratch / f"{precision}-corrected.onnx"
        record["bias_correction"] = correct_biases(source, corrected_source, calibration.images, levels=levels)
        source = corrected_source
    started = time.perf_counter()
    if precision == "int8":
        quantize_int8(source, target, calibration, method=DEFAULT_CALIBRATION_METHOD)
    else:
        quantize_int8_cpu(source, target, calibration, method=DEFAULT_CALIBRATION_METHOD)
    record["quantize_s"] = round(time.perf_counter() - started, 1)
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reference = load_bundle(args.bundle)
    checkpoint = load_checkpoint(reference.manifest["source"]["checkpoint"])
    calibration, _ = prepare_calibration(checkpoint.recipe.data, load_calibration_policy())
    results: dict[str, Any] = {
        "kind": "edgereid.bench_bias_correction",
        "command": " ".join(["python", *sys.argv]),
        "bundle": str(args.bundle),
        "checkpoint": str(checkpoint.path),
        "calibration": {**calibration.record(), "method": DEFAULT_CALIBRATION_METHOD},
        "environment": describe_environment(),
        "variants": {},
    }
    for variant, corrected in (("as_exported", False), ("bias_corrected", True)):
        bundle_dir = args.work / variant
        shutil.rmtree(bundle_dir, ignore_errors=True)
        bundle_dir.mkdir(parents=True)
        fp32 = bundle_dir / model_file_name("fp32")
        shutil.copyfile(reference.model_path("fp32"), fp32)
        manifest = json.loads((args.bundle / MANIFEST_NAME).read_text())
        manifest["verification"], manifest["engines"] = None, {}
        steps = {}
        for precision in INT8:
            target = bundle_dir / model_file_name(precision)
            steps[precision] = quantize(precision, fp32, target, calibration, corrected, args.work)
            manifest["models"][precision] = {
                **manifest["models"][precision], "file": target.name, "sha256": sha256_file(target),
                "bytes": target.stat().st_size,
            }
        (bundle_dir / MANIFEST_NAME).write_text(manifest_text(manifest))
        verification = verify_bundle(bundle_dir, checkpoint=checkpoint.path, precisions=["fp32", *INT8])
        results["variants"][variant] = {
            "steps": steps,
            "num_query": verification["num_query"],
            "precisions": {
                precision: {key: verification["precisions"][precision][key]
                            for key in ("mAP", "rank1", "delta_mAP_points", "delta_mAP_ci95_points", "cosine_min")}
                for precision in ("fp32", *INT8)
            },
        }
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
        for precision in INT8:
            row = results["variants"][variant]["precisions"][precision]
            low, high = row["delta_mAP_ci95_points"]
            print(f"{variant:15s} {precision:9s} mAP {row['mAP']:.2%}  Δ {row['delta_mAP_points']:+.2f} "
                  f"[{low:+.2f}, {high:+.2f}]  cosine min {row['cosine_min']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
