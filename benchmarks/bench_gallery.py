"""Gallery search at scale: exact (Flat inner product) against HNSW, and an IVF-PQ configuration for 10M.

Run from the repository root, one size per process (RSS deltas stay clean):

    python benchmarks/bench_gallery.py --sizes 100000 --out benchmarks/results/gallery-100k.json
    python benchmarks/bench_gallery.py --sizes 1000000 --ivfpq IVF4096,PQ64 --out benchmarks/results/gallery-1m.json

Vectors have ReID-like structure: each identity is a random unit centre, and each of its views (``--views`` per
identity in the gallery) is ``centre + noise`` L2-normalised, with the noise set so that a view has cosine ~0.74 to
its centre and ~0.55 to another view of its identity (two unrelated 512-d vectors: ~0 ± 0.044). Queries are fresh
views of random gallery identities. Uniform random vectors would be a worst case for graph and quantised indexes
that no ReID gallery resembles. ``--families N`` draws the identity centres around N appearance families (two
identities of a family at cosine ~0.5, as people dressed alike), ``--intrinsic-dim`` puts everything in a subspace;
the result records which share of the exact top-10 is the query's own identity (the rest are chance neighbours).

For each size, through ``edgereid.runtime.gallery.Gallery``:

* exact (``Flat``): search time of the whole batch of queries and of single queries (median), top-10;
* HNSW (``HNSW{M}``, ``--ef-construction``): build time, then for each efSearch of ``--ef-search`` the batch
  time, recall@10 against exact and the speed-up over exact; the chosen efSearch is the smallest with
  recall@10 >= ``--target-recall``;
* IVF-PQ (``--ivfpq``): training on a sample, add, recall@10 per nprobe; its bytes per vector and those of the
  coarse quantizer give the memory of ``--ivfpq-scale-to`` vectors with ``--ivfpq-scale-nlist`` lists, reported
  as computed, not measured;
* memory of each index: bytes of its saved ``index.faiss`` and the resident-memory growth of building it.

Results (machine, faiss version, exact command) go to ``--out`` after each stage, so a long run that is stopped
still leaves what it measured.
"""

from __future__ import annotations

import argparse
import gc
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

import faiss
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edgereid.runtime.environment import describe_environment
from edgereid.runtime.gallery import Gallery

MODEL_ID = "bench"
# Noise norm per view; cos(view, centre) = 1 / sqrt(1 + NOISE**2) ~ 0.74.
NOISE = 0.9
# Noise norm of an identity centre around its family's; two identities of a family: cosine ~1 / (1 + 1) = 0.5.
FAMILY_NOISE = 1.0
TOP_K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated gallery sizes")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--views", type=int, default=10, help="gallery views per identity")
    parser.add_argument("--single-queries", type=int, default=50, help="queries timed one at a time")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", default="16,32,64,128,256")
    parser.add_argument("--target-recall", type=float, default=0.98)
    parser.add_argument("--ivfpq", default="IVF1024,PQ64", help="IVF-PQ factory measured at each size ('' skips)")
    parser.add_argument("--nprobe", default="8,16,32,64")
    parser.add_argument("--ivfpq-scale-to", type=int, default=10_000_000)
    parser.add_argument("--ivfpq-scale-nlist", type=int, default=65536)
    parser.add_argument("--intrinsic-dim", type=int, default=0,
                        help="draw centres and views in a random subspace of this many dimensions (0: the full "
                        "space, the worst case); trained ReID embeddings concentrate in a few dozen dimensions")
    parser.add_argument("--families", type=int, default=0,
                        help="draw identity centres around this many appearance families (0: independent centres, "
                        "isolated clusters with nothing to guide a graph search between them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "gallery.json")
    parser.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    return parser.parse_args(argv)


def rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def make_data(
    size: int, dim: int, num_queries: int, views: int, seed: int, intrinsic_dim: int = 0, families: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gallery, queries, query identities): views of identity centres, built in chunks to keep the peak near the
    result's size; gallery row i is a view of identity ``i % (size // views)``. With ``intrinsic_dim`` everything
    lies in one random subspace of that dimension (an orthonormal basis keeps unit vectors unit); with ``families``
    the identity centres are drawn around that many family centres (cosine ~0.5 between two identities of a family)
    instead of independently."""
    rng = np.random.default_rng(seed)
    space = intrinsic_dim or dim
    basis = np.linalg.qr(rng.standard_normal((dim, space)))[0].T.astype(np.float32) if intrinsic_dim else None

    def embed(vectors: np.ndarray) -> np.ndarray:
        return vectors if basis is None else vectors @ basis

    num_ids = max(1, size // views)
    if families:
        family_of = np.arange(num_ids) % families
        centres = unit_rows(rng, families, space)[family_of] + FAMILY_NOISE * unit_rows(rng, num_ids, space)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    else:
        centres = unit_rows(rng, num_ids, space)
    gallery = np.empty((size, dim), dtype=np.float32)
    chunk = 100_000
    for start in range(0, size, chunk):
        stop = min(start + chunk, size)
        identities = np.arange(start, stop) % num_ids
        block = embed(centres[identities] + NOISE * unit_rows(rng, stop - start, space))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        gallery[start:stop] = block
    query_ids = rng.integers(0, num_ids, num_queries)
    queries = embed(centres[query_ids] + NOISE * unit_rows(rng, num_queries, space))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return gallery, queries, query_ids


def ids_of(matches: list[list[Any]]) -> list[list[int]]:
    return [[match.id for match in row] for row in matches]


def recall_at_k(found: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def timed_search(gallery: Gallery, queries: np.ndarray, **options: Any) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    matches = gallery.search(queries, TOP_K, **options)
    return time.perf_counter() - started, ids_of(matches)


def sweep_search(
    gallery: Gallery, queries: np.ndarray, exact_ids: list[list[int]], exact_s: float, parameter: str, values: str
) -> list[dict[str, Any]]:
    """Batch time, recall@10 against exact and speed-up for each comma-separated value of a search ``parameter``."""
    rows = []
    for value in (int(v) for v in values.split(",")):
        seconds, found = timed_search(gallery, queries, **{parameter: value})
        rows.append({
            parameter: value,
            "batch_s": round(seconds, 4),
            "batch_ms_per_query": round(1000 * seconds / len(queries), 4),
            "recall_at_10": round(recall_at_k(found, exact_ids), 4),
            "speedup_vs_exact": round(exact_s / seconds, 1),
        })
    return rows


def single_query_ms(gallery: Gallery, queries: np.ndarray, count: int, **options: Any) -> float:
    times = []
    for row in queries[:count]:
        started = time.perf_counter()
        gallery.search(row[None, :], TOP_K, **options)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def index_bytes(gallery: Gallery) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-gallery-") as folder:
        path = gallery.save(Path(folder) / "gallery")
        return (path / "index.faiss").stat().st_size


def build(factory: str, data: np.ndarray, dim: int, train_rows: int | None = None, **options: Any) -> dict[str, Any]:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    gallery = Gallery.create(dim, MODEL_ID, factory, **options)
    train_s = 0.0
    if train_rows is not None:
        gallery.train(data[:train_rows])
        train_s = time.perf_counter() - started
    gallery.add(data)
    build_s = time.perf_counter() - started
    return {
        "gallery": gallery,
        "build_s": round(build_s, 2),
        "train_s": round(train_s, 2),
        "rss_delta_bytes": rss_bytes() - before,
    }


def bench_size(args: argparse.Namespace, size: int, results: dict[str, Any], write: Any) -> None:
    entry: dict[str, Any] = {"size": size}
    results["sizes"][str(size)] = entry
    data, queries, query_ids = make_data(
        size, args.dim, args.queries, args.views, args.seed, args.intrinsic_dim, args.families
    )

    flat = build("Flat", data, args.dim)
    gallery = flat.pop("gallery")
    exact_s, exact_ids = timed_search(gallery, queries)
    entry["exact"] = {
        "factory": "Flat",
        **flat,
        "index_bytes": index_bytes(gallery),
        "batch_s": round(exact_s, 4),
        "batch_ms_per_query": round(1000 * exact_s / len(queries), 4),
        "single_query_ms": round(single_query_ms(gallery, queries, args.single_queries), 3),
    }
    # How much of the exact top-10 is the query's own identity; the rest are other vectors that happen to lie
    # closer, which no index finds by following structure.
    num_ids = max(1, size // args.views)
    entry["exact_top10_own_identity_share"] = round(
        float(np.mean([[item % num_ids == identity for item in row] for row, identity in zip(exact_ids, query_ids)])), 4
    )
    del gallery
    write()

    hnsw_factory = f"HNSW{args.hnsw_m}"
    hnsw = build(hnsw_factory, data, args.dim, ef_construction=args.ef_construction)
    gallery = hnsw.pop("gallery")
    sweep = sweep_search(gallery, queries, exact_ids, exact_s, "ef_search", args.ef_search)
    chosen = next((row for row in sweep if row["recall_at_10"] >= args.target_recall), None)
    if chosen is not None:
        chosen = {
            **chosen,
            "single_query_ms": round(
                single_query_ms(gallery, queries, args.single_queries, ef_search=chosen["ef_search"]), 3
            ),
        }
    entry["hnsw"] = {
        "factory": hnsw_factory,
        "M": args.hnsw_m,
        "ef_construction": args.ef_construction,
        **hnsw,
        "index_bytes": index_bytes(gallery),
        "sweep": sweep,
        "chosen": chosen,
        "meets_target": chosen is not None and chosen["speedup_vs_exact"] >= 10,
    }
    del gallery
    write()

    if args.ivfpq:
        nlist = int(args.ivfpq.split(",")[0].removeprefix("IVF").split("_")[0])
        train_rows = min(size, 40 * nlist)
        ivf = build(args.ivfpq, data, args.dim, train_rows=train_rows)
        gallery = ivf.pop("gallery")
        probes = sweep_search(gallery, queries, exact_ids, exact_s, "nprobe", args.nprobe)
        saved = index_bytes(gallery)
        quantizer_bytes = nlist * args.dim * 4
        per_vector = (saved - quantizer_bytes) / size
        rss_per_vector = (ivf["rss_delta_bytes"] - quantizer_bytes) / size
        scale_quantizer = args.ivfpq_scale_nlist * args.dim * 4
        entry["ivfpq"] = {
            "factory": args.ivfpq,
            "train_rows": train_rows,
            **ivf,
            "index_bytes": saved,
            "bytes_per_vector_saved": round(per_vector, 1),
            "bytes_per_vector_rss": round(rss_per_vector, 1),
            "nprobe_sweep": probes,
            "computed_at_scale": {
                "note": "computed from the measured bytes per vector plus a float32 coarse quantizer, not measured",
                "vectors": args.ivfpq_scale_to,
                "factory": args.ivfpq.replace(f"IVF{nlist}", f"IVF{args.ivfpq_scale_nlist}", 1),
                "coarse_quantizer_bytes": scale_quantizer,
                "index_bytes": int(per_vector * args.ivfpq_scale_to + scale_quantizer),
                "rss_bytes": int(rss_per_vector * args.ivfpq_scale_to + scale_quantizer),
                "flat_index_bytes": args.ivfpq_scale_to * args.dim * 4,
            },
        }
        del gallery
        write()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results: dict[str, Any] = {
        "command": "python " + shlex.join(["benchmarks/bench_gallery.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpu_model": describe_environment()["cpu"]["model"],
            "cores_available": len(os.sched_getaffinity(0)),
            "faiss_threads": faiss.omp_get_max_threads(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        },
        "data": {
            "dim": args.dim,
            "queries": args.queries,
            "views_per_identity": args.views,
            "noise": NOISE,
            "structure": "identity centres + noisy L2-normalised views; queries are fresh views",
            "intrinsic_dim": args.intrinsic_dim or args.dim,
            "families": args.families or None,
            "seed": args.seed,
            "top_k": TOP_K,
        },
        "target": {"recall_at_10": args.target_recall, "speedup_vs_exact": 10},
        "sizes": {},
        # Stays false in the file of a run that was stopped: what it holds is what was measured by then.
        "finished": False,
    }

    def write() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    for size in (int(v) for v in args.sizes.split(",")):
        bench_size(args, size, results, write)
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["finished"] = True
    write()
    if args.json:
        print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
