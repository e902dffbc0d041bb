"""``model.init_from``: fine-tuning an imported model starts from its weights (the classifier re-created for the
new identities); a checkpoint of another model is refused naming the keys that differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from edgereid.cli import cli
from edgereid.data.synthetic import generate_synthetic
from edgereid.errors import ConfigError
from edgereid.recipes import recipe_from_dict
from edgereid.training import load_checkpoint, train
from edgereid.training.evaluate import build_model
from tests.test_import_end_to_end import _torchreid_weights


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An osnet_x0_25 imported with `edgereid import boxmot` at 64×32."""
    base = tmp_path_factory.mktemp("imported")
    weights = base / "osnet_x0_25_msmt17.pt"
    _torchreid_weights(weights)
    checkpoint = base / "imported.pt"
    result = CliRunner().invoke(cli, ["import", "boxmot", str(weights), "--out", str(checkpoint), "--size", "64", "32"])
    assert result.exit_code == 0, result.output
    return checkpoint


def _recipe(root: Path, out: Path, model: dict[str, Any]) -> Any:
    return recipe_from_dict({
        "name": "finetune",
        "seed": 1,
        "data": {"root": str(root), "format": "market1501", "size": [64, 32], "sampler": {"p": 4, "k": 2}},
        "model": model,
        "solver": {"lr": 1e-3, "epochs": 1, "iters_per_epoch": 1, "amp": "none", "schedule": {"name": "constant"}},
        "train": {"output_dir": str(out / "{name}"), "device": "cpu", "eval_period": 5, "tensorboard": False},
    })


def test_fine_tuning_starts_from_the_imported_weights(imported: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from edgereid.training import init_from

    root = tmp_path / "synthetic"
    generate_synthetic(root, num_ids=12, num_cameras=2, seed=3, size=(64, 32), images_per_id_per_camera=3)
    source = load_checkpoint(imported)
    model = {**source.recipe.model.model_dump(mode="json"), "init_from": str(imported)}
    started: dict[str, Any] = {}
    original = init_from.load_init_weights

    def capture(network: torch.nn.Module, config: Any, where: str = "model") -> str:
        line = original(network, config, where)
        started["state"] = {key: value.detach().clone() for key, value in network.state_dict().items()}
        started["line"] = line
        return line

    monkeypatch.setattr(init_from, "load_init_weights", capture)
    result = train(_recipe(root, tmp_path / "runs", model), show_progress=False)
    assert "state" in started, "init_from was not applied"
    assert "classifier re-created" in started["line"] and str(source.path) in started["line"], started["line"]

    # The network training started from embeds as the imported model does.
    reference = build_model(source)
    fine_tuned = load_checkpoint(result.run_dir)
    start = build_model(fine_tuned)
    start.load_state_dict(started["state"])
    start.eval()
    images = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(start(images), reference(images))
    assert fine_tuned.num_classes != source.num_classes  # hence the classifier re-created
    # ... and the run trained from there: the weights moved.
    with torch.no_grad():
        assert not torch.equal(build_model(fine_tuned)(images), reference(images))


def test_init_from_another_model_is_refused(imported: Path, tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    generate_synthetic(root, num_ids=8, num_cameras=2, seed=3, size=(64, 32), images_per_id_per_camera=3)
    recipe = _recipe(root, tmp_path / "runs", {"backbone": {"name": "plaincnn16"}, "init_from": str(imported)})
    with pytest.raises(ConfigError, match=r"holds another model: model\.backbone\.name"):
        train(recipe, show_progress=False)
