"""What the Embedder's preprocessing costs next to the model: decoding JPEGs, resizing to the input size,
normalising, (mirroring) and L2 normalisation, against ONNX Runtime's inference time, at batch 1, 8 and 32 on CPU.
The issue's target: preprocessing at most 20 % of inference.

Run from the repository root:

    python benchmarks/bench_embedder.py

It exports an untrained ResNet-18 BoT (IBN-a off, last stride 1, 512-d BN-neck) at 256x128 to a bundle (FP32,
BN folded: what an edge deployment runs) and writes Market-sized JPEG crops (128x64, the synthetic generator's
people at quality 90) that the Embedder upsamples to 256x128 exactly as training does. For each batch size the
same images go through ``Embedder.embed_paths`` several times; ``EmbedTiming`` splits each call's wall time into
time inside ``Runner.infer`` and the rest (the preprocessing the caller waits for: decoding overlaps inference in a
thread pool, so only what is not hidden counts). The pieces are also timed alone, without overlap. Results go to
``benchmarks/results/embedder.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edgereid.data.images import decode_image, normalize_images
from edgereid.export.bundle import ExportBundle
from edgereid.runtime import Embedder

SIZE = (256, 128)
SOURCE_SIZE = (128, 64)
TARGET_RATIO = 0.20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "embedder.json")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--images", type=int, default=64, help="images per embed_paths call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (median kept)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--work-dir", type=Path, help="keep the bundle and images here (reused when present)")
    return parser.parse_args()


def build_bundle(work: Path) -> ExportBundle:
    """An untrained ResNet-18 BoT exported at 256x128 (weights do not change the cost of inference)."""
    from untrained import untrained_resnet18_checkpoint

    from edgereid.export import export_checkpoint, load_bundle

    bundle_dir = work / "bundle"
    if (bundle_dir / "manifest.json").is_file():
        return load_bundle(bundle_dir)
    checkpoint = untrained_resnet18_checkpoint(work, "bench-embedder-r18", work / "images", SIZE)
    return export_checkpoint(checkpoint, bundle_dir, precisions=("fp32",), verify=False)


def make_images(work: Path, count: int) -> list[Path]:
    from edgereid.data.synthetic import generate_synthetic

    root = work / "images"
    if not root.is_dir():
        generate_synthetic(root, num_ids=20, num_cameras=4, seed=0, size=SOURCE_SIZE, images_per_id_per_camera=4)
    paths = sorted(root.rglob("*.jpg"))
    if len(paths) < count:
        raise SystemExit(f"only {len(paths)} synthetic images under {root}; ask for --images {len(paths)} or fewer")
    return paths[:count]


def time_embedder(bundle: ExportBundle, paths: list[Path], batch: int, flip: bool, repeats: int,
                  threads: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {} if threads is None else {"threads": threads}
    with Embedder(bundle, batch_size=batch, flip=flip, **options) as embedder:
        embedder.embed_paths(paths[: max(batch, 8)])  # warm-up: ONNX Runtime's first runs allocate its arena
        runs = []
        for _ in range(repeats):
            embedder.embed_paths(paths)
            timing = embedder.last_timing
            assert timing is not None
            runs.append(
                {"total_s": timing.total_s, "inference_s": timing.inference_s, "preprocess_s": timing.preprocess_s}
            )
    batches = -(-len(paths) // batch)
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {
        "batch": batch,
        "flip": flip,
        "images": len(paths),
        "runs": [{key: round(value, 5) for key, value in run.items()} for run in runs],
        "inference_ms_per_batch": round(median["inference_s"] / batches * 1e3, 3),
        "preprocess_ms_per_batch": round(median["preprocess_s"] / batches * 1e3, 3),
        "images_per_s": round(len(paths) / median["total_s"], 2),
        "preprocess_over_inference": round(median["preprocess_s"] / median["inference_s"], 4),
    }


def time_pieces(bundle: ExportBundle, paths: list[Path], repeats: int) -> dict[str, Any]:
    """Each preprocessing step alone, on one thread, per image: where the time would go without overlap."""
    spec = bundle.manifest["input"]
    decode = []
    for _ in range(repeats):
        started = time.perf_counter()
        images = np.stack([decode_image(path, SIZE) for path in paths])
        decode.append((time.perf_counter() - started) / len(paths))
    normalize = []
    for _ in range(repeats):
        started = time.perf_counter()
        inputs = normalize_images(images, spec["mean"], spec["std"])
        normalize.append((time.perf_counter() - started) / len(paths))
    mirror = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.ascontiguousarray(inputs[..., ::-1])
        mirror.append((time.perf_counter() - started) / len(paths))
    return {
        "decode_and_resize_ms_per_image": round(statistics.median(decode) * 1e3, 4),
        "normalize_ms_per_image": round(statistics.median(normalize) * 1e3, 4),
        "mirror_ms_per_image": round(statistics.median(mirror) * 1e3, 4),
    }


def machine(threads: int | None) -> dict[str, Any]:
    import onnxruntime
    import PIL

    from edgereid.runtime.environment import describe_environment

    return {
        "cpu": describe_environment()["cpu"]["model"],
        "cores_available": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_threads": threads,
        "platform": platform.platform(),
        # The machine is shared: a load above the core count means the numbers ran beside other work.
        "load_average_1_5_15_min_at_end": [round(value, 2) for value in os.getloadavg()],
    }


def main() -> None:
    args = parse_args()
    batches = [int(value) for value in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-embedder-") as temporary:
        work = args.work_dir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        paths = make_images(work, args.images)
        bundle = build_bundle(work)
        results = [
            time_embedder(bundle, paths, batch, flip, args.repeats, args.threads)
            for flip in (False, True)
            for batch in batches
        ]
        pieces = time_pieces(bundle, paths, args.repeats)
    worst = max(result["preprocess_over_inference"] for result in results)
    report = {
        "command": shlex.join(["python", "benchmarks/bench_embedder.py", *sys.argv[1:]]),
        "machine": machine(args.threads),
        "model": {"backbone": "resnet18", "input": list(SIZE), "feature_dim": 512, "precision": "fp32",
                  "backend": "onnxruntime CPUExecutionProvider", "weights": "untrained (seed 0)"},
        "images": {"source_size": list(SOURCE_SIZE), "format": "JPEG quality 90 (edgereid.data.synthetic)",
                   "count": len(paths)},
        "results": results,
        "pieces_single_thread": pieces,
        "target_preprocess_over_inference": TARGET_RATIO,
        "worst_preprocess_over_inference": worst,
        "met": worst <= TARGET_RATIO,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for result in results:
        print(
            f"batch {result['batch']:>2} flip {result['flip']!s:5}: inference {result['inference_ms_per_batch']:8.2f}"
            f" ms/batch, preprocessing {result['preprocess_ms_per_batch']:7.2f} ms/batch "
            f"({result['preprocess_over_inference']:.1%}), {result['images_per_s']:.1f} images/s"
        )
    print(f"single-thread pieces per image: {pieces}")
    print(f"worst preprocessing/inference {worst:.1%} (target <= {TARGET_RATIO:.0%}); written to {args.out}")


if __name__ == "__main__":
    main()
