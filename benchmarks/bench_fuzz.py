"""A fuzz pass over every file edgereid loads: each mutated file is refused in one line, or loads unchanged.

Run from the repository root (needs the ``[train]`` and ``[export]`` extras):

    python benchmarks/bench_fuzz.py

It makes a small real checkpoint (an untrained ``plaincnn16`` saved with ``save_checkpoint``), an FP32 bundle
exported from it, a 200-item gallery (``Gallery`` API), a JPEG and a PNG, a recipe and a calibration policy. Each
case mutates one of their files with a seeded mutation — a bit flip, a truncation, inserted or deleted bytes, an
overwritten run of bytes, random bytes in place of the file, or (for JSON, YAML and the checkpoint's pickled
payload) one value replaced by a value of another type or one key removed — loads it through the public loader and
classifies the outcome:

- ``refused``: an EdgeReIDError whose message is one line naming the file (or its bundle or gallery directory);
- ``refused_unclear``: an EdgeReIDError spanning several lines or not naming the file;
- ``accepted_unchanged``: it loads, with the same content as the original (the mutation hit padding, whitespace,
  or a field no loader reads back);
- ``accepted_corruption``: bytes of a file edgereid writes (checkpoint, manifest, gallery) were damaged and it
  loads with different content (other tensors, items, vectors, manifest values);
- ``accepted_changed``: bytes of a file with no checksum to hold it to (a recipe or policy a person edits, an image
  from a camera) were damaged and it loads with different content: a valid recipe with one character changed, or
  other pixels, is all any loader can see;
- ``accepted_confusion``: a file rewritten whole with one value of another type (or one key removed) loads with
  that value: a well-formed file, listed so that each field a loader leaves unchecked can be judged (many
  replacements are valid values: 2.5 for a float, a removed key that has a default);
- ``traceback``: any other exception.

Counts per file kind and every traceback and accepted corruption go to ``benchmarks/results/fuzz.json``. Images are
decoded as they are, and JPEG has no checksum: a flipped bit in its entropy-coded data decodes to other pixels,
which no decoder can tell from the original; those cases are counted, not hidden.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from edgereid import __version__
from edgereid.bundle_format import MANIFEST_NAME, load_bundle
from edgereid.data.images import decode_image
from edgereid.data.synthetic import generate_synthetic
from edgereid.errors import EdgeReIDError
from edgereid.export import export_checkpoint
from edgereid.export.calibration import SHIPPED_POLICIES, load_calibration_policy
from edgereid.modeling import create_model
from edgereid.recipes import SHIPPED_RECIPES, load_recipe, recipe_from_dict
from edgereid.runtime.gallery import Gallery, GalleryItem
from edgereid.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.mutations import BYTE_MUTATIONS

SIZE = (64, 32)
GALLERY_ITEMS = 200
GALLERY_DIM = 128
OUTCOMES = (
    "refused", "refused_unclear", "accepted_unchanged", "accepted_corruption", "accepted_changed",
    "accepted_confusion", "traceback",
)
# A value of each JSON/YAML type, for a key that holds another type.
_WEIGHTS = "<the model's weights>"
CONFUSED_VALUES: list[Any] = ["text", "", -1, 0, 7, 2.5, float("nan"), True, None, [], [1, "a"], {}, {"k": 1}]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every kind's case count by this")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "fuzz.json")
    return parser.parse_args()


def _paths(content: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into ``content`` (mappings and lists), inner nodes included."""
    found = [prefix] if prefix else []
    if isinstance(content, dict):
        for key, value in content.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(content, list):
        for index, value in enumerate(content):
            found += _paths(value, (*prefix, index))
    return found


def confuse(content: Any, rng: random.Random) -> tuple[str, Any]:
    """A copy of ``content`` with one value replaced by one of another type, or one key removed."""
    path = rng.choice(_paths(content))
    mutated = copy.deepcopy(content)
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"del {_dotted(path)}", mutated
    value = rng.choice(CONFUSED_VALUES)
    parent[path[-1]] = value
    return f"{_dotted(path)}={value!r}", mutated


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)


# -------------------------------------------------------------------------------------------------------- targets
@dataclass
class Target:
    """One file kind: the file a case mutates, how its text is parsed for type confusions, how it is loaded, and a
    digest of what the loader returned (equal digests: equal content)."""

    kind: str
    file: Path
    named: Path
    load: Callable[[], Any]
    digest: Callable[[Any], str]
    cases: int
    structured: str | None = None  # "json", "jsonl", "yaml" or "torch": how type confusions rewrite the file
    # False for files nothing can check (no checksum): a load with other content is a change, not a missed corruption.
    verifiable: bool = True
    # What differs between the original's and a mutant's loaded content, for the record of accepted corruptions.
    difference: Callable[[Any, Any], str] | None = None


def _sha(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def _tensors_digest(state: dict[str, torch.Tensor]) -> list[Any]:
    return [[name, str(tensor.dtype), list(tensor.shape), _sha(tensor.numpy().tobytes())]
            for name, tensor in sorted(state.items())]


def checkpoint_digest(checkpoint: Checkpoint) -> str:
    return _sha(
        checkpoint.recipe.model_dump(mode="json"), _tensors_digest(checkpoint.model_state), checkpoint.num_classes,
        checkpoint.class_pids, checkpoint.epoch, checkpoint.iteration, checkpoint.metrics,
        repr(checkpoint.training_state), checkpoint.student,
        {name: _tensors_digest(state) for name, state in checkpoint.peer_states.items()},
        checkpoint.quantization is None,
    )


def gallery_digest(gallery: Gallery) -> str:
    items = gallery.items()
    ids = sorted(items)
    vectors = gallery.vectors(np.asarray(ids, dtype=np.int64)) if ids else np.zeros(0)
    return _sha(gallery.model_id, gallery.factory, gallery.dim, {str(i): asdict(items[i]) for i in ids},
                np.ascontiguousarray(vectors).tobytes())


def manifest_difference(original: Any, loaded: Any) -> str:
    changed = sorted(key for key in original.manifest.keys() | loaded.manifest.keys()
                     if original.manifest.get(key) != loaded.manifest.get(key))
    return f"manifest keys changed: {', '.join(changed)}"


def make_targets(work: Path, scale: float) -> list[Target]:
    root = work / "synthetic"
    generate_synthetic(root, num_ids=16, num_cameras=2, seed=3, size=SIZE, images_per_id_per_camera=3)
    recipe = recipe_from_dict({
        "name": "fuzz", "seed": 1,
        "data": {"root": str(root), "format": "market1501", "size": list(SIZE), "sampler": {"p": 4, "k": 2}},
        "model": {"backbone": {"name": "plaincnn16", "last_stride": 1}},
        "train": {"output_dir": str(work / "runs"), "device": "cpu"},
    })
    torch.manual_seed(0)
    model = create_model(recipe.model, num_classes=8)
    checkpoint = work / "run" / "last.pt"
    save_checkpoint(checkpoint, recipe=recipe, model_state=model.state_dict(), class_pids=list(range(8)), epoch=3,
                    iteration=9, metrics={"mAP": 0.25}, training_state={})
    bundle = export_checkpoint(checkpoint, work / "bundle", precisions=("fp32",)).path

    gallery_dir = work / "gallery"
    gallery = Gallery.create(GALLERY_DIM, "fuzz-model")
    vectors = np.random.default_rng(0).standard_normal((GALLERY_ITEMS, GALLERY_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gallery.add(vectors, [GalleryItem(identity=str(i % 20), camera=f"c{i % 3}", path=f"img/{i}.jpg")
                          for i in range(GALLERY_ITEMS)])
    gallery.save(gallery_dir)

    pixels = np.random.default_rng(1).integers(0, 256, (48, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(work / "image.jpg", quality=90)
    Image.fromarray(pixels).save(work / "image.png")

    recipe_file = work / "recipe.yaml"
    quickstart = yaml.safe_load((SHIPPED_RECIPES / "quickstart.yaml").read_text())
    quickstart.pop("_base_", None)
    recipe_file.write_text(yaml.safe_dump(quickstart))
    policy_file = work / "policy.yaml"
    shutil.copy(SHIPPED_POLICIES / "train-capped-v1.yaml", policy_file)

    def cases(count: int) -> int:
        return max(1, round(count * scale))

    def pixels_digest(image: np.ndarray) -> str:
        return _sha(list(image.shape), image.tobytes())

    return [
        Target("checkpoint", checkpoint, checkpoint, lambda: load_checkpoint(checkpoint), checkpoint_digest,
               cases(1000), "torch"),
        Target("bundle manifest", bundle / MANIFEST_NAME, bundle, lambda: load_bundle(bundle),
               lambda loaded: _sha(loaded.manifest), cases(500), "json", difference=manifest_difference),
        Target("gallery header", gallery_dir / "gallery.json", gallery_dir, lambda: Gallery.load(gallery_dir),
               gallery_digest, cases(200), "json"),
        Target("gallery items", gallery_dir / "items.jsonl", gallery_dir, lambda: Gallery.load(gallery_dir),
               gallery_digest, cases(200), "jsonl"),
        Target("gallery index", gallery_dir / "index.faiss", gallery_dir, lambda: Gallery.load(gallery_dir),
               gallery_digest, cases(200)),
        Target("image jpeg", work / "image.jpg", work / "image.jpg", lambda: decode_image(work / "image.jpg"),
               pixels_digest, cases(250), verifiable=False),
        Target("image png", work / "image.png", work / "image.png", lambda: decode_image(work / "image.png"),
               pixels_digest, cases(250), verifiable=False),
        Target("recipe", recipe_file, recipe_file, lambda: load_recipe(recipe_file),
               lambda loaded: _sha(loaded.model_dump(mode="json")), cases(150), "yaml", verifiable=False),
        Target("calibration policy", policy_file, policy_file, lambda: load_calibration_policy(policy_file),
               lambda loaded: _sha(loaded.model_dump()), cases(150), "yaml", verifiable=False),
    ]


# ------------------------------------------------------------------------------------------------------- the pass
def structured_mutant(target: Target, original: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A type confusion of the file's parsed content, written back in its own format."""
    if target.structured == "torch":
        payload = torch.load(io.BytesIO(original), map_location="cpu", weights_only=True)
        # Aim the confusions at the fields around the weights: inside them they would only rename tensors.
        weights, payload["model"] = payload["model"], _WEIGHTS
        name, mutated = confuse(payload, rng)
        if mutated.get("model") == _WEIGHTS:
            mutated["model"] = weights
        buffer = io.BytesIO()
        torch.save(mutated, buffer)
        return name, buffer.getvalue()
    if target.structured == "jsonl":
        lines = original.decode().splitlines()
        line = rng.randrange(len(lines))
        name, record = confuse(json.loads(lines[line]), rng)
        lines[line] = json.dumps(record)
        return f"line {line + 1}: {name}", ("\n".join(lines) + "\n").encode()
    if target.structured == "json":
        name, content = confuse(json.loads(original), rng)
        return name, json.dumps(content, indent=2).encode()
    name, content = confuse(yaml.safe_load(original), rng)
    return name, yaml.safe_dump(content).encode()


def classify(target: Target, reference: Any, mutation: str) -> tuple[str, str]:
    try:
        loaded = target.load()
    except EdgeReIDError as error:
        message = str(error)
        clear = "\n" not in message and (target.file.name in message or str(target.named) in message)
        return ("refused" if clear else "refused_unclear"), f"{type(error).__name__}: {message}"
    except Exception as error:  # noqa: BLE001 - what this benchmark counts
        frame = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
        return "traceback", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} ({where})"
    if target.digest(loaded) == target.digest(reference):
        return "accepted_unchanged", ""
    detail = target.difference(reference, loaded) if target.difference else "different content"
    if mutation == "type_confusion":
        return "accepted_confusion", f"loaded: {detail}"
    return ("accepted_corruption" if target.verifiable else "accepted_changed"), f"loaded: {detail}"


def fuzz(target: Target, seed: int) -> dict[str, Any]:
    original = target.file.read_bytes()
    reference = target.load()
    counts: Counter[str] = Counter()
    by_mutation: dict[str, Counter[str]] = defaultdict(Counter)
    notable: list[dict[str, Any]] = []
    mutations = list(BYTE_MUTATIONS) + (["type_confusion"] * 2 if target.structured else [])
    started = time.perf_counter()
    try:
        for case in range(target.cases):
            rng = random.Random(f"{seed}/{target.kind}/{case}")
            mutation = rng.choice(mutations)
            if mutation == "type_confusion":
                detail, data = structured_mutant(target, original, rng)
            else:
                data = BYTE_MUTATIONS[mutation](original, rng)
                detail = f"{len(original)} -> {len(data)} bytes"
            target.file.write_bytes(data)
            outcome, message = classify(target, reference, mutation)
            counts[outcome] += 1
            by_mutation[mutation][outcome] += 1
            if outcome in ("traceback", "accepted_corruption", "accepted_confusion", "refused_unclear"):
                notable.append({"case": case, "mutation": mutation, "detail": detail, "outcome": outcome,
                                "message": message[:400]})
    finally:
        target.file.write_bytes(original)
    return {
        "file": target.file.name,
        "cases": target.cases,
        "counts": {outcome: counts[outcome] for outcome in OUTCOMES},
        "by_mutation": {name: dict(counter) for name, counter in sorted(by_mutation.items())},
        "seconds": round(time.perf_counter() - started, 2),
        "notable": notable,
    }


def main() -> None:
    args = parse_args()
    # Loaders warn about some damaged inputs; the outcome, not the warning, is what is counted.
    import warnings

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="edgereid-fuzz-") as scratch:
        targets = make_targets(Path(scratch), args.scale)
        kinds: dict[str, Any] = {}
        for target in targets:
            kinds[target.kind] = fuzz(target, args.seed)
            print(f"{target.kind:20s} {kinds[target.kind]['counts']} ({kinds[target.kind]['seconds']} s)", flush=True)
    totals = {outcome: sum(kind["counts"][outcome] for kind in kinds.values()) for outcome in OUTCOMES}
    results = {
        "benchmark": "fuzz",
        "edgereid": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": args.seed,
        "cases": sum(kind["cases"] for kind in kinds.values()),
        "totals": totals,
        "kinds": kinds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"total {results['cases']} cases: {totals} -> {args.out}")


if __name__ == "__main__":
    main()
