"""The reduced-precision models of a bundle, converted from its FP32 ONNX file.

- FP16: onnxconverter-common's float16 conversion, inputs and outputs kept float32 (so the bundle's interface does
  not change with its precision).
- INT8: nvidia-modelopt's ONNX post-training quantization (explicit Q/DQ nodes, as TensorRT consumes them),
  calibrated on images drawn from the TRAIN split only (:mod:`edgereid.export.calibration`), on the CPU with ONNX
  Runtime. The Q/DQ file keeps float32 weights with their scales beside them; TensorRT builds the INT8 kernels.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from edgereid.atomic import atomic_write_bytes
from edgereid.errors import ConfigError, DataError
from edgereid.export.bundle import ExportError
from edgereid.export.calibration import (
    CALIBRATION_POLICY,
    DEFAULT_CALIBRATION_IMAGES,
    select_calibration_records,
)
from edgereid.recipes.schema import DataConfig

INT8_CALIBRATION_METHOD = "entropy"


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


def calibration_batch(data: DataConfig, num_images: int | None, seed: int) -> tuple[Any, list[str]]:
    """The calibration images (N×3×H×W float32, normalised as the bundle's input) and their paths, from the train
    split of the recipe's data."""
    from edgereid.export.bundle import preprocess
    from edgereid.training.data import decode_split, prepare_dataset

    dataset = prepare_dataset(data)
    records = select_calibration_records(
        dataset.train, DEFAULT_CALIBRATION_IMAGES if num_images is None else num_images, seed
    )
    decoded = decode_split(records, data, "calibration")
    if len(decoded.images) == 0:
        raise DataError(f"none of the {len(records)} calibration images from '{data.root}' could be decoded")
    return preprocess(decoded.images, data.mean, data.std), [str(record.path) for record in decoded.records]


def quantize_int8(
    fp32_path: Path,
    target: Path,
    data: DataConfig,
    *,
    num_images: int | None = None,
    seed: int = 0,
    method: str = INT8_CALIBRATION_METHOD,
) -> dict[str, Any]:
    """``fp32_path`` quantized to INT8 Q/DQ at ``target``, calibrated on train images of ``data``."""
    _require("modelopt", "nvidia-modelopt", "int8")
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as error:
        raise ConfigError(
            f"precision 'int8' needs nvidia-modelopt's ONNX quantization, which cannot be imported here ({error})"
        ) from None
    calibration, paths = calibration_batch(data, num_images, seed)
    # modelopt writes intermediate files beside its input: work on a copy in a scratch directory.
    with tempfile.TemporaryDirectory(prefix="edgereid-int8-") as scratch:
        source = Path(scratch) / "model.onnx"
        output = Path(scratch) / "model.int8.onnx"
        shutil.copyfile(fp32_path, source)
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                quantize(
                    str(source),
                    quantize_mode="int8",
                    calibration_data=calibration,
                    calibration_method=method,
                    calibration_eps=["cpu"],
                    high_precision_dtype="fp32",
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
        "calibration": {
            "policy": CALIBRATION_POLICY,
            "split": "train",
            "method": method,
            "images": len(paths),
            "seed": seed,
            "sha256_of_paths": _digest(paths),
        },
    }


def _digest(paths: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(paths).encode()).hexdigest()
