"""Every loader refuses damaged input with one EdgeReIDError line naming the file, never a traceback, and a
checkpoint whose bytes changed after it was written is refused rather than loaded as different weights.

The mutations are a small seeded sample (bit flips, truncation, inserted and deleted bytes, random bytes, type
confusions); benchmarks/bench_fuzz.py runs thousands of them.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from edgereid.bundle_format import MANIFEST_NAME, load_bundle
from edgereid.cli import cli
from edgereid.data.images import decode_image
from edgereid.errors import DataError, EdgeReIDError
from edgereid.export.calibration import SHIPPED_POLICIES, load_calibration_policy
from edgereid.recipes import SHIPPED_RECIPES, load_recipe
from edgereid.training.checkpoint import load_checkpoint
from tests.conftest import write_image
from tests.factories import make_checkpoint, make_small_bundle
from tests.mutations import BYTE_MUTATIONS

MUTATIONS_PER_KIND = 6


JUNK_FILES = {"empty": b"", "abc": b"abc", "six-byte text": b"hello\n", "nul bytes": bytes(64)}


def byte_mutants(data: bytes, seed: int) -> list[tuple[str, bytes]]:
    """A seeded sample of each byte mutation of ``data``, and the junk files every loader meets."""
    rng = random.Random(seed)
    mutants = [(f"{mutate.__name__} #{index}", mutate(data, rng))
               for mutate in BYTE_MUTATIONS.values() for index in range(MUTATIONS_PER_KIND)]
    return mutants + list(JUNK_FILES.items())


# A value of each type that a key of another type might receive.
CONFUSED_VALUES: list[Any] = ["text", -3, 2.5, True, None, [1, "a"], {"nested": 1}]


def type_confusions(content: dict[str, Any], seed: int, count: int = 24) -> list[tuple[str, dict[str, Any]]]:
    """Copies of ``content`` with one leaf (or the whole section it sits in) replaced by a value of another type."""
    rng = random.Random(seed)
    leaves = list(_leaf_paths(content))
    confused = []
    for _ in range(count):
        path = rng.choice(leaves)
        path = path[: rng.randint(1, len(path))]
        value = rng.choice(CONFUSED_VALUES)
        copy = json.loads(json.dumps(content))
        parent = copy
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
        confused.append((f"{'.'.join(map(str, path))}={value!r}", copy))
    return confused


def _leaf_paths(content: Any, prefix: tuple[Any, ...] = ()) -> Any:
    if isinstance(content, dict) and content:
        for key, value in content.items():
            yield from _leaf_paths(value, (*prefix, key))
    elif isinstance(content, list) and content:
        for index, value in enumerate(content):
            yield from _leaf_paths(value, (*prefix, index))
    elif prefix:
        yield prefix


def assert_clean_refusal(error: BaseException, file: Path, named: Path | None = None) -> None:
    """``error`` is one EdgeReIDError line naming ``file`` (or ``named``: the bundle a manifest belongs to)."""
    assert isinstance(error, EdgeReIDError), f"{type(error).__name__}: {error}"
    message = str(error)
    assert "\n" not in message, message
    assert file.name in message or (named is not None and str(named) in message), message
    assert "weights_only" not in message, message


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("checkpoint"), ibn=None, backbone="plaincnn16")


def tensor_data_offset(path: Path, member_suffix: str = "/data/0") -> tuple[int, int]:
    """Where the bytes of the first tensor storage of a torch.save zip start, and how many there are."""
    with zipfile.ZipFile(path) as archive:
        member = next(info for info in archive.infolist() if info.filename.endswith(member_suffix))
    with path.open("rb") as file:
        file.seek(member.header_offset)
        header = file.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return member.header_offset + 30 + name_length + extra_length, member.file_size


def test_a_flipped_bit_in_a_weight_is_refused_naming_the_file(checkpoint: Path, tmp_path: Path) -> None:
    start, size = tensor_data_offset(checkpoint)
    data = bytearray(checkpoint.read_bytes())
    data[start + size // 2] ^= 0x10
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"checkpoint '.*damaged\.pt' is damaged: .*data/0 fails its CRC-32") as caught:
        load_checkpoint(damaged)
    assert_clean_refusal(caught.value, damaged)
    # torch.load alone takes the damaged weight: the check is what stops it.
    loaded = torch.load(damaged, map_location="cpu", weights_only=True)["model"]
    original = load_checkpoint(checkpoint).model_state
    assert any(not torch.equal(loaded[name], original[name]) for name in original)


def test_an_untouched_checkpoint_still_loads(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert loaded.epoch == 3 and loaded.class_pids == list(range(8))
    assert all(torch.equal(loaded.model_state[name], saved["model"][name]) for name in saved["model"])


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("true",))


def junk_checkpoints(checkpoint: Path, directory: Path) -> dict[str, tuple[Path, str]]:
    """The junk files of issue 22 and what the refusal must say about each."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    files: dict[str, tuple[Path, str]] = {}

    def write(name: str, expected: str, data: bytes | None = None, payload: Any = None) -> None:
        path = directory / f"{name}.pt"
        if data is not None:
            path.write_bytes(data)
        else:
            torch.save(payload, path)
        files[name] = (path, expected)

    not_a_zip = "not an edgereid checkpoint: not a complete zip archive written by torch.save"
    write("six-byte-text", not_a_zip, data=b"hello\n")
    write("abc", not_a_zip, data=b"abc")
    write("empty", "is empty", data=b"")
    write("truncated", not_a_zip, data=checkpoint.read_bytes()[:5000])
    write("random", not_a_zip, data=random.Random(0).randbytes(4096))
    write("plain-pickle", not_a_zip, data=pickle.dumps({"format": "edgereid-checkpoint"}))
    write("no-recipe", "has no 'recipe'", payload={"format": "edgereid-checkpoint", "version": 1})
    write("recipe-of-wrong-type", "'recipe' must be a mapping, got list", payload={**saved, "recipe": [1, 2]})
    write("weights-of-wrong-type", "'model' must be a mapping of parameter names to tensors",
          payload={**saved, "model": {"conv.weight": 1.5}})
    write("epoch-of-wrong-type", "'epoch' must be an integer, got str", payload={**saved, "epoch": "3"})
    write("a-list", "holds a list", payload=[1, 2, 3])
    write("pickled-code", "holds a pickled object of type posix.system that a checkpoint never contains",
          payload={"format": "edgereid-checkpoint", "payload": _RunsCode()})
    return files


@pytest.fixture(scope="module")
def junk(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return junk_checkpoints(checkpoint, tmp_path_factory.mktemp("junk"))


JUNK_NAMES = ["six-byte-text", "abc", "empty", "truncated", "random", "plain-pickle", "no-recipe",
              "recipe-of-wrong-type", "weights-of-wrong-type", "epoch-of-wrong-type", "a-list", "pickled-code"]


@pytest.mark.parametrize("name", JUNK_NAMES)
def test_junk_checkpoints_get_one_line_saying_why(junk: dict[str, tuple[Path, str]], name: str) -> None:
    path, expected = junk[name]
    with pytest.raises(DataError) as caught:
        load_checkpoint(path)
    assert_clean_refusal(caught.value, path)
    assert expected in str(caught.value)


@pytest.mark.parametrize("command", [["eval"], ["export", "--out", "{out}"], ["bench", "--iters", "1"]])
@pytest.mark.parametrize("name", ["six-byte-text", "abc", "no-recipe", "pickled-code"])
def test_the_cli_refuses_junk_checkpoints_in_one_line(
    junk: dict[str, tuple[Path, str]], tmp_path: Path, command: list[str], name: str
) -> None:
    path, expected = junk[name]
    arguments = [part.format(out=tmp_path / "bundle") for part in command]
    result = CliRunner().invoke(cli, [arguments[0], str(path), *arguments[1:]])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.output, result.output


def test_the_installed_command_prints_no_traceback(junk: dict[str, tuple[Path, str]]) -> None:
    path, _ = junk["six-byte-text"]
    completed = subprocess.run([sys.executable, "-m", "edgereid", "eval", str(path)], capture_output=True, text=True,
                               timeout=120, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2 and "Traceback" not in output, output
    assert len(output.strip().splitlines()) == 1, output


def test_a_crafted_pickle_is_refused_without_running(junk: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Touch:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "edgereid-checkpoint", "version": 1, "recipe": Touch()}, crafted)
    with pytest.raises(DataError, match="not an edgereid checkpoint: it holds a pickled object"):
        load_checkpoint(crafted)
    assert not marker.exists()


def test_mutated_checkpoints_are_refused_or_load_unchanged(checkpoint: Path, tmp_path: Path) -> None:
    original = load_checkpoint(checkpoint).model_state
    for name, data in byte_mutants(checkpoint.read_bytes(), seed=1):
        mutant = tmp_path / "mutant.pt"
        mutant.write_bytes(data)
        try:
            loaded = load_checkpoint(mutant)
        except Exception as error:  # noqa: BLE001 - the assertion names whatever escaped
            assert_clean_refusal(error, mutant)
            continue
        assert loaded.model_state.keys() == original.keys(), name
        assert all(torch.equal(loaded.model_state[key], original[key]) for key in original), f"{name} accepted"


# -------------------------------------------------------------------------------------------------- text loaders
def check_text_loader(
    load: Callable[[Path], object], file: Path, mutants: list[tuple[str, bytes]], named: Path | None = None
) -> None:
    """Each mutant of ``file`` either loads or is refused with one line naming it (or ``named``)."""
    for name, data in mutants:
        file.write_bytes(data)
        try:
            load(file)
        except Exception as error:  # noqa: BLE001 - the assertion names whatever escaped
            try:
                assert_clean_refusal(error, file, named)
            except AssertionError as failure:
                raise AssertionError(f"{name}: {failure}") from None


def yaml_mutants(content: dict[str, Any], seed: int) -> list[tuple[str, bytes]]:
    text = yaml.safe_dump(content).encode()
    confused = [(name, yaml.safe_dump(mutant).encode()) for name, mutant in type_confusions(content, seed)]
    structural = [("a list", b"- 1\n- 2\n"), ("a string", b"just text\n"), ("bad yaml", b"a: [1, 2\n"),
                  ("not utf-8", b"name: \xff\xfe\n"), ("a tab", b"a:\n\t- 1\n"), ("base of wrong type", b"_base_: 3\n"),
                  ("base list of wrong type", b"_base_: [1, {a: 2}]\n")]
    return byte_mutants(text, seed) + confused + structural


def test_recipe_loader_names_the_file_for_any_damage(tmp_path: Path) -> None:
    content = yaml.safe_load((SHIPPED_RECIPES / "quickstart.yaml").read_text())
    content.pop("_base_", None)
    check_text_loader(load_recipe, tmp_path / "recipe.yaml", yaml_mutants(content, seed=2))


def test_calibration_policy_loader_names_the_file_for_any_damage(tmp_path: Path) -> None:
    content = yaml.safe_load((SHIPPED_POLICIES / "train-capped-v1.yaml").read_text())
    check_text_loader(load_calibration_policy, tmp_path / "policy.yaml", yaml_mutants(content, seed=3))


# ------------------------------------------------------------------------------------------- bundles and images
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_small_bundle(tmp_path_factory.mktemp("bundle")).path


def test_bundle_manifest_loader_names_the_file_for_any_damage(bundle: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "bundle"
    shutil.copytree(bundle, damaged)
    manifest_text = (bundle / MANIFEST_NAME).read_text()
    confused = [(name, json.dumps(mutant).encode())
                for name, mutant in type_confusions(json.loads(manifest_text), seed=4)]
    check_text_loader(lambda file: load_bundle(file.parent), damaged / MANIFEST_NAME,
                      byte_mutants(manifest_text.encode(), seed=4) + confused, named=damaged)


def test_image_decoder_names_the_file_for_any_damage(tmp_path: Path) -> None:
    for suffix in ("jpg", "png"):
        original = write_image(tmp_path / f"original.{suffix}", size=(24, 48))
        check_text_loader(lambda file: decode_image(file, (32, 16)), tmp_path / f"mutant.{suffix}",
                          byte_mutants(original.read_bytes(), seed=5))
