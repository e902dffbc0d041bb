"""TensorRT engines in bundles and the TensorRT runner.

The unmarked tests run everywhere (no TensorRT, no GPU): what the builder and the runner refuse and how they say
it, the engine compatibility rule, the manifest's engine checksums. The ``tensorrt`` tests build and run real
engines and skip with a reason where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import shutil
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgereid.bundle_format import manifest_text
from edgereid.cli import _ReportingGroup
from edgereid.cli.build import build_command
from edgereid.errors import ConfigError, DataError, EdgeReIDError, ExportError
from edgereid.export import ExportBundle, load_bundle
from edgereid.export.bundle import MANIFEST_NAME, sha256_file
from edgereid.export.dla import (
    calibration_cache,
    describe_placement,
    dla_build_mode,
    dla_placement,
    read_calibration_cache,
    strip_qdq,
    tensorrt_version_code,
)
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

if TYPE_CHECKING:
    import onnx

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
    manifest_path.write_text(manifest_text(manifest))
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
    """GPUs the CUDA runtime sees through cuda-python (either module layout); None without cuda-python."""
    from edgereid.runtime.cuda import _import_cudart, cuda_binding

    if cuda_binding() != "cuda-python":
        return None
    try:
        cudart = _import_cudart()
    except EdgeReIDError:
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
    """The stand-in: a builder that checks what TensorRT 10.x would refuse (a strongly typed network for the DLA
    before 11.4.1; an INT8 calibrator whose cache is not its own version's, which makes it ask for data) and writes
    a "plan" (a JSON header, then the parsed ONNX model), and an inspector that reports the layers of an engine built
    for the DLA the way TensorRT does: one ``{ForeignNode[first...last]}`` layer per DLA subgraph, with the layers
    the DLA cannot run (pooling windows above 8×8 here: the global ReduceMean; BatchNormalization) on the GPU."""
    import enum

    import onnx
    import onnxruntime

    from edgereid.export.dla import read_calibration_cache, tensorrt_version_code

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0.30"  # type: ignore[attr-defined]
    dla_ops = {"Conv", "Relu", "MaxPool", "Add", "Identity", "QuantizeLinear", "DequantizeLinear"}

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

    class Layer:
        def __init__(self, name: str, op: str) -> None:
            self.name, self.op = name, op
            self.type = "CONSTANT" if op == "Constant" else op

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.model = flags, [], b""
            self.layers: list[Layer] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]  # type: ignore[no-any-return]

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, index: int) -> Layer:
            return self.layers[index]

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path: str) -> bool:
            model = onnx.load(path)
            for value in model.graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(value.name, dims))
            self.network.layers = [Layer(node.name or node.output[0], node.op_type) for node in model.graph.node]
            self.network.model = Path(path).read_bytes()
            return True

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+"

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = {"TF32"}  # TensorRT's default
            self.profiles: list[dict[str, Any]] = []
            self.cache: Cache | None = None
            self.default_device_type, self.DLA_core = "GPU", -1
            self.int8_calibrator: Any = None
            self.calibration_profile: Any = None
            self.profiling_verbosity = "LAYER_NAMES_ONLY"

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.workspace = size

        def add_optimization_profile(self, profile: dict[str, Any]) -> None:
            self.profiles.append(profile)

        def set_calibration_profile(self, profile: dict[str, Any]) -> bool:
            self.calibration_profile = profile
            return True

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

        def clear_flag(self, flag: str) -> None:
            self.flags.discard(flag)

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

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            strongly_typed = network.flags == 1 << 1
            version = tuple(int(part) for part in trt.__version__.split("."))
            on_dla = config.default_device_type == "DLA"
            if on_dla and strongly_typed and version[:3] < (11, 4, 1):
                self.logger.log(ILogger.Severity.ERROR, "DLA builds need FP16 or INT8 precision flags")
                return None
            if strongly_typed and config.flags & {"FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"}:
                self.logger.log(ILogger.Severity.ERROR, "precision flags are not allowed in strongly typed networks")
                return None
            calibration: dict[str, float] | None = None
            if config.int8_calibrator is not None:
                assert "INT8" in config.flags and config.calibration_profile is not None
                calibrator = config.int8_calibrator
                assert calibrator.get_batch_size() == config.calibration_profile["images"][1][0]
                header_line, calibration = read_calibration_cache(bytes(calibrator.read_calibration_cache()))
                own = f"TRT-{tensorrt_version_code(trt.__version__)}-EntropyCalibration2"
                # Not its own cache: TensorRT calibrates afresh and asks for data, of which there is none.
                if header_line != own and not calibrator.get_batch(["images"]):
                    self.logger.log(ILogger.Severity.ERROR, "Calibration failure: no calibration data")
                    return None
            (profile,) = config.profiles
            (name, shapes), = profile.items()
            header = {
                "input": name,
                "profile": [list(shape) for shape in shapes],
                "flags": sorted(config.flags),
                "strongly_typed": strongly_typed,
                "dla_core": config.DLA_core if on_dla else None,
                "profiling_verbosity": config.profiling_verbosity,
                "calibration": calibration,
                "layers": [[layer.name, layer.op] for layer in network.layers if layer.type != "CONSTANT"],
            }
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

    class Inspector:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine

        def get_engine_information(self, format: str) -> str:
            assert format == "JSON"
            header = self.engine.header
            layers = [name for name, _ in header["layers"]]
            if header["dla_core"] is None:
                return json.dumps({"Layers": layers, "Bindings": ["images", "embeddings"]})
            # The leading run of layers the DLA can run is one DLA subgraph; the rest runs on the GPU, fused in pairs.
            split = next((i for i, (_, op) in enumerate(header["layers"]) if op not in dla_ops), len(layers))
            dla, gpu = layers[:split], layers[split:]
            described: list[dict[str, str]] = [{"Name": "images to nvm", "LayerType": "Reformat"}]
            if dla:
                described.append({"Name": f"{{ForeignNode[{dla[0]}...{dla[-1]}]}}", "LayerType": "DLA"})
            described.append({"Name": f"{dla[-1] if dla else 'images'} from nvm", "LayerType": "Reformat"})
            described += [{"Name": " + ".join(gpu[i : i + 2]), "LayerType": "Scale"} for i in range(0, len(gpu), 2)]
            return json.dumps({"Layers": described, "Bindings": ["images", "embeddings"]})

    class Engine:
        num_io_tensors = 2

        def __init__(self, header: dict[str, Any], model: bytes, dla_core: int) -> None:
            self.header, self.loaded_on_dla_core = header, dla_core
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

        def create_engine_inspector(self) -> Inspector:
            return Inspector(self)

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger, self.engine_host_code_allowed = logger, False
            self.DLA_core = -1
            self.num_DLA_cores = Builder.num_DLA_cores

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            if not data.startswith(b"PLAN"):
                self.logger.log(ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: magic tag does not match")
                return None
            header, model = data[4:].split(b"\n", 1)
            return Engine(json.loads(header), model, self.DLA_core)

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    flags = ("GPU_FALLBACK", "VERSION_COMPATIBLE", "TF32", "FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS")
    names = {
        "ILogger": ILogger, "Dims": Dims, "OnnxParser": OnnxParser, "Builder": Builder, "Runtime": Runtime,
        "IInt8EntropyCalibrator2": IInt8EntropyCalibrator2,
        "nptype": lambda dtype: np.float32,
        "NetworkDefinitionCreationFlag": types.SimpleNamespace(STRONGLY_TYPED=1),
        "MemoryPoolType": types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        "BuilderFlag": types.SimpleNamespace(**{flag: flag for flag in flags}),
        "DeviceType": types.SimpleNamespace(DLA="DLA", GPU="GPU"),
        "LayerType": types.SimpleNamespace(CONSTANT="CONSTANT"),
        "ProfilingVerbosity": types.SimpleNamespace(DETAILED="DETAILED", LAYER_NAMES_ONLY="LAYER_NAMES_ONLY"),
        "LayerInformationFormat": types.SimpleNamespace(JSON="JSON", ONELINE="ONELINE"),
        "TensorIOMode": types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
    }
    for name, value in names.items():
        setattr(trt, name, value)
    return trt


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[_FakeDevice]:
    """The stand-in TensorRT and GPU in place of the real ones; the devices opened, to check they were closed."""
    for module in ("onnx", "onnxruntime"):  # the stand-in's engines run their ONNX model in ONNX Runtime
        pytest.importorskip(module)
    import edgereid.runtime.cuda as cuda_module
    import edgereid.runtime.trt as trt_module

    memory: dict[int, np.ndarray] = {}
    opened: list[_FakeDevice] = []

    def open_device(index: int = 0) -> _FakeDevice:
        opened.append(_FakeDevice(index, memory))
        return opened[-1]

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(memory))
    monkeypatch.setattr(cuda_module, "open_device", open_device)
    monkeypatch.setattr(trt_module, "_LOGGER", None)  # the process's logger must not outlive the stand-in
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
    (bundle_copy / MANIFEST_NAME).write_text(manifest_text(manifest))
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
    (bundle_copy / MANIFEST_NAME).write_text(manifest_text(manifest))
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
    (bundle_copy / MANIFEST_NAME).write_text(manifest_text(manifest))
    with pytest.raises(EngineCompatibilityError, match=r"built with TensorRT 10.3.0.30 on Fake GPU \(sm_72\)"):
        create_runner(bundle_copy, "tensorrt")
    assert fake_gpu[-1].closed


def test_runner_reports_what_tensorrt_logged_when_an_engine_does_not_load(
    bundle_copy: Path, fake_gpu: list[_FakeDevice]
) -> None:
    add_fake_engine(bundle_copy, payload=b"garbage")
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    manifest["engines"]["fp32"]["gpu"] = "Fake GPU"
    (bundle_copy / MANIFEST_NAME).write_text(manifest_text(manifest))
    with pytest.raises(DataError, match="cannot load .*engine.fp32.plan': ERROR: .*magic tag does not match"):
        create_runner(bundle_copy, "tensorrt")
    assert fake_gpu[-1].closed


# --- DLA: a weakly typed build for TensorRT 10.x, its calibration cache, where its layers run ----------------------


def _qdq_model(fp32: onnx.ModelProto, activation_scale: float = 0.05) -> onnx.ModelProto:
    """``fp32`` quantized the way the QAT export writes a TensorRT INT8 model: each convolution's input through a
    QuantizeLinear → DequantizeLinear pair (per tensor, symmetric), its weights stored as INT8 constants with a
    per-output-channel DequantizeLinear. (``_tiny_qdq`` has the other form: float weights behind a Q/DQ pair.)"""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    graph = model.graph
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    extra: list[onnx.TensorProto] = []
    quantized: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            source = node.input[0]
            if source not in quantized:
                scale, zero = f"{source}/scale", f"{source}/zero_point"
                extra += [numpy_helper.from_array(np.array(activation_scale, np.float32), scale),
                          numpy_helper.from_array(np.array(0, np.int8), zero)]
                nodes += [helper.make_node("QuantizeLinear", [source, scale, zero], [f"{source}/q"], name=f"{source}/Q"),
                          helper.make_node("DequantizeLinear", [f"{source}/q", scale, zero], [f"{source}/dq"],
                                           name=f"{source}/DQ")]
                quantized[source] = f"{source}/dq"
            weight = weights[node.input[1]]
            step = (np.abs(weight).reshape(len(weight), -1).max(axis=1) / 127).astype(np.float32)
            values = np.clip(np.rint(weight / step.reshape(-1, 1, 1, 1)), -128, 127).astype(np.int8)
            name = node.input[1]
            extra += [numpy_helper.from_array(values, f"{name}/int8"), numpy_helper.from_array(step, f"{name}/scale"),
                      numpy_helper.from_array(np.zeros(len(step), np.int8), f"{name}/zero_point")]
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}/int8", f"{name}/scale", f"{name}/zero_point"],
                                          [f"{name}/dq"], name=f"{name}/DQ", axis=0))
            node.input[0], node.input[1] = quantized[source], f"{name}/dq"
        nodes.append(node)
    used = {name for node in nodes for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept + extra)
    return model


def _add_model(bundle: Path, precision: str, file: str) -> None:
    """A ``precision`` entry in ``bundle``'s manifest for its file ``file``."""
    manifest_path = bundle / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["models"][precision] = {
        **manifest["models"]["fp32"], "file": file, "sha256": sha256_file(bundle / file),
    }
    manifest_path.write_text(manifest_text(manifest))


@pytest.fixture
def dla_bundle(bundle_copy: Path) -> Path:
    """The FP32 bundle with an fp16 entry (the FP32 file: a DLA fp16 build parses the FP32 model anyway) and an int8
    model quantized as modelopt does."""
    onnx = pytest.importorskip("onnx")
    _add_model(bundle_copy, "fp16", "model.fp32.onnx")
    onnx.save(_qdq_model(onnx.load(str(bundle_copy / "model.fp32.onnx"))), str(bundle_copy / "model.int8.onnx"))
    _add_model(bundle_copy, "int8", "model.int8.onnx")
    return bundle_copy


def _plan_header(path: Path) -> dict[str, Any]:
    return json.loads(path.read_bytes()[4:].split(b"\n", 1)[0])  # type: ignore[no-any-return]


def _plan_model(path: Path) -> onnx.ModelProto:
    onnx = pytest.importorskip("onnx")
    return onnx.load_from_string(path.read_bytes()[4:].split(b"\n", 1)[1])


@pytest.mark.parametrize(
    ("version", "mode"),
    [("10.3.0.30", "weakly_typed"), ("10.7.0.23", "weakly_typed"), ("11.4.1.3", "strongly_typed"), ("12.0.0", "strongly_typed")],
)
def test_dla_build_mode_follows_the_tensorrt_version(version: str, mode: str) -> None:
    assert dla_build_mode(version) == mode


@pytest.mark.parametrize("version", ["10.8.0.43", "10.13.3.9", "11.0.0.114", "11.4.0.106"])
def test_a_tensorrt_without_dla_is_refused_naming_the_releases_that_have_it(version: str) -> None:
    with pytest.raises(ConfigError, match=f"TensorRT {version} cannot build for the DLA: TensorRT 10.7 was the last") as error:
        dla_build_mode(version)
    assert "JetPack 6 ships 10.3" in str(error.value) and "11.4.1" in str(error.value)


def test_calibration_cache_is_tensorrts_text_format() -> None:
    cache = calibration_cache({"images": 1 / 127, "input_1:0": 2.0}, "10.3.0.30")
    # As TensorRT writes one: the float32 bits of each scale in hex (1/127 → 3c010204), tensor names as they are.
    assert cache == b"TRT-100300-EntropyCalibration2\nimages: 3c010204\ninput_1:0: 40000000\n"
    assert tensorrt_version_code("10.13.3.9") == 101303 and tensorrt_version_code("8.6.1.6") == 8601
    header, scales = read_calibration_cache(cache)
    assert header == "TRT-100300-EntropyCalibration2" and scales == {"images": np.float32(1 / 127), "input_1:0": 2.0}
    with pytest.raises(ExportError, match="scale 0.0"):
        calibration_cache({"images": 0.0}, "10.3.0.30")


def test_strip_qdq_reads_modelopt_int8_weights_and_activation_scales(fp32_bundle: ExportBundle) -> None:
    onnx = pytest.importorskip("onnx")
    # INT8 weights with a DequantizeLinear (not float32 weights) come back as the float values the Q/DQ model
    # computes with, and the activations' scales name the stripped network's own tensors.
    fp32 = onnx.load(str(fp32_bundle.model_path("fp32")))
    qdq = _qdq_model(fp32)
    stripped, scales = strip_qdq(qdq)
    ops = {node.op_type for node in stripped.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    assert ops == {node.op_type for node in fp32.graph.node}
    conv_inputs = {node.input[0] for node in stripped.graph.node if node.op_type == "Conv"}
    assert conv_inputs <= set(scales) and "images" in scales
    assert all(scales[name] == pytest.approx(0.05) for name in conv_inputs)
    # Carried across ReLU and max pooling, up to the convolution outputs the ReLUs read.
    relu_inputs = {node.input[0] for node in stripped.graph.node if node.op_type == "Relu"}
    producers = {node.output[0]: node for node in stripped.graph.node}
    assert any(name in scales and producers[name].op_type == "Conv" for name in relu_inputs)
    tensors = {name for node in stripped.graph.node for name in node.output} | {"images"}
    assert set(scales) <= tensors
    from onnx import numpy_helper

    dequantized = {tensor.name: numpy_helper.to_array(tensor) for tensor in stripped.graph.initializer}
    original = {tensor.name: numpy_helper.to_array(tensor) for tensor in fp32.graph.initializer}
    conv = next(node for node in fp32.graph.node if node.op_type == "Conv")
    weight = dequantized[f"{conv.input[1]}/dq"]
    step = np.abs(original[conv.input[1]]).reshape(len(weight), -1).max(axis=1) / 127
    assert weight.dtype == np.float32 and np.abs(weight - original[conv.input[1]]).max() <= step.max() / 2 + 1e-6
    # The stripped network is the FP32 model with quantized weights: nearly the FP32 model's function.
    import onnxruntime

    images = _normalised_batch(2, fp32_bundle.input_size)
    outputs = [
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"images": images}
        )[0]
        for model in (fp32, stripped)
    ]
    assert _cosine(*outputs).min() > 0.999


def test_strip_qdq_of_the_int8_model_modelopt_writes(fp32_bundle: ExportBundle, tmp_path: Path) -> None:
    # The real thing: the bundle's int8 model as edgereid's modelopt call writes it (float weights behind Q/DQ pairs).
    pytest.importorskip("modelopt.onnx.quantization")
    onnx = pytest.importorskip("onnx")
    from edgereid.export.precision import quantize_int8

    images = _normalised_batch(8, fp32_bundle.input_size, seed=3)
    calibration = types.SimpleNamespace(images=images, record=dict)
    quantize_int8(fp32_bundle.model_path("fp32"), tmp_path / "model.int8.onnx", calibration, method="max")  # type: ignore[arg-type]
    qdq = onnx.load(str(tmp_path / "model.int8.onnx"))
    stripped, scales = strip_qdq(qdq)
    assert not {node.op_type for node in stripped.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    values = {tensor.name: tensor for tensor in qdq.graph.initializer}
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in values:  # an activation modelopt quantized
            scale = float(onnx.numpy_helper.to_array(values[node.input[1]]))
            assert scales[node.input[0]] == pytest.approx(scale), node.input[0]
    assert {node.input[0] for node in stripped.graph.node if node.op_type == "Conv"} <= set(scales)


def _tiny_qdq(zero_point: np.ndarray | None = None, scale: np.ndarray | None = None) -> onnx.ModelProto:
    """x → Q/DQ (scale and zero point from Constant nodes, as a QAT export writes them) → Conv (float weights behind a
    Q/DQ pair) → Relu → y."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32)
    w_scale = (np.abs(weight).reshape(4, -1).max(axis=1) / 127).astype(np.float32)
    scale = np.array(0.02, np.float32) if scale is None else scale
    zero_point = np.array(0, np.int8) if zero_point is None else zero_point
    nodes = [
        helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(scale)),
        helper.make_node("Constant", [], ["z"], value=numpy_helper.from_array(zero_point)),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"], name="dq"),
        helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="wq", axis=0),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"], name="wdq", axis=0),
        helper.make_node("Conv", ["xdq", "wdq"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(w_scale, "ws"),
         numpy_helper.from_array(np.zeros(4, np.int8), "wz")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_strip_qdq_reads_constant_node_scales_and_fake_quantizes_float_weights() -> None:
    from onnx import numpy_helper

    model = _tiny_qdq()
    stripped, scales = strip_qdq(model)
    assert [node.op_type for node in stripped.graph.node] == ["Conv", "Relu"]
    assert stripped.graph.node[0].input[0] == "x" and scales == {"x": pytest.approx(0.02)}
    weight = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    w_scale = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "ws")).reshape(-1, 1, 1, 1)
    (stripped_weight,) = [numpy_helper.to_array(t) for t in stripped.graph.initializer]
    np.testing.assert_allclose(stripped_weight, np.clip(np.rint(weight / w_scale), -128, 127) * w_scale, rtol=1e-6)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"zero_point": np.array(3, np.int8)}, "zero point \\[3\\].*symmetric"),
        ({"zero_point": np.array(0, np.uint8)}, "symmetric"),
        ({"scale": np.array(-0.5, np.float32)}, "not a positive number"),
    ],
)
def test_strip_qdq_refuses_what_tensorrt_int8_cannot_express(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ExportError, match=match):
        strip_qdq(_tiny_qdq(**changes))


def test_dla_placement_reads_the_engine_inspector() -> None:
    network = ["/conv1", "/relu1", "/conv10", "/pool", "/neck/bn", "/head/gemm"]
    detailed = json.dumps({"Layers": [
        {"Name": "images to nvm", "LayerType": "Reformat"},
        {"Name": "{ForeignNode[/conv1.../conv10]}", "LayerType": "DLA"},
        {"Name": "/conv10 from nvm", "LayerType": "Reformat"},
        {"Name": "Reformatting CopyNode for Input Tensor 0 to /pool", "LayerType": "Reformat"},
        {"Name": "PWN(/pool, /neck/bn)", "LayerType": "PointWiseV2"},
        {"Name": "{ForeignNode[/head/gemm]}", "LayerType": "Myelin"},
    ]})
    placement = dla_placement(detailed, network, 1)
    assert placement["layers"] == 6 and placement["layers_on_dla"] == 3 and placement["core"] == 1
    # "/conv1" is not "/conv10"'s prefix match, nor is a layer named in a reformat's name on the GPU.
    assert placement["gpu_fallback"] == ["/pool", "/neck/bn", "/head/gemm"]
    assert placement["dla_subgraphs"] == ["{ForeignNode[/conv1.../conv10]}"] and placement["transfers"] == 3
    assert describe_placement(placement) == "3/6 layers on DLA 1, 3 on the GPU"
    # Names only (an engine built without detailed verbosity), and an engine with nothing on the DLA.
    names_only = json.dumps({"Layers": ["{ForeignNode[/conv1.../neck/bn]}", "/head/gemm"], "Bindings": []})
    assert dla_placement(names_only, network, 0)["gpu_fallback"] == ["/head/gemm"]
    all_gpu = dla_placement(json.dumps({"Layers": ["/conv1 + /relu1", "/conv10"]}), network, 0)
    assert all_gpu["layers_on_dla"] == 0 and all_gpu["gpu_fallback"] == network


def _dla_cores(count: int, version: str = "10.3.0.30") -> types.ModuleType:
    trt = sys.modules["tensorrt"]
    trt.Builder.num_DLA_cores = count  # type: ignore[attr-defined]
    trt.__version__ = version  # type: ignore[attr-defined]
    return trt


@pytest.mark.usefixtures("fake_gpu")
def test_dla_int8_build_is_weakly_typed_with_the_qdq_scales_as_its_calibration_cache(dla_bundle: Path) -> None:
    onnx = pytest.importorskip("onnx")
    _dla_cores(2)
    path = build_engine(dla_bundle, "int8", dla_core=1, batch=(4, 4, 4))
    header = _plan_header(path)
    # trtexec --useDLACore's flags on a weakly typed network; detailed layer information for the inspector.
    assert header["strongly_typed"] is False and header["dla_core"] == 1
    assert {"FP16", "INT8", "GPU_FALLBACK", "PREFER_PRECISION_CONSTRAINTS"} <= set(header["flags"])
    assert header["profiling_verbosity"] == "DETAILED"
    # The network is the INT8 model without Q/DQ nodes; the cache holds exactly its activation scales.
    qdq = onnx.load(str(dla_bundle / "model.int8.onnx"))
    _, scales = strip_qdq(qdq)
    assert header["calibration"] == {name: np.float32(scale) for name, scale in scales.items()}
    assert not {node.op_type for node in _plan_model(path).graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    entry = load_bundle(dla_bundle).engines["int8"]
    assert entry["options"]["strongly_typed"] is False and entry["options"]["dla_core"] == 1
    assert entry["source_model"]["file"] == "model.int8.onnx"
    dla = entry["dla"]
    # The stand-in's DLA runs the leading convolutions, ReLUs and poolings; the rest falls back to the GPU.
    layers = [name for name, _ in header["layers"]]
    split = next(index for index, (_, op) in enumerate(header["layers"]) if op not in {"Conv", "Relu", "MaxPool"})
    on_gpu = layers[split:]
    assert split and on_gpu and dla["layers"] == len(layers) and dla["gpu_fallback"] == on_gpu
    assert dla["layers_on_dla"] == len(layers) - len(on_gpu) and dla["int8_scales"] == len(scales)
    assert dla["build"] == "weakly typed" and dla["precision_flags"] == ["FP16", "INT8"]


@pytest.mark.usefixtures("fake_gpu")
def test_dla_fp16_build_is_the_fp32_model_with_the_fp16_flag(dla_bundle: Path) -> None:
    onnx = pytest.importorskip("onnx")
    _dla_cores(1)
    path = build_engine(dla_bundle, "fp16", dla_core=0, batch=(2, 2, 2))
    header = _plan_header(path)
    assert header["strongly_typed"] is False and header["calibration"] is None
    assert "FP16" in header["flags"] and "INT8" not in header["flags"]
    assert _plan_model(path) == onnx.load(str(dla_bundle / "model.fp32.onnx"))
    entry = load_bundle(dla_bundle).engines["fp16"]
    assert entry["source_model"]["file"] == "model.fp32.onnx" and entry["dla"]["precision_flags"] == ["FP16"]


@pytest.mark.usefixtures("fake_gpu")
def test_dla_build_on_tensorrt_11_4_1_is_strongly_typed(dla_bundle: Path) -> None:
    _dla_cores(2, version="11.4.1.3")
    path = build_engine(dla_bundle, "int8", dla_core=0, batch=(4, 4, 4))
    header = _plan_header(path)
    assert header["strongly_typed"] is True and header["calibration"] is None
    assert not {"FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"} & set(header["flags"])
    assert "QuantizeLinear" in {node.op_type for node in _plan_model(path).graph.node}
    assert load_bundle(dla_bundle).engines["int8"]["dla"]["build"] == "strongly typed"


@pytest.mark.parametrize("version", ["10.13.3.9", "11.4.0.106"])
@pytest.mark.usefixtures("fake_gpu")
def test_dla_build_is_refused_where_tensorrt_has_no_dla(dla_bundle: Path, version: str) -> None:
    _dla_cores(2, version=version)
    with pytest.raises(ConfigError, match="cannot build for the DLA: TensorRT 10.7 was the last release"):
        build_engine(dla_bundle, "fp16", dla_core=0, batch=(4, 4, 4))
    assert not (dla_bundle / engine_file_name("fp16")).exists()


@pytest.mark.usefixtures("fake_gpu")
def test_dla_build_fails_clearly_when_tensorrt_does_not_take_the_cache(
    dla_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgereid.export.engine as engine_module

    _dla_cores(1)
    monkeypatch.setattr(engine_module, "calibration_cache", lambda scales, version: calibration_cache(scales, "8.6.1"))
    with pytest.raises(ExportError, match="did not take the calibration cache .*asked for calibration images"):
        build_engine(dla_bundle, "int8", dla_core=0, batch=(4, 4, 4))
    assert "engines" not in json.loads((dla_bundle / MANIFEST_NAME).read_text())


@pytest.mark.usefixtures("fake_gpu")
def test_a_dla_engine_with_nothing_on_the_dla_says_so(dla_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgereid.export.engine as engine_module

    _dla_cores(1)
    nothing = json.dumps({"Layers": ["images to nvm", "/everything + /else"]})
    monkeypatch.setattr(engine_module, "dla_placement", lambda info, layers, core: dla_placement(nothing, layers, core))
    with pytest.warns(UserWarning, match="built for DLA core 0 runs no layer on the DLA"):
        build_engine(dla_bundle, "fp16", dla_core=0, batch=(4, 4, 4))
    assert load_bundle(dla_bundle).engines["fp16"]["dla"]["layers_on_dla"] == 0


@pytest.mark.usefixtures("fake_gpu")
def test_fp32_engines_are_built_without_tf32(dla_bundle: Path) -> None:
    fp32 = build_engine(dla_bundle, "fp32", batch=(1, 2, 4))
    assert "TF32" not in _plan_header(fp32)["flags"]  # TensorRT's default is on; an FP32 engine must clear it
    fp16 = build_engine(dla_bundle, "fp16", batch=(1, 2, 4))
    assert "TF32" in _plan_header(fp16)["flags"] and _plan_header(fp16)["strongly_typed"] is True
    engines = load_bundle(dla_bundle).engines
    assert engines["fp32"]["options"]["tf32"] is False and engines["fp16"]["options"]["tf32"] is True


def test_runner_loads_a_dla_engine_on_the_core_it_was_built_for(dla_bundle: Path, fake_gpu: list[_FakeDevice]) -> None:
    trt = _dla_cores(2)
    build_engine(dla_bundle, "fp16", dla_core=1, batch=(4, 4, 4))
    build_engine(dla_bundle, "fp32", batch=(1, 4, 4))
    with create_runner(dla_bundle, "tensorrt", "fp16") as runner:
        assert runner._engine.loaded_on_dla_core == 1
        assert runner.backend_detail.endswith("DLA core 1, fake")
        assert runner.infer(_normalised_batch(3, (64, 32))).shape == (3, 512)
    with create_runner(dla_bundle, "tensorrt", "fp32") as runner:
        assert runner._engine.loaded_on_dla_core == -1  # a GPU engine leaves the runtime's core alone
    trt.Builder.num_DLA_cores = 1  # type: ignore[attr-defined]
    with pytest.raises(EngineCompatibilityError, match="built for DLA core 1; TensorRT 10.3.0.30 on Fake GPU has 1"):
        create_runner(dla_bundle, "tensorrt", "fp16")
    assert fake_gpu[-1].closed


def test_build_command_with_a_dla_core_builds_only_fp16_and_int8(
    dla_bundle: Path, fake_gpu: list[_FakeDevice], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgereid.cli._output import console

    monkeypatch.setattr(console, "width", 200)
    _dla_cores(1)
    result = CliRunner().invoke(build_command, [str(dla_bundle), "--dla-core", "0", "--batch", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["engines"]) == {"fp16", "int8"}
    assert not (dla_bundle / engine_file_name("fp32")).exists()
    table = CliRunner().invoke(build_command, [str(dla_bundle), "--dla-core", "0", "--batch", "4"])
    assert table.exit_code == 0, table.output
    assert "layers on DLA 0" in table.output and "on the GPU instead of the DLA" in table.output


@pytest.mark.usefixtures("fake_gpu")
def test_build_command_with_a_dla_core_and_no_fp16_or_int8_model_says_so(bundle_copy: Path) -> None:
    group = _ReportingGroup()
    group.add_command(build_command)
    result = CliRunner().invoke(group, ["build", str(bundle_copy), "--dla-core", "0", "--batch", "4"])
    assert result.exit_code == ConfigError.exit_code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "has no fp16 or int8 model" in lines[0] and "DLA runs only those" in lines[0]
    assert not (bundle_copy / engine_file_name("fp32")).exists()


# --- the CUDA binding ----------------------------------------------------------------------------------------------


def _old_cuda_python(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """cuda-python as it was before 12.6: ``cuda.cudart`` and no ``cuda.bindings``."""
    import importlib.machinery

    cudart = types.ModuleType("cuda.cudart")
    cudart.__spec__ = importlib.machinery.ModuleSpec("cuda.cudart", None)
    success = 0
    cudart.cudaError_t = types.SimpleNamespace(cudaSuccess=success)  # type: ignore[attr-defined]
    calls: list[str] = []
    answers = {
        "cudaGetDeviceCount": (success, 1),
        "cudaSetDevice": (success,),
        "cudaGetDeviceProperties": (success, types.SimpleNamespace(name=b"Orin\0\0", major=8, minor=7)),
        "cudaStreamCreate": (success, 11),
        "cudaStreamDestroy": (success,),
    }
    for name, answer in answers.items():
        setattr(cudart, name, lambda *args, _name=name, _answer=answer: calls.append(_name) or _answer)
    cudart.calls = calls  # type: ignore[attr-defined]
    package = types.ModuleType("cuda")
    package.__spec__ = importlib.machinery.ModuleSpec("cuda", None, is_package=True)
    package.__path__ = []
    package.cudart = cudart  # type: ignore[attr-defined]
    for name, module in {"cuda": package, "cuda.cudart": cudart, "cuda.bindings": None,
                         "cuda.bindings.runtime": None, "pycuda": None, "pycuda.driver": None}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return cudart


def test_cuda_python_before_12_6_is_found_and_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgereid.runtime.cuda import cuda_binding, open_device

    cudart = _old_cuda_python(monkeypatch)
    assert cuda_binding() == "cuda-python"
    with open_device(0) as device:
        assert device.binding == "cuda-python" and device.info == GpuInfo(0, "Orin", "8.7") and device.stream == 11
    assert cudart.calls[:2] == ["cudaGetDeviceCount", "cudaSetDevice"] and "cudaStreamDestroy" in cudart.calls


def test_a_cuda_namespace_without_cuda_python_runtime_is_no_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgereid.runtime.cuda import CUDA_BINDINGS_MISSING, cuda_binding, open_device

    _old_cuda_python(monkeypatch)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)  # other NVIDIA packages share the cuda namespace
    assert cuda_binding() is None
    with pytest.raises(EdgeReIDError, match=re.escape(CUDA_BINDINGS_MISSING)):
        open_device(0)


# --- the engine tests' fixture skips, saying why -------------------------------------------------------------------


@pytest.mark.parametrize(("missing", "named"), [("onnxconverter_common", "onnxconverter-common"), ("modelopt", "nvidia-modelopt")])
def test_engine_tests_skip_naming_a_missing_exporter(
    monkeypatch: pytest.MonkeyPatch, missing: str, named: str
) -> None:
    import edgereid.runtime.cuda as cuda_module

    # A machine with TensorRT and a GPU (stand-ins) but without one of the packages the test bundle is made with.
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(cuda_module, "open_device", lambda index=0: _FakeDevice(index, {}))
    for module in ("torch", "onnxruntime", "onnxconverter_common", "modelopt", "modelopt.onnx", "modelopt.onnx.quantization"):
        if module.split(".")[0] != missing:
            monkeypatch.setitem(sys.modules, module, sys.modules.get(module) or types.ModuleType(module))
    for module in [name for name in sys.modules if name.split(".")[0] == missing] + [missing, f"{missing}.onnx.quantization"]:
        monkeypatch.setitem(sys.modules, module, None)  # not importable, even where an earlier test imported it
    reason = _engine_bundle_skip_reason()
    assert reason is not None and named in reason and "pip install 'edgereid[export]'" in reason


# --- with TensorRT and a GPU ----------------------------------------------------------------------------------------


# What the engine tests' bundle is made with (tests.factories.make_bundle with fp16 and int8): a Jetson with TensorRT
# and a GPU often has none of it, and its tests must then skip saying so rather than error in the fixture.
_BUNDLE_MAKERS = (
    ("torch", "torch", "pip install 'edgereid[train]'"),
    ("onnxruntime", "onnxruntime", "pip install 'edgereid[export]'"),
    ("onnxconverter_common", "onnxconverter-common (the fp16 model)", "pip install 'edgereid[export]'"),
    ("modelopt.onnx.quantization", "nvidia-modelopt (the int8 model)", "pip install 'edgereid[export]'"),
)


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


def _engine_bundle_skip_reason() -> str | None:
    """Why the engine tests cannot run here: no TensorRT or GPU, or no way to export their fp16/int8 bundle."""
    reason = _tensorrt_skip_reason()
    if reason is not None:
        return reason
    for module, what, install in _BUNDLE_MAKERS:
        try:
            importlib.import_module(module)
        except ImportError as error:
            return f"TensorRT and a GPU are here, but {what} is not ({error}), which the test bundle needs: {install}"
    return None


@pytest.fixture(scope="module")
def engine_bundle(tmp_path_factory: pytest.TempPathFactory) -> ExportBundle:
    reason = _engine_bundle_skip_reason()
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
    from edgereid.data.selection import DataSelection
    from edgereid.runtime.verify import verify_runtime

    data = DataSelection(root=engine_bundle.path.parent / "synthetic")
    result = verify_runtime(engine_bundle, backend="tensorrt", data=data)
    assert result["backend"] == "tensorrt" and "TensorRT" in result["backend_detail"]
    assert set(result["results"]) == {"fp32", "fp16", "int8"}
    for precision in ("fp32", "fp16"):
        assert result["results"][precision]["passed"], result["results"][precision]
    # An untrained network on 16 identities makes INT8's own loss noisy: the engine must match ONNX Runtime's run of
    # the same Q/DQ model instead.
    onnxruntime_int8 = verify_runtime(engine_bundle, backend="onnxruntime", precisions=["int8"], data=data)
    assert abs(result["results"]["int8"]["mAP"] - onnxruntime_int8["results"]["int8"]["mAP"]) <= 0.01


@pytest.mark.tensorrt
def test_engine_for_another_gpu_is_refused_before_loading(engine_bundle: ExportBundle, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(engine_bundle.path, tmp_path / "bundle"))
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["engines"]["fp32"]["compute_capability"] = "5.3"
    (copy / MANIFEST_NAME).write_text(manifest_text(manifest))
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


@pytest.mark.tensorrt
@pytest.mark.parametrize(("precision", "cosine_min"), [("fp16", 0.99), ("int8", 0.95)])
def test_dla_engine_builds_runs_and_records_where_its_layers_run(
    engine_bundle: ExportBundle, tmp_path: Path, precision: str, cosine_min: float
) -> None:
    import tensorrt

    from edgereid.export.engine import tensorrt_logger

    try:
        dla_build_mode(tensorrt.__version__)
    except ConfigError as error:
        pytest.skip(str(error))
    if tensorrt.Builder(tensorrt_logger()).num_DLA_cores == 0:
        pytest.skip(f"no DLA here (TensorRT {tensorrt.__version__}): a Jetson AGX Orin or Orin NX has one")
    copy = load_bundle(shutil.copytree(engine_bundle.path, tmp_path / "bundle"))
    build_engine(copy, precision, dla_core=0, batch=(4, 4, 4), workspace_mb=256)
    bundle = load_bundle(copy.path)
    dla = bundle.engines[precision]["dla"]
    assert dla["core"] == 0 and dla["layers_on_dla"] > 0 and dla["dla_subgraphs"]
    assert dla["layers_on_dla"] + len(dla["gpu_fallback"]) == dla["layers"]
    images = _normalised_batch(3, bundle.input_size)
    with create_runner(bundle, "onnxruntime", precision) as reference, create_runner(bundle, "tensorrt", precision) as runner:
        assert "DLA core 0" in runner.backend_detail
        assert _cosine(runner.infer(images), reference.infer(images)).min() >= cosine_min
