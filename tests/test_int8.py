"""INT8 export: the ONNX Runtime CPU target beside the TensorRT Q/DQ one, calibration methods and policies, the
calibration cache, and accuracy-aware quantization with per-layer sensitivity."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from edgereid.cli import _ReportingGroup
from edgereid.cli.export import export_command, int8_over_budget_hint, print_bundle
from edgereid.data.holdout import split_first_per_key
from edgereid.data.images import decode_records, normalize_images
from edgereid.data.records import ImageRecord
from edgereid.data.registry import load_dataset
from edgereid.errors import ConfigError, DataError
from edgereid.export import ExportBundle, ExportError, export_checkpoint, load_bundle
from edgereid.export import bundle as bundle_module
from edgereid.export import sensitivity as sensitivity_module
from edgereid.export.calibration import (
    DEFAULT_POLICY,
    CalibrationPolicy,
    load_calibration_policy,
    load_calibration_set,
    select_heldout_records,
    shipped_policies,
)
from edgereid.export.precision import OrtQuantizer, check_calibration_method, prepare_calibration
from edgereid.export.sensitivity import HELDOUT_MARGIN_POINTS
from edgereid.recipes.schema import DataConfig
from edgereid.training.checkpoint import load_checkpoint
from tests.factories import SIZE, make_checkpoint

HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None
CALIBRATION_IMAGES = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("int8"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calibration-cache")


@pytest.fixture(scope="module")
def cpu_bundle(checkpoint: Path, cache_dir: Path) -> ExportBundle:
    return export_checkpoint(checkpoint, checkpoint.parent.parent / "cpu-bundle", precisions=("int8_cpu",),
                             calibration_images=CALIBRATION_IMAGES, calibration_cache_dir=cache_dir)


def _embed(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"images": images})[0]
    return np.asarray(output / np.linalg.norm(output, axis=1, keepdims=True))


def _test_images(checkpoint: Path) -> np.ndarray:
    dataset = load_dataset(checkpoint.parent.parent / "synthetic")
    decoded = decode_records(dataset.gallery[:24], SIZE)
    return normalize_images(decoded.images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# --- policies ---------------------------------------------------------------------------------------------


def test_shipped_policies_load_by_name_and_path() -> None:
    assert DEFAULT_POLICY in shipped_policies()
    default = load_calibration_policy()
    assert (default.name, default.split, default.images, default.camera_balance) == ("train-spread-v1", "train", 512,
                                                                                      True)
    capped = load_calibration_policy("train-capped-v1")
    assert capped.images_per_identity == 4
    assert load_calibration_policy(Path(__file__).parents[1] / "calibration" / "train-capped-v1.yaml") == capped
    assert capped.digest() != default.digest()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("split: query\n", r"key 'split'.*'query' split.*leaks the test set"),
        ("split: gallery\n", r"key 'split'.*'gallery'"),
        ("split: validation\n", r"key 'split'.*unknown split"),
        ("images: 0\n", r"key 'images'"),
        ("augmentation: flip\n", r"key 'augmentation'"),
        ("imagse: 4\n", r"key 'imagse'"),
        ("- 1\n", "must be a mapping"),
    ],
)
def test_policy_yaml_is_validated_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad-policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as raised:
        load_calibration_policy(path)
    assert str(path) in str(raised.value)
    with pytest.raises(ConfigError, match="neither a file nor a shipped policy.*train-spread-v1"):
        load_calibration_policy("no-such-policy")


def test_policy_caps_images_per_identity_spread_over_cameras() -> None:
    train = [ImageRecord(Path(f"{pid:04d}_c{cam}_{i}.jpg"), pid, cam) for pid in range(6) for cam in range(3)
             for i in range(5)]
    balanced = CalibrationPolicy(name="t", images_per_identity=3, seed=2)
    kept = balanced.eligible(train)
    per_identity = Counter(record.pid for record in kept)
    assert set(per_identity.values()) == {3}
    for pid in range(6):  # three images of an identity: one from each of its three cameras
        assert sorted(record.camid for record in kept if record.pid == pid) == [0, 1, 2]
    assert balanced.select(list(reversed(train)), 10) == balanced.select(train, 10)
    assert len(balanced.select(train)) == 18  # the cap bounds the set below the policy's 512 images
    unbalanced = CalibrationPolicy(name="t", images_per_identity=3, camera_balance=False, seed=2)
    assert Counter(record.pid for record in unbalanced.eligible(train)) == per_identity
    # Drawn at random within an identity, some identity keeps two images of one camera (seed 2).
    assert any(len({r.camid for r in unbalanced.eligible(train) if r.pid == pid}) < 3 for pid in range(6))


def test_heldout_draw_forms_a_query_gallery_with_more_identity_camera_groups_than_images() -> None:
    # Market-like: 60 identities x 4 cameras x 5 images (240 groups) and a 100-image budget, plus one identity seen
    # by a single camera. A draw of one image per (identity, camera) would leave every image a query.
    train = [ImageRecord(Path(f"{pid:04d}_c{cam}_{i}.jpg"), pid, cam) for pid in range(60) for cam in range(4)
             for i in range(5)]
    train += [ImageRecord(Path(f"0999_c0_{i}.jpg"), 999, 0) for i in range(8)]
    chosen = select_heldout_records(train, 100, seed=1, images_per_identity=8)
    assert chosen == select_heldout_records(list(reversed(train)), 100, seed=1, images_per_identity=8)
    assert len(chosen) == 96 and len(set(chosen)) == 96  # 12 identities x 8: a 13th would not fit whole
    per_identity = Counter(record.pid for record in chosen)
    assert set(per_identity.values()) == {8} and 999 not in per_identity
    for pid in per_identity:  # two images from each of the identity's four cameras
        assert Counter(record.camid for record in chosen if record.pid == pid) == {0: 2, 1: 2, 2: 2, 3: 2}
    query, gallery = split_first_per_key(chosen, lambda record: (record.pid, record.camid))
    assert (len(query), len(gallery)) == (48, 48)
    assert select_heldout_records(train, 100, seed=2, images_per_identity=8) != chosen
    # An identity seen by one camera has no valid match: a set of only such identities yields nothing.
    assert select_heldout_records([r for r in train if r.pid == 999], 100, seed=1, images_per_identity=8) == []


def test_a_layer_kept_in_float_runs_in_float_in_onnx_runtime(tmp_path: Path) -> None:
    # DQ -> Conv (float weights) -> Q: the shape of a layer an INT8 model keeps in float. One weight 1000x the others
    # makes a per-tensor INT8 weight scale (what ONNX Runtime's WeightBiasQuantization applies at load time) round
    # every other weight to 0 (a weight of 100 left an error of only 4 output steps on a VNNI CPU).
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    weight[0, 0] = 1000.0
    in_scale, out_scale = np.float32(1 / 255), np.float32(8 / 127)
    initializers = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array(in_scale), "in_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "in_zero"),
        numpy_helper.from_array(np.array(out_scale), "out_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "out_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "in_scale", "in_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "in_scale", "in_zero"], ["x"]),
        helper.make_node("Conv", ["x", "w"], ["y"], name="kept_in_float"),
        helper.make_node("QuantizeLinear", ["y", "out_scale", "out_zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "out_scale", "out_zero"], ["embeddings"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [1, 4, 8, 8])], initializers,
    )
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    images = rng.uniform(0, 1, (1, 4, 8, 8)).astype(np.float32)
    images[:, 0] *= 0.01
    dequantized = np.round(images / in_scale) * in_scale
    expected = np.clip(np.round(np.einsum("oi,nihw->nohw", weight[:, :, 0, 0], dequantized) / out_scale), -128, 127)
    expected *= out_scale

    def error(session: ort.InferenceSession) -> float:
        return float(np.abs(session.run(None, {"images": images})[0] - expected).max())

    assert error(bundle_module._session(path)) <= out_scale + 1e-6  # one rounding step at most
    # ONNX Runtime's own default quantizes the float weights at load time: what the edgereid sessions turn off.
    assert error(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])) > 10 * out_scale


@pytest.mark.parametrize("total", [1, 2, 7, 52])
def test_search_for_layers_kept_in_float_finds_the_smallest_count_in_few_tries(total: int) -> None:
    for threshold in range(1, total + 1):
        tried: list[int] = []

        def passes(count: int, threshold: int = threshold, tried: list[int] = tried) -> bool:
            tried.append(count)
            return count >= threshold

        assert sensitivity_module.smallest_passing_count(total, passes) == threshold
        assert len(tried) == len(set(tried)) and all(1 <= count <= total for count in tried)
        assert len(tried) <= 2 * int(np.ceil(np.log2(threshold))) + 1  # 52 layers, 17 needed: 10 tries, not 17
    never: list[int] = []
    assert sensitivity_module.smallest_passing_count(total, lambda count: never.append(count) is not None) is None
    assert never[-1] == total and len(never) == int(np.ceil(np.log2(total))) + 1
    assert sensitivity_module.smallest_passing_count(0, lambda count: pytest.fail("nothing to try")) is None


def test_calibration_methods_map_to_each_target() -> None:
    check_calibration_method("percentile", ["int8_cpu"])
    check_calibration_method("max", ["int8", "int8_cpu"])
    with pytest.raises(ConfigError, match="'percentile' is not supported by the TensorRT target.*entropy, max"):
        check_calibration_method("percentile", ["int8", "int8_cpu"])
    with pytest.raises(ConfigError, match="unknown calibration method 'minmax'"):
        check_calibration_method("minmax", ["int8_cpu"])


# --- the CPU target ---------------------------------------------------------------------------------------


def test_int8_cpu_model_is_per_channel_qdq_and_close_to_fp32(checkpoint: Path, cpu_bundle: ExportBundle,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bundle = load_bundle(cpu_bundle.path)
    assert bundle.precisions == ["fp32", "int8_cpu"]
    path = bundle.model_path("int8_cpu")
    assert path.name == "model.int8_cpu.onnx"
    model = onnx.load(str(path))
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    weights = [node for node in model.graph.node if node.op_type == "DequantizeLinear"
               and initializers.get(node.input[0]) is not None and initializers[node.input[0]].data_type
               == onnx.TensorProto.INT8 and len(initializers[node.input[0]].dims) == 4]
    assert len(weights) == 20  # every convolution of the ResNet-18: weights int8, one scale per output channel
    for node in weights:
        scale = numpy_helper.to_array(initializers[node.input[1]])
        assert scale.shape == (initializers[node.input[0]].dims[0],) and len(np.unique(scale)) > 1
    # Activations are uint8 (ONNX Runtime's x86 choice); weights 7-bit (reduce_range) for CPUs without VNNI.
    activation_types = {initializers[node.input[2]].data_type for node in model.graph.node
                        if node.op_type == "QuantizeLinear"}
    assert activation_types == {onnx.TensorProto.UINT8}
    assert max(int(np.abs(numpy_helper.to_array(initializers[node.input[0]])).max()) for node in weights) <= 64
    images = _test_images(checkpoint)  # gallery images: never seen by calibration
    cosine = (_embed(path, images) * _embed(bundle.model_path("fp32"), images)).sum(axis=1)
    assert cosine.min() > 0.99
    entry = bundle.manifest["models"]["int8_cpu"]
    assert entry["target"] == "cpu" and entry["tolerance_mAP_points"] == 0.5
    # Accuracy protection is on by default: the default budget through the search, with the held-out margin.
    accuracy = entry["accuracy"]
    assert accuracy["max_mAP_drop_points"] == 0.5 and accuracy["heldout_margin_points"] == HELDOUT_MARGIN_POINTS
    assert accuracy["heldout_threshold_points"] == pytest.approx(0.5 - HELDOUT_MARGIN_POINTS)
    assert accuracy["heldout"]["num_query"] > 0 and accuracy["drop_points_after"] <= 0.5 - HELDOUT_MARGIN_POINTS
    # An untrained model is far from resolving nothing on held-out images; a saturated protocol would be flagged.
    assert accuracy["heldout"]["fp32_mAP"] < 0.9 and accuracy["heldout_saturated"] is False
    # Equalized by default: the block convolutions joined by a ReLU alone (IBN's InstanceNorm halves break the rest).
    equalized = entry["equalization"]
    assert equalized["pairs"] and all(pair["through"] == ["Relu"] for pair in equalized["pairs"])
    assert equalized["cosine_min_to_original"] >= 0.99999 and equalized["images"] == CALIBRATION_IMAGES
    print_bundle(bundle)
    shown = " ".join(capsys.readouterr().out.split())
    assert f"int8_cpu: activations equalized between {len(equalized['pairs'])} convolution pairs" in shown
    calibration = entry["calibration"]
    assert (calibration["method"], calibration["images"], calibration["policy"], calibration["split"]) == (
        "entropy", CALIBRATION_IMAGES, "train-spread-v1", "train")
    assert len(calibration["data_sha256"]) == 64 and calibration["cache_hit"] is False


def test_second_export_reuses_the_calibration_cache(
    checkpoint: Path, cache_dir: Path, cpu_bundle: ExportBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgereid.data import images

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the calibration images were decoded again")

    monkeypatch.setattr(images, "_decode_all", no_decoding)
    # The folding check decodes a few train images of its own; this test is about the calibration set.
    monkeypatch.setattr(bundle_module, "_fold_check_images",
                        lambda data: (torch.randn(2, 3, *data.size), "random"))
    # The accuracy-aware search (on by default) decodes its own held-out images: off here, where the calibration
    # set is what is checked (the search leaves the fully quantized model as it is when it is within budget).
    again = export_checkpoint(checkpoint, tmp_path / "again", precisions=("int8_cpu",),
                              calibration_images=CALIBRATION_IMAGES, calibration_cache_dir=cache_dir,
                              max_map_drop=None)
    first, second = (bundle.manifest["models"]["int8_cpu"] for bundle in (cpu_bundle, again))
    assert second["calibration"]["cache_hit"] is True and second["calibration"]["ranges_cache_hit"] is True
    assert second["calibration"]["data_sha256"] == first["calibration"]["data_sha256"]
    assert second["sha256"] == first["sha256"]  # same ranges, same model
    monkeypatch.undo()
    # Another seed draws other images: a different cache entry, decoded afresh.
    policy = load_calibration_policy().model_copy(update={"seed": 5})
    reseeded, _ = prepare_calibration(_recipe_data(checkpoint), policy, num_images=CALIBRATION_IMAGES, cache_dir=cache_dir)
    assert reseeded.cache_hit is False and reseeded.data_sha256 != first["calibration"]["data_sha256"]


def _recipe_data(checkpoint: Path) -> DataConfig:

    return load_checkpoint(checkpoint).recipe.data


def test_max_and_percentile_ranges_differ(checkpoint: Path, cpu_bundle: ExportBundle, tmp_path: Path) -> None:
    calibration, _ = prepare_calibration(_recipe_data(checkpoint), load_calibration_policy(),
                                         num_images=CALIBRATION_IMAGES, cache_dir=tmp_path)
    scales = {}
    for method in ("max", "percentile"):
        quantizer = OrtQuantizer(cpu_bundle.model_path("fp32"), calibration, tmp_path, method=method, symmetric=False)
        entry = quantizer.quantize(tmp_path / f"{method}.onnx")
        assert entry["calibration"]["method"] == method
        model = onnx.load(str(tmp_path / f"{method}.onnx"))
        initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        scales[method] = np.array([float(numpy_helper.to_array(initializers[node.input[1]]))
                                   for node in model.graph.node if node.op_type == "QuantizeLinear"])
    # max covers every value seen, so its ranges are the widest; percentile clips the outliers.
    assert np.all(scales["max"] >= scales["percentile"] - 1e-9)
    assert np.any(scales["percentile"] < scales["max"] * 0.99)


# --- accuracy-aware INT8 ----------------------------------------------------------------------------------


def test_unmeetable_budget_fails_naming_the_best_drop(checkpoint: Path, cpu_bundle: ExportBundle, cache_dir: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _recipe_data(checkpoint)
    calibration, train = prepare_calibration(data, load_calibration_policy(), num_images=CALIBRATION_IMAGES,
                                             cache_dir=cache_dir)
    # A model none of whose layers can be kept in float: the loop has nothing to buy accuracy back with. Without
    # equalization this small model's INT8 loses some mAP (with it, none: nothing to fail on).
    monkeypatch.setattr(sensitivity_module, "layer_sensitivity", lambda *args, **kwargs: [])
    target = tmp_path / "model.int8_cpu.onnx"
    with pytest.raises(ExportError) as refused:
        sensitivity_module.quantize_within_budget(
            "int8_cpu", cpu_bundle.model_path("fp32"), target, calibration, train, data, method="entropy",
            max_map_drop=0.0, flip=True, equalize=False,
            qat_hint=sensitivity_module.qat_suggestion(checkpoint, "tiny"))
    message = " ".join(str(refused.value).split())
    assert re.search(r"cannot meet the 0-point mAP budget.*loses ([\d.]+) .*at best \1 \(with 0 of 0 layers", message)
    drop = float(re.search(r"loses ([\d.]+) mAP points", message).group(1))  # type: ignore[union-attr]
    assert drop > 0.0  # this small model without equalization loses mAP: what the export refuses
    # The ways forward, by name: quantization-aware training from this checkpoint first, then a larger budget.
    assert f"quantization-aware training: a recipe with a `qat:` section whose `qat.init` is {checkpoint}" in message
    assert "recipes/qat_quickstart.yaml" in message and "--max-map-drop 1.0" in message
    assert "--max-map-drop none" in message
    assert list(tmp_path.iterdir()) == []  # the over-budget model is not left behind


def test_the_margin_decides_on_numbers() -> None:
    accepts, margin = sensitivity_module.accepts, HELDOUT_MARGIN_POINTS
    assert 0 < margin < 0.5
    # Within the budget but not within budget - margin on held-out images: rejected; with no margin it would pass.
    drop = 0.5 - margin / 2
    assert not accepts(drop, 0.5, margin) and accepts(drop, 0.5, 0.0)
    assert accepts(0.5 - margin, 0.5, margin) and not accepts(0.5 - margin + 1e-9, 0.5, margin)
    assert accepts(-0.3, 0.5, margin)  # INT8 better than FP32 on held-out
    # The default margin never exceeds the budget: a budget of 0 accepts no held-out drop, not a negative one.
    assert sensitivity_module.default_margin(0.5) == margin
    assert sensitivity_module.default_margin(0.0) == 0.0 and accepts(0.0, 0.0, sensitivity_module.default_margin(0.0))
    assert sensitivity_module.default_margin(margin / 2) == margin / 2
    assert sensitivity_module.heldout_threshold(1.0, margin) == pytest.approx(1.0 - margin)


def _float_layers(path: Path) -> int:
    """Convolutions whose weights are not behind a DequantizeLinear: the layers kept in float."""
    model = onnx.load(str(path))
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return sum(node.op_type == "Conv" and node.input[1] not in dequantized for node in model.graph.node)


def test_the_search_rejects_a_held_out_drop_within_budget_but_not_within_the_margin(
    checkpoint: Path, cpu_bundle: ExportBundle, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _recipe_data(checkpoint)
    calibration, train = prepare_calibration(data, load_calibration_policy(), num_images=CALIBRATION_IMAGES,
                                             cache_dir=cache_dir)
    # Held-out drops scripted by the number of layers in float: 0.40 fully quantized (within the 0.5 budget, over
    # 0.5 - margin), 0.35 with one layer in float (the same), 0.10 with two.
    drops = {0: 0.40, 1: 0.35, 2: 0.10}
    assert 0.5 - HELDOUT_MARGIN_POINTS < 0.35 and 0.10 < 0.5 - HELDOUT_MARGIN_POINTS

    class ScriptedScorer:
        reference_mAP = 0.9

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def drop_points(self, path: Path) -> tuple[float, float]:
            return 0.9, drops.get(_float_layers(path), 0.0)

        def info(self) -> dict[str, int]:
            return {"num_query": 7}

    monkeypatch.setattr(sensitivity_module, "HeldOutScorer", ScriptedScorer)

    def export(margin: float | None, name: str) -> dict:
        entry = sensitivity_module.quantize_within_budget(
            "int8_cpu", cpu_bundle.model_path("fp32"), tmp_path / name, calibration, train, data, method="entropy",
            max_map_drop=0.5, flip=True, equalize=False, margin=margin)
        assert _float_layers(tmp_path / name) == len(entry["accuracy"]["excluded_layers"])
        return dict(entry["accuracy"])

    guarded = export(None, "guarded.onnx")  # the default margin
    assert guarded["heldout_margin_points"] == HELDOUT_MARGIN_POINTS
    assert guarded["drop_points_before"] == 0.40 and guarded["drop_points_after"] == 0.10
    assert len(guarded["excluded_layers"]) == 2
    assert [(step["layers_in_float"], step["drop_points"]) for step in guarded["steps"]] == [(1, 0.35), (2, 0.10)]
    unguarded = export(0.0, "unguarded.onnx")  # without a margin the fully quantized 0.40 is within budget
    assert unguarded["heldout_threshold_points"] == 0.5 and unguarded["excluded_layers"] == []
    assert unguarded["drop_points_after"] == 0.40


def test_qat_is_suggested_by_name() -> None:
    own = sensitivity_module.qat_suggestion(Path("runs/quickstart/best.pt"), "quickstart")
    assert own.startswith("`edgereid train qat_quickstart --set qat.init=runs/quickstart/best.pt`")
    mutual = sensitivity_module.qat_suggestion(Path("runs/m/last.pt"), "quickstart_mutual", network="cnn32")
    assert "whose `qat.init` is runs/m/last.pt and `qat.network` cnn32" in mutual
    assert "recipes/qat_quickstart.yaml" in mutual
    message = sensitivity_module.budget_failure_message(
        "int8_cpu", drop_before=14.66, best_drop=0.61, best_layers=52, total_layers=52, max_map_drop=0.5,
        margin=HELDOUT_MARGIN_POINTS, qat_hint=own)
    assert "loses 14.66 mAP points" in message and "at best 0.61 (with 52 of 52 layers in float)" in message
    assert f"over the {0.5 - HELDOUT_MARGIN_POINTS:.2f} the search accepts there" in message
    assert "(1) quantization-aware training: `edgereid train qat_quickstart" in message
    assert "every layer in float" not in message  # its drop was reached: nothing else to blame
    # The TensorRT model with every layer in float still computes in FP16: the rest is not INT8's doing.
    message = sensitivity_module.budget_failure_message(
        "int8", drop_before=2.51, best_drop=0.20, best_layers=52, total_layers=52, max_map_drop=0.5,
        margin=HELDOUT_MARGIN_POINTS, qat_hint=own, all_float_drop=0.20)
    assert "With every layer in float it still loses 0.20: that is not INT8 but the FP16 TensorRT" in message
    cpu = sensitivity_module.budget_failure_message(
        "int8_cpu", drop_before=2.51, best_drop=0.20, best_layers=52, total_layers=52, max_map_drop=0.5,
        margin=HELDOUT_MARGIN_POINTS, qat_hint=own, all_float_drop=0.20)
    assert "that is not INT8 but the noise of the held-out set" in cpu and "FP16" not in cpu


# --- bad input ----------------------------------------------------------------------------------------------


def test_too_small_calibration_set_and_test_split_policy_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--calibration-images 4 is too few.*at least 8"):
        export_checkpoint(checkpoint, tmp_path / "small", precisions=("int8_cpu",), calibration_images=4)
    leaking = tmp_path / "leaking.yaml"
    leaking.write_text("split: gallery\nimages: 64\n")
    with pytest.raises(ConfigError, match="leaking.yaml.*key 'split'"):
        export_checkpoint(checkpoint, tmp_path / "leak", precisions=("int8_cpu",), calibration_policy=leaking)
    assert list(tmp_path.iterdir()) == [leaking]
    # A train split with fewer images than asked for, fewer than the minimum: refused before any decoding.
    records = load_dataset(checkpoint.parent.parent / "synthetic").train[:5]
    with pytest.raises(DataError, match="calibration set has 5 images.*at least 8"):
        load_calibration_set(records, SIZE, (0.5,) * 3, (0.5,) * 3, policy=load_calibration_policy())


def test_cli_over_budget_keeps_the_most_sensitive_layers_in_float(
    checkpoint: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    group = _ReportingGroup("edgereid")
    group.add_command(export_command)
    runner = CliRunner()
    refused = runner.invoke(group, ["export", str(checkpoint), "--out", str(tmp_path / "r"), "--int8",
                                    "--target", "both", "--calibration-method", "percentile"])
    assert refused.exit_code == 2 and "'percentile' is not supported by the TensorRT target" in refused.output
    assert not (tmp_path / "r").exists()
    done = runner.invoke(group, ["export", str(checkpoint), "--out", str(tmp_path / "aware"), "--int8", "--target",
                                 "cpu", "--max-map-drop", "0", "--calibration-images", "16",
                                 "--calibration-cache", str(cache_dir), "--no-verify", "--json",
                                 # equalized, this small model loses no mAP in INT8: nothing to buy back
                                 "--no-equalize"])
    assert done.exit_code == 0, done.output
    bundle = load_bundle(tmp_path / "aware")
    assert sorted(p.name for p in bundle.path.iterdir()) == ["manifest.json", "model.fp32.onnx", "model.int8_cpu.onnx"]
    entry = bundle.manifest["models"]["int8_cpu"]
    accuracy = entry["accuracy"]
    assert entry["tolerance_mAP_points"] == 0.0 and accuracy["max_mAP_drop_points"] == 0.0
    assert entry["onnxruntime_disabled_optimizers"] == ["WeightBiasQuantization"] and entry["equalization"] is None
    # The held-out protocol is train images outside the calibration set, not the test query/gallery.
    assert accuracy["heldout"]["num_query"] > 0 and accuracy["heldout"]["split"].startswith("train")
    assert accuracy["drop_points_before"] > 0.0  # this seeded tiny model loses mAP fully quantized...
    excluded = accuracy["excluded_layers"]
    assert excluded and accuracy["drop_points_after"] <= 0.0  # ...and gets it back with layers in float
    assert [layer["rank"] for layer in excluded] == list(range(1, len(excluded) + 1))
    errors = [layer["embedding_error"] for layer in excluded]
    assert errors == sorted(errors, reverse=True) and all(layer["of"] == 20 for layer in excluded)
    # Every layer's score is recorded (the report charts it), the kept ones first.
    ranking = accuracy["ranking"]
    assert len(ranking) == 20 and [layer["node"] for layer in ranking[: len(excluded)]] == [
        layer["node"] for layer in excluded]
    # The excluded layers really run in float: their weights are not behind a DequantizeLinear.
    model = onnx.load(str(bundle.model_path("int8_cpu")))
    nodes = {node.name: node for node in model.graph.node}
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    for layer in excluded:
        assert nodes[layer["node"]].input[1] not in dequantized
    assert sum(node.op_type == "Conv" and node.input[1] in dequantized for node in model.graph.node) == 20 - len(
        excluded)
    print_bundle(bundle)  # what a person sees: the drop and the layers kept in float, named
    shown = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the console width
    assert "most sensitive layers in float" in shown and excluded[0]["node"] in shown


def test_an_int8_model_failing_verification_is_pointed_to_qat_by_name() -> None:
    manifest = {"network": "model", "recipe": "quickstart", "source": {"checkpoint": "/r/quickstart/best.pt"},
                "models": {"int8": {"accuracy": {"max_mAP_drop_points": 0.5}}, "int8_cpu": {"accuracy": None}}}
    hint = int8_over_budget_hint(manifest, ["int8_cpu"])
    assert hint.startswith("int8_cpu: post-training INT8 loses more than its budget on the test split")
    assert "quantization-aware: `edgereid train qat_quickstart --set qat.init=/r/quickstart/best.pt`" in hint
    assert "layers kept in float (--max-map-drop, on by default)" in hint  # exported with the search off
    searched = int8_over_budget_hint({**manifest, "network": "cnn16", "recipe": "quickstart_mutual"}, ["int8"])
    assert "`qat.init` is /r/quickstart/best.pt and `qat.network` cnn16" in searched
    assert "on by default" not in searched and "larger --max-map-drop" in searched


def test_cli_int8_is_protected_by_default_and_opts_out_with_none(
    checkpoint: Path, cache_dir: Path, tmp_path: Path
) -> None:
    group = _ReportingGroup("edgereid")
    group.add_command(export_command)
    runner = CliRunner()
    common = ["--int8", "--target", "cpu", "--calibration-images", "16", "--calibration-cache", str(cache_dir),
              "--no-verify"]
    protected = runner.invoke(group, ["export", str(checkpoint), "--out", str(tmp_path / "default"), *common])
    assert protected.exit_code == 0, protected.output
    entry = load_bundle(tmp_path / "default").manifest["models"]["int8_cpu"]
    accuracy = entry["accuracy"]
    assert entry["tolerance_mAP_points"] == accuracy["max_mAP_drop_points"] == 0.5
    assert accuracy["heldout_margin_points"] == HELDOUT_MARGIN_POINTS and accuracy["heldout"]["num_query"] > 0
    assert accuracy["drop_points_after"] <= 0.5 - HELDOUT_MARGIN_POINTS
    shown = " ".join(protected.output.split())
    assert (f"(budget 0.50, accepted on held-out at ≤ {0.5 - HELDOUT_MARGIN_POINTS:.2f} after a "
            f"{HELDOUT_MARGIN_POINTS:.2f} margin)") in shown
    plain = runner.invoke(group, ["export", str(checkpoint), "--out", str(tmp_path / "plain"), *common,
                                  "--max-map-drop", "none", "--json"])
    assert plain.exit_code == 0, plain.output
    entry = json.loads(plain.stdout)["models"]["int8_cpu"]
    assert entry["accuracy"] is None and entry["tolerance_mAP_points"] == 0.5  # verified against the default
    print_plain = runner.invoke(group, ["export", str(checkpoint), "--out", str(tmp_path / "plain"), *common,
                                        "--max-map-drop", "NONE", "--overwrite"])
    assert "int8_cpu: no accuracy-aware search (--max-map-drop none)" in " ".join(print_plain.output.split())
    for value, expected in (("lots", "neither a number of mAP points nor 'none'"), ("-1", "at least 0")):
        refused = runner.invoke(group, ["export", str(checkpoint), "--out", str(tmp_path / "x"), *common,
                                        "--max-map-drop", value])
        assert refused.exit_code == 2 and expected in refused.output and not (tmp_path / "x").exists()


@pytest.mark.skipif(not HAS_MODELOPT, reason="nvidia-modelopt not installed")
def test_both_targets_share_one_calibration_set(checkpoint: Path, cache_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from edgereid.export import precision

    loads = []
    original = precision.load_calibration_set

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(precision, "load_calibration_set", counted)
    bundle = export_checkpoint(checkpoint, tmp_path / "both", precisions=("int8", "int8_cpu"),
                               calibration_method="max", calibration_images=CALIBRATION_IMAGES,
                               calibration_cache_dir=cache_dir)
    assert len(loads) == 1 and bundle.precisions == ["fp32", "int8", "int8_cpu"]
    trt, cpu = bundle.manifest["models"]["int8"], bundle.manifest["models"]["int8_cpu"]
    assert (trt["target"], cpu["target"]) == ("trt", "cpu")
    assert trt["calibration"]["data_sha256"] == cpu["calibration"]["data_sha256"]
    assert trt["calibration"]["method"] == cpu["calibration"]["method"] == "max"
    # Equalization is each target's own default (it helped the CPU scheme and hurt TensorRT's where measured).
    assert trt["equalization"] is None and cpu["equalization"]["pairs"]
    # Bias correction is the TensorRT target's default (it helped there and did nothing measurable on the CPU's).
    assert trt["bias_correction"]["weight_levels"] == 127 and cpu["bias_correction"] is None
    # TensorRT's Q/DQ is symmetric int8 throughout; the CPU model's activations are uint8.
    trt_model = onnx.load(str(bundle.model_path("int8")))
    zero_points = {t.name: t for t in trt_model.graph.initializer}
    assert {zero_points[node.input[2]].data_type for node in trt_model.graph.node
            if node.op_type == "QuantizeLinear"} == {onnx.TensorProto.INT8}
    # Around the INT8 layers the TensorRT model computes in float16 (a strongly typed engine runs the graph's types),
    # behind the bundle's float32 interface; ONNX Runtime verified this very graph.
    assert trt["high_precision_dtype"] == "fp16"
    scales = {zero_points[node.input[1]].data_type for node in trt_model.graph.node if node.op_type == "QuantizeLinear"}
    assert scales == {onnx.TensorProto.FLOAT16}
    interface = [*trt_model.graph.input, *trt_model.graph.output]
    assert {value.type.tensor_type.elem_type for value in interface} == {onnx.TensorProto.FLOAT}
    assert bundle.manifest["parity_random_input"]["int8"]["cosine_min"] > 0.9  # ONNX Runtime ran it
