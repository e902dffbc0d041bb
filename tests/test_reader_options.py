"""Reader options, --format and --holdout-ids on `edgereid eval`, `edgereid export` (its verification) and `edgereid
verify`, as `edgereid data info` takes them: one rule (edgereid.data.selection) for the recipe and the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgereid.cli import cli
from edgereid.data.selection import DataSelection
from edgereid.errors import ConfigError
from edgereid.training.evaluate import evaluate_checkpoint, select_data
from tests.factories import make_checkpoint

CAMERA_REGEX = r"^c(?P<cam>\d+)_"


def _image(path: Path, base: np.ndarray, rng: np.random.Generator) -> None:
    pixels = np.clip(base + rng.normal(0, 25, size=(64, 32, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _named_cameras(root: Path) -> Path:
    """query/ + gallery/ of the folder layout with the camera in the file name (c1_0.jpg): identities 0-3 have
    gallery images on both cameras, 4-5 on the query's camera only — no valid match once cameras are read."""
    rng = np.random.default_rng(0)
    for pid in range(6):
        base = rng.integers(0, 255, size=3)
        _image(root / "query" / f"{pid:03d}" / "c1_0.jpg", base, rng)
        for name in ["c1_1.jpg", "c1_2.jpg"] + (["c2_0.jpg", "c2_1.jpg"] if pid < 4 else []):
            _image(root / "gallery" / f"{pid:03d}" / name, base, rng)
    return root


def _train_only(root: Path, ids: int = 8) -> Path:
    rng = np.random.default_rng(1)
    for pid in range(ids):
        base = rng.integers(0, 255, size=3)
        for camera in ("c1", "c2"):
            for index in range(2):
                _image(root / f"{pid:03d}" / camera / f"{index}.jpg", base, rng)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("reader-options"), ibn=None, backbone="plaincnn16")


def test_eval_takes_reader_options_like_the_python_call(checkpoint: Path, tmp_path: Path) -> None:
    root = _named_cameras(tmp_path / "named")
    runner = CliRunner()
    args = ["eval", str(checkpoint), "--data", str(root), "--format", "folder", "--device", "cpu", "--json"]
    result = runner.invoke(cli, [*args, "-o", f"camera_regex={CAMERA_REGEX}"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    selection = DataSelection(root=root, format="folder", options={"camera_regex": CAMERA_REGEX})
    report = evaluate_checkpoint(checkpoint, data=selection, device="cpu")
    assert summary["mAP"] == pytest.approx(report.result.mAP, abs=1e-9)
    assert summary["num_valid_queries"] == report.result.num_valid_queries == 4  # same-camera matches are junk

    # Without the option every image is a camera of its own: all six queries have a match.
    plain = runner.invoke(cli, args)
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.output)["num_valid_queries"] == 6


def test_eval_holds_out_identities_of_a_train_only_root(checkpoint: Path, tmp_path: Path) -> None:
    root = _train_only(tmp_path / "train-only")
    runner = CliRunner()
    args = ["eval", str(checkpoint), "--data", str(root), "--format", "folder", "--device", "cpu", "--json"]
    missing = runner.invoke(cli, args)
    assert missing.exit_code != 0 and "no query or no gallery" in missing.output
    result = runner.invoke(cli, [*args, "--holdout-ids", "4", "--holdout-seed", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    selection = DataSelection(root=root, format="folder", holdout_ids=4, holdout_seed=2)
    report = evaluate_checkpoint(checkpoint, data=selection, device="cpu")
    assert summary["mAP"] == pytest.approx(report.result.mAP, abs=1e-9)
    assert summary["num_query"] == report.num_query > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "camera_pattern=x"], "the folder reader has no option 'camera_pattern' (its options: camera_regex)"),
        (["-o", "camera_regex"], "is not KEY=VALUE"),
        (["-o", "camera_regex=(?P<cam>"], "is not a valid regular expression"),
        (["--holdout-ids", "0"], "--holdout-ids must be at least 1"),
        (["--holdout-seed", "3"], "--holdout-seed needs --holdout-ids"),
    ],
)
def test_a_bad_reader_option_is_one_line(checkpoint: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    root = _named_cameras(tmp_path / "named")
    result = CliRunner().invoke(
        cli, ["eval", str(checkpoint), "--data", str(root), "--format", "folder", "--device", "cpu", *extra]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_one_rule_for_recipes_and_bundle_records(checkpoint: Path, tmp_path: Path) -> None:
    from edgereid.training.checkpoint import load_checkpoint

    data = load_checkpoint(checkpoint).recipe.data
    assert select_data(data) is data
    moved = select_data(data, DataSelection(root=tmp_path, holdout_ids=3))
    assert moved.root == tmp_path and moved.format == data.format and moved.holdout is not None
    assert moved.holdout.num_test_ids == 3 and moved.synthetic is None
    reformatted = select_data(moved, DataSelection(format="folder"))
    assert reformatted.format == "folder" and reformatted.options == {} and reformatted.holdout is None
    record = {"root": str(tmp_path), "format": "market1501", "options": {}, "holdout": {"num_test_ids": 2}}
    applied = DataSelection(format="folder", options={"camera_regex": CAMERA_REGEX}).apply(record)
    assert applied == {"root": str(tmp_path), "format": "folder", "options": {"camera_regex": CAMERA_REGEX},
                       "holdout": None}
    with pytest.raises(ConfigError, match="market1501 reader has no option 'camera_regex'"):
        DataSelection(options={"camera_regex": CAMERA_REGEX}).apply(record)


def test_export_and_verify_take_reader_options(checkpoint: Path, tmp_path: Path) -> None:
    root = _named_cameras(tmp_path / "named")
    runner = CliRunner()
    bundle = tmp_path / "bundle"
    reader = ["--format", "folder"]
    result = runner.invoke(cli, ["export", str(checkpoint), "--out", str(bundle), "--data", str(root), *reader,
                                 "-o", f"camera_regex={CAMERA_REGEX}", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["export_options"]["data_format"] == "folder"
    assert manifest["export_options"]["data_options"] == {"camera_regex": CAMERA_REGEX}
    assert manifest["verification"]["num_valid_queries"] == 4 and manifest["verification"]["passed"]

    verify = ["verify", str(bundle), "--data", str(root), *reader, "--json"]
    result = runner.invoke(cli, [*verify, "--reader-option", f"camera_regex={CAMERA_REGEX}"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["num_valid_queries"] == 4
    plain = runner.invoke(cli, verify)
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.output)["num_valid_queries"] == 6
    bad = runner.invoke(cli, [*verify, "--reader-option", "nope=1"])
    assert bad.exit_code == 2 and "the folder reader has no option 'nope'" in bad.output, bad.output
