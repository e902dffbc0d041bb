"""Embedding decoded images with a model: batched, on the model's device, with optional flip averaging."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgereid.data.transforms import EvalTransform


@torch.inference_mode()
def embed_images(
    model: nn.Module,
    images: np.ndarray,
    transform: EvalTransform,
    device: torch.device,
    *,
    batch_size: int = 128,
    flip: bool = False,
) -> np.ndarray:
    """float32 (N, D) features of N x H x W x 3 uint8 images; with ``flip`` the mean of the image's and its
    mirror's features, as FastReID's flip test computes it."""
    was_training = model.training
    model.eval()
    transform = transform.to(device)
    features = []
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2)
            inputs = transform(batch)
            if device.type == "cuda":
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            output = model(inputs).float()
            if flip:
                output = (output + model(inputs.flip(dims=[3])).float()) / 2
            features.append(output.cpu())
    finally:
        model.train(was_training)
    return torch.cat(features).numpy()
