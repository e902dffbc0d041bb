"""TensorRT engines inside a bundle: ``build_engine`` parses one of the bundle's ONNX models (FP32, FP16, or INT8
with Q/DQ nodes) into a strongly typed network, so the precision is the ONNX file's own and no builder precision
flag or calibrator is involved (TensorRT 11 removed both), builds it for a batch range, and writes
``engine.<precision>.plan`` into the bundle with a manifest entry saying which TensorRT, GPU and options built it.

``check_engine_compatible`` is the rule the runtime applies before deserialising an engine: a plan runs only on
the compute capability it was built for and, unless built version-compatible, only with the TensorRT version
that built it.

TensorRT and the CUDA binding are imported when an engine is built, never by importing this module.
"""

from __future__ import annotations

import collections
import datetime
import importlib
import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

from edgereid.atomic import atomic_file, atomic_write_bytes, atomic_write_text
from edgereid.errors import ConfigError, DataError, EdgeReIDError, ExportError
from edgereid.export.bundle import MANIFEST_NAME, ExportBundle, load_bundle, sha256_file

# int8_cpu is quantised for ONNX Runtime's CPU kernels; int8 is the Q/DQ model laid out for TensorRT.
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH = (1, 8, 32)
DEFAULT_WORKSPACE_MB = 1024
# Version-compatible plans also run on later major versions, but only on these pairs (NVIDIA's support matrix:
# TensorRT 8 plans on a TensorRT 10 runtime, TensorRT 10 plans on TensorRT 11); every other pair needs a rebuild.
_CROSS_MAJOR_COMPATIBLE = {(8, 10), (10, 11)}
# Version compatibility exists from TensorRT 8.6 on.
_FIRST_VERSION_COMPATIBLE = (8, 6)

_KEPT_MESSAGES = 20
_LOGGER: Any = None

TENSORRT_MISSING = (
    "TensorRT's Python package is not importable here ({reason}). On a Jetson it comes with JetPack: "
    "sudo apt install nvidia-jetpack (or python3-libnvinfer for the Python bindings alone; a virtual environment "
    "must be created with --system-site-packages to see them). On x86: pip install tensorrt cuda-python "
    "--extra-index-url https://pypi.nvidia.com (or pip install 'edgereid[trt]')"
)


class EngineCompatibilityError(DataError):
    """A bundle's engine was built for another GPU architecture or TensorRT version than this machine has."""


def require_tensorrt() -> None:
    """Raise the one error (shared by builder and runner) that says where to get TensorRT, where it cannot be
    imported; callers then ``import tensorrt as trt``, which mypy checks against tensorrt-stubs."""
    try:
        importlib.import_module("tensorrt")
    except ImportError as error:
        raise EdgeReIDError(TENSORRT_MISSING.format(reason=f"{type(error).__name__}: {error}")) from None


def engine_file_name(precision: str) -> str:
    return f"engine.{precision}.plan"


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"MIN:OPT:MAX"`` (or one number ``"N"``, a fixed batch, as DLA needs) → ``(min, opt, max)``, checked."""
    parts = text.split(":")
    if len(parts) not in (1, 3):
        raise ConfigError(f"batch {text!r} is not MIN:OPT:MAX (for example 1:8:32) or a single fixed size N")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"batch {text!r} has a part that is not a whole number; expected MIN:OPT:MAX") from None
    batch = (values[0], values[0], values[0]) if len(values) == 1 else (values[0], values[1], values[2])
    return check_batch_range(batch)


def check_batch_range(batch: tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    """``batch`` as (min, opt, max) with 1 <= min <= opt <= max; anything else a ConfigError naming it."""
    if len(batch) != 3:
        raise ConfigError(f"batch must be (min, opt, max), got {tuple(batch)}")
    low, opt, high = (int(value) for value in batch)
    if low < 1 or not low <= opt <= high:
        raise ConfigError(
            f"batch range {low}:{opt}:{high} is invalid; expected 1 <= MIN <= OPT <= MAX (for example 1:8:32)"
        )
    return low, opt, high


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version)
    if not numbers:
        raise DataError(f"{version!r} is not a TensorRT version")
    return tuple(int(number) for number in numbers)


def check_engine_compatible(
    engine: dict[str, Any], tensorrt_version: str, gpu_name: str, compute_capability: str
) -> None:
    """Raise EngineCompatibilityError when the engine of manifest entry ``engine`` cannot run with this TensorRT on
    this GPU; warn when it can but was built on another GPU model of the same architecture (TensorRT accepts
    that, its tactics were timed on the other model)."""
    built_version = str(engine["tensorrt_version"])
    built_on = f"TensorRT {built_version} on {engine['gpu']} (sm_{str(engine['compute_capability']).replace('.', '')})"
    here = f"TensorRT {tensorrt_version} on {gpu_name} (sm_{compute_capability.replace('.', '')})"
    rebuild = f"rebuild it here with: edgereid build BUNDLE --precision {engine.get('precision', 'PRECISION')}"
    file = engine.get("file", "the engine")
    if str(engine["compute_capability"]) != compute_capability:
        raise EngineCompatibilityError(
            f"{file} was built with {built_on}; this machine has {here}. An engine runs only on the GPU "
            f"architecture it was built for: {rebuild}"
        )
    built = _version_tuple(built_version)
    runtime = _version_tuple(tensorrt_version)
    if engine.get("options", {}).get("version_compatible"):
        later = runtime[:2] >= built[:2]
        same_or_allowed_major = runtime[0] == built[0] or (built[0], runtime[0]) in _CROSS_MAJOR_COMPATIBLE
        if built[:2] < _FIRST_VERSION_COMPATIBLE or not (later and same_or_allowed_major):
            raise EngineCompatibilityError(
                f"{file} was built version-compatible with {built_on}; this machine has {here}. A version-"
                f"compatible engine runs on the same or a later TensorRT of its major version (TensorRT 8 plans "
                f"also on 10, TensorRT 10 plans also on 11), never on an earlier one: {rebuild}"
            )
    elif runtime != built:
        raise EngineCompatibilityError(
            f"{file} was built with {built_on}; this machine has {here}. An engine runs only with the TensorRT "
            f"version that built it unless built with --version-compatible: {rebuild}"
        )
    if str(engine["gpu"]) != gpu_name:
        warnings.warn(
            f"{file} was built on {engine['gpu']} and runs here on {gpu_name} (same architecture, "
            f"sm_{compute_capability.replace('.', '')}); it works, but its kernels were chosen for the other GPU: "
            f"for best speed, {rebuild}",
            stacklevel=2,
        )


def tensorrt_logger() -> Any:
    """This process's TensorRT logger, which keeps the latest errors and warnings so that a failed parse, build or
    load can say why. One for the process: while any builder or runtime lives, TensorRT sends every message to
    the first logger it was given and ignores the others."""
    global _LOGGER
    if _LOGGER is None:
        require_tensorrt()
        import tensorrt as trt
        base: Any = trt.ILogger

        class KeepingLogger(base):
            def __init__(self) -> None:
                base.__init__(self)
                self.messages: collections.deque[str] = collections.deque(maxlen=_KEPT_MESSAGES)
                self.count = 0

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) <= int(trt.ILogger.Severity.WARNING):
                    self.messages.append(f"{severity.name}: {msg}")
                    self.count += 1

        _LOGGER = KeepingLogger()
    return _LOGGER


def tensorrt_messages(since: int) -> str:
    """The errors and warnings TensorRT logged after ``since`` (``tensorrt_logger().count`` taken before the call
    that failed), the last few, for an error message."""
    logger = tensorrt_logger()
    new = min(logger.count - since, len(logger.messages))
    messages = list(logger.messages)[len(logger.messages) - new :] if new > 0 else []
    return "; ".join(messages[-5:]) or "TensorRT logged no error"


def build_engine(
    bundle: ExportBundle | str | Path,
    precision: str,
    *,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | Path | None = None,
    dla_core: int | None = None,
    version_compatible: bool = False,
    device: int = 0,
) -> Path:
    """Build a TensorRT engine of ``bundle``'s ``precision`` ONNX model on CUDA ``device`` and write it into the
    bundle as ``engine.<precision>.plan``; returns its path.

    ``batch`` is the optimisation profile (min, opt, max): the engine accepts any batch in [min, max] and is tuned
    for opt. ``workspace_mb`` caps the scratch memory TensorRT's tactics may use (shared with the CPU on a Jetson).
    ``timing_cache`` is read when it exists and written back, so later builds on this GPU skip the tactic timing.
    ``dla_core`` builds for that DLA core of a Jetson Orin, layers DLA cannot run falling back to the GPU: DLA
    computes FP16 and INT8 only and, the network being strongly typed, the precision comes from the ONNX file, so
    it takes the fp16 or int8 model and a fixed batch (MIN = OPT = MAX; DLA has no dynamic shapes).
    ``version_compatible`` builds a plan that later TensorRT versions can load (see ``check_engine_compatible``),
    possibly a little slower.

    The engine file is written (atomically) before the manifest that names it, so a crash never leaves a manifest
    pointing at a missing or partial engine.
    """
    if not isinstance(bundle, ExportBundle):
        bundle = load_bundle(bundle)
    if precision not in ENGINE_PRECISIONS:
        raise ConfigError(
            f"TensorRT engines are built from the {', '.join(ENGINE_PRECISIONS)} models, not {precision!r}"
            + (" (the ONNX Runtime CPU model; build int8, the Q/DQ model for TensorRT)" if precision == "int8_cpu" else "")
        )
    model_path = bundle.model_path(precision)
    low, opt, high = check_batch_range(batch)
    if workspace_mb < 1:
        raise ConfigError(f"workspace must be at least 1 MB, got {workspace_mb}")
    if dla_core is not None:
        if dla_core < 0:
            raise ConfigError(f"DLA core must be 0 or more, got {dla_core}")
        if precision == "fp32":
            raise ConfigError(
                "DLA runs FP16 and INT8 only, and a strongly typed network takes its precision from the ONNX "
                f"file: build the fp16 or int8 model of '{bundle.path}' for DLA, not fp32"
            )
        if not low == opt == high:
            raise ConfigError(
                f"DLA has no dynamic shapes: give a fixed batch (--batch N, or MIN = OPT = MAX), not {low}:{opt}:{high}"
            )
    cache_path = Path(timing_cache) if timing_cache is not None else None
    require_tensorrt()
    import tensorrt as trt

    from edgereid.runtime.cuda import open_device

    with open_device(device) as cuda, cuda.activate():
        gpu = cuda.info
        logger = tensorrt_logger()
        mark = logger.count
        builder = trt.Builder(logger)
        # TensorRT 11 makes every network strongly typed and deprecates the flag: where it is gone, none is needed.
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(model_path)):
            errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
            raise ExportError(f"TensorRT cannot parse '{model_path}': {errors or tensorrt_messages(mark)}")
        input_name = _check_network_input(network, bundle, model_path, (low, opt, high))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        height, width = bundle.input_size
        profile = builder.create_optimization_profile()
        profile.set_shape(
            input_name,
            trt.Dims([low, 3, height, width]),
            trt.Dims([opt, 3, height, width]),
            trt.Dims([high, 3, height, width]),
        )
        config.add_optimization_profile(profile)
        cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
        try:
            cache = config.create_timing_cache(cache_bytes)
            accepted = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
        except (RuntimeError, TypeError, ValueError):  # how its pybind11 layer reports a cache it cannot read
            accepted = False
        if not accepted:
            raise ConfigError(
                f"timing cache '{cache_path}' cannot be used: it is damaged or was written by another GPU or "
                f"TensorRT version ({tensorrt_messages(mark)}); delete it or give another --timing-cache"
            )
        if dla_core is not None:
            if dla_core >= builder.num_DLA_cores:
                raise ConfigError(
                    f"DLA core {dla_core} does not exist: TensorRT {trt.__version__} on {gpu.name} has "
                    f"{builder.num_DLA_cores} DLA core(s); Jetson AGX Orin and Orin NX have DLA, through the "
                    "TensorRT of their JetPack"
                )
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = dla_core
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        if version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        started = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        build_s = time.perf_counter() - started
        if serialized is None:
            raise ExportError(
                f"TensorRT could not build an engine of '{model_path}' ({precision}): {tensorrt_messages(mark)}"
            )
        engine_path = bundle.path / engine_file_name(precision)
        with atomic_file(engine_path) as file:
            file.write(memoryview(serialized))
        if cache_path is not None:
            atomic_write_bytes(bytes(memoryview(config.get_timing_cache().serialize())), cache_path)
    entry = {
        "file": engine_path.name,
        "precision": precision,
        "sha256": sha256_file(engine_path),
        "bytes": engine_path.stat().st_size,
        "tensorrt_version": trt.__version__,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_model": {"file": model_path.name, "sha256": bundle.manifest["models"][precision]["sha256"]},
        "options": {
            "batch": {"min": low, "opt": opt, "max": high},
            "workspace_mb": workspace_mb,
            "dla_core": dla_core,
            "version_compatible": version_compatible,
            "timing_cache": str(cache_path) if cache_path is not None else None,
            "strongly_typed": True,
            "build_s": round(build_s, 3),
        },
    }
    _record_engine(bundle.path, precision, entry)
    return engine_path


def _check_network_input(
    network: Any, bundle: ExportBundle, model_path: Path, batch: tuple[int, int, int]
) -> str:
    """The name of the parsed network's one input, checked against the manifest (name, C×H×W, batch dimension)."""
    if network.num_inputs != 1:
        raise ExportError(f"'{model_path}' has {network.num_inputs} inputs; an edgereid model has one (images)")
    tensor = network.get_input(0)
    expected = bundle.manifest["input"]["name"]
    if tensor.name != expected:
        raise ExportError(f"'{model_path}' has input {tensor.name!r}; its manifest says {expected!r}")
    shape = [tensor.shape[index] for index in range(len(tensor.shape))]
    height, width = bundle.input_size
    if shape[1:] != [3, height, width]:
        raise ExportError(f"'{model_path}' has input shape {shape}; its manifest says (N, 3, {height}, {width})")
    if shape[0] != -1 and batch != (shape[0],) * 3:
        raise ConfigError(
            f"'{model_path}' was exported for a fixed batch of {shape[0]}; build it with --batch {shape[0]}"
        )
    return expected


def _record_engine(bundle_path: Path, precision: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the manifest's engines. The manifest is read again here, not taken from the bundle loaded
    before the build, so that an engine another build recorded meanwhile is kept."""
    manifest_path = bundle_path / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest.setdefault("engines", {})[precision] = entry
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
