"""An imported model through INT8 on both targets, with a native model's budgets: an edgereid checkpoint of a
FastReID or torchreid architecture is written in that library's own file format, imported back with
``edgereid import``, checked equal to the checkpoint, and exported with ``--int8`` for both targets (default
budget, held-out search) and verified on its recipe's test split.

    EDGEREID_DATA=../shared/data python benchmarks/bench_import_int8.py runs/bot_r50_fastreid_cpu/best.pt \\
        --library fastreid --work runs/bench-import-bot --out benchmarks/results/import-int8-bot_r50.json

The checkpoint must be of an architecture the library's importer produces: a ``fastreid_resnet*`` backbone or a
``mobilenetv2`` at last stride 2 with FastReID's BN-neck head (FastReID's ``Baseline``), or one of torchreid's
architectures (``--arch``, e.g. osnet_x1_0: an ``osnet_x1_0_fc512`` backbone with the pre-neck feature). Random
weights carry no accuracy, so the checkpoint is a short edgereid training run of that architecture (``edgereid
train`` with its model section).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from int8_rows import INT8, int8_rows, print_rows

from edgereid.atomic import atomic_write_text
from edgereid.data.images import decode_image
from edgereid.data.registry import load_dataset
from edgereid.export import export_checkpoint
from edgereid.importers import fastreid, torchreid
from edgereid.importers.common import DataSource, Preprocessing
from edgereid.modeling.config import ModelConfig
from edgereid.modeling.model import create_model
from edgereid.runtime.environment import describe_environment
from edgereid.training.checkpoint import Checkpoint, load_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a trained edgereid checkpoint of the library's architecture")
    parser.add_argument("--library", choices=["fastreid", "torchreid"], required=True)
    parser.add_argument("--arch", default="osnet_x1_0", help="torchreid's architecture name (--library torchreid)")
    parser.add_argument("--work", type=Path, required=True, help="the library's files, the import, the bundle")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def _fastreid_backbone(checkpoint: Checkpoint) -> tuple[str, str]:
    """FastReID's builder and DEPTH for the checkpoint's backbone; the head must be FastReID's BoT head."""
    model = checkpoint.recipe.model
    name = model.backbone.name
    if name.startswith("fastreid_resnet") and name.removeprefix("fastreid_resnet").isdigit():
        builder, depth = "build_resnet_backbone", name.removeprefix("fastreid_resnet") + "x"
    elif name == "mobilenetv2" and model.backbone.last_stride == 2:  # FastReID's MobileNetV2 has output stride 32
        builder, depth = "build_mobilenetv2_backbone", "1.0x"
    else:
        builder = depth = ""
    if not builder or model.head.kind != "bnneck" or model.head.neck_feat != "after" or model.pooling != "avg":
        raise SystemExit(f"'{checkpoint.path}': expected a fastreid_resnet* backbone or a mobilenetv2 at last stride "
                         "2, average pooling and a BN-neck head with the feature after it (FastReID's BoT), got "
                         f"{name}, {model.pooling}, {model.head}")
    return builder, depth


def fastreid_files(checkpoint: Checkpoint, work: Path) -> tuple[Path, Path]:
    """The checkpoint as a FastReID training run leaves it: a dumped config.yaml and model_final.pth."""
    builder, depth = _fastreid_backbone(checkpoint)
    model = checkpoint.recipe.model
    data = checkpoint.recipe.data
    mean = [round(value * 255, 6) for value in data.mean]
    std = [round(value * 255, 6) for value in data.std]
    config = {
        "MODEL": {
            "META_ARCHITECTURE": "Baseline",
            "BACKBONE": {"NAME": builder, "DEPTH": depth, "LAST_STRIDE": model.backbone.last_stride,
                         "WITH_IBN": model.backbone.ibn == "a", "WITH_NL": bool(model.backbone.non_local),
                         "WITH_SE": False, "NORM": "BN",
                         "FEAT_DIM": int(checkpoint.model_state["heads.neck.bn.weight"].shape[0])},
            "HEADS": {"NAME": "EmbeddingHead", "NORM": "BN", "WITH_BNNECK": True, "POOL_LAYER": "GlobalAvgPool",
                      "NECK_FEAT": model.head.neck_feat, "CLS_LAYER": "Linear", "EMBEDDING_DIM": 0,
                      "NUM_CLASSES": checkpoint.num_classes},
            "PIXEL_MEAN": mean,
            "PIXEL_STD": std,
        },
        "INPUT": {"SIZE_TRAIN": list(data.size), "SIZE_TEST": list(data.size)},
    }
    state = {fastreid.fastreid_key(key): value for key, value in checkpoint.model_state.items()}
    work.mkdir(parents=True, exist_ok=True)
    config_path, weights_path = work / "config.yaml", work / "model_final.pth"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    torch.save({"model": state, "iteration": checkpoint.iteration}, weights_path)
    return config_path, weights_path


def torchreid_file(checkpoint: Checkpoint, arch: str, work: Path) -> Path:
    """The checkpoint as torchreid's model zoo ships it: the network's bare state dict (`classifier.` dropped)."""
    plan = torchreid.check_arch(arch)
    expected, model = ModelConfig.model_validate(plan.model), checkpoint.recipe.model
    if (expected.backbone, expected.pooling, expected.head) != (model.backbone, model.pooling, model.head):
        raise SystemExit(f"'{checkpoint.path}': expected torchreid's {arch} as its importer builds it "
                         f"({expected.backbone}, {expected.pooling}, {expected.head}), got "
                         f"({model.backbone}, {model.pooling}, {model.head})")
    state = {key.removeprefix(plan.prefix): value for key, value in checkpoint.model_state.items()
             if key.startswith(plan.prefix)}
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{arch}.pth"
    torch.save(state, path)
    return path


def sample_images(checkpoint: Checkpoint, count: int = 16) -> torch.Tensor:
    """Every ``len // count``-th train image of the checkpoint's data set, at its input size, RGB in [0, 1]."""
    data = checkpoint.recipe.data
    train = load_dataset(data.root, format=data.format, **data.options).train
    chosen = train[:: max(len(train) // count, 1)][:count]
    pixels = np.stack([decode_image(record.path, tuple(data.size)) for record in chosen])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def network(checkpoint: Checkpoint) -> torch.nn.Module:
    """The checkpoint's network in eval mode."""
    model = create_model(checkpoint.recipe.model, checkpoint.num_classes)
    model.load_state_dict(checkpoint.model_state)
    return model.eval()


def normalized(checkpoint: Checkpoint, images: torch.Tensor) -> torch.Tensor:
    """``images`` (RGB in [0, 1]) normalized with the checkpoint's mean and std, as its network takes them."""
    data = checkpoint.recipe.data
    return (images - torch.tensor(data.mean)[:, None, None]) / torch.tensor(data.std)[:, None, None]


def library_difference(checkpoint: Checkpoint, library: str, files: Path, arch: str) -> float | None:
    """:func:`relative_difference` on :func:`sample_images` between the checkpoint's network and the library's
    own model built from the files written for it (FastReID: its config; torchreid: ``arch``) and loaded strictly
    (torchreid's classifier apart): proof that the files are that library's. None where the library is not
    installed beside the environment (``VENV/reid-refs``, as ``.ci/setup-env`` installs it)."""
    references = str(Path(sys.prefix) / "reid-refs")
    if references not in sys.path:
        sys.path.append(references)
    images = sample_images(checkpoint)
    try:
        if library == "fastreid":
            from fastreid.config import get_cfg
            from fastreid.modeling import build_model

            cfg = get_cfg()
            cfg.merge_from_file(str(files / "config.yaml"))
            cfg.MODEL.DEVICE, cfg.MODEL.BACKBONE.PRETRAIN = "cpu", False
            reference = build_model(cfg)
            reference.load_state_dict(torch.load(files / "model_final.pth", weights_only=True)["model"])
            source_images = images * 255  # FastReID normalizes inside, with the config's PIXEL_MEAN/STD
        else:
            import torchreid

            reference = torchreid.models.build_model(arch, num_classes=checkpoint.num_classes, pretrained=False)
            missing, unexpected = reference.load_state_dict(torch.load(files / f"{arch}.pth", weights_only=True),
                                                            strict=False)
            assert not unexpected and all(key.startswith("classifier.") for key in missing), (missing, unexpected)
            source_images = normalized(checkpoint, images)
    except ImportError:
        return None
    with torch.no_grad():
        a, b = reference.eval()(source_images), network(checkpoint)(normalized(checkpoint, images))
    return relative_difference(a, b)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference between two batches of embeddings over the largest absolute value of ``a``:
    a weak network maps some images to an all-zero embedding (a ReLU'd output), where a cosine means nothing."""
    return float((a.double() - b.double()).abs().max() / a.double().abs().max())


def max_embedding_difference(original: Checkpoint, imported: Path) -> float:
    """:func:`relative_difference` on :func:`sample_images` between the checkpoint's and the import's network."""
    images = normalized(original, sample_images(original))
    with torch.no_grad():
        a, b = network(original)(images), network(load_checkpoint(imported))(images)
    return relative_difference(a, b)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    data = checkpoint.recipe.data
    source = DataSource(root=Path(data.root), format=data.format)
    imported = args.work / "imported.pt"
    if args.library == "fastreid":
        config_path, weights_path = fastreid_files(checkpoint, args.work / "fastreid")
        started = time.perf_counter()
        fastreid.import_fastreid(config_path, weights_path, imported, data=source)
    else:
        weights_path = torchreid_file(checkpoint, args.arch, args.work / "torchreid")
        preprocessing = Preprocessing(size=tuple(data.size), mean=tuple(data.mean), std=tuple(data.std))
        started = time.perf_counter()
        torchreid.import_torchreid(args.arch, weights_path, imported, preprocessing=preprocessing, data=source)
    import_s = time.perf_counter() - started
    results: dict[str, Any] = {
        "kind": "edgereid.bench_import_int8",
        "command": shlex.join([sys.executable, *sys.argv]),
        "checkpoint": str(args.checkpoint.resolve()),
        "library": args.library,
        "arch": args.arch if args.library == "torchreid" else checkpoint.recipe.model.backbone.name,
        "trained_metrics": checkpoint.metrics,
        "import_s": import_s,
        "import_relative_difference": max_embedding_difference(checkpoint, imported),
        "library_relative_difference": library_difference(checkpoint, args.library, weights_path.parent, args.arch),
        "environment": describe_environment(),
    }
    started = time.perf_counter()
    bundle = export_checkpoint(imported, args.work / "bundle", precisions=["fp32", *INT8], overwrite=True,
                               verify=True)
    results["export_s"] = time.perf_counter() - started
    verification = bundle.manifest["verification"]
    results["num_query"] = verification["num_query"]
    results["fp32_mAP"] = verification["precisions"]["fp32"]["mAP"]
    results.update(int8_rows(bundle.manifest))
    atomic_write_text(args.out, json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    print(f"import {import_s:.1f} s, relative difference {results['import_relative_difference']:.1e}; "
          f"FP32 {results['fp32_mAP']:.2%} on {results['num_query']} queries")
    print_rows(results["arch"], {precision: results[precision] for precision in INT8})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
