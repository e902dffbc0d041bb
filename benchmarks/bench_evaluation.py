"""Speed, peak memory and agreement of edgereid's evaluation against FastReID 1.4.0's Python implementation.

Run from the repository root:

    python benchmarks/bench_evaluation.py --fastreid /path/to/fastreid-ref

It makes a seeded synthetic Market-1501-sized set (751 identities over 6 cameras, 3,368 queries x 15,913 gallery
images, 2,798 of them distractors; 512-d features built as identity centre + camera shift + noise, so that mAP is
mid-range), and times, each in a fresh child process that reports its peak resident memory:

* edgereid ``compute_distance`` (cosine, query x gallery);
* edgereid ``evaluate_rank`` and FastReID's python ``eval_market1501`` (max_rank=50) on the same distance matrix;
* edgereid ``re_ranking`` and FastReID's ``re_ranking`` (k1=20, k2=6, lambda=0.3) on the same three matrices.

Every input goes through a ``.npy`` file in a temporary folder, so both implementations see the same bytes. The
FastReID modules are loaded from their files (``--fastreid`` points at a FastReID source tree or installed
package); nothing of FastReID is copied here. Results go to ``benchmarks/results/evaluation.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FASTREID = Path("/root/.cache/edgereid-ci/fastreid-ref")

# Market-1501 test split as FastReID loads it.
MARKET = {"num_ids": 751, "num_query": 3368, "num_gallery": 15913, "num_distractors": 2798, "num_cameras": 6}
QUICK = {"num_ids": 150, "num_query": 700, "num_gallery": 3200, "num_distractors": 560, "num_cameras": 6}
# Per-dimension noise over unit-variance identity centres: about 46% mAP and 81% rank-1 at Market size.
NOISE_SCALE = 2.0
STEPS = (
    "distance_edgereid",
    "rank_edgereid",
    "rank_fastreid",
    "rerank_edgereid",
    "rerank_fastreid",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "evaluation.json")
    parser.add_argument("--quick", action="store_true", help="a 700 x 3,200 set instead of Market size")
    parser.add_argument("--feature-dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each edgereid step (best kept)")
    parser.add_argument("--fastreid-rank-repeats", type=int, default=3, help="timed runs of FastReID's eval")
    parser.add_argument(
        "--fastreid-rerank-repeats", type=int, default=1,
        help="timed runs of FastReID's re_ranking (minutes and about 10 GB each at Market size)",
    )  # fmt: skip
    parser.add_argument("--fastreid", type=Path, default=DEFAULT_FASTREID, help="FastReID source tree")
    parser.add_argument("--skip-fastreid-rerank", action="store_true")
    parser.add_argument(
        "--work-dir", type=Path,
        help="keep the inputs and results here instead of a temporary folder (with --reuse-fastreid, runs again "
        "reuse the same inputs)",
    )  # fmt: skip
    parser.add_argument(
        "--reuse-fastreid", action="store_true",
        help="take FastReID's timings and results from an earlier run in --work-dir with the same data",
    )  # fmt: skip
    parser.add_argument("--worker", choices=STEPS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------- data


def make_dataset(sizes: dict[str, int], feature_dim: int, seed: int) -> dict[str, np.ndarray]:
    """Labels and features of a Market-like query/gallery split.

    Every identity is seen by 2-6 of the cameras; each query is one (identity, camera) with the identity also in
    the gallery under that camera and others (so some gallery images are junk for it), gallery counts per
    identity vary as in Market (a heavy-tailed share), and distractors have their own random centres and pid 0.
    """
    rng = np.random.default_rng(seed)
    num_ids, num_cameras = sizes["num_ids"], sizes["num_cameras"]
    pids = np.arange(1, num_ids + 1)
    cameras = [
        np.sort(rng.choice(num_cameras, size=int(rng.integers(2, num_cameras + 1)), replace=False))
        for _ in pids
    ]
    pairs = np.array([(pid, cam) for pid, cams in zip(pids, cameras) for cam in cams])

    # Queries: one per (identity, camera) pair, then extra ones on random pairs up to the query count.
    if len(pairs) >= sizes["num_query"]:
        query_pairs = pairs[rng.choice(len(pairs), size=sizes["num_query"], replace=False)]
    else:
        extra = rng.choice(len(pairs), size=sizes["num_query"] - len(pairs), replace=True)
        query_pairs = np.concatenate([pairs, pairs[extra]])
    # Gallery: at least one image per pair, the rest spread with a heavy-tailed weight per pair.
    num_identity_gallery = sizes["num_gallery"] - sizes["num_distractors"]
    weights = rng.gamma(1.5, size=len(pairs))
    counts = 1 + rng.multinomial(num_identity_gallery - len(pairs), weights / weights.sum())
    gallery_pairs = np.repeat(pairs, counts, axis=0)

    centres = rng.standard_normal((num_ids + 1, feature_dim)).astype(np.float32)
    camera_shift = 0.45 * rng.standard_normal((num_cameras, feature_dim)).astype(np.float32)

    def features(pairs_of_images: np.ndarray) -> np.ndarray:
        noise_scale = NOISE_SCALE * rng.uniform(0.8, 1.6, size=(len(pairs_of_images), 1)).astype(np.float32)
        noise = rng.standard_normal((len(pairs_of_images), feature_dim), dtype=np.float32) * noise_scale
        return centres[pairs_of_images[:, 0]] + camera_shift[pairs_of_images[:, 1]] + noise

    distractor_cameras = rng.integers(0, num_cameras, size=sizes["num_distractors"])
    distractor_features = (
        rng.standard_normal((sizes["num_distractors"], feature_dim), dtype=np.float32) * 1.3 * NOISE_SCALE
    )
    distractor_features += camera_shift[distractor_cameras]
    gallery_features = np.concatenate([features(gallery_pairs), distractor_features])
    gallery_pids = np.concatenate([gallery_pairs[:, 0], np.zeros(sizes["num_distractors"], dtype=np.int64)])
    gallery_camids = np.concatenate([gallery_pairs[:, 1], distractor_cameras])
    shuffle = rng.permutation(sizes["num_gallery"])
    return {
        "query_features": features(query_pairs),
        "query_pids": query_pairs[:, 0].astype(np.int64),
        "query_camids": query_pairs[:, 1].astype(np.int64),
        "gallery_features": gallery_features[shuffle],
        "gallery_pids": gallery_pids[shuffle].astype(np.int64),
        "gallery_camids": gallery_camids[shuffle].astype(np.int64),
    }


# ---------------------------------------------------------------------------------------------------- workers


def load_by_path(name: str, path: Path) -> ModuleType:
    """A module from its file, outside any package (FastReID's Cython import then falls back to Python)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fastreid_file(root: Path, name: str) -> Path:
    for candidate in (root / "fastreid" / "evaluation" / name, root / "evaluation" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no FastReID evaluation/{name} under {root}")


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(step: str, work_dir: Path, repeats: int, fastreid_root: Path) -> None:
    """One step in this (fresh) process: load its inputs, run it ``repeats`` times, write timings and result."""
    import warnings

    def load(name: str) -> np.ndarray:
        return np.load(work_dir / f"{name}.npy")

    labels = {name: load(name) for name in ("query_pids", "gallery_pids", "query_camids", "gallery_camids")}
    result: dict[str, Any] = {}
    if step == "distance_edgereid":
        from edgereid.evaluation import compute_distance

        query, gallery = load("query_features"), load("gallery_features")
        inputs_mb = current_rss_mb()

        def call() -> Any:
            return compute_distance(query, gallery, metric="cosine")

    elif step in ("rank_edgereid", "rank_fastreid"):
        distmat = load("q_g_dist")
        args = (
            distmat,
            labels["query_pids"],
            labels["gallery_pids"],
            labels["query_camids"],
            labels["gallery_camids"],
        )
        if step == "rank_edgereid":
            from edgereid.evaluation import evaluate_rank

            def call() -> Any:
                return evaluate_rank(*args, max_rank=50)

        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rank_module = load_by_path("fastreid_rank_reference", fastreid_file(fastreid_root, "rank.py"))

            def call() -> Any:
                cmc, all_ap, all_inp = rank_module.eval_market1501(*args, max_rank=50)
                return cmc, all_ap, all_inp

        inputs_mb = current_rss_mb()
    else:
        q_g, q_q, g_g = load("q_g_dist"), load("q_q_dist"), load("g_g_dist")
        if step == "rerank_edgereid":
            from edgereid.evaluation import re_ranking
        else:
            re_ranking = load_by_path(
                "fastreid_rerank_reference", fastreid_file(fastreid_root, "rerank.py")
            ).re_ranking
        inputs_mb = current_rss_mb()

        def call() -> Any:
            return re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)

    times = []
    output: Any = None
    for _ in range(repeats):
        output = None  # free the previous result before the next run
        start = time.perf_counter()
        output = call()
        times.append(time.perf_counter() - start)
    result.update(
        step=step,
        seconds=[round(t, 4) for t in times],
        best_seconds=round(min(times), 4),
        inputs_rss_mb=round(inputs_mb, 1),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )
    result["peak_over_inputs_mb"] = round(result["peak_rss_mb"] - result["inputs_rss_mb"], 1)

    if step == "distance_edgereid":
        # The distance matrices every later step reads (outside the timing): the query-gallery one just timed,
        # and the query-query and gallery-gallery ones re-ranking needs.
        from edgereid.evaluation import compute_distance

        if not (work_dir / "g_g_dist.npy").exists():  # kept from an earlier run with --work-dir
            np.save(work_dir / "q_g_dist.npy", output)
            np.save(work_dir / "q_q_dist.npy", compute_distance(query, query, metric="cosine"))
            np.save(work_dir / "g_g_dist.npy", compute_distance(gallery, gallery, metric="cosine"))
    elif step == "rank_edgereid":
        result["metrics"] = {"mAP": output.mAP, "mINP": output.mINP, "cmc": [float(v) for v in output.cmc]}
        result["num_valid_queries"] = output.num_valid_queries
    elif step == "rank_fastreid":
        cmc, all_ap, all_inp = output
        result["metrics"] = {
            "mAP": float(np.mean(all_ap)),
            "mINP": float(np.mean(all_inp)),
            "cmc": [float(v) for v in cmc],
        }
        # Per-query values (every query is valid in this data set), to trace any difference to its query.
        np.save(work_dir / "rank_fastreid_ap.npy", np.asarray(all_ap, dtype=np.float64))
        np.save(work_dir / "rank_fastreid_inp.npy", np.asarray(all_inp, dtype=np.float64))
    else:
        np.save(work_dir / f"{step}.npy", output)
    (work_dir / f"{step}.json").write_text(json.dumps(result))


def run_step(step: str, work_dir: Path, repeats: int, fastreid_root: Path) -> dict[str, Any]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", step, "--work-dir", str(work_dir),
        "--repeats", str(repeats), "--fastreid", str(fastreid_root),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    result: dict[str, Any] = json.loads((work_dir / f"{step}.json").read_text())
    print(
        f"{step:18s} best {result['best_seconds']:8.3f} s of {result['seconds']}  peak {result['peak_rss_mb']:8.1f} MB "
        f"({result['peak_over_inputs_mb']:+.1f} MB over inputs)  [child {time.perf_counter() - started:.0f} s]",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpu": cpu,
        "cores_available": len(os.sched_getaffinity(0)),
        "ram_gb": round(ram_gb, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def tie_report(work_dir: Path) -> dict[str, Any]:
    """Queries whose same-identity gallery images share a distance with another image (where argsort order matters)."""
    distmat = np.load(work_dir / "q_g_dist.npy")
    q_pids, g_pids = np.load(work_dir / "query_pids.npy"), np.load(work_dir / "gallery_pids.npy")
    tied_queries = []
    tied_entries = 0
    rows_with_any_tie = 0
    for index, (row, pid) in enumerate(zip(distmat, q_pids)):
        ordered = np.sort(row)
        rows_with_any_tie += bool((ordered[1:] == ordered[:-1]).any())
        values = row[g_pids == pid]
        count = np.searchsorted(ordered, values, side="right") - np.searchsorted(ordered, values, side="left")
        tied_entries += int((count > 1).sum())
        if (count > 1).any():
            tied_queries.append(index)
    return {
        "queries_with_any_tied_distances": rows_with_any_tie,
        "queries_with_a_tied_same_identity_image": len(tied_queries),
        "same_identity_images_in_a_tie": tied_entries,
        "tied_query_rows": tied_queries,
    }


def per_query_report(work_dir: Path, fastreid_root: Path, tied_rows: np.ndarray) -> dict[str, Any]:
    """Trace a difference in mAP/mINP to its queries, and re-run FastReID on them with a stable argsort.

    edgereid's value of one query is ``evaluate_rank`` on that row alone (the same sums as in the full run).
    """
    import warnings

    from edgereid.evaluation import evaluate_rank

    distmat = np.load(work_dir / "q_g_dist.npy")
    labels = [
        np.load(work_dir / f"{name}.npy")
        for name in ("query_pids", "gallery_pids", "query_camids", "gallery_camids")
    ]
    q_pids, g_pids, q_camids, g_camids = labels
    theirs_ap, theirs_inp = (
        np.load(work_dir / "rank_fastreid_ap.npy"),
        np.load(work_dir / "rank_fastreid_inp.npy"),
    )
    if len(theirs_ap) != len(q_pids):
        return {"skipped": "not every query is valid, so per-query values cannot be lined up"}
    ours = [
        evaluate_rank(distmat[i : i + 1], q_pids[i : i + 1], g_pids, q_camids[i : i + 1], g_camids)
        for i in range(len(q_pids))
    ]
    ours_ap = np.array([result.mAP for result in ours])
    ours_inp = np.array([result.mINP for result in ours])
    # Beyond float64 rounding: FastReID sums each AP over the whole ranked list, edgereid over the matches only.
    differing = np.flatnonzero(
        (np.abs(ours_ap - theirs_ap) > 1e-12) | (np.abs(ours_inp - theirs_inp) > 1e-12)
    )

    # FastReID's own code on the differing rows, with np.argsort made stable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rank_module = load_by_path("fastreid_rank_stable", fastreid_file(fastreid_root, "rank.py"))

    class StableNumpy:
        def __getattr__(self, name: str) -> Any:
            return getattr(np, name)

        @staticmethod
        def argsort(array: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.argsort(array, axis=axis, kind="stable")

    setattr(rank_module, "np", StableNumpy())  # noqa: B010
    stable_ap, stable_inp = theirs_ap.copy(), theirs_inp.copy()
    if differing.size:
        _, ap_rows, inp_rows = rank_module.eval_market1501(
            distmat[differing], q_pids[differing], g_pids, q_camids[differing], g_camids, max_rank=50
        )
        stable_ap[differing], stable_inp[differing] = ap_rows, inp_rows
    return {
        "queries_with_AP_or_INP_bitwise_different": int(
            ((ours_ap != theirs_ap) | (ours_inp != theirs_inp)).sum()
        ),
        "queries_with_AP_or_INP_different_over_1e-12": int(differing.size),
        "all_of_them_have_a_tied_same_identity_image": bool(np.isin(differing, tied_rows).all()),
        "max_abs_diff_AP": float(np.abs(ours_ap - theirs_ap).max()),
        "fastreid_stable_argsort_on_those_queries": {
            "queries": int(differing.size),
            "max_abs_diff_AP": float(np.abs(ours_ap - stable_ap).max()),
            "max_abs_diff_INP": float(np.abs(ours_inp - stable_inp).max()),
            "mAP_identical": float(np.mean(list(stable_ap))) == float(np.mean(ours_ap)),
            "mINP_identical": float(np.mean(list(stable_inp))) == float(np.mean(ours_inp)),
        },
    }


def compare_metrics(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    cmc_ours, cmc_theirs = np.asarray(ours["cmc"]), np.asarray(theirs["cmc"])
    return {
        "mAP_abs_diff": abs(ours["mAP"] - theirs["mAP"]),
        "mINP_abs_diff": abs(ours["mINP"] - theirs["mINP"]),
        "cmc_max_abs_diff": float(np.abs(cmc_ours - cmc_theirs).max())
        if cmc_ours.shape == cmc_theirs.shape
        else None,
        "cmc_length": [len(cmc_ours), len(cmc_theirs)],
        "identical": ours["mAP"] == theirs["mAP"]
        and ours["mINP"] == theirs["mINP"]
        and ours["cmc"] == theirs["cmc"],
    }


def prepare_inputs(
    work_dir: Path, description: dict[str, Any], sizes: dict[str, int], feature_dim: int, seed: int
) -> None:
    """Write the data set's arrays, or check that the ones already in ``work_dir`` are of the same data."""
    meta_path = work_dir / "data.json"
    if meta_path.exists():
        if json.loads(meta_path.read_text()) != description:
            raise SystemExit(f"{work_dir} holds inputs of another data set; use an empty --work-dir")
        return
    for name, array in make_dataset(sizes, feature_dim, seed).items():
        np.save(work_dir / f"{name}.npy", array)
    meta_path.write_text(json.dumps(description))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.work_dir, args.repeats, args.fastreid)
        return
    sizes = QUICK if args.quick else MARKET
    report: dict[str, Any] = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO_ROOT), *sys.argv[1:]]),
        "machine": machine_info(),
        "data": {**sizes, "feature_dim": args.feature_dim, "seed": args.seed, "metric": "cosine"},
        "rerank_params": {"k1": 20, "k2": 6, "lambda_value": 0.3},
        "repeats": {
            "edgereid": args.repeats,
            "fastreid_rank": args.fastreid_rank_repeats,
            "fastreid_rerank": args.fastreid_rerank_repeats,
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench_evaluation_") as tmp:
        work_dir = args.work_dir or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        prepare_inputs(work_dir, report["data"], sizes, args.feature_dim, args.seed)
        steps: dict[str, Any] = {}

        def fastreid_step(step: str, repeats: int) -> dict[str, Any]:
            if args.reuse_fastreid and (work_dir / f"{step}.json").exists():
                kept: dict[str, Any] = json.loads((work_dir / f"{step}.json").read_text())
                print(f"{step:18s} reused from {work_dir}: best {kept['best_seconds']:.3f} s", flush=True)
                return {**kept, "reused_from_earlier_run": True}
            return run_step(step, work_dir, repeats, args.fastreid)

        steps["distance_edgereid"] = run_step("distance_edgereid", work_dir, args.repeats, args.fastreid)
        steps["rank_edgereid"] = run_step("rank_edgereid", work_dir, args.repeats, args.fastreid)
        steps["rank_fastreid"] = fastreid_step("rank_fastreid", args.fastreid_rank_repeats)
        steps["rerank_edgereid"] = run_step("rerank_edgereid", work_dir, args.repeats, args.fastreid)
        if not args.skip_fastreid_rerank:
            steps["rerank_fastreid"] = fastreid_step("rerank_fastreid", args.fastreid_rerank_repeats)

        ours, theirs = steps["rank_edgereid"]["metrics"], steps["rank_fastreid"]["metrics"]
        ties = tie_report(work_dir)
        tied_rows = np.asarray(ties.pop("tied_query_rows"), dtype=np.int64)
        equality: dict[str, Any] = {"rank": compare_metrics(ours, theirs), "ties": ties}
        equality["rank"]["per_query"] = per_query_report(work_dir, args.fastreid, tied_rows)
        speedups = {"rank": steps["rank_fastreid"]["best_seconds"] / steps["rank_edgereid"]["best_seconds"]}
        if "rerank_fastreid" in steps:
            ours_rr = np.load(work_dir / "rerank_edgereid.npy")
            theirs_rr = np.load(work_dir / "rerank_fastreid.npy")
            difference = np.abs(ours_rr.astype(np.float64) - theirs_rr.astype(np.float64))
            equality["rerank"] = {
                "max_abs_diff": float(difference.max()),
                "entries_over_1e-5": int((difference > 1e-5).sum()),
                "shape": list(ours_rr.shape),
                "dtypes": [str(ours_rr.dtype), str(theirs_rr.dtype)],
            }
            speedups["rerank"] = (
                steps["rerank_fastreid"]["best_seconds"] / steps["rerank_edgereid"]["best_seconds"]
            )
    report["steps"] = steps
    report["speedups"] = {name: round(value, 2) for name, value in speedups.items()}
    report["equality"] = equality
    report["metrics"] = {
        "mAP": ours["mAP"],
        "mINP": ours["mINP"],
        "rank1": ours["cmc"][0],
        "rank5": ours["cmc"][4],
        "rank10": ours["cmc"][9],
        "num_valid_queries": steps["rank_edgereid"]["num_valid_queries"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {"speedups": report["speedups"], "equality": equality, "metrics": report["metrics"]}, indent=2
        )
    )


if __name__ == "__main__":
    main()
