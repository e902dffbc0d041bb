"""How fast the synthetic data set is made, and how hard it is: a small CNN against raw pixels and colour histograms.

Run from the repository root (needs the ``[train]`` extra for torch):

    python benchmarks/bench_synthetic.py

It (1) times the generation of about 1,000 images on one core (a child process pinned to one CPU with one
thread), (2) generates the default set, trains a 4-block CNN with cross-entropy and batch-hard triplet loss on its
train split for a fixed number of iterations on ``--threads`` cores, and reports query/gallery mAP and Rank-1 under
the Market-1501 protocol next to the same numbers for raw pixels, colour histograms and random features. The
results go to ``benchmarks/results/synthetic.json``.

The CNN sees the images downscaled to ``--input-size`` (64 x 32) with ``--width`` 16 channels in its first block,
so that 1,200 iterations take about five minutes on two cores; at the full 128 x 64 size with 32 channels one
iteration took about 7 s on the same two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent


from edgereid.data.synthetic import SPLIT_DIRS, generate_synthetic

MARKET_NAME = re.compile(r"^(?P<pid>\d{4})_c(?P<cam>\d)s\d_\d{6}_\d{2}\.jpg$")
# 56 identities seen by 2-4 of 4 cameras, 6 images each, come to about 1,000 images.
SPEED_NUM_IDS = 56
SPEED_REPEATS = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-ids", type=int, default=100)
    parser.add_argument("--num-cameras", type=int, default=4)
    parser.add_argument("--images-per-id-per-camera", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1200, help="training iterations of P x K images")
    parser.add_argument(
        "--input-size", type=int, nargs=2, default=(64, 32), metavar=("H", "W"),
        help="the CNN's input (height, width); images are downscaled to it (baselines use the full size)",
    )  # fmt: skip
    parser.add_argument("--width", type=int, default=16, help="channels of the CNN's first block (doubling per block)")
    parser.add_argument("--ids-per-batch", type=int, default=16)
    parser.add_argument("--images-per-id", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--skip-speed", action="store_true", help="skip the one-core generation timing")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "synthetic.json")
    parser.add_argument("--speed-child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


# --- generation speed -------------------------------------------------------------------------------------------


def speed_child(out_dir: Path) -> None:
    """Runs inside the pinned child: generate about 1,000 images a few times and print the timings as JSON."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    runs = []
    for repeat in range(SPEED_REPEATS):
        summary = generate_synthetic(out_dir, num_ids=SPEED_NUM_IDS, seed=repeat, overwrite=True)
        runs.append({"images": summary.total_images, "elapsed_s": round(summary.elapsed_s, 3)})
    print(json.dumps(runs))


def measure_speed(work_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, str(Path(__file__).resolve()), "--speed-child", str(work_dir / "speed")]
    completed = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    runs = json.loads(completed.stdout.strip().splitlines()[-1])
    rates = sorted(run["images"] / run["elapsed_s"] for run in runs)
    median_rate = rates[len(rates) // 2]
    return {
        "runs": runs,
        "cores": 1,
        "median_images_per_s": round(median_rate, 1),
        "seconds_per_1000_images": round(1000 / median_rate, 2),
    }


# --- data -------------------------------------------------------------------------------------------------------


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8, identities and 0-based cameras of one split, in file-name order."""
    images, pids, camids = [], [], []
    for path in sorted((root / SPLIT_DIRS[split]).iterdir()):
        match = MARKET_NAME.match(path.name)
        if match is None:
            raise ValueError(f"'{path}' is not a Market-1501 file name")
        images.append(np.asarray(Image.open(path).convert("RGB")))
        pids.append(int(match["pid"]))
        camids.append(int(match["cam"]) - 1)
    return np.stack(images), np.array(pids), np.array(camids)


# --- baselines --------------------------------------------------------------------------------------------------


def raw_pixel_features(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True).clip(1e-8)


def colour_histogram_features(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Joint RGB histograms of the top, middle and bottom thirds, as Hellinger-normalised vectors."""
    quantised = (images.astype(np.int64) * bins) // 256
    codes = quantised[..., 0] * bins * bins + quantised[..., 1] * bins + quantised[..., 2]
    height = images.shape[1]
    stripes = []
    for top, bottom in ((0, height // 3), (height // 3, 2 * height // 3), (2 * height // 3, height)):
        part = codes[:, top:bottom].reshape(len(images), -1)
        histogram = np.stack([np.bincount(row, minlength=bins**3) for row in part]).astype(np.float32)
        stripes.append(np.sqrt(histogram / histogram.sum(axis=1, keepdims=True)))
    features = np.concatenate(stripes, axis=1)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def rank_metrics(query: np.ndarray, gallery: np.ndarray, meta: dict[str, np.ndarray]) -> dict[str, float]:
    """mAP and Rank-1 (in %) of L2-normalised features under the Market-1501 protocol."""
    distances = 2.0 - 2.0 * query @ gallery.T
    order = np.argsort(distances, axis=1, kind="stable")
    average_precisions, top1 = [], []
    for row, ranked in enumerate(order):
        same_pid = meta["g_pids"][ranked] == meta["q_pids"][row]
        keep = ~(same_pid & (meta["g_camids"][ranked] == meta["q_camids"][row]))
        matches = same_pid[keep]
        if not matches.any():
            continue
        precision = np.cumsum(matches) / np.arange(1, len(matches) + 1)
        average_precisions.append(float((precision * matches).sum() / matches.sum()))
        top1.append(float(matches[0]))
    return {"mAP": round(100 * float(np.mean(average_precisions)), 2), "rank1": round(100 * float(np.mean(top1)), 2)}


# --- the small CNN ----------------------------------------------------------------------------------------------


def train_and_embed(
    train: tuple[np.ndarray, np.ndarray, np.ndarray], test_images: list[np.ndarray], args: argparse.Namespace
) -> tuple[list[np.ndarray], dict[str, Any]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    images, pids, _ = train
    labels = np.unique(pids, return_inverse=True)[1]
    num_classes = int(labels.max()) + 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    input_size = (args.input_size[0], args.input_size[1])

    def to_tensor(batch: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
        if tuple(pixels.shape[-2:]) != input_size:
            pixels = F.interpolate(pixels, size=input_size, mode="bilinear", antialias=True, align_corners=False)
        return (pixels - mean) / std

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )  # fmt: skip

    class SmallReIDNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = args.width
            self.backbone = nn.Sequential(block(3, c), block(c, 2 * c), block(2 * c, 4 * c), block(4 * c, 8 * c))
            self.embed = nn.Linear(8 * c, 128)
            self.neck = nn.BatchNorm1d(128)
            self.classifier = nn.Linear(128, num_classes, bias=False)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = self.backbone(x).mean(dim=(2, 3))
            embedding = self.embed(pooled)
            return embedding, self.classifier(self.neck(embedding))

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.neck(self.embed(self.backbone(x).mean(dim=(2, 3))))

    def batch_hard_triplet(embedding: torch.Tensor, target: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
        distances = torch.cdist(embedding, embedding)
        same = target[:, None] == target[None, :]
        hardest_positive = (distances * same).max(dim=1).values
        hardest_negative = distances.masked_fill(same, float("inf")).min(dim=1).values
        return F.relu(hardest_positive - hardest_negative + margin).mean()

    def augment(batch: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(batch)) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        height, width = batch.shape[2:]
        pad = max(1, round(width * 6 / 64))
        padded = F.pad(batch, (pad, pad, pad, pad), mode="replicate")
        crops = []
        for index, (dy, dx) in enumerate(torch.randint(0, 2 * pad + 1, (len(batch), 2)).tolist()):
            crops.append(padded[index, :, dy : dy + height, dx : dx + width])
        batch = torch.stack(crops)
        # Random erasing: the standard ReID augmentation against occlusion.
        for index in range(len(batch)):
            if rng.random() < 0.5:
                eh, ew = int(rng.integers(height // 5, height // 2)), int(rng.integers(width // 5, width // 2))
                y, x = int(rng.integers(0, height - eh)), int(rng.integers(0, width - ew))
                batch[index, :, y : y + eh, x : x + ew] = torch.randn(3, eh, ew) * 0.5
        return batch

    # Downscaled and normalised once; a batch is then an index into this tensor.
    inputs = torch.cat([to_tensor(images[start : start + 256]) for start in range(0, len(images), 256)])
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    model = SmallReIDNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=args.iterations, pct_start=0.1)
    started = time.perf_counter()
    model.train()
    for iteration in range(args.iterations):
        chosen = rng.choice(num_classes, size=min(args.ids_per_batch, num_classes), replace=False)
        indices = np.concatenate([rng.choice(by_class[c], size=args.images_per_id, replace=True) for c in chosen])
        batch = augment(inputs[torch.from_numpy(indices)])
        target = torch.from_numpy(labels[indices])
        embedding, logits = model(batch)
        loss = F.cross_entropy(logits, target, label_smoothing=0.1) + batch_hard_triplet(embedding, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if iteration % 200 == 0 or iteration == args.iterations - 1:
            print(f"  iteration {iteration:5d}  loss {loss.item():.3f}  {time.perf_counter() - started:6.1f} s", flush=True)
    train_seconds = time.perf_counter() - started

    model.eval()
    outputs = []
    with torch.no_grad():
        for split_images in test_images:
            chunks = []
            for start in range(0, len(split_images), 256):
                batch = to_tensor(split_images[start : start + 256])
                chunks.append(model.features(batch) + model.features(batch.flip(3)))
            features = torch.cat(chunks)
            outputs.append(F.normalize(features, dim=1).numpy())
    info = {
        "iterations": args.iterations,
        "batch": f"{args.ids_per_batch} ids x {args.images_per_id} images",
        "input_size": list(input_size),
        "width": args.width,
        "train_seconds": round(train_seconds, 1),
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return outputs, info


# --- main -------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores_available": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "platform": platform.platform(),
    }


def main() -> None:
    args = parse_args()
    if args.speed_child is not None:
        speed_child(args.speed_child)
        return
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_synthetic.py " + shlex.join(sys.argv[1:]),
        "machine": machine_info(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-synthetic-") as scratch:
        work_dir = Path(scratch)
        if not args.skip_speed:
            print("timing generation on one core ...", flush=True)
            results["generation_one_core"] = measure_speed(work_dir)
            print(f"  {results['generation_one_core']}", flush=True)

        summary = generate_synthetic(
            work_dir / "synthetic",
            num_ids=args.num_ids,
            num_cameras=args.num_cameras,
            seed=args.seed,
            images_per_id_per_camera=args.images_per_id_per_camera,
        )
        results["data_set"] = {
            "num_ids": args.num_ids,
            "num_cameras": args.num_cameras,
            "images_per_id_per_camera": args.images_per_id_per_camera,
            "seed": args.seed,
            "size": list(summary.size),
            "images": summary.images,
            "ids": summary.ids,
            "generation_seconds": round(summary.elapsed_s, 2),
        }
        print(f"generated {summary.total_images} images in {summary.elapsed_s:.1f} s: {summary.images}", flush=True)
        train = load_split(summary.out_dir, "train")
        query_images, q_pids, q_camids = load_split(summary.out_dir, "query")
        gallery_images, g_pids, g_camids = load_split(summary.out_dir, "gallery")

    meta = {"q_pids": q_pids, "g_pids": g_pids, "q_camids": q_camids, "g_camids": g_camids}
    random_features = np.random.default_rng(args.seed).normal(size=(len(q_pids) + len(g_pids), 128))
    random_features /= np.linalg.norm(random_features, axis=1, keepdims=True)
    results["baselines"] = {
        "random_features": rank_metrics(random_features[: len(q_pids)], random_features[len(q_pids) :], meta),
        "raw_pixels": rank_metrics(raw_pixel_features(query_images), raw_pixel_features(gallery_images), meta),
        "colour_histograms": rank_metrics(
            colour_histogram_features(query_images), colour_histogram_features(gallery_images), meta
        ),
    }
    print(f"baselines: {results['baselines']}", flush=True)

    print("training the small CNN ...", flush=True)
    (query_features, gallery_features), training = train_and_embed(train, [query_images, gallery_images], args)
    results["small_cnn"] = {**rank_metrics(query_features, gallery_features, meta), "training": training}
    print(f"small CNN: {results['small_cnn']}", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
