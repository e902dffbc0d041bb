from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgereid import __version__
from edgereid.cli import cli
from tests.conftest import write_image


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "synthetic"
    result = CliRunner().invoke(cli, ["data", "synth", str(root), "--ids", "6", "--cameras", "3", "--per-camera", "2", "--json"])
    assert result.exit_code == 0, result.output
    (root / "summary.json").write_text(result.output)
    return root


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_info_json_matches_the_synthetic_summary(synthetic_root: Path) -> None:
    summary = json.loads((synthetic_root / "summary.json").read_text())
    result = CliRunner().invoke(cli, ["data", "info", str(synthetic_root), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["name"] == "market1501" and info["train_test_overlap"] == 0
    for split, stats in info["splits"].items():
        assert stats["images"] == summary["images"][split]
        assert stats["identities"] == summary["ids"][split] == 3
        assert stats["image_sizes"] == {"128x64": stats["images"]}


def test_info_holdout_on_a_train_only_root(tmp_path: Path) -> None:
    for pid in range(1, 5):
        for cam, frame in ((1, 100), (1, 200), (2, 300)):
            write_image(tmp_path / "bounding_box_train" / f"{pid:04d}_c{cam}s1_000{frame}_01.jpg")
    result = CliRunner().invoke(cli, ["data", "info", str(tmp_path), "--holdout-ids", "2", "--json"])
    assert result.exit_code == 0, result.output
    splits = json.loads(result.output)["splits"]
    assert splits["train"]["identities"] == 2 and splits["train"]["images"] == 6
    # One query per held-out (identity, camera); the second camera-1 image of each is the gallery.
    assert (splits["query"]["images"], splits["gallery"]["images"]) == (4, 2)


def test_info_names_the_strict_flag_for_unreadable_images(tmp_path: Path) -> None:
    for pid in range(1, 3):
        for cam in (1, 2):
            write_image(tmp_path / "bounding_box_train" / f"{pid:04d}_c{cam}s1_000100_01.jpg")
    (tmp_path / "bounding_box_train" / "0001_c1s1_000200_01.jpg").write_bytes(b"not a jpeg")
    result = CliRunner().invoke(cli, ["data", "info", str(tmp_path), "--verify", "--holdout-ids", "1"])
    assert result.exit_code == 0, result.output
    assert "`edgereid data info --strict`" in result.output
    strict = CliRunner().invoke(cli, ["data", "info", str(tmp_path), "--strict", "--holdout-ids", "1"])
    assert strict.exit_code != 0 and "0001_c1s1_000200_01.jpg" in strict.output


def test_missing_root_exits_non_zero_with_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "info", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_corrupt_image_is_a_warning_and_strict_makes_it_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "bounding_box_train" / "0001_c1s1_000100_01.jpg")
    write_image(tmp_path / "bounding_box_train" / "0001_c2s1_000200_01.jpg")
    good = (tmp_path / "bounding_box_train" / "0001_c1s1_000100_01.jpg").read_bytes()
    (tmp_path / "bounding_box_train" / "0001_c3s1_000300_01.jpg").write_bytes(good[: len(good) // 2])
    runner = CliRunner()
    lenient = runner.invoke(cli, ["data", "info", str(tmp_path), "--verify", "--json"])
    assert lenient.exit_code == 0, lenient.output
    assert "1 of 3 train images cannot be read" in lenient.output
    strict = runner.invoke(cli, ["data", "info", str(tmp_path), "--strict"])
    assert strict.exit_code == 2 and "0001_c3s1_000300_01.jpg" in strict.output


def test_bad_size_and_option_are_rejected(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_size = runner.invoke(cli, ["data", "synth", str(tmp_path / "x"), "--size", "big"])
    assert bad_size.exit_code == 2 and "HxW" in bad_size.output
    bad_option = runner.invoke(cli, ["data", "info", str(tmp_path), "-o", "naming"])
    assert bad_option.exit_code == 2 and "KEY=VALUE" in bad_option.output


def test_formats_lists_every_reader() -> None:
    result = CliRunner().invoke(cli, ["data", "formats", "--json"])
    assert set(json.loads(result.output)) >= {"market1501", "market1501-holdout", "msmt17", "cuhk03", "veri776", "vehicle-reid", "folder"}


def test_demo_quick_runs_the_whole_path_and_reports(tmp_path: Path) -> None:
    from edgereid.export.sensitivity import HELDOUT_MARGIN_POINTS

    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (out / "data" / "query").is_dir()
    run = out / "runs" / "quickstart_mutual"
    assert {"recipe.yaml", "metrics.jsonl", "last.pt"} <= {path.name for path in run.iterdir()}
    # Both networks of the mutual run are exported and verified: the student and its teacher.
    for network, backbone in (("cnn16", "plaincnn16"), ("cnn32", "plaincnn32")):
        manifest = json.loads((out / f"bundle-{network}" / "manifest.json").read_text())
        assert manifest["network"] == network and manifest["backbone"] == backbone
        assert set(manifest["models"]) == {"fp32", "int8_cpu"}
        # The demo's INT8 is protected like `edgereid export --int8`: the default budget, searched with the margin.
        accuracy = manifest["models"]["int8_cpu"]["accuracy"]
        assert accuracy["max_mAP_drop_points"] == 0.5 and accuracy["heldout_margin_points"] == HELDOUT_MARGIN_POINTS
        assert accuracy["drop_points_after"] <= accuracy["heldout_threshold_points"]
        verified = json.loads((out / "results" / f"verify-{network}.json").read_text())
        assert verified["results"]["fp32"]["delta_mAP_points"] == 0.0
        assert verified["results"]["int8_cpu"]["delta_mAP_points"] is not None
        bench = json.loads((out / "results" / f"bench-{network}.json").read_text())
        assert {(run["precision"], run["batch"]) for run in bench["runs"]} == {
            (precision, batch) for precision in ("fp32", "int8_cpu") for batch in (1, 32)}
    gallery = json.loads((out / "gallery" / "gallery.json").read_text())
    assert gallery["count"] == len(list((out / "data" / "bounding_box_test").glob("*.jpg")))
    report = json.loads((out / "report" / "report.json").read_text())
    (group,) = report["groups"]
    assert len(group["rows"]) == 4 and (out / "report" / "pareto.png").is_file()
    # The pictures: ranked lists, where INT8 ranks differently, the training curves — drawn and linked.
    ranked = sorted((out / "pictures" / "ranked-lists").glob("query-*.png"))
    differences = sorted((out / "pictures" / "precisions").glob("*.png"))
    curves = sorted((out / "report").glob("curves-*.png"))
    assert ranked and differences and curves and (run / "curves.png").is_file()
    for picture in (*ranked, *differences, *curves):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    html = (out / "report" / "report.html").read_text()
    assert "ranked-lists/index.html" in html and "precisions/index.html" in html
    assert "│ cnn16 " in result.output and "│ cnn32 " in result.output  # both networks evaluated
    assert "top-1 is the right identity" in result.output and str(out / "report" / "pareto.png") in result.output


def test_training_commands_name_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    for command in (["train", "quickstart"], ["eval", "runs/x"], ["demo"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1
        assert "pip install 'edgereid[train]'" in result.output


# Damaged bundle manifests (issue 22, item 7): every command that reads a bundle refuses it in one line naming the
# manifest and the key, exits non-zero, and shows no traceback.
MANIFEST_DAMAGES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "key removed": (lambda m: m["output"].pop("feature_dim"), "output.feature_dim: missing"),
    "wrong input size": (lambda m: m["input"].update(height=0), "input.height: expected a whole number >= 1, got 0"),
    "string for a number": (lambda m: m["input"].update(width="32"),
                            'input.width: expected a whole number >= 1, got "32"'),
    "wrong feature size": (lambda m: m["output"].update(feature_dim=512),
                           "does not fit model.fp32.onnx: output.feature_dim: expected 128 (the embedding size the model outputs), got 512"),
}


@pytest.fixture(scope="module")
def damaged_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.factories import damaged_copy, make_small_bundle

    base = tmp_path_factory.mktemp("damaged")
    bundle = make_small_bundle(base).path
    write_image(base / "query" / "0001_c1s1_000100_01.jpg")
    return {name: damaged_copy(bundle, base / name.replace(" ", "-"), change)
            for name, (change, _) in MANIFEST_DAMAGES.items()}


@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGES))
@pytest.mark.parametrize("command", ["search", "gallery build", "verify", "bench"])
def test_a_damaged_bundle_manifest_is_one_line_naming_file_and_key(
    damaged_bundles: dict[str, Path], tmp_path: Path, command: str, damage: str
) -> None:
    if damage == "wrong feature size" and importlib.util.find_spec("onnx") is None:
        pytest.skip("the feature size is checked against the model's graph with onnx, which is not installed")
    bundle = damaged_bundles[damage]
    query = bundle.parent / "query" / "0001_c1s1_000100_01.jpg"
    arguments = {
        "search": ["search", str(bundle), str(tmp_path / "gallery"), str(query)],
        "gallery build": ["gallery", "build", str(bundle), str(query), "--out", str(tmp_path / "gallery")],
        "verify": ["verify", str(bundle), "--max-images", "2"],
        "bench": ["bench", str(bundle), "--batch", "1", "--warmup", "0", "--iters", "1"],
    }[command]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: '{bundle / 'manifest.json'}' "), lines[0]
    assert MANIFEST_DAMAGES[damage][1] in lines[0], lines[0]
    assert not (tmp_path / "gallery").exists()
