"""The benchmarks' model: an untrained ResNet-18 BoT saved as training saves a checkpoint (weights do not change
the cost of inference or calibration, so no training is spent on them)."""

from __future__ import annotations

from pathlib import Path


def untrained_resnet18_checkpoint(work: Path, name: str, data_root: Path, size: tuple[int, int]) -> Path:
    """``work/run/last.pt`` of an untrained ResNet-18 (last stride 1, 751 classes) reading ``data_root``."""
    import torch

    from edgereid.modeling import create_model
    from edgereid.recipes import recipe_from_dict
    from edgereid.training.checkpoint import save_checkpoint

    recipe = recipe_from_dict(
        {
            "name": name,
            "data": {"root": str(data_root), "format": "market1501", "size": list(size)},
            "model": {"backbone": {"name": "resnet18", "last_stride": 1}},
            "train": {"output_dir": str(work / "runs"), "device": "cpu", "flip_test": False},
        }
    )
    torch.manual_seed(0)
    model = create_model(recipe.model, num_classes=751).eval()
    checkpoint = work / "run" / "last.pt"
    save_checkpoint(checkpoint, recipe=recipe, model_state=model.state_dict(), class_pids=list(range(751)), epoch=0,
                    iteration=0, metrics={}, training_state={})
    return checkpoint
