"""The little of CUDA that the TensorRT builder and runner need, over whichever Python binding is installed:
cuda-python (NVIDIA's current samples; ``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart`` before, as on
JetPack 6) or pycuda (what most Jetson users have). One device with its name and compute capability, pinned host
buffers, device buffers, one stream and events to time the copies apart from the compute.

Neither binding is imported until a device is opened, so the runtime imports on a machine without CUDA.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgereid.errors import ConfigError, EdgeReIDError
from edgereid.runtime.resource import Closable

CUDA_BINDINGS_MISSING = (
    "TensorRT needs a CUDA binding for Python and neither cuda-python nor pycuda is installed here; install "
    "cuda-python of the CUDA major version of this machine's driver: pip install 'cuda-python>=12,<13' for CUDA 12 "
    "(JetPack 6: 'edgereid[jetson-jp6]'), 'cuda-python>=13,<14' for CUDA 13 (JetPack 7: 'edgereid[jetson-jp7]'), "
    "or pycuda"
)
# Where cuda-python keeps the CUDA runtime API: cuda.bindings.runtime from 12.6 on, cuda.cudart before (cuda-python
# 12.5 and older; later 12.x releases keep it as a deprecated alias, 13 removed it).
_CUDART_MODULES = ("cuda.bindings.runtime", "cuda.cudart")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "major.minor", as NVIDIA's tables write it ("8.7" for Orin)


class CudaDevice(Closable, abc.ABC):
    """One GPU, made current by :meth:`activate`, with one stream; every buffer and event it allocates is freed by
    :meth:`close`."""

    binding: str
    info: GpuInfo
    stream: int  # the stream's handle, as TensorRT's execute_async_v3 takes it

    @abc.abstractmethod
    def activate(self) -> contextlib.AbstractContextManager[None]:
        """Make this device current for the calling thread for the duration of a ``with`` block."""

    @abc.abstractmethod
    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A page-locked host array (copies from it run asynchronously and at full bus speed)."""

    @abc.abstractmethod
    def device_alloc(self, nbytes: int) -> int:
        """The device address of ``nbytes`` of device memory."""

    @abc.abstractmethod
    def copy_to_device(self, address: int, host: np.ndarray) -> None:
        """Enqueue a copy of the C-contiguous ``host`` array to ``address`` on the stream."""

    @abc.abstractmethod
    def copy_to_host(self, host: np.ndarray, address: int) -> None:
        """Enqueue a copy from ``address`` into the C-contiguous ``host`` array on the stream."""

    @abc.abstractmethod
    def event(self) -> Any:
        """A new event; :meth:`record` puts it on the stream."""

    @abc.abstractmethod
    def record(self, event: Any) -> None: ...

    @abc.abstractmethod
    def elapsed_s(self, start: Any, end: Any) -> float:
        """Seconds between two recorded events, once the stream has reached ``end``."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait until everything enqueued on the stream has run."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free every buffer, event and the stream; safe to call twice."""


def _import_cudart() -> Any:
    """cuda-python's CUDA runtime module, in the layout this cuda-python has (see ``_CUDART_MODULES``)."""
    errors = []
    for module in _CUDART_MODULES:
        try:
            return importlib.import_module(module)
        except ImportError as error:
            errors.append(f"{module}: {error}")
    raise EdgeReIDError(f"{CUDA_BINDINGS_MISSING} (cuda-python's runtime module does not import: {'; '.join(errors)})")


class _CudaPythonDevice(CudaDevice):
    binding = "cuda-python"

    def __init__(self, index: int) -> None:
        self._cudart = _import_cudart()
        self._index = index
        self._device_buffers: list[int] = []
        self._host_buffers: list[int] = []
        self._events: list[Any] = []
        self._stream: Any = None
        count = self._call("cudaGetDeviceCount")
        if index >= count:
            raise ConfigError(f"CUDA device {index} does not exist; this machine has {count} (0 to {count - 1})")
        self._call("cudaSetDevice", index)
        properties = self._call("cudaGetDeviceProperties", index)
        name = properties.name
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        self.info = GpuInfo(index, name.rstrip("\0").strip(), f"{properties.major}.{properties.minor}")
        self._stream = self._call("cudaStreamCreate")
        self.stream = int(self._stream)

    def _call(self, function: str, *args: Any) -> Any:
        """The result of a cudart call, whose first value is its error code; a failure names the call and error."""
        result = getattr(self._cudart, function)(*args)
        error = result[0]
        if error != self._cudart.cudaError_t.cudaSuccess:
            _, message = self._cudart.cudaGetErrorString(error)
            text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
            raise EdgeReIDError(f"CUDA {function} failed on device {self._index}: {text} ({error!r})")
        return result[1] if len(result) > 1 else None

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        # The runtime API's device is per thread: setting it is all a call from another thread needs.
        self._call("cudaSetDevice", self._index)
        yield

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        address = int(self._call("cudaMallocHost", nbytes))
        self._host_buffers.append(address)
        raw = np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctypes.c_uint8)), shape=(nbytes,))
        return raw[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)

    def device_alloc(self, nbytes: int) -> int:
        address = int(self._call("cudaMalloc", max(nbytes, 1)))
        self._device_buffers.append(address)
        return address

    def copy_to_device(self, address: int, host: np.ndarray) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", address, host.ctypes.data, host.nbytes, kind, self._stream)

    def copy_to_host(self, host: np.ndarray, address: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", host.ctypes.data, address, host.nbytes, kind, self._stream)

    def event(self) -> Any:
        event = self._call("cudaEventCreate")
        self._events.append(event)
        return event

    def record(self, event: Any) -> None:
        self._call("cudaEventRecord", event, self._stream)

    def elapsed_s(self, start: Any, end: Any) -> float:
        return float(self._call("cudaEventElapsedTime", start, end)) / 1000.0

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self._stream)

    def close(self) -> None:
        cudart = self._cudart
        # Errors are ignored here: close runs from __exit__ and error paths, where the first error is the news.
        for event in self._events:
            cudart.cudaEventDestroy(event)
        for address in self._device_buffers:
            cudart.cudaFree(address)
        for address in self._host_buffers:
            cudart.cudaFreeHost(address)
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
        self._events, self._device_buffers, self._host_buffers, self._stream = [], [], [], None


class _PyCudaDevice(CudaDevice):
    binding = "pycuda"

    def __init__(self, index: int) -> None:
        from pycuda import driver

        self._driver: Any = driver
        try:
            driver.init()
            count = driver.Device.count()
        except driver.Error as error:
            raise EdgeReIDError(f"CUDA cannot be initialised (pycuda: {error})") from None
        if index >= count:
            raise ConfigError(f"CUDA device {index} does not exist; this machine has {count} (0 to {count - 1})")
        device = driver.Device(index)
        major, minor = device.compute_capability()
        self.info = GpuInfo(index, str(device.name()), f"{major}.{minor}")
        # The primary context is the one TensorRT's runtime-API calls use; pycuda.autoinit would create another.
        self._context: Any = device.retain_primary_context()
        self._allocations: list[Any] = []
        self._closed = False
        with self.activate():
            self._stream: Any = driver.Stream()
        self.stream = int(self._stream.handle)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._driver.Context.pop()

    def pinned_empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        array: np.ndarray = self._driver.pagelocked_empty(shape, dtype)
        self._allocations.append(array.base)  # the HostAllocation, freed in close while the context is current
        return array

    def device_alloc(self, nbytes: int) -> int:
        allocation = self._driver.mem_alloc(max(nbytes, 1))
        self._allocations.append(allocation)
        return int(allocation)

    def copy_to_device(self, address: int, host: np.ndarray) -> None:
        self._driver.memcpy_htod_async(address, host, self._stream)

    def copy_to_host(self, host: np.ndarray, address: int) -> None:
        self._driver.memcpy_dtoh_async(host, address, self._stream)

    def event(self) -> Any:
        return self._driver.Event()

    def record(self, event: Any) -> None:
        event.record(self._stream)

    def elapsed_s(self, start: Any, end: Any) -> float:
        return float(end.time_since(start)) / 1000.0

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self.activate():
            for allocation in self._allocations:
                allocation.free()
            self._allocations = []
            self._stream = None
        self._context.detach()


def cuda_binding() -> str | None:
    """The CUDA binding :func:`open_device` would use ("cuda-python" or "pycuda"), None when neither is installed.
    cuda-python counts when either of its runtime modules is there (``cuda.bindings.runtime``, or the older
    ``cuda.cudart``), not merely the ``cuda`` namespace, which other NVIDIA packages share."""
    import importlib.util

    probes = [(module, "cuda-python") for module in _CUDART_MODULES] + [("pycuda.driver", "pycuda")]
    for module, binding in probes:
        with contextlib.suppress(ImportError, ValueError, AttributeError, OSError):
            if importlib.util.find_spec(module) is not None:
                return binding
    return None


def open_device(index: int = 0) -> CudaDevice:
    """CUDA device ``index`` through cuda-python, else pycuda; neither installed is an error saying how to get one."""
    if index < 0:
        raise ConfigError(f"CUDA device must be 0 or more, got {index}")
    binding = cuda_binding()
    if binding is None:
        raise EdgeReIDError(CUDA_BINDINGS_MISSING)
    return _CudaPythonDevice(index) if binding == "cuda-python" else _PyCudaDevice(index)
