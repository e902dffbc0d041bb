"""IBN-Net's instance-batch normalisation (Pan et al., ECCV 2018), as in FastReID's ``layers/batch_norm.py``."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class IBN(nn.Module):
    """InstanceNorm on the first half of the channels, BatchNorm on the rest (IBN-a's first norm of a block).

    IN removes per-image style (colour, contrast) that varies between cameras; BN on the other half keeps the
    content-discriminative statistics.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Not named `half` (FastReID's name): that would shadow nn.Module.half() and break fp16 conversion.
        self.in_channels = channels // 2
        self.IN = nn.InstanceNorm2d(self.in_channels, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.in_channels)

    def forward(self, x: Tensor) -> Tensor:
        first, second = torch.split(x, [self.in_channels, x.shape[1] - self.in_channels], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> IBN:
        """An IBN that starts from ``bn``'s parameters, so ImageNet weights loaded before the swap are not lost."""
        ibn = cls(bn.num_features)
        with torch.no_grad():
            ibn.IN.weight.copy_(bn.weight[: ibn.in_channels])
            ibn.IN.bias.copy_(bn.bias[: ibn.in_channels])
            ibn.BN.weight.copy_(bn.weight[ibn.in_channels :])
            ibn.BN.bias.copy_(bn.bias[ibn.in_channels :])
            assert bn.running_mean is not None and bn.running_var is not None
            assert ibn.BN.running_mean is not None and ibn.BN.running_var is not None
            ibn.BN.running_mean.copy_(bn.running_mean[ibn.in_channels :])
            ibn.BN.running_var.copy_(bn.running_var[ibn.in_channels :])
        return ibn
