"""`edgereid bench`: how fast a model runs here, per backend, precision and batch size, with the machine recorded.

``bench_target(target)`` takes a bundle (every precision on each backend asked for), an engine file inside a bundle
(the TensorRT backend at that engine's precision) or a training checkpoint (the PyTorch network itself) and
returns the ``edgereid.bench`` JSON document. Each (backend, precision, batch) is measured in a fresh Python
process that loads the model, runs ``warmup`` untimed and ``iters`` timed inferences on random normalised input
and reports its peak resident memory: the numbers are not polluted by an earlier variant's memory arena, caches
or threads, and the peak is the honest footprint of a process serving that model.

Parameters and FLOPs are per image at batch 1, FLOPs = 2 × multiply-accumulates of the convolutions and matrix
products (torch.utils.flop_counter's convention: normalisation, activations and pooling are not counted). For a
bundle they are counted from the FP32 ONNX graph without torch; for a checkpoint with the flop counter on the
network's eval forward.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgereid import errors
from edgereid.bundle_format import MANIFEST_NAME, ExportBundle, load_bundle
from edgereid.errors import ConfigError, DataError, EdgeReIDError
from edgereid.runtime.environment import describe_environment
from edgereid.runtime.runners import select_precisions

if TYPE_CHECKING:
    import onnx
    import torch

BENCH_KIND = "edgereid.bench"
BENCH_SCHEMA_VERSION = 1
DEFAULT_BATCHES = (1, 8, 32)
ENGINE_SUFFIXES = (".plan", ".engine")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
FLOPS_CONVENTION = (
    "per image at batch 1: 2 x multiply-accumulates of Conv/Gemm/MatMul (torch.utils.flop_counter's convention; "
    "normalisation, activations and pooling not counted)"
)
MEMORY_METHOD = (
    "peak resident set size (Linux VmHWM, else ru_maxrss) of a fresh Python process that imported the backend, "
    "loaded the model and ran warmup + iters inferences at this batch size; baseline_memory_mb is its RSS before "
    "the backend's library and the model were loaded (interpreter, numpy, edgereid)"
)
DEVICE_MEMORY_METHOD = "; device_peak_memory_mb: torch.cuda.max_memory_allocated"
_WORKER_TIMEOUT_S = 3600


@dataclass
class BenchTarget:
    """What ``bench_target`` measures, resolved from the path the user gave."""

    path: Path
    kind: str  # "bundle", "engine" or "checkpoint"
    bundle: ExportBundle
    # The backends this kind of target runs on, the first being the default.
    backends: tuple[str, ...]
    precisions: tuple[str, ...] = ()
    checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def bench_target(
    target: str | Path,
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    warmup: int = 10,
    iters: int = 50,
    **runner_options: Any,
) -> dict[str, Any]:
    """Latency, throughput and peak memory of ``target`` (a bundle directory, an engine file inside a bundle, or a
    checkpoint file or run directory) for every backend × precision × batch size; the ``edgereid.bench`` document.

    ``backends`` default to onnxruntime for a bundle, tensorrt for an engine and torch for a checkpoint;
    ``precisions`` to every one the target has that the backend runs. ``runner_options`` go to each runner
    (``providers=["cuda"]``, ``threads=4``, ``device="cuda"``); they must be JSON values, as each measurement runs
    in its own process.
    """
    batches = _check_settings(batches, warmup, iters)
    resolved = resolve_target(target)
    wanted_backends = _backends(resolved, backends)
    try:
        json.dumps(runner_options)
    except TypeError as error:
        raise ConfigError(f"runner options must be JSON values (numbers, strings, lists): {error}") from None

    manifest = resolved.bundle.manifest
    params, flops = _complexity(resolved)
    environment = describe_environment()
    runs: list[dict[str, Any]] = []
    for backend in wanted_backends:
        owner = f"{resolved.kind} '{resolved.path}'"
        for precision in select_precisions(owner, resolved.precisions, backend, precisions, "benchmark"):
            model_bytes = _model_bytes(resolved, backend, precision, runner_options)
            for batch in batches:
                measured = _run_worker(resolved, backend, precision, batch, warmup, iters, runner_options)
                runs.append({"backend": backend, "precision": precision, "model_bytes": model_bytes, "batch": batch,
                             **measured})
    return {
        "kind": BENCH_KIND,
        "schema_version": BENCH_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": str(resolved.path.resolve()),
        "target_kind": resolved.kind,
        "bundle": None if resolved.kind == "checkpoint" else str(resolved.bundle.path.resolve()),
        # The FP32 model's sha256 (the Embedder's model_id): joins this benchmark with verifications of the model.
        "model_id": manifest["models"]["fp32"].get("sha256"),
        "recipe": manifest["recipe"],
        "network": manifest["network"],
        "backbone": manifest["backbone"],
        "input": list(resolved.bundle.input_size),
        "feature_dim": int(manifest["output"]["feature_dim"]),
        "params": params,
        "flops": flops,
        "flops_convention": FLOPS_CONVENTION,
        "environment": environment,
        "settings": {"warmup": warmup, "iters": iters, "batches": list(batches), "runner_options": runner_options},
        "runs": runs,
    }


def resolve_target(target: str | Path) -> BenchTarget:
    """The kind of ``target`` and the bundle behind it (for a checkpoint, a file-less description of its network
    that the torch runner rebuilds the checkpoint from); anything else a DataError saying what was expected."""
    path = Path(target)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        bundle = load_bundle(path)
        return BenchTarget(path, "bundle", bundle, ("onnxruntime", "tensorrt", "torch"), tuple(bundle.precisions))
    if path.is_file() and path.suffix in ENGINE_SUFFIXES:
        return _engine_target(path)
    if (path.is_file() and path.suffix in CHECKPOINT_SUFFIXES) or (path.is_dir() and (path / "last.pt").is_file()):
        return _checkpoint_target(path)
    if not path.exists():
        raise DataError(f"bench target '{path}' does not exist")
    raise DataError(
        f"bench target '{path}' is not a bundle (a directory with {MANIFEST_NAME}), an engine "
        f"({'/'.join(ENGINE_SUFFIXES)} inside a bundle) or a checkpoint ({'/'.join(CHECKPOINT_SUFFIXES)} or a run "
        "directory with last.pt)"
    )


def _engine_target(path: Path) -> BenchTarget:
    if not (path.parent / MANIFEST_NAME).is_file():
        raise DataError(
            f"engine '{path}' is not inside a bundle: the engine's input size, normalisation and precision come from "
            f"the {MANIFEST_NAME} of the bundle it was built into (edgereid build BUNDLE)"
        )
    bundle = load_bundle(path.parent)
    engines: dict[str, Any] = bundle.manifest.get("engines") or {}
    precision = next((name for name, entry in engines.items() if entry.get("file") == path.name), None)
    if precision is None:
        raise DataError(
            f"engine '{path}' is not recorded in the manifest of bundle '{bundle.path}' (its engines: "
            f"{', '.join(entry.get('file', '?') for entry in engines.values()) or 'none'}); rebuild it with "
            "edgereid build"
        )
    return BenchTarget(path, "engine", bundle, ("tensorrt",), (precision,))


def _checkpoint_target(path: Path) -> BenchTarget:
    from edgereid.training.checkpoint import load_checkpoint, resolve_checkpoint_path
    from edgereid.training.evaluate import build_model

    checkpoint_path = resolve_checkpoint_path(path)
    checkpoint = load_checkpoint(checkpoint_path)
    name, config, state = checkpoint.network(None)
    model = build_model(checkpoint, "cpu", network=name)
    height, width = checkpoint.recipe.data.size
    feature_dim, params, flops = torch_complexity(model, (height, width))
    # The torch runner takes a bundle; this one has no files, only what the runner reads, and the runner rebuilds
    # the network from the checkpoint (runner option checkpoint=...).
    manifest = {
        "recipe": checkpoint.recipe.name,
        "network": name,
        "backbone": config.backbone.name,
        "input": {"name": "images", "height": height, "width": width},
        "output": {"name": "embeddings", "feature_dim": feature_dim},
        "models": {"fp32": {"file": None, "sha256": None}},
    }
    weight_bytes = sum(int(tensor.numel()) * tensor.element_size() for tensor in state.values())
    return BenchTarget(
        path, "checkpoint", ExportBundle(checkpoint_path.parent, manifest), ("torch",), ("fp32",),
        checkpoint=checkpoint_path, extra={"params": params, "flops": flops, "weight_bytes": weight_bytes},
    )


def _check_settings(batches: Sequence[int], warmup: int, iters: int) -> list[int]:
    if isinstance(batches, int):
        batches = [batches]
    if not batches:
        raise ConfigError("batches must name at least one batch size")
    wanted: list[int] = []
    for batch in batches:
        if int(batch) != batch or batch < 1:
            raise ConfigError(f"batch sizes must be positive integers, got {batch!r}")
        if int(batch) not in wanted:
            wanted.append(int(batch))
    if warmup < 0:
        raise ConfigError(f"warmup must be 0 or more iterations, got {warmup}")
    if iters < 1:
        raise ConfigError(f"iters must be at least 1, got {iters}")
    return wanted


def _backends(target: BenchTarget, backends: Sequence[str] | None) -> list[str]:
    if backends is None or len(backends) == 0:
        return [target.backends[0]]
    if isinstance(backends, str):
        backends = [backends]
    for backend in backends:
        if backend not in target.backends:
            raise ConfigError(
                f"a {target.kind} ('{target.path}') runs on {', '.join(target.backends)}; got backend {backend!r}"
            )
    return list(dict.fromkeys(backends))


def _complexity(target: BenchTarget) -> tuple[int | None, int | None]:
    if target.kind == "checkpoint":
        return target.extra["params"], target.extra["flops"]
    try:
        import onnx  # noqa: F401
    except ImportError:
        # A device install has no onnx: the counts are a property of the model, taken on the export machine.
        return None, None
    return onnx_complexity(target.bundle.model_path("fp32"), target.bundle.input_size)


def _model_bytes(target: BenchTarget, backend: str, precision: str, options: dict[str, Any]) -> int:
    """Bytes of what the backend loads: the ONNX file, the engine file, or for PyTorch the network's weights as the
    checkpoint stores them."""
    if target.kind == "checkpoint":
        return int(target.extra["weight_bytes"])
    if backend == "tensorrt":
        entry = (target.bundle.manifest.get("engines") or {}).get(precision)
        if entry is None:
            raise ConfigError(
                f"bundle '{target.bundle.path}' has no {precision} TensorRT engine; build it with "
                f"edgereid build {target.bundle.path} --precision {precision}"
            )
        return (target.bundle.path / entry["file"]).stat().st_size
    if backend == "torch":
        from edgereid.training.checkpoint import load_checkpoint

        source = options.get("checkpoint") or target.bundle.manifest["source"]["checkpoint"]
        _, _, state = load_checkpoint(source).network(target.bundle.manifest["network"])
        return sum(int(tensor.numel()) * tensor.element_size() for tensor in state.values())
    return target.bundle.model_path(precision).stat().st_size


def onnx_complexity(path: str | Path, input_size: tuple[int, int]) -> tuple[int, int]:
    """Parameters (elements of the floating-point initialisers) and FLOPs per image (``FLOPS_CONVENTION``) of the
    ONNX model at ``path``, its batch dimension fixed to 1 for shape inference. Needs onnx."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    floating = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    # Integer initialisers are shapes and axes, not weights.
    params = sum(int(np.prod(tensor.dims)) for tensor in initializers.values() if tensor.data_type in floating)

    graph_inputs = [value for value in graph.input if value.name not in initializers]
    if len(graph_inputs) != 1:
        raise DataError(f"'{path}' has {len(graph_inputs)} inputs; an edgereid model has one image input")
    dims = graph_inputs[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, *input_size), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {value.name: _shape(value) for value in [*inferred.graph.value_info, *inferred.graph.input,
                                                      *inferred.graph.output]}
    shapes.update({name: list(tensor.dims) for name, tensor in initializers.items()})

    macs = 0
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        output = shapes.get(node.output[0])
        operands = [shapes.get(name) for name in node.input[:2]]
        if output is None or any(shape is None for shape in operands):
            raise DataError(f"'{path}': shape inference left the shapes of {node.op_type} node {node.name!r} unknown")
        macs += _node_macs(node, output, operands)  # type: ignore[arg-type]
    return params, 2 * macs


def _shape(value: onnx.ValueInfoProto) -> list[int] | None:
    dims = value.type.tensor_type.shape.dim
    if not all(dim.HasField("dim_value") for dim in dims):
        return None
    return [int(dim.dim_value) for dim in dims]


def _node_macs(node: onnx.NodeProto, output: list[int], operands: list[list[int]]) -> int:
    if node.op_type == "Conv":
        # Each output element sums over (input channels / groups) × kernel: exactly the weight's trailing dims.
        return int(np.prod(output)) * int(np.prod(operands[1][1:]))
    if node.op_type == "ConvTranspose":
        # Each input element scatters into (output channels / groups) × kernel outputs.
        weight = operands[1]
        return int(np.prod(operands[0])) * int(np.prod(weight[1:]))
    if node.op_type == "Gemm":
        trans_a = next((attribute.i for attribute in node.attribute if attribute.name == "transA"), 0)
        inner = operands[0][0] if trans_a else operands[0][1]
        return int(np.prod(output)) * int(inner)
    return int(np.prod(output)) * int(operands[0][-1])  # MatMul


def torch_complexity(model: torch.nn.Module, input_size: tuple[int, int]) -> tuple[int, int, int]:
    """Embedding size, parameters of the modules the eval forward runs (a classifier that only training uses is
    not counted, as it is not exported) and FLOPs per image (``FLOPS_CONVENTION``) of ``model`` in eval mode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    used: list[torch.nn.Module] = []
    hooks = [module.register_forward_hook(lambda module, *_: used.append(module)) for module in model.modules()]
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            output = model.eval()(torch.zeros(1, 3, *input_size))
    finally:
        for hook in hooks:
            hook.remove()
    parameters = {id(parameter): parameter for module in used for parameter in module.parameters(recurse=False)}
    params = sum(int(parameter.numel()) for parameter in parameters.values())
    return int(output.shape[-1]), params, int(counter.get_total_flops())


# --- the measuring process -----------------------------------------------------------------------------------


def _run_worker(
    target: BenchTarget, backend: str, precision: str, batch: int, warmup: int, iters: int, options: dict[str, Any]
) -> dict[str, Any]:
    """One (backend, precision, batch) measured in a fresh interpreter; its errors re-raised here as they were."""
    if target.kind == "checkpoint":
        options = {**options, "checkpoint": str(target.checkpoint)}
    spec = {
        "bundle": str(target.bundle.path),
        "manifest": target.bundle.manifest if target.kind == "checkpoint" else None,
        "backend": backend,
        "precision": precision,
        "batch": batch,
        "warmup": warmup,
        "iters": iters,
        "options": options,
    }
    with tempfile.TemporaryDirectory(prefix="edgereid-bench-") as work:
        spec_path, result_path = Path(work) / "spec.json", Path(work) / "result.json"
        spec_path.write_text(json.dumps(spec))
        # The source tree this module runs from, so that a checkout that is not installed works the same.
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), *filter(None, [os.environ.get("PYTHONPATH")])]
        )}
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "edgereid.report._bench_worker", str(spec_path), str(result_path)],
                capture_output=True, text=True, env=environment, timeout=_WORKER_TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired:
            raise EdgeReIDError(
                f"benchmarking {backend} {precision} batch {batch} of '{target.path}' took over "
                f"{_WORKER_TIMEOUT_S} s; use fewer --iters"
            ) from None
        if not result_path.is_file():
            last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgeReIDError(
                f"benchmarking {backend} {precision} batch {batch} of '{target.path}' failed "
                f"(exit code {completed.returncode}): {last}"
            )
        result = json.loads(result_path.read_text())
    if "error" in result:
        # The worker's EdgeReIDError, raised again as the same class so the CLI reports it the same way.
        kind = getattr(errors, result["error"]["type"], EdgeReIDError)
        raise kind(result["error"]["message"])
    return dict(result["measurement"])


def measure(
    bundle: ExportBundle, backend: str, precision: str, batch: int, warmup: int, iters: int, options: dict[str, Any]
) -> dict[str, Any]:
    """Load the model and time ``iters`` inferences of a random normalised batch after ``warmup`` untimed ones, in
    this process (``bench_target`` calls it in a fresh one): one run entry of the bench document, without its
    backend, precision, model size and batch."""
    from edgereid.runtime.runners import create_runner

    baseline_mb = _current_rss_mb()
    height, width = bundle.input_size
    images = np.random.default_rng(0).standard_normal((batch, 3, height, width), dtype=np.float32)
    latencies, compute, to_device, to_host = [], [], [], []
    with create_runner(bundle, backend, precision, **options) as runner:
        detail = runner.backend_detail
        for _ in range(warmup):
            runner.infer(images)
        for _ in range(iters):
            started = time.perf_counter()
            runner.infer(images)
            latencies.append(time.perf_counter() - started)
            timing = runner.last_timing
            compute.append(None if timing is None else timing.compute_s)
            to_device.append(None if timing is None else timing.host_to_device_s)
            to_host.append(None if timing is None else timing.device_to_host_s)
        device_peak_mb = _torch_device_peak_mb(runner, backend)
    seconds = np.asarray(latencies)
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99]) * 1000.0
    return {
        "backend_detail": detail,
        "latency_ms": {"mean": float(seconds.mean() * 1000.0), "p50": float(p50), "p90": float(p90),
                       "p99": float(p99)},
        "throughput_ips": float(batch / seconds.mean()),
        "compute_ms": _mean_ms(compute),
        "host_to_device_ms": _mean_ms(to_device),
        "device_to_host_ms": _mean_ms(to_host),
        "peak_memory_mb": _peak_rss_mb(),
        "baseline_memory_mb": baseline_mb,
        "device_peak_memory_mb": device_peak_mb,
        "memory_method": MEMORY_METHOD + (DEVICE_MEMORY_METHOD if device_peak_mb is not None else ""),
    }


def _mean_ms(values: list[float | None]) -> float | None:
    """The mean in milliseconds, None where the backend did not separate this part on every iteration."""
    if not values or any(value is None for value in values):
        return None
    return float(np.mean(np.asarray(values, dtype=np.float64)) * 1000.0)


def _torch_device_peak_mb(runner: Any, backend: str) -> float | None:
    if backend != "torch" or "torch" not in sys.modules:
        return None
    import torch

    if not torch.cuda.is_available() or not torch.cuda.max_memory_allocated():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def _peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Kilobytes on Linux, bytes on macOS.
        kb = peak // 1024 if sys.platform == "darwin" else peak
    return round(kb / 1024, 1)
