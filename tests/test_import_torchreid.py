"""`edgereid import torchreid`: the imported model's embedding equals torchreid's own eval-mode output."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgereid.cli import cli
from edgereid.errors import ConfigError
from edgereid.importers.common import Preprocessing
from edgereid.importers.torchreid import SUPPORTED, import_torchreid
from edgereid.training.checkpoint import load_checkpoint
from edgereid.training.evaluate import build_model
from tests.reid_refs import max_cosine_distance, randomize, reference_library

COSINE_TOLERANCE = 1e-5  # cosine ≥ 0.99999 per image
# One of each family at reduced cost: the small OSNet, the AIN one (InstanceNorm) and torchreid's MobileNetV2.
SMALL_ARCHS = ["osnet_x0_25", "osnet_ain_x0_25", "mobilenetv2_x1_0"]


def _torchreid_model(arch: str, num_classes: int = 13) -> torch.nn.Module:
    models = reference_library("torchreid.reid.models")
    network = models.build_model(arch, num_classes, pretrained=False)
    return randomize(network, torch.randn(6, 3, 256, 128), seed=len(arch))


def _imported_embedding(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    model = build_model(load_checkpoint(checkpoint)).eval()
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize("arch", sorted(SUPPORTED))
def test_embedding_equals_torchreid(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(zlib.crc32(arch.encode()))
    reference = _torchreid_model(arch)
    images = torch.randn(3, 3, 256, 128)
    with torch.no_grad():
        expected = reference(images)
    assert torch.isfinite(expected).all()
    # A model-zoo file (a bare state dict) and a training checkpoint as torchreid's engine writes it: the state
    # dict under `state_dict` with DataParallel's `module.` prefixes, rank1 as a numpy scalar, the optimizer state.
    zoo = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), zoo)
    training = tmp_path / "model.pth.tar-3"
    optimizer = torch.optim.Adam(reference.parameters())
    torch.save(
        {
            "state_dict": {f"module.{key}": value for key, value in reference.state_dict().items()},
            "epoch": 3,
            "rank1": np.float64(0.5),
            "optimizer": optimizer.state_dict(),
        },
        training,
    )
    for source in (zoo, training):
        out = tmp_path / f"{source.name}.edgereid.pt"
        result = import_torchreid(arch, source, out)
        embedding = _imported_embedding(out, images)
        distance = max_cosine_distance(expected, embedding)
        print(f"{arch} {source.name}: max(1 - cosine) = {distance:.2e}")
        assert distance <= COSINE_TOLERANCE, (arch, source.name, distance)
        checkpoint = load_checkpoint(out)
        assert checkpoint.recipe.data.size == (256, 128)
        assert checkpoint.recipe.data.mean == pytest.approx((0.485, 0.456, 0.406))
        assert checkpoint.metrics["imported"]["library"] == "torchreid"
        assert checkpoint.metrics["imported"]["arch"] == arch
        assert len(checkpoint.metrics["imported"]["sha256"]) == 64
        assert result.path == out


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_cli_import_and_preprocessing_options(arch: str, tmp_path: Path) -> None:
    reference = _torchreid_model(arch)
    weights = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), weights)
    out = tmp_path / "ck.pt"
    result = CliRunner().invoke(cli, [
        "import", "torchreid", arch, str(weights), "--out", str(out), "--size", "128", "64",
        "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--json",
    ])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["preprocessing"] == {"size": [128, 64], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert payload["model"]["backbone"]["name"] == SUPPORTED[arch].model["backbone"]["name"]
    recipe = load_checkpoint(out).recipe
    assert recipe.data.size == (128, 64) and recipe.data.std == (0.25, 0.25, 0.25)
    images = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        expected = reference(images)
    distance = max_cosine_distance(expected, _imported_embedding(out, images))
    print(f"{arch} at 128x64: max(1 - cosine) = {distance:.2e}")
    assert distance <= COSINE_TOLERANCE, distance


def test_help_names_every_supported_architecture() -> None:
    result = CliRunner().invoke(cli, ["import", "torchreid", "--help"])
    assert result.exit_code == 0, result.output
    assert [arch for arch in SUPPORTED if arch not in result.output] == []


@pytest.mark.parametrize("arch", ["resnet50_fc512", "shufflenet", "no_such_net"])
def test_unsupported_architectures_are_refused(arch: str, tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, weights)
    out = tmp_path / "ck.pt"
    with pytest.raises(ConfigError, match=f"torchreid architecture '{arch}' is not") as error:
        import_torchreid(arch, weights, out)
    assert "\n" not in str(error.value)
    assert "osnet_x1_0" in str(error.value)  # the supported names are listed
    assert not out.exists()
    result = CliRunner().invoke(cli, ["import", "torchreid", arch, str(weights), "--out", str(out)])
    assert result.exit_code == 2 and "is not" in result.output
    assert not out.exists()


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_embedding_equals_torchreid_on_real_images(arch: str, shared_data: Path, tmp_path: Path) -> None:
    """16 real Market-1501 crops through each library's own preprocessing: torchreid's test transform (PIL bilinear
    resize, ToTensor, ImageNet Normalize) into torchreid's model, edgereid's decode_image + normalize_images (the
    runtime's preprocessing) into the imported model. Both resize with Pillow's bilinear filter, so the pixels are
    the same and the embeddings must agree to cosine ≥ 0.99999 per image."""
    from PIL import Image

    from edgereid.data.images import decode_image, normalize_images

    paths = sorted((shared_data / "mini-market1501" / "query").glob("*.jpg"))[:16]
    if len(paths) < 16:
        pytest.skip(f"fewer than 16 query images in {shared_data / 'mini-market1501'}")
    torch.manual_seed(zlib.crc32(arch.encode()))
    reference = _torchreid_model(arch)
    transforms = reference_library("torchreid.reid.data.transforms")
    _, test_transform = transforms.build_transforms(256, 128)
    library_input = torch.stack([test_transform(Image.open(path).convert("RGB")) for path in paths])
    with torch.no_grad():
        expected = reference(library_input)
    weights = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), weights)
    out = tmp_path / "imported.pt"
    import_torchreid(arch, weights, out)
    data = load_checkpoint(out).recipe.data
    pixels = np.stack([decode_image(path, tuple(data.size)) for path in paths])
    embedding = _imported_embedding(out, torch.from_numpy(normalize_images(pixels, data.mean, data.std)))
    distance = max_cosine_distance(expected, embedding)
    print(f"{arch} on {len(paths)} real images: max(1 - cosine) = {distance:.2e}")
    assert distance <= COSINE_TOLERANCE, distance


@pytest.mark.parametrize("arch", ["osnet_ain_x0_25", "mobilenetv2_x1_0"])
def test_export_keeps_instance_norm_and_onnx_equals_torchreid(arch: str, tmp_path: Path) -> None:
    """`edgereid export` of an imported model: its BatchNorms fold, its InstanceNorms stay (they normalise each
    image by its own statistics, which no conv weight can carry) and ONNX Runtime's FP32 embedding is torchreid's."""
    import onnx
    import onnxruntime as ort

    from edgereid.export import export_checkpoint

    torch.manual_seed(zlib.crc32(arch.encode()))
    reference = _torchreid_model(arch)
    weights = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), weights)
    checkpoint = tmp_path / "imported.pt"
    import_torchreid(arch, weights, checkpoint, preprocessing=Preprocessing(size=(128, 64)))
    bundle = export_checkpoint(checkpoint, tmp_path / "bundle")
    onnx_path = bundle.model_path("fp32")
    operators = [node.op_type for node in onnx.load(str(onnx_path)).graph.node]
    instance_norms = sum(isinstance(module, torch.nn.InstanceNorm2d) for module in reference.modules())
    assert instance_norms == (5 if arch.startswith("osnet_ain") else 0)  # the stem and four OSBlockINin
    assert operators.count("InstanceNormalization") == instance_norms
    assert "BatchNormalization" not in operators
    assert bundle.manifest["fold"]["kept"] == ["heads.neck.bn"]  # every backbone BN folded; IN is no BN
    assert bundle.manifest["fold"]["check"]["cosine_min"] >= 1 - COSINE_TOLERANCE
    images = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        expected = reference(images)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["embeddings"], {"images": images.numpy()})
    distance = max_cosine_distance(expected, torch.from_numpy(actual))
    print(f"{arch} exported, ONNX Runtime FP32 at 128x64: max(1 - cosine) = {distance:.2e}")
    assert distance <= COSINE_TOLERANCE, distance
