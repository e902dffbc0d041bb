"""Training augmentation for whole batches, on the device the batch lives on, with random parameters per sample.

Images arrive as B x 3 x H x W tensors, uint8 in [0, 255] or float in [0, 1], and leave as normalised float32 at
the training size. Every random draw comes from the ``torch.Generator`` passed in, so a seeded generator gives the
same batch again. Apart from AutoAugment (see :class:`AutoAugmentConfig`) nothing reads a tensor value back to
the host, so a training step on the GPU does not wait for the augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# torchvision's own RGB <-> HSV conversions work on batches; only its public adjust_hue insists on one shift.
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from edgereid.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# How often a box (erasing, patch) is redrawn when it does not fit the image, as torchvision's RandomErasing.
_BOX_ATTEMPTS = 10


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] > bounds[1]:
        raise ValueError(f"expected (low, high) with low <= high, got {bounds}")
    return bounds


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
_AreaFraction = Annotated[float, Field(gt=0.0, le=1.0)]
_Aspect = Annotated[float, Field(gt=0.0)]
AreaRange = Annotated[tuple[_AreaFraction, _AreaFraction], AfterValidator(_ordered)]
AspectRange = Annotated[tuple[_Aspect, _Aspect], AfterValidator(_ordered)]


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    p: Probability
    """The chance that a sample gets this augmentation; 0 turns it off."""


class FlipConfig(_Op):
    """Horizontal flip."""

    p: Probability = 0.5


class PadCropConfig(_Op):
    """Pad each side by ``padding`` pixels, then crop a window of the original size at a random offset."""

    p: Probability = 1.0
    padding: int = Field(10, ge=1)
    mode: Literal["constant", "edge", "reflect", "symmetric"] = "constant"


class ColorJitterConfig(_Op):
    """Brightness, contrast and saturation factors in [1 - s, 1 + s] and a hue shift in [-hue, hue], per sample.

    Applied in that fixed order (torchvision's ColorJitter shuffles the order per call).
    """

    p: Probability = 0.0
    brightness: float = Field(0.15, ge=0.0)
    contrast: float = Field(0.15, ge=0.0)
    saturation: float = Field(0.1, ge=0.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)


class AutoAugmentConfig(_Op):
    """torchvision's AutoAugment with the ImageNet policy.

    torchvision draws one sub-policy per call, so the chosen samples are shuffled and cut into groups of
    ``group_size``, each group drawing its own. Cutting needs the number of chosen samples on the host: this op
    is the one that synchronises with the device, once per batch.
    """

    p: Probability = 0.0
    group_size: int = Field(4, ge=1)


class RandomErasingConfig(_Op):
    """Random erasing (Zhong et al.): a box covering ``area`` of the image, with height/width in ``aspect``.

    ``fill`` "random" draws every erased value uniformly in [0, 1]; "mean" fills with the normalisation mean,
    which becomes 0 after normalisation.
    """

    p: Probability = 0.5
    area: AreaRange = (0.02, 0.4)
    aspect: AspectRange = (0.3, 3.3)
    fill: Literal["random", "mean"] = "mean"


class RandomPatchConfig(_Op):
    """Random patch (Zhou et al., FastReID's RandomPatch): paste a box cut from another image of the batch.

    FastReID draws patches from a pool of earlier images; the other images of the same batch play that role here.
    The patch covers ``area`` of the image with height/width in ``aspect`` and is mirrored with chance ``flip``.
    """

    p: Probability = 0.0
    area: AreaRange = (0.01, 0.5)
    aspect: AspectRange = (0.1, 10.0)
    flip: Probability = 0.5


class CutoutConfig(_Op):
    """Cutout (DeVries and Taylor): zero a square, after normalisation, of ``side`` times the shorter image side."""

    p: Probability = 0.0
    side: float = Field(0.5, gt=0.0, le=1.0)


class AugmentConfig(BaseModel):
    """Every training augmentation; the defaults are FastReID's bag of tricks (flip, pad + crop, erasing)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    flip: FlipConfig = Field(default_factory=FlipConfig)
    pad_crop: PadCropConfig = Field(default_factory=PadCropConfig)
    color_jitter: ColorJitterConfig = Field(default_factory=ColorJitterConfig)
    auto_augment: AutoAugmentConfig = Field(default_factory=AutoAugmentConfig)
    random_erasing: RandomErasingConfig = Field(default_factory=RandomErasingConfig)
    random_patch: RandomPatchConfig = Field(default_factory=RandomPatchConfig)
    cutout: CutoutConfig = Field(default_factory=CutoutConfig)


class _Preprocess(nn.Module):
    """Resizing to the model's input size, scaling to [0, 1] and normalising: what training and evaluation share.

    ``mean`` and ``std`` are buffers, so moving the module to the training device once (``.to(device)``) spares a
    host-to-device copy per batch.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
            raise ConfigError(f"input size must be (height, width) with two positive integers, got {size!r}")
        if len(mean) != 3 or not all(0.0 <= value <= 1.0 for value in mean):
            raise ConfigError(
                f"mean must be three per-channel values in [0, 1] (torchvision's units, e.g. {IMAGENET_MEAN}), "
                f"got {tuple(mean)}"
            )
        if len(std) != 3 or not all(0.0 < value <= 1.0 for value in std):
            raise ConfigError(
                f"std must be three positive per-channel values up to 1 (torchvision's units, e.g. {IMAGENET_STD}), "
                f"got {tuple(std)}"
            )
        self.size = (size[0], size[1])
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def _to_unit_float(self, images: Tensor) -> Tensor:
        """``images`` at the model's size as float32 in [0, 1]; a new tensor is made before anything changes it."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a batch of RGB images shaped B x 3 x H x W, got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.size:
            images = F.resize(images, list(self.size), antialias=True)
        return F.to_dtype(images, torch.float32, scale=True)

    def _normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.device)) / self.std.to(images.device)


class EvalTransform(_Preprocess):
    """Evaluation input: resize to the model's size and normalise, nothing random."""

    def forward(self, images: Tensor) -> Tensor:
        return self._normalize(self._to_unit_float(images))


def build_eval_transform(
    size: tuple[int, int], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> EvalTransform:
    return EvalTransform(size, mean, std)


class BatchAugment(_Preprocess):
    """The training augmentation of :class:`AugmentConfig` for a whole batch, each sample drawing its own.

    Order, as FastReID: resize, AutoAugment, pad + crop, flip, colour jitter, random erasing, random patch,
    normalisation, cutout. Call it as ``augment(images, generator)``; the generator (optional) must live on the
    images' device.
    """

    def __init__(
        self,
        config: AugmentConfig,
        size: tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(size, mean, std)
        self.config = config
        self.auto_augment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        config = self.config
        x = self._to_unit_float(images)
        if config.auto_augment.p > 0:
            x = self._apply_auto_augment(x, generator)
        if config.pad_crop.p > 0:
            x = _pad_crop(x, _chosen(x, config.pad_crop.p, generator), config.pad_crop, generator)
        if config.flip.p > 0:
            x = torch.where(_per_image(_chosen(x, config.flip.p, generator)), F.horizontal_flip(x), x)
        if config.color_jitter.p > 0:
            x = _jitter_colour(x, _chosen(x, config.color_jitter.p, generator), config.color_jitter, generator)
        if config.random_erasing.p > 0:
            x = self._erase(x, _chosen(x, config.random_erasing.p, generator), generator)
        # A batch of one has no other image to take a patch from.
        if config.random_patch.p > 0 and x.shape[0] > 1:
            x = _paste_patches(x, _chosen(x, config.random_patch.p, generator), config.random_patch, generator)
        x = self._normalize(x)
        if config.cutout.p > 0:
            x = _cut_out(x, _chosen(x, config.cutout.p, generator), config.cutout, generator)
        return x

    def _apply_auto_augment(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        chosen = _chosen(x, self.config.auto_augment.p, generator)
        # Chosen samples first, in random order, so that groups mix identities rather than follow the PK layout.
        order = torch.where(chosen, _uniform(x, (x.shape[0],), generator), 2.0).argsort()
        seed = torch.randint(2**62, (), generator=generator, device=x.device)
        # The one host synchronisation of the batch: the group count must be known to call torchvision per group.
        chosen_count, policy_seed = torch.stack([chosen.sum(), seed]).tolist()
        if chosen_count == 0:
            return x
        group_size = self.config.auto_augment.group_size
        chosen_in_order = order[:chosen_count]
        # torchvision draws its sub-policies from the global CPU generator; seeding a forked copy of it keeps the
        # result a function of ``generator`` without disturbing anyone else's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(policy_seed)
            augmented = [
                self.auto_augment(F.to_dtype(x[chosen_in_order[start : start + group_size]], torch.uint8, scale=True))
                for start in range(0, chosen_count, group_size)
            ]
        return x.index_copy(0, chosen_in_order, F.to_dtype(torch.cat(augmented), torch.float32, scale=True))

    def _erase(self, x: Tensor, chosen: Tensor, generator: torch.Generator | None) -> Tensor:
        config = self.config.random_erasing
        boxes, found = _sample_boxes(x, config.area, config.aspect, generator)
        region = (boxes.mask(x) & _per_pixel(chosen & found)).unsqueeze(1)
        fill = _uniform(x, x.shape, generator) if config.fill == "random" else self.mean.to(x.device)
        return torch.where(region, fill, x)


class _Boxes(NamedTuple):
    """One box per sample, in pixels."""

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor

    def mask(self, images: Tensor) -> Tensor:
        """B x H x W, True inside each sample's box."""
        rows = torch.arange(images.shape[-2], device=images.device)
        cols = torch.arange(images.shape[-1], device=images.device)
        in_rows = (rows >= self.top[:, None]) & (rows < (self.top + self.height)[:, None])
        in_cols = (cols >= self.left[:, None]) & (cols < (self.left + self.width)[:, None])
        return in_rows[:, :, None] & in_cols[:, None, :]


def _uniform(
    like: Tensor, shape: Sequence[int], generator: torch.Generator | None, low: float = 0.0, high: float = 1.0
) -> Tensor:
    return torch.rand(tuple(shape), generator=generator, device=like.device) * (high - low) + low


def _chosen(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    """Which samples of the batch get an augmentation of chance ``p``."""
    return _uniform(x, (x.shape[0],), generator) < p


def _per_image(per_sample: Tensor) -> Tensor:
    return per_sample[:, None, None, None]


def _per_pixel(per_sample: Tensor) -> Tensor:
    return per_sample[:, None, None]


def _random_offset(x: Tensor, room: Tensor | int, generator: torch.Generator | None) -> Tensor:
    """An integer in [0, room] per sample, uniformly."""
    return (_uniform(x, (x.shape[0],), generator) * (room + 1)).floor().long()


def _sample_boxes(
    x: Tensor, area: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator | None
) -> tuple[_Boxes, Tensor]:
    """Boxes of ``area`` (fraction of the image) and height/width ``aspect``, at random positions inside the image.

    Like torchvision's RandomErasing, a box that does not fit is redrawn up to ``_BOX_ATTEMPTS`` times; all
    attempts are drawn at once and the first that fits is kept. The second result is False for samples where
    no attempt fitted, which then get no box.
    """
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    attempts = (batch, _BOX_ATTEMPTS)
    target_area = _uniform(x, attempts, generator, *area) * (height * width)
    # Log-uniform, so that tall and wide boxes are equally likely.
    ratio = torch.exp(_uniform(x, attempts, generator, math.log(aspect[0]), math.log(aspect[1])))
    box_heights = (target_area * ratio).sqrt().round().long()
    box_widths = (target_area / ratio).sqrt().round().long()
    fits = (box_heights >= 1) & (box_heights < height) & (box_widths >= 1) & (box_widths < width)
    first_fit = fits.int().argmax(dim=1, keepdim=True)
    box_height = box_heights.gather(1, first_fit).squeeze(1)
    box_width = box_widths.gather(1, first_fit).squeeze(1)
    top = _random_offset(x, height - box_height, generator)
    left = _random_offset(x, width - box_width, generator)
    return _Boxes(top, left, box_height, box_width), fits.any(dim=1)


def _gather_pixels(source: Tensor, batch: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``out[b, :, y, x] = source[batch, :, rows, cols]`` at [b, y, x]; the indices broadcast to B x H x W."""
    channels, source_height, source_width = source.shape[1:]
    flat_index = (batch * source_height + rows) * source_width + cols
    flat_source = source.transpose(0, 1).reshape(channels, -1)
    gathered = flat_source.index_select(1, flat_index.reshape(-1))
    return gathered.view(channels, *flat_index.shape).transpose(0, 1).contiguous()


def _pad_crop(x: Tensor, chosen: Tensor, config: PadCropConfig, generator: torch.Generator | None) -> Tensor:
    height, width = x.shape[-2:]
    padding = config.padding
    padded = F.pad(x, [padding], fill=0, padding_mode=config.mode)
    # Samples not chosen take the centred window, which is the image itself.
    top = torch.where(chosen, _random_offset(x, 2 * padding, generator), padding)
    left = torch.where(chosen, _random_offset(x, 2 * padding, generator), padding)
    rows = top[:, None] + torch.arange(height, device=x.device)
    cols = left[:, None] + torch.arange(width, device=x.device)
    batch = torch.arange(x.shape[0], device=x.device)
    return _gather_pixels(padded, _per_pixel(batch), rows[:, :, None], cols[:, None, :])


def _blend(images: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    return (ratio * images + (1.0 - ratio) * other).clamp(0.0, 1.0)


def _jitter_colour(
    x: Tensor, chosen: Tensor, config: ColorJitterConfig, generator: torch.Generator | None
) -> Tensor:
    """torchvision's adjust_brightness/contrast/saturation/hue, each sample with its own factors."""

    def factors(strength: float) -> Tensor:
        return _uniform(x, (x.shape[0], 1, 1, 1), generator, max(0.0, 1.0 - strength), 1.0 + strength)

    jittered = x
    if config.brightness > 0:
        jittered = (jittered * factors(config.brightness)).clamp(0.0, 1.0)
    if config.contrast > 0:
        mean_grey = F.rgb_to_grayscale(jittered).mean(dim=(-3, -2, -1), keepdim=True)
        jittered = _blend(jittered, mean_grey, factors(config.contrast))
    if config.saturation > 0:
        jittered = _blend(jittered, F.rgb_to_grayscale(jittered), factors(config.saturation))
    if config.hue > 0:
        hue, saturation, value = _rgb_to_hsv(jittered).unbind(dim=1)
        shift = _uniform(x, (x.shape[0], 1, 1), generator, -config.hue, config.hue)
        jittered = _hsv_to_rgb(torch.stack(((hue + shift).remainder(1.0), saturation, value), dim=1))
    # Samples not chosen keep their exact values rather than an HSV round trip's.
    return torch.where(_per_image(chosen), jittered, x)


def _paste_patches(
    x: Tensor, chosen: Tensor, config: RandomPatchConfig, generator: torch.Generator | None
) -> Tensor:
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    samples = torch.arange(batch, device=x.device)
    # An offset in [1, batch - 1] never points a sample at itself.
    donors = (samples + 1 + _random_offset(x, batch - 2, generator)) % batch
    boxes, found = _sample_boxes(x, config.area, config.aspect, generator)
    source_top = _random_offset(x, height - boxes.height, generator)
    source_left = _random_offset(x, width - boxes.width, generator)
    mirrored = _uniform(x, (batch,), generator) < config.flip
    inside = boxes.mask(x) & _per_pixel(chosen & found)
    rows = torch.arange(height, device=x.device)[None, :, None]
    cols = torch.arange(width, device=x.device)[None, None, :]
    patch_rows = rows - _per_pixel(boxes.top)
    patch_cols = cols - _per_pixel(boxes.left)
    patch_cols = torch.where(_per_pixel(mirrored), _per_pixel(boxes.width) - 1 - patch_cols, patch_cols)
    return _gather_pixels(
        x,
        torch.where(inside, _per_pixel(donors), _per_pixel(samples)),
        torch.where(inside, _per_pixel(source_top) + patch_rows, rows),
        torch.where(inside, _per_pixel(source_left) + patch_cols, cols),
    )


def _cut_out(x: Tensor, chosen: Tensor, config: CutoutConfig, generator: torch.Generator | None) -> Tensor:
    height, width = x.shape[-2:]
    side = max(1, round(config.side * min(height, width)))
    sides = torch.full((x.shape[0],), side, device=x.device)
    top = _random_offset(x, height - side, generator)
    left = _random_offset(x, width - side, generator)
    region = _Boxes(top, left, sides, sides).mask(x) & _per_pixel(chosen)
    return x.masked_fill(region.unsqueeze(1), 0.0)
