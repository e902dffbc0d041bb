"""Mutual learning and distillation: the losses against hand-computed values, gradients that reach each network
only through its own path, multi-network checkpoints taken apart by name, and the errors a mismatched teacher
or recipe gets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from edgereid.cli import cli
from edgereid.data.synthetic import generate_synthetic
from edgereid.errors import ConfigError, DataError
from edgereid.losses import distillation_kl_loss
from edgereid.modeling import ReIDModel, create_model
from edgereid.recipes import Recipe, recipe_from_dict
from edgereid.training import evaluate_checkpoint, load_checkpoint, train
from edgereid.training.teaching import TrainingObjective, teacher_outputs
from tests.test_training import tiny_recipe

LN = math.log
PEER = {"backbone": {"name": "mobilenetv3_small"}}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_synthetic(root, num_ids=16, num_cameras=2, seed=3, size=(64, 32), images_per_id_per_camera=3)
    return root


@pytest.fixture(scope="module")
def teacher_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained single-network run to distil from."""
    out = tmp_path_factory.mktemp("teacher")
    recipe = tiny_recipe(data_root, out, solver={"epochs": 1, "iters_per_epoch": 2}, train={"eval_period": 5})
    return train(recipe.model_copy(update={"name": "teacher"}), show_progress=False).run_dir


def mutual_recipe(root: Path, out: Path, **mutual: Any) -> Recipe:
    recipe = tiny_recipe(root, out, solver={"epochs": 1, "iters_per_epoch": 2})
    content = recipe.model_dump(mode="json")
    content["mutual"] = {"student": "r18", "peers": {"small": PEER}, **mutual}
    return recipe_from_dict(content)


def distill_recipe(root: Path, out: Path, teacher: Path, model: dict | None = None, **distill: Any) -> Recipe:
    recipe = tiny_recipe(root, out, solver={"epochs": 1, "iters_per_epoch": 2}, train={"eval_period": 5})
    content = recipe.model_dump(mode="json")
    content["model"] = model or PEER
    content["distill"] = {"teacher": str(teacher), **distill}
    return recipe_from_dict(content)


# --- the losses by hand ----------------------------------------------------------------------------------------


def hand_outputs() -> dict[str, dict[str, torch.Tensor]]:
    # a: p = (1/4, 3/4), (1/2, 1/2); b: p = (1/2, 1/2), (1/4, 3/4).
    # Global features: a's two samples lie 5 apart, b's 10 apart.
    return {
        "a": {
            "logits": torch.tensor([[0.0, LN(3)], [0.0, 0.0]], requires_grad=True),
            "global_feat": torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True),
        },
        "b": {
            "logits": torch.tensor([[0.0, 0.0], [0.0, LN(3)]], requires_grad=True),
            "global_feat": torch.tensor([[0.0, 0.0], [6.0, 8.0]], requires_grad=True),
        },
    }


def test_mutual_losses_match_hand_computed_values(data_root: Path, tmp_path: Path) -> None:
    # KL(b || a): sample 0: 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln(4/3) = 0.143841
    #             sample 1: 1/4 ln(1/4 / 1/2) + 3/4 ln(3/4 / 1/2) = 3/4 ln(3/2) - 1/4 ln 2 = 0.130812
    #             batch mean 0.137327; times kl_weight 0.01. KL(a || b) is the mirror image: the same value.
    # Metric: distances (0, 5; 5, 0) against (0, 10; 10, 0): (25 + 25) / 4 = 12.5; times metric_weight 0.001.
    recipe = mutual_recipe(data_root, tmp_path, student="a", peers={"b": PEER})
    assert (recipe.mutual.kl_weight, recipe.mutual.metric_weight) == (0.01, 0.001)  # the seed's defaults
    outputs = hand_outputs()
    targets = torch.tensor([0, 1])
    for value in outputs.values():
        value["bn_feat"] = value["global_feat"]
    _, parts = TrainingObjective(recipe)(outputs, targets)
    kl = (0.5 * LN(4 / 3) + 0.75 * LN(1.5) - 0.25 * LN(2)) / 2
    assert kl == pytest.approx(0.137327, abs=1e-6)
    for name in ("a", "b"):
        assert parts[f"kl/{name}"].item() == pytest.approx(0.01 * kl, rel=1e-5)
        assert parts[f"metric_mutual/{name}"].item() == pytest.approx(0.001 * 12.5, rel=1e-5)
        assert {f"ce/{name}", f"triplet/{name}"} <= set(parts)

    # A temperature of 2 on sample 0 only: softmax(logits / 2) = (1, sqrt 3) / (1 + sqrt 3) against (1/2, 1/2):
    # KL = 1/2 ln((1/2) (1 + r3)) + 1/2 ln((1/2) (1 + r3) / r3); times T^2 = 4.
    tempered = mutual_recipe(data_root, tmp_path, student="a", peers={"b": PEER}, temperature=2.0, kl_weight=1.0)
    first = {name: {key: value[:1] for key, value in out.items()} for name, out in outputs.items()}
    _, parts = TrainingObjective(tempered)(first, targets[:1])
    r3 = math.sqrt(3)
    expected = 4 * (0.5 * LN(0.5 * (1 + r3)) + 0.5 * LN(0.5 * (1 + r3) / r3))
    assert parts["kl/a"].item() == pytest.approx(expected, rel=1e-5)


def test_a_third_peer_averages_the_mutual_losses(data_root: Path, tmp_path: Path) -> None:
    recipe = mutual_recipe(data_root, tmp_path, student="a", peers={"b": PEER, "c": PEER}, kl_weight=1.0)
    outputs = hand_outputs()
    outputs["c"] = {key: value.detach().clone() for key, value in outputs["a"].items()}  # a's twin: KL 0
    for value in outputs.values():
        value["bn_feat"] = value["global_feat"]
    _, parts = TrainingObjective(recipe)(outputs, torch.tensor([0, 1]))
    kl = (0.5 * LN(4 / 3) + 0.75 * LN(1.5) - 0.25 * LN(2)) / 2
    assert parts["kl/a"].item() == pytest.approx(kl / 2, rel=1e-5)  # (KL(b||a) + 0) / 2
    assert parts["metric_mutual/a"].item() == pytest.approx(0.001 * 12.5 / 2, rel=1e-5)


def test_distillation_kl_forward_and_symmetric() -> None:
    student = torch.tensor([[0.0, LN(3)], [1.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [0.0, 2.0]], requires_grad=True)
    p_s, p_t = F.softmax(student.detach(), dim=1), F.softmax(teacher.detach(), dim=1)
    forward = (p_t * (p_t / p_s).log()).sum(dim=1).mean()
    reverse = (p_s * (p_s / p_t).log()).sum(dim=1).mean()
    assert distillation_kl_loss(student, teacher).item() == pytest.approx(forward.item(), rel=1e-6)
    symmetric = distillation_kl_loss(student, teacher, symmetric=True)
    assert symmetric.item() == pytest.approx(0.5 * (forward + reverse).item(), rel=1e-6)
    symmetric.backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


# --- gradient paths ----------------------------------------------------------------------------------------------


def test_each_network_gets_gradients_only_from_its_own_losses(data_root: Path, tmp_path: Path) -> None:
    recipe = mutual_recipe(data_root, tmp_path, kl_weight=1.0, metric_weight=1.0)
    torch.manual_seed(0)
    networks = {name: create_model(config, num_classes=4) for name, config in recipe.networks().items()}
    assert list(networks) == ["r18", "small"]
    images, targets = torch.randn(4, 3, 64, 32), torch.tensor([0, 0, 1, 1])
    for network in networks.values():
        network.train()
    outputs = {name: network(images, targets) for name, network in networks.items()}
    totals, _ = TrainingObjective(recipe)(outputs, targets)  # type: ignore[arg-type]
    totals["r18"].backward()
    assert all(p.grad is None for p in networks["small"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in networks["r18"].parameters())


def test_the_teacher_gets_no_gradient(data_root: Path, tmp_path: Path, teacher_run: Path) -> None:
    recipe = distill_recipe(data_root, tmp_path, teacher_run, kl_weight=1.0, embedding_weight=1.0, symmetric=True)
    torch.manual_seed(0)
    teacher = create_model(load_checkpoint(teacher_run).recipe.model, num_classes=4).eval().requires_grad_(False)
    student = create_model(recipe.model, num_classes=4).train()
    objective = TrainingObjective(recipe, student.feature_dim, teacher)
    assert objective.projection is not None and objective.projection.in_features == 576
    assert objective.projection.out_features == 512
    images, targets = torch.randn(4, 3, 64, 32), torch.tensor([0, 0, 1, 1])
    totals, parts = objective({"model": student(images, targets)}, targets, teacher_outputs(teacher, images))  # type: ignore[dict-item]
    assert {"ce", "triplet", "kl", "metric_mutual", "embedding"} <= set(parts)
    totals["model"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert objective.projection.weight.grad is not None


# --- training, checkpoints, evaluation by name -----------------------------------------------------------------


def test_mutual_run_keeps_every_network_and_evaluates_each_by_name(data_root: Path, tmp_path: Path) -> None:
    result = train(mutual_recipe(data_root, tmp_path), show_progress=False)
    entries = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(e for e in entries if e["kind"] == "train")
    for name in ("r18", "small"):
        assert {f"loss_ce/{name}", f"loss_triplet/{name}", f"loss_kl/{name}", f"loss_metric_mutual/{name}"} <= set(logged)
    assert logged["loss"] == pytest.approx(sum(v for k, v in logged.items() if k.startswith("loss_")), rel=1e-5)
    evaluated = next(e for e in entries if e["kind"] == "eval")
    assert {"mAP", "rank1", "mAP/small", "rank1/small"} <= set(evaluated)

    checkpoint = load_checkpoint(result.run_dir)
    assert checkpoint.student == "r18" and checkpoint.network_names == ["r18", "small"]
    assert any(key.startswith("backbone.") for key in checkpoint.peer_states["small"])
    payload = torch.load(result.run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert payload["student"] == "r18" and set(payload["peers"]) == {"small"}

    student = evaluate_checkpoint(result.run_dir, device="cpu")
    peer = evaluate_checkpoint(result.run_dir, device="cpu", network="small")
    assert student.network == "r18" and peer.network == "small"
    assert student.result.mAP == pytest.approx(evaluated["mAP"], abs=1e-6)
    assert peer.result.mAP == pytest.approx(evaluated["mAP/small"], abs=1e-6)
    with pytest.raises(ConfigError, match=r"no network 'big'; it holds r18, small \(student: r18\)"):
        evaluate_checkpoint(result.run_dir, device="cpu", network="big")
    runner = CliRunner()
    by_name = runner.invoke(cli, ["eval", str(result.run_dir), "--network", "small", "--json"])
    assert by_name.exit_code == 0, by_name.output
    assert json.loads(by_name.stdout)["network"] == "small"
    unknown = runner.invoke(cli, ["eval", str(result.run_dir), "--network", "big"])
    assert unknown.exit_code != 0 and "r18, small" in unknown.output


def test_checkpoints_from_before_mutual_learning_still_load(teacher_run: Path, tmp_path: Path) -> None:
    payload = torch.load(teacher_run / "last.pt", map_location="cpu", weights_only=True)
    del payload["student"], payload["peers"]
    for key in ("mutual", "distill"):
        payload["recipe"].pop(key)
    torch.save(payload, tmp_path / "old.pt")
    checkpoint = load_checkpoint(tmp_path / "old.pt")
    assert checkpoint.student == "model" and checkpoint.network_names == ["model"]
    assert checkpoint.recipe.mutual is None


def test_distillation_trains_the_student_and_leaves_the_teacher_alone(
    data_root: Path, tmp_path: Path, teacher_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgereid.training import trainer

    loaded: list[ReIDModel] = []
    original = trainer.load_teacher

    def spying(*args: Any) -> ReIDModel:
        loaded.append(original(*args))
        return loaded[-1]

    monkeypatch.setattr(trainer, "load_teacher", spying)
    recipe = distill_recipe(data_root, tmp_path, teacher_run, kl_weight=1.0, temperature=4.0, embedding_weight=1.0)
    result = train(recipe, show_progress=False)
    teacher_state = load_checkpoint(teacher_run).model_state
    assert all(torch.equal(loaded[0].state_dict()[key], value) for key, value in teacher_state.items())
    entries = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(e for e in entries if e["kind"] == "train")
    assert {"loss_ce", "loss_kl", "loss_metric_mutual", "loss_embedding"} <= set(logged)
    checkpoint = load_checkpoint(result.run_dir)
    # The projection trains with the student but is not part of the exported network.
    assert checkpoint.network_names == ["model"] and not any("projection" in key for key in checkpoint.model_state)
    assert checkpoint.training_state["projection"]["weight"].shape == (512, 576)


# --- errors --------------------------------------------------------------------------------------------------------


def test_a_teacher_of_other_classes_or_input_size_is_refused(
    data_root: Path, tmp_path: Path, teacher_run: Path
) -> None:
    other = tmp_path / "other"
    generate_synthetic(other, num_ids=12, num_cameras=2, seed=4, size=(64, 32), images_per_id_per_camera=3)
    recipe = distill_recipe(other, tmp_path, teacher_run)
    with pytest.raises(ConfigError, match=r"classifies 8 identities, the student's training data has 6"):
        train(recipe, show_progress=False)
    content = distill_recipe(data_root, tmp_path, teacher_run).model_dump(mode="json")
    content["data"]["size"] = [80, 40]
    with pytest.raises(ConfigError, match=r"input size 64×32, the student's data\.size is 80×40"):
        train(recipe_from_dict(content), show_progress=False)
    narrow = distill_recipe(data_root, tmp_path, teacher_run, embedding_weight=1.0, embedding_projection=False)
    with pytest.raises(ConfigError, match=r"student's embedding has 576 dimensions, the teacher's 512"):
        train(narrow, show_progress=False)


def test_a_teacher_checkpoint_that_does_not_fit_its_recipe_is_named(
    data_root: Path, tmp_path: Path, teacher_run: Path
) -> None:
    payload = torch.load(teacher_run / "last.pt", map_location="cpu", weights_only=True)
    payload["recipe"]["model"]["backbone"]["name"] = "resnet34"
    forged = tmp_path / "forged.pt"
    torch.save(payload, forged)
    with pytest.raises(DataError, match=r"distill\.teacher: checkpoint '.*forged\.pt' does not fit the model"):
        train(distill_recipe(data_root, tmp_path, forged), show_progress=False)
    with pytest.raises(DataError, match=r"distill\.teacher: checkpoint '.*missing' does not exist"):
        train(distill_recipe(data_root, tmp_path, tmp_path / "missing"), show_progress=False)
    with pytest.raises(ConfigError, match=r"no network 'r50'; it holds model"):
        train(distill_recipe(data_root, tmp_path, teacher_run, teacher_network="r50"), show_progress=False)


def test_recipe_validation(data_root: Path, tmp_path: Path, teacher_run: Path) -> None:
    content = mutual_recipe(data_root, tmp_path).model_dump(mode="json")
    with pytest.raises(ConfigError, match="either mutual .* or distill .*, not both"):
        recipe_from_dict({**content, "distill": {"teacher": str(teacher_run)}})
    with pytest.raises(ConfigError, match="at least 2 networks"):
        recipe_from_dict({**content, "mutual": {"student": "r18", "peers": {}}})
    with pytest.raises(ConfigError, match="mutual.peers names 'r18', which is the student's name"):
        recipe_from_dict({**content, "mutual": {"student": "r18", "peers": {"r18": PEER}}})
    with pytest.raises(ConfigError, match=r"mutual.peers names \['r 50'\]"):
        recipe_from_dict({**content, "mutual": {"student": "r18", "peers": {"r 50": PEER}}})
    with pytest.raises(ConfigError, match=r"mutual\.kl_weight"):
        recipe_from_dict({**content, "mutual": {"peers": {"small": PEER}, "kl_weight": -1}})
    recipe = recipe_from_dict(content)
    assert recipe.student == "r18" and list(recipe.networks()) == ["r18", "small"]


@pytest.mark.slow
def test_without_mutual_losses_the_student_trains_exactly_as_alone(data_root: Path, tmp_path: Path) -> None:
    """Building peers, and their forward passes, draw none of the random numbers the student's training uses
    (augmentation and sampling have generators of their own): with both mutual weights at 0 the student ends bit for
    bit where it ends alone, so benchmarks/bench_mutual.py compares runs that differ by the mutual losses alone."""
    taught = train(mutual_recipe(data_root, tmp_path / "taught", kl_weight=0.0, metric_weight=0.0), show_progress=False)
    content = mutual_recipe(data_root, tmp_path / "alone").model_dump(mode="json")
    del content["mutual"]
    alone = train(recipe_from_dict(content), show_progress=False)
    taught_state, alone_state = load_checkpoint(taught.run_dir).model_state, load_checkpoint(alone.run_dir).model_state
    assert taught_state.keys() == alone_state.keys()
    for key, value in alone_state.items():
        assert torch.equal(taught_state[key], value), key


def test_mutual_resume_continues_exactly(data_root: Path, tmp_path: Path) -> None:
    import shutil

    recipe = mutual_recipe(data_root, tmp_path / "straight")
    content = recipe.model_dump(mode="json")
    content["solver"]["epochs"] = 2
    content["train"].update({"checkpoint_period": 1, "eval_period": 5})
    straight = train(recipe_from_dict(content), show_progress=False)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(straight.run_dir / "epoch_0001.pt", interrupted / "last.pt")
    train(resume=interrupted, show_progress=False)
    expected, actual = load_checkpoint(straight.run_dir), load_checkpoint(interrupted)
    for name in expected.network_names:
        expected_state, actual_state = expected.network(name)[2], actual.network(name)[2]
        for key, value in expected_state.items():
            assert torch.equal(actual_state[key], value), (name, key)


# --- the benchmark's bookkeeping ----------------------------------------------------------------------------------


def load_bench_mutual() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_mutual.py"
    spec = importlib.util.spec_from_file_location("bench_mutual", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_mutual_records_its_teacher_and_refuses_a_changed_one(
    data_root: Path, tmp_path: Path, teacher_run: Path
) -> None:
    import hashlib
    import shutil

    from edgereid.recipes import recipe_to_yaml

    bench = load_bench_mutual()
    teacher = tmp_path / "teacher.pt"
    shutil.copy(teacher_run / "last.pt", teacher)
    taught = distill_recipe(data_root, tmp_path, teacher, kl_weight=1.0).model_dump(mode="json")
    taught["train"]["eval_period"] = 1
    alone = {key: value for key, value in taught.items() if key != "distill"}
    files = {}
    for arm, content in (("alone", alone), ("taught", taught)):
        files[arm] = tmp_path / f"{arm}.yaml"
        files[arm].write_text(recipe_to_yaml(recipe_from_dict(content)))
    out = tmp_path / "result.json"
    arms = ["--alone", str(files["alone"]), "--taught", str(files["taught"]), "--out", str(out)]

    first = bench.main([*arms, "--seeds", "0"])
    recorded = first["runs"]["taught"][0]["teacher"]
    assert recorded["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert first["summary"]["teachers"] == [{**recorded, "seeds": [0]}]
    gain = first["summary"]["student_mAP_gain_points"]["per_seed"][0]
    assert gain == round(first["runs"]["taught"][0]["student"]["mAP"] - first["runs"]["alone"][0]["student"]["mAP"], 2)

    retrain = tiny_recipe(data_root, tmp_path / "retrained", solver={"epochs": 1, "iters_per_epoch": 2},
                          train={"eval_period": 5})
    retrained = train(retrain.model_copy(update={"seed": 2}), show_progress=False)
    shutil.copy(retrained.run_dir / "last.pt", teacher)
    before = out.read_text()
    with pytest.raises(SystemExit, match="seed 0 was taught with teacher sha256 .*--other-teacher"):
        bench.main([*arms, "--seeds", "0,1", "--append"])
    assert out.read_text() == before

    second = bench.main([*arms, "--seeds", "0,1", "--append", "--other-teacher"])
    assert [run["seed"] for run in second["runs"]["taught"]] == [0, 1]
    assert [teacher["seeds"] for teacher in second["summary"]["teachers"]] == [[0], [1]]
    assert second["runs"]["taught"][0]["teacher"] == recorded  # the earlier run keeps the teacher it learned from
