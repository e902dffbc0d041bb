"""Export: checkpoint → folded model → ONNX (FP32, and FP16/INT8 where their tools are installed) → a verified
bundle directory with a manifest (see docs/ARCHITECTURE.md, "Export").

The bundle format itself (``load_bundle``, ``ExportBundle``, the manifest schema) lives in :mod:`edgereid.bundle_format`,
below export and runtime alike; it is re-exported here. The names that need torch (folding, ONNX export) are imported
on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgereid.errors import ExportError
from edgereid.export.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    PRECISIONS,
    ExportBundle,
    export_checkpoint,
    load_bundle,
    verify_bundle,
)
from edgereid.export.calibration import select_calibration_records
from edgereid.export.options import ExportOptions, load_export_options

if TYPE_CHECKING:
    from edgereid.export.onnx_export import export_onnx
    from edgereid.modeling.fold import count_batchnorm, fold_batchnorm, fold_batchnorm_with_report

_LAZY = {
    "count_batchnorm": "edgereid.modeling.fold",
    "fold_batchnorm": "edgereid.modeling.fold",
    "fold_batchnorm_with_report": "edgereid.modeling.fold",
    "export_onnx": "edgereid.export.onnx_export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgereid.export' has no attribute {name!r}")


__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "PRECISIONS",
    "ExportBundle",
    "ExportError",
    "ExportOptions",
    "count_batchnorm",
    "export_checkpoint",
    "export_onnx",
    "fold_batchnorm",
    "fold_batchnorm_with_report",
    "load_bundle",
    "load_export_options",
    "select_calibration_records",
    "verify_bundle",
]
