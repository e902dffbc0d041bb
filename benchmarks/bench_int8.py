"""INT8 on the CPU: ONNX Runtime throughput of FP32 vs the ``cpu``-target INT8 model (per-channel QDQ) vs the
``trt``-target Q/DQ model, PyTorch eager beside them, and the time to calibrate 512 images.

Run from the repository root:

    python benchmarks/bench_int8.py

It builds an untrained ResNet-18 BoT (IBN-a off, last stride 1, 512-d BN-neck; untrained weights cost the same to
run, but their INT8 accuracy means nothing) at 256x128 and a synthetic data set of 100 identities x 4 cameras whose
train split (about 900 images, 128x64 JPEGs upsampled as training does) feeds the calibration. One export per
target calibrates it on the same 512 images (policy ``train-spread-v1``, entropy), each from a cold cache, and a
second CPU-target export with the warm calibration cache shows what the cache saves (wall and CPU seconds). Each
model then runs at batch 1 and 32 on ``--threads`` intra-op threads (default 2), median of ``--iters`` timed runs
after ``--warmup``. The machine's load average is recorded before and after: on a shared machine the absolute numbers
drop, ratios less so. Results go to ``benchmarks/results/int8.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edgereid.export import ExportBundle
from edgereid.export.bundle import ORT_DISABLED_OPTIMIZERS
from edgereid.runtime.environment import describe_environment

SIZE = (256, 128)
SOURCE_SIZE = (128, 64)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "int8.json")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="timed runs per model and batch (median kept)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--work-dir", type=Path, help="keep data and bundles here (data reused when present)")
    return parser.parse_args()


def make_checkpoint(work: Path) -> Path:
    from untrained import untrained_resnet18_checkpoint

    from edgereid.data.synthetic import generate_synthetic

    root = work / "synthetic"
    if not root.is_dir():
        generate_synthetic(root, num_ids=100, num_cameras=4, seed=0, size=SOURCE_SIZE)
    return untrained_resnet18_checkpoint(work, "bench-int8-r18", root, SIZE)


def export(checkpoint: Path, out: Path, cache: Path, images: int, precisions: tuple[str, ...]) -> dict[str, Any]:
    """One export's wall and CPU seconds (this process's CPU time: on a shared machine the wall time includes
    waiting for a core, the CPU time does not) and its manifest."""
    from edgereid.export import export_checkpoint

    started, cpu_started = time.perf_counter(), time.process_time()
    bundle = export_checkpoint(checkpoint, out, precisions=precisions, calibration_images=images,
                               calibration_cache_dir=cache, overwrite=True)
    return {"bundle": bundle, "wall_s": round(time.perf_counter() - started, 2),
            "cpu_s": round(time.process_time() - cpu_started, 2), "timings": bundle.manifest["timings"]}


def time_runs(run: Any, inputs: Any, warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        run(inputs)
    seconds = []
    for _ in range(iters):
        started = time.perf_counter()
        run(inputs)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return {"ms_per_batch": round(median * 1e3, 3), "images_per_s": round(len(inputs) / median, 2)}


def throughput(bundle: ExportBundle, checkpoint: Path, batches: list[int], threads: int, warmup: int,
               iters: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.evaluate import build_model

    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    for precision in ("fp32", "int8_cpu", "int8"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(bundle.model_path(precision)), options,
                                       providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
        results[f"onnxruntime_{precision}"] = {
            str(batch): time_runs(lambda x, s=session: s.run(None, {"images": x}),
                                  rng.standard_normal((batch, 3, *SIZE), dtype=np.float32), warmup, iters)
            for batch in batches
        }
    torch.set_num_threads(threads)
    model = build_model(load_checkpoint(checkpoint), "cpu")  # unfolded: what PyTorch eager runs in training
    with torch.inference_mode():
        results["torch_eager_fp32"] = {
            str(batch): time_runs(model, torch.randn(batch, 3, *SIZE), warmup, iters) for batch in batches
        }
    return results


def cosine_to_fp32(bundle: ExportBundle, images: np.ndarray) -> dict[str, float]:
    import onnxruntime as ort

    def embed(precision: str) -> np.ndarray:
        session = ort.InferenceSession(str(bundle.model_path(precision)), providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
        output = np.asarray(session.run(None, {"images": images})[0], dtype=np.float64)
        return output / np.linalg.norm(output, axis=1, keepdims=True)

    reference = embed("fp32")
    return {precision: round(float((embed(precision) * reference).sum(axis=1).min()), 5)
            for precision in ("int8_cpu", "int8")}


def main() -> None:
    args = parse_args()
    batches = [int(batch) for batch in args.batches.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgereid-bench-int8-") as scratch:
        work = args.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = make_checkpoint(work)
        cache = Path(scratch) / "calibration-cache"  # always cold for the first export
        # The TensorRT target alone, then the CPU target alone (cold cache both: the cache is cleared in between),
        # then the CPU target again with the cache warm.
        trt = export(checkpoint, work / "bundle-trt", cache, args.calibration_images, ("int8",))
        shutil.rmtree(cache)
        cold = export(checkpoint, work / "bundle", cache, args.calibration_images, ("int8_cpu",))
        warm = export(checkpoint, work / "bundle-again", cache, args.calibration_images, ("int8_cpu",))
        bundle = cold["bundle"]
        shutil.copyfile(trt["bundle"].model_path("int8"), bundle.path / "model.int8.onnx")
        bundle.manifest["models"]["int8"] = trt["bundle"].manifest["models"]["int8"]
        calibration = bundle.manifest["models"]["int8_cpu"]["calibration"]
        speed = throughput(bundle, checkpoint, batches, args.threads, args.warmup, args.iters)
        from edgereid.data.images import decode_records, normalize_images
        from edgereid.data.registry import load_dataset

        gallery = load_dataset(work / "synthetic").gallery[:64]
        images = normalize_images(decode_records(gallery, SIZE).images, bundle.manifest["input"]["mean"],
                                  bundle.manifest["input"]["std"])
        cosine = cosine_to_fp32(bundle, images)
    fp32 = speed["onnxruntime_fp32"]
    ratios = {
        f"{name}_over_onnxruntime_fp32": {batch: round(fp32[batch]["ms_per_batch"] / entry["ms_per_batch"], 3)
                                          for batch, entry in speed[name].items()}
        for name in ("onnxruntime_int8_cpu", "onnxruntime_int8", "torch_eager_fp32")
    }
    result = {
        "kind": "edgereid.bench.int8",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**describe_environment(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "model": "ResNet-18 BoT (untrained, IBN off, last stride 1, 512-d), 256x128, BN folded",
        "threads": args.threads,
        "calibration": {
            "images": calibration["images"],
            "policy": calibration["policy"],
            "method": calibration["method"],
            "export_trt_cold": {key: value for key, value in trt.items() if key != "bundle"},
            "export_cpu_cold": {key: value for key, value in cold.items() if key != "bundle"},
            "export_cpu_warm": {key: value for key, value in warm.items() if key != "bundle"},
            "warm_cache_hit": warm["bundle"].manifest["models"]["int8_cpu"]["calibration"]["cache_hit"],
            "warm_ranges_cache_hit": warm["bundle"].manifest["models"]["int8_cpu"]["calibration"]["ranges_cache_hit"],
        },
        "throughput": speed,
        "speedup": ratios,
        "cosine_min_to_fp32_on_64_images": cosine,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
