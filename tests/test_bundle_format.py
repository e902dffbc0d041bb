"""The bundle format (edgereid.bundle_format): the manifest's schema, validated on every load with one-line errors,
and the import structure that keeps it the contract between export and runtime (runtime imports nothing from
export; the export package has no import cycle)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgereid.bundle_format import (
    MANIFEST_CHECKSUM,
    MANIFEST_NAME,
    BundleManifest,
    ExportBundle,
    load_bundle,
    manifest_text,
    validate_manifest,
)
from edgereid.errors import DataError
from tests.factories import damaged_copy, make_small_bundle

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "edgereid"
HAS_ONNX = importlib.util.find_spec("onnx") is not None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> ExportBundle:
    return make_small_bundle(tmp_path_factory.mktemp("format"))


def _set(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _remove(*path: str) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        node = manifest
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


def _engine(**changes: Any) -> Callable[[dict[str, Any]], None]:
    entry = {"file": "engine.fp32.plan", "sha256": "0" * 64, "tensorrt_version": "10.3.0.30", "gpu": "Orin",
             "compute_capability": "8.7", "options": {"version_compatible": False}, **changes}
    return _set("engines", value={"fp32": entry})


# (change, the message's key path and expectation, needs onnx)
DAMAGES: dict[str, tuple[Callable[[dict[str, Any]], None], str, bool]] = {
    "key removed": (_remove("output", "feature_dim"), "output.feature_dim: missing; expected a whole number >= 1",
                    False),
    "section removed": (_remove("input"), "input: missing; expected a JSON object with name, layout", False),
    "height 0": (_set("input", "height", value=0), "input.height: expected a whole number >= 1, got 0", False),
    "height a string": (_set("input", "height", value="64"), 'input.height: expected a whole number >= 1, got "64"',
                        False),
    "height a float": (_set("input", "height", value=64.0), "input.height: expected a whole number >= 1, got 64.0",
                       False),
    "feature size a string": (_set("output", "feature_dim", value="128"),
                              'output.feature_dim: expected a whole number >= 1, got "128"', False),
    "flip a string": (_set("test", "flip", value="yes"), 'test.flip: expected true or false, got "yes"', False),
    "mean of two": (_set("input", "mean", value=[0.5, 0.5]), "input.mean: expected a list of 3 numbers", False),
    "std of zero": (_set("input", "std", value=[0.2, 0.0, 0.2]), "input.std[1]: expected a number > 0, got 0.0",
                    False),
    "another pixel scale": (_set("input", "scale", value=1.0), "input.scale: expected 0.00392156862745098", False),
    "sha256 removed": (_remove("models", "fp32", "sha256"), "models.fp32.sha256: missing; expected a sha256", False),
    "file outside": (_set("models", "fp32", "file", value="../model.fp32.onnx"),
                     "models.fp32.file: expected a file name inside the bundle", False),
    "unknown precision": (_set("models", "fp64", value={"file": "x.onnx", "sha256": "0" * 64}),
                          "models: key 'fp64' is not allowed; expected \"fp32\" or \"fp16\"", False),
    "no fp32": (lambda m: m["models"].pop("fp32"), "models: expected an 'fp32' entry", False),
    "engine capability a number": (_engine(compute_capability=8.7),
                                   'engines.fp32.compute_capability: expected a compute capability as a string', False),
    "engine DLA core negative": (_engine(options={"dla_core": -1}),
                                 "engines.fp32.options.dla_core: expected a whole number >= 0 or null, got -1", False),
    "not a list": (_set("input", value=[64, 32]), "input: expected a JSON object with name", False),
    "wrong feature size": (_set("output", "feature_dim", value=256),
                           "does not fit model.fp32.onnx: output.feature_dim: expected 128 (the embedding size the model outputs), got 256",
                           True),
    "wrong input size": (_set("input", "height", value=65),
                         "does not fit model.fp32.onnx: input.height: expected 64 (the model's input is N×3×64×32), got 65", True),
    "wrong output name": (_set("output", "name", value="features"),
                          "does not fit model.fp32.onnx: output.name: expected the model's output ('embeddings'), got 'features'", True),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_manifest_is_one_line_naming_the_file_and_key(
    bundle: ExportBundle, tmp_path: Path, damage: str
) -> None:
    change, expected, needs_onnx = DAMAGES[damage]
    if needs_onnx and not HAS_ONNX:
        pytest.skip("the manifest/model cross-check reads the graph with onnx, which is not installed")
    damaged = damaged_copy(bundle.path, tmp_path / "bundle", change)
    with pytest.raises(DataError) as error:
        load_bundle(damaged)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"'{damaged / MANIFEST_NAME}'"), message
    assert expected in message, message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "is not a bundle manifest: not valid JSON (Expecting property name enclosed in double quotes"),
        (b"", "is not a bundle manifest: not valid JSON (Expecting value at line 1, column 1)"),
        (b"[1, 2]", "is not a bundle manifest: expected a JSON object, got a JSON list"),
        (b'"bundle"', "is not a bundle manifest: expected a JSON object, got a string"),
        (b"\xff\xfe\x00garbage", "is not a bundle manifest: it is not UTF-8 text"),
        (b'{"format": "something-else"}', "is not an edgereid bundle manifest (format 'edgereid-bundle')"),
    ],
)
def test_an_unreadable_manifest_is_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(DataError) as error:
        load_bundle(tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"'{tmp_path / MANIFEST_NAME}'") and expected in message


def test_another_format_version_is_refused_before_the_schema(bundle: ExportBundle, tmp_path: Path) -> None:
    damaged = damaged_copy(bundle.path, tmp_path / "bundle", _set("format_version", value=2))
    with pytest.raises(DataError, match="has format version 2; this edgereid reads version 1"):
        load_bundle(damaged)


def test_a_manifest_changed_after_it_was_written_is_refused(bundle: ExportBundle, tmp_path: Path) -> None:
    """A change the schema cannot see (another data root, one digit of a recorded mAP) fails the manifest's
    checksum of its own content, as a changed model fails its sha256."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    manifest_path = copy / MANIFEST_NAME
    text = manifest_path.read_text()
    assert json.loads(text)[MANIFEST_CHECKSUM] and load_bundle(copy).manifest == json.loads(text)
    root = json.loads(text)["data"]["root"]
    manifest_path.write_text(text.replace(json.dumps(root), json.dumps(root + "x"), 1))
    with pytest.raises(DataError, match=r"manifest.json' does not match its manifest_sha256: it was changed"):
        load_bundle(copy)
    # Written again through the format's own writer, the same change is a valid manifest.
    changed = json.loads(manifest_path.read_text())
    manifest_path.write_text(manifest_text(changed))
    assert load_bundle(copy).manifest["data"]["root"] == root + "x"


def test_unknown_keys_are_kept_and_the_written_manifest_validates(bundle: ExportBundle, tmp_path: Path) -> None:
    """Open records: a key a later edgereid of the same format version adds loads here and is kept."""
    manifest = json.loads((bundle.path / MANIFEST_NAME).read_text())
    spec = BundleManifest.model_validate(manifest)
    assert (spec.input.height, spec.input.width, spec.output.feature_dim) == (64, 32, 128)
    assert set(spec.models) == {"fp32"} and spec.engines == {}

    def enrich(manifest: dict[str, Any]) -> None:
        manifest["later_key"] = {"anything": [1, 2]}
        manifest["input"]["later_detail"] = "kept"
        manifest["models"]["fp32"]["later_record"] = 3

    enriched = load_bundle(damaged_copy(bundle.path, tmp_path / "bundle", enrich))
    assert enriched.manifest["later_key"] == {"anything": [1, 2]}
    assert enriched.manifest["input"]["later_detail"] == "kept" and enriched.feature_dim == 128


def test_validate_manifest_refuses_what_is_not_an_object() -> None:
    with pytest.raises(DataError, match=r"^'m.json' is not a bundle manifest: expected a JSON object, got null$"):
        validate_manifest(None, "m.json")


def test_the_bundle_format_reads_a_bundle_without_torch_export_runtime_or_training(bundle: ExportBundle) -> None:
    script = f"""
import sys
from edgereid.bundle_format import load_bundle
assert load_bundle({str(bundle.path)!r}).feature_dim == 128
loaded = sorted(name for name in sys.modules
                if name == "torch" or name.split(".")[:2] in (["edgereid", "export"], ["edgereid", "runtime"],
                                                               ["edgereid", "training"]))
print(loaded)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------------------
# The import structure, read from the source (lazy imports inside functions included)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The edgereid modules ``path`` imports anywhere in its body: ``from edgereid.a import b`` counts as
    ``edgereid.a.b`` where that is a module, else as ``edgereid.a``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("edgereid"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgereid") and not node.level:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (REPO / Path(*candidate.split("."))).with_suffix(".py").is_file() or (
                    REPO / Path(*candidate.split(".")) / "__init__.py"
                ).is_file()
                found.add(candidate if is_module else node.module)
    return found


def _modules_under(folder: Path) -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(folder.rglob("*.py"))}


def test_the_runtime_imports_nothing_from_export_not_even_lazily() -> None:
    offending = {
        name: sorted(imported for imported in _imports(path) if imported.startswith("edgereid.export"))
        for name, path in _modules_under(PACKAGE / "runtime").items()
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_the_bundle_format_sits_below_export_runtime_and_training() -> None:
    path = PACKAGE / "bundle_format.py"
    assert _imports(path) == {"edgereid.errors", "edgereid.jsonfile"}
    top_level = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in top_level and "numpy" not in top_level


def test_the_export_package_has_no_import_cycle() -> None:
    """Every import between edgereid.export modules (lazy ones too) points one way, and bundle.py — the
    entry point ``export_checkpoint``/``verify_bundle`` — is imported only by the package's ``__init__``."""
    modules = _modules_under(PACKAGE / "export")
    graph = {name: {imported for imported in _imports(path) if imported in modules and imported != name}
             for name, path in modules.items()}
    assert {name for name, imported in graph.items() if "edgereid.export.bundle" in imported} <= {"edgereid.export"}

    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in trail:
            cycle = " → ".join((*trail[trail.index(name):], name))
            pytest.fail(f"import cycle among edgereid.export modules: {cycle}")
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, (*trail, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
    assert "edgereid.export.common" in graph and not graph["edgereid.export.common"]
