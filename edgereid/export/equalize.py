"""Activation equalization before INT8: rescale channels between two convolutions so that per-tensor activation
quantization stops drowning the small channels.

INT8 activations share one scale per tensor. When some channels of a convolution's input span 0.2 and others 20,
the small ones get a handful of levels, and a consumer whose weights are large on those channels turns that
rounding into a large output error (the worst layer of a fine-tuned MobileNetV2 that lost 17 mAP points fully
quantized, docs/BENCHMARKS.md). Where a convolution A feeds a convolution B only through per-channel positively
homogeneous operations (nothing, ReLU, max or average pooling), multiplying A's output channel ``i`` (weights and
bias) by ``c_i > 0`` and dividing B's input channel ``i`` weights by ``c_i`` leaves the network's function unchanged.
With ``c_i = sqrt(w_i / a_i)`` — ``a_i`` the channel's absolute range at B's input on calibration images, ``w_i`` the
largest absolute weight B applies to it — both become ``sqrt(a_i * w_i)``: the channel's range in the activation and
its weight in B are balanced, as cross-layer equalization (Nagel et al., 2019) balances two weight ranges and
SmoothQuant (Xiao et al., 2022, migration strength 0.5) activation and weight ranges. On the MobileNetV2 above it
cut the fully quantized CPU model's loss from 17.4 to 9.7 points. Strength 1 (``c_i = 1 / a_i``, every channel
spanning the same range) did a little better there (9.3) but takes away the headroom a channel has under the
tensor's widest one: with 16 calibration images, channels that fired up to 13 times higher on other images saturated
and a ResNet-18's INT8 embeddings fell to cosine 0.86 of FP32 (0.9993 at strength 0.5). Both weights are quantized
per output channel, so scaling A's rows costs A nothing.

Pairs are rescaled from the last to the first, so that each pair sees its consumer's final weights; the activation
ranges come from one pass of the original model (a later pair never changes an earlier pair's activations). The
result is checked against the original model on the same images and refused unless it is the same function.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.atomic import atomic_write_bytes
from edgereid.errors import ExportError
from edgereid.export.common import INPUT_NAME, OUTPUT_NAME, _cosine, _session

# Whether each INT8 precision equalizes unless told: measured on two models (docs/BENCHMARKS.md), it helped ONNX
# Runtime's CPU scheme (a MobileNetV2 fully quantized: 17.4 -> 9.7 mAP points lost; the demo's student -0.22 -> -0.13
# on test) and did not help the symmetric TensorRT scheme (the same MobileNetV2 3.2 -> 6.7; the student -0.23 both).
EQUALIZE_BY_DEFAULT = {"int8": False, "int8_cpu": True}
# Per-channel operations that commute with a positive per-channel scale: f(c * x) = c * f(x).
_POSITIVELY_HOMOGENEOUS = ("Relu", "MaxPool", "AveragePool")
EQUALIZATION_IMAGES = 64
# A rescaled model must compute the same function: float rounding alone stays far above this.
MIN_EQUALIZED_COSINE = 0.99999
_BATCH = 32
_DEAD_CHANNEL = 1e-6
_ZERO_ROW = 1e-5  # an output row this small against the batch's largest is zero, to float rounding


@dataclass(frozen=True)
class ConvPair:
    producer: str  # node name of A
    consumer: str  # node name of B
    tensor: str  # B's input: the activation whose channels are rescaled
    through: tuple[str, ...]  # op types between A and B


def find_equalizable_pairs(model: Any) -> list[ConvPair]:
    """Every Conv → (Relu | MaxPool | AveragePool)* → Conv chain of ``model`` (an onnx ModelProto) in which each
    tensor has that one consumer and is not a graph output, both weights are initializers used by that node alone
    and the consumer's input channels are the producer's output channels; in graph order."""
    graph = model.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {initializer.name for initializer in graph.initializer}
    outputs = {output.name for output in graph.output}

    def own_weight(node: Any) -> bool:
        return (len(node.input) > 1 and node.input[1] in initializers and len(consumers[node.input[1]]) == 1
                and (len(node.input) < 3 or not node.input[2]
                     or (node.input[2] in initializers and len(consumers[node.input[2]]) == 1)))

    pairs = []
    for producer in graph.node:
        if producer.op_type != "Conv" or not own_weight(producer):
            continue
        tensor, through = producer.output[0], []
        while tensor not in outputs and len(consumers.get(tensor, [])) == 1:
            node = consumers[tensor][0]
            if node.op_type in _POSITIVELY_HOMOGENEOUS and node.input[0] == tensor and len(node.output) == 1:
                tensor = node.output[0]
                through.append(node.op_type)
                continue
            if node.op_type == "Conv" and node.input[0] == tensor and own_weight(node):
                pairs.append(ConvPair(producer.name, node.name, tensor, tuple(through)))
            break
    return pairs


def equalize_activations(source: Path, target: Path, images: np.ndarray) -> dict[str, Any]:
    """Write ``source`` with every pair of :func:`find_equalizable_pairs` rescaled to ``target``; ``images`` (a
    normalized NCHW float32 batch, typically calibration images) give the activation ranges and the check.

    Returns the manifest record: the pairs, the images used and the check's cosine to the original model.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    pairs = find_equalizable_pairs(model)
    images = images[:EQUALIZATION_IMAGES]
    record: dict[str, Any] = {
        "method": "activation/weight range balance between two convolutions, c = sqrt(w / a) per channel",
        "images": len(images),
        "pairs": [],
    }
    if not pairs:
        atomic_write_bytes(source.read_bytes(), target)
        return record
    ranges, original = _activation_ranges(model, [pair.tensor for pair in pairs], images)
    nodes = {node.name: node for node in model.graph.node}
    weights = {initializer.name: initializer for initializer in model.graph.initializer}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(weights[name]).astype(np.float64)

    def store(name: str, values: np.ndarray) -> None:
        dtype = numpy_helper.to_array(weights[name]).dtype
        weights[name].CopyFrom(numpy_helper.from_array(values.astype(dtype), name))

    for pair in reversed(pairs):
        producer, consumer = nodes[pair.producer], nodes[pair.consumer]
        consumer_weight = array(consumer.input[1])
        groups = next((int(a.i) for a in consumer.attribute if a.name == "group"), 1)
        out_channels, in_per_group = consumer_weight.shape[:2]
        # (groups, outputs per group, inputs per group, kernel...): input channel g * in_per_group + j is [g, :, j].
        grouped = consumer_weight.reshape(groups, out_channels // groups, in_per_group, -1)
        weight_range = np.abs(grouped).max(axis=(1, 3)).reshape(-1)
        activation_range = ranges[pair.tensor]
        # A channel that never fires, or that B ignores, keeps its scale: there is nothing to balance.
        usable = (activation_range > _DEAD_CHANNEL * activation_range.max()) & (weight_range > 0)
        scale = np.ones_like(activation_range)
        scale[usable] = np.sqrt(weight_range[usable] / activation_range[usable])
        grouped = grouped / scale.reshape(groups, 1, in_per_group, 1)
        store(consumer.input[1], grouped.reshape(consumer_weight.shape))
        producer_weight = array(producer.input[1])
        store(producer.input[1], producer_weight * scale.reshape(-1, *([1] * (producer_weight.ndim - 1))))
        if len(producer.input) > 2 and producer.input[2]:
            store(producer.input[2], array(producer.input[2]) * scale)
        record["pairs"].insert(0, {
            "producer": pair.producer, "consumer": pair.consumer, "through": list(pair.through),
            # How many times its widest channel outranged a typical one before: what equalization removed.
            "activation_range_spread": _spread(activation_range),
        })
    with tempfile.TemporaryDirectory(prefix="edgereid-equalize-") as scratch:
        equalized_path = Path(scratch) / "equalized.onnx"
        onnx.save(model, str(equalized_path))
        equalized = _session(equalized_path).run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        cosine = _smallest_cosine(original, equalized)
        if not cosine >= MIN_EQUALIZED_COSINE:
            raise ExportError(
                f"equalizing the activations of '{source}' changed its output (min cosine {cosine:.6f} < "
                f"{MIN_EQUALIZED_COSINE} on {len(images)} calibration images); export with --no-equalize"
            )
        atomic_write_bytes(equalized_path.read_bytes(), target)
    record["cosine_min_to_original"] = cosine
    return record


def _smallest_cosine(original: np.ndarray, changed: np.ndarray) -> float:
    """The smallest cosine between the rows of the two models' outputs. A row the original maps to zero (an embedding
    that ends in a ReLU is all zero on some images of a weak model) has no direction: it counts as 1 when the changed
    model's row is zero too, to float rounding of the batch's largest row."""
    cosine = _cosine(original, changed)
    norms = np.linalg.norm(original.astype(np.float64), axis=1)
    largest = float(norms.max(initial=0.0)) or 1.0
    still_zero = (norms <= _ZERO_ROW * largest) & (np.linalg.norm(changed, axis=1) <= _ZERO_ROW * largest)
    return float(np.where(still_zero, 1.0, cosine).min())


def _activation_ranges(
    model: Any, tensors: list[str], images: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-channel max |value| of each of ``tensors`` (NCHW activations) over ``images``, and the model's own output
    on them (the reference the rescaled model is checked against), from one pass."""
    import onnx
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in tensors)
    maxima: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    embeddings = []
    with tempfile.TemporaryDirectory(prefix="edgereid-equalize-") as scratch:
        path = Path(scratch) / "probe.onnx"
        onnx.save(probe, str(path))
        session = _session(path)
        for start in range(0, len(images), _BATCH):
            output, *activations = session.run([OUTPUT_NAME, *tensors], {INPUT_NAME: images[start : start + _BATCH]})
            embeddings.append(output)
            for name, value in zip(tensors, activations):
                maxima[name].append(np.abs(value).max(axis=tuple(axis for axis in range(value.ndim) if axis != 1)))
    ranges = {name: np.max(values, axis=0).astype(np.float64) for name, values in maxima.items()}
    return ranges, np.concatenate(embeddings)


def _spread(ranges: np.ndarray) -> float:
    """Largest over median channel range: how many times the biggest channel outranges a typical one."""
    positive = ranges[ranges > 0]
    return round(float(positive.max() / np.median(positive)), 2) if positive.size else 0.0
