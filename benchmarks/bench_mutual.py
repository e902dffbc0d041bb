"""What mutual learning or distillation adds to a student: the same student trained alone and trained with its
peer (or teacher), with the same budget, over several seeds.

    python benchmarks/bench_mutual.py --set solver.epochs=6              # synthetic quickstart, CPU
    python benchmarks/bench_mutual.py --alone student_mobilenetv2 --taught mutual_r50_ibn_mobilenetv2 \\
        --out benchmarks/results/mutual-market1501-holdout.json          # the real benchmark, on a GPU

``--alone`` trains the student by itself; ``--taught`` is a mutual-learning or distillation recipe whose student
has the same model section. Both get the same data, sampler, solver (epochs, iterations, learning rate) and seed:
the script refuses recipes that differ in anything but the teaching, so the gain is the teaching's alone. Each
(seed, arm) is a fresh `edgereid.training.train` run in a temporary directory; the student's final metrics (the
recipe's own evaluation, flip test as the recipe says) and, for mutual runs, each peer's are written to ``--out``
after every run, with the machine and the exact command. A distillation run records its teacher (checkpoint sha256
and the teacher's own metrics), and ``--append`` refuses a teacher file that changed since the earlier runs unless
``--other-teacher`` says it is meant (a teacher retrained by the same recipe, say): the summary then lists each
teacher. The summary gives each arm's mean and standard deviation and the per-seed gain (taught minus alone) of the
student's mAP.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edgereid.atomic import atomic_write_text
from edgereid.export.bundle import sha256_file
from edgereid.recipes import Recipe, load_recipe
from edgereid.runtime.environment import describe_environment
from edgereid.training import train
from edgereid.training.checkpoint import load_checkpoint, resolve_checkpoint_path

METRICS = ("mAP", "rank1", "mINP")
# What may differ between the two arms: the teaching itself and the recipe's name.
TEACHING_FIELDS = {"name", "description", "mutual", "distill"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alone", default="quickstart", help="the student's own recipe")
    parser.add_argument("--taught", default="quickstart_mutual", help="the mutual-learning or distillation recipe")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="applied to both recipes (e.g. solver.epochs=6)")
    parser.add_argument("--taught-set", dest="taught_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="applied to the --taught recipe only (e.g. mutual.kl_weight=0.01)")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in --out (same recipes, teaching and budget) and run only the "
                        "seeds it lacks, e.g. to add seeds or to go on after an interruption")
    parser.add_argument("--other-teacher", action="store_true",
                        help="with --append: go on although the teacher checkpoint differs from the earlier runs' "
                        "(each run keeps its teacher's sha256 and metrics)")
    parser.add_argument("--device", default=None, help="training device (default: the recipes' own)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "mutual-quickstart.json")
    return parser.parse_args(argv)


def check_same_budget(alone: Recipe, taught: Recipe) -> None:
    """Refuse a comparison in which anything but the teaching differs: it would not measure the teaching."""
    if taught.mutual is None and taught.distill is None:
        raise SystemExit(f"--taught {taught.name}: neither a mutual-learning nor a distillation recipe")
    first, second = alone.model_dump(mode="json"), taught.model_dump(mode="json")
    differing = sorted(key for key in set(first) | set(second)
                       if key not in TEACHING_FIELDS and first.get(key) != second.get(key))
    if differing:
        raise SystemExit(
            f"--alone {alone.name} and --taught {taught.name} differ in {', '.join(differing)}: the same student "
            "must get the same data, model, losses and solver in both arms (use --set for both)"
        )


def describe_teacher(taught: Recipe) -> dict[str, Any] | None:
    """The distillation teacher as the runs saw it: which file (sha256) and how good it is by its own evaluation."""
    if taught.distill is None:
        return None
    path = resolve_checkpoint_path(taught.distill.teacher)
    metrics = load_checkpoint(path).metrics
    return {"checkpoint": str(path), "sha256": sha256_file(path), "metrics": {
        key: round(100 * float(metrics[key]), 2) for key in METRICS if key in metrics}}


def check_same_teacher(earlier_runs: list[dict[str, Any]], teacher: dict[str, Any] | None, allow_other: bool) -> None:
    """Refuse to add distillation runs whose teacher file is not the one the earlier runs learned from."""
    if teacher is None or allow_other:
        return
    for run in earlier_runs:
        earlier_sha256 = (run.get("teacher") or {}).get("sha256")
        if earlier_sha256 != teacher["sha256"]:
            recorded = f"teacher sha256 {earlier_sha256[:12]}…" if earlier_sha256 else "a teacher of unrecorded sha256"
            raise SystemExit(
                f"--append: seed {run['seed']} was taught with {recorded}, but {teacher['checkpoint']} now has "
                f"sha256 {teacher['sha256'][:12]}…; give another --out, or --other-teacher to add runs with this one"
            )


def run_arm(recipe: Recipe, seed: int, device: str | None, scratch: Path) -> dict[str, Any]:
    seeded = recipe.model_copy(
        update={"seed": seed, "train": recipe.train.model_copy(update={"output_dir": scratch / f"{recipe.name}-{seed}"})}
    )
    result = train(seeded, device=device, show_progress=False)
    metrics = result.last_metrics or {}
    row: dict[str, Any] = {
        "seed": seed,
        "iterations": result.iterations,
        "train_s": round(result.elapsed_s, 1),
        "student": {key: round(100 * float(metrics[key]), 2) for key in METRICS},
    }
    peers = {key.split("/", 1)[1] for key in metrics if key.startswith("mAP/")}
    if peers:
        row["peers"] = {name: {key: round(100 * float(metrics[f"{key}/{name}"]), 2) for key in METRICS}
                        for name in sorted(peers)}
    return row


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": round(statistics.fmean(values), 2),
                "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}

    summary: dict[str, Any] = {arm: {key: spread([run["student"][key] for run in rows]) for key in METRICS}
                               for arm, rows in runs.items() if rows}
    alone = {run["seed"]: run["student"]["mAP"] for run in runs["alone"]}
    gains = [round(run["student"]["mAP"] - alone[run["seed"]], 2) for run in runs["taught"] if run["seed"] in alone]
    if gains:
        summary["student_mAP_gain_points"] = {"per_seed": gains, **spread(gains)}
    teachers: dict[str, dict[str, Any]] = {}
    for run in runs["taught"]:
        if "teacher" in run:
            teacher = teachers.setdefault(run["teacher"]["sha256"] or "unrecorded", {**run["teacher"], "seeds": []})
            teacher["seeds"].append(run["seed"])
    if teachers:
        summary["teachers"] = list(teachers.values())
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    alone = load_recipe(args.alone, args.overrides)
    taught = load_recipe(args.taught, [*args.overrides, *args.taught_overrides])
    check_same_budget(alone, taught)
    teacher = describe_teacher(taught)
    environment = describe_environment()
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_mutual.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": environment["cpu"], "gpus": environment.get("gpus"),
                    "libraries": environment.get("libraries"),
                    "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
        "recipes": {"alone": alone.name, "taught": taught.name, "student": taught.student,
                    "student_backbone": alone.model.backbone.name,
                    "teaching": (taught.mutual or taught.distill).model_dump(mode="json")},  # type: ignore[union-attr]
        "budget": {"epochs": alone.solver.epochs, "iters_per_epoch": alone.solver.iters_per_epoch,
                   "batch": alone.data.sampler.p * alone.data.sampler.k, "flip_test": alone.train.flip_test},
        "runs": {"alone": [], "taught": []},
    }
    if args.append and args.out.is_file():
        earlier = json.loads(args.out.read_text())
        for key in ("recipes", "budget"):
            if earlier[key] != results[key]:
                raise SystemExit(f"--append: {args.out} holds runs of other {key} ({earlier[key]}); give another --out")
        check_same_teacher(earlier["runs"]["taught"], teacher, args.other_teacher)
        results["runs"] = earlier["runs"]
        results["command"] = f"{earlier['command']}; then {results['command']}"

    def write() -> None:
        results["summary"] = summarise(results["runs"])
        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-mutual-") as scratch:
        for seed in seeds:
            for arm, recipe in (("alone", alone), ("taught", taught)):
                if any(run["seed"] == seed for run in results["runs"][arm]):
                    continue
                row = run_arm(recipe, seed, args.device, Path(scratch))
                if arm == "taught" and teacher is not None:
                    row["teacher"] = teacher
                results["runs"][arm].append(row)
                print(f"seed {seed} {arm:6s}: {json.dumps(row)}", flush=True)
                write()
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    write()
    print(json.dumps(results["summary"], indent=1))
    return results


if __name__ == "__main__":
    main()
