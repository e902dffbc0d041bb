"""The TensorRT backend: a bundle's engine (``edgereid build``) on one CUDA device, run through name-based I/O with
``execute_async_v3`` on one stream. Host buffers are pinned and device buffers sized once for the engine
profile's largest batch; each batch is copied in, run and copied out on the stream with events between the steps,
so ``last_timing`` separates the copies from the compute as the GPU measured them.

An engine is checked before it is deserialised: the bundle must have one for the precision, built for this GPU's
architecture and this TensorRT (see ``edgereid.runtime.trt.check_engine_compatible``). An engine built for a DLA
core is deserialised with the runtime set to that core (which must exist here).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.bundle_format import ENGINE_PRECISIONS, ExportBundle
from edgereid.errors import ConfigError, DataError, EdgeReIDError
from edgereid.runtime.runners import register_runner
from edgereid.runtime.runners.base import InferenceTiming, Runner
from edgereid.runtime.trt import (
    EngineCompatibilityError,
    check_engine_compatible,
    require_tensorrt,
    tensorrt_logger,
    tensorrt_messages,
)


@register_runner("tensorrt")
class TensorRTRunner(Runner):
    """``device`` is the CUDA device index. Batches smaller than the engine profile's minimum (a fixed-batch DLA
    engine, say) are padded to it, and the padding's outputs dropped."""

    precisions = ENGINE_PRECISIONS

    def __init__(self, bundle: ExportBundle, precision: str = "fp32", *, device: int = 0) -> None:
        super().__init__(bundle, precision)
        # Before TensorRT is imported: a missing engine is the bundle's problem, whatever this machine has.
        engine_path = bundle.engine_path(precision)
        entry = bundle.engines[precision]
        require_tensorrt()
        import tensorrt

        from edgereid.runtime.cuda import open_device

        self._tensorrt_version: str = tensorrt.__version__
        self._cuda = open_device(device)
        try:
            with self._cuda.activate():
                self._load(engine_path, entry)
        except BaseException:
            self._cuda.close()
            raise

    def _load(self, engine_path: Path, entry: dict[str, Any]) -> None:
        require_tensorrt()
        import tensorrt as trt
        gpu = self._cuda.info
        check_engine_compatible(entry, trt.__version__, gpu.name, gpu.compute_capability)
        self._logger = tensorrt_logger()
        mark = self._logger.count
        self._runtime = trt.Runtime(self._logger)
        dla_core = entry.get("options", {}).get("dla_core")
        if dla_core is not None:
            # An engine built for a DLA core runs on the core the runtime names when it deserialises it (trtexec sets
            # it the same way); left unset, a core-1 engine would not be pinned to core 1.
            cores = int(self._runtime.num_DLA_cores)
            if int(dla_core) >= cores:
                raise EngineCompatibilityError(
                    f"'{engine_path}' was built for DLA core {dla_core}; TensorRT {trt.__version__} on {gpu.name} has "
                    f"{cores} DLA core(s): rebuild it here with: edgereid build {self.bundle.path} --precision "
                    f"{self.precision}" + (f" --batch N --dla-core {cores - 1}" if cores else " (for the GPU)")
                )
            self._runtime.DLA_core = int(dla_core)
        if entry.get("options", {}).get("version_compatible"):
            # A version-compatible plan carries its own lean runtime (host code); this bundle's own engine, whose
            # sha256 load_bundle has checked, is trusted to run it.
            self._runtime.engine_host_code_allowed = True
        engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise DataError(
                f"TensorRT {trt.__version__} cannot load '{engine_path}': {tensorrt_messages(mark)}; "
                f"rebuild it with: edgereid build {self.bundle.path} --precision {self.precision}"
            )
        self._engine = engine
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        outputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT]
        if inputs != [self.input_name] or outputs != [self.output_name]:
            raise DataError(
                f"'{engine_path}' has inputs {inputs} and outputs {outputs}; its bundle's manifest says "
                f"[{self.input_name!r}] and [{self.output_name!r}]"
            )
        low, _, high = (dims[0] for dims in engine.get_tensor_profile_shape(self.input_name, 0))
        self._min_batch, self._max_batch = int(low), int(high)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EdgeReIDError(
                f"TensorRT cannot create an execution context for '{engine_path}' (out of device memory?): "
                f"{tensorrt_messages(mark)}"
            )
        height, width = self.input_size
        input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        cuda = self._cuda
        self._host_input = cuda.pinned_empty((self._max_batch, 3, height, width), input_dtype)
        self._host_output = cuda.pinned_empty((self._max_batch, self.feature_dim), output_dtype)
        self._device_input = cuda.device_alloc(self._host_input.nbytes)
        self._device_output = cuda.device_alloc(self._host_output.nbytes)
        self._context.set_tensor_address(self.input_name, self._device_input)
        self._context.set_tensor_address(self.output_name, self._device_output)
        self._events = [cuda.event() for _ in range(4)]
        self._closed = False

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    @property
    def backend_detail(self) -> str:
        gpu = self._cuda.info
        detail = f"TensorRT {self._tensorrt_version} on {gpu.name} (sm_{gpu.compute_capability.replace('.', '')})"
        dla_core = self.bundle.engines[self.precision].get("options", {}).get("dla_core")
        return detail + (f", DLA core {dla_core}" if dla_core is not None else "") + f", {self._cuda.binding}"

    def infer(self, images: np.ndarray) -> np.ndarray:
        batch = self.check_batch(images)
        if self._closed:
            raise EdgeReIDError(f"the tensorrt runner of '{self.bundle.path}' ({self.precision}) is closed")
        count = len(batch)
        rows = max(count, self._min_batch)
        cuda = self._cuda
        started = time.perf_counter()
        with cuda.activate():
            host_input = self._host_input[:rows]
            host_input[:count] = batch
            host_input[count:] = 0
            if not self._context.set_input_shape(self.input_name, (rows, *batch.shape[1:])):
                raise ConfigError(
                    f"the engine of '{self.bundle.path}' ({self.precision}) does not accept a batch of {rows}; its "
                    f"profile is {self._min_batch} to {self._max_batch}"
                )
            host_output = self._host_output[:rows]
            start, copied_in, computed, copied_out = self._events
            cuda.record(start)
            cuda.copy_to_device(self._device_input, host_input)
            cuda.record(copied_in)
            mark = self._logger.count
            if not self._context.execute_async_v3(cuda.stream):
                raise EdgeReIDError(
                    f"TensorRT failed to run the engine of '{self.bundle.path}' ({self.precision}): "
                    f"{tensorrt_messages(mark)}"
                )
            cuda.record(computed)
            cuda.copy_to_host(host_output, self._device_output)
            cuda.record(copied_out)
            cuda.synchronize()
            timing = InferenceTiming(
                total_s=time.perf_counter() - started,
                compute_s=cuda.elapsed_s(copied_in, computed),
                host_to_device_s=cuda.elapsed_s(start, copied_in),
                device_to_host_s=cuda.elapsed_s(computed, copied_out),
            )
        self.last_timing = timing
        # A copy: the pinned buffer is overwritten by the next batch.
        return np.array(host_output[:count], dtype=np.float32)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        with self._cuda.activate():
            # TensorRT's objects go before the memory they point into, the context before its engine.
            del self._context, self._engine, self._runtime
        self._cuda.close()
