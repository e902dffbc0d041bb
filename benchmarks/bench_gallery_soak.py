"""Soak test of one gallery under concurrent writers: no item lost, no id reused, the index whole at the end.

Run from the repository root (base install only: numpy and faiss):

    nice python benchmarks/bench_gallery_soak.py                      # 8 writers for 120 s
    python benchmarks/bench_gallery_soak.py --duration 10 --out /tmp/soak.json

``--writers`` processes share one gallery directory for ``--duration`` seconds. Each repeats, at random, one of:

* add (half of the operations): 1 to ``--batch`` synthetic L2-normalised embeddings, drawn from a seed that names
  the writer and the operation (so the checks can draw them again), through ``update_gallery`` — the locked
  read-modify-write that ``edgereid gallery add`` and ``gallery remove`` use (``add_images``/``remove_items``);
* remove (a fifth): one of the writer's own live items, through ``update_gallery``;
* search (the rest): ``Gallery.load`` without the lock, as ``edgereid search`` reads, then a top-1 search for one of
  the writer's own live items, which must come back first (nobody else removes it).

Then the checks: every id handed out is unique; the gallery holds exactly the items added and not removed; it
loads; every item is the top-1 match of its own embedding; ``next_id`` is above every id. Counts, write latencies
(lock wait included), errors and the machine go to ``--out`` (default ``benchmarks/results/gallery-soak.json``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edgereid.runtime.environment import describe_environment
from edgereid.runtime.gallery import Gallery, GalleryItem, update_gallery

MODEL_ID = "soak"
ADD_SHARE, REMOVE_SHARE = 0.5, 0.2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds the writers run (default 120)")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writer processes (default 8)")
    parser.add_argument("--dim", type=int, default=64, help="embedding size (default 64)")
    parser.add_argument("--batch", type=int, default=8, help="most embeddings one add adds (default 8)")
    parser.add_argument("--index", default="Flat", help="faiss index factory string (default Flat)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "gallery-soak.json")
    return parser.parse_args(argv)


def embeddings(seed: int, writer: int, operation: int, count: int, dim: int) -> np.ndarray:
    """The embeddings of one add, drawn again by the checks from the same seed, writer and operation number."""
    vectors = np.random.default_rng([seed, writer, operation]).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write(path: str, writer: int, args: argparse.Namespace, start_at: float) -> dict[str, Any]:
    """One writer's loop; returns what it added (id → operation, row, batch size), removed and measured."""
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng([args.seed, writer, 1_000_000])
    time.sleep(max(start_at - time.time(), 0.0))
    deadline = start_at + args.duration
    added: dict[int, tuple[int, int, int]] = {}
    live: list[int] = []
    removed: list[int] = []
    write_seconds: list[float] = []
    counts = {"adds": 0, "items_added": 0, "removes": 0, "searches": 0, "search_misses": 0}
    errors: list[str] = []
    operation = 0
    while time.time() < deadline:
        operation += 1
        choice = rng.random()
        try:
            if choice < ADD_SHARE or not live:
                size = int(rng.integers(1, args.batch + 1))
                vectors = embeddings(args.seed, writer, operation, size, args.dim)
                metadata = [GalleryItem(extra={"writer": writer, "operation": operation, "row": row})
                            for row in range(size)]
                started = time.perf_counter()
                with update_gallery(path, MODEL_ID, dim=args.dim) as gallery:
                    ids = gallery.add(vectors, metadata)
                write_seconds.append(time.perf_counter() - started)
                for row, item_id in enumerate(ids.tolist()):
                    added[item_id] = (operation, row, size)
                    live.append(item_id)
                counts["adds"] += 1
                counts["items_added"] += size
            elif choice < ADD_SHARE + REMOVE_SHARE:
                victim = live.pop(int(rng.integers(len(live))))
                started = time.perf_counter()
                with update_gallery(path, MODEL_ID, dim=args.dim) as gallery:
                    gallery.remove([victim])
                write_seconds.append(time.perf_counter() - started)
                removed.append(victim)
                counts["removes"] += 1
            else:
                wanted = live[int(rng.integers(len(live)))]
                searched = Gallery.load(path, MODEL_ID, dim=args.dim)
                operation_of, row, size = added[wanted]
                query = embeddings(args.seed, writer, operation_of, size, args.dim)[row]
                best = searched.search(query, 1)[0]
                counts["searches"] += 1
                if not best or best[0].id != wanted:
                    counts["search_misses"] += 1
        except Exception as error:  # noqa: BLE001 - every failure is a finding of the soak: counted, not fatal
            errors.append(f"writer {writer} operation {operation}: {type(error).__name__}: {error}")
    return {"writer": writer, "added": added, "removed": removed, "counts": counts, "errors": errors,
            "write_seconds": write_seconds}


def check(path: Path, results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    every_id = [item_id for result in results for item_id in result["added"]]
    expected: dict[int, tuple[int, int, int, int]] = {
        item_id: (result["writer"], *where)
        for result in results
        for item_id, where in result["added"].items()
        if item_id not in set(result["removed"])
    }
    try:
        final = Gallery.load(path, MODEL_ID, dim=args.dim)
    except Exception as error:  # noqa: BLE001 - a gallery that does not load is reported, not raised
        return {"index_loads": False, "load_error": f"{type(error).__name__}: {error}"}
    held = set(final.items())
    lost = sorted(set(expected) - held)
    unexpected = sorted(held - set(expected))
    live_ids = sorted(expected)
    not_found: list[int] = []
    if live_ids:
        vectors = np.stack([
            embeddings(args.seed, writer, operation, size, args.dim)[row]
            for writer, operation, row, size in (expected[item_id] for item_id in live_ids)
        ])
        best = final.search(vectors, 1)
        not_found = [item_id for item_id, matches in zip(live_ids, best) if not matches or matches[0].id != item_id]
    return {
        "index_loads": True,
        "ids_handed_out": len(every_id),
        "ids_reused": len(every_id) - len(set(every_id)),
        "items_expected": len(expected),
        "items_held": len(held),
        "items_lost": len(lost),
        "items_unexpected": len(unexpected),
        "items_not_found_by_own_embedding": len(not_found),
        "next_id_above_every_id": final.info()["next_id"] > max(every_id, default=-1),
        "examples": {"lost": lost[:10], "unexpected": unexpected[:10], "not_found": not_found[:10]},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="gallery-soak-") as workspace:
        path = Path(workspace) / "gallery"
        Gallery.create(args.dim, MODEL_ID, args.index).save(path)
        context = multiprocessing.get_context("spawn")
        # Every writer starts at once, after all of them have imported edgereid.
        start_at = time.time() + 5.0
        with context.Pool(args.writers) as pool:
            results = pool.starmap(write, [(str(path), writer, args, start_at) for writer in range(args.writers)])
        checks = check(path, results, args)
    totals = {key: sum(result["counts"][key] for result in results) for key in results[0]["counts"]}
    latencies = sorted(seconds for result in results for seconds in result["write_seconds"])
    errors = [error for result in results for error in result["errors"]]
    passed = (
        not errors and checks.get("index_loads") is True and checks["ids_reused"] == 0 and checks["items_lost"] == 0
        and checks["items_unexpected"] == 0 and checks["items_not_found_by_own_embedding"] == 0
        and checks["next_id_above_every_id"] and totals["search_misses"] == 0
    )
    environment = describe_environment()
    report = {
        "benchmark": "gallery-soak",
        "command": "python " + shlex.join(["benchmarks/bench_gallery_soak.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpu_model": environment["cpu"]["model"],
            "cores_available": environment["cpu"]["usable_cores"],
            "memory_mb": environment["memory_mb"],
            "os": environment["os"],
            "python": platform.python_version(),
            "faiss": faiss.__version__,
            "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        },
        "settings": {"writers": args.writers, "duration_s": args.duration, "dim": args.dim, "max_batch": args.batch,
                     "index": args.index, "seed": args.seed},
        "wall_s": round(time.time() - started, 1),
        "operations": totals,
        "writes_per_s": round(len(latencies) / args.duration, 1),
        "write_latency_ms": {
            "median": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
            "max": round(1000 * latencies[-1], 1) if latencies else None,
        },
        "checks": checks,
        "errors": len(errors),
        "error_examples": errors[:10],
        "passed": passed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in ("operations", "write_latency_ms", "checks", "errors", "passed")},
                     indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
