from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from edgereid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    BatchAugment,
    EvalTransform,
    build_eval_transform,
)
from edgereid.errors import ConfigError

try:
    from edgereid.recipes.loader import validate as validate_recipe
except ImportError as error:  # the recipe package imports edgereid.modeling, which may be mid-rewrite
    validate_recipe = None
    RECIPES_IMPORT_ERROR = str(error)

SIZE = (32, 16)
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
# Every op with a chance of its own; AugmentConfig's defaults switch flip, pad + crop and erasing on.
ALL_OFF = {
    name: {"p": 0.0}
    for name in ("flip", "pad_crop", "color_jitter", "auto_augment", "random_erasing", "random_patch", "cutout")
}


def config(**ops: dict[str, Any]) -> AugmentConfig:
    """Every augmentation off except ``ops``, given as {name: {field: value}}."""
    return AugmentConfig.model_validate({**ALL_OFF, **ops})


def images(batch: int = 8, size: tuple[int, int] = SIZE, seed: int = 0) -> torch.Tensor:
    """Random uint8 images: no two pixels or regions coincide by accident."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, generator=generator)


def augment(cfg: AugmentConfig, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return BatchAugment(cfg, SIZE)(x, torch.Generator().manual_seed(seed))


def evaluate(x: torch.Tensor) -> torch.Tensor:
    return EvalTransform(SIZE, IMAGENET_MEAN, IMAGENET_STD)(x)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def changed(out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """B x H x W, True where any channel differs."""
    return (out != reference).any(dim=1)


def box_of(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of an H x W mask that must be exactly one filled rectangle (None if empty)."""
    if not mask.any():
        return None
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    assert mask[top:bottom, left:right].all(), "the changed pixels are not one filled rectangle"
    assert int(mask.sum()) == (bottom - top) * (right - left)
    return top, left, bottom - top, right - left


# --- every augmentation's effect, alone at p = 1 ------------------------------------------------------------------


def test_all_off_equals_the_eval_transform() -> None:
    x = images()
    assert torch.equal(augment(config(), x), evaluate(x))
    floats = x.float() / 255
    assert torch.equal(augment(config(), floats), evaluate(floats))
    larger = images(size=(64, 40))
    assert torch.equal(augment(config(), larger), evaluate(larger))


def test_flip_mirrors_exactly() -> None:
    x = images()
    out = augment(config(flip={"p": 1.0}), x)
    assert torch.equal(out, evaluate(x.flip(-1)))


def test_pad_crop_is_a_shifted_copy_with_zero_padding() -> None:
    x = images(batch=16)
    padding = 4
    out = unnormalise(augment(config(pad_crop={"p": 1.0, "padding": padding}), x))
    source = x.float() / 255
    shifts = []
    for sample in range(len(x)):
        found = None
        for dy in range(-padding, padding + 1):
            for dx in range(-padding, padding + 1):
                # Output pixel (y, x) shows input pixel (y + dy, x + dx), or black padding outside the image.
                padded = torch.nn.functional.pad(source[sample], (padding,) * 4)
                window = padded[:, padding + dy : padding + dy + SIZE[0], padding + dx : padding + dx + SIZE[1]]
                if torch.allclose(out[sample], window, atol=1e-5):
                    found = (dy, dx)
                    break
            if found:
                break
        assert found is not None, f"sample {sample} is not a shifted copy"
        shifts.append(found)
    assert len(set(shifts)) > 1 and any(shift != (0, 0) for shift in shifts)
    assert all(abs(dy) <= padding and abs(dx) <= padding for dy, dx in shifts)


@pytest.mark.parametrize("mode", ["edge", "reflect", "symmetric"])
def test_pad_crop_modes_keep_shape_and_pixels_from_the_image(mode: str) -> None:
    x = images()
    out = unnormalise(augment(config(pad_crop={"p": 1.0, "padding": 4, "mode": mode}), x))
    assert out.shape == (8, 3, *SIZE)
    # Edge, reflect and symmetric padding invent no value: every output pixel occurs in its input image.
    source = x.float() / 255
    for sample in range(len(x)):
        values = set(torch.round(source[sample, 0] * 255).int().flatten().tolist())
        assert set(torch.round(out[sample, 0] * 255).int().flatten().tolist()) <= values


@pytest.mark.parametrize("fill", ["mean", "random"])
def test_random_erasing_changes_one_rectangle(fill: str) -> None:
    x = images(batch=16, size=(64, 32))
    cfg = config(random_erasing={"p": 1.0, "fill": fill})
    out = BatchAugment(cfg, (64, 32))(x, torch.Generator().manual_seed(0))
    reference = build_eval_transform((64, 32))(x)
    boxes = [box_of(mask) for mask in changed(out, reference)]
    assert all(box is not None for box in boxes), "p = 1 must erase every sample whose box fits"
    erased_areas = []
    for sample, box in enumerate(boxes):
        assert box is not None
        top, left, height, width = box
        erased_areas.append(height * width / (64 * 32))
        region = out[sample, :, top : top + height, left : left + width]
        if fill == "mean":
            # The mean colour, which normalisation turns into exactly 0.
            assert torch.allclose(region, torch.zeros_like(region), atol=1e-6)
        else:
            pixels = unnormalise(region)
            assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
            assert pixels.std() > 0.2  # uniform noise, std 0.29
    assert all(0.01 <= area <= 0.45 for area in erased_areas)
    assert len(set(boxes)) > 1


def test_random_patch_pastes_a_region_of_another_image() -> None:
    x = images(batch=6, size=SIZE)
    for flip, seed in ((0.0, 1), (1.0, 2)):
        out = augment(config(random_patch={"p": 1.0, "flip": flip}), x, seed=seed)
        reference = evaluate(x)
        pasted = 0
        for sample, mask in enumerate(changed(out, reference)):
            box = box_of(mask)
            if box is None:
                continue
            top, left, height, width = box
            patch = out[sample, :, top : top + height, left : left + width]
            if flip:
                patch = patch.flip(-1)
            sources = [
                (other, y, x0)
                for other in range(len(x))
                for y in range(SIZE[0] - height + 1)
                for x0 in range(SIZE[1] - width + 1)
                if torch.equal(reference[other, :, y : y + height, x0 : x0 + width], patch)
            ]
            assert sources, f"sample {sample}: the pasted region is in no image of the batch"
            assert all(other != sample for other, _, _ in sources), "a patch must come from another image"
            pasted += 1
        assert pasted >= len(x) - 1


def test_random_patch_on_a_batch_of_one_is_a_no_op() -> None:
    x = images(batch=1)
    assert torch.equal(augment(config(random_patch={"p": 1.0}), x), evaluate(x))


def test_cutout_zeroes_a_square_after_normalisation() -> None:
    x = images(batch=8, size=(64, 32))
    out = BatchAugment(config(cutout={"p": 1.0, "side": 0.5}), (64, 32))(x, torch.Generator().manual_seed(0))
    reference = build_eval_transform((64, 32))(x)
    side = round(0.5 * 32)
    for sample, mask in enumerate(changed(out, reference)):
        box = box_of(mask)
        assert box is not None and box[2:] == (side, side)
        top, left = box[:2]
        region = out[sample, :, top : top + side, left : left + side]
        # Zero after normalisation: exact zeros, which is the data set's mean colour in pixel terms, not black.
        assert torch.equal(region, torch.zeros_like(region))
        assert torch.allclose(unnormalise(region)[:, :, 0, 0].flatten(), MEAN.flatten())


def test_colour_jitter_changes_colour_statistics_only() -> None:
    x = images(batch=8)
    cfg = config(color_jitter={"p": 1.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.2})
    out = augment(cfg, x)
    reference = evaluate(x)
    assert out.shape == reference.shape and out.dtype == torch.float32
    pixels = unnormalise(out)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    channel_means = pixels.mean(dim=(2, 3))
    reference_means = unnormalise(reference).mean(dim=(2, 3))
    assert ((channel_means - reference_means).abs().max(dim=1).values > 1e-3).all()


def test_brightness_jitter_scales_each_sample_by_its_own_factor() -> None:
    x = images(batch=8).float() / 255 * 0.5 + 0.25  # no clipping at factors up to 1.5
    cfg = config(color_jitter={"p": 1.0, "brightness": 0.5, "contrast": 0.0, "saturation": 0.0, "hue": 0.0})
    out = unnormalise(augment(cfg, x))
    ratios = out / x
    per_sample = ratios.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-4)
    factors = per_sample[:, 0]
    assert ((factors >= 0.5 - 1e-4) & (factors <= 1.5 + 1e-4)).all()
    assert len(set(torch.round(factors, decimals=4).tolist())) == len(x)


def test_auto_augment_changes_images_and_keeps_dtype_and_range() -> None:
    x = images(batch=16)
    state = torch.random.get_rng_state()
    out = augment(config(auto_augment={"p": 1.0, "group_size": 2}), x)
    # AutoAugment draws from a forked global generator: the caller's stream is untouched.
    assert torch.equal(torch.random.get_rng_state(), state)
    assert out.shape == (16, 3, *SIZE) and out.dtype == torch.float32
    pixels = unnormalise(out)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    # Values stay on the uint8 grid, and most images are changed (a few sub-policies can leave one as it was).
    assert torch.allclose(pixels * 255, torch.round(pixels * 255), atol=1e-3)
    differs = changed(out, evaluate(x)).flatten(1).any(dim=1)
    assert int(differs.sum()) >= 12


# --- randomness -------------------------------------------------------------------------------------------------

EVERYTHING = {
    "flip": {"p": 0.5},
    "pad_crop": {"p": 0.5},
    "color_jitter": {"p": 0.5},
    "auto_augment": {"p": 0.5},
    "random_erasing": {"p": 0.5},
    "random_patch": {"p": 0.5},
    "cutout": {"p": 0.5},
}


def test_same_generator_seed_gives_the_same_batch_and_another_seed_another() -> None:
    x = images(batch=8)
    cfg = config(**EVERYTHING)
    first, again, other = augment(cfg, x, seed=5), augment(cfg, x, seed=5), augment(cfg, x, seed=6)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_each_sample_draws_its_own_operations() -> None:
    x = images(batch=32)
    out = augment(config(flip={"p": 0.5}), x)
    flipped, kept = evaluate(x.flip(-1)), evaluate(x)
    is_flipped = [torch.equal(out[i], flipped[i]) for i in range(32)]
    is_kept = [torch.equal(out[i], kept[i]) for i in range(32)]
    assert all(f != k for f, k in zip(is_flipped, is_kept))
    assert 4 <= sum(is_flipped) <= 28
    erased = augment(config(random_erasing={"p": 0.5}), x)
    touched = changed(erased, kept).flatten(1).any(dim=1)
    assert 4 <= int(touched.sum()) <= 28


def test_input_is_not_modified() -> None:
    x = images(batch=8).float() / 255
    before = x.clone()
    augment(config(**{name: {"p": 1.0} for name in EVERYTHING}), x)
    assert torch.equal(x, before)


# --- input types and sizes --------------------------------------------------------------------------------------


def test_uint8_and_float_input_give_the_same_batch() -> None:
    x = images(batch=8)
    cfg = config(flip={"p": 0.5}, pad_crop={"p": 1.0}, random_erasing={"p": 0.5}, cutout={"p": 0.5},
                 random_patch={"p": 0.5}, color_jitter={"p": 0.5})  # fmt: skip
    from_uint8, from_float = augment(cfg, x, seed=3), augment(cfg, x.float() / 255, seed=3)
    assert from_uint8.dtype == from_float.dtype == torch.float32
    assert torch.allclose(from_uint8, from_float, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_output_is_resized_to_the_training_size(dtype: torch.dtype) -> None:
    x = images(batch=4, size=(100, 50))
    x = x if dtype == torch.uint8 else x.float() / 255
    out = augment(AugmentConfig(), x)
    assert out.shape == (4, 3, *SIZE) and out.dtype == torch.float32
    assert build_eval_transform(SIZE)(x).shape == (4, 3, *SIZE)


def test_bad_batches_and_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        augment(AugmentConfig(), torch.zeros(3, *SIZE))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        augment(AugmentConfig(), torch.zeros(2, 1, *SIZE))
    with pytest.raises(ConfigError, match="input size"):
        BatchAugment(AugmentConfig(), (32, 0))
    with pytest.raises(ConfigError, match="mean"):
        EvalTransform(SIZE, (123.0, 116.0, 103.0), IMAGENET_STD)


def validate(model: type[AugmentConfig], content: dict[str, Any], source: str) -> AugmentConfig:
    """The recipe loader's validation, which turns pydantic's errors into a ConfigError naming the key path."""
    if validate_recipe is None:
        pytest.skip(f"edgereid.recipes does not import: {RECIPES_IMPORT_ERROR}")
    return validate_recipe(model, content, source)


# --- configuration ----------------------------------------------------------------------------------------------


def test_defaults_are_fastreid_bag_of_tricks() -> None:
    defaults = AugmentConfig()
    assert (defaults.flip.p, defaults.pad_crop.p, defaults.random_erasing.p) == (0.5, 1.0, 0.5)
    assert defaults.color_jitter.p == defaults.auto_augment.p == defaults.random_patch.p == defaults.cutout.p == 0.0


@pytest.mark.parametrize("op", list(EVERYTHING))
def test_probability_above_one_is_rejected_naming_the_key(op: str) -> None:
    with pytest.raises(ValidationError, match=rf"{op}\.p"):
        AugmentConfig.model_validate({op: {"p": 1.5}})
    with pytest.raises(ConfigError, match=rf"{op}\.p: .*less than or equal to 1.*\(got 1\.5\)"):
        validate(AugmentConfig, {op: {"p": 1.5}}, "recipe.yaml")


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"flip": {"p": -0.1}}, "flip.p"),
        ({"random_erasing": {"area": [0.5, 0.1]}}, "random_erasing.area"),
        ({"random_erasing": {"fill": "zero"}}, "random_erasing.fill"),
        ({"pad_crop": {"padding": 0}}, "pad_crop.padding"),
        ({"cutout": {"side": 0}}, "cutout.side"),
        ({"random_patch": {"flip": 2}}, "random_patch.flip"),
        ({"flipp": {"p": 0.5}}, "flipp"),
    ],
)
def test_other_bad_values_name_the_key(content: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(AugmentConfig, content, "recipe.yaml")
