"""Errors that reach the user as one clear message instead of a traceback.

Every error names the file, key or value at fault and what was expected; the CLI prints the message and exits
with the error's exit code.
"""

from __future__ import annotations


class EdgeReIDError(Exception):
    """Base class of every error edgereid reports to its user."""

    exit_code = 1


class DataError(EdgeReIDError):
    """A data set root, layout, file name or image is not what a reader expects."""

    exit_code = 2


class ConfigError(EdgeReIDError):
    """A recipe, policy or command-line value is invalid."""

    exit_code = 2


class ModelError(EdgeReIDError):
    """A model cannot be traced or transformed (folded, quantized) as asked."""

    exit_code = 1


class ExportError(EdgeReIDError):
    """The model could not be turned into a valid ONNX file (or a reduced-precision one)."""

    exit_code = 1
