"""Bias correction before INT8: remove the mean shift that rounding a convolution's weights to their INT8 grid puts
on its output.

Rounding weights is not unbiased per output channel: with ``ε = Q(W) − W`` the quantized convolution's output is
off by ``ε ∗ x``, whose mean over images is ``Σ ε[o, j, kh, kw] · E[x_j]`` — for a depthwise convolution, with nine
weights per channel, often a sizeable fraction of the channel's output range, and every later layer sees it. Nagel
et al. (2019, "Data-Free Quantization", empirical bias correction) subtract that expectation from the bias. ``E[x]``
is each channel's mean at the convolution's input over calibration images (the FP32 model's); ``Q`` is the weight
quantizer of the target — per output channel, symmetric, ``max |w| / levels`` — reproduced exactly, so the
correction is made for the very grid the quantizer then puts the weights on. Zero padding is ignored (the border
sees fewer inputs), as in the paper.

Correct only layers that will be quantized: a layer kept in float would carry a correction for an error it never
has.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.atomic import atomic_write_bytes
from edgereid.export.common import INPUT_NAME, _session

CORRECTION_IMAGES = 256
# The weight grids of the INT8 targets: TensorRT (modelopt) and ONNX Runtime on full-range weights use ±127;
# ONNX Runtime's CPU target with ``reduce_range`` (7-bit weights) uses ±64.
FULL_RANGE_LEVELS = 127
REDUCED_RANGE_LEVELS = 64
_BATCH = 32


def quantized_weights(weights: np.ndarray, levels: int) -> np.ndarray:
    """``weights`` (output channels first) on the symmetric per-output-channel grid of ``±levels`` steps."""
    absmax = np.abs(weights).reshape(weights.shape[0], -1).max(axis=1)
    scale = np.where(absmax > 0, absmax / levels, 1.0).reshape(-1, *([1] * (weights.ndim - 1)))
    return np.clip(np.rint(weights / scale), -levels, levels) * scale


# Whether each INT8 precision corrects biases unless told, as measured on the MobileNetV2 student fully quantized
# (docs/BENCHMARKS.md, "Bias correction"): TensorRT's scheme lost 1.59 mAP points instead of 4.95; ONNX Runtime's
# CPU scheme 5.31 instead of 5.74, within the noise of 1,122 queries — and there a corrected source would have to be
# calibrated again for every set of layers the accuracy-aware search keeps in float.
CORRECT_BY_DEFAULT = {"int8": True, "int8_cpu": False}


class BiasCorrection:
    """The bias corrections of one FP32 ONNX model for one weight grid: the input means measured once on
    ``images``, then written for any set of layers kept in float (which get none)."""

    def __init__(self, source: Path, images: np.ndarray, *, levels: int) -> None:
        import onnx

        self.source, self.levels = source, levels
        self.images = images[:CORRECTION_IMAGES]
        model = onnx.load(str(source))
        weights = {item.name for item in model.graph.initializer}
        self.convolutions = [node.name for node in model.graph.node
                             if node.op_type == "Conv" and node.input[1] in weights]
        self._means: dict[str, np.ndarray] | None = None

    def record(self) -> dict[str, Any]:
        """What the manifest says of the correction."""
        return {
            "method": "empirical bias correction (Nagel et al. 2019): b -= (Q(W) - W) . E[x] per output channel, "
            "for every quantized convolution",
            "weight_levels": self.levels,
            "images": len(self.images),
        }

    def write(self, target: Path, skip: Collection[str] = ()) -> int:
        """The source with the bias of every convolution but ``skip`` (node names) corrected, at ``target``;
        returns how many were corrected."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(self.source))
        weights = {item.name: item for item in model.graph.initializer}
        nodes = {node.name: node for node in model.graph.node}
        if self._means is None:
            self._means = _channel_means(model, [nodes[name].input[0] for name in self.convolutions], self.images)
        corrected = [nodes[name] for name in self.convolutions if name not in skip]
        for node in corrected:
            weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
            error = quantized_weights(weight, self.levels) - weight
            groups = next((int(a.i) for a in node.attribute if a.name == "group"), 1)
            out_channels, in_per_group = weight.shape[:2]
            # Output channel o reads the input channels of its group: (groups, outputs per group, inputs per group).
            grouped_error = error.reshape(groups, out_channels // groups, in_per_group, -1).sum(axis=3)
            grouped_mean = self._means[node.input[0]].reshape(groups, 1, in_per_group)
            shift = (grouped_error * grouped_mean).sum(axis=2).reshape(-1)
            if len(node.input) > 2 and node.input[2]:
                bias_name = node.input[2]
                bias = numpy_helper.to_array(weights[bias_name]).astype(np.float64)
            else:
                bias_name, bias = f"{node.name}_corrected_bias", np.zeros(out_channels)
                node.input.append(bias_name)
                model.graph.initializer.append(numpy_helper.from_array(np.zeros(out_channels, np.float32), bias_name))
                weights[bias_name] = model.graph.initializer[-1]
            weights[bias_name].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), bias_name))
        atomic_write_bytes(model.SerializeToString(), target)
        return len(corrected)


def correct_biases(
    source: Path, target: Path, images: np.ndarray, *, levels: int, skip: Collection[str] = ()
) -> dict[str, Any]:
    """Write ``source`` (an FP32 ONNX model) to ``target`` with the bias of every convolution but ``skip`` (node
    names) corrected for rounding its weights to ``±levels`` steps; ``images`` (normalized NCHW float32, calibration
    images) give each input channel's mean. Returns the manifest record."""
    correction = BiasCorrection(source, images, levels=levels)
    return {**correction.record(), "corrected": correction.write(target, skip)}


def _channel_means(model: Any, tensors: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel mean of each of ``tensors`` (NCHW activations of ``model``) over ``images``, from one pass."""
    import onnx
    from onnx import TensorProto, helper

    wanted = list(dict.fromkeys(tensors))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {output.name for output in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in wanted if name not in known
    )
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(wanted, 0)
    with tempfile.TemporaryDirectory(prefix="edgereid-bias-") as scratch:
        path = Path(scratch) / "probe.onnx"
        onnx.save(probe, str(path))
        session = _session(path)
        for start in range(0, len(images), _BATCH):
            activations = session.run(wanted, {INPUT_NAME: images[start : start + _BATCH]})
            for name, value in zip(wanted, activations, strict=True):
                axes = tuple(axis for axis in range(value.ndim) if axis != 1)
                total = value.astype(np.float64).sum(axis=axes)
                sums[name] = sums[name] + total if name in sums else total
                counts[name] += value.size // value.shape[1]
    return {name: sums[name] / counts[name] for name in wanted}
