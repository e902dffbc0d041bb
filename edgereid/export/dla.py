"""What building a TensorRT engine for a Jetson's DLA needs beyond a GPU build, as functions that need no TensorRT.

TensorRT 10.x runs a network on the DLA only when it is *weakly* typed: the DLA computes FP16 and INT8 alone, and
which of the two a layer gets comes from the builder's precision flags (FP16, INT8, PREFER_PRECISION_CONSTRAINTS, as
``trtexec --useDLACore`` sets them), never from a strongly typed network's tensor types (strongly typed DLA networks
arrive with TensorRT 11.4.1, on JetPack 7.2.2 and later). INT8 on the DLA takes its scales from a calibration cache,
not from Q/DQ nodes, so — as NVIDIA's qdq-translator (Deep-Learning-Accelerator-SW) does — the bundle's INT8 Q/DQ
model is turned into the network without its Q/DQ nodes plus a cache holding each quantized tensor's scale:

- :func:`dla_build_mode` says, from the TensorRT version, whether and how this TensorRT builds for the DLA.
- :func:`strip_qdq` removes the Q/DQ nodes of an INT8 ONNX model (weights dequantized to float, activations read
  straight) and returns the per-tensor scales of the activations, carried across layers that keep a tensor's range
  (ReLU, max pooling, reshapes), as the qdq-translator does.
- :func:`calibration_cache` writes those scales in the text format TensorRT's calibrators read and write
  (``TRT-<version>-EntropyCalibration2``, then ``tensor: <float32 scale as 8 hex digits>`` per line).
- :func:`dla_placement` reads the engine inspector's JSON of a built engine: which layers run on the DLA and which
  fell back to the GPU.

``onnx`` is imported by :func:`strip_qdq` only (the INT8 DLA build), so this module imports on a Jetson without it.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgereid.errors import ConfigError, EdgeReIDError, ExportError

if TYPE_CHECKING:
    import onnx

# TensorRT 10.7 was the last release with DLA until 11.4.1 brought it back, strongly typed, for Jetson AGX Orin on
# JetPack 7.2.2 or later (TensorRT's "Working with DLA" and 11.4.1 release notes). JetPack 6 ships TensorRT 10.3.
LAST_WEAKLY_TYPED_DLA = (10, 7)
FIRST_STRONGLY_TYPED_DLA = (11, 4, 1)

WEAKLY_TYPED = "weakly_typed"
STRONGLY_TYPED = "strongly_typed"

# Layers whose output has the range of their input: a scale known on one side holds on the other (the
# qdq-translator's default set, with Unsqueeze and Identity, which do not change values either).
RANGE_KEEPING_OPS = frozenset(
    {"Relu", "MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Pad"}
)

_NO_DLA = (
    "TensorRT {version} cannot build for the DLA: TensorRT 10.7 was the last release with DLA support (JetPack 6 "
    "ships 10.3, which has it) until TensorRT 11.4.1 restored it, strongly typed, for Jetson AGX Orin on JetPack "
    "7.2.2 or later; JetPack 7's TensorRT for Jetson Thor has no DLA at all. Build without --dla-core (the GPU), or "
    "on JetPack 6"
)


def _version_numbers(version: str) -> tuple[int, ...]:
    numbers = tuple(int(part) for part in re.findall(r"\d+", version))
    if not numbers:
        raise EdgeReIDError(f"{version!r} is not a TensorRT version")
    return numbers


def dla_build_mode(tensorrt_version: str) -> str:
    """How this TensorRT builds for the DLA: :data:`WEAKLY_TYPED` (10.x up to 10.7: precision flags, a calibration
    cache for INT8) or :data:`STRONGLY_TYPED` (11.4.1 on: the ONNX file's own types); a ConfigError saying why
    where it cannot (10.8 to 11.4.0)."""
    version = _version_numbers(tensorrt_version)
    if version[:2] <= LAST_WEAKLY_TYPED_DLA:
        return WEAKLY_TYPED
    if version[:3] >= FIRST_STRONGLY_TYPED_DLA:
        return STRONGLY_TYPED
    raise ConfigError(_NO_DLA.format(version=tensorrt_version))


def no_dla_core_message(dla_core: int, tensorrt_version: str, gpu_name: str, cores: int) -> str:
    """The error for a DLA core this machine does not have."""
    return (
        f"DLA core {dla_core} does not exist: TensorRT {tensorrt_version} on {gpu_name} has {cores} DLA core(s). "
        "Jetson AGX Orin has two DLA cores and Orin NX one or two (8GB: one), through JetPack 6's TensorRT 10.3; "
        "Orin Nano, Jetson Thor and every discrete GPU have none"
    )


def tensorrt_version_code(tensorrt_version: str) -> int:
    """NV_TENSORRT_VERSION, the number in a calibration cache's header: 10.3.0 → 100300 (TensorRT 10 on:
    major·10000 + minor·100 + patch), 8.6.1 → 8601 (before: major·1000 + minor·100 + patch)."""
    major, minor, patch = (*_version_numbers(tensorrt_version), 0, 0)[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def calibration_cache(scales: Mapping[str, float], tensorrt_version: str) -> bytes:
    """``scales`` (tensor name → INT8 scale, that is amax / 127) as a TensorRT calibration cache: the header line
    ``TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2``, then ``<tensor>: <hex>`` per tensor, where hex is the IEEE
    float32 bit pattern of the scale as 8 hex digits. TensorRT reads back the cache of the algorithm and version it
    runs (another header makes it calibrate afresh), so the header names the TensorRT that builds."""
    lines = [f"TRT-{tensorrt_version_code(tensorrt_version)}-EntropyCalibration2"]
    for name, scale in scales.items():
        value = float(scale)
        if not np.isfinite(value) or value <= 0:
            raise ExportError(f"tensor {name!r} has INT8 scale {value}; a scale must be a positive number")
        if "\n" in name:
            raise ExportError(f"tensor name {name!r} cannot be written to a calibration cache (a line break)")
        bits = struct.unpack(">I", struct.pack(">f", value))[0]
        lines.append(f"{name}: {bits:08x}")
    return ("\n".join(lines) + "\n").encode()


def read_calibration_cache(data: bytes) -> tuple[str, dict[str, float]]:
    """The header and the scales of a calibration cache written by :func:`calibration_cache` or TensorRT."""
    text = data.decode()
    header, *lines = text.splitlines()
    scales: dict[str, float] = {}
    for line in lines:
        name, _, value = line.rpartition(": ")
        if name:
            scales[name] = struct.unpack(">f", struct.pack(">I", int(value, 16)))[0]
    return header, scales


# --- Q/DQ model → network without Q/DQ + scales --------------------------------------------------------------------


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every tensor of the graph whose value is fixed: initializers and Constant nodes' ``value``."""
    from onnx import numpy_helper

    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
                elif attribute.name == "value_float":
                    values[node.output[0]] = np.asarray(attribute.f, dtype=np.float32)
    return values


def _axis(node: onnx.NodeProto) -> int:
    return next((int(attribute.i) for attribute in node.attribute if attribute.name == "axis"), 1)


def _quantization(node: onnx.NodeProto, values: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A Q or DQ node's scale and zero point (constants), checked to be symmetric INT8 as TensorRT's are."""
    if len(node.input) < 2 or node.input[1] not in values:
        raise ExportError(f"{node.op_type} {node.name!r} has no constant scale; cannot read its INT8 scale")
    scale = np.asarray(values[node.input[1]])
    if len(node.input) < 3 or not node.input[2]:
        raise ExportError(
            f"{node.op_type} {node.name!r} has no zero point (so uint8, asymmetric): not the symmetric INT8 Q/DQ "
            "model TensorRT uses; is this the int8_cpu model? build int8"
        )
    if node.input[2] not in values:
        raise ExportError(f"{node.op_type} {node.name!r} has no constant zero point")
    zero_point = np.asarray(values[node.input[2]])
    if zero_point.dtype != np.int8 or np.any(zero_point != 0):
        raise ExportError(
            f"{node.op_type} {node.name!r} has zero point {zero_point.ravel()[:4].tolist()} ({zero_point.dtype}): "
            "TensorRT's INT8 is symmetric (int8, zero point 0); is this the int8_cpu model? build int8"
        )
    if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
        raise ExportError(f"{node.op_type} {node.name!r} has a scale that is not a positive number")
    return scale, zero_point


def _broadcast(scale: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    if scale.size == 1:
        return scale.reshape(())
    axis = axis % len(shape)
    return scale.reshape([-1 if dim == axis else 1 for dim in range(len(shape))])


def _dequantize(values: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """float(value) · scale in the scale's own type (DequantizeLinear's output type), zero point 0."""
    return (values.astype(np.float32) * _broadcast(scale.astype(np.float32), values.shape, axis)).astype(scale.dtype)


def _fake_quantize(values: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """DequantizeLinear(QuantizeLinear(values)) for symmetric INT8: the weights the Q/DQ model computes with."""
    step = _broadcast(scale.astype(np.float32), values.shape, axis)
    quantized = np.clip(np.rint(values.astype(np.float32) / step), -128, 127)
    return (quantized * step).astype(scale.dtype)


def _propagate_scales(model: onnx.ModelProto, scales: dict[str, float]) -> None:
    """Carry scales across :data:`RANGE_KEEPING_OPS`, downstream (a layer's output takes its input's scale) and then
    upstream (an input takes its output's): TensorRT runs a layer in INT8 only when both sides have a scale, and the
    Q/DQ model quantizes inputs only (modelopt puts Q/DQ before each convolution), so a convolution's output — read
    by a ReLU whose output is quantized — would otherwise lose its INT8 output."""
    nodes = [node for node in model.graph.node if node.op_type in RANGE_KEEPING_OPS and node.input and node.output]
    for node in nodes:
        source, target = node.input[0], node.output[0]
        if source in scales and target not in scales:
            scales[target] = scales[source]
    for node in reversed(nodes):
        source, target = node.input[0], node.output[0]
        if target in scales and source not in scales:
            scales[source] = scales[target]


def strip_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, float]]:
    """``model`` (an INT8 Q/DQ ONNX model, per-tensor activation scales, symmetric) without its Q/DQ nodes, and the
    INT8 scale of every activation tensor of the result that had one.

    - A QuantizeLinear → DequantizeLinear pair on an activation goes; its readers read the activation itself, whose
      scale is recorded. The tensor names are those of ``model``, so the scales name the network's tensors.
    - Weights (INT8 constants read by a DequantizeLinear, as the QAT export writes them, or float constants behind a
      Q/DQ pair, as modelopt's ONNX PTQ does) become float constants holding the dequantized values, exactly what the
      Q/DQ model computes with: TensorRT then derives each output channel's weight scale from their maximum, the
      scale they were quantized with (max calibration of weights, as both use).
    - Everything else (layers the Q/DQ model kept in float) is left as it is: without scales, TensorRT runs them in
      FP16 on the DLA (or falls back to the GPU).
    """
    import onnx
    from onnx import helper, numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    values = _constant_values(result)
    producers = {output: node for node in graph.node for output in node.output}
    removed: set[int] = set()
    rename: dict[str, str] = {}
    weights: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        dq_scale, _ = _quantization(node, values)
        source = node.input[0]
        quantize = producers.get(source)
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            q_scale, _ = _quantization(quantize, values)
            if q_scale.shape != dq_scale.shape or not np.allclose(q_scale, dq_scale, rtol=0, atol=0):
                raise ExportError(f"{quantize.name!r} and {node.name!r} quantize with different scales")
            quantized = quantize.input[0]
            removed.update((id(quantize), id(node)))
            if quantized in values:  # a float weight, fake-quantized
                weights[node.output[0]] = _fake_quantize(values[quantized], q_scale, _axis(quantize))
            else:
                if q_scale.size != 1:
                    raise ExportError(
                        f"{quantize.name!r} quantizes activation {quantized!r} per channel; TensorRT's calibration "
                        "scales (and the DLA) are per tensor"
                    )
                scale = float(q_scale.reshape(()))
                scales[quantized] = max(scale, scales.get(quantized, 0.0))
                rename[node.output[0]] = quantized
        elif source in values:  # INT8 weights with their DequantizeLinear
            weights[node.output[0]] = _dequantize(values[source], dq_scale, _axis(node))
            removed.add(id(node))
        else:
            raise ExportError(
                f"DequantizeLinear {node.name!r} reads {source!r}, which is neither a QuantizeLinear's output nor a "
                "constant; cannot take the Q/DQ nodes out of this model"
            )
    left = [node.name or node.output[0] for node in graph.node if node.op_type == "QuantizeLinear" and id(node) not in removed]
    if left:
        raise ExportError(f"QuantizeLinear without a DequantizeLinear after it: {', '.join(left[:5])}")

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    kept = [node for node in graph.node if id(node) not in removed]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = resolve(name)
    for output in graph.output:
        if output.name in rename:  # an output that was a DequantizeLinear's: keep its name
            kept.append(helper.make_node("Identity", [resolve(output.name)], [output.name], name=f"{output.name}/identity"))
    read = {name for node in kept for name in node.input} | {output.name for output in graph.output}
    kept = [node for node in kept if node.op_type != "Constant" or any(name in read for name in node.output)]
    initializers = [tensor for tensor in graph.initializer if tensor.name in read and tensor.name not in weights]
    initializers += [numpy_helper.from_array(value, name) for name, value in weights.items() if name in read]
    del graph.node[:]
    graph.node.extend(kept)
    dropped = {tensor.name for tensor in graph.initializer} - {tensor.name for tensor in initializers}
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    inputs = [value for value in graph.input if value.name not in dropped]  # IR < 4 lists weights as inputs
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]  # shapes and types of removed tensors; TensorRT infers its own
    _propagate_scales(result, scales)
    produced = {name for node in graph.node for name in node.output} | {tensor.name for tensor in graph.input}
    scales = {name: scale for name, scale in scales.items() if name in produced}
    try:
        onnx.checker.check_model(result)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the model without its Q/DQ nodes is not valid ONNX: {error}") from None
    return result, scales


# --- where the layers of a built engine run -----------------------------------------------------------------------

_DLA_TRANSFER = re.compile(r" (to|from) nvm$| copy finish$")
_BOUNDARY_BEFORE = r"(?:^|(?<=[\s(\[,+]))"
_BOUNDARY_AFTER = r"(?=$|[\s)\],+])"


def _engine_layers(engine_information: str) -> list[tuple[str, str]]:
    try:
        information = json.loads(engine_information)
    except json.JSONDecodeError as error:
        raise EdgeReIDError(f"the engine inspector's JSON cannot be read: {error}") from None
    layers = information.get("Layers", []) if isinstance(information, dict) else []
    result = []
    for layer in layers:
        if isinstance(layer, dict):
            result.append((str(layer.get("Name", "")), str(layer.get("LayerType", ""))))
        else:
            result.append((str(layer), ""))
    return result


def _is_dla_layer(name: str, kind: str) -> bool:
    """A layer the DLA runs: TensorRT packs each DLA subgraph into one engine layer named ``{ForeignNode[first...
    last]}`` (Myelin's GPU subgraphs have such names too, and say Myelin in their LayerType)."""
    lowered = kind.lower()
    if "dla" in lowered:
        return True
    return name.startswith("{ForeignNode[") and "myelin" not in lowered


def _is_transfer(name: str, kind: str) -> bool:
    """A copy or reformat between GPU and DLA memory (or of an I/O tensor), not a layer of the network."""
    return bool(_DLA_TRANSFER.search(name)) or name.startswith("Reformatting CopyNode") or kind == "Reformat"


def dla_placement(engine_information: str, network_layers: Sequence[str], dla_core: int) -> dict[str, Any]:
    """Where the layers of an engine built for ``dla_core`` run, from ``engine_information`` (the engine inspector's
    ``get_engine_information(LayerInformationFormat.JSON)``, detailed or names only) and the names of the network's
    layers (constants left out).

    A network layer runs on the GPU when its name is part of a GPU engine layer's name (TensorRT names a fused layer
    after the layers it joins, "a + b", "PWN(a, b)"); the others run inside the DLA subgraphs, whose names give only
    their first and last layers. The result is what the manifest records: ``layers_on_dla`` and ``layers`` (counts),
    ``gpu_fallback`` (the network layers on the GPU), ``dla_subgraphs``, ``gpu_engine_layers``, ``transfers``.
    """
    engine_layers = _engine_layers(engine_information)
    dla = [name for name, kind in engine_layers if _is_dla_layer(name, kind)]
    transfers = [name for name, kind in engine_layers if not _is_dla_layer(name, kind) and _is_transfer(name, kind)]
    gpu = [name for name, kind in engine_layers if not _is_dla_layer(name, kind) and not _is_transfer(name, kind)]
    fallback = [
        layer
        for layer in network_layers
        if any(re.search(_BOUNDARY_BEFORE + re.escape(layer) + _BOUNDARY_AFTER, name) for name in gpu)
    ]
    on_dla = len(network_layers) - len(fallback) if dla else 0
    if not dla:
        fallback = list(network_layers)
    return {
        "core": dla_core,
        "layers": len(network_layers),
        "layers_on_dla": on_dla,
        "gpu_fallback": fallback,
        "dla_subgraphs": dla,
        "gpu_engine_layers": len(gpu),
        "transfers": len(transfers),
        "source": "engine inspector",
    }


def describe_placement(placement: Mapping[str, Any]) -> str:
    """One line for a table: "12/15 layers on DLA 0, 3 on the GPU"."""
    fallback: Iterable[str] = placement.get("gpu_fallback", [])
    return (
        f"{placement['layers_on_dla']}/{placement['layers']} layers on DLA {placement['core']}, "
        f"{len(list(fallback))} on the GPU"
    )
