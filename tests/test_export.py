"""Export: BatchNorm folding, ONNX export and its parity with PyTorch in ONNX Runtime, the bundle (manifest,
sha256, atomic write), verification against the checkpoint, INT8 calibration policy, and the errors a user meets."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgereid.cli import _ReportingGroup
from edgereid.cli.export import export_command
from edgereid.data.records import ImageRecord
from edgereid.errors import ConfigError, DataError
from edgereid.evaluation import RankResult, evaluate_rank
from edgereid.export import (
    count_batchnorm,
    export_checkpoint,
    export_onnx,
    fold_batchnorm,
    fold_batchnorm_with_report,
    load_bundle,
    select_calibration_records,
    verify_bundle,
)
from edgereid.export.bundle import delta_interval_fields, more_queries_remedy
from edgereid.locking import LockTimeoutError
from edgereid.modeling import create_model
from edgereid.modeling.config import ModelConfig
from edgereid.modeling.layers.ibn import IBN
from edgereid.training import evaluate_checkpoint
from tests.conftest import lock_held_elsewhere
from tests.factories import SIZE, make_checkpoint, randomise_norms

HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None
HAS_FP16 = importlib.util.find_spec("onnxconverter_common") is not None


def _model(backbone: dict, head: dict | None = None, pooling: str = "avg") -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig.model_validate({"backbone": backbone, "head": head or {}, "pooling": pooling})
    return randomise_norms(create_model(config, num_classes=5))


@pytest.mark.parametrize(
    "backbone",
    [
        {"name": "resnet18"},
        {"name": "resnet18", "ibn": "a"},
        {"name": "mobilenetv2"},
        {"name": "efficientnet_lite0"},
        {"name": "osnet_x0_25"},
        {"name": "plaincnn16"},
    ],
    ids=["resnet18", "resnet18-ibn-a", "mobilenetv2", "efficientnet_lite0", "osnet_x0_25", "plaincnn16"],
)
def test_folding_keeps_the_output_and_removes_every_batchnorm2d(backbone: dict) -> None:
    model = _model(backbone)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    folded, report = fold_batchnorm_with_report(model)
    images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model(images), folded(images)
    assert isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)
    scale = float(expected.abs().max())
    assert float((actual - expected).abs().max()) <= 1e-5 * max(1.0, scale)
    assert count_batchnorm(model) > 0
    assert count_batchnorm(folded) == 0
    assert len(report.folded) == count_batchnorm(model)
    # The BN-neck has no layer before it to fold into (pooling feeds it): it stays.
    assert report.kept == ["heads.neck.bn"]
    assert isinstance(folded.get_submodule("heads.neck.bn"), nn.BatchNorm1d)
    # The original is untouched.
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_folding_check_passes_an_exact_fold_and_stops_a_broken_one() -> None:
    from edgereid.export import ExportError
    from edgereid.export.fold import check_folding

    model = _model({"name": "resnet18", "ibn": "a"})
    folded = fold_batchnorm(model)
    images = torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    report = check_folding(model, folded, images, "random")
    assert report["cosine_min"] > 0.99999 and report["images"] == 3 and report["source"] == "random"
    with torch.no_grad():
        conv = folded.get_submodule("backbone.body.layer4.1.conv2")
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        conv.bias.add_(torch.linspace(-1.0, 1.0, conv.bias.numel()))  # a fold whose BN shift went wrong
    with pytest.raises(ExportError, match="BatchNorm folding changed the model's output"):
        check_folding(model, folded, images, "random")


def test_ibn_keeps_instance_norm_and_folds_its_batchnorm_half() -> None:
    model = _model({"name": "resnet18", "ibn": "a"})
    folded = fold_batchnorm(model)
    ibns = [module for module in folded.modules() if isinstance(module, IBN)]
    assert len(ibns) == 6  # layers 1–3, two blocks each
    assert all(isinstance(ibn.IN, nn.InstanceNorm2d) and isinstance(ibn.BN, nn.Identity) for ibn in ibns)


def test_reduction_neck_folds_into_its_linear() -> None:
    model = _model({"name": "resnet18"}, {"kind": "reduction", "embedding_dim": 32})
    folded, report = fold_batchnorm_with_report(model)
    assert "heads.neck.project.1" in report.folded and report.kept == ["heads.neck.bn"]
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        expected, actual = model(images), folded(images)
    assert isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)
    assert float((actual - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))


# avgmax and clipavg: FastReID's AdaptiveAvgMaxPool and ClipGlobalAvgPool (ReduceMax, Clip in the graph). On these
# random weights over a third of clipavg's features sit inside (0, 1) and most above 1: the clamp is exercised.
@pytest.mark.parametrize("pooling", ["avg", "avgmax", "clipavg"])
def test_onnx_matches_torch_with_a_dynamic_batch(pooling: str, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    model = _model({"name": "resnet18", "ibn": "a"}, pooling=pooling)
    path = tmp_path / "model.onnx"
    info = export_onnx(fold_batchnorm(model), path, SIZE)
    assert info["feature_dim"] == 512 and info["simplifier"] in ("onnxsim", "onnxslim")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["embeddings"]
    assert not any(node.op_type == "BatchNormalization" and "layer" in node.name for node in proto.graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        images = torch.randn(batch, 3, *SIZE)
        with torch.no_grad():
            expected = model(images)
        assert isinstance(expected, torch.Tensor)
        (actual,) = session.run(["embeddings"], {"images": images.numpy()})
        assert actual.shape == (batch, 512)
        np.testing.assert_allclose(actual, expected.numpy(), atol=1e-4, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name != "model.onnx"]  # no temporary file left


# --- bundles ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 IBN-a checkpoint on tiny synthetic data, written as training writes one."""
    return make_checkpoint(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def bundle_dir(checkpoint: Path) -> Path:
    out = checkpoint.parent.parent / "bundle"
    export_checkpoint(checkpoint, out, verify=True)
    return out


def test_bundle_layout_and_manifest(bundle_dir: Path, checkpoint: Path) -> None:
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["manifest.json", "model.fp32.onnx"]
    # Nothing left beside it from the build but the destination's (released) lock file.
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == [".bundle.lock", "bundle", "run", "synthetic"]
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["format"] == "edgereid-bundle" and manifest["format_version"] == 1
    # Folding was checked on real train images, and the data set is recorded for torch-free verification.
    assert manifest["fold"]["check"]["source"] == "train" and manifest["fold"]["check"]["cosine_min"] > 0.99999
    assert manifest["data"]["root"] == str((bundle_dir.parent / "synthetic").resolve())
    assert manifest["recipe"] == "tiny" and manifest["backbone"] == "resnet18" and manifest["ibn"] == "a"
    assert manifest["input"]["height"] == 64 and manifest["input"]["width"] == 32
    assert manifest["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert manifest["input"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert manifest["output"]["feature_dim"] == 512
    assert manifest["opset"] == 20 and manifest["folded"] is True
    assert manifest["source"]["checkpoint"] == str(checkpoint.resolve()) and manifest["source"]["epoch"] == 3
    entry = manifest["models"]["fp32"]
    data = (bundle_dir / "model.fp32.onnx").read_bytes()
    assert entry["file"] == "model.fp32.onnx" and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["bytes"] == len(data)
    assert manifest["parity_random_input"]["fp32"]["max_abs_diff"] < 1e-4
    assert load_bundle(bundle_dir).precisions == ["fp32"]


def test_verification_matches_the_checkpoint(bundle_dir: Path, checkpoint: Path) -> None:
    verification = json.loads((bundle_dir / "manifest.json").read_text())["verification"]
    assert verification["passed"] is True and verification["flip"] is True
    fp32 = verification["precisions"]["fp32"]
    reference = evaluate_checkpoint(checkpoint, device="cpu")
    assert verification["torch"]["mAP"] == pytest.approx(reference.result.mAP, abs=1e-9)
    assert verification["num_query"] == reference.num_query and verification["num_gallery"] == reference.num_gallery
    assert abs(fp32["delta_mAP_points"]) <= 0.1
    assert fp32["mAP"] == pytest.approx(reference.result.mAP, abs=1e-3)
    assert fp32["cosine_min"] > 0.99999
    assert verification["num_valid_queries"] == reference.result.num_valid_queries
    low, high = fp32["delta_mAP_ci95_points"]
    assert low <= high and fp32["evaluation_too_small"] is ((high - low) / 2 > 0.1)
    assert (fp32["evaluation_warning"] is None) is not fp32["evaluation_too_small"]
    # verify_bundle on the written bundle, on fewer images, gives the same agreement.
    again = verify_bundle(bundle_dir, max_images=8)
    assert again["num_query"] == 8 and again["num_gallery"] == 8 and again["passed"] is True
    assert 0 < again["num_valid_queries"] <= 8


def test_a_tampered_bundle_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    with (copy / "model.fp32.onnx").open("ab") as file:
        file.write(b"\0")
    with pytest.raises(DataError, match="does not match the sha256"):
        load_bundle(copy)
    with pytest.raises(DataError, match="no manifest.json"):
        load_bundle(tmp_path)


def test_a_failed_export_leaves_no_bundle(checkpoint: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    import edgereid.export.bundle as bundle_module

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(bundle_module, "_random_parity", fail)  # runs after the ONNX file is written
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError, match="interrupted"):
        export_checkpoint(checkpoint, out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [".bundle.lock"]
    # Overwriting: the old bundle survives a failed export intact.
    manifest_before = (bundle_dir / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError, match="interrupted"):
        export_checkpoint(checkpoint, bundle_dir, overwrite=True)
    assert (bundle_dir / "manifest.json").read_bytes() == manifest_before
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == [".bundle.lock", "bundle", "run", "synthetic"]


def test_an_export_cleans_up_after_a_killed_one(checkpoint: Path, bundle_dir: Path, tmp_path: Path) -> None:
    # A SIGKILL leaves a staging directory; one during publishing can leave the old bundle retired, none in place.
    out = tmp_path / "bundle"
    shutil.copytree(bundle_dir, tmp_path / ".bundle.old-x1" / "bundle")
    (tmp_path / ".bundle.staging-y2").mkdir()
    (tmp_path / ".bundle.staging-y2" / "model.fp32.onnx").write_bytes(b"half")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_checkpoint(checkpoint, out)  # the retired bundle is back in place, so this is no overwrite
    assert (out / "manifest.json").read_bytes() == (bundle_dir / "manifest.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.lock", "bundle"]


def test_exports_into_one_destination_take_turns(checkpoint: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    monkeypatch.setenv("EDGEREID_LOCK_TIMEOUT", "0.2")
    with lock_held_elsewhere(out), pytest.raises(LockTimeoutError, match=r"'.*bundle' is being written by"):
        export_checkpoint(checkpoint, out)
    assert not out.exists()


def test_bad_requests_are_named(checkpoint: Path, bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "out")
    with pytest.raises(ConfigError, match="not empty.*--overwrite"):
        export_checkpoint(checkpoint, bundle_dir)
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        export_checkpoint(checkpoint, tmp_path / "out", precisions=("fp32", "int4"))
    with pytest.raises(ConfigError, match="no network 'peer'"):
        export_checkpoint(checkpoint, tmp_path / "out", network="peer")
    for opset in (12, 21):
        with pytest.raises(ConfigError, match=f"--opset {opset}: expected 13 to 20; TensorRT 10.3"):
            export_checkpoint(checkpoint, tmp_path / "out", opset=opset)
    assert not (tmp_path / "out").exists()


def _ranked(num_queries: int, demoted: int) -> tuple[RankResult, RankResult]:
    """Reference and candidate scores of queries with one true match each, ranked first by the reference; the
    candidate ranks it behind a shared distractor for the first ``demoted`` queries (AP 1 → 1/2)."""
    rows = np.arange(num_queries)
    reference = np.ones((num_queries, num_queries + 1), dtype=np.float32)
    reference[rows, rows] = 0.1
    reference[:, -1] = 0.5
    candidate = reference.copy()
    candidate[rows[:demoted], rows[:demoted]] = 0.6
    labels = (rows, np.append(rows, -1), np.zeros(num_queries), np.ones(num_queries + 1))
    return evaluate_rank(reference, *labels), evaluate_rank(candidate, *labels)


def test_verification_names_an_evaluation_set_too_small_for_its_budget() -> None:
    # 10 queries, one of them half as good: ΔmAP -5 points; a resample draws that query k ~ Binomial(10, 0.1)
    # times for a ΔmAP of -5k, so the interval runs from k = 3 (P(k ≥ 3) = 7 %, P(k ≥ 4) = 1.3 %) to k = 0.
    reference, candidate = _ranked(10, demoted=1)
    assert np.nanmean(candidate.per_query_ap) == candidate.mAP == 0.95
    fields = delta_interval_fields(reference, candidate, 0.5, more_queries_remedy("market1501-holdout", 20))
    assert fields["delta_mAP_ci95_points"] == [-15.0, 0.0] and fields["evaluation_too_small"] is True
    assert fields["evaluation_warning"] == (
        "the evaluation set of 10 queries is too small to judge a ±0.5-point mAP budget: the 95% interval of ΔmAP is "
        "[-15.00, +0.00] points; to judge it, drop --max-images (it kept the first 20 query images), or hold out "
        "more identities as query/gallery when training (the recipe's data.holdout.num_test_ids; `edgereid data "
        "info ROOT --holdout-ids N` shows the query split N identities give), or verify on a data set with a larger "
        "query split (--data ROOT)"
    )
    # 2,000 queries, 1 % of them half as good: the same kind of loss, -0.5 points, now measured to ±0.22.
    reference, candidate = _ranked(2000, demoted=20)
    fields = delta_interval_fields(reference, candidate, 0.5, more_queries_remedy("market1501", None))
    low, high = fields["delta_mAP_ci95_points"]
    assert low < -0.5 < high and (high - low) / 2 == pytest.approx(1.96 * 50 * np.sqrt(0.01 * 0.99 / 2000), rel=0.15)
    assert fields["evaluation_too_small"] is False and fields["evaluation_warning"] is None
    # Without a budget there is nothing to judge: the interval alone.
    unjudged = delta_interval_fields(reference, candidate, None, "")
    assert unjudged["delta_mAP_ci95_points"] == [low, high] and unjudged["evaluation_too_small"] is None
    assert more_queries_remedy("market1501", None) == (
        "to judge it, verify on a data set with a larger query split (--data ROOT)"
    )


def _cli() -> _ReportingGroup:
    group = _ReportingGroup("edgereid")
    group.add_command(export_command)
    return group


def test_cli_export(checkpoint: Path, bundle_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-bundle"
    result = runner.invoke(_cli(), ["export", str(checkpoint.parent), "--out", str(out), "--max-images", "8"])
    assert result.exit_code == 0, result.output
    assert "model.fp32.onnx" in result.output and "passed" in result.output
    verification = json.loads((out / "manifest.json").read_text())["verification"]
    fp32 = verification["precisions"]["fp32"]
    low, high = fp32["delta_mAP_ci95_points"]
    shown = " ".join(result.output.split())  # rich wraps lines at the console width
    assert (f"fp32 mAP {fp32['mAP']:.2%} Δ {fp32['delta_mAP_points']:+.2f} [{low:+.2f}, {high:+.2f}] on "
            f"{verification['num_valid_queries']} queries passed (±0.1)") in shown
    as_json = runner.invoke(_cli(), ["export", str(checkpoint), "--out", str(out), "--overwrite", "--no-verify",
                                     "--json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)
    assert payload["verification"] is None and payload["models"]["fp32"]["file"] == "model.fp32.onnx"
    refused = runner.invoke(_cli(), ["export", str(checkpoint), "--out", str(bundle_dir)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    missing = runner.invoke(_cli(), ["export", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "nothing.pt" in missing.output and "does not exist" in missing.output


# --- calibration and reduced precisions ---------------------------------------------------------------------


def test_calibration_is_spread_over_identities_and_cameras_and_seeded() -> None:
    train = [ImageRecord(Path(f"{pid:04d}_c{cam}_{i}.jpg"), pid, cam) for pid in range(10) for cam in range(3)
             for i in range(4)]
    chosen = select_calibration_records(train, 30, seed=7)
    assert len({(record.pid, record.camid) for record in chosen}) == 30  # every group once before any twice
    assert select_calibration_records(list(reversed(train)), 30, seed=7) == chosen
    assert select_calibration_records(train, 30, seed=8) != chosen
    assert len(select_calibration_records(train, 1000)) == len(train)
    with pytest.raises(ConfigError, match="at least 1 image"):
        select_calibration_records(train, 0)


@pytest.mark.skipif(not (HAS_MODELOPT and HAS_FP16), reason="nvidia-modelopt or onnxconverter-common not installed")
def test_fp16_and_int8_bundle(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgereid.export import calibration, precision

    drawn: list[ImageRecord] = []

    def spy(train: list[ImageRecord], num_images: int, seed: int) -> list[ImageRecord]:
        chosen = calibration.select_calibration_records(train, num_images, seed)
        drawn.extend(chosen)
        return chosen

    monkeypatch.setattr(precision, "select_calibration_records", spy)
    bundle = export_checkpoint(checkpoint, tmp_path / "b", precisions=("int8", "fp16"), verify=True,
                               calibration_images=16, max_images=16)
    assert bundle.precisions == load_bundle(bundle.path).precisions == ["fp32", "fp16", "int8"]
    assert sorted(p.name for p in bundle.path.iterdir()) == [
        "manifest.json", "model.fp16.onnx", "model.fp32.onnx", "model.int8.onnx"]
    # Calibration images come from the train split only.
    assert len(drawn) == 16 and all("bounding_box_train" in str(record.path) for record in drawn)
    assert bundle.manifest["models"]["int8"]["calibration"]["split"] == "train"
    verification = bundle.manifest["verification"]["precisions"]
    assert verification["fp16"]["cosine_min"] > 0.999
    assert verification["int8"]["cosine_min"] > 0.95
