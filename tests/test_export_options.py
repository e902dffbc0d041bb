"""Export options as one typed object (edgereid.export.options): from keywords, YAML or a bundle, recorded in the
manifest so that a bundle can be exported again alike, and built by `edgereid export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgereid.cli import cli
from edgereid.errors import ConfigError
from edgereid.export import ExportOptions, export_checkpoint, load_bundle, load_export_options
from edgereid.export.options import export_options
from tests.factories import make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("options"), ibn=None, backbone="plaincnn16")


def test_options_from_keywords_and_yaml_are_checked_by_key(tmp_path: Path) -> None:
    assert export_options() == ExportOptions()
    assert export_options(ExportOptions(opset=17), precisions="fp16").model_dump()["precisions"] == ["fp16"]
    with pytest.raises(ConfigError, match="unknown option 'precison' \\(known: precisions, network"):
        export_options(precison=["fp16"])
    options_file = tmp_path / "options.yaml"
    options_file.write_text("precisions: [fp32, int8_cpu]\nmax_map_drop: null\ncalibration_images: 64\n")
    loaded = load_export_options(options_file, {"opset": 17})
    assert (loaded.precisions, loaded.max_map_drop, loaded.calibration_images, loaded.opset) == (
        ["fp32", "int8_cpu"], None, 64, 17)
    options_file.write_text("opset: seventeen\n")
    with pytest.raises(ConfigError, match=f"export options file '{options_file}': opset: .*got 'seventeen'"):
        load_export_options(options_file)
    options_file.write_text("- opset\n")
    with pytest.raises(ConfigError, match="must hold a mapping of option names to values, not list"):
        load_export_options(options_file)
    with pytest.raises(ConfigError, match="does not exist"):
        load_export_options(tmp_path / "missing.yaml")


def test_an_unknown_keyword_is_refused_before_anything_is_written(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'calibration_imgs'"):
        export_checkpoint(checkpoint, tmp_path / "out", calibration_imgs=64)
    assert not (tmp_path / "out").exists()


def test_the_manifest_records_the_options_and_the_bundle_exports_again_alike(checkpoint: Path, tmp_path: Path) -> None:
    data_root = checkpoint.parent.parent / "synthetic"
    first = export_checkpoint(checkpoint, tmp_path / "first", ExportOptions(opset=18), data_root=data_root)
    recorded = first.manifest["export_options"]
    assert recorded["opset"] == 18 and recorded["precisions"] == ["fp32"] and recorded["verify"] is False
    assert recorded["data_root"] == str(data_root.resolve())
    assert load_bundle(first.path).manifest["export_options"] == recorded
    assert load_export_options(first.path) == ExportOptions.model_validate(recorded)

    # `edgereid export --options BUNDLE`: the same options again; a flag given on the command line replaces one.
    again = CliRunner().invoke(cli, ["export", str(checkpoint), "--out", str(tmp_path / "again"), "--options",
                                     str(first.path), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["export_options"] == recorded
    changed = CliRunner().invoke(cli, ["export", str(checkpoint), "--out", str(tmp_path / "changed"), "--options",
                                       str(first.path / "manifest.json"), "--opset", "17", "--json"])
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.output)["export_options"] == {**recorded, "opset": 17}


def test_the_cli_builds_the_options_from_its_flags(checkpoint: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "--out", str(tmp_path / "b"), "--no-verify",
                                      "--opset", "17", "--json"])
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.output)["export_options"]
    assert recorded == {**ExportOptions(opset=17, calibration_policy="train-spread-v1").recorded(), "verify": False}
