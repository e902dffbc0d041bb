"""`edgereid import boxmot`: the architecture from the file name as boxmot reads it, `--arch`, then torchreid's path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgereid.cli import cli
from edgereid.errors import ConfigError
from edgereid.importers.boxmot import BOXMOT_MODEL_TYPES, arch_from_filename, import_boxmot
from edgereid.training.checkpoint import load_checkpoint
from edgereid.training.evaluate import build_model
from tests.reid_refs import max_cosine_distance, randomize, reference_library


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("osnet_x0_25_msmt17.pt", "osnet_x0_25"),
        ("osnet_x1_0_dukemtmcreid.pt", "osnet_x1_0"),
        ("osnet_ibn_x1_0_msmt17.pt", "osnet_ibn_x1_0"),
        ("osnet_ain_x1_0_msmt17.pt", "osnet_ain_x1_0"),
        ("osnet_ain_x1_0_dukemtmcreid.pt", "osnet_ain_x1_0"),
        ("resnet50_fc512_msmt17.pt", "resnet50"),  # boxmot's substring rule, first match wins
        ("mobilenetv2_x1_4_market1501.pt", "mobilenetv2_x1_4"),
        ("mobilenetv2_x1_4_dukemtmcreid.pt", "mobilenetv2_x1_4"),
        ("mobilenetv2_x1_0_market1501.pt", "mobilenetv2_x1_0"),
        ("mobilenetv2_x1_0_msmt17.pt", "mobilenetv2_x1_0"),
        ("lmbn_n_cuhk03_d.pt", "lmbn_n"),
        ("clip_market1501.pt", "clip"),
    ],
)
def test_architecture_from_file_name_as_boxmot(name: str, arch: str) -> None:
    assert arch_from_filename(Path(name)) == arch


def test_no_model_type_hides_in_another() -> None:
    """boxmot takes the first model type found in the name; none is part of another (mobilenetv2_x1_0 of
    mobilenetv2_x1_4, osnet_x1_0 of osnet_ain_x1_0), so the first found is also the longest."""
    assert not [(short, long) for short in BOXMOT_MODEL_TYPES for long in BOXMOT_MODEL_TYPES
                if short != long and short in long]


def _osnet_weights(path: Path) -> torch.nn.Module:
    models = reference_library("torchreid.reid.models")
    network = randomize(models.build_model("osnet_x0_25", 4101, pretrained=False), torch.randn(4, 3, 256, 128))
    torch.save(network.state_dict(), path)
    return network


def test_import_by_file_name_equals_the_network(tmp_path: Path) -> None:
    weights = tmp_path / "osnet_x0_25_msmt17.pt"
    reference = _osnet_weights(weights)
    out = tmp_path / "ck.pt"
    result = CliRunner().invoke(cli, ["import", "boxmot", str(weights), "--out", str(out)])
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(out)
    assert checkpoint.metrics["imported"] | {"file": None, "sha256": None} == {
        "library": "boxmot", "arch": "osnet_x0_25", "arch_from": "file name", "file": None, "sha256": None,
    }
    images = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        distance = max_cosine_distance(reference(images), build_model(checkpoint).eval()(images))
    assert distance <= 1e-5


def test_arch_option_overrides_the_file_name(tmp_path: Path) -> None:
    weights = tmp_path / "my_tracker_reid.pt"
    _osnet_weights(weights)
    out = tmp_path / "ck.pt"
    with pytest.raises(ConfigError, match="names no boxmot architecture.*--arch"):
        import_boxmot(weights, out)
    assert not out.exists()
    result = import_boxmot(weights, out, arch="osnet_x0_25")
    assert result.provenance["arch_from"] == "--arch" and out.is_file()


@pytest.mark.parametrize(
    ("file_name", "arch", "expected"),
    [
        ("lmbn_n_market.pt", None, "boxmot architecture \\(from the file name 'lmbn_n_market.pt'\\) 'lmbn_n' is not"),
        ("mlfn_market1501.pt", None, "'mlfn' is not supported by edgereid's importer"),
        ("weights.pt", "osnet_x9", "boxmot architecture 'osnet_x9' \\(from --arch\\) is not a boxmot model type"),
    ],
)
def test_unknown_or_unsupported_architectures(file_name: str, arch: str | None, expected: str, tmp_path: Path) -> None:
    weights = tmp_path / file_name
    torch.save({"conv1.conv.weight": torch.zeros(1)}, weights)
    out = tmp_path / "ck.pt"
    with pytest.raises(ConfigError, match=expected) as error:
        import_boxmot(weights, out, arch=arch)
    assert "\n" not in str(error.value)
    assert not out.exists()
