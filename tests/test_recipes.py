"""Recipes: every shipped one validates; mistakes fail before training with the key path and a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgereid.errors import ConfigError
from edgereid.recipes import load_recipe, recipe_from_dict, recipe_to_yaml, shipped_recipes

SHIPPED = [
    "quickstart",
    "bot_r50",
    "bot_r50_ibn",
    "sbs_r50_ibn",
    "aligned_r50",
    "student_r18",
    "student_mobilenetv2",
    "student_efficientnet_lite0",
    "mutual_r50_ibn_mobilenetv2",
    "distill_r18",
    "distill_efficientnet_lite0",
    "distill_mobilenetv2",
    "quickstart_mutual",
    "student_mobilenetv2_cpu",
    "mutual_mobilenetv2_cpu",
    "mutual_mobilenetv2_pair_cpu",
    "teacher_mobilenetv2_cpu",
    "distill_mobilenetv2_cpu",
]


def write_recipe(tmp_path: Path, content: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    return path


def minimal(**extra: object) -> dict:
    return {"name": "t", "data": {"root": "data/x"}, **extra}


def test_every_shipped_recipe_validates() -> None:
    assert set(SHIPPED) <= set(shipped_recipes())
    for name in SHIPPED:
        recipe = load_recipe(name)
        assert recipe.name == name


def test_shipped_recipes_carry_their_distinguishing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEREID_TEACHER", raising=False)  # the recipes' default teachers, not a user's
    sbs = load_recipe("sbs_r50_ibn")
    assert sbs.model.backbone.ibn == "a" and sbs.model.backbone.non_local == [2, 3]
    assert sbs.model.pooling == "gem_learnable" and sbs.model.classifier.kind == "circle"
    assert sbs.augment.auto_augment.p > 0 and sbs.solver.freeze.iters > 0
    assert sbs.solver.schedule.name == "cosine" and sbs.solver.schedule.delay_epochs > 0
    aligned = load_recipe("aligned_r50")
    assert aligned.model.local_branch is not None and aligned.losses.local_triplet.weight > 0
    mutual = load_recipe("mutual_r50_ibn_mobilenetv2")
    assert mutual.mutual is not None and (mutual.mutual.kl_weight, mutual.mutual.metric_weight) == (0.01, 0.001)
    assert {name: config.backbone.name for name, config in mutual.networks().items()} == {
        "mnv2": "mobilenetv2", "r50_ibn": "resnet50"
    }
    for student in ("r18", "efficientnet_lite0", "mobilenetv2"):
        distill = load_recipe(f"distill_{student}")
        assert distill.distill is not None and distill.model.backbone.name == student.replace("r18", "resnet18")
        assert distill.data.size == load_recipe("bot_r50_ibn").data.size  # the default teacher's input size
    cpu_student = load_recipe("student_mobilenetv2_cpu")
    assert cpu_student.model == load_recipe("student_mobilenetv2").model
    assert cpu_student.data.size == (128, 64) and cpu_student.train.device == "cpu"
    # The CPU mutual recipes are their student's recipe plus a peer, nothing else: each pair measures the peer alone.
    for name, peers in [
        ("mutual_mobilenetv2_cpu", {"mnv2": "mobilenetv2", "effl0": "efficientnet_lite0"}),
        ("mutual_mobilenetv2_pair_cpu", {"mnv2": "mobilenetv2", "mnv2_peer": "mobilenetv2"}),
    ]:
        cpu_mutual = load_recipe(name)
        assert cpu_mutual.mutual is not None
        assert {net: config.backbone.name for net, config in cpu_mutual.networks().items()} == peers
        assert cpu_mutual.model_copy(update={"name": cpu_student.name, "description": cpu_student.description,
                                             "mutual": None}) == cpu_student
    pair = load_recipe("mutual_mobilenetv2_pair_cpu").networks()
    assert pair["mnv2_peer"] == pair["mnv2"]  # the same network, only its initialisation differs
    # The CPU teacher is the student trained longer; the distillation recipe adds the teacher and nothing else.
    teacher = load_recipe("teacher_mobilenetv2_cpu")
    assert teacher.model == cpu_student.model and teacher.data == cpu_student.data
    assert teacher.solver == cpu_student.solver.model_copy(update={"epochs": 21})
    distill = load_recipe("distill_mobilenetv2_cpu")
    assert distill.distill is not None and str(distill.distill.teacher).endswith("teacher_mobilenetv2_cpu/best.pt")
    assert distill.model_copy(update={"name": cpu_student.name, "description": cpu_student.description,
                                      "distill": None}) == cpu_student
    # Inherited from the base, overridden where the child says so.
    assert load_recipe("bot_r50_ibn").data.sampler.p == 16


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    write_recipe(tmp_path, {**minimal(), "solver": {"lr": 0.01, "epochs": 5}}, "base.yaml")
    child = write_recipe(tmp_path, {"_base_": "base.yaml", "name": "child", "solver": {"epochs": 7}})
    recipe = load_recipe(child, ["solver.schedule.steps=[2, 4]", "model.backbone.name=resnet18"])
    assert recipe.name == "child"
    assert recipe.solver.lr == 0.01 and recipe.solver.epochs == 7
    assert recipe.solver.schedule.steps == [2, 4]
    assert recipe.model.backbone.name == "resnet18"


def test_environment_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_recipe(tmp_path, {"name": "t", "data": {"root": "${MY_DATA:-fallback}/set"}})
    assert str(load_recipe(path).data.root) == "fallback/set"
    monkeypatch.setenv("MY_DATA", "/data")
    assert str(load_recipe(path).data.root) == "/data/set"


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe("sbs_r50_ibn")
    again = recipe_from_dict(yaml.safe_load(recipe_to_yaml(recipe)))
    assert again == recipe


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (minimal(solver={"lrr": 0.1}), ["solver.lrr", "did you mean 'solver.lr'"]),
        (minimal(solver={"lr": -1}), ["solver.lr", "greater than 0", "-1"]),
        (minimal(solver={"lr": float("inf")}), ["solver.lr", "finite number", "inf"]),
        (minimal(augment={"random_erasing": {"p": float("nan")}}), ["augment.random_erasing.p", "finite number"]),
        (minimal(model={"backbone": {"name": "resnet5"}}), ["model.backbone.name", "resnet50"]),
        (minimal(data={"root": "x", "sampler": {"p": "many"}}), ["data.sampler.p", "'many'"]),
        (minimal(solver={"epochs": 10, "schedule": {"steps": [5, 20]}}), ["[20]", "after the last epoch"]),
        (minimal(augment={"flip": {"p": 1.5}}), ["augment.flip.p", "1.5"]),
        (minimal(losses={"ce": {"weight": 0}, "triplet": {"weight": 0}}), ["every loss has weight 0"]),
        ({"data": {"root": "x"}}, ["name", "Field required"]),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, content: dict, expected: list[str]) -> None:
    path = write_recipe(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_unknown_recipe_name_lists_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="quickstart"):
        load_recipe("quickstrat")


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_recipe("quickstart", ["solver.lr"])


def test_inheritance_loop_is_reported(tmp_path: Path) -> None:
    write_recipe(tmp_path, {"_base_": "b.yaml", "name": "a"}, "a.yaml")
    write_recipe(tmp_path, {"_base_": "a.yaml", "name": "b"}, "b.yaml")
    with pytest.raises(ConfigError, match="loops"):
        load_recipe(tmp_path / "a.yaml")
