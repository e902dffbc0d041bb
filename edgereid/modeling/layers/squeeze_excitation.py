"""Squeeze-and-excitation (Hu et al., CVPR 2018) as FastReID's ``layers/se_layer.py`` builds it for SE-ResNets."""

from __future__ import annotations

from torch import Tensor, nn


class SqueezeExcitation(nn.Module):
    """Scales each channel by a sigmoid gate computed from the globally averaged map.

    Bias-free Linear layers in ``fc`` (not torchvision's 1×1 convs with biases), so FastReID's ``se.fc.0/2.weight``
    keys load as they are.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = int(channels / reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]
