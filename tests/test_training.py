"""Training end to end on tiny synthetic data: run directory contents, evaluation round trip, exact resume,
backbone freeze, multi-process training, and the errors a user meets first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgereid.cli import cli
from edgereid.data.synthetic import generate_synthetic
from edgereid.errors import ConfigError, DataError
from edgereid.recipes import Recipe, recipe_from_dict
from edgereid.training import evaluate_checkpoint, load_checkpoint, train


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_synthetic(root, num_ids=16, num_cameras=2, seed=3, size=(64, 32), images_per_id_per_camera=3)
    return root


def tiny_recipe(root: Path, out: Path, **sections: dict) -> Recipe:
    content: dict = {
        "name": "tiny",
        "seed": 1,
        "data": {"root": str(root), "format": "market1501", "size": [64, 32], "sampler": {"p": 4, "k": 2}},
        "augment": {"random_erasing": {"p": 0.5}, "random_patch": {"p": 0.3}},
        "model": {"backbone": {"name": "resnet18", "last_stride": 1}},
        "solver": {"lr": 1e-3, "epochs": 2, "iters_per_epoch": 3, "schedule": {"name": "multistep", "steps": [1]}},
        "train": {"output_dir": str(out / "{name}"), "device": "cpu", "eval_period": 1, "log_period": 2,
                  "tensorboard": False},
    }
    for section, values in sections.items():
        content[section] = {**content.get(section, {}), **values}
    return recipe_from_dict(content)


def test_training_writes_a_complete_run(synthetic_root: Path, tmp_path: Path) -> None:
    result = train(tiny_recipe(synthetic_root, tmp_path, train={"checkpoint_period": 1}), show_progress=False)
    run = result.run_dir
    assert run == tmp_path / "tiny"
    assert {"recipe.yaml", "metrics.jsonl", "last.pt", "best.pt", "epoch_0001.pt", "epoch_0002.pt"} <= {
        p.name for p in run.iterdir()
    }
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_entries = [e for e in entries if e["kind"] == "train"]
    eval_entries = [e for e in entries if e["kind"] == "eval"]
    assert [e["epoch"] for e in eval_entries] == [1, 2]
    assert train_entries[-1]["iteration"] == 6
    assert {"loss", "loss_ce", "loss_triplet", "lr", "images_per_s"} <= set(train_entries[0])
    assert train_entries[0]["loss"] == pytest.approx(train_entries[0]["loss_ce"] + train_entries[0]["loss_triplet"])
    assert 0.0 < result.last_metrics["mAP"] <= 1.0
    assert result.best_metrics["mAP"] == max(e["mAP"] for e in eval_entries)

    # The checkpoint is self-describing: evaluating it alone gives the numbers training logged for it.
    checkpoint = load_checkpoint(run)
    assert checkpoint.epoch == 2 and checkpoint.iteration == 6 and checkpoint.num_classes == 8
    report = evaluate_checkpoint(run / "last.pt", device="cpu")
    assert report.result.mAP == pytest.approx(eval_entries[-1]["mAP"], abs=1e-6)
    assert report.num_query > 0 and report.num_gallery > 0


def test_a_second_run_gets_its_own_directory(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(synthetic_root, tmp_path, solver={"epochs": 1}, train={"eval_period": 5})
    first = train(recipe, show_progress=False)
    second = train(recipe, show_progress=False)
    assert first.run_dir.name == "tiny" and second.run_dir.name == "tiny-2"


def test_a_failed_run_leaves_no_directory_to_number_around(synthetic_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import edgereid.training.trainer as trainer_module

    def fail(*args: object, **kwargs: object) -> None:
        raise DataError("the data went away")

    recipe = tiny_recipe(synthetic_root, tmp_path, solver={"epochs": 1}, train={"eval_period": 5})
    with monkeypatch.context() as patched:
        patched.setattr(trainer_module._TrainingLoop, "_build_optimization", fail)
        with pytest.raises(DataError, match="went away"):
            train(recipe, show_progress=False)
    assert not (tmp_path / "tiny").exists()
    assert train(recipe, show_progress=False).run_dir.name == "tiny"


def test_a_live_run_cannot_be_resumed_or_reused_by_another(synthetic_root: Path, tmp_path: Path) -> None:
    from edgereid.locking import LockTimeoutError
    from tests.conftest import lock_held_elsewhere

    recipe = tiny_recipe(synthetic_root, tmp_path, solver={"epochs": 1}, train={"eval_period": 5})
    run = train(recipe, show_progress=False).run_dir
    with lock_held_elsewhere(run):  # as the process training in it holds it
        with pytest.raises(LockTimeoutError, match=r"training run '.*tiny' is being written by another process"):
            train(resume=run, show_progress=False)
        # A new run that finds its name's directory empty but being set up elsewhere takes the next name.
        with lock_held_elsewhere(tmp_path / "tiny-2"):
            assert train(recipe, show_progress=False).run_dir.name == "tiny-3"


def test_resume_continues_exactly(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(synthetic_root, tmp_path / "straight", train={"checkpoint_period": 1, "eval_period": 5})
    straight = train(recipe, show_progress=False)
    # Interrupted after epoch 1: a run directory whose last checkpoint is the first epoch's.
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(straight.run_dir / "epoch_0001.pt", interrupted / "last.pt")
    resumed = train(resume=interrupted, show_progress=False)
    assert resumed.iterations == straight.iterations == 6
    assert resumed.start_iteration == 3  # the summary says 3 trained, not 6
    expected = load_checkpoint(straight.run_dir / "last.pt").model_state
    actual = load_checkpoint(interrupted / "last.pt").model_state
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def test_a_run_killed_between_checkpoint_and_copies_makes_the_copies_on_resume(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgereid.training.trainer as trainer_module

    recipe = tiny_recipe(synthetic_root, tmp_path, train={"checkpoint_period": 1, "eval_period": 5})
    copy = trainer_module.atomic_copy

    def killed_at_the_last_copy(source: Path, target: Path) -> None:
        if target.name == "epoch_0002.pt":
            raise KeyboardInterrupt  # where a SIGKILL would stop it
        copy(source, target)

    with monkeypatch.context() as patched:
        patched.setattr(trainer_module, "atomic_copy", killed_at_the_last_copy)
        with pytest.raises(KeyboardInterrupt):
            train(recipe, show_progress=False)
    run = tmp_path / "tiny"
    assert load_checkpoint(run / "last.pt").epoch == 1  # last.pt moves on only once its copies exist
    resumed = train(resume=run, show_progress=False)
    assert resumed.start_iteration == 3 and resumed.last_metrics is not None
    final, copied = load_checkpoint(run / "last.pt"), load_checkpoint(run / "epoch_0002.pt")
    assert final.epoch == copied.epoch == 2
    assert all(torch.equal(final.model_state[key], copied.model_state[key]) for key in final.model_state)
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]  # no half-written file left


def test_resume_refuses_a_different_recipe(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(synthetic_root, tmp_path, solver={"epochs": 1}, train={"eval_period": 5})
    run = train(recipe, show_progress=False).run_dir
    changed = tiny_recipe(synthetic_root, tmp_path, solver={"epochs": 1, "lr": 0.5}, train={"eval_period": 5})
    with pytest.raises(ConfigError, match=r"solver\.lr"):
        train(changed, resume=run, show_progress=False)


def test_frozen_backbone_does_not_move(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(
        synthetic_root, tmp_path, solver={"epochs": 1, "freeze": {"iters": 3, "modules": ["backbone"]}},
        train={"eval_period": 5},
    )
    torch.manual_seed(recipe.seed)
    result = train(recipe, show_progress=False)
    state = load_checkpoint(result.run_dir).model_state
    from edgereid.modeling import create_model

    torch.manual_seed(recipe.seed)
    initial = create_model(recipe.model, num_classes=8).state_dict()
    backbone = [key for key in initial if key.startswith("backbone.") and initial[key].is_floating_point()]
    heads = [key for key in initial if key.startswith("heads.") and key.endswith("weight")]
    assert backbone and heads
    # Weights and BN running statistics alike: a frozen module is also kept in eval mode.
    assert all(torch.equal(state[key], initial[key]) for key in backbone)
    assert any(not torch.equal(state[key], initial[key]) for key in heads)


def test_batch_larger_than_the_data_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(synthetic_root, tmp_path, data={"sampler": {"p": 50, "k": 2}})
    with pytest.raises(ConfigError, match=r"data\.sampler\.p=50 .* has 8; lower data\.sampler\.p to at most 8"):
        train(recipe, show_progress=False)


def test_damaged_checkpoints_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "last.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not an edgereid checkpoint: not a complete zip archive"):
        load_checkpoint(tmp_path)
    torch.save({"weights": torch.zeros(1)}, broken)
    with pytest.raises(DataError, match="not an edgereid checkpoint"):
        load_checkpoint(broken)
    with pytest.raises(DataError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")


def test_cli_train_and_eval(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(synthetic_root, tmp_path, solver={"epochs": 1})
    path = tmp_path / "tiny.yaml"
    from edgereid.recipes import recipe_to_yaml

    path.write_text(recipe_to_yaml(recipe))
    runner = CliRunner()
    trained = runner.invoke(cli, ["train", str(path), "--set", "solver.iters_per_epoch=2", "--json"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["iterations"] == 2
    evaluated = runner.invoke(cli, ["eval", summary["run_dir"], "--flip", "--rerank", "--aqe", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    assert metrics["flip"] and metrics["rerank"] and metrics["aqe"]
    assert 0.0 <= metrics["mAP"] <= 1.0
    bad = runner.invoke(cli, ["train", str(path), "--set", "solver.lr=-1"])
    assert bad.exit_code == 2 and "solver.lr" in bad.output


@pytest.mark.slow
def test_two_process_training_with_gloo(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(synthetic_root, tmp_path, solver={"epochs": 1, "iters_per_epoch": 2}, train={"eval_period": 5})
    path = tmp_path / "tiny.yaml"
    from edgereid.recipes import recipe_to_yaml

    path.write_text(recipe_to_yaml(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "edgereid", "train", str(path), "--json",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    checkpoint = load_checkpoint(tmp_path / "tiny")
    # Each of the two ranks keeps its own sampler and random state for an exact resume.
    assert len(checkpoint.training_state["samplers"]) == 2
    assert {s["world_size"] for s in checkpoint.training_state["samplers"]} == {2}
    assert checkpoint.iteration == 2


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgereid.errors import EdgeReIDError
    from edgereid.losses import ReIDCriterion

    recipe = tiny_recipe(synthetic_root, tmp_path, train={"eval_period": 5})
    calls = {"n": 0}
    original = ReIDCriterion.__call__

    def poisoned(self: ReIDCriterion, outputs: dict, targets: torch.Tensor) -> tuple:
        calls["n"] += 1
        total, parts = original(self, outputs, targets)
        # The second epoch's second step diverges.
        return (total * float("nan"), parts) if calls["n"] == 5 else (total, parts)

    monkeypatch.setattr(ReIDCriterion, "__call__", poisoned)
    with pytest.raises(EdgeReIDError, match=r"the loss became nan by iteration 6 \(epoch 2\)"):
        train(recipe, show_progress=False)
    kept = load_checkpoint(tmp_path / "tiny")
    assert kept.epoch == 1 and all(torch.isfinite(v).all() for v in kept.model_state.values() if v.is_floating_point())


def test_a_crafted_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "edgereid-checkpoint", "payload": Payload()}, tmp_path / "last.pt")
    with pytest.raises(DataError, match="not an edgereid checkpoint: it holds a pickled object of type"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_a_checkpoint_of_another_architecture_is_named(synthetic_root: Path, tmp_path: Path) -> None:
    from edgereid.modeling import create_model
    from edgereid.training.checkpoint import load_model_state

    run = train(tiny_recipe(synthetic_root, tmp_path, solver={"epochs": 1}, train={"eval_period": 5}), show_progress=False)
    checkpoint = load_checkpoint(run.run_dir)
    other = tiny_recipe(synthetic_root, tmp_path, model={"backbone": {"name": "resnet34"}})
    with pytest.raises(DataError, match="does not fit the model"):
        load_model_state(create_model(other.model, num_classes=8), checkpoint)
    wider = create_model(checkpoint.recipe.model, num_classes=9)
    with pytest.raises(DataError, match="does not fit the model"):
        load_model_state(wider, checkpoint)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(synthetic_root: Path, tmp_path: Path) -> None:
    from edgereid.recipes import recipe_to_yaml

    recipe = tiny_recipe(synthetic_root, tmp_path / "runs", solver={"epochs": 3, "iters_per_epoch": 2},
                         train={"eval_period": 3})
    path = tmp_path / "tiny.yaml"
    path.write_text(recipe_to_yaml(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "edgereid", "train"]
    straight = subprocess.run([*base, str(path), "--json"], capture_output=True, text=True, env=env, check=True)
    expected = json.loads(straight.stdout)

    run_dir = tmp_path / "runs" / "tiny-2"
    process = subprocess.Popen([*base, str(path), "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    # Killed after the first checkpoint and before the last one: mid-epoch, maybe mid-save.
    deadline = 120.0
    import time

    started = time.monotonic()
    while not (run_dir / "last.pt").exists() and time.monotonic() - started < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert (run_dir / "recipe.yaml").exists()
    resumed = subprocess.run([*base, "--resume", str(run_dir), "--json"], capture_output=True, text=True, env=env,
                             check=True)
    actual = json.loads(resumed.stdout)
    assert actual["iterations"] == expected["iterations"] == 6
    assert actual["last"]["mAP"] == expected["last"]["mAP"]
    assert actual["last"]["rank1"] == expected["last"]["rank1"]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in logged if e["kind"] == "train"] == [2, 4, 6]
