"""Bias correction: the weight grid it corrects for is the quantizers' own, and the corrected INT8 convolution's
mean output per channel is the FP32 one's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgereid.export.bias_correction import (
    FULL_RANGE_LEVELS,
    REDUCED_RANGE_LEVELS,
    correct_biases,
    quantized_weights,
)
from edgereid.export.common import INPUT_NAME, OUTPUT_NAME, _session


@pytest.mark.parametrize(("levels", "reduce_range"), [(FULL_RANGE_LEVELS, False), (REDUCED_RANGE_LEVELS, True)])
def test_the_weight_grid_is_onnx_runtimes(levels: int, reduce_range: bool) -> None:
    from onnxruntime.quantization.quant_utils import quantize_data

    weights = np.random.default_rng(0).normal(size=(6, 3, 3, 3)).astype(np.float32)
    for channel in range(6):
        zero_point, scale, quantized = quantize_data(
            weights[channel].reshape(-1), TensorProto.INT8, symmetric=True, reduce_range=reduce_range
        )
        expected = (quantized.astype(np.float64) - zero_point) * scale
        np.testing.assert_allclose(quantized_weights(weights, levels)[channel].reshape(-1), expected, rtol=1e-6)


def _depthwise_model(path: Path, weights: np.ndarray, bias: np.ndarray | None) -> Path:
    """One depthwise 3×3 convolution without padding (the correction ignores padding's border)."""
    channels = weights.shape[0]
    initializers = [numpy_helper.from_array(weights, "w")]
    inputs = [INPUT_NAME, "w"]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias, "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, [OUTPUT_NAME], name="depthwise", group=channels, kernel_shape=[3, 3])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, channels, 8, 8])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, None)], initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("with_bias", [True, False])
def test_the_corrected_int8_convolution_keeps_the_fp32_mean_per_channel(tmp_path: Path, with_bias: bool) -> None:
    rng = np.random.default_rng(1)
    channels = 16
    weights = rng.normal(size=(channels, 1, 3, 3)).astype(np.float32)
    bias = rng.normal(size=channels).astype(np.float32) if with_bias else None
    # Inputs with a large mean per channel: what makes the rounding error's mean show (as after a ReLU).
    images = (rng.normal(size=(64, channels, 8, 8)) + rng.uniform(1, 4, size=(1, channels, 1, 1))).astype(np.float32)
    fp32 = _depthwise_model(tmp_path / "fp32.onnx", weights, bias)
    corrected = tmp_path / "corrected.onnx"
    record = correct_biases(fp32, corrected, images, levels=FULL_RANGE_LEVELS)
    assert record["corrected"] == 1 and record["images"] == 64
    new_bias = numpy_helper.to_array(next(t for t in onnx.load(str(corrected)).graph.initializer if t.name != "w"))
    rounded = quantized_weights(weights.astype(np.float64), FULL_RANGE_LEVELS).astype(np.float32)

    def channel_means(path: Path) -> np.ndarray:
        return _session(path).run([OUTPUT_NAME], {INPUT_NAME: images})[0].mean(axis=(0, 2, 3))

    reference = channel_means(fp32)
    uncorrected = channel_means(_depthwise_model(tmp_path / "q.onnx", rounded, bias))
    fixed = channel_means(_depthwise_model(tmp_path / "qc.onnx", rounded, new_bias))
    assert np.abs(uncorrected - reference).max() > 20 * np.abs(fixed - reference).max()
    assert np.abs(fixed - reference).max() < 1e-3  # what is left: the interior sample mean against the whole one


def test_skipped_layers_keep_their_bias(tmp_path: Path) -> None:
    weights = np.random.default_rng(2).normal(size=(4, 1, 3, 3)).astype(np.float32)
    bias = np.arange(4, dtype=np.float32)
    fp32 = _depthwise_model(tmp_path / "fp32.onnx", weights, bias)
    images = np.ones((8, 4, 8, 8), np.float32)
    record = correct_biases(fp32, tmp_path / "kept.onnx", images, levels=FULL_RANGE_LEVELS, skip=["depthwise"])
    assert record["corrected"] == 0
    kept = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "kept.onnx")).graph.initializer}
    np.testing.assert_array_equal(kept["b"], bias)
