"""The runtime core: ONNX Runtime and PyTorch runners, the Embedder (preprocessing identical to training's, flip
test, L2 normalisation, batching, bad input), verify_runtime and `edgereid verify`, and the torch-free import."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgereid.cli import _ReportingGroup
from edgereid.cli.verify import verify_command
from edgereid.data import load_dataset
from edgereid.data.images import decode_image, decode_records
from edgereid.data.records import ImageRecord
from edgereid.data.selection import DataSelection
from edgereid.data.transforms import EvalTransform
from edgereid.errors import ConfigError, DataError
from edgereid.evaluation.features import evaluate_features
from edgereid.export import ExportBundle
from edgereid.export import bundle as bundle_module
from edgereid.runtime import Embedder, create_runner, verify_runtime
from edgereid.training.checkpoint import load_checkpoint
from edgereid.training.evaluate import build_model
from edgereid.training.inference import embed_images
from tests.factories import SIZE, make_bundle

REPO = Path(__file__).resolve().parents[1]
HAS_FP16 = importlib.util.find_spec("onnxconverter_common") is not None


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="module")
def bundle(base: Path) -> ExportBundle:
    return make_bundle(base, ("fp32", "fp16") if HAS_FP16 else ("fp32",))


@pytest.fixture(scope="module")
def data_root(bundle: ExportBundle, base: Path) -> Path:
    return base / "synthetic"


@pytest.fixture(scope="module")
def torch_model(bundle: ExportBundle) -> torch.nn.Module:
    return build_model(load_checkpoint(bundle.manifest["source"]["checkpoint"]), "cpu")


@pytest.fixture(scope="module")
def image_files(base: Path) -> list[Path]:
    """Files of the kinds a deployment meets: larger and smaller than the input, odd sizes, PNG, RGBA, grayscale."""
    rng = np.random.default_rng(7)
    folder = base / "images"
    folder.mkdir()
    files = []
    for index, (height, width, mode, suffix) in enumerate(
        [(128, 64, "RGB", "jpg"), (37, 23, "RGB", "jpg"), (64, 32, "RGB", "png"), (90, 41, "RGBA", "png"),
         (70, 30, "L", "jpg"), (256, 128, "RGB", "jpg"), (64, 33, "RGB", "jpg")]
    ):
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        path = folder / f"{index}.{suffix}"
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
        files.append(path)
    return files


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a.astype(np.float64) * b).sum(axis=1))


def _random_batch(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, *SIZE)).astype(np.float32)


# --- runners -----------------------------------------------------------------------------------------------------


def test_onnxruntime_and_torch_runners_agree_at_every_batch_size(bundle: ExportBundle) -> None:
    images = _random_batch(7)
    with create_runner(bundle) as ort_runner, create_runner(bundle, "torch") as torch_runner:
        assert ort_runner.max_batch is None and ort_runner.feature_dim == 512
        assert "CPUExecutionProvider" in ort_runner.backend_detail
        assert torch_runner.backend_detail.startswith(f"torch {torch.__version__}")
        whole = ort_runner.infer(images)
        assert whole.dtype == np.float32 and whole.shape == (7, 512)
        assert ort_runner.last_timing is not None and ort_runner.last_timing.compute_s == ort_runner.last_timing.total_s
        reference = torch_runner.infer(images)
        assert torch_runner.last_timing is not None and torch_runner.last_timing.total_s > 0
        assert _cosine(whole, reference).min() > 0.9999
        # The dynamic batch axis: any batch size, and a sample's embedding does not depend on its batch.
        pieces = np.concatenate([ort_runner.infer(images[:1]), ort_runner.infer(images[1:4]), ort_runner.infer(images[4:])])
        np.testing.assert_allclose(pieces, whole, rtol=1e-4, atol=1e-4)


def test_runner_rejects_a_batch_of_the_wrong_shape(bundle: ExportBundle) -> None:
    with create_runner(bundle) as runner:
        with pytest.raises(ConfigError, match=r"\(N, 3, 64, 32\), got \(2, 3, 32, 64\)"):
            runner.infer(np.zeros((2, 3, 32, 64), np.float32))
        with pytest.raises(ConfigError, match="expects a float32 batch"):
            runner.infer(np.zeros((3, 64, 32), np.float32))
        with pytest.raises(ConfigError, match="empty batch"):
            runner.infer(np.zeros((0, 3, *SIZE), np.float32))
        # float64 is converted, not refused: the values are what matters.
        np.testing.assert_allclose(
            runner.infer(_random_batch(2).astype(np.float64)), runner.infer(_random_batch(2)), rtol=1e-6, atol=1e-6
        )


def test_unknown_backend_provider_precision_and_option_are_named(bundle: ExportBundle, tmp_path: Path) -> None:
    import onnxruntime

    with pytest.raises(ConfigError, match="unknown backend 'tflite'; expected one of onnxruntime, tensorrt, torch"):
        create_runner(bundle, "tflite")
    with pytest.raises(ConfigError, match="unknown ONNX Runtime provider 'tpu'"):
        create_runner(bundle, providers=["tpu"])
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        available = ", ".join(onnxruntime.get_available_providers())
        with pytest.raises(ConfigError, match=f"'cuda' \\(CUDAExecutionProvider\\) is not in this onnxruntime build; "
                                              f"it has {available}"):
            create_runner(bundle, providers=("cuda",))
    with pytest.raises(ConfigError, match="precision 'int4'"):
        create_runner(bundle, precision="int4")
    with pytest.raises(ConfigError, match=f"has no 'int8' model; it has {', '.join(bundle.manifest['models'])}"):
        create_runner(bundle, precision="int8")
    with pytest.raises(ConfigError, match="unknown option 'thread' for the onnxruntime backend; it takes providers, "
                                          "threads"):
        create_runner(bundle, thread=2)
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        create_runner(bundle, threads=0)
    with pytest.raises(ConfigError, match="the torch backend runs fp32; got precision 'fp16'"):
        create_runner(bundle, "torch", precision="fp16")
    with pytest.raises(DataError, match="checkpoint=PATH"):
        create_runner(bundle, "torch", checkpoint=tmp_path / "moved.pt")
    with pytest.raises(DataError, match="no manifest.json"):
        create_runner(tmp_path)


def test_a_closed_runner_refuses_to_infer(bundle: ExportBundle) -> None:
    runner = create_runner(bundle)
    runner.close()
    with pytest.raises(Exception, match="closed"):
        runner.infer(_random_batch(1))


# --- the Embedder ------------------------------------------------------------------------------------------------


def test_embedder_preprocesses_and_embeds_as_training_evaluates(
    bundle: ExportBundle, torch_model: torch.nn.Module, image_files: list[Path]
) -> None:
    records = [ImageRecord(path, pid=index, camid=0) for index, path in enumerate(image_files)]
    decoded = decode_records(records, SIZE)
    manifest = bundle.manifest["input"]
    transform = EvalTransform(SIZE, manifest["mean"], manifest["std"])
    expected_inputs = transform(torch.from_numpy(decoded.images).permute(0, 3, 1, 2)).numpy()
    expected = embed_images(torch_model, decoded.images, transform, torch.device("cpu"), flip=True)

    with Embedder(bundle, batch_size=4) as embedder:
        seen: list[np.ndarray] = []
        infer = embedder.runner.infer
        embedder.runner.infer = lambda batch: (seen.append(batch.copy()), infer(batch))[1]  # type: ignore[method-assign]
        features = embedder.embed_paths(image_files)
    # Batches of 4, each followed by its mirror (the bundle's recipe has the flip test on).
    inputs = np.concatenate([seen[0], seen[2]])
    np.testing.assert_allclose(inputs, expected_inputs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(seen[1], seen[0][..., ::-1])
    assert features.dtype == np.float32 and features.shape == (len(image_files), 512)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=0, atol=1e-6)
    assert _cosine(features, expected).min() > 0.9999


def test_embed_images_resizes_arrays_as_files_are_decoded(bundle: ExportBundle, image_files: list[Path]) -> None:
    arrays = [decode_image(path) for path in image_files]  # original sizes, converted to RGB as files are
    assert {array.shape for array in arrays} != {(*SIZE, 3)}
    with Embedder(bundle, batch_size=3) as embedder:
        from_files = embedder.embed_paths([str(path) for path in image_files])
        from_arrays = embedder.embed_images(arrays)
        stacked = embedder.embed_images(np.stack([decode_image(path, SIZE) for path in image_files]))
    np.testing.assert_allclose(from_arrays, from_files, rtol=0, atol=1e-6)
    np.testing.assert_allclose(stacked, from_files, rtol=0, atol=1e-6)


def test_flip_averages_the_image_and_its_mirror_before_normalising(bundle: ExportBundle, image_files: list[Path]) -> None:
    images = [decode_image(path, SIZE) for path in image_files[:3]]
    manifest = bundle.manifest["input"]
    inputs = EvalTransform(SIZE, manifest["mean"], manifest["std"])(
        torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    ).numpy()
    with create_runner(bundle) as runner:
        plain = runner.infer(inputs)
        mirrored = runner.infer(np.ascontiguousarray(inputs[..., ::-1]))
    with Embedder(bundle) as default, Embedder(bundle, flip=False) as no_flip:
        assert default.flip is True  # the tiny recipe's train.flip_test
        flipped = default.embed_images(images)
        unflipped = no_flip.embed_images(images)
    average = (plain + mirrored) / 2
    np.testing.assert_allclose(flipped, average / np.linalg.norm(average, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(unflipped, plain / np.linalg.norm(plain, axis=1, keepdims=True), atol=1e-5)
    assert _cosine(flipped, unflipped).min() < 0.99999  # the flip test changes something measurable


def test_embedder_batching_does_not_change_embeddings(bundle: ExportBundle, image_files: list[Path]) -> None:
    with Embedder(bundle, batch_size=2, decode_threads=3) as small, Embedder(bundle, batch_size=32) as large:
        np.testing.assert_allclose(small.embed_paths(image_files), large.embed_paths(image_files), atol=1e-5)
        assert small.last_timing is not None and small.last_timing.images == len(image_files)
        assert 0 < small.last_timing.inference_s <= small.last_timing.total_s


def test_embedder_keeps_batches_within_the_runners_limit(
    bundle: ExportBundle, image_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgereid.runtime.runners.onnxruntime import OnnxRuntimeRunner

    with Embedder(bundle, batch_size=32) as unbounded:
        expected = unbounded.embed_paths(image_files)
    # As a TensorRT engine whose optimisation profile stops at 2 images: check_batch refuses anything larger.
    monkeypatch.setattr(OnnxRuntimeRunner, "max_batch", property(lambda self: 2))
    with Embedder(bundle, batch_size=32) as bounded:
        assert bounded.batch_size == 2
        np.testing.assert_allclose(bounded.embed_paths(image_files), expected, atol=1e-5)


def test_embedder_describes_its_model(bundle: ExportBundle) -> None:
    with Embedder(bundle.path) as embedder:
        assert embedder.feature_dim == 512 and embedder.input_size == SIZE
        assert embedder.precision == "fp32" and embedder.backend == "onnxruntime"
        fp32_file = bundle.model_path("fp32")
        assert embedder.model_id == hashlib.sha256(fp32_file.read_bytes()).hexdigest()


def test_embedder_names_bad_input(bundle: ExportBundle, tmp_path: Path, image_files: list[Path]) -> None:
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(image_files[0].read_bytes()[:300])
    good = np.zeros((40, 20, 3), np.uint8)
    with Embedder(bundle, batch_size=2) as embedder:
        for bad in (not_an_image, truncated, tmp_path / "missing.jpg"):
            with pytest.raises(DataError, match=f"cannot decode the image '{bad}'"):
                embedder.embed_paths([image_files[0], image_files[1], bad])
        with pytest.raises(ConfigError, match=r"image 1 must be a uint8 H×W×3 RGB array, got dtype uint8 and shape "
                                              r"\(40, 20\)"):
            embedder.embed_images([good, np.zeros((40, 20), np.uint8)])
        with pytest.raises(ConfigError, match=r"image 0 .* shape \(40, 20, 4\)"):
            embedder.embed_images([np.zeros((40, 20, 4), np.uint8)])
        with pytest.raises(ConfigError, match=r"image 2 .* dtype float32 and shape \(40, 20, 3\)"):
            embedder.embed_images([good, good, good.astype(np.float32)])
        with pytest.raises(ConfigError, match="list of images is empty"):
            embedder.embed_images([])
        with pytest.raises(ConfigError, match="list of paths is empty"):
            embedder.embed_paths([])
        with pytest.raises(ConfigError, match="got the single path"):
            embedder.embed_paths(str(image_files[0]))
        # A failed call leaves the embedder usable.
        assert embedder.embed_images([good]).shape == (1, 512)
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        Embedder(bundle, batch_size=0)


# --- verification ------------------------------------------------------------------------------------------------


def _fingerprint(root: Path, records: list[ImageRecord]) -> str:
    entries = sorted((str(Path(record.path).relative_to(root)), str(record.pid), record.camid) for record in records)
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def test_verify_runtime_scores_the_bundle_against_itself_and_pytorch(
    bundle: ExportBundle, data_root: Path, torch_model: torch.nn.Module
) -> None:
    result = verify_runtime(bundle, data=DataSelection(root=data_root))
    assert set(result) == {
        "kind", "schema_version", "created", "bundle", "model_id", "recipe", "network", "backbone", "input",
        "feature_dim",
        "params", "dataset", "num_query", "num_valid_queries", "backend", "backend_detail", "flip", "reference",
        "results", "passed",
    }
    assert result["kind"] == "edgereid.verify" and result["schema_version"] == 1
    assert result["input"] == list(SIZE) and result["feature_dim"] == 512 and result["flip"] is True
    assert result["recipe"] == "tiny" and result["backbone"] == "resnet18" and result["params"] > 10_000_000
    fp32 = result["results"]["fp32"]
    assert set(fp32) == {"mAP", "rank1", "rank5", "mINP", "delta_mAP_points", "delta_mAP_ci95_points",
                         "evaluation_too_small", "evaluation_warning", "cosine_min", "tolerance_mAP_points",
                         "passed", "images_per_s"}
    assert fp32["delta_mAP_points"] == 0.0 and fp32["passed"] is True and fp32["tolerance_mAP_points"] == 0.1
    # The reference against itself: the same AP on every query, so an interval of exactly nothing.
    assert fp32["delta_mAP_ci95_points"] == [0.0, 0.0]
    assert fp32["evaluation_too_small"] is False and fp32["evaluation_warning"] is None
    assert fp32["cosine_min"] == pytest.approx(1.0, abs=1e-6) and fp32["images_per_s"] > 0
    assert result["reference"]["mAP"] == fp32["mAP"] and result["passed"] is True
    if HAS_FP16:
        fp16 = result["results"]["fp16"]
        assert fp16["cosine_min"] > 0.999 and fp16["tolerance_mAP_points"] == 0.5
        assert fp16["delta_mAP_points"] == pytest.approx((fp16["mAP"] - fp32["mAP"]) * 100)
        assert fp16["passed"] is (abs(fp16["delta_mAP_points"]) <= 0.5)
        low, high = fp16["delta_mAP_ci95_points"]
        assert low <= high and fp16["evaluation_too_small"] is ((high - low) / 2 > 0.5)
    # Independently: the checkpoint's own embeddings score the same protocol to within the FP32 tolerance.
    dataset = result["dataset"]
    dataset_read = load_dataset(data_root)
    query = decode_records(dataset_read.query, SIZE)
    gallery = decode_records(dataset_read.gallery, SIZE)
    assert (dataset["num_query"], dataset["num_gallery"]) == (len(query.records), len(gallery.records))
    assert result["num_query"] == dataset["num_query"]
    assert dataset["fingerprint"] == _fingerprint(data_root, [*query.records, *gallery.records])
    manifest = bundle.manifest["input"]
    transform = EvalTransform(SIZE, manifest["mean"], manifest["std"])
    cpu = torch.device("cpu")
    scored = evaluate_features(
        embed_images(torch_model, query.images, transform, cpu, flip=True),
        embed_images(torch_model, gallery.images, transform, cpu, flip=True),
        query.records,
        gallery.records,
    )
    assert abs(scored.mAP - fp32["mAP"]) * 100 < 0.1
    assert result["num_valid_queries"] == scored.num_valid_queries == np.count_nonzero(~np.isnan(scored.per_query_ap))
    assert json.loads(json.dumps(result)) == result  # plain JSON, nothing numpy


def test_verify_without_a_reference_reports_unknown_deltas(
    bundle: ExportBundle, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A device without onnxruntime: the torch backend still runs, but nothing can serve as the FP32 reference.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = verify_runtime(bundle, "torch", data=DataSelection(root=data_root), max_images=6)
    assert result["reference"] is None and result["backend"] == "torch"
    assert list(result["results"]) == ["fp32"]  # the reference network runs FP32 only, whatever the bundle has
    entry = result["results"]["fp32"]
    assert entry["delta_mAP_points"] is None and entry["passed"] is None and entry["cosine_min"] is None
    assert entry["delta_mAP_ci95_points"] is None and entry["evaluation_too_small"] is None
    assert 0 <= entry["mAP"] <= 1 and result["dataset"]["num_query"] == 6 and result["passed"] is True


@pytest.fixture
def noisy_torch_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch backend made to embed with seeded noise: a backend that really loses accuracy, in a way the
    reference (ONNX Runtime) does not share."""
    original = Embedder.embed_images

    def noisy(self: Embedder, images: object) -> np.ndarray:
        features = original(self, images)
        if self.backend == "torch":
            features = features + np.random.default_rng(len(features)).normal(0, 0.03, features.shape)
            features = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
        return features

    monkeypatch.setattr(Embedder, "embed_images", noisy)


def test_verify_on_too_few_queries_says_so(
    bundle: ExportBundle, data_root: Path, noisy_torch_backend: None
) -> None:
    result = verify_runtime(bundle, "torch", data=DataSelection(root=data_root), max_images=8)
    entry = result["results"]["fp32"]
    low, high = entry["delta_mAP_ci95_points"]
    queries = result["num_valid_queries"]
    assert 0 < queries <= result["num_query"] == 8
    # A few queries whose APs moved: an interval far wider than the ±0.1-point FP32 budget...
    assert low < high and (high - low) / 2 > 0.1 and entry["evaluation_too_small"] is True
    assert entry["evaluation_warning"] == (
        f"the evaluation set of {queries} queries is too small to judge a ±0.1-point mAP budget: the 95% interval "
        f"of ΔmAP is [{low:+.2f}, {high:+.2f}] points; to judge it, drop --max-images (it kept the first 8 query "
        "images), or verify on a data set with a larger query split (--data ROOT)"
    )
    # ...while pass/fail is still |ΔmAP| within the budget.
    assert entry["passed"] is (abs(entry["delta_mAP_points"]) <= 0.1)
    runner = CliRunner()
    shown = runner.invoke(_cli(), ["verify", str(bundle.path), "--backend", "torch", "--data", str(data_root),
                                   "--max-images", "8"])
    assert shown.exit_code == (0 if entry["passed"] else 1), shown.output
    text = " ".join(shown.output.split())  # rich wraps lines at the console width
    assert f"{entry['delta_mAP_points']:+.3f} [{low:+.2f}, {high:+.2f}]" in text
    assert f"8 queries ({queries} with a match)" in text
    assert f"fp32: the evaluation set of {queries} queries is too small to judge a ±0.1-point mAP budget" in text


def test_verify_needs_a_data_set(bundle: ExportBundle, tmp_path: Path) -> None:
    without_data = ExportBundle(bundle.path, {**bundle.manifest, "data": None})
    with pytest.raises(ConfigError, match="records no data set.*--data ROOT"):
        verify_runtime(without_data)
    with pytest.raises(DataError, match="does not exist"):
        verify_runtime(bundle, data=DataSelection(root=tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="has no 'int8' model"):
        verify_runtime(bundle, precisions=["int8"], data=DataSelection(root=tmp_path))
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        verify_runtime(bundle, precisions=["fp8"], data=DataSelection(root=tmp_path))


# --- `edgereid verify` -------------------------------------------------------------------------------------------


def _cli() -> _ReportingGroup:
    group = _ReportingGroup("edgereid")
    group.add_command(verify_command)
    return group


def test_cli_verify(bundle: ExportBundle, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    out = tmp_path / "reports" / "verify.json"
    args = ["verify", str(bundle.path), "--data", str(data_root), "--max-images", "8", "-o", "threads=1",
            "--precision", "fp32"]
    result = runner.invoke(_cli(), [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "fp32" in result.output and "passed" in result.output and "+0.000 [+0.00, +0.00]" in result.output
    written = json.loads(out.read_text())
    assert written["results"]["fp32"]["passed"] is True and written["dataset"]["num_query"] == 8
    assert list(written["results"]) == ["fp32"]
    as_json = runner.invoke(_cli(), [*args, "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["kind"] == "edgereid.verify"
    # A precision outside its tolerance fails the command (a tolerance no result can meet stands in for a bad model).
    monkeypatch.setitem(bundle_module.MAP_TOLERANCE_POINTS, "fp32", -1.0)
    failed = runner.invoke(_cli(), args)
    assert failed.exit_code == 1 and "FAILED" in failed.output


def test_cli_verify_names_a_bad_bundle(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), ["verify", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert f"'{tmp_path / 'nothing'}' is not an export bundle" in result.output


# --- no torch on the device --------------------------------------------------------------------------------------


def test_the_runtime_never_imports_torch(bundle: ExportBundle, data_root: Path) -> None:
    script = f"""
import sys
import numpy as np
import edgereid.runtime, edgereid.runtime.embedder, edgereid.runtime.verify
from edgereid.data.selection import DataSelection
from edgereid.runtime import Embedder, verify_runtime
with Embedder({str(bundle.path)!r}) as embedder:
    assert embedder.embed_images([np.zeros((80, 40, 3), np.uint8)]).shape == (1, 512)
result = verify_runtime({str(bundle.path)!r}, data=DataSelection(root={str(data_root)!r}), max_images=4)
assert result["results"]["fp32"]["delta_mAP_points"] == 0.0
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_runtime_imports_nothing_from_export(bundle: ExportBundle) -> None:
    """Every module of edgereid.runtime (and its runners) imported, a bundle loaded and embedded, a gallery built:
    edgereid.export (and training) never imported — the runtime reads bundles through edgereid.bundle_format.
    tests/test_bundle_format.py checks the same statically, imports inside functions included."""
    script = f"""
import importlib, pkgutil, sys
import numpy as np
import edgereid.runtime, edgereid.runtime.runners
for package in (edgereid.runtime, edgereid.runtime.runners):
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
from edgereid.runtime.embedder import Embedder
from edgereid.runtime.gallery import Gallery
with Embedder({str(bundle.path)!r}) as embedder:
    vectors = embedder.embed_images([np.zeros((80, 40, 3), np.uint8)])
    gallery = Gallery.create(embedder.feature_dim, embedder.model_id)
    gallery.add(vectors)
leaked = sorted(name for name in sys.modules if name.startswith(("edgereid.export", "edgereid.training")))
print(leaked)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"

