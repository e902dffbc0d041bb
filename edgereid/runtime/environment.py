"""What machine a measurement was taken on, recorded beside every benchmark so that numbers from a Jetson and
from a workstation are never confused: CPU model and cores, memory, GPUs, OS, Python and the versions of the
libraries that do the work.

Torch-free and failure-free: versions are read from the installed distributions' metadata (importing torch only to
ask its version would cost seconds and gigabytes on a device), and a missing ``nvidia-smi`` or an unreadable
``/proc`` file leaves its entry empty instead of failing the benchmark.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# The distributions each library may be installed as, first match wins (a CUDA ONNX Runtime is a different
# distribution with the same module; TensorRT wheels are named per CUDA major version).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "edgereid": ("edgereid",),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_lean", "tensorrt_dispatch"),
    "torch": ("torch",),
    "cuda-python": ("cuda-python",),
}
_NVIDIA_SMI_TIMEOUT_S = 10
# CPU features (as /proc/cpuinfo spells them) with 8-bit dot-product instructions: ONNX Runtime's int8 kernels are
# about twice FP32's speed with one of them and no faster than FP32 without (measured on Zen 1 and Zen 4).
INT8_DOT_PRODUCT_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def describe_environment() -> dict[str, Any]:
    """The machine and software a measurement ran on, as JSON-ready values; what cannot be found is None."""
    return {
        "os": platform.platform(),
        "machine": platform.machine(),
        # A Jetson names itself in the device tree (nvidia-smi is absent there on older JetPacks).
        "device_model": _read_text(Path("/proc/device-tree/model")),
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "physical_cores": _physical_cores(),
            # What this process may run on: a container or taskset often allows fewer cores than the machine has.
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "int8_dot_product": _int8_dot_product_features(),
        },
        "memory_mb": _total_memory_mb(),
        "gpus": _gpus(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": library_versions(),
    }


def library_versions() -> dict[str, str | None]:
    """The installed version of each library in ``LIBRARIES``, None where it is not installed."""
    versions: dict[str, str | None] = {}
    for library, distributions in LIBRARIES.items():
        versions[library] = None
        for distribution in distributions:
            try:
                versions[library] = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                continue
            break
    if versions["edgereid"] is None:
        # A source checkout run without installing has no distribution metadata.
        from edgereid import __version__

        versions["edgereid"] = __version__
    return versions


def machine_summary(environment: dict[str, Any]) -> str:
    """One line naming the machine of ``describe_environment()``: its GPU (or Jetson) and CPU with usable cores and
    its INT8 dot-product instructions (what CPU INT8 timings depend on)."""
    cpu = environment.get("cpu") or {}
    details = [f"{cpu['usable_cores']} cores"] if cpu.get("usable_cores") else []
    details += cpu.get("int8_dot_product") or []
    parts = [f"{cpu.get('model') or environment.get('machine') or 'unknown CPU'}"
             + (f" ({', '.join(details)})" if details else "")]
    gpus = [gpu["name"] for gpu in environment.get("gpus") or [] if gpu.get("name")]
    if gpus:
        parts.insert(0, " + ".join(gpus))
    elif environment.get("device_model"):
        parts.insert(0, str(environment["device_model"]))
    return ", ".join(parts)


def _read_text(path: Path) -> str | None:
    try:
        # The device tree's strings end in NUL.
        return path.read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical processor (empty off Linux)."""
    text = _read_text(Path("/proc/cpuinfo"))
    if text is None:
        return []
    processors = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if fields:
            processors.append(fields)
    return processors


def _cpu_model() -> str | None:
    for processor in _cpuinfo():
        # x86 says "model name"; ARM kernels say "Model" (the board) or nothing but "CPU part".
        for key in ("model name", "Model", "Hardware"):
            if processor.get(key):
                return processor[key]
    return platform.processor() or None


def _int8_dot_product_features() -> list[str]:
    """Which of ``INT8_DOT_PRODUCT_FEATURES`` the first processor lists (x86 "flags", ARM "Features")."""
    processors = _cpuinfo()
    if not processors:
        return []
    listed = set((processors[0].get("flags") or processors[0].get("Features") or "").split())
    return [feature for feature in INT8_DOT_PRODUCT_FEATURES if feature in listed]


def _physical_cores() -> int | None:
    cores = {(entry.get("physical id"), entry.get("core id")) for entry in _cpuinfo() if "core id" in entry}
    # ARM /proc/cpuinfo has no core ids: each processor listed is a core.
    return len(cores) or None


def _total_memory_mb() -> float | None:
    text = _read_text(Path("/proc/meminfo"))
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024, 1)
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs as nvidia-smi reports them, else as NVML (pynvml) does; empty where neither is available."""
    executable = shutil.which("nvidia-smi")
    if executable is not None:
        try:
            completed = subprocess.run(
                [executable, "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S, check=False,
            )
        except (OSError, subprocess.SubprocessError):
            completed = None
        if completed is not None and completed.returncode == 0:
            gpus = []
            for line in completed.stdout.strip().splitlines():
                name, memory, driver, capability = ([*(field.strip() for field in line.split(",")), "", "", ""])[:4]
                gpus.append({
                    "name": name,
                    "memory_mb": float(memory) if memory.replace(".", "", 1).isdigit() else None,
                    "driver": driver or None,
                    "compute_capability": capability or None,
                })
            if gpus:
                return gpus
    return _nvml_gpus()


def _nvml_gpus() -> list[dict[str, Any]]:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends: no usable driver means no GPU to report
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append({
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "memory_mb": round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20, 1),
                "driver": _text(driver),
                "compute_capability": f"{major}.{minor}",
            })
        return gpus
    except Exception:  # noqa: BLE001 - a partly working NVML (a Jetson's) must not fail a benchmark
        return []
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    # Older pynvml releases return bytes.
    return value.decode() if isinstance(value, bytes) else value
