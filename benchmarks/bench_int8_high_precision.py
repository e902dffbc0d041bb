"""INT8 for TensorRT: float32 or float16 around the INT8 layers? modelopt's ONNX quantizer writes the layers it does
not quantize in ``high_precision_dtype``. FP16 there would run faster on TensorRT, but the model edgereid deploys is
the model it verifies in ONNX Runtime: this quantizes one FP32 model both ways on the export's own calibration set
and compares the two graphs' embeddings in ONNX Runtime (CPU) on held-back calibration-policy images.

    EDGEREID_DATA=../shared/data python benchmarks/bench_int8_high_precision.py runs/bench-qat/ptq_full \\
        --out benchmarks/results/int8-high-precision.json
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edgereid.atomic import atomic_write_text
from edgereid.bundle_format import load_bundle
from edgereid.export.calibration import load_calibration_policy
from edgereid.export.common import INPUT_NAME, OUTPUT_NAME, _cosine, _session
from edgereid.export.precision import DEFAULT_CALIBRATION_METHOD, prepare_calibration
from edgereid.runtime.environment import describe_environment
from edgereid.training.checkpoint import load_checkpoint

COMPARED_IMAGES = 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="a bundle whose FP32 model is quantized both ways")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import onnx
    from modelopt.onnx.quantization import quantize

    bundle = load_bundle(args.bundle)
    checkpoint = load_checkpoint(bundle.manifest["source"]["checkpoint"])
    calibration, _ = prepare_calibration(checkpoint.recipe.data, load_calibration_policy())
    # The last images are compared, the others calibrate: no image does both.
    calibrating, compared = calibration.images[:-COMPARED_IMAGES], calibration.images[-COMPARED_IMAGES:]
    results: dict = {"kind": "edgereid.bench_int8_high_precision", "command": " ".join(["python", *sys.argv]),
                     "bundle": str(args.bundle), "calibration_images": len(calibrating),
                     "compared_images": len(compared), "environment": describe_environment(), "models": {}}
    embeddings = {"fp32_model": _session(bundle.model_path("fp32")).run([OUTPUT_NAME], {INPUT_NAME: compared})[0]}
    with tempfile.TemporaryDirectory(prefix="edgereid-hp-") as scratch:
        for dtype in ("fp32", "fp16"):
            # modelopt rewrites its input and writes beside it: each run gets its own copy, outside the bundle.
            source = Path(scratch) / f"fp32-for-{dtype}.onnx"
            shutil.copyfile(bundle.model_path("fp32"), source)
            target = Path(scratch) / f"int8-{dtype}.onnx"
            quantize(str(source), quantize_mode="int8", calibration_data=calibrating,
                     calibration_method=DEFAULT_CALIBRATION_METHOD, calibration_eps=["cpu"],
                     high_precision_dtype=dtype, output_path=str(target), log_level="ERROR")
            session = _session(target)
            started = time.perf_counter()
            name = f"int8_{dtype}_layers"
            embeddings[name] = session.run([OUTPUT_NAME], {INPUT_NAME: compared})[0].astype(np.float32)
            elapsed = time.perf_counter() - started
            graph = onnx.load(str(target)).graph
            results["models"][name] = {
                "ops": dict(collections.Counter(node.op_type for node in graph.node)),
                "ms_per_image_ort_cpu": round(elapsed * 1000 / len(compared), 2),
                "cosine_to_fp32_model": _stats(_cosine(embeddings[name], embeddings["fp32_model"])),
            }
    results["cosine_fp16_layers_to_fp32_layers"] = _stats(
        _cosine(embeddings["int8_fp16_layers"], embeddings["int8_fp32_layers"])
    )
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(json.dumps({key: value for key, value in results.items() if key != "environment"}, indent=2))
    return 0


def _stats(cosines: np.ndarray) -> dict[str, float]:
    return {"min": round(float(cosines.min()), 4), "mean": round(float(cosines.mean()), 4)}


if __name__ == "__main__":
    raise SystemExit(main())
