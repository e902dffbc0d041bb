"""Small real artefacts that several test modules need: a checkpoint on tiny synthetic data and its bundle."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgereid.bundle_format import MANIFEST_NAME, manifest_text
from edgereid.data.synthetic import generate_synthetic
from edgereid.export import ExportBundle, export_checkpoint
from edgereid.modeling import create_model
from edgereid.recipes import Recipe, recipe_from_dict
from edgereid.training.checkpoint import save_checkpoint

SIZE = (64, 32)


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding has something to get wrong."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                assert module.running_mean is not None and module.running_var is not None
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_((torch.rand(n, generator=generator) - 0.5) * 0.4)
    return model.eval()


def tiny_recipe(root: Path, ibn: str | None = None, backbone: str = "resnet18") -> Recipe:
    return recipe_from_dict(
        {
            "name": "tiny",
            "seed": 1,
            "data": {"root": str(root), "format": "market1501", "size": list(SIZE), "sampler": {"p": 4, "k": 2}},
            "model": {"backbone": {"name": backbone, "last_stride": 1, "ibn": ibn}},
            "train": {"output_dir": str(root.parent / "runs"), "device": "cpu", "flip_test": True},
        }
    )


def make_checkpoint(base: Path, ibn: str | None = "a", backbone: str = "resnet18") -> Path:
    """``base/run/last.pt``: an untrained network with random norms on ``base/synthetic`` (16 identities, 2
    cameras), saved as training saves one."""
    root = base / "synthetic"
    generate_synthetic(root, num_ids=16, num_cameras=2, seed=3, size=SIZE, images_per_id_per_camera=3)
    recipe = tiny_recipe(root, ibn=ibn, backbone=backbone)
    torch.manual_seed(0)
    model = randomise_norms(create_model(recipe.model, num_classes=8))
    path = base / "run" / "last.pt"
    save_checkpoint(path, recipe=recipe, model_state=model.state_dict(), class_pids=list(range(8)), epoch=3,
                    iteration=9, metrics={}, training_state={})
    return path


def make_bundle(base: Path, precisions: tuple[str, ...] = ("fp32",), verify: bool = False) -> ExportBundle:
    """``base/bundle``, exported from :func:`make_checkpoint`."""
    return export_checkpoint(make_checkpoint(base), base / "bundle", precisions=precisions, verify=verify)


def make_small_bundle(base: Path) -> ExportBundle:
    """``base/bundle``: an FP32 bundle of an untrained ``plaincnn16`` (128-d embeddings, a 1 MB model), for tests
    that need a real bundle but not a ResNet's."""
    checkpoint = make_checkpoint(base, ibn=None, backbone="plaincnn16")
    return export_checkpoint(checkpoint, base / "bundle", precisions=("fp32",))


def damaged_copy(bundle: Path, destination: Path, change: Callable[[dict[str, Any]], object]) -> Path:
    """A copy of ``bundle`` at ``destination`` (its files hard-linked where the file system allows) whose manifest
    ``change`` has altered in place."""
    destination.mkdir(parents=True)
    for file in bundle.iterdir():
        if file.name != MANIFEST_NAME:
            try:
                os.link(file, destination / file.name)
            except OSError:
                shutil.copy2(file, destination / file.name)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    change(manifest)
    (destination / MANIFEST_NAME).write_text(manifest_text(manifest))
    return destination
