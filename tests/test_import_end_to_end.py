"""An imported model through the commands that already exist: import → eval on a query/gallery-only folder (no
train split) → export (INT8 for ONNX Runtime CPU, calibrated on a data set with a train split) → verify → a gallery
of the exported bundle searched with the query images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from edgereid.cli import cli
from edgereid.modeling.config import ModelConfig
from edgereid.modeling.model import create_model


def _folder(
    root: Path, splits: tuple[str, ...], ids: int = 4, per_camera: int = 2, noise: float = 20.0, texture: bool = False
) -> Path:
    rng = np.random.default_rng(0)
    textures = [rng.integers(0, 255, size=(64, 32, 3)) for _ in range(ids)] if texture else []
    for split in splits:
        for pid in range(ids):
            base = textures[pid] if texture else rng.integers(0, 255, size=3)
            for camera in ("c1", "c2"):
                for index in range(per_camera):
                    pixels = np.clip(base + rng.normal(0, noise, size=(64, 32, 3)), 0, 255).astype(np.uint8)
                    path = root / split / f"{pid:03d}" / camera / f"{index}.jpg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels).save(path)
    return root


def _market(root: Path, ids: int = 4, train: bool = False) -> Path:
    """A Market-1501 layout with query/ and bounding_box_test/ (and bounding_box_train/ with ``train``)."""
    rng = np.random.default_rng(1)
    shots = [("query", 1), ("bounding_box_test", 2), ("bounding_box_test", 3)]
    shots += [("bounding_box_train", camera) for camera in (1, 2, 3, 4)] if train else []
    for pid in range(1, ids + 1):
        base = rng.integers(0, 255, size=3)
        for split, camera in shots:
            pixels = np.clip(base + rng.normal(0, 20, size=(64, 32, 3)), 0, 255).astype(np.uint8)
            path = root / split / f"{pid:04d}_c{camera}s1_{pid:06d}_00.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


def _torchreid_weights(path: Path) -> None:
    """osnet_x0_25 weights as torchreid names them (edgereid's osnet_x0_25_fc512 has torchreid's key names)."""
    cfg = ModelConfig.model_validate({"backbone": {"name": "osnet_x0_25_fc512"}, "head": {"neck_feat": "before"}})
    state = {key.removeprefix("backbone."): value for key, value in create_model(cfg, 4).state_dict().items()
             if key.startswith("backbone.")}
    torch.save(state, path)


def test_import_eval_export_verify(tmp_path: Path) -> None:
    runner = CliRunner()
    weights = tmp_path / "osnet_x0_25_msmt17.pt"
    _torchreid_weights(weights)
    checkpoint = tmp_path / "imported.pt"
    result = runner.invoke(cli, ["import", "boxmot", str(weights), "--out", str(checkpoint), "--size", "64", "32"])
    assert result.exit_code == 0, result.output

    query_gallery = _folder(tmp_path / "qg", ("query", "gallery"))
    result = runner.invoke(cli, ["eval", str(checkpoint), "--data", str(query_gallery), "--format", "folder",
                                 "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads(result.output)["mAP"] <= 1 if "mAP" in json.loads(result.output) else True

    # A Market-layout query/gallery-only set, detected; and the folder set, its format named (reader options too).
    market = _market(tmp_path / "market")
    bundle = tmp_path / "bundle"
    result = runner.invoke(cli, ["export", str(checkpoint), "--out", str(bundle), "--data", str(market)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["verify", str(bundle), "--data", str(market), "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["verify", str(bundle), "--data", str(query_gallery), "--format", "folder", "--json"])
    assert result.exit_code == 0, result.output

    # Each identity one random texture, its images that texture with a little noise: an untrained network tells
    # them apart (on the flat colours above with 20 levels of noise its top-1 is near chance).
    _search_gallery(bundle, _folder(tmp_path / "textures", ("query", "gallery"), noise=3.0, texture=True))


def _search_gallery(bundle: Path, root: Path) -> None:
    """A gallery of ``root``'s gallery/ images embedded by the bundle on ONNX Runtime; each query's top-1 match
    from another camera should be an image of its identity (root/<split>/<identity>/<camera>/<n>.jpg)."""
    from edgereid.runtime.embedder import Embedder
    from edgereid.runtime.gallery import Gallery, GalleryItem

    gallery_paths = sorted((root / "gallery").glob("*/*/*.jpg"))
    query_paths = sorted((root / "query").glob("*/*/*.jpg"))
    with Embedder(bundle) as embedder:
        gallery_embeddings = embedder.embed_paths(gallery_paths)
        query_embeddings = embedder.embed_paths(query_paths)
        gallery = Gallery.create(embedder.feature_dim, embedder.model_id, precision=embedder.precision)
    gallery.add(gallery_embeddings, [GalleryItem(identity=path.parts[-3], camera=path.parts[-2], path=str(path))
                                     for path in gallery_paths])
    assert len(gallery) == len(gallery_paths)
    matches = gallery.search(query_embeddings, 1, query_cameras=[path.parts[-2] for path in query_paths],
                             exclude_same_camera=True)
    correct = [top[0].item.identity == path.parts[-3] for path, top in zip(query_paths, matches, strict=True)]
    assert all(top[0].item.camera != path.parts[-2] for path, top in zip(query_paths, matches, strict=True))
    assert sum(correct) >= 0.75 * len(correct), f"{sum(correct)} of {len(correct)} queries found their identity"


def test_imported_model_exports_int8_for_cpu(tmp_path: Path) -> None:
    weights = tmp_path / "osnet_x0_25.pth"
    _torchreid_weights(weights)
    checkpoint = tmp_path / "imported.pt"
    runner = CliRunner()
    market = _market(tmp_path / "market", ids=6, train=True)
    result = runner.invoke(cli, ["import", "torchreid", "osnet_x0_25", str(weights), "--out", str(checkpoint),
                                 "--size", "64", "32", "--data", str(market)])
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "bundle"
    result = runner.invoke(cli, ["export", str(checkpoint), "--out", str(bundle), "--data", str(market), "--int8",
                                 "--target", "cpu", "--calibration-images", "16", "--max-map-drop", "none"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["verify", str(bundle), "--data", str(market), "--json"])
    assert result.exit_code == 0, result.output
