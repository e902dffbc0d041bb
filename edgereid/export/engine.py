"""TensorRT engines inside a bundle: ``build_engine`` parses one of the bundle's ONNX models (FP32, FP16 with float32
I/O, or the INT8 Q/DQ model: activations through QuantizeLinear → DequantizeLinear pairs, weights either float32
behind such a pair — modelopt's ONNX post-training quantization as edgereid runs it — or INT8 constants read by a
DequantizeLinear, as the quantization-aware training export writes them; either way the INT8 values and scales are in
the file and TensorRT fuses them into INT8 kernels) into a strongly typed network, so the precision is the ONNX
file's own and no builder precision flag or calibrator is involved (TensorRT 11 removed both), builds it for a batch
range, and writes ``engine.<precision>.plan`` into the bundle with a manifest entry saying which TensorRT, GPU and
options built it. FP32 engines are built with TF32 off (TensorRT turns it on by default, strongly typed or not).

The DLA of a Jetson Orin is the exception: TensorRT 10.x builds for it only *weakly* typed, so ``--dla-core`` takes
its own path (see :mod:`edgereid.export.dla`): the FP32 model with the FP16 flag, or the INT8 model without its Q/DQ
nodes, its scales handed to TensorRT as a calibration cache, with the FP16 and INT8 flags and
PREFER_PRECISION_CONSTRAINTS as trtexec sets them; layers the DLA cannot run fall back to the GPU, and the engine
inspector's account of where each layer landed goes into the manifest.

``check_engine_compatible`` (:mod:`edgereid.runtime.trt`, re-exported here) is the rule the runtime applies before
deserialising an engine: a plan runs only on the compute capability it was built for and, unless built
version-compatible, only with the TensorRT version that built it.

TensorRT and the CUDA binding are imported when an engine is built, never by importing this module.
"""

from __future__ import annotations

import datetime
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from edgereid.atomic import atomic_file, atomic_write_bytes, atomic_write_text
from edgereid.bundle_format import (
    ENGINE_PRECISIONS,
    MANIFEST_NAME,
    ExportBundle,
    engine_file_name,
    load_bundle,
    manifest_text,
    read_manifest,
    sha256_file,
    validate_manifest,
)
from edgereid.errors import ConfigError, ExportError
from edgereid.export.dla import (
    WEAKLY_TYPED,
    calibration_cache,
    dla_build_mode,
    dla_placement,
    no_dla_core_message,
    strip_qdq,
)
from edgereid.locking import exclusive

# The TensorRT process state (its import, its one logger) and the engine compatibility rule are the runtime's
# (edgereid.runtime.trt): the builder uses them from there, and they stay importable from here.
from edgereid.runtime.trt import (
    EngineCompatibilityError,
    check_engine_compatible,
    require_tensorrt,
    tensorrt_logger,
    tensorrt_messages,
)

# The DLA computes FP16 and INT8 only.
DLA_PRECISIONS = ("fp16", "int8")
DEFAULT_BATCH = (1, 8, 32)
DEFAULT_WORKSPACE_MB = 1024


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
    ``dla_core`` builds for that DLA core of a Jetson Orin: fp16 or int8 only (the DLA computes nothing else) and a
    fixed batch (MIN = OPT = MAX; the DLA has no dynamic shapes), layers the DLA cannot run falling back to the GPU.
    On TensorRT 10.x (JetPack 6) that build is weakly typed (see the module's docstring); from TensorRT 11.4.1 it is
    strongly typed; TensorRT 10.8 to 11.4.0 have no DLA and are refused. The manifest entry's ``dla`` says how many
    layers run on the DLA and which fell back to the GPU, as the built engine's inspector reports them.
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
        if precision not in DLA_PRECISIONS:
            raise ConfigError(
                f"DLA runs FP16 and INT8 only: build the fp16 or int8 model of '{bundle.path}' for DLA, not {precision}"
            )
        if not low == opt == high:
            raise ConfigError(
                f"DLA has no dynamic shapes: give a fixed batch (--batch N, or MIN = OPT = MAX), not {low}:{opt}:{high}"
            )
    cache_path = Path(timing_cache) if timing_cache is not None else None
    require_tensorrt()
    import tensorrt as trt

    weakly_typed = dla_core is not None and dla_build_mode(trt.__version__) == WEAKLY_TYPED
    from edgereid.runtime.cuda import open_device

    with tempfile.TemporaryDirectory(prefix="edgereid-engine-") as scratch:
        network_model, scales, network_note = _network_model(bundle, precision, weakly_typed, Path(scratch))
        with open_device(device) as cuda, cuda.activate():
            gpu = cuda.info
            logger = tensorrt_logger()
            mark = logger.count
            builder = trt.Builder(logger)
            if dla_core is not None and dla_core >= builder.num_DLA_cores:
                raise ConfigError(no_dla_core_message(dla_core, trt.__version__, gpu.name, builder.num_DLA_cores))
            # TensorRT 11 makes every network strongly typed and deprecates the flag: where it is gone, none is needed.
            strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            flags = 0 if strongly_typed is None or weakly_typed else 1 << int(strongly_typed)
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(network_model)):
                errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
                raise ExportError(f"TensorRT cannot parse '{network_model}': {errors or tensorrt_messages(mark)}")
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
            if precision == "fp32":
                # TF32 is on by default, strong typing or not: an "fp32" engine would round convolution inputs to
                # 10-bit mantissas, which the FP32 model verified in ONNX Runtime never does.
                config.clear_flag(trt.BuilderFlag.TF32)
            calibrator = None
            if dla_core is not None:
                config.default_device_type = trt.DeviceType.DLA
                config.DLA_core = dla_core
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
                # Detailed layer information, so that the engine inspector can say where each layer runs.
                config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
                if weakly_typed:
                    # As trtexec --useDLACore does: prefer the layers' precisions, FP16 wherever INT8 has no scale.
                    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
                    config.set_flag(trt.BuilderFlag.FP16)
                    if precision == "int8":
                        config.set_flag(trt.BuilderFlag.INT8)
                        calibrator = _cache_calibrator(calibration_cache(scales, trt.__version__), opt)
                        config.int8_calibrator = calibrator
                        config.set_calibration_profile(profile)
            if version_compatible:
                config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
            layer_names = [
                layer.name
                for layer in (network.get_layer(index) for index in range(network.num_layers))
                if layer.type != trt.LayerType.CONSTANT
            ]
            started = time.perf_counter()
            serialized = builder.build_serialized_network(network, config)
            build_s = time.perf_counter() - started
            if calibrator is not None and calibrator.asked_for_data:
                raise ExportError(
                    f"TensorRT {trt.__version__} did not take the calibration cache made from '{model_path}' (it "
                    f"asked for calibration images instead): {tensorrt_messages(mark)}"
                )
            if serialized is None:
                raise ExportError(
                    f"TensorRT could not build an engine of '{network_model}' ({precision}"
                    + (f", DLA core {dla_core}" if dla_core is not None else "")
                    + f"): {tensorrt_messages(mark)}"
                )
            placement = (
                _dla_layer_placement(serialized, layer_names, dla_core, mark) if dla_core is not None else None
            )
            engine_path = bundle.path / engine_file_name(precision)
            with atomic_file(engine_path) as file:
                file.write(memoryview(serialized))
            if cache_path is not None:
                atomic_write_bytes(bytes(memoryview(config.get_timing_cache().serialize())), cache_path)
    source_precision = "fp32" if weakly_typed and precision == "fp16" else precision
    entry: dict[str, Any] = {
        "file": engine_path.name,
        "precision": precision,
        "sha256": sha256_file(engine_path),
        "bytes": engine_path.stat().st_size,
        "tensorrt_version": trt.__version__,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_model": {
            "file": bundle.model_path(source_precision).name,
            "sha256": bundle.manifest["models"][source_precision]["sha256"],
        },
        "options": {
            "batch": {"min": low, "opt": opt, "max": high},
            "workspace_mb": workspace_mb,
            "dla_core": dla_core,
            "version_compatible": version_compatible,
            "timing_cache": str(cache_path) if cache_path is not None else None,
            "strongly_typed": not weakly_typed,
            "tf32": precision != "fp32",
            "build_s": round(build_s, 3),
        },
    }
    if placement is not None:
        placement["build"] = "weakly typed" if weakly_typed else "strongly typed"
        placement["network"] = network_note
        if weakly_typed:
            placement["precision_flags"] = ["FP16", "INT8"] if precision == "int8" else ["FP16"]
        if scales:
            placement["int8_scales"] = len(scales)
        entry["dla"] = placement
        if placement["layers_on_dla"] == 0:
            warnings.warn(
                f"the {precision} engine of '{bundle.path}' built for DLA core {dla_core} runs no layer on the DLA: "
                f"every layer fell back to the GPU (see manifest engines.{precision}.dla)",
                stacklevel=2,
            )
    _record_engine(bundle.path, precision, entry)
    return engine_path


def _network_model(
    bundle: ExportBundle, precision: str, weakly_typed: bool, scratch: Path
) -> tuple[Path, dict[str, float], str]:
    """The ONNX file TensorRT parses for ``precision``, the INT8 scales of its tensors (for a calibration cache) and
    a line saying what it is. A strongly typed build parses the precision's own model. The weakly typed DLA build
    parses the FP32 model for fp16 (the FP16 flag makes it FP16) and, for int8, the INT8 model without its Q/DQ nodes
    (written to ``scratch``), whose activation scales become the calibration cache."""
    model_path = bundle.model_path(precision)
    if not weakly_typed:
        return model_path, {}, f"{model_path.name}, strongly typed"
    if precision == "fp16":
        fp32 = bundle.model_path("fp32")
        return fp32, {}, f"{fp32.name} built with the FP16 flag (weakly typed: the DLA computes FP16)"
    try:
        import onnx
    except ImportError as error:
        raise ConfigError(
            f"building the int8 engine for the DLA reads the Q/DQ model's scales with onnx, which cannot be imported "
            f"here ({error}): pip install onnx (or pip install 'edgereid[jetson-jp6]')"
        ) from None
    stripped, scales = strip_qdq(onnx.load(str(model_path)))
    if not scales:
        raise ExportError(f"'{model_path}' has no activation quantized per tensor: it is not an INT8 Q/DQ model")
    network_model = scratch / f"{model_path.stem}.noqdq.onnx"
    onnx.save(stripped, str(network_model))
    note = (
        f"{model_path.name} without its Q/DQ nodes, its {len(scales)} activation scales as a calibration cache "
        "(weakly typed: FP16 and INT8 flags, FP16 where a tensor has no scale)"
    )
    return network_model, scales, note


def _cache_calibrator(cache: bytes, batch_size: int) -> Any:
    """An INT8 calibrator that hands TensorRT ``cache`` and no calibration data: the scales were chosen at export
    (the Q/DQ model's), so nothing is calibrated here. ``asked_for_data`` turns true if TensorRT rejected the cache
    and wanted images instead."""
    import tensorrt as trt

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.asked_for_data = False

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            self.asked_for_data = True
            return []  # no data: TensorRT must take its scales from the cache

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, cache: Any) -> None:
            pass

    return CacheCalibrator()


def _dla_layer_placement(serialized: Any, layer_names: list[str], dla_core: int, mark: int) -> dict[str, Any]:
    """Where the layers of the just-built DLA engine run, from its engine inspector (see ``dla_placement``)."""
    import tensorrt as trt

    runtime = trt.Runtime(tensorrt_logger())
    runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise ExportError(
            f"TensorRT built an engine for DLA core {dla_core} but cannot load it to inspect it: "
            f"{tensorrt_messages(mark)}"
        )
    inspector = engine.create_engine_inspector()
    information = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, engine, runtime
    return dla_placement(information, layer_names, dla_core)


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
    with exclusive(bundle_path, "bundle"):
        manifest = read_manifest(bundle_path)
        manifest.setdefault("engines", {})[precision] = entry
        text = manifest_text(manifest)
        validate_manifest(json.loads(text), manifest_path)  # an entry load_bundle would refuse is never written
        atomic_write_text(manifest_path, text)


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_WORKSPACE_MB",
    "DLA_PRECISIONS",
    "ENGINE_PRECISIONS",
    "EngineCompatibilityError",
    "build_engine",
    "check_batch_range",
    "check_engine_compatible",
    "engine_file_name",
    "parse_batch",
    "require_tensorrt",
    "tensorrt_logger",
    "tensorrt_messages",
]
