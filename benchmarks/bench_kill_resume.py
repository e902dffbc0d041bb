"""Training killed with SIGKILL at random moments and resumed each time ends where an uninterrupted run ends.

Run from the repository root (needs the ``[train]`` extra):

    python benchmarks/bench_kill_resume.py

A tiny recipe (``plaincnn16`` at 64x32 on the built-in synthetic data, a checkpoint every epoch) is trained once
without interruption with ``edgereid train``, then again in a new run directory, killed with SIGKILL (the whole
process group) ``--kills`` times and resumed with ``edgereid train --resume RUN_DIR`` after each kill, until a
session finishes. Every process runs with ``OMP_NUM_THREADS=1``, as the exact-resume test does. The kill moments
are seeded:

- a random delay after the start, drawn so that the kills spread over the whole run (and some land during the
  start-up: importing, decoding the data, loading the checkpoint);
- for about a third of the kills, the moment a checkpoint's temporary file (``.NAME.*.tmp``, written by
  ``edgereid.atomic.atomic_file`` before its rename) appears in the run directory, after a random number of them.

A kill counts as *during a checkpoint write* when a checkpoint's temporary file that the session created is still
there after the kill (its rename never happened), whichever way the moment was chosen; other temporary files it left
(``recipe.yaml``'s, written when a session starts) count as kills during another write. After every kill each
``*.pt`` of the run directory is loaded with ``load_checkpoint`` (a refusal is an unusable checkpoint). At the end
the last checkpoint of the killed run is compared with the reference run's (the largest absolute difference of any
weight, the final metrics, the logged training losses), and the temporary files still in the run directory are
listed. Results go to ``benchmarks/results/kill-resume.json``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from edgereid import __version__
from edgereid.data.synthetic import generate_synthetic
from edgereid.errors import EdgeReIDError
from edgereid.recipes import recipe_from_dict, recipe_to_yaml
from edgereid.training.checkpoint import load_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE_NAME = "kill"
# A third of the kills wait for a checkpoint write: often enough to hit many, rarely enough to leave time for others.
WRITE_KILL_SHARE = 1 / 3
POLL_S = 0.0005
SESSION_TIMEOUT_S = 600.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--iters-per-epoch", type=int, default=4)
    parser.add_argument("--backbone", default="plaincnn16")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "kill-resume.json")
    return parser.parse_args()


def recipe_content(data_root: Path, output_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": RECIPE_NAME,
        "seed": 1,
        "data": {"root": str(data_root), "format": "market1501", "size": [64, 32], "sampler": {"p": 4, "k": 2}},
        "augment": {"random_erasing": {"p": 0.5}, "random_patch": {"p": 0.3}},
        "model": {"backbone": {"name": args.backbone}},
        "solver": {
            "lr": 1e-3, "epochs": args.epochs, "iters_per_epoch": args.iters_per_epoch,
            "schedule": {"name": "multistep", "steps": [args.epochs // 2]},
        },
        "train": {
            "output_dir": str(output_dir / "{name}"), "device": "cpu", "eval_period": max(1, args.epochs // 4),
            "log_period": 1, "checkpoint_period": 1, "tensorboard": False,
        },
    }


@dataclass
class Session:
    """One ``edgereid train`` process: how it was stopped and what it left."""

    kind: str  # "start" or "resume"
    moment: str  # "delay", "checkpoint_write" or "none" (left to finish)
    planned_delay_s: float | None
    ran_s: float
    killed: bool
    exit_code: int
    during_checkpoint_write: bool
    interrupted_writes: list[str]
    temporary_files_after: list[str]
    iteration_after: int | None
    unusable_checkpoints: list[str]


def train_command(recipe_path: Path, run_dir: Path, fresh: bool) -> list[str]:
    base = [sys.executable, "-m", "edgereid", "train"]
    return [*base, str(recipe_path), "--json"] if fresh else [*base, "--resume", str(run_dir), "--json"]


def temporary_files(run_dir: Path) -> set[str]:
    try:
        return {entry.name for entry in os.scandir(run_dir) if entry.name.endswith(".tmp")}
    except FileNotFoundError:
        return set()


@dataclass
class Finished:
    """A stopped ``edgereid train`` process."""

    exit_code: int
    stdout: str
    stderr: str
    ran_s: float
    killed: bool
    interrupted_writes: set[str]  # the temporary files it left: writes it did not finish


def is_checkpoint_temporary(name: str) -> bool:
    """``.last.pt.x1y2z3.tmp``: ``atomic_file``'s temporary file for a checkpoint (last, best or an epoch's)."""
    return fnmatch.fnmatch(name, ".*.pt.*.tmp")


def run_session(command: list[str], run_dir: Path, moment: str, delay_s: float | None, writes_to_skip: int) -> Finished:
    """Run ``command`` and kill it (its process group) at ``moment``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = temporary_files(run_dir)
    # Files, not pipes: nobody reads a pipe while the process runs, and a full one would stall it.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=env, start_new_session=True)
        seen: set[str] = set()
        killed = False
        while process.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed >= SESSION_TIMEOUT_S or (moment == "delay" and delay_s is not None and elapsed >= delay_s):
                killed = kill(process)
                break
            if moment == "checkpoint_write":
                seen |= {name for name in temporary_files(run_dir) - before if is_checkpoint_temporary(name)}
                if len(seen) > writes_to_skip:
                    killed = kill(process)
                    break
            time.sleep(POLL_S if moment == "checkpoint_write" else 0.01)
        process.wait()
        ran_s = time.monotonic() - started
        stdout.seek(0)
        stderr.seek(0)
        left = temporary_files(run_dir) - before
        return Finished(process.returncode, stdout.read(), stderr.read(), ran_s, killed, left)


def kill(process: subprocess.Popen[str]) -> bool:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def unusable_checkpoints(run_dir: Path) -> list[str]:
    refused = []
    for path in sorted(run_dir.glob("*.pt")):
        try:
            load_checkpoint(path)
        except EdgeReIDError as error:
            refused.append(f"{path.name}: {error}")
    return refused


def last_iteration(run_dir: Path) -> int | None:
    try:
        return load_checkpoint(run_dir / "last.pt").iteration
    except EdgeReIDError:
        return None


def best_checkpoint(run_dir: Path) -> dict[str, Any]:
    checkpoint = load_checkpoint(run_dir / "best.pt")
    return {"epoch": checkpoint.epoch, "mAP": checkpoint.metrics.get("mAP")}


def logged_training(run_dir: Path) -> list[tuple[int, float]]:
    entries = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(entry["iteration"], entry["loss"]) for entry in entries if entry["kind"] == "train"]


def compare_weights(reference: Path, resumed: Path) -> dict[str, Any]:
    expected = load_checkpoint(reference)
    actual = load_checkpoint(resumed)
    differences = [
        (expected.model_state[name].float() - actual.model_state[name].float()).abs().max().item()
        if expected.model_state[name].numel() else 0.0
        for name in expected.model_state
    ]
    return {
        "same_tensor_names": sorted(expected.model_state) == sorted(actual.model_state),
        "max_abs_weight_difference": max(differences),
        "weights_identical": all(
            torch.equal(expected.model_state[name], actual.model_state[name]) for name in expected.model_state
        ),
        "reference_metrics": expected.metrics,
        "resumed_metrics": actual.metrics,
        "reference_iteration": expected.iteration,
        "resumed_iteration": actual.iteration,
    }


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="edgereid-kill-resume-") as scratch_name:
        scratch = Path(scratch_name)
        data_root = scratch / "synthetic"
        generate_synthetic(data_root, num_ids=16, num_cameras=2, seed=3, size=(64, 32), images_per_id_per_camera=3)
        recipes = {}
        for name in ("reference", "killed"):
            recipes[name] = scratch / f"{name}.yaml"
            recipes[name].write_text(recipe_to_yaml(recipe_from_dict(recipe_content(data_root, scratch / name, args))))
        reference_dir = scratch / "reference" / RECIPE_NAME
        run_dir = scratch / "killed" / RECIPE_NAME

        started = time.monotonic()
        reference_command = train_command(recipes["reference"], reference_dir, True)
        reference = run_session(reference_command, reference_dir, "none", None, 0)
        reference_s = reference.ran_s
        if reference.exit_code != 0:
            raise SystemExit(f"the reference run failed:\n{reference.stderr}")
        reference_summary = json.loads(reference.stdout)
        training_s = float(reference_summary["elapsed_s"])
        startup_s = max(reference_s - training_s, 0.5)
        total_iterations = int(reference_summary["iterations"])
        print(f"reference: {reference_s:.1f} s ({startup_s:.1f} s start-up), {total_iterations} iterations", flush=True)

        write_kills = set(rng.sample(range(args.kills), round(args.kills * WRITE_KILL_SHARE)))
        sessions: list[Session] = []
        kills = 0
        final: Finished | None = None
        while final is None:
            fresh = not (run_dir / "recipe.yaml").exists()
            if fresh and run_dir.exists():
                # Killed before it saved its recipe: nothing to resume, and a new start would pick another name.
                shutil.rmtree(run_dir)
            done = last_iteration(run_dir) or 0
            if kills < args.kills:
                kills_left = args.kills - kills
                moment = "checkpoint_write" if kills in write_kills else "delay"
                remaining_s = training_s * (1 - done / total_iterations)
                # Uniform over a slot that shrinks with the work left, so the kills spread over the whole run; the
                # slot is narrower than each kill's share of it, as start-up times vary on a busy machine and a run
                # that finishes early leaves kills undone.
                delay_s = rng.uniform(0.5 * startup_s, startup_s + remaining_s / (kills_left + 1))
                writes_to_skip = rng.randrange(3)
            else:
                moment, delay_s, writes_to_skip = "none", None, 0
            process = run_session(
                train_command(recipes["killed"], run_dir, fresh), run_dir, moment, delay_s, writes_to_skip
            )
            ran_s, killed = process.ran_s, process.killed
            leftover = temporary_files(run_dir)
            session = Session(
                kind="start" if fresh else "resume",
                moment=moment,
                planned_delay_s=round(delay_s, 3) if moment == "delay" and delay_s is not None else None,
                ran_s=round(ran_s, 2),
                killed=killed,
                exit_code=process.exit_code,
                during_checkpoint_write=any(is_checkpoint_temporary(name) for name in process.interrupted_writes),
                interrupted_writes=sorted(process.interrupted_writes),
                temporary_files_after=sorted(leftover),
                iteration_after=last_iteration(run_dir) if run_dir.exists() else None,
                unusable_checkpoints=unusable_checkpoints(run_dir) if run_dir.exists() else [],
            )
            sessions.append(session)
            print(
                f"{len(sessions):2d} {session.kind:6s} {moment:16s} ran {ran_s:5.1f} s, "
                f"{'killed' if killed else f'exit {process.exit_code}'}"
                f"{' during a checkpoint write' if session.during_checkpoint_write else ''}, "
                f"at iteration {session.iteration_after}, {len(leftover)} temporary files",
                flush=True,
            )
            if killed:
                kills += 1
            elif process.exit_code == 0:
                final = process
            else:
                raise SystemExit(f"session {len(sessions)} failed (exit {process.exit_code}):\n{process.stderr}")
        final_summary = json.loads(final.stdout)
        comparison = compare_weights(reference_dir / "last.pt", run_dir / "last.pt")
        run_dirs = {"reference": reference_dir, "resumed": run_dir}
        best = {name: best_checkpoint(directory) for name, directory in run_dirs.items()}
        checkpoint_names = {name: sorted(path.name for path in directory.glob("*.pt")) for name, directory in run_dirs.items()}
        reference_log, resumed_log = logged_training(reference_dir), logged_training(run_dir)
        total_s = time.monotonic() - started

    killed_sessions = [session for session in sessions if session.killed]
    results = {
        "benchmark": "kill-resume",
        "edgereid": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": args.seed,
        "recipe": {"backbone": args.backbone, "size": [64, 32], "epochs": args.epochs,
                   "iters_per_epoch": args.iters_per_epoch, "checkpoint_period": 1},
        "reference_s": round(reference_s, 1),
        "total_s": round(total_s, 1),
        "kills": len(killed_sessions),
        "kills_at_random_delay": sum(session.moment == "delay" for session in killed_sessions),
        "kills_waiting_for_a_checkpoint_write": sum(
            session.moment == "checkpoint_write" for session in killed_sessions
        ),
        "kills_during_checkpoint_write": sum(session.during_checkpoint_write for session in killed_sessions),
        "kills_during_another_write": sum(
            bool(session.interrupted_writes) and not session.during_checkpoint_write for session in killed_sessions
        ),
        "kills_before_first_checkpoint": sum(session.iteration_after is None for session in killed_sessions),
        "resumes": sum(session.kind == "resume" for session in sessions),
        "sessions": len(sessions),
        "unusable_checkpoints_after_a_kill": sum(len(session.unusable_checkpoints) for session in sessions),
        "temporary_files_left_at_end": sessions[-1].temporary_files_after,
        "final_iterations": {"reference": reference_summary["iterations"], "resumed": final_summary["iterations"]},
        # From the checkpoints: a last session that only finds the run finished evaluates nothing itself.
        "final_metrics": {"reference": comparison["reference_metrics"], "resumed": comparison["resumed_metrics"]},
        "same_final_metrics": comparison["reference_metrics"] == comparison["resumed_metrics"],
        "last_session_summary_metrics": final_summary["last"],
        "same_logged_losses": reference_log == resumed_log,
        "weights": comparison,
        # best.pt and the epoch copies are written after last.pt: a kill between the two is not redone on resume.
        "best_checkpoint": best,
        "same_best_checkpoint": best["reference"] == best["resumed"],
        "missing_checkpoint_files": sorted(set(checkpoint_names["reference"]) - set(checkpoint_names["resumed"])),
        "session_log": [asdict(session) for session in sessions],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"{results['kills']} kills ({results['kills_during_checkpoint_write']} during a checkpoint write), "
        f"{results['resumes']} resumes; max weight difference {comparison['max_abs_weight_difference']}, "
        f"mAP {comparison['reference_metrics'].get('mAP')} vs {comparison['resumed_metrics'].get('mAP')}; "
        f"best.pt epoch {best['reference']['epoch']} vs {best['resumed']['epoch']}; "
        f"{len(results['temporary_files_left_at_end'])} temporary files left -> {args.out}"
    )


if __name__ == "__main__":
    main()
