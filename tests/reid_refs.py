"""The reference libraries of the importers' equality tests (fastreid, torchreid), and models with random weights.

.ci/setup-env installs them with --no-deps into VENV/reid-refs, outside the environment (their own pins, such as
torch==1.13.1, cannot hold beside this torch), so they are put on sys.path here, after everything installed. Where
that folder is missing the tests skip, saying how to install it; with EDGEREID_REQUIRE_REID_REFS=1 they fail.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

REID_REFS = Path(sys.prefix) / "reid-refs"


def reference_library(module: str) -> ModuleType:
    if REID_REFS.is_dir() and str(REID_REFS) not in sys.path:
        sys.path.append(str(REID_REFS))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchreid: "Cython evaluation is unavailable"; fastreid: deprecations
            return importlib.import_module(module)
    except ImportError as error:
        if os.environ.get("EDGEREID_REQUIRE_REID_REFS"):
            raise
        pytest.skip(
            f"{module} not importable ({error}); install it with `.ci/setup-env VENV` or "
            f"`pip install --no-deps --target {REID_REFS} fastreid==1.4.0 torchreid==0.2.5`"
        )


def randomize(model: nn.Module, batch: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random norm affines (non-local output norms included, which start at zero, kept small) and BN statistics measured on
    ``batch``, so every layer matters and activations keep a sane scale; returns ``model`` in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not value.dtype.is_floating_point or value.dim() != 1 or value.numel() < 2:
                if name.endswith(".p") and value.numel() == 1:  # GeM's learnable p
                    value.fill_(3.5)
                continue
            if name.endswith(".W.1.weight"):
                # A non-local block's output norm (zero at FastReID's init): small, or R101's nine blocks in a
                # row overflow float32 on random weights.
                value.copy_(0.1 * torch.rand(value.shape, generator=generator))
            elif name.endswith(".weight"):
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            elif name.endswith(".bias"):
                value.copy_(0.1 * torch.randn(value.shape, generator=generator))
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
            module.momentum = None  # a cumulative average over the batch
            module.reset_running_stats()
    with torch.no_grad():
        model(batch)
    return model.eval()


def max_cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((1 - torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)).max())
