"""Quantization-aware training end to end on tiny synthetic data: fake quantizers on every quantizable layer and in
the checkpoint, a smaller INT8 error than post-training quantization, both INT8 targets exported from the QAT
checkpoint matching its fake-quantized PyTorch embeddings in ONNX Runtime, exact resume, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgereid.data.synthetic import generate_synthetic
from edgereid.data.transforms import EvalTransform
from edgereid.errors import ConfigError
from edgereid.recipes import Recipe, recipe_from_dict
from edgereid.training import load_checkpoint, train
from edgereid.training.data import decode_split, prepare_dataset
from edgereid.training.evaluate import build_model, build_reference_model
from edgereid.training.inference import embed_images

pytest.importorskip("modelopt.torch.quantization")

pytestmark = pytest.mark.slow

INT8 = ("int8", "int8_cpu")


def _recipe(root: Path, out: Path, name: str, **sections: dict) -> Recipe:
    content: dict = {
        "name": name,
        "seed": 1,
        "data": {"root": str(root), "format": "market1501", "size": [64, 32], "sampler": {"p": 4, "k": 4}},
        "model": {"backbone": {"name": "plaincnn16", "last_stride": 1}},
        "solver": {"lr": 3e-3, "epochs": 4, "iters_per_epoch": 10, "schedule": {"name": "constant"}, "amp": "none"},
        "train": {"output_dir": str(out / "{name}"), "device": "cpu", "eval_period": 4, "log_period": 5,
                  "tensorboard": False},
    }
    for section, values in sections.items():
        content[section] = {**content.get(section, {}), **values}
    return recipe_from_dict(content)


def _qat_recipe(root: Path, out: Path, init: Path, **sections: dict) -> Recipe:
    """QAT that learns only to reproduce the FP32 embeddings (its other losses all but off), so that what it must improve
    is measurable on a model this small."""
    qat = {"init": str(init), "calibration_images": 32, "kl_weight": 0.0, "metric_weight": 0.0,
           "embedding_weight": 1.0, **sections.pop("qat", {})}
    solver = {"lr": 5e-6, "epochs": 2, "iters_per_epoch": 12, **sections.pop("solver", {})}
    losses = {"ce": {"weight": 0.01}, "triplet": {"weight": 0.0}, **sections.pop("losses", {})}
    # Un-augmented images, the ones the INT8 error is measured on.
    augment = {"flip": {"p": 0.0}, "pad_crop": {"p": 0.0}, **sections.pop("augment", {})}
    return _recipe(root, out, "tiny-qat", qat=qat, solver=solver, losses=losses, augment=augment, **sections)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A plaincnn16 trained for 40 iterations on 16 synthetic identities: (data root, best checkpoint)."""
    base = tmp_path_factory.mktemp("qat")
    root = base / "synthetic"
    generate_synthetic(root, num_ids=16, num_cameras=2, seed=3, size=(64, 32), images_per_id_per_camera=4)
    result = train(_recipe(root, base / "runs", "tiny-fp32"), show_progress=False)
    assert result.best_checkpoint is not None
    return root, result.best_checkpoint


@pytest.fixture(scope="module")
def qat_run(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, init = trained
    out = tmp_path_factory.mktemp("qat-runs")
    result = train(_qat_recipe(root, out, init, train={"checkpoint_period": 1}), show_progress=False)
    return result.run_dir


def _train_images(root: Path, recipe: Recipe, count: int = 48) -> torch.Tensor:
    data = recipe.data.model_copy(update={"root": root})
    decoded = decode_split(prepare_dataset(data).train[:count], data, "test-qat")
    transform = EvalTransform(data.size, data.mean, data.std)
    return transform(torch.from_numpy(decoded.images).permute(0, 3, 1, 2))


def test_every_quantizable_layer_is_fake_quantized_and_recorded(qat_run: Path) -> None:
    from edgereid.training.qat import quantized_layers

    checkpoint = load_checkpoint(qat_run / "last.pt")
    assert checkpoint.quantization is not None
    assert checkpoint.quantization.init["sha256"] and checkpoint.quantization.calibration["images"] == 32
    model = build_model(checkpoint)
    reference = build_reference_model(checkpoint)
    # Every convolution and linear layer of the test forward (the classifier trains only) has its quantizers.
    expected = sorted(
        name for name, module in reference.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear) and "classifier" not in name
    )
    assert sorted(quantized_layers(model)) == expected and len(expected) >= 7
    for name in expected:
        layer = model.get_submodule(name)
        assert layer.input_quantizer.is_enabled and layer.input_quantizer.amax.numel() == 1
        # Per-channel weight ranges, each its channel's largest |w| (they follow the weights).
        weight_amax = layer.weight_quantizer.amax.flatten()
        assert weight_amax.numel() == layer.weight.shape[0]
        assert torch.allclose(weight_amax, layer.weight.abs().flatten(1).amax(1))
    assert not any("BatchNorm2d" in type(module).__name__ for module in model.modules())


def test_qat_brings_int8_closer_to_fp32_than_post_training_quantization(
    trained: tuple[Path, Path], qat_run: Path
) -> None:
    from edgereid.training.qat import quantize_model

    root, init = trained
    checkpoint = load_checkpoint(qat_run / "last.pt")
    fp32 = build_reference_model(checkpoint)
    images = _train_images(root, checkpoint.recipe)
    # Post-training quantization: the same quantizers calibrated the same way, no training.
    ptq = quantize_model(build_model(load_checkpoint(init)), [images[:32]])
    qat = build_model(checkpoint)
    with torch.no_grad():
        target = fp32(images)
        ptq_error = (ptq(images) - target).pow(2).mean().item()
        qat_error = (qat(images) - target).pow(2).mean().item()
    # Measured: 0.87 of PTQ's error under pytest-xdist, 0.74 in one process (24 iterations at lr 5e-6).
    assert qat_error < 0.92 * ptq_error, (qat_error, ptq_error)


def test_both_int8_targets_from_a_qat_checkpoint_match_its_fake_quantized_embeddings(
    trained: tuple[Path, Path], qat_run: Path, tmp_path: Path
) -> None:
    import onnx

    from edgereid.export import export_checkpoint
    from edgereid.export.common import _cosine, _session, embed_onnx

    bundle = export_checkpoint(qat_run / "last.pt", tmp_path / "bundle", precisions=["fp32", "int8", "int8_cpu"],
                               calibration_images=32, verify=True)
    checkpoint = load_checkpoint(qat_run / "last.pt")
    assert bundle.manifest["quantization_aware"]["fp32_from"]["sha256"] == checkpoint.quantization.init["sha256"]
    data = checkpoint.recipe.data
    decoded = decode_split(prepare_dataset(data).query, data, "test-qat-query")
    transform = EvalTransform(data.size, data.mean, data.std)
    fake_quantized = embed_images(build_model(checkpoint), decoded.images, transform, torch.device("cpu"))
    fp32 = embed_images(build_reference_model(checkpoint), decoded.images, transform, torch.device("cpu"))
    for precision, floor in zip(INT8, (0.999, 0.99), strict=True):
        onnx_embeddings = embed_onnx(_session(bundle.model_path(precision)), decoded.images, data.mean, data.std)
        assert _cosine(onnx_embeddings, fake_quantized).min() > floor, precision
    # The FP32 model of the bundle is the network QAT started from, not the fine-tuned one.
    fp32_onnx = embed_onnx(_session(bundle.model_path("fp32")), decoded.images, data.mean, data.std)
    assert _cosine(fp32_onnx, fp32).min() > 0.99999
    # TensorRT's model keeps every weight as INT8 with its scales; nothing is kept in float.
    graph = onnx.load(str(bundle.model_path("int8"))).graph
    convolutions = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    int8_weights = {item.name for item in graph.initializer if item.data_type == onnx.TensorProto.INT8}
    dequantized = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    assert convolutions and all(dequantized.get(node.input[1]) in int8_weights for node in convolutions)
    cpu_graph = onnx.load(str(bundle.model_path("int8_cpu"))).graph
    cpu_convolutions = [node for node in cpu_graph.node if node.op_type == "Conv"]
    cpu_dequantized = {node.output[0] for node in cpu_graph.node if node.op_type == "DequantizeLinear"}
    assert all(node.input[0] in cpu_dequantized and node.input[1] in cpu_dequantized for node in cpu_convolutions)
    verification = bundle.manifest["verification"]
    assert verification["num_query"] == 16
    assert all(len(verification["precisions"][precision]["delta_mAP_ci95_points"]) == 2 for precision in INT8)


def test_qat_resumes_exactly(trained: tuple[Path, Path], qat_run: Path, tmp_path: Path) -> None:
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(qat_run / "epoch_0001.pt", interrupted / "last.pt")
    shutil.copy(qat_run / "recipe.yaml", interrupted / "recipe.yaml")
    resumed = train(resume=interrupted, show_progress=False)
    assert resumed.iterations == 24
    expected = load_checkpoint(qat_run / "last.pt").model_state
    actual = load_checkpoint(interrupted / "last.pt").model_state
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def test_eval_of_a_qat_checkpoint_scores_the_fake_quantized_network(qat_run: Path) -> None:
    from edgereid.training import evaluate_checkpoint

    checkpoint = load_checkpoint(qat_run / "last.pt")
    report = evaluate_checkpoint(qat_run / "last.pt")
    assert report.result.mAP == pytest.approx(checkpoint.metrics["mAP"], abs=1e-9)


def test_bad_qat_input_is_refused_before_anything_is_written(
    trained: tuple[Path, Path], qat_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, init = trained
    out = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"qat.init .* is not the recipe's model: model.backbone.name differ"):
        train(_qat_recipe(root, out, init, model={"backbone": {"name": "plaincnn32", "last_stride": 1}}),
              show_progress=False)
    with pytest.raises(ConfigError, match=r"is already quantization-aware trained; give the FP32 checkpoint"):
        train(_qat_recipe(root, out, qat_run / "last.pt"), show_progress=False)
    other = tmp_path / "other"
    generate_synthetic(other, num_ids=12, num_cameras=2, seed=5, size=(64, 32), images_per_id_per_camera=2)
    with pytest.raises(ConfigError, match=r"qat.init .* classifies \d+ identities, the student's training data has"):
        train(_qat_recipe(other, out, init), show_progress=False)
    with pytest.raises(Exception, match=r"qat.init: checkpoint .*missing.pt' does not exist"):
        train(_qat_recipe(root, out, tmp_path / "missing.pt"), show_progress=False)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "modelopt" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match=r"needs nvidia-modelopt, which is not installed here"):
        train(_qat_recipe(root, out, init), show_progress=False)
    assert not out.exists()


def test_qat_recipe_cannot_also_distill_or_learn_mutually(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, init = trained
    with pytest.raises(ConfigError, match=r"qat fine-tunes one trained network .* remove mutual and distill"):
        _qat_recipe(root, tmp_path, init, distill={"teacher": str(init)})


def test_fake_quantized_onnx_graph_rounds_weights_like_onnx(tmp_path: Path) -> None:
    """The INT8 weights stored in the TensorRT model are QuantizeLinear's own result (round half to even)."""
    from edgereid.export.qat_export import _quantized

    values = np.array([[0.5, 1.5, -2.5, 2.49]], dtype=np.float64)
    assert _quantized(values, np.array([1.0]), np.array([0], dtype=np.int8), 1).tolist() == [[0, 2, -2, 2]]
    clipped = _quantized(np.array([[300.0, -300.0]]), np.array([1.0]), np.array([0], dtype=np.int8), 1)
    assert clipped.tolist() == [[127, -128]]


@pytest.mark.parametrize(("backbone", "expected"), [("resnet18", 11), ("mobilenetv2", 10), ("plaincnn16", 0)])
def test_residual_branch_ends_get_output_quantizers(backbone: str, expected: int) -> None:
    """A residual branch's last convolution (and ResNet's downsampling shortcut) feeds an addition INT8 runtimes
    compute in INT8: QAT quantizes its output; a block's input, which the next convolution quantizes, is left."""
    from edgereid.modeling import create_model
    from edgereid.modeling.config import ModelConfig
    from edgereid.training.qat import quantize_model

    model = create_model(ModelConfig.model_validate({"backbone": {"name": backbone, "last_stride": 1}}), 4).eval()
    quantized = quantize_model(model, [torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))])
    ends = sorted(name.removesuffix(".output_quantizer") for name, module in quantized.named_modules()
                  if name.endswith("output_quantizer") and module.is_enabled)
    assert len(ends) == expected
    if backbone == "resnet18":
        assert "backbone.body.layer2.0.downsample.0" in ends and "backbone.body.layer2.0.conv1" not in ends
    if backbone == "mobilenetv2":
        # Blocks 3, 5, 6, 8-10, 12, 13, 15, 16 have a shortcut; block 2 (stride 2) has none.
        assert sorted(int(name.split(".")[2]) for name in ends) == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]


def test_cpu_model_of_a_residual_qat_network_adds_in_int8(tmp_path: Path) -> None:
    """MobileNetV2's shortcut additions read dequantized INT8 on both sides — ONNX Runtime fuses that into an INT8
    addition — with no float-to-float Cast between a convolution and its addition (the torch export writes one after
    each output quantizer) and no constant left unread."""
    import onnx

    from edgereid.export.calibration import CalibrationSet, load_calibration_policy
    from edgereid.export.qat_export import quantize_qat_int8_cpu
    from edgereid.modeling import create_model
    from edgereid.modeling.config import ModelConfig
    from edgereid.training.qat import quantize_model

    model = create_model(ModelConfig.model_validate({"backbone": {"name": "mobilenetv2", "last_stride": 1}}), 4)
    images = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    quantized = quantize_model(model.eval(), [images]).eval()
    calibration = CalibrationSet(images.numpy(), [f"{i}.jpg" for i in range(8)], load_calibration_policy(), "0" * 64,
                                 cache_hit=False, cache_file=tmp_path / "unused")
    target = tmp_path / "model.int8_cpu.onnx"
    quantize_qat_int8_cpu(quantized, target, (64, 32), calibration)
    graph = onnx.load(str(target)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    additions = [node for node in graph.node if node.op_type == "Add"]
    assert len(additions) == 10 and all(name in dequantized for node in additions for name in node.input)
    assert not [node for node in graph.node if node.op_type == "Cast"]
    read = {name for node in graph.node for name in node.input}
    assert all(item.name in read for item in graph.initializer)
