"""Folding BatchNorm into the layer before it, so the exported graph holds no normalisation that a convolution's
weights can carry: every Conv2d → BatchNorm2d pair (timm's BatchNormAct2d too, its activation kept), the BN half
of IBN-a into the matching output channels of the conv that feeds it, and Linear → BatchNorm1d (the reduction
neck's). The BN-neck, which follows pooling and no linear layer, stays as it is.

The data flow comes from a ``torch.fx`` trace of the eval forward; the modules are then changed in a copy of the
model, so the folded model keeps its classes and forward (and exports like the original)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from edgereid.errors import ModelError
from edgereid.modeling.layers.ibn import IBN
from edgereid.modeling.model import TestEmbedding


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm_with_report` did: the folded norms by qualified name, and those left."""

    folded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


class _Tracer(fx.Tracer):
    """Norm layers (and IBN) stay single nodes, so a norm's input is the layer that feeds it."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        # Conv and Linear subclasses too (timm's Conv2dSame pads from the input size, which fx cannot trace).
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, IBN, nn.Conv2d, nn.Linear)):
            return True
        return super().is_leaf_module(module, qualified_name)


def _fold_into(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """``weight`` (out, ...) and ``bias`` (out,) with ``bn`` (eval statistics) applied to their output."""
    assert bn.running_mean is not None and bn.running_var is not None
    mean = bn.running_mean.double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    factor = gamma * scale
    shape = (-1,) + (1,) * (weight.dim() - 1)
    new_weight = weight.double() * factor.view(shape)
    base = bias.double() if bias is not None else torch.zeros_like(mean)
    new_bias = (base - mean) * factor + beta
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def _set_weights(layer: nn.Conv2d | nn.Linear, weight: Tensor, bias: Tensor) -> None:
    layer.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
    layer.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)


def _norm_replacement(bn: nn.Module) -> nn.Module:
    """What a folded norm becomes: nothing, or the dropout + activation timm's BatchNormAct2d applies after it."""
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    if isinstance(act, nn.Module) or isinstance(drop, nn.Module):
        return nn.Sequential(drop if isinstance(drop, nn.Module) else nn.Identity(),
                             act if isinstance(act, nn.Module) else nn.Identity())
    return nn.Identity()


def _plain_norm(module: nn.Module) -> bool:
    """A BatchNorm whose eval forward is the affine map of its running statistics (and maybe an activation)."""
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    )


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def trace_test_forward(model: nn.Module) -> fx.Graph:
    """The data flow of ``model``'s test forward (its modules under ``model.``), norm, Conv2d and Linear layers as
    single nodes."""
    try:
        return _Tracer().trace(TestEmbedding(model))
    except Exception as error:
        raise ModelError(
            f"cannot trace {type(model).__name__} with torch.fx to follow its layers' data flow "
            f"({type(error).__name__}: {error})"
        ) from error


def fold_batchnorm_with_report(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """A folded copy of ``model`` (in eval mode) and what was folded; ``model`` is left untouched."""
    folded = copy.deepcopy(model).eval()
    graph = trace_test_forward(folded)
    root = TestEmbedding(folded)
    modules = dict(root.named_modules())
    report = FoldReport()
    replacements: dict[str, nn.Module] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        module = modules[target]
        is_ibn = isinstance(module, IBN)
        if not is_ibn and not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        norm = module.BN if is_ibn else module
        norm_name = f"{target}.BN" if is_ibn else target
        source = node.args[0] if node.args else None
        layer = modules.get(str(source.target)) if isinstance(source, fx.Node) and source.op == "call_module" else None
        foldable = (
            _plain_norm(norm)
            and isinstance(source, fx.Node)
            and len(source.users) == 1  # the layer feeds this norm only
            and (
                (isinstance(layer, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d))
                or (isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d) and not is_ibn)
            )
            # A layer used twice in the graph (shared weights) cannot take two folds.
            and sum(1 for other in graph.nodes if other.op == "call_module" and other.target == source.target) == 1
        )
        if not foldable:
            report.kept.append(norm_name.removeprefix("model."))
            continue
        assert isinstance(layer, (nn.Conv2d, nn.Linear))
        with torch.no_grad():
            if is_ibn:
                # IN on the first channels, BN on the rest: the BN folds into the conv's matching output channels.
                start = module.in_channels
                weight = layer.weight.detach().clone()
                bias = layer.bias.detach().clone() if layer.bias is not None else weight.new_zeros(weight.shape[0])
                new_w, new_b = _fold_into(weight[start:], bias[start:], norm)
                weight[start:] = new_w
                bias[start:] = new_b
                _set_weights(layer, weight, bias)
                module.BN = nn.Identity()  # type: ignore[assignment]
            else:
                new_w, new_b = _fold_into(layer.weight.detach(), None if layer.bias is None else layer.bias.detach(),
                                          norm)
                _set_weights(layer, new_w, new_b)
                replacements[target] = _norm_replacement(norm)
        report.folded.append(norm_name.removeprefix("model."))
    for name, new in replacements.items():
        _replace(root, name, new)
    return folded, report


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every foldable BatchNorm folded into the layer before it; its eval
    output equals ``model``'s up to float rounding. ``model`` itself is not changed."""
    folded, _ = fold_batchnorm_with_report(model)
    return folded


def count_batchnorm(model: nn.Module) -> int:
    """BatchNorm2d layers that still normalise (IBN's BN half included)."""
    return sum(1 for module in model.modules() if isinstance(module, nn.BatchNorm2d))
