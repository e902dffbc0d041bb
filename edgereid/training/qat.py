"""Quantization-aware training (QAT): a trained FP32 network learns to keep its accuracy in INT8.

The network is first folded (:mod:`edgereid.modeling.fold`), so the weights that are fake-quantized are exactly the
ones exported; nvidia-modelopt then puts INT8 fake quantizers on every convolution and linear layer of the test
forward — per-channel symmetric weights, per-tensor symmetric activations at each layer's input: the Q/DQ scheme
TensorRT fuses, and one ONNX Runtime's CPU kernels run as well — and calibrates the activation ranges (max) on train
images. The trainer then fine-tunes it with the recipe's losses plus self-distillation from the frozen FP32 network
(:class:`edgereid.recipes.schema.QATConfig`).

Weight ranges follow the weights: after calibration and after every optimizer step each output channel's range is
set to its largest |w|, so the grid a weight is trained on is the one every INT8 converter derives from the
exported weights (modelopt's Q/DQ export and ONNX Runtime's per-channel quantizer alike).

What a checkpoint keeps (:class:`QuantizationState`): modelopt's quantizer state, the FP32 network it started from
(the export's FP32 reference), and where that came from.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgereid.bundle_format import sha256_file
from edgereid.errors import ConfigError, ModelError
from edgereid.modeling import ReIDModel, create_model
from edgereid.modeling.config import ModelConfig
from edgereid.modeling.fold import fold_batchnorm
from edgereid.modeling.model import TestEmbedding
from edgereid.training.checkpoint import QuantizationState

SCHEME = "int8 symmetric: per-channel weights, per-tensor activations at conv/linear inputs"
# Layers that never reach the exported graph (the identity classifier trains only) stay in float.
_TRAINING_ONLY = ("*classifier*", "*local_branch*")


def require_modelopt() -> None:
    """A ConfigError naming the package when nvidia-modelopt's PyTorch quantization cannot be imported."""
    if importlib.util.find_spec("modelopt") is None:
        raise ConfigError(
            "quantization-aware training needs nvidia-modelopt, which is not installed here; install it with: "
            'pip install "edgereid[export]"'
        )
    try:
        with _quiet():
            import modelopt.torch.quantization  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"quantization-aware training needs nvidia-modelopt's PyTorch quantization, which cannot be imported "
            f"here ({error}); install what it names, or: pip install \"edgereid[export]\""
        ) from None


def quantization_config(residual_outputs: Iterable[str] = ()) -> dict[str, Any]:
    """modelopt's quantization config for :data:`SCHEME`; ``residual_outputs`` name the layers whose output is also
    quantized (see :func:`residual_branch_ends`)."""
    entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for layer in ("nn.Conv2d", "nn.Linear"):
        entries += [
            {"quantizer_name": "*weight_quantizer", "parent_class": layer, "cfg": {"num_bits": 8, "axis": 0}},
            {"quantizer_name": "*input_quantizer", "parent_class": layer, "cfg": {"num_bits": 8, "axis": None}},
        ]
    entries += [{"quantizer_name": pattern, "enable": False} for pattern in _TRAINING_ONLY]
    entries += [
        {"quantizer_name": f"{name}.output_quantizer", "cfg": {"num_bits": 8, "axis": None}}
        for name in residual_outputs
    ]
    return {"quant_cfg": entries, "algorithm": "max"}


def residual_branch_ends(model: nn.Module) -> list[str]:
    """The convolutions whose output goes into an addition and nowhere else (a residual branch's last layer). INT8 runtimes
    add in INT8 (ONNX Runtime's QLinearAdd, TensorRT's fused residual), so that output is quantized too: QAT then
    trains on it instead of leaving it to a calibration at export."""
    import operator

    from edgereid.modeling.fold import trace_test_forward

    graph = trace_test_forward(model)
    modules = dict(TestEmbedding(model).named_modules())
    ends = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], nn.Conv2d):
            continue
        output = node
        # A folded BatchNorm left an Identity behind.
        while len(output.users) == 1:
            (user,) = output.users
            if user.op != "call_module" or not isinstance(modules[str(user.target)], nn.Identity):
                break
            output = user
        # Only a branch's end: an output that also feeds a layer is that layer's (already quantized) input.
        if len(output.users) == 1 and next(iter(output.users)).target in (operator.add, torch.add, "add"):
            ends.append(str(node.target).removeprefix("model."))
    return ends


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """modelopt prints what it inserts and warns about CUDA extensions it does not need on a CPU."""
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def describe_init(path: Path, epoch: int, metrics: dict[str, Any], network: str) -> dict[str, Any]:
    """Where a QAT run's FP32 network came from: file, sha256, network, epoch and its metrics."""
    return {
        "checkpoint": str(path.resolve()),
        "sha256": sha256_file(path),
        "network": network,
        "epoch": epoch,
        "metrics": dict(metrics),
    }


def quantize_model(fp32_model: ReIDModel, calibration_batches: Iterable[Tensor]) -> ReIDModel:
    """A folded copy of ``fp32_model`` with INT8 fake quantizers, activation ranges calibrated (max) on
    ``calibration_batches`` (normalised train images) through the test forward, in eval mode."""
    require_modelopt()
    import modelopt.torch.quantization as mtq

    batches = list(calibration_batches)
    if not batches:
        raise ConfigError("quantization-aware training needs calibration images from the train split; it has none")
    folded = fold_batchnorm(fp32_model)

    def forward_loop(model: nn.Module) -> None:
        embedding = TestEmbedding(model).eval()
        with torch.no_grad():
            for batch in batches:
                embedding(batch)

    with _quiet():
        quantized = mtq.quantize(folded, quantization_config(residual_branch_ends(folded)), forward_loop)
    if not quantized_layers(quantized):
        raise ModelError(
            f"{type(fp32_model.backbone).__name__} has no convolution or linear layer that modelopt can quantize"
        )
    sync_weight_ranges(quantized)
    return quantized.eval()


def restore_quantized_model(
    config: ModelConfig, num_classes: int, state: QuantizationState, weights: dict[str, Tensor]
) -> ReIDModel:
    """The fake-quantized network a QAT checkpoint describes, with its weights and ranges, in eval mode."""
    require_modelopt()
    import modelopt.torch.opt as mto

    model = fold_batchnorm(create_model(_without_pretrained(config), num_classes))
    with _quiet():
        restored = mto.restore_from_modelopt_state(model, state.modelopt_state)
    restored.load_state_dict(weights)
    return restored.eval()


def build_fp32_model(config: ModelConfig, num_classes: int, state: QuantizationState) -> ReIDModel:
    """The FP32 network a QAT run started from (unfolded), in eval mode."""
    model = create_model(_without_pretrained(config), num_classes)
    model.load_state_dict(state.fp32_state)
    return model.eval()


def _without_pretrained(config: ModelConfig) -> ModelConfig:
    # The weights come from the checkpoint: ImageNet weights need not exist where a QAT model is rebuilt.
    return config.model_copy(update={"backbone": config.backbone.model_copy(update={"pretrained": None})})


def modelopt_state(model: nn.Module) -> dict[str, Any]:
    import modelopt.torch.opt as mto

    state: dict[str, Any] = mto.modelopt_state(model)
    return state


def _weight_quantized(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is not None and getattr(quantizer, "is_enabled", False):
            yield name, module


def quantized_layers(model: nn.Module) -> list[str]:
    """The layers whose weights are fake-quantized, by qualified name."""
    return [name for name, _ in _weight_quantized(model)]


@torch.no_grad()
def sync_weight_ranges(model: nn.Module) -> None:
    """Each weight quantizer's per-channel range set to its channel's largest |w| (see the module's docstring)."""
    for _, module in _weight_quantized(model):
        weight = module.weight
        assert isinstance(weight, Tensor)
        amax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())))
        # A channel of zeros would give a zero scale.
        amax = amax.clamp_min(torch.finfo(torch.float32).tiny)
        quantizer: Any = module.weight_quantizer
        quantizer.amax = amax.reshape(quantizer.amax.shape).to(quantizer.amax.dtype)


def freeze_norms(model: nn.Module) -> None:
    """The norms a folded network keeps (the BN-neck, IBN's instance norm) normalise with their running statistics:
    QAT fine-tunes the network that is deployed, whose norms are constants."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
