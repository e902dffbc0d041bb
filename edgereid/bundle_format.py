"""The bundle format: the contract between export, which writes bundles, and the runtime, which reads them.

A bundle is a directory holding ``manifest.json`` and the files it lists (``model.<precision>.onnx``, and the
``engine.<precision>.plan`` files ``edgereid build`` adds). :class:`BundleManifest` is the manifest's schema
(pydantic, like the recipes' :class:`edgereid.recipes.Recipe`); :func:`load_bundle` reads a bundle and checks it
on every load: the manifest against the schema, each file against its sha256, and — where ``onnx`` is installed —
the manifest's input and output against the FP32 model's graph. Whatever is wrong becomes one
:class:`~edgereid.errors.DataError` line naming the manifest, the key and what was expected, never a traceback.

This module sits below both sides: it imports pydantic, numpy-free standard library and :mod:`edgereid.errors`
only — never torch, ``edgereid.export``, ``edgereid.runtime`` or ``edgereid.training`` — so a device without
torch reads bundles with exactly the code that wrote their schema.

Schema policy. Records are *strict* (JSON types as written: ``"64"`` is not a height, ``true`` is not a count) and
*open* (``extra="allow"``): a key this version does not know is kept and ignored, so a bundle that a later edgereid
of the same format version enriched still loads here, while every key this version's readers use is declared,
typed and required where a reader indexes it. An incompatible change bumps :data:`BUNDLE_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgereid.errors import ConfigError, DataError
from edgereid.jsonfile import json_type, read_json_object

BUNDLE_FORMAT = "edgereid-bundle"
BUNDLE_VERSION = 1
MANIFEST_NAME = "manifest.json"
# The sha256 of the manifest's own content (every other key), so a damaged manifest is refused like a damaged model.
MANIFEST_CHECKSUM = "manifest_sha256"

# "int8" is the TensorRT-target Q/DQ model (engines are built from it), "int8_cpu" the ONNX Runtime CPU model.
Precision = Literal["fp32", "fp16", "int8", "int8_cpu"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
# int8_cpu is quantised for ONNX Runtime's CPU kernels; int8 is the Q/DQ model laid out for TensorRT.
EnginePrecision = Literal["fp32", "fp16", "int8"]
ENGINE_PRECISIONS: tuple[str, ...] = typing.get_args(EnginePrecision)

# The model's one input and one output, as every bundle model names them.
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
# The only pixel scale the runtime applies (uint8 → [0, 1], then mean/std: ``edgereid.data.images.normalize_images``).
PIXEL_SCALE = 1.0 / 255.0

# ONNX Runtime graph optimisations every edgereid session turns off. WeightBiasQuantization (ONNX Runtime 1.21+)
# quantizes, at load time, the float weights of a layer that sits between a DequantizeLinear and a QuantizeLinear —
# exactly the layers an INT8 model keeps in float — per tensor: on a fine-tuned MobileNetV2 (market1501-holdout) one
# such layer took the embeddings' cosine to FP32 from 0.87 to 0.01. Other ONNX Runtime users of these models should
# pass the same list (``InferenceSession(..., disabled_optimizers=[...])``); older versions ignore the name.
ORT_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)

# The INT8 budget (mAP points against FP32) a post-training quantized export is held to unless it opts out
# (``max_map_drop=None``, ``--max-map-drop none``): the accuracy-aware search keeps layers in float until it holds.
DEFAULT_MAX_MAP_DROP = 0.5
# |ΔmAP| in mAP points (percent) that verification accepts against the reference, per precision. FP32 and FP16
# differ by rounding only; INT8 may lose up to half a point (the default INT8 budget; the demo's models measured
# -0.45 to +0.11): beyond it verification fails loudly instead of shipping a silently broken model.
MAP_TOLERANCE_POINTS: dict[str, float | None] = {
    "fp32": 0.1, "fp16": 0.5, "int8": DEFAULT_MAX_MAP_DROP, "int8_cpu": DEFAULT_MAX_MAP_DROP,
}


def model_file_name(precision: str) -> str:
    return f"model.{precision}.onnx"


def engine_file_name(precision: str) -> str:
    return f"engine.{precision}.plan"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The schema


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


def _inside_the_bundle(name: str) -> str:
    if name in (".", ".."):
        raise ValueError("expected a file name inside the bundle (no directory part)")
    return name


FileName = Annotated[
    str,
    Field(pattern=r"^[^/\\]+$", description="a file name inside the bundle (no directory part)"),
    AfterValidator(_inside_the_bundle),
]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="a sha256 (64 lowercase hex digits)")]
Count = Annotated[int, Field(ge=0)]
Points = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class InputSpec(_Record):
    """The model's input: one float32 N×3×H×W tensor of RGB pixels × ``scale``, less ``mean``, over ``std``."""

    model_config = ConfigDict(allow_inf_nan=False)

    name: str = Field(min_length=1)
    layout: Literal["NCHW"]
    dtype: Literal["float32"]
    color: Literal["RGB"]
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    scale: float = Field(description=f"{PIXEL_SCALE!r} (1/255, the only pixel scale the runtime applies)")
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=3, max_length=3)
    dynamic_batch: bool

    @field_validator("scale")
    @classmethod
    def _the_runtime_scale(cls, value: float) -> float:
        if not math.isclose(value, PIXEL_SCALE, rel_tol=1e-9):
            raise ValueError(f"expected {PIXEL_SCALE!r} (1/255, the only pixel scale the runtime applies)")
        return value


class OutputSpec(_Record):
    """The model's output: float32 N×``feature_dim`` embeddings, not L2-normalised (the runtime normalises)."""

    name: str = Field(min_length=1)
    feature_dim: int = Field(ge=1)
    normalized: bool


class TestSpec(_Record):
    """How the model is tested: flip averaging, and the metric (cosine: L2-normalised inner product)."""

    flip: bool
    metric: Literal["cosine"]


class DataRecord(_Record):
    """How the recipe reads its data set, so that a runtime without the checkpoint (or torch) can verify on it."""

    root: str
    format: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    holdout: dict[str, Any] | None = None


class ModelRecord(_Record):
    """One ONNX model of the bundle; a quantized one also says how it was quantized (open: the quantizers' records
    grow with them)."""

    file: FileName
    sha256: Sha256
    bytes: Count | None = None
    tolerance_mAP_points: Points | None = None
    quantizer: str | None = None
    target: str | None = None
    calibration: dict[str, Any] | str | None = None
    accuracy: dict[str, Any] | None = None
    equalization: dict[str, Any] | None = None


class SourceRecord(_Record):
    """The checkpoint the bundle was exported from (the torch runner and verification rebuild the network)."""

    checkpoint: str
    epoch: int | None = None
    iteration: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class EngineBatch(_Record):
    min: int = Field(ge=1)
    opt: int = Field(ge=1)
    max: int = Field(ge=1)


class EngineOptions(_Record):
    """How ``edgereid build`` built an engine."""

    batch: EngineBatch | None = None
    workspace_mb: int | None = Field(None, ge=1)
    dla_core: int | None = Field(None, ge=0)
    version_compatible: bool = False
    timing_cache: str | None = None
    strongly_typed: bool | None = None
    tf32: bool | None = None
    build_s: float | None = None


class DlaPlacement(_Record):
    """Where an engine built for a DLA core runs its layers, as its engine inspector reported it."""

    core: Count
    layers: Count
    layers_on_dla: Count
    gpu_fallback: list[str] = Field(default_factory=list)
    dla_subgraphs: list[str] = Field(default_factory=list)


class SourceModel(_Record):
    file: FileName
    sha256: Sha256


class EngineRecord(_Record):
    """A TensorRT engine of the bundle: the file, and what it runs on (the runtime's compatibility rule reads
    ``tensorrt_version``, ``gpu``, ``compute_capability`` and ``options``)."""

    file: FileName
    sha256: Sha256
    precision: EnginePrecision | None = None
    bytes: Count | None = None
    tensorrt_version: str = Field(min_length=1)
    gpu: str
    compute_capability: str = Field(pattern=r"^\d+\.\d+$", description='a compute capability as a string, "major.minor"')
    created: str | None = None
    source_model: SourceModel | None = None
    options: EngineOptions = Field(default_factory=EngineOptions)
    dla: DlaPlacement | None = None


class VerificationRecord(_Record):
    """``verify_bundle``'s result: per precision, accuracy against the PyTorch model and whether it passed."""

    passed: bool
    precisions: dict[str, dict[str, Any]]


class QuantizationAwareRecord(_Record):
    """A quantization-aware trained checkpoint's bundle: its FP32/FP16 models are the network QAT started from."""

    scheme: str
    fp32_from: dict[str, Any] | None = None


class BundleManifest(_Record):
    """``manifest.json`` of format :data:`BUNDLE_FORMAT`, version :data:`BUNDLE_VERSION`."""

    format: Literal["edgereid-bundle"]
    format_version: Literal[1]
    edgereid_version: str | None = None
    created: str | None = None
    recipe: str
    network: str
    backbone: str
    ibn: str | None = None
    input: InputSpec
    output: OutputSpec
    test: TestSpec
    data: DataRecord | None = None
    opset: int | None = Field(None, ge=1)
    simplifier: str | None = None
    folded: bool | None = None
    fold: dict[str, Any] | None = None
    models: dict[Precision, ModelRecord]
    parity_random_input: dict[str, dict[str, float]] | None = None
    source: SourceRecord
    timings: dict[str, float] | None = None
    verification: VerificationRecord | None = None
    quantization_aware: QuantizationAwareRecord | None = None
    engines: dict[EnginePrecision, EngineRecord] = Field(default_factory=dict)
    params: Count | None = None
    # How the bundle was exported (``edgereid.export.ExportOptions``), so that it can be exported again.
    export_options: dict[str, Any] | None = None
    # Absent only in bundles written before manifests carried it (their content cannot be checked).
    manifest_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        if "fp32" not in self.models:
            raise ValueError(
                "models: expected an 'fp32' entry (the reference every other precision is converted from); it has "
                + (", ".join(self.models) or "none")
            )
        for precision, engine in self.engines.items():
            if engine.precision is not None and engine.precision != precision:
                raise ValueError(f"engines.{precision}.precision: expected {precision!r}, got {engine.precision!r}")
        return self


# ---------------------------------------------------------------------------------------------------------------
# Validation errors as one line


def validate_manifest(manifest: Any, source: str | Path) -> BundleManifest:
    """``manifest`` (the parsed JSON of the manifest file ``source``) against :class:`BundleManifest`; whatever
    does not fit is a DataError, one line naming ``source``, the key path and what was expected."""
    if not isinstance(manifest, Mapping):
        raise DataError(f"'{source}' is not a bundle manifest: expected a JSON object, got {json_type(manifest)}")
    try:
        return BundleManifest.model_validate(manifest)
    except ValidationError as error:
        raise DataError(f"'{source}' is not a valid bundle manifest: {describe_manifest_error(error)}") from None


def describe_manifest_error(error: ValidationError) -> str:
    """The first problem of ``error`` as ``key.path: expected …, got …``, and how many more there are."""
    problems = error.errors(include_url=False)
    # A union's members each report the same key: count keys, not reports.
    keys = {tuple(_walk(list(problem["loc"]))[0]) for problem in problems}
    more = len(keys) - 1
    return _describe_problem(problems[0]) + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _describe_problem(problem: Mapping[str, Any]) -> str:
    loc = list(problem["loc"])
    given = problem.get("input")
    if loc and loc[-1] == "[key]":  # a key a dict does not allow: loc is (..., the key, "[key]")
        annotation, _ = _field_at(loc[:-2])
        key_type = typing.get_args(_without_none(annotation))[0] if annotation is not None else None
        expected = _described(key_type, []) if key_type is not None else "another key"
        return f"{_path(loc[:-2])}: key {loc[-2]!r} is not allowed; expected {expected}"
    walked, annotation, info = _walk(loc)
    path = _path(walked)
    if problem["type"] == "value_error":  # a validator's own message says what it expected
        message = str(problem["msg"]).removeprefix("Value error, ")
        return message if not walked else f"{path}: {message}, got {_shown(given)}"
    expected = _expected(annotation, info) if annotation is not None else str(problem["msg"]).lower()
    if problem["type"] == "missing":
        return f"{path}: missing; expected {expected}"
    return f"{path}: expected {expected}, got {_shown(given)}"


def _walk(loc: list[Any]) -> tuple[list[Any], Any, Any]:
    """The longest prefix of ``loc`` that names a key of the schema, with that key's annotation and FieldInfo (a
    union member's name, which pydantic appends to a union's loc, ends the walk)."""
    walked: list[Any] = []
    annotation: Any = BundleManifest
    info: Any = None
    for part in loc:
        found = _step(annotation, part)
        if found is None:
            break
        annotation, info = found
        walked.append(part)
    return walked, annotation, info


def _field_at(loc: list[Any]) -> tuple[Any, Any]:
    walked, annotation, info = _walk(loc)
    return (annotation, info) if len(walked) == len(loc) else (None, None)


def _step(annotation: Any, part: Any) -> tuple[Any, Any] | None:
    annotation = _without_none(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(part, str) and part in annotation.model_fields:
            info = annotation.model_fields[part]
            return info.annotation, info
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and isinstance(part, str):
        return args[1], None
    if origin is list and isinstance(part, int):
        return args[0], None
    return None


def _without_none(annotation: Any) -> Any:
    """``X`` of ``X | None``; a wider union or anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _expected(annotation: Any, info: Any) -> str:
    """What a key of ``annotation`` (with the description and constraints of FieldInfo ``info``) holds, in words."""
    if info is not None and info.description:
        return str(info.description)
    return _described(annotation, list(getattr(info, "metadata", None) or []))


def _described(annotation: Any, metadata: list[Any]) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        described = next((meta.description for meta in args[1:] if getattr(meta, "description", None)), None)
        if described:
            return str(described)
        inner_metadata = [meta for arg in args[1:] for meta in (getattr(arg, "metadata", None) or [arg])]
        return _described(args[0], metadata + inner_metadata)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in args if arg is not type(None)]
        text = " or ".join(_described(member, metadata) for member in members)
        return text + (" or null" if len(members) < len(args) else "")
    if origin is Literal:
        return " or ".join(json.dumps(value) for value in args)
    if origin is list:
        size = _bounds(metadata)
        return f"a list of {size + ' ' if size else ''}{_plural(args[0])}"
    if origin is dict:
        return "a JSON object"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        required = [name for name, field in annotation.model_fields.items() if field.is_required()]
        return "a JSON object" + (f" with {', '.join(required)}" if required else "")
    base = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(
        annotation, "a value"
    )
    limits = _limits(metadata)
    return base + (f" {limits}" if limits else "")


def _plural(annotation: Any) -> str:
    singular = _described(annotation, [])
    for article, plural in (("a whole number", "whole numbers"), ("a number", "numbers"), ("a string", "strings")):
        if singular.startswith(article):
            return plural + singular[len(article):]
    return f"items ({singular})"


def _limits(metadata: list[Any]) -> str:
    words = []
    for meta in metadata:
        for attribute, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(meta, attribute, None)
            if value is not None:
                words.append(f"{sign} {value}")
    if any(getattr(meta, "min_length", None) == 1 for meta in metadata):
        words.append("(not empty)")
    return " and ".join(words)


def _bounds(metadata: list[Any]) -> str:
    low = next((meta.min_length for meta in metadata if getattr(meta, "min_length", None) is not None), None)
    high = next((meta.max_length for meta in metadata if getattr(meta, "max_length", None) is not None), None)
    if low is not None and low == high:
        return str(low)
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f"at least {low}" if low is not None else ""


def _path(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the manifest"


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    if isinstance(value, (dict, list)):
        text = f"a JSON {'object' if isinstance(value, dict) else 'list'} {text}"
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------------------------
# The bundle


@dataclass(frozen=True)
class ExportBundle:
    """A bundle directory and its manifest (the JSON object as written: unknown keys kept). From
    :func:`load_bundle` the manifest has been validated; one built in memory (during export, or the file-less
    description of a checkpoint for the torch runner) has not."""

    path: Path
    manifest: dict[str, Any]

    @property
    def precisions(self) -> list[str]:
        """The bundle's precisions, FP32 (the reference) first."""
        return [precision for precision in PRECISIONS if precision in self.manifest["models"]]

    def model_path(self, precision: str) -> Path:
        if precision not in self.manifest["models"]:
            raise ConfigError(
                f"bundle '{self.path}' has no {precision!r} model; it has {', '.join(self.manifest['models'])}"
            )
        return self.path / self.manifest["models"][precision]["file"]

    def tolerance(self, precision: str) -> float | None:
        """The |ΔmAP| budget (mAP points) this bundle's ``precision`` model is held to: the one it was exported
        with (``--max-map-drop``), else the default of its precision."""
        recorded = self.manifest["models"].get(precision, {}).get("tolerance_mAP_points")
        return float(recorded) if recorded is not None else MAP_TOLERANCE_POINTS.get(precision)

    @property
    def input_size(self) -> tuple[int, int]:
        spec = self.manifest["input"]
        return int(spec["height"]), int(spec["width"])

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["output"]["feature_dim"])

    @property
    def engines(self) -> dict[str, dict[str, Any]]:
        """The TensorRT engines ``edgereid build`` recorded, by precision (file, sha256, TensorRT version, GPU,
        compute capability, build options)."""
        engines: dict[str, dict[str, Any]] = self.manifest.get("engines", {})
        return engines

    def engine_path(self, precision: str) -> Path:
        if precision not in self.engines:
            built = ", ".join(self.engines) or "none"
            raise ConfigError(
                f"bundle '{self.path}' has no TensorRT engine for {precision!r} (engines built: {built}); build one "
                f"on the machine that will run it with: edgereid build {self.path} --precision {precision}"
            )
        return self.path / self.engines[precision]["file"]


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the bundle at ``path``, parsed and validated (format, version, schema); each failure one
    DataError line naming the file."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DataError(f"'{path}' is not an export bundle: it has no {MANIFEST_NAME}")
    manifest = read_json_object(manifest_path, "a bundle manifest")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise DataError(f"'{manifest_path}' is not an edgereid bundle manifest (format '{BUNDLE_FORMAT}')")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise DataError(
            f"bundle '{path}' has format version {manifest.get('format_version')}; this edgereid reads version "
            f"{BUNDLE_VERSION}"
        )
    validate_manifest(manifest, manifest_path)
    recorded = manifest.get(MANIFEST_CHECKSUM)
    if recorded is not None and recorded != _content_sha256(manifest):
        raise DataError(
            f"'{manifest_path}' does not match its {MANIFEST_CHECKSUM}: it was changed or damaged after it was "
            "written; export the bundle again (edgereid export CHECKPOINT --out DIR --overwrite)"
        )
    return manifest


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """``manifest`` as the JSON text a bundle stores, with the checksum of its content (:data:`MANIFEST_CHECKSUM`)
    computed anew: what every writer of a manifest writes."""
    content = json.loads(json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}, default=str))
    return json.dumps({**content, MANIFEST_CHECKSUM: _content_sha256(content)}, indent=2, sort_keys=True) + "\n"


def _content_sha256(manifest: Mapping[str, Any]) -> str:
    content = {key: value for key, value in manifest.items() if key != MANIFEST_CHECKSUM}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_bundle(path: str | Path) -> ExportBundle:
    """The bundle at ``path``: its manifest validated (:func:`read_manifest`), its model and engine files checked
    against their sha256, and its input and output checked against the FP32 model's graph (with ``onnx``)."""
    path = Path(path)
    manifest = read_manifest(path)
    for precision, entry in manifest["models"].items():
        file = path / entry["file"]
        if not file.is_file():
            raise DataError(f"bundle '{path}' lists {entry['file']} ({precision}) but the file is missing")
        if sha256_file(file) != entry["sha256"]:
            raise DataError(f"bundle '{path}': {entry['file']} does not match the sha256 in its manifest")
    for precision, entry in manifest.get("engines", {}).items():
        file = path / entry["file"]
        rebuild = f"rebuild it with: edgereid build {path} --precision {precision}"
        if not file.is_file():
            raise DataError(f"bundle '{path}' lists engine {entry['file']} ({precision}) but the file is missing; {rebuild}")
        if sha256_file(file) != entry["sha256"]:
            raise DataError(
                f"bundle '{path}': engine {entry['file']} does not match the sha256 in its manifest; {rebuild}"
            )
    check_model_io(path, manifest)
    return ExportBundle(path, manifest)


def check_model_io(path: Path, manifest: Mapping[str, Any]) -> None:
    """The manifest's input (name, 3×height×width) and output (name, feature_dim) against the FP32 model's graph.

    Reads the graph with ``onnx`` (the graph's declared shapes: no inference is run). Where ``onnx`` is not installed
    (a Jetson runtime with TensorRT only may lack it) this cross-check is skipped: the schema and the sha256 checks
    still hold, and the export validated the same manifest against this same graph before writing it. Only the FP32
    model is read: every other precision is converted from it, and each file is tied to the manifest by its sha256.
    """
    try:
        import onnx
        from google.protobuf.message import Error as ProtobufError
    except ImportError:
        return
    manifest_path = path / MANIFEST_NAME
    file = manifest["models"]["fp32"]["file"]
    try:
        graph = onnx.load(str(path / file), load_external_data=False).graph
    except (OSError, ValueError, ProtobufError) as error:  # a damaged file
        raise DataError(f"bundle '{path}': {file} is not an ONNX model ({type(error).__name__}: {error})") from None

    def dims(value: Any) -> list[int | None]:
        shape = value.type.tensor_type.shape
        return [dim.dim_value if dim.HasField("dim_value") else None for dim in shape.dim]

    inputs = {value.name: value for value in graph.input}
    outputs = {value.name: value for value in graph.output}
    spec_in, spec_out = manifest["input"], manifest["output"]
    mismatch = f"'{manifest_path}' does not fit {file}:"
    if spec_in["name"] not in inputs:
        raise DataError(
            f"{mismatch} input.name: expected the model's input ({', '.join(map(repr, inputs))}), got {spec_in['name']!r}"
        )
    if spec_out["name"] not in outputs:
        raise DataError(
            f"{mismatch} output.name: expected the model's output ({', '.join(map(repr, outputs))}), got "
            f"{spec_out['name']!r}"
        )
    shape_in = dims(inputs[spec_in["name"]])
    if len(shape_in) == 4:
        for axis, key in ((2, "height"), (3, "width")):
            if shape_in[axis] is not None and shape_in[axis] != spec_in[key]:
                raise DataError(
                    f"{mismatch} input.{key}: expected {shape_in[axis]} (the model's input is "
                    f"N×{'×'.join(str(dim) for dim in shape_in[1:])}), got {spec_in[key]}"
                )
    shape_out = dims(outputs[spec_out["name"]])
    if shape_out and shape_out[-1] is not None and shape_out[-1] != spec_out["feature_dim"]:
        raise DataError(
            f"{mismatch} output.feature_dim: expected {shape_out[-1]} (the embedding size the model outputs), got "
            f"{spec_out['feature_dim']}"
        )
