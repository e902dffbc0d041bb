"""The PyTorch reference backend: the bundle's source checkpoint rebuilt as it was trained (unfolded BatchNorm, eval
mode), for checking what the exported graphs compute against the network itself. Needs the ``[train]`` extra;
torch is imported when the runner is created, never by the runtime otherwise."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgereid.bundle_format import ExportBundle
from edgereid.errors import ConfigError, DataError, EdgeReIDError
from edgereid.runtime.runners import register_runner
from edgereid.runtime.runners.base import InferenceTiming, Runner


@register_runner("torch")
class TorchRunner(Runner):
    """``checkpoint`` replaces the source checkpoint the manifest names (a bundle copied to another machine);
    ``device`` is any torch device ("cpu", "cuda", "cuda:1")."""

    # The reference is the trained network at its training precision.
    precisions = ("fp32",)

    def __init__(
        self,
        bundle: ExportBundle,
        precision: str = "fp32",
        *,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(bundle, precision)
        try:
            import torch
        except ImportError:
            raise EdgeReIDError(
                "the torch backend needs torch, which is not installed here (the base install is the on-device "
                "runtime); install it with: pip install 'edgereid[train]'"
            ) from None
        from edgereid.training.checkpoint import load_checkpoint
        from edgereid.training.evaluate import build_model

        source = Path(checkpoint if checkpoint is not None else bundle.manifest["source"]["checkpoint"])
        if not source.exists():
            raise DataError(
                f"the torch backend rebuilds the checkpoint bundle '{bundle.path}' was exported from, and "
                f"'{source}' does not exist; pass its current path with the runner option checkpoint=PATH"
            )
        try:
            self._device = torch.device(device)
        except RuntimeError as error:
            raise ConfigError(f"device {device!r} is not a torch device: {error}") from None
        self._torch: Any = torch
        self._model: Any = build_model(load_checkpoint(source), self._device, network=bundle.manifest["network"])
        self._checkpoint = source

    @property
    def backend_detail(self) -> str:
        detail = f"torch {self._torch.__version__} on {self._device}"
        if self._device.type == "cuda":
            detail += f" ({self._torch.cuda.get_device_name(self._device)})"
        return detail

    def infer(self, images: np.ndarray) -> np.ndarray:
        batch = self.check_batch(images)
        if self._model is None:
            raise EdgeReIDError(f"the torch runner of '{self.bundle.path}' is closed")
        torch = self._torch
        cuda = self._device.type == "cuda"
        started = time.perf_counter()
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self._device)
            if cuda:
                torch.cuda.synchronize(self._device)
            copied = time.perf_counter()
            output = self._model(inputs).float()
            if cuda:
                torch.cuda.synchronize(self._device)
            computed = time.perf_counter()
            result = output.cpu().numpy()
        finished = time.perf_counter()
        if cuda:
            self.last_timing = InferenceTiming(
                total_s=finished - started,
                compute_s=computed - copied,
                host_to_device_s=copied - started,
                device_to_host_s=finished - computed,
            )
        else:
            self.last_timing = InferenceTiming(total_s=finished - started, compute_s=computed - started)
        return np.asarray(result, dtype=np.float32)

    def close(self) -> None:
        self._model = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()
