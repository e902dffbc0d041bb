"""TensorRT engines in bundles and the TensorRT runner.

The unmarked tests run everywhere (no TensorRT, no GPU): what the builder and the runner refuse and how they say
it, the engine compatibility rule, the manifest's engine checksums. The ``tensorrt`` tests build and run real
engines and skip with a reason where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgereid.cli import _ReportingGroup
from edgereid.cli.build import build_command
from edgereid.errors import ConfigError, DataError, EdgeReIDError
from edgereid.export import ExportBundle, load_bundle
from edgereid.export.bundle import MANIFEST_NAME, sha256_file
from edgereid.export.engine import (
    EngineCompatibilityError,
    build_engine,
    check_engine_compatible,
    engine_file_name,
    parse_batch,
)
from edgereid.runtime.cuda import CudaDevice, GpuInfo
from edgereid.runtime.runners import create_runner
from tests.factories import make_bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> ExportBundle:
    return make_bundle(tmp_path_factory.mktemp("trt-fp32"))


@pytest.fixture
def bundle_copy(fp32_bundle: ExportBundle, tmp_path: Path) -> Path:
    """A copy of the FP32 bundle that a test may change."""
    return Path(shutil.copytree(fp32_bundle.path, tmp_path / "bundle"))


def add_fake_engine(bundle: Path, precision: str = "fp32", payload: bytes = b"not really a plan") -> Path:
    """An engine file and its manifest entry, as ``build_engine`` writes them, without TensorRT."""
    file = bundle / engine_file_name(precision)
    file.write_bytes(payload)
    manifest_path = bundle / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest.setdefault("engines", {})[precision] = engine_entry(
        file=file.name, sha256=sha256_file(file), bytes=len(payload)
    )
    manifest_path.write_text(json.dumps(manifest))
    return file


def engine_entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "file": "engine.fp32.plan",
        "precision": "fp32",
        "tensorrt_version": "10.3.0.30",
        "gpu": "Orin",
        "compute_capability": "8.7",
        "options": {"version_compatible": False},
    }
    options = changes.pop("options", None)
    entry.update(changes)
    if options is not None:
        entry["options"] = {**entry["options"], **options}
    return entry


@pytest.fixture
def without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import tensorrt`` fails, as on a machine without it, even where it is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# --- without TensorRT -----------------------------------------------------------------------------------------------


def test_engine_builder_and_runner_import_without_tensorrt_or_torch() -> None:
    code = (
        "import sys; sys.modules['tensorrt'] = None; sys.modules['torch'] = None\n"
        "import edgereid.export.engine, edgereid.runtime.cuda, edgereid.cli.build\n"
        "from edgereid.runtime.runners import runner_class\n"
        "cls = runner_class('tensorrt')\n"
        "assert cls.backend == 'tensorrt' and cls.precisions == ('fp32', 'fp16', 'int8'), cls.precisions\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.usefixtures("without_tensorrt")
def test_runner_without_tensorrt_says_where_to_get_it(bundle_copy: Path) -> None:
    add_fake_engine(bundle_copy)
    with pytest.raises(EdgeReIDError) as error:
        create_runner(bundle_copy, backend="tensorrt", precision="fp32")
    message = str(error.value)
    assert "nvidia-jetpack" in message and "--extra-index-url https://pypi.nvidia.com" in message


@pytest.mark.usefixtures("without_tensorrt")
def test_build_command_without_tensorrt_is_one_line_saying_where_to_get_it(bundle_copy: Path) -> None:
    group = _ReportingGroup()
    group.add_command(build_command)
    result = CliRunner().invoke(group, ["build", str(bundle_copy), "--precision", "fp32"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "nvidia-jetpack" in lines[0] and "pypi.nvidia.com" in lines[0]
    assert not (bundle_copy / engine_file_name("fp32")).exists()
    assert "engines" not in json.loads((bundle_copy / MANIFEST_NAME).read_text())


def test_runner_refuses_a_bundle_without_an_engine_for_the_precision(fp32_bundle: ExportBundle) -> None:
    with pytest.raises(ConfigError) as error:
        create_runner(fp32_bundle, backend="tensorrt", precision="fp32")
    message = str(error.value)
    assert str(fp32_bundle.path) in message and "'fp32'" in message
    assert f"edgereid build {fp32_bundle.path} --precision fp32" in message


def test_runner_refuses_a_precision_the_bundle_has_no_model_for(fp32_bundle: ExportBundle) -> None:
    with pytest.raises(ConfigError, match="no 'fp16' model"):
        create_runner(fp32_bundle, backend="tensorrt", precision="fp16")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"precision": "fp16"}, "no 'fp16' model"),
        ({"precision": "int8_cpu"}, "ONNX Runtime CPU model"),
        ({"batch": (0, 1, 2)}, "0:1:2 is invalid"),
        ({"workspace_mb": 0}, "at least 1 MB"),
        ({"dla_core": 0}, "DLA runs FP16 and INT8 only"),
        ({"dla_core": -1}, "DLA core must be 0 or more"),
    ],
)
@pytest.mark.usefixtures("without_tensorrt")
def test_build_engine_refuses_bad_options_before_needing_tensorrt(
    fp32_bundle: ExportBundle, options: dict[str, Any], match: str
) -> None:
    arguments = {"precision": "fp32", **options}
    precision = arguments.pop("precision")
    with pytest.raises(ConfigError, match=match):
        build_engine(fp32_bundle, precision, **arguments)


@pytest.mark.usefixtures("without_tensorrt")
def test_dla_needs_a_fixed_batch(fp32_bundle: ExportBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    # An fp16 entry pointing at the fp32 file: the DLA checks look at the precision and the batch only.
    models = {**fp32_bundle.manifest["models"], "fp16": fp32_bundle.manifest["models"]["fp32"]}
    bundle = ExportBundle(fp32_bundle.path, {**fp32_bundle.manifest, "models": models})
    with pytest.raises(ConfigError, match="DLA has no dynamic shapes.*1:8:32"):
        build_engine(bundle, "fp16", dla_core=0, batch=(1, 8, 32))
    # A fixed batch passes the DLA checks and gets as far as needing TensorRT.
    with pytest.raises(EdgeReIDError, match="TensorRT's Python package is not importable"):
        build_engine(bundle, "fp16", dla_core=0, batch=(4, 4, 4))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1:8:32", (1, 8, 32)), ("4", (4, 4, 4)), ("2:2:2", (2, 2, 2))],
)
def test_parse_batch(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_batch(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1:8", "'1:8' is not MIN:OPT:MAX"),
        ("1:8:32:64", "is not MIN:OPT:MAX"),
        ("a:b:c", "'a:b:c' has a part that is not a whole number"),
        ("", "'' has a part that is not a whole number"),
        ("0:1:2", "0:1:2 is invalid"),
        ("8:4:32", "8:4:32 is invalid"),
        ("1:8:4", "1:8:4 is invalid"),
        ("-1", "-1:-1:-1 is invalid"),
    ],
)
def test_parse_batch_names_a_bad_value(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_batch(text)


def test_build_command_names_a_bad_batch(fp32_bundle: ExportBundle) -> None:
    result = CliRunner().invoke(build_command, [str(fp32_bundle.path), "--batch", "8:1:32"])
    assert result.exit_code == 2
    assert "--batch" in result.output and "8:1:32 is invalid" in result.output


ORIN = ("10.3.0.30", "Orin", "8.7")


@pytest.mark.parametrize(
    ("entry", "here"),
    [
        (engine_entry(), ORIN),
        # Version-compatible: the same or a later TensorRT of the major version, and 8 → 10, 10 → 11.
        (engine_entry(options={"version_compatible": True}), ("10.3.0.30", "Orin", "8.7")),
        (engine_entry(options={"version_compatible": True}), ("10.7.0.23", "Orin", "8.7")),
        (engine_entry(options={"version_compatible": True}), ("11.1.0.2", "Orin", "8.7")),
        (engine_entry(tensorrt_version="8.6.2.3", options={"version_compatible": True}), ("10.3.0.30", "Orin", "8.7")),
    ],
)
def test_compatible_engines_pass_silently(entry: dict[str, Any], here: tuple[str, str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_engine_compatible(entry, *here)


@pytest.mark.parametrize(
    ("entry", "here", "match"),
    [
        (engine_entry(), ("10.3.0.30", "NVIDIA GeForce RTX 3090", "8.6"), "GPU architecture"),
        (engine_entry(options={"version_compatible": True}), ("10.3.0.30", "NVIDIA L4", "8.9"), "GPU architecture"),
        (engine_entry(), ("10.7.0.23", "Orin", "8.7"), "only with the TensorRT version that built it"),
        (engine_entry(), ("10.3.0.26", "Orin", "8.7"), "only with the TensorRT version that built it"),
        (engine_entry(tensorrt_version="10.7.0.23", options={"version_compatible": True}), ORIN, "never on an earlier"),
        (engine_entry(tensorrt_version="11.0.0.1", options={"version_compatible": True}), ORIN, "never on an earlier"),
        (
            engine_entry(tensorrt_version="8.6.2.3", options={"version_compatible": True}),
            ("11.1.0.2", "Orin", "8.7"),
            "never on an earlier",
        ),
        (
            engine_entry(tensorrt_version="8.5.2.2", options={"version_compatible": True}),
            ("8.6.2.3", "Orin", "8.7"),
            "never on an earlier",
        ),
    ],
)
def test_incompatible_engines_are_refused_naming_both_sides(
    entry: dict[str, Any], here: tuple[str, str, str], match: str
) -> None:
    with pytest.raises(EngineCompatibilityError, match=match) as error:
        check_engine_compatible(entry, *here)
    message = str(error.value)
    assert f"TensorRT {entry['tensorrt_version']} on {entry['gpu']} (sm_87)" in message
    assert f"TensorRT {here[0]} on {here[1]} (sm_{here[2].replace('.', '')})" in message
    assert "edgereid build BUNDLE --precision fp32" in message


def test_another_gpu_model_of_the_same_architecture_is_a_warning() -> None:
    entry = engine_entry(gpu="NVIDIA GeForce RTX 3090", compute_capability="8.6", tensorrt_version="10.13.0.35")
    with pytest.warns(UserWarning, match="built on NVIDIA GeForce RTX 3090 and runs here on NVIDIA RTX A6000"):
        check_engine_compatible(entry, "10.13.0.35", "NVIDIA RTX A6000", "8.6")


def test_load_bundle_checks_engine_checksums(bundle_copy: Path) -> None:
    engine = add_fake_engine(bundle_copy)
    bundle = load_bundle(bundle_copy)
    assert bundle.engine_path("fp32") == engine and set(bundle.engines) == {"fp32"}
    with pytest.raises(ConfigError, match="no TensorRT engine for 'fp16' \\(engines built: fp32\\)"):
        bundle.engine_path("fp16")
    engine.write_bytes(b"not really a plan, tampered")
    with pytest.raises(DataError, match="engine engine.fp32.plan does not match the sha256") as error:
        load_bundle(bundle_copy)
    assert f"edgereid build {bundle_copy} --precision fp32" in str(error.value)
    engine.unlink()
    with pytest.raises(DataError, match="lists engine engine.fp32.plan \\(fp32\\) but the file is missing"):
        load_bundle(bundle_copy)


def test_a_bundle_without_engines_has_none(fp32_bundle: ExportBundle) -> None:
    assert fp32_bundle.engines == {}
    with pytest.raises(ConfigError, match="engines built: none"):
        fp32_bundle.engine_path("fp32")


def _cuda_device_count() -> int | None:
    """GPUs the CUDA runtime sees through cuda-python; None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    error, count = cudart.cudaGetDeviceCount()
    return int(count) if error == cudart.cudaError_t.cudaSuccess else 0


@pytest.mark.skipif(_cuda_device_count() != 0, reason="needs cuda-python on a machine without a usable GPU")
def test_opening_a_device_without_a_gpu_names_the_cuda_error() -> None:
    from edgereid.runtime.cuda import open_device

    with pytest.raises(EdgeReIDError, match="CUDA cudaGetDeviceCount failed on device 0: .*cudaError"):
        open_device(0)


# --- the build and run plumbing, on a stand-in TensorRT and GPU ----------------------------------------------------
# A stand-in for the part of TensorRT's Python API that edgereid uses, whose "engine" runs its ONNX model with ONNX
# Runtime, and a GPU whose memory is host memory: enough to run build_engine and the runner's buffers, padding,
# timing and manifest bookkeeping here. Whether the real API behaves like this is the tensorrt-marked tests' job.


class _FakeDevice(CudaDevice):
    binding = "fake"

    def __init__(self, index: int, memory: dict[int, np.ndarray]) -> None:
        self.info = GpuInfo(index, "Fake GPU", "8.7")
        self.stream = 7
        self.memory = memory
        self.closed = False
        self._clock = 0.0

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        yield

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        return np.full(shape, np.nan, dtype=dtype)  # NaN: a row the runner forgets to fill shows in its output

    def device_alloc(self, nbytes: int) -> int:
        address = 4096 * (len(self.memory) + 1)
        self.memory[address] = np.full(nbytes, 0xFF, dtype=np.uint8)
        return address

    def copy_to_device(self, address: int, host: np.ndarray) -> None:
        assert host.flags.c_contiguous
        self.memory[address][: host.nbytes] = host.view(np.uint8).reshape(-1)

    def copy_to_host(self, host: np.ndarray, address: int) -> None:
        host.view(np.uint8).reshape(-1)[:] = self.memory[address][: host.nbytes]

    def event(self) -> Any:
        return [0.0]

    def record(self, event: Any) -> None:
        self._clock += 0.001
        event[0] = self._clock

    def elapsed_s(self, start: Any, end: Any) -> float:
        return float(end[0] - start[0])

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _fake_tensorrt(memory: dict[int, np.ndarray]) -> types.ModuleType:
    import enum

    import onnx
    import onnxruntime

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0.30"  # type: ignore[attr-defined]

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3

        def __init__(self) -> None:
            pass

    class Dims(list):  # type: ignore[type-arg]
        pass

    class Tensor:
        def __init__(self, name: str, shape: list[int]) -> None:
            self.name, self.shape = name, Dims(shape)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.model = flags, [], b""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]  # type: ignore[no-any-return]

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path: str) -> bool:
            model = onnx.load(path)
            for value in model.graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(value.name, dims))
            self.network.model = Path(path).read_bytes()
            return True

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+"

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.profiles: list[dict[str, Any]] = []
            self.cache: Cache | None = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.workspace = size

        def add_optimization_profile(self, profile: dict[str, Any]) -> None:
            self.profiles.append(profile)

        def create_timing_cache(self, data: bytes) -> Cache:
            return Cache(bytes(data))

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return not cache.data.startswith(b"other gpu")

        def get_timing_cache(self) -> Cache:
            assert self.cache is not None
            return self.cache

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

    class Builder:
        num_DLA_cores = 0

        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> dict[str, Any]:
            profile: dict[str, Any] = {}
            profile_type = type("Profile", (dict,), {"set_shape": lambda self, name, *shapes: self.update({name: shapes})})
            return profile_type(profile)  # type: ignore[no-any-return]

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            assert network.flags == 1 << 1, "a strongly typed network"
            (profile,) = config.profiles
            (name, shapes), = profile.items()
            header = {"input": name, "profile": [list(shape) for shape in shapes], "flags": sorted(config.flags)}
            return b"PLAN" + json.dumps(header).encode() + b"\n" + network.model

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.addresses, self.shape = engine, {}, None

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            low, _, high = self.engine.header["profile"]
            if not low[0] <= shape[0] <= high[0]:
                return False
            self.shape = shape
            return True

        def execute_async_v3(self, stream: int) -> bool:
            assert stream == 7 and self.shape is not None
            count = int(np.prod(self.shape))
            images = memory[self.addresses["images"]][: count * 4].view(np.float32).reshape(self.shape)
            output = self.engine.session.run(None, {"images": images})[0].astype(np.float32)
            memory[self.addresses["embeddings"]][: output.nbytes] = output.view(np.uint8).reshape(-1)
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, header: dict[str, Any], model: bytes) -> None:
            self.header = header
            self.session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])

        def get_tensor_name(self, index: int) -> str:
            return ["images", "embeddings"][index]

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if name == "images" else "OUTPUT"

        def get_tensor_dtype(self, name: str) -> str:
            return "FLOAT"

        def get_tensor_profile_shape(self, name: str, index: int) -> list[Dims]:
            return [Dims(shape) for shape in self.header["profile"]]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger, self.engine_host_code_allowed = logger, False

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            if not data.startswith(b"PLAN"):
                self.logger.log(ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: magic tag does not match")
                return None
            header, model = data[4:].split(b"\n", 1)
            return Engine(json.loads(header), model)

    names = {
        "ILogger": ILogger, "Dims": Dims, "OnnxParser": OnnxParser, "Builder": Builder, "Runtime": Runtime,
        "nptype": lambda dtype: np.float32,
        "NetworkDefinitionCreationFlag": types.SimpleNamespace(STRONGLY_TYPED=1),
        "MemoryPoolType": types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        "BuilderFlag": types.SimpleNamespace(GPU_FALLBACK="GPU_FALLBACK", VERSION_COMPATIBLE="VERSION_COMPATIBLE"),
        "DeviceType": types.SimpleNamespace(DLA="DLA"),
        "TensorIOMode": types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
    }
    for name, value in names.items():
        setattr(trt, name, value)
    return trt


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[_FakeDevice]:
    """The stand-in TensorRT and GPU in place of the real ones; the devices opened, to check they were closed."""
    import edgereid.export.engine as engine_module
    import edgereid.runtime.cuda as cuda_module

    memory: dict[int, np.ndarray] = {}
    opened: list[_FakeDevice] = []

    def open_device(index: int = 0) -> _FakeDevice:
        opened.append(_FakeDevice(index, memory))
        return opened[-1]

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(memory))
    monkeypatch.setattr(cuda_module, "open_device", open_device)
    monkeypatch.setattr(engine_module, "_LOGGER", None)  # the process's logger must not outlive the stand-in
    return opened


def test_build_engine_records_the_engine_and_round_trips_the_timing_cache(
    bundle_copy: Path, fake_gpu: list[_FakeDevice]
) -> None:
    cache = bundle_copy.parent / "timing.cache"
    path = build_engine(bundle_copy, "fp32", batch=(1, 4, 8), workspace_mb=64, timing_cache=cache)
    assert cache.read_bytes() == b"+"  # a new cache, written back
    bundle = load_bundle(bundle_copy)  # checks the recorded sha256 against the file
    entry = bundle.engines["fp32"]
    assert bundle.engine_path("fp32") == path == bundle_copy / "engine.fp32.plan"
    assert (entry["tensorrt_version"], entry["gpu"], entry["compute_capability"]) == ("10.3.0.30", "Fake GPU", "8.7")
    assert entry["source_model"] == {"file": "model.fp32.onnx", "sha256": bundle.manifest["models"]["fp32"]["sha256"]}
    options = entry["options"]
    assert options["batch"] == {"min": 1, "opt": 4, "max": 8} and options["workspace_mb"] == 64
    assert options["timing_cache"] == str(cache) and options["version_compatible"] is False
    header = json.loads(path.read_bytes()[4:].split(b"\n", 1)[0])
    assert header["profile"] == [[1, 3, 64, 32], [4, 3, 64, 32], [8, 3, 64, 32]] and header["flags"] == []
    assert all(device.closed for device in fake_gpu)

    # A rebuild reads the cache it wrote; another precision's entry survives it.
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    manifest["engines"]["fp16"] = {**entry, "precision": "fp16"}
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    build_engine(bundle_copy, "fp32", batch=(2, 2, 2), timing_cache=cache, version_compatible=True)
    assert cache.read_bytes() == b"++"
    engines = json.loads((bundle_copy / MANIFEST_NAME).read_text())["engines"]
    assert set(engines) == {"fp32", "fp16"} and engines["fp32"]["options"]["version_compatible"] is True
    assert json.loads(path.read_bytes()[4:].split(b"\n", 1)[0])["flags"] == ["VERSION_COMPATIBLE"]


def test_build_command_builds_each_engine_precision_the_bundle_has(
    bundle_copy: Path, fake_gpu: list[_FakeDevice], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgereid.cli._output import console

    monkeypatch.setattr(console, "width", 200)  # one line per row, whatever terminal runs the tests
    result = CliRunner().invoke(build_command, [str(bundle_copy), "--batch", "2:4:8", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["engines"] == load_bundle(bundle_copy).engines  # fp32: the only model of fp32/fp16/int8 it has
    assert printed["engines"]["fp32"]["options"]["batch"] == {"min": 2, "opt": 4, "max": 8}
    table = CliRunner().invoke(build_command, [str(bundle_copy)])
    assert table.exit_code == 0, table.output
    assert "engine.fp32.plan" in table.output and "Fake GPU (sm_87)" in table.output and "1:8:32" in table.output


def test_build_engine_refuses_a_timing_cache_from_another_gpu(bundle_copy: Path, fake_gpu: list[_FakeDevice]) -> None:
    cache = bundle_copy.parent / "timing.cache"
    cache.write_bytes(b"other gpu's timings")
    with pytest.raises(ConfigError, match="timing cache .*timing.cache' cannot be used"):
        build_engine(bundle_copy, "fp32", timing_cache=cache)
    assert cache.read_bytes() == b"other gpu's timings"
    assert "engines" not in json.loads((bundle_copy / MANIFEST_NAME).read_text())
    assert all(device.closed for device in fake_gpu)


def test_build_engine_refuses_a_dla_core_the_gpu_does_not_have(bundle_copy: Path, fake_gpu: list[_FakeDevice]) -> None:
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    manifest["models"]["fp16"] = manifest["models"]["fp32"]
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="DLA core 0 does not exist: TensorRT 10.3.0.30 on Fake GPU has 0 DLA"):
        build_engine(bundle_copy, "fp16", dla_core=0, batch=(4, 4, 4))


def test_runner_matches_onnxruntime_through_its_buffers(bundle_copy: Path, fake_gpu: list[_FakeDevice]) -> None:
    build_engine(bundle_copy, "fp32", batch=(1, 4, 8))
    images = _normalised_batch(5, (64, 32))
    with create_runner(bundle_copy, "onnxruntime") as reference:
        expected = reference.infer(images)
    with create_runner(bundle_copy, "tensorrt") as runner:
        assert runner.max_batch == 8 and runner.backend_detail == "TensorRT 10.3.0.30 on Fake GPU (sm_87), fake"
        np.testing.assert_allclose(runner.infer(images), expected, rtol=1e-5, atol=1e-5)
        timing = runner.last_timing
        # A smaller batch after a larger one: only its own rows come back.
        np.testing.assert_allclose(runner.infer(images[3:]), expected[3:], rtol=1e-5, atol=1e-5)
        with pytest.raises(ConfigError, match="at most 8 images"):
            runner.infer(_normalised_batch(9, (64, 32)))
    assert timing is not None and timing.compute_s == pytest.approx(0.001)
    assert timing.host_to_device_s == pytest.approx(0.001) and timing.device_to_host_s == pytest.approx(0.001)
    with pytest.raises(EdgeReIDError, match="is closed"):
        runner.infer(images)
    assert fake_gpu[-1].closed


def test_runner_pads_a_batch_below_a_fixed_profile(bundle_copy: Path, fake_gpu: list[_FakeDevice]) -> None:
    build_engine(bundle_copy, "fp32", batch=(4, 4, 4))
    images = _normalised_batch(3, (64, 32), seed=1)
    with create_runner(bundle_copy, "onnxruntime") as reference, create_runner(bundle_copy, "tensorrt") as runner:
        actual = runner.infer(images)
        np.testing.assert_allclose(actual, reference.infer(images), rtol=1e-5, atol=1e-5)
    assert actual.shape == (3, 512)


def test_runner_refuses_an_engine_for_another_architecture_before_loading_it(
    bundle_copy: Path, fake_gpu: list[_FakeDevice]
) -> None:
    build_engine(bundle_copy, "fp32")
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    manifest["engines"]["fp32"]["compute_capability"] = "7.2"
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(EngineCompatibilityError, match=r"built with TensorRT 10.3.0.30 on Fake GPU \(sm_72\)"):
        create_runner(bundle_copy, "tensorrt")
    assert fake_gpu[-1].closed


def test_runner_reports_what_tensorrt_logged_when_an_engine_does_not_load(
    bundle_copy: Path, fake_gpu: list[_FakeDevice]
) -> None:
    add_fake_engine(bundle_copy, payload=b"garbage")
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    manifest["engines"]["fp32"]["gpu"] = "Fake GPU"
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="cannot load .*engine.fp32.plan': ERROR: .*magic tag does not match"):
        create_runner(bundle_copy, "tensorrt")
    assert fake_gpu[-1].closed


# --- with TensorRT and a GPU ----------------------------------------------------------------------------------------


def _tensorrt_skip_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError as error:
        return f"TensorRT is not installed ({error})"
    from edgereid.runtime.cuda import open_device

    try:
        open_device(0).close()
    except EdgeReIDError as error:
        return f"no usable CUDA GPU ({error})"
    return None


@pytest.fixture(scope="module")
def engine_bundle(tmp_path_factory: pytest.TempPathFactory) -> ExportBundle:
    reason = _tensorrt_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("trt-engines")
    bundle = make_bundle(base, precisions=("fp32", "fp16", "int8"))
    for precision in ("fp32", "fp16", "int8"):
        build_engine(bundle, precision, batch=(1, 4, 8), workspace_mb=256, timing_cache=base / "timing.cache")
    return load_bundle(bundle.path)


def _normalised_batch(count: int, input_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, *input_size)).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray((a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)))


@pytest.mark.tensorrt
def test_built_engines_are_recorded_in_the_manifest(engine_bundle: ExportBundle) -> None:
    import tensorrt

    timing_cache = engine_bundle.path.parent / "timing.cache"
    assert timing_cache.is_file() and timing_cache.stat().st_size > 0
    for precision in ("fp32", "fp16", "int8"):
        entry = engine_bundle.engines[precision]
        path = engine_bundle.engine_path(precision)
        assert path.name == f"engine.{precision}.plan" and entry["sha256"] == sha256_file(path)
        assert entry["tensorrt_version"] == tensorrt.__version__
        assert entry["source_model"]["sha256"] == engine_bundle.manifest["models"][precision]["sha256"]
        assert entry["options"]["batch"] == {"min": 1, "opt": 4, "max": 8}
        assert entry["options"]["timing_cache"] == str(timing_cache) and entry["options"]["strongly_typed"]
        assert entry["gpu"] and entry["compute_capability"].count(".") == 1


@pytest.mark.tensorrt
@pytest.mark.parametrize(("precision", "cosine_min"), [("fp32", 0.9999), ("fp16", 0.999), ("int8", 0.99)])
def test_engine_embeddings_match_onnxruntime(engine_bundle: ExportBundle, precision: str, cosine_min: float) -> None:
    # 5 is inside the profile but not its OPT, so the dynamic shape is exercised; the reference runs the same ONNX.
    images = _normalised_batch(5, engine_bundle.input_size)
    with create_runner(engine_bundle, "onnxruntime", precision) as reference:
        expected = reference.infer(images)
    with create_runner(engine_bundle, "tensorrt", precision) as runner:
        assert runner.max_batch == 8
        actual = runner.infer(images)
        timing = runner.last_timing
        with pytest.raises(ConfigError, match="at most 8 images"):
            runner.infer(_normalised_batch(9, engine_bundle.input_size))
        # The pinned buffers are reused: a smaller batch after a larger one returns only its own rows.
        single = runner.infer(images[:1])
    assert actual.shape == expected.shape and actual.dtype == np.float32
    assert _cosine(actual, expected).min() >= cosine_min
    np.testing.assert_allclose(single[0], actual[0], rtol=1e-3, atol=1e-3)
    assert timing is not None and timing.compute_s is not None and timing.compute_s > 0
    assert timing.host_to_device_s is not None and timing.device_to_host_s is not None
    assert timing.total_s >= timing.compute_s


@pytest.mark.tensorrt
def test_engine_map_matches_the_fp32_reference(engine_bundle: ExportBundle) -> None:
    from edgereid.runtime.verify import verify_runtime

    data_root = engine_bundle.path.parent / "synthetic"
    result = verify_runtime(engine_bundle, backend="tensorrt", data_root=data_root)
    assert result["backend"] == "tensorrt" and "TensorRT" in result["backend_detail"]
    assert set(result["results"]) == {"fp32", "fp16", "int8"}
    for precision in ("fp32", "fp16"):
        assert result["results"][precision]["passed"], result["results"][precision]
    # An untrained network on 16 identities makes INT8's own loss noisy: the engine must match ONNX Runtime's run of
    # the same Q/DQ model instead.
    onnxruntime_int8 = verify_runtime(engine_bundle, backend="onnxruntime", precisions=["int8"], data_root=data_root)
    assert abs(result["results"]["int8"]["mAP"] - onnxruntime_int8["results"]["int8"]["mAP"]) <= 0.01


@pytest.mark.tensorrt
def test_engine_for_another_gpu_is_refused_before_loading(engine_bundle: ExportBundle, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(engine_bundle.path, tmp_path / "bundle"))
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["engines"]["fp32"]["compute_capability"] = "5.3"
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(EngineCompatibilityError, match="sm_53"):
        create_runner(copy, "tensorrt", "fp32")


@pytest.mark.tensorrt
def test_version_compatible_engine_builds_and_runs(engine_bundle: ExportBundle, tmp_path: Path) -> None:
    copy = load_bundle(shutil.copytree(engine_bundle.path, tmp_path / "bundle"))
    build_engine(copy, "fp32", batch=(2, 2, 2), workspace_mb=256, version_compatible=True)
    bundle = load_bundle(copy.path)
    assert bundle.engines["fp32"]["options"]["version_compatible"]
    assert bundle.engines["fp16"] == engine_bundle.engines["fp16"]  # the other engines' entries are kept
    images = _normalised_batch(1, bundle.input_size)
    with create_runner(bundle, "onnxruntime", "fp32") as reference, create_runner(bundle, "tensorrt") as runner:
        # One image on a fixed batch of 2: padded, and the padding's row dropped.
        assert _cosine(runner.infer(images), reference.infer(images)).min() >= 0.9999
