"""Activation equalization before INT8 (edgereid.export.equalize): which convolution pairs it may rescale, that
the rescaled model is the same function, that each channel's activation and weight ranges end balanced, and that it
is what saves a model whose activation channels have very different ranges from per-tensor INT8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgereid.errors import ExportError
from edgereid.export.bundle import OUTPUT_NAME, _session
from edgereid.export.equalize import equalize_activations, find_equalizable_pairs

pytest.importorskip("onnxruntime")

CHANNELS = 8


def _conv(name: str, source: str, output: str, weight: np.ndarray, bias: np.ndarray | None, **attributes: int) -> tuple[
        Any, list[Any]]:
    inputs = [source, f"{name}.w"] + ([f"{name}.b"] if bias is not None else [])
    initializers = [numpy_helper.from_array(weight.astype(np.float32), f"{name}.w")]
    if bias is not None:
        initializers.append(numpy_helper.from_array(bias.astype(np.float32), f"{name}.b"))
    return helper.make_node("Conv", inputs, [output], name=name, **attributes), initializers


def _model(between: str = "Relu", *, depthwise: bool = False, seed: int = 0) -> onnx.ModelProto:
    """images (1x3x16x16) → conv a (channel gains 0.01 … 10) → ``between`` → conv b (1x1, or 3x3 depthwise x2)
    → global average → embeddings. Channels whose range is 1,000 times apart, as after a BN-folded bottleneck."""
    rng = np.random.default_rng(seed)
    gains = np.geomspace(0.01, 10, CHANNELS)
    a_weight = rng.standard_normal((CHANNELS, 3, 3, 3)) * gains[:, None, None, None]
    a_bias = rng.standard_normal(CHANNELS) * gains
    # The consumer's weights are largest on the smallest channels: what turns their rounding into output error.
    if depthwise:
        b_weight = rng.standard_normal((2 * CHANNELS, 1, 3, 3)) / np.repeat(gains, 2)[:, None, None, None]
        b_node, b_init = _conv("b", "x", "y", b_weight, None, group=CHANNELS, pads=[1, 1, 1, 1])
    else:
        b_weight = rng.standard_normal((4, CHANNELS, 1, 1)) / gains[None, :, None, None]
        b_node, b_init = _conv("b", "x", "y", b_weight, rng.standard_normal(4))
    a_node, a_init = _conv("a", "images", "a_out", a_weight, a_bias, pads=[1, 1, 1, 1])
    nodes = [a_node]
    if between == "none":
        b_node.input[0] = "a_out"
    elif between == "Clip":
        nodes.append(helper.make_node("Clip", ["a_out", "lo", "hi"], ["x"], name="clip"))
    elif between == "MaxPool":
        nodes.append(helper.make_node("Relu", ["a_out"], ["r"], name="relu"))
        nodes.append(helper.make_node("MaxPool", ["r"], ["x"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    else:
        nodes.append(helper.make_node(between, ["a_out"], ["x"], name="between"))
    nodes += [b_node, helper.make_node("GlobalAveragePool", ["y"], ["g"]),
              helper.make_node("Flatten", ["g"], [OUTPUT_NAME])]
    extra = [numpy_helper.from_array(np.array(0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6, np.float32), "hi")]
    graph = helper.make_graph(
        nodes, "pair", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", None])],
        a_init + b_init + (extra if between == "Clip" else []),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _images(count: int = 48, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 16, 16)).astype(np.float32)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _run(path: Path, images: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    if outputs:
        model = onnx.load(str(path))
        model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs)
        path = _save(model, path.with_name(f"probe-{path.name}"))
    return list(_session(path).run([OUTPUT_NAME, *(outputs or [])], {"images": images}))


@pytest.mark.parametrize(("between", "through"), [
    ("none", ()), ("Relu", ("Relu",)), ("MaxPool", ("Relu", "MaxPool")), ("AveragePool", ())
])
def test_pairs_through_positively_homogeneous_ops_only(between: str, through: tuple[str, ...]) -> None:
    if between == "AveragePool":
        model = _model("none")
        pool = helper.make_node("AveragePool", ["a_out"], ["x"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
        model.graph.node.insert(1, pool)
        model.graph.node[2].input[0] = "x"
        through = ("AveragePool",)
    else:
        model = _model(between)
    pairs = find_equalizable_pairs(model)
    assert [(pair.producer, pair.consumer, pair.through) for pair in pairs] == [("a", "b", through)]


def test_no_pair_where_rescaling_would_change_the_function() -> None:
    # ReLU6 clips at 6: a rescaled channel would clip elsewhere.
    assert find_equalizable_pairs(_model("Clip")) == []
    # A second reader of the activation (a residual, a tap) would see the rescaled channels.
    tapped = _model("Relu")
    tapped.graph.node.append(helper.make_node("Identity", ["a_out"], ["tap"], name="tap"))
    assert find_equalizable_pairs(tapped) == []
    exposed = _model("Relu")
    exposed.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    assert find_equalizable_pairs(exposed) == []
    # A weight shared with another node would be rescaled for both.
    shared = _model("Relu")
    shared.graph.node.append(helper.make_node("Identity", ["b.w"], ["alias"], name="alias"))
    assert find_equalizable_pairs(shared) == []


@pytest.mark.parametrize(("between", "depthwise"), [("Relu", False), ("MaxPool", False), ("none", True)])
def test_equalized_model_is_the_same_function_with_balanced_channels(
    tmp_path: Path, between: str, depthwise: bool
) -> None:
    source = _save(_model(between, depthwise=depthwise), tmp_path / "model.onnx")
    images = _images()
    record = equalize_activations(source, tmp_path / "equalized.onnx", images)
    assert [pair["consumer"] for pair in record["pairs"]] == ["b"] and record["cosine_min_to_original"] >= 0.99999
    tensor = find_equalizable_pairs(onnx.load(str(source)))[0].tensor
    before, activation_before = _run(source, images, [tensor])
    after, activation_after = _run(tmp_path / "equalized.onnx", images, [tensor])
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    # Measured here on the saved model: each channel's range at b's input equals b's largest weight on it.
    activation_range = np.abs(activation_after).max(axis=(0, 2, 3))
    weight = numpy_helper.to_array(next(i for i in onnx.load(str(tmp_path / "equalized.onnx")).graph.initializer
                                        if i.name == "b.w"))
    weight_range = (np.abs(weight).reshape(CHANNELS, -1).max(axis=1) if depthwise
                    else np.abs(weight).max(axis=(0, 2, 3)))
    np.testing.assert_allclose(activation_range, weight_range, rtol=1e-3)
    assert activation_range.max() / activation_range.min() < 100
    spread_before = np.abs(activation_before).max(axis=(0, 2, 3))
    assert spread_before.max() / spread_before.min() > 100
    assert record["pairs"][0]["activation_range_spread"] == pytest.approx(
        spread_before.max() / np.median(spread_before), rel=1e-3)


def test_a_model_without_pairs_is_copied_unchanged(tmp_path: Path) -> None:
    source = _save(_model("Clip"), tmp_path / "model.onnx")
    record = equalize_activations(source, tmp_path / "equalized.onnx", _images())
    assert record["pairs"] == [] and (tmp_path / "equalized.onnx").read_bytes() == source.read_bytes()


def test_an_all_zero_embedding_is_the_same_function(tmp_path: Path) -> None:
    # A weak model whose embedding ends in a ReLU maps some images to all zeros: no direction to compare, and
    # equalization keeps them zero.
    model, images = _model("Relu"), _images(count=64)
    # Shifted so that each output is negative on 60 % of the images before the ReLU, all of them on some images.
    shift = np.quantile(_run(_save(model, tmp_path / "unshifted.onnx"), images)[0], 0.6, axis=0)
    model.graph.node[-1].output[0] = "flat"
    model.graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), "shift"))
    model.graph.node.extend([helper.make_node("Sub", ["flat", "shift"], ["shifted"], name="shift"),
                             helper.make_node("Relu", ["shifted"], [OUTPUT_NAME], name="embedding_relu")])
    source = _save(model, tmp_path / "model.onnx")
    original = _run(source, images)[0]
    assert (np.abs(original).max(axis=1) == 0).any() and (np.abs(original).max(axis=1) > 0).any()
    record = equalize_activations(source, tmp_path / "equalized.onnx", images)
    assert record["cosine_min_to_original"] >= 0.99999
    np.testing.assert_allclose(_run(tmp_path / "equalized.onnx", images)[0], original, atol=1e-4 * original.max())


def test_a_rescaling_that_changes_the_output_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgereid.export import equalize

    # Treat ReLU6 (Clip) as if it commuted with scaling: the channels then clip elsewhere and the check must see it.
    monkeypatch.setattr(equalize, "_POSITIVELY_HOMOGENEOUS", ("Clip",))
    source = _save(_model("Clip"), tmp_path / "model.onnx")
    assert len(find_equalizable_pairs(onnx.load(str(source)))) == 1
    with pytest.raises(ExportError, match=r"changed its output .*--no-equalize"):
        equalize_activations(source, tmp_path / "equalized.onnx", _images())
    assert not (tmp_path / "equalized.onnx").exists()


def test_equalization_is_what_keeps_small_channels_through_per_tensor_int8(tmp_path: Path) -> None:
    from edgereid.export.bundle import _cosine
    from edgereid.export.calibration import CalibrationSet, load_calibration_policy
    from edgereid.export.precision import quantize_int8_cpu

    source = _save(_model("Relu"), tmp_path / "model.onnx")
    images = _images(64)
    calibration = CalibrationSet(images=images, paths=[f"{i}.jpg" for i in range(64)], policy=load_calibration_policy(),
                                 data_sha256="0" * 64, cache_hit=False, cache_file=tmp_path / "calibration.npz")
    equalize_activations(source, tmp_path / "equalized.onnx", images)
    test_images = _images(32, seed=2)
    reference = _run(source, test_images)[0]
    errors = {}
    for name in ("model", "equalized"):
        quantize_int8_cpu(tmp_path / f"{name}.onnx", tmp_path / f"{name}.int8.onnx", calibration, method="max")
        errors[name] = float(1 - _cosine(_run(tmp_path / f"{name}.int8.onnx", test_images)[0], reference).mean())
    # Before: the channels 1,000x below the largest get about one INT8 level; after, each keeps its share.
    assert errors["equalized"] < errors["model"] / 10, errors


def test_the_tensorrt_target_equalizes_when_asked(tmp_path: Path) -> None:
    pytest.importorskip("modelopt")
    from edgereid.export.calibration import CalibrationSet, load_calibration_policy
    from edgereid.export.sensitivity import quantize_within_budget
    from edgereid.recipes.schema import DataConfig

    source = _save(_model("Relu"), tmp_path / "model.onnx")
    images = _images(16)
    calibration = CalibrationSet(images=images, paths=[f"{i}.jpg" for i in range(16)], policy=load_calibration_policy(),
                                 data_sha256="0" * 64, cache_hit=False, cache_file=tmp_path / "calibration.npz")
    data = DataConfig.model_validate({"root": str(tmp_path), "size": [16, 16]})  # unread without a budget
    for equalize, expected in ((None, None), (True, ["b"])):
        entry = quantize_within_budget("int8", source, tmp_path / "model.int8.onnx", calibration, [], data,
                                       method="max", max_map_drop=None, flip=False, equalize=equalize)
        pairs = entry["equalization"] and [pair["consumer"] for pair in entry["equalization"]["pairs"]]
        assert pairs == expected
