"""The reduced-precision models of a bundle, converted from its FP32 ONNX file.

- FP16: onnxconverter-common's float16 conversion, inputs and outputs kept float32 (so the bundle's interface does
  not change with its precision).
- INT8, two targets from one calibration set (drawn from the TRAIN split only, :mod:`edgereid.export.calibration`):
  - ``int8`` (target ``trt``): nvidia-modelopt's ONNX post-training quantization, explicit symmetric Q/DQ placed
    where TensorRT fuses them; each float32 weight behind its own QuantizeLinear/DequantizeLinear pair with per-channel
    scales (what modelopt writes without ``dq_only``), which TensorRT folds into INT8 weights when it builds. The
    layers left unquantized (and the graph around the INT8 ones) are float16, modelopt's ``high_precision_dtype``:
    a strongly typed TensorRT engine runs exactly the types of its ONNX graph, and INT8 + FP16 is faster there than
    INT8 + FP32. ONNX Runtime executes the same float16 graph for verification, so what is verified is what is
    deployed (docs/BENCHMARKS.md, "INT8 for TensorRT: float32 or float16 around the INT8 layers"). On ONNX
    Runtime's CPU provider this graph runs slower than FP32 (its Q/DQ pairs are not fused there).
  - ``int8_cpu`` (target ``cpu``): ONNX Runtime's static quantization, QDQ format with per-channel int8 weights and
    uint8 activations, the form ONNX Runtime's CPU kernels fuse into integer convolutions.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgereid.atomic import atomic_write_bytes
from edgereid.errors import ConfigError, ExportError
from edgereid.export.calibration import (
    DEFAULT_CACHE_DIR,
    CalibrationPolicy,
    CalibrationSet,
    load_calibration_set,
    select_calibration_records,
)
from edgereid.recipes.schema import DataConfig

if TYPE_CHECKING:
    from onnxruntime.quantization import CalibrationMethod

    from edgereid.data.records import ImageRecord

# Precision key → quantization target: the TensorRT Q/DQ model and the ONNX Runtime CPU model.
INT8_PRECISIONS = {"int8": "trt", "int8_cpu": "cpu"}
# What the TensorRT-target INT8 model computes its non-INT8 layers in (recorded in the manifest).
TENSORRT_HIGH_PRECISION = "fp16"
TARGETS = {"trt": ("int8",), "cpu": ("int8_cpu",), "both": ("int8", "int8_cpu")}
CALIBRATION_METHODS = ("entropy", "max", "percentile")
DEFAULT_CALIBRATION_METHOD = "entropy"
# modelopt's INT8 PTQ knows entropy and max (its max is ORT's MinMax with symmetric ranges).
_MODELOPT_METHODS = ("entropy", "max")
# The op types whose weights are quantized: the layers that can be kept in float to buy accuracy back.
QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_CALIBRATION_BATCH = 32
# Part of the tensor ranges cache's key: bumped when its layout changes, so an older cache is never read.
_RANGES_CACHE_FORMAT = 2
_ORT_CALIBRATION_METHOD_NAMES = {"entropy": "Entropy", "max": "MinMax", "percentile": "Percentile"}
logger = logging.getLogger(__name__)


def _require(module: str, package: str, precision: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"precision {precision!r} needs the {package} package, which is not installed here; "
            f"install it with: pip install {package}"
        )


def convert_fp16(fp32_path: Path, target: Path) -> dict[str, Any]:
    """``fp32_path`` converted to FP16 weights and arithmetic at ``target``; float32 inputs and outputs."""
    _require("onnxconverter_common", "onnxconverter-common", "fp16")
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(fp32_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight below FP16's smallest normal, which is clamped
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    try:
        onnx.checker.check_model(converted)
    except Exception as error:
        raise ExportError(f"the FP16 graph for '{target}' fails onnx.checker: {error}") from error
    atomic_write_bytes(converted.SerializeToString(), target)
    return {"converter": "onnxconverter-common float16", "io_dtype": "float32"}


def check_calibration_method(method: str, precisions: Sequence[str]) -> None:
    """A ConfigError when ``method`` is unknown or one of the INT8 ``precisions``' quantizers lacks it."""
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATION_METHODS)}")
    if "int8" in precisions and method not in _MODELOPT_METHODS:
        raise ConfigError(
            f"calibration method {method!r} is not supported by the TensorRT target (nvidia-modelopt knows "
            f"{', '.join(_MODELOPT_METHODS)}); use --target cpu for {method!r} or pick another method"
        )


def prepare_calibration(
    data: DataConfig,
    policy: CalibrationPolicy,
    *,
    num_images: int | None = None,
    cache_dir: Path | None = None,
) -> tuple[CalibrationSet, list[ImageRecord]]:
    """The calibration set drawn by ``policy`` from the train split of the recipe's data (decoded through the
    calibration cache: ``cache_dir``, else ``data.cache_dir``/calibration, else ``~/.cache/edgereid/calibration``),
    and the train records, so that images not used for calibration can be held out for evaluation."""
    from edgereid.training.data import prepare_dataset

    dataset = prepare_dataset(data)
    wanted = policy.images if num_images is None else num_images
    records = select_calibration_records(policy.eligible(dataset.train), wanted, policy.seed)
    if cache_dir is None:
        cache_dir = Path(data.cache_dir) / "calibration" if data.cache_dir is not None else DEFAULT_CACHE_DIR
    calibration = load_calibration_set(
        records, (int(data.size[0]), int(data.size[1])), data.mean, data.std, policy=policy, cache_dir=cache_dir,
        strict=data.strict_images,
    )
    return calibration, list(dataset.train)


def quantize_int8(
    fp32_path: Path,
    target: Path,
    calibration: CalibrationSet,
    *,
    method: str = DEFAULT_CALIBRATION_METHOD,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """``fp32_path`` quantized for TensorRT (modelopt INT8 Q/DQ) at ``target``; ``exclude`` names nodes of the FP32
    graph to keep in float32."""
    _require("modelopt", "nvidia-modelopt", "int8")
    check_calibration_method(method, ["int8"])
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as error:
        raise ConfigError(
            f"precision 'int8' needs nvidia-modelopt's ONNX quantization, which cannot be imported here ({error})"
        ) from None
    # modelopt writes intermediate files beside its input: work on a copy in a scratch directory.
    with tempfile.TemporaryDirectory(prefix="edgereid-int8-") as scratch:
        source = Path(scratch) / "model.onnx"
        output = Path(scratch) / "model.int8.onnx"
        shutil.copyfile(fp32_path, source)
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), _ort_patches_undone():
                quantize(
                    str(source),
                    quantize_mode="int8",
                    calibration_data=calibration.images,
                    calibration_method=method,
                    calibration_eps=["cpu"],
                    # modelopt's node filters are regular expressions: match each excluded name exactly.
                    nodes_to_exclude=[f"^{re.escape(name)}$" for name in exclude] or None,
                    high_precision_dtype=TENSORRT_HIGH_PRECISION,
                    output_path=str(output),
                    log_level="ERROR",
                )
        except Exception as error:
            raise ExportError(
                f"INT8 quantization of '{fp32_path}' failed ({type(error).__name__}: {error}); "
                f"modelopt's output: {quiet.getvalue()[-2000:]}"
            ) from error
        finally:
            logging.getLogger().handlers[:] = [
                handler for handler in logging.getLogger().handlers if "modelopt" not in type(handler).__module__
            ]
        if not output.is_file():
            raise ExportError(f"INT8 quantization of '{fp32_path}' wrote no model; modelopt said: {quiet.getvalue()[-2000:]}")
        atomic_write_bytes(output.read_bytes(), target)
    import modelopt

    return {
        "quantizer": f"nvidia-modelopt {modelopt.__version__} onnx int8 (Q/DQ)",
        "target": "trt",
        "high_precision_dtype": TENSORRT_HIGH_PRECISION,
        "calibration": {**calibration.record(), "method": method},
    }


@contextlib.contextmanager
def _ort_patches_undone() -> Iterator[None]:
    """Undo, on exit, modelopt's process-wide monkey-patching of ONNX Runtime's quantization classes: its patched
    calibrators are written for modelopt's own use and break a plain ``quantize_static`` run afterwards (the
    ``cpu`` target, the sensitivity probes)."""
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer

    owners: list[Any] = [
        calibrate,
        calibrate.CalibraterBase,
        calibrate.MinMaxCalibrater,
        calibrate.HistogramCalibrater,
        calibrate.HistogramCollector,
        qdq_quantizer.QDQQuantizer,
        base_quantizer.BaseQuantizer,
    ]
    saved = [(owner, dict(vars(owner))) for owner in owners]
    try:
        yield
    finally:
        for owner, attributes in saved:
            for name, value in list(vars(owner).items()):
                if name not in attributes:
                    delattr(owner, name)
                elif attributes[name] is not value:
                    setattr(owner, name, attributes[name])


class BatchReader:
    """ONNX Runtime's CalibrationDataReader protocol over the calibration batch, in slices of a fixed size."""

    def __init__(self, images: np.ndarray, input_name: str) -> None:
        self._images = images
        self._input_name = input_name
        self._batches: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = iter(
            {self._input_name: self._images[start : start + _CALIBRATION_BATCH]}
            for start in range(0, len(self._images), _CALIBRATION_BATCH)
        )


class OrtQuantizer:
    """ONNX Runtime static quantization of one FP32 model with one calibration set, the tensor ranges computed once
    (and cached on disk beside the calibration batch) so that quantizing again with other nodes kept in float —
    what the accuracy-aware loop does — costs no calibration.

    ``symmetric=False`` is the ``cpu`` target: uint8 activations and per-channel int8 weights, 7-bit weight range
    (``reduce_range``) because x86 CPUs without VNNI saturate the 16-bit sums of u8×s8 products otherwise, as
    ONNX Runtime's guidance says. ``symmetric=True`` reproduces the TensorRT target's scheme (symmetric int8
    activations and weights, as modelopt asks of the same quantizer) to measure layer sensitivity for it.
    """

    def __init__(
        self, fp32_path: Path, calibration: CalibrationSet, scratch: Path, *, method: str, symmetric: bool,
        preprocess: bool = True,
    ) -> None:
        _require("onnxruntime", "onnxruntime", "int8_cpu")
        check_calibration_method(method, [])
        from onnxruntime.quantization import QuantType

        self.method = method
        self.symmetric = symmetric
        self.calibration = calibration
        self.source = scratch / f"source-{'sym' if symmetric else 'cpu'}.onnx"
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            # Shape inference and ORT's graph optimisation first, as ONNX Runtime recommends before quantizing.
            quant_pre_process(str(fp32_path), str(self.source))
        else:
            shutil.copyfile(fp32_path, self.source)
        self.activation_type = QuantType.QInt8 if symmetric else QuantType.QUInt8
        self.reduce_range = not symmetric
        import onnx

        graph = onnx.load(str(self.source)).graph
        self.input_name = graph.input[0].name
        # The layers whose weights are quantized (name → op type): those that can be kept in float.
        self.candidates = {node.name: node.op_type for node in graph.node if node.op_type in QUANTIZED_OP_TYPES}
        source_digest = hashlib.sha256(self.source.read_bytes()).hexdigest()
        key = hashlib.sha256(
            json.dumps([_RANGES_CACHE_FORMAT, source_digest, calibration.data_sha256, method, symmetric]).encode()
        ).hexdigest()[:32]
        self.ranges_cache = calibration.cache_file.with_name(f"{calibration.cache_file.stem}-ranges-{key}.json")
        self.ranges = self._cached_ranges()
        self.ranges_cache_hit = self.ranges is not None

    def _cached_ranges(self) -> dict[str, Any] | None:
        """The tensor ranges of the cache, checked; None when there are none yet or (with a warning naming the file)
        when they are damaged: a cache is disposable, so calibrating again beats quantizing with wrong ranges."""
        problem: str | None
        try:
            content = json.loads(self.ranges_cache.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            problem = f"it is not readable JSON: {error}"
        else:
            problem = self._ranges_problem(content)
        if problem is None:
            ranges: dict[str, Any] = content["ranges"]
            return ranges
        logger.warning("tensor ranges cache %s cannot be used (%s); calibrating again", self.ranges_cache, problem)
        return None

    def _ranges_problem(self, content: Any) -> str | None:
        """What makes ``content`` other than the checksummed, finite ranges of this quantizer's method; None if
        nothing does."""
        from onnxruntime.quantization.calibrate import TensorsData

        if not isinstance(content, dict) or not isinstance(content.get("ranges"), dict):
            return "expected a JSON object with the tensor ranges under 'ranges'"
        if content.get("sha256") != _ranges_digest(content["ranges"]):
            return "its ranges do not match the sha256 recorded beside them: the file was changed"
        try:
            tensors = TensorsData.from_dict(content["ranges"])
            bounds = [(np.asarray(tensor.lowest), np.asarray(tensor.highest)) for tensor in tensors.values()]
        except (LookupError, TypeError, ValueError, AttributeError) as error:
            return f"its ranges are not ONNX Runtime's tensor ranges ({type(error).__name__}: {error})"
        if tensors.calibration_method != _ort_calibration_method(self.method):
            return f"its ranges were calibrated with {tensors.calibration_method}, expected {self.method}"
        if not bounds or not all(
            np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high) for low, high in bounds
        ):
            return "expected a finite lowest <= highest for every tensor"
        return None

    def quantize(
        self, target: Path, *, exclude: Sequence[str] = (), only: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Write the quantized model to ``target``: every candidate layer but ``exclude``, or ``only`` those."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        extra_options: dict[str, Any] = {}
        if self.symmetric:
            extra_options.update(ActivationSymmetric=True, WeightSymmetric=True)
        filtered = bool(exclude) or only is not None
        with tempfile.TemporaryDirectory(prefix="edgereid-int8-cpu-") as scratch:
            output = Path(scratch) / "model.onnx"
            if filtered and self.ranges is None:
                # A filtered run calibrates only its own tensors; cache the ranges of every layer first.
                self.quantize(output)
            # ONNX Runtime reads the ranges from a file when it exists and writes them there when it does not: a
            # scratch copy of the checked ones, so it never reads the cache unchecked.
            ranges_file = Path(scratch) / "ranges.json"
            if self.ranges is not None:
                ranges_file.write_text(json.dumps(self.ranges))
            quiet = io.StringIO()
            try:
                with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                    quantize_static(
                        str(self.source),
                        str(output),
                        BatchReader(self.calibration.images, self.input_name),
                        quant_format=QuantFormat.QDQ,
                        per_channel=True,
                        reduce_range=self.reduce_range,
                        activation_type=self.activation_type,
                        weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OP_TYPES) if only is None else None,
                        nodes_to_quantize=list(only) if only is not None else None,
                        nodes_to_exclude=list(exclude) or None,
                        calibrate_method=_ort_calibration_method(self.method),
                        extra_options=extra_options,
                        calibration_cache_path=str(ranges_file),
                    )
            except Exception as error:
                raise ExportError(
                    f"ONNX Runtime INT8 quantization of '{self.source.name}' failed ({type(error).__name__}: "
                    f"{error}); its output: {quiet.getvalue()[-2000:]}"
                ) from error
            if self.ranges is None and not filtered:
                self.ranges = json.loads(ranges_file.read_text())
                ranges = {"ranges": self.ranges, "sha256": _ranges_digest(self.ranges)}
                atomic_write_bytes(json.dumps(ranges).encode(), self.ranges_cache)
            atomic_write_bytes(output.read_bytes(), target)
        import onnxruntime

        return {
            "quantizer": f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ, per-channel)",
            "target": "cpu",
            "activation_type": "uint8" if not self.symmetric else "int8",
            "weight_type": "int8",
            "reduce_range": self.reduce_range,
            "calibration": {
                **self.calibration.record(), "method": self.method, "ranges_cache_hit": self.ranges_cache_hit,
            },
        }


def _ort_calibration_method(method: str) -> CalibrationMethod:
    from onnxruntime.quantization import CalibrationMethod

    return CalibrationMethod[_ORT_CALIBRATION_METHOD_NAMES[method]]


def _ranges_digest(ranges: dict[str, Any]) -> str:
    """sha256 of the ranges' canonical JSON: the same for the ranges ONNX Runtime wrote and those read back."""
    return hashlib.sha256(json.dumps(ranges, sort_keys=True).encode()).hexdigest()


def quantize_int8_cpu(
    fp32_path: Path,
    target: Path,
    calibration: CalibrationSet,
    *,
    method: str = DEFAULT_CALIBRATION_METHOD,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """``fp32_path`` quantized for ONNX Runtime's CPU kernels at ``target`` (see :class:`OrtQuantizer`)."""
    with tempfile.TemporaryDirectory(prefix="edgereid-int8-cpu-") as scratch:
        quantizer = OrtQuantizer(fp32_path, calibration, Path(scratch), method=method, symmetric=False)
        return quantizer.quantize(target, exclude=exclude)
