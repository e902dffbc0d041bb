"""INT8 models from a quantization-aware trained network (:mod:`edgereid.training.qat`), one per target, both
carrying what QAT learned rather than a new calibration:

- ``int8`` (TensorRT): the fake-quantized network exported as it is — QuantizeLinear/DequantizeLinear pairs with the
  QAT scales at every quantized layer's input, and each weight stored as INT8 with its per-channel DequantizeLinear
  (as modelopt's ONNX quantizer writes it), so TensorRT builds INT8 kernels on exactly the trained grid.
- ``int8_cpu`` (ONNX Runtime CPU): that graph with its Q/DQ pairs taken out — weights left on their INT8 grid,
  so ONNX Runtime's per-channel quantizer finds the same scales —, then ONNX Runtime's static QDQ quantization (the
  form its CPU kernels fuse into integer convolutions) with each QAT range imposed on its tensor; only tensors QAT
  had no range for (residual additions, pooling) are calibrated, on train images.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.errors import ExportError
from edgereid.export.calibration import CalibrationSet
from edgereid.export.common import DEFAULT_OPSET

# Quantized too in the CPU model: a ReLU (or ReLU6's Clip) after a convolution is then removed and the convolution's
# output takes the learned range of the ReLU's output — one quantization where QAT trained one, not a calibrated one
# before the ReLU and the learned one after it; residual additions run in INT8.
_FOLLOWING_OP_TYPES = ("Relu", "Clip", "Add")


def export_qat_onnx(model: Any, path: Path, input_size: tuple[int, int], *, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """The fake-quantized ``model`` as a Q/DQ ONNX graph at ``path``, weights stored as INT8."""
    import onnx

    from edgereid.export.onnx_export import export_onnx

    # A simplifier would fold each weight's Q/DQ pair into float weights and lose the INT8 weights.
    graph = export_onnx(model, path, input_size, opset=opset, simplify=False)
    proto = onnx.load(str(path))
    stored = _store_int8_weights(proto)
    _check(proto, path)
    onnx.save(proto, str(path))
    return {**graph, "int8_weights": stored}


def quantize_qat_int8(
    model: Any, target: Path, input_size: tuple[int, int], *, opset: int = DEFAULT_OPSET
) -> dict[str, Any]:
    """The ``int8`` (TensorRT) model of a QAT network."""
    import modelopt

    graph = export_qat_onnx(model, target, input_size, opset=opset)
    return {
        "quantizer": f"quantization-aware training (nvidia-modelopt {modelopt.__version__}), Q/DQ exported",
        "target": "trt",
        "int8_weights": graph["int8_weights"],
        "calibration": "learned",
    }


def quantize_qat_int8_cpu(
    model: Any, target: Path, input_size: tuple[int, int], calibration: CalibrationSet, *, opset: int = DEFAULT_OPSET
) -> dict[str, Any]:
    """The ``int8_cpu`` (ONNX Runtime CPU) model of a QAT network (see the module's docstring)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgereid.export.precision import QUANTIZED_OP_TYPES, BatchReader

    with tempfile.TemporaryDirectory(prefix="edgereid-qat-cpu-") as scratch:
        qdq = Path(scratch) / "qat.onnx"
        export_qat_onnx(model, qdq, input_size, opset=opset)
        proto = onnx.load(str(qdq))
        ranges = _strip_quantization(proto)
        plain = Path(scratch) / "plain.onnx"
        onnx.save(proto, str(plain))
        overrides = {
            name: [{"rmin": np.array(low, np.float32), "rmax": np.array(high, np.float32)}]
            for name, (low, high) in ranges.items()
        }
        output = Path(scratch) / "model.onnx"
        try:
            with _quiet_ort():
                quantize_static(
                    str(plain),
                    str(output),
                    BatchReader(calibration.images, proto.graph.input[0].name),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    # The weights were trained on the full 8-bit grid; a 7-bit one would undo part of that.
                    reduce_range=False,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=[*QUANTIZED_OP_TYPES, *_FOLLOWING_OP_TYPES],
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"TensorQuantOverrides": overrides},
                )
        except Exception as error:
            raise ExportError(
                f"ONNX Runtime INT8 quantization of the QAT model for '{target}' failed ({type(error).__name__}: "
                f"{error})"
            ) from error
        quantized = onnx.load(str(output))
        # ONNX Runtime's quantizer removes the ReLUs it folds but leaves their Clip bounds behind.
        _Graph(quantized).prune()
        onnx.save(quantized, str(target))
    return {
        "quantizer": f"quantization-aware training, then onnxruntime {onnxruntime.__version__} quantize_static "
        "(QDQ, per-channel) with the learned ranges",
        "target": "cpu",
        "activation_type": "uint8",
        "weight_type": "int8",
        "reduce_range": False,
        "learned_ranges": len(ranges),
        "calibration": {**calibration.record(), "method": "max", "for": "tensors without a learned range"},
    }


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice (pre-processing) through the root logger; the export reports instead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _check(proto: Any, path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except Exception as error:
        raise ExportError(f"the QAT graph for '{path}' fails onnx.checker: {error}") from error


class _Graph:
    """Name lookups over an ONNX graph whose constants are initializers or Constant nodes."""

    def __init__(self, proto: Any) -> None:
        from onnx import numpy_helper

        self.graph = proto.graph
        self.initializers = {item.name: item for item in self.graph.initializer}
        self.constants: dict[str, np.ndarray] = {name: numpy_helper.to_array(item) for name, item in self.initializers.items()}
        for node in self.graph.node:
            if node.op_type == "Constant":
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.constants[node.output[0]] = numpy_helper.to_array(value.t)
        self.producers = {output: node for node in self.graph.node for output in node.output}

    def nonnegative(self, tensor: str) -> bool:
        """Whether ``tensor`` is a ReLU's output (ReLU, or ReLU6's Clip from 0)."""
        producer = self.producers.get(tensor)
        if producer is None:
            return False
        if producer.op_type == "Relu":
            return True
        if producer.op_type == "Clip" and len(producer.input) > 1 and producer.input[1] in self.constants:
            return float(self.constants[producer.input[1]]) >= 0.0
        return False

    def quantize_dequantize_pairs(self) -> list[tuple[Any, Any]]:
        """Each (QuantizeLinear, DequantizeLinear) pair where the DequantizeLinear reads the QuantizeLinear."""
        pairs = []
        for node in self.graph.node:
            if node.op_type == "DequantizeLinear":
                producer = self.producers.get(node.input[0])
                if producer is not None and producer.op_type == "QuantizeLinear":
                    pairs.append((producer, node))
        return pairs

    def rewire(self, old: str, new: str) -> None:
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                if name == old:
                    node.input[index] = new
        for output in self.graph.output:
            if output.name == old:
                raise ExportError(f"a quantizer's output is the graph's output {old!r}; expected a layer after it")

    def prune(self) -> None:
        """Nodes and initializers no longer read by anything."""
        while True:
            read = {name for node in self.graph.node for name in node.input} | {o.name for o in self.graph.output}
            dead = [node for node in self.graph.node if not any(output in read for output in node.output)]
            for node in dead:
                self.graph.node.remove(node)
            if not dead:
                break
        read = {name for node in self.graph.node for name in node.input}
        for item in [item for item in self.graph.initializer if item.name not in read]:
            self.graph.initializer.remove(item)


def _quantized(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear of ``values`` (int8 zero point) along ``axis`` for a per-channel scale."""
    shape = [1] * values.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis] = scale.size
    q = np.rint(values / scale.reshape(shape)) + zero_point.reshape(shape).astype(np.float64)
    return np.clip(q, -128, 127).astype(np.int8)


def _axis(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 1)


def _store_int8_weights(proto: Any) -> int:
    """Each QuantizeLinear of a constant weight replaced by the INT8 weight it computes; how many."""
    from onnx import numpy_helper

    graph = _Graph(proto)
    stored = 0
    for quantize, _ in graph.quantize_dequantize_pairs():
        weight = graph.constants.get(quantize.input[0])
        if weight is None or weight.dtype.kind != "f":
            continue
        scale = graph.constants[quantize.input[1]]
        zero_point = graph.constants[quantize.input[2]]
        int8 = _quantized(weight.astype(np.float64), scale.astype(np.float64), zero_point, _axis(quantize))
        proto.graph.initializer.append(numpy_helper.from_array(int8, quantize.output[0]))
        proto.graph.node.remove(quantize)
        stored += 1
    graph.prune()
    return stored


def _strip_quantization(proto: Any) -> dict[str, tuple[float, float]]:
    """Take the Q/DQ pairs out of an :func:`export_qat_onnx` graph: each INT8 weight becomes its float value on the
    same grid, each activation pair is bypassed. Returns each activation's learned range (rmin, rmax) by tensor:
    from 0 after a ReLU (the grid ONNX Runtime's unsigned activations can then use whole), symmetric elsewhere."""
    from onnx import numpy_helper

    graph = _Graph(proto)
    ranges: dict[str, tuple[float, float]] = {}
    for node in [node for node in graph.graph.node if node.op_type == "DequantizeLinear"]:
        source = node.input[0]
        scale = graph.constants[node.input[1]].astype(np.float64)
        zero_point = graph.constants[node.input[2]].astype(np.float64)
        if source in graph.initializers:  # an INT8 weight
            values = graph.constants[source].astype(np.float64)
            shape = [1] * values.ndim
            if scale.size > 1:
                shape[_axis(node)] = scale.size
            weight = ((values - zero_point.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
            name = f"{source}_float"
            proto.graph.initializer.append(numpy_helper.from_array(weight, name))
            graph.rewire(node.output[0], name)
            continue
        quantize = graph.producers.get(source)
        if quantize is None or quantize.op_type != "QuantizeLinear":
            raise ExportError(f"DequantizeLinear {node.name!r} reads neither an INT8 weight nor a QuantizeLinear")
        tensor = quantize.input[0]
        amax = float(scale.max()) * 127.0
        ranges[tensor] = (0.0 if graph.nonnegative(tensor) else -amax, amax)
        graph.rewire(node.output[0], tensor)
    graph.prune()
    _drop_identity_casts(proto)
    return ranges


def _drop_identity_casts(proto: Any) -> None:
    """Casts of a tensor to its own type (the torch export writes a float-to-float Cast after each output quantizer):
    between a convolution and its addition they would stop ONNX Runtime from fusing the two into INT8 kernels, and
    its quantizer would requantize the tensor once more on each side of them."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    graph = _Graph(proto)
    for node in [node for node in proto.graph.node if node.op_type == "Cast"]:
        target = next(int(attribute.i) for attribute in node.attribute if attribute.name == "to")
        if types.get(node.input[0]) == target and node.output[0] not in {o.name for o in proto.graph.output}:
            graph.rewire(node.output[0], node.input[0])
    graph.prune()
