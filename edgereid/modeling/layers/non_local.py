"""The non-local block (Wang et al., CVPR 2018) in FastReID's embedded dot-product form (``layers/non_local.py``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NonLocal(nn.Module):
    """``x + W(softmax-free attention(x))``: every position attends to every other with weights θ(x)·φ(x) / N.

    FastReID sets the inner width to ``reduc_ratio // reduc_ratio`` (= 1 channel), which reads as a slip; this
    uses ``channels // reduc_ratio`` as the paper. ``W`` ends in a zero-initialised BN, so a new block starts as
    the identity and does not disturb pretrained weights.
    """

    def __init__(self, channels: int, reduc_ratio: int = 2) -> None:
        super().__init__()
        inner = max(1, channels // reduc_ratio)
        self.inter_channels = inner
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        out_bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(out_bn.weight)
        nn.init.zeros_(out_bn.bias)
        self.W = nn.Sequential(nn.Conv2d(inner, channels, kernel_size=1), out_bn)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        g_x = self.g(x).flatten(2).transpose(1, 2)  # B, N, C'
        theta_x = self.theta(x).flatten(2).transpose(1, 2)  # B, N, C'
        phi_x = self.phi(x).flatten(2)  # B, C', N
        affinity = torch.matmul(theta_x, phi_x) / (h * w)
        y = torch.matmul(affinity, g_x).transpose(1, 2).reshape(b, self.inter_channels, h, w)
        return x + self.W(y)
