"""A synthetic ReID data set in the Market-1501 layout, hard enough that a small model lands between chance and perfect.

People are composed from shared attribute vocabularies (clothing, hair, skin, bag, body shape), and a good share of
identities are near-twins of another that differ in one or two attributes, so colour histograms alone cannot tell
them apart. Each camera has its own colour cast, exposure, blur, softness, noise, background and preferred
viewpoints; each image its own pose, viewpoint, framing, clutter and, for some, an occluder. Everything is drawn
from numpy generators keyed by (seed, purpose, indices), so one seed gives byte-identical files whatever the order
of drawing. Only numpy and Pillow are used: this module runs wherever the edge runtime does.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from edgereid.atomic import publish_directory
from edgereid.errors import ConfigError, DataError

SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
METADATA_FILE = "synthetic.json"
DEFAULT_SIZE = (128, 64)
VIEWS = ("front", "back", "left", "right")
OCCLUDERS = ("box", "pole", "person", "edge")

# Market-1501 file names hold a 4-digit identity and a 1-digit camera.
MAX_IDS = 9999
MAX_CAMERAS = 9
MIN_SIZE = (32, 16)
MAX_SIZE = (1024, 1024)

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "black": (28, 28, 32),
    "white": (228, 228, 222),
    "grey": (125, 125, 128),
    "dark grey": (72, 72, 76),
    "navy": (34, 42, 88),
    "blue": (52, 92, 170),
    "light blue": (150, 180, 215),
    "red": (168, 36, 42),
    "green": (52, 108, 62),
    "olive": (108, 110, 58),
    "yellow": (222, 198, 66),
    "brown": (104, 72, 46),
    "beige": (198, 178, 140),
    "pink": (222, 150, 170),
    "purple": (104, 60, 128),
    "orange": (226, 128, 44),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (22, 20, 20),
    "dark brown": (58, 40, 28),
    "brown": (102, 70, 42),
    "blond": (196, 164, 104),
    "grey": (150, 148, 146),
}
SKIN_TONES: dict[str, RGB] = {
    "very light": (236, 204, 184),
    "light": (220, 180, 150),
    "medium": (190, 145, 110),
    "tan": (156, 110, 78),
    "dark": (96, 66, 48),
}
HEIGHT_FACTORS = {"short": 0.92, "average": 1.0, "tall": 1.06}
BUILD_FACTORS = {"slim": 0.86, "average": 1.0, "broad": 1.16}

# Weights follow street scenes: dark, neutral clothing dominates, which is what makes real ReID confusable.
_UPPER_COLOUR_WEIGHTS = {
    "black": 14, "white": 10, "grey": 8, "dark grey": 7, "navy": 7, "blue": 6, "light blue": 4, "red": 6,
    "green": 4, "olive": 3, "yellow": 3, "brown": 4, "beige": 4, "pink": 4, "purple": 3, "orange": 3,
}  # fmt: skip
_LOWER_COLOUR_WEIGHTS = {
    "black": 18, "navy": 10, "blue": 10, "grey": 7, "dark grey": 6, "beige": 6, "brown": 4, "white": 3,
    "olive": 3, "light blue": 3, "red": 1, "green": 1, "pink": 1, "purple": 1,
}  # fmt: skip
_SHOES_COLOUR_WEIGHTS = {"black": 12, "white": 8, "grey": 4, "brown": 4, "navy": 2, "red": 1, "beige": 2}
_BAG_COLOUR_WEIGHTS = {"black": 10, "grey": 4, "navy": 3, "brown": 4, "red": 2, "blue": 2, "beige": 2, "green": 2}
_PATTERN_WEIGHTS = {"plain": 10, "stripes": 3, "checks": 2, "logo": 3, "open jacket": 3}
_LOWER_TYPE_WEIGHTS = {"trousers": 10, "shorts": 3, "skirt": 2}
_BAG_WEIGHTS = {"none": 8, "backpack": 5, "handbag": 3, "shoulder bag": 3}
_HAIR_COLOUR_WEIGHTS = {"black": 10, "dark brown": 7, "brown": 4, "blond": 3, "grey": 2}
_HAIR_LENGTH_WEIGHTS = {"short": 3, "long": 2}
_SKIN_WEIGHTS = {"very light": 3, "light": 4, "medium": 3, "tan": 2, "dark": 2}
_SLEEVE_WEIGHTS = {"long": 3, "short": 2}
_HEIGHT_WEIGHTS = {"short": 1, "average": 2, "tall": 1}
_BUILD_WEIGHTS = {"slim": 1, "average": 2, "broad": 1}

# Share of identities built as a near-twin of an earlier one, and how many attribute groups a twin changes.
_TWIN_RATE = 0.25
_TWIN_CHANGES = (1, 2)
# How far one identity's "navy" is from another's, and how much one image's lighting moves it (0-255 scale).
_IDENTITY_SHADE_SIGMA = 14.0
_IMAGE_EXPOSURE_SIGMA = 0.07
_TRACKLET_VIEW_KEEP = 0.8

# Independent random streams; a stream's numbers do not change when another stream draws more or less.
_IDENTITY_STREAM = 1
_CAMERA_STREAM = 2
_LAYOUT_STREAM = 3
_TRACKLET_STREAM = 4
_IMAGE_STREAM = 5
_OCCLUSION_STREAM = 6


@dataclass(frozen=True)
class IdentityAttributes:
    """What one synthetic person wears and looks like; equal values mean the same named colour or type."""

    upper_colour: str
    upper_pattern: str
    upper_secondary_colour: str
    sleeves: str
    lower_colour: str
    lower_type: str
    shoes_colour: str
    hair_colour: str
    hair_length: str
    skin_tone: str
    bag: str
    bag_colour: str
    height: str
    build: str

    def shared_with(self, other: IdentityAttributes) -> int:
        """How many attributes the two identities have in common."""
        return sum(getattr(self, f.name) == getattr(other, f.name) for f in fields(self))


NUM_ATTRIBUTES = len(fields(IdentityAttributes))

# Attributes that only make sense together are resampled together when a twin is made.
_ATTRIBUTE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("upper_colour",),
    ("upper_pattern", "upper_secondary_colour"),
    ("sleeves",),
    ("lower_colour",),
    ("lower_type",),
    ("shoes_colour",),
    ("hair_colour",),
    ("hair_length",),
    ("skin_tone",),
    ("bag", "bag_colour"),
    ("height",),
    ("build",),
)


@dataclass(frozen=True)
class CameraStyle:
    """How one camera sees the scene; drawn once per (seed, camera index)."""

    channel_gains: tuple[float, float, float]
    brightness: float
    contrast: float
    gamma: float
    blur_radius: float
    softness: float
    noise_sigma: float
    person_scale: float
    view_weights: tuple[float, float, float, float]


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`generate_synthetic` wrote; ``images`` and ``ids`` are keyed by split (train, query, gallery)."""

    out_dir: Path
    images: dict[str, int]
    ids: dict[str, int]
    num_cameras: int
    seed: int
    size: tuple[int, int]
    elapsed_s: float

    @property
    def total_images(self) -> int:
        return sum(self.images.values())

    @property
    def images_per_second(self) -> float:
        return self.total_images / self.elapsed_s if self.elapsed_s > 0 else float("inf")


ProgressCallback = Callable[[int, int], None]


def generate_synthetic(
    out_dir: str | os.PathLike[str],
    *,
    num_ids: int = 100,
    num_cameras: int = 4,
    seed: int = 0,
    size: Sequence[int] = DEFAULT_SIZE,
    images_per_id_per_camera: int = 6,
    occlusion_rate: float = 0.25,
    jpeg_quality: int = 90,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> SyntheticSummary:
    """Write a synthetic ReID data set in the Market-1501 layout under ``out_dir`` and say what was written.

    Identities are cut into train and test halves; each identity is seen by a random subset of at least two
    cameras, ``images_per_id_per_camera`` images each. For a test identity one image per camera goes to
    ``query/`` and the rest to ``bounding_box_test/``, so every query has a match on another camera. ``size`` is
    (height, width). The set is built in a temporary folder next to ``out_dir`` and renamed into place at the end;
    an existing non-empty ``out_dir`` is replaced only with ``overwrite=True``. ``progress(done, total)`` is called
    after each image. A ``synthetic.json`` beside the splits records the parameters, every identity's attributes,
    every camera's style and each image's viewpoint and occluder.
    """
    started = time.perf_counter()
    height, width = _check_size(size)
    _check_int("num_ids", num_ids, 2, MAX_IDS, "at least one train and one test identity")
    _check_int("num_cameras", num_cameras, 2, MAX_CAMERAS, "a query needs a match on another camera")
    _check_int("seed", seed, 0, None, "a non-negative integer")
    _check_int(
        "images_per_id_per_camera", images_per_id_per_camera, 2, None, "one query and at least one gallery image"
    )
    _check_int("jpeg_quality", jpeg_quality, 1, 95, "Pillow's JPEG quality range")
    if isinstance(occlusion_rate, bool) or not isinstance(occlusion_rate, (int, float)) or not 0 <= occlusion_rate <= 1:
        raise ConfigError(f"occlusion_rate={occlusion_rate!r} is invalid; expected a fraction between 0 and 1")
    out_path = Path(out_dir)
    _check_out_dir(out_path, overwrite)

    looks = _sample_looks(num_ids, seed)
    cameras = [sample_camera_style(seed, index) for index in range(num_cameras)]
    backgrounds = [_camera_background(seed, index, height, width) for index in range(num_cameras)]
    plan = _plan_images(num_ids, num_cameras, images_per_id_per_camera, seed)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.partial-", dir=out_path.parent))
    try:
        # mkdtemp makes a private (0700) folder; the published set gets the mode a plain mkdir would give it.
        staging.chmod(_published_mode(out_path))
        for directory in SPLIT_DIRS.values():
            (staging / directory).mkdir()
        image_records = []
        tracklets: dict[tuple[int, int], _Tracklet] = {}
        for done, planned in enumerate(plan, start=1):
            camera = cameras[planned.camid]
            key = (planned.pid, planned.camid)
            if key not in tracklets:
                tracklets[key] = _tracklet(seed, planned.pid, planned.camid, camera, height, width)
            pixels, view, occluder = _render_image(
                planned, tracklets[key], looks[planned.pid - 1], camera, backgrounds[planned.camid],
                seed, occlusion_rate, height, width,
            )  # fmt: skip
            relative = f"{SPLIT_DIRS[planned.split]}/{planned.file_name}"
            Image.fromarray(pixels).save(staging / relative, format="JPEG", quality=jpeg_quality)
            image_records.append(
                {"file": relative, "pid": planned.pid, "camid": planned.camid, "view": view, "occluder": occluder}
            )
            if progress is not None:
                progress(done, len(plan))
        metadata = {
            "generator": "edgereid.data.synthetic",
            "seed": seed,
            "size": [height, width],
            "num_ids": num_ids,
            "num_cameras": num_cameras,
            "images_per_id_per_camera": images_per_id_per_camera,
            "occlusion_rate": occlusion_rate,
            "jpeg_quality": jpeg_quality,
            "identities": {f"{pid:04d}": asdict(look.attributes) for pid, look in enumerate(looks, start=1)},
            "cameras": [asdict(camera) for camera in cameras],
            "images": image_records,
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
        publish_directory(staging, out_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    images = {split: sum(p.split == split for p in plan) for split in SPLIT_DIRS}
    ids = {split: len({p.pid for p in plan if p.split == split}) for split in SPLIT_DIRS}
    return SyntheticSummary(
        out_dir=out_path,
        images=images,
        ids=ids,
        num_cameras=num_cameras,
        seed=seed,
        size=(height, width),
        elapsed_s=time.perf_counter() - started,
    )


def sample_identities(num_ids: int, seed: int) -> list[IdentityAttributes]:
    """The attributes of identities 1..num_ids that :func:`generate_synthetic` draws for ``seed``."""
    return [look.attributes for look in _sample_looks(num_ids, seed)]


def sample_camera_style(seed: int, camera_index: int) -> CameraStyle:
    """The style of camera ``camera_index`` (0-based) for ``seed``; it does not depend on the number of cameras."""
    rng = np.random.default_rng([seed, _CAMERA_STREAM, camera_index])
    gains = 1.0 + rng.uniform(-0.2, 0.2, size=3)
    # Cameras along a corridor mostly see people walking towards or away from them.
    front, back, side = rng.dirichlet([1.2, 1.2, 1.0])
    return CameraStyle(
        channel_gains=(round(float(gains[0]), 4), round(float(gains[1]), 4), round(float(gains[2]), 4)),
        brightness=round(float(rng.uniform(-28, 22)), 3),
        contrast=round(float(rng.uniform(0.68, 1.12)), 4),
        gamma=round(float(rng.uniform(0.8, 1.25)), 4),
        blur_radius=round(float(rng.uniform(0.0, 1.1)), 4),
        softness=round(float(rng.uniform(0.5, 1.0)), 4),
        noise_sigma=round(float(rng.uniform(2.0, 8.0)), 4),
        person_scale=round(float(rng.uniform(0.76, 0.9)), 4),
        view_weights=(float(front), float(back), float(side) / 2, float(side) / 2),
    )


# --- identities -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Look:
    """An identity's attributes made concrete: its own shade of each colour and its exact proportions."""

    attributes: IdentityAttributes
    colours: dict[str, np.ndarray]
    height_factor: float
    width_factor: float
    leg_ratio: float
    bag_on_right: bool


def _pick(rng: np.random.Generator, weights: dict[str, int]) -> str:
    names = list(weights)
    probabilities = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=probabilities / probabilities.sum()))]


def _independent_attributes(rng: np.random.Generator) -> IdentityAttributes:
    upper_colour = _pick(rng, _UPPER_COLOUR_WEIGHTS)
    pattern = _pick(rng, _PATTERN_WEIGHTS)
    secondary = "none"
    if pattern != "plain":
        secondary = _pick(rng, {c: w for c, w in _UPPER_COLOUR_WEIGHTS.items() if c != upper_colour})
    bag = _pick(rng, _BAG_WEIGHTS)
    return IdentityAttributes(
        upper_colour=upper_colour,
        upper_pattern=pattern,
        upper_secondary_colour=secondary,
        sleeves=_pick(rng, _SLEEVE_WEIGHTS),
        lower_colour=_pick(rng, _LOWER_COLOUR_WEIGHTS),
        lower_type=_pick(rng, _LOWER_TYPE_WEIGHTS),
        shoes_colour=_pick(rng, _SHOES_COLOUR_WEIGHTS),
        hair_colour=_pick(rng, _HAIR_COLOUR_WEIGHTS),
        hair_length=_pick(rng, _HAIR_LENGTH_WEIGHTS),
        skin_tone=_pick(rng, _SKIN_WEIGHTS),
        bag=bag,
        bag_colour="none" if bag == "none" else _pick(rng, _BAG_COLOUR_WEIGHTS),
        height=_pick(rng, _HEIGHT_WEIGHTS),
        build=_pick(rng, _BUILD_WEIGHTS),
    )


def _twin_attributes(rng: np.random.Generator, template: IdentityAttributes) -> IdentityAttributes:
    """A copy of ``template`` with one or two attribute groups changed to a different value."""
    num_changes = int(rng.choice(_TWIN_CHANGES))
    changed = dict(asdict(template))
    for group_index in rng.choice(len(_ATTRIBUTE_GROUPS), size=num_changes, replace=False):
        group = _ATTRIBUTE_GROUPS[int(group_index)]
        # A fresh draw can repeat the template's value; a few tries make a real difference almost certain.
        for _ in range(20):
            fresh = asdict(_independent_attributes(rng))
            if any(fresh[name] != changed[name] for name in group):
                break
        for name in group:
            changed[name] = fresh[name]
    if changed["upper_secondary_colour"] == changed["upper_colour"]:
        changed["upper_secondary_colour"] = "white" if changed["upper_colour"] != "white" else "black"
    return IdentityAttributes(**changed)


def _sample_looks(num_ids: int, seed: int) -> list[_Look]:
    rng = np.random.default_rng([seed, _IDENTITY_STREAM])
    looks: list[_Look] = []
    for _ in range(num_ids):
        if looks and rng.random() < _TWIN_RATE:
            attributes = _twin_attributes(rng, looks[int(rng.integers(len(looks)))].attributes)
        else:
            attributes = _independent_attributes(rng)
        looks.append(_make_look(rng, attributes))
    return looks


def _make_look(rng: np.random.Generator, attributes: IdentityAttributes) -> _Look:
    def shade(rgb: RGB) -> np.ndarray:
        return np.clip(np.array(rgb, np.float32) + rng.normal(0, _IDENTITY_SHADE_SIGMA, 3), 0, 255).astype(np.float32)

    named = {
        "upper": attributes.upper_colour,
        "secondary": attributes.upper_secondary_colour,
        "lower": attributes.lower_colour,
        "shoes": attributes.shoes_colour,
        "bag": attributes.bag_colour,
    }
    colours = {slot: shade(COLOURS.get(name, COLOURS["black"])) for slot, name in named.items()}
    colours["hair"] = shade(HAIR_COLOURS[attributes.hair_colour])
    colours["skin"] = shade(SKIN_TONES[attributes.skin_tone])
    return _Look(
        attributes=attributes,
        colours=colours,
        height_factor=HEIGHT_FACTORS[attributes.height] * float(rng.uniform(0.98, 1.02)),
        width_factor=BUILD_FACTORS[attributes.build] * float(rng.uniform(0.96, 1.04)),
        leg_ratio=float(rng.uniform(0.45, 0.5)),
        bag_on_right=bool(rng.random() < 0.5),
    )


# --- layout -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlannedImage:
    pid: int
    camid: int
    index_in_camera: int
    split: str
    frame: int

    @property
    def file_name(self) -> str:
        return f"{self.pid:04d}_c{self.camid + 1}s1_{self.frame:06d}_01.jpg"


def _plan_images(num_ids: int, num_cameras: int, images_per_id_per_camera: int, seed: int) -> list[_PlannedImage]:
    """Which identity each camera sees, how often, in which split, under which frame number."""
    rng = np.random.default_rng([seed, _LAYOUT_STREAM])
    order = rng.permutation(np.arange(1, num_ids + 1))
    test_ids = {int(pid) for pid in order[: num_ids // 2]}
    plan: list[_PlannedImage] = []
    for pid in range(1, num_ids + 1):
        num_seen = int(rng.integers(2, num_cameras + 1))
        cameras = sorted(int(c) for c in rng.choice(num_cameras, size=num_seen, replace=False))
        for camid in cameras:
            # Frames of one pass in front of a camera: increasing, a few frames apart, like a tracklet.
            steps = rng.integers(4, 30, size=images_per_id_per_camera)
            frames = int(rng.integers(0, 900_000)) + np.cumsum(steps)
            query_index = int(rng.integers(images_per_id_per_camera)) if pid in test_ids else -1
            for index in range(images_per_id_per_camera):
                if pid not in test_ids:
                    split = "train"
                else:
                    split = "query" if index == query_index else "gallery"
                plan.append(_PlannedImage(pid, camid, index, split, int(frames[index])))
    return plan


# --- drawing ----------------------------------------------------------------------------------------------------

Paint = np.ndarray | Callable[[np.ndarray, np.ndarray], np.ndarray]


class _Canvas:
    """A float RGB image with anti-aliased shape painting; each shape only touches its bounding box."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels
        height, width = pixels.shape[:2]
        self.height, self.width = height, width
        self._rows = np.arange(height, dtype=np.float32) + 0.5
        self._cols = np.arange(width, dtype=np.float32) + 0.5

    def _window(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        r0, r1 = max(math.floor(y0), 0), min(math.ceil(y1) + 1, self.height)
        c0, c1 = max(math.floor(x0), 0), min(math.ceil(x1) + 1, self.width)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1), self._rows[r0:r1, None], self._cols[None, c0:c1]

    def _blend(self, rows: slice, cols: slice, alpha: np.ndarray, paint: Paint, ys: np.ndarray, xs: np.ndarray) -> None:
        colour = paint(ys, xs) if callable(paint) else paint
        region = self.pixels[rows, cols]
        region += alpha[..., None] * (colour - region)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, paint: Paint) -> None:
        window = self._window(cx - rx - 1, cy - ry - 1, cx + rx + 1, cy + ry + 1)
        if window is None:
            return
        rows, cols, ys, xs = window
        distance = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
        alpha = _coverage((1.0 - distance) * min(rx, ry))
        self._blend(rows, cols, alpha, paint, ys, xs)

    def capsule(self, x0: float, y0: float, x1: float, y1: float, radius: float, paint: Paint) -> None:
        window = self._window(
            min(x0, x1) - radius - 1, min(y0, y1) - radius - 1, max(x0, x1) + radius + 1, max(y0, y1) + radius + 1
        )
        if window is None:
            return
        rows, cols, ys, xs = window
        dx, dy = x1 - x0, y1 - y0
        t = _unit_interval(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-6))
        distance = np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy))
        self._blend(rows, cols, _coverage(radius - distance), paint, ys, xs)

    def trapezoid(self, cx: float, y0: float, y1: float, half_top: float, half_bottom: float, paint: Paint) -> None:
        """A vertical band centred on ``cx`` whose half-width goes linearly from ``half_top`` to ``half_bottom``."""
        reach = max(half_top, half_bottom)
        window = self._window(cx - reach - 1, y0 - 1, cx + reach + 1, y1 + 1)
        if window is None:
            return
        rows, cols, ys, xs = window
        half = half_top + _unit_interval((ys - y0) / max(y1 - y0, 1e-6)) * (half_bottom - half_top)
        alpha = _coverage(half - np.abs(xs - cx)) * (_coverage(ys - y0) * _coverage(y1 - ys))
        self._blend(rows, cols, alpha, paint, ys, xs)

    def rectangle(self, x0: float, y0: float, x1: float, y1: float, paint: Paint) -> None:
        window = self._window(x0 - 1, y0 - 1, x1 + 1, y1 + 1)
        if window is None:
            return
        rows, cols, ys, xs = window
        alpha = (_coverage(xs - x0) * _coverage(x1 - xs)) * (_coverage(ys - y0) * _coverage(y1 - ys))
        self._blend(rows, cols, alpha, paint, ys, xs)


def _unit_interval(values: np.ndarray) -> np.ndarray:
    # np.clip costs more in call overhead than in arithmetic on these small arrays.
    return np.minimum(np.maximum(values, 0.0), 1.0)


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a pixel whose centre is ``signed_distance`` pixels inside an edge."""
    return _unit_interval(signed_distance + 0.5)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, size=3).astype(np.float32)


def _torso_paint(look: _Look, view: str, cx: float, half_width: float, y_top: float, unit: float) -> Paint:
    """The upper clothing's pattern as seen from ``view``, with a cylinder-like shading across the body."""
    base, secondary = look.colours["upper"], look.colours["secondary"]
    pattern = look.attributes.upper_pattern
    period = 0.055 * unit

    def paint(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        across = _unit_interval(np.abs(xs - cx) / max(half_width, 1e-6))
        shading = (1.0 - 0.28 * across**2)[..., None]
        if pattern == "stripes":
            use_secondary = ((ys - y_top) / period) % 1.0 < 0.45
        elif pattern == "checks":
            use_secondary = (((ys - y_top) / period) % 1.0 < 0.5) ^ (((xs - cx) / period) % 1.0 < 0.5)
        elif pattern == "open jacket" and view == "front":
            use_secondary = np.broadcast_to(np.abs(xs - cx) < 0.3 * half_width, (ys.shape[0], xs.shape[1]))
        else:
            # A logo is painted on top by the caller, so plain and logo torsos share this base.
            return np.broadcast_to(base, (ys.shape[0], xs.shape[1], 3)) * shading
        colour = np.where(use_secondary[..., None], secondary, base)
        return colour * shading

    return paint


def _draw_person(canvas: _Canvas, look: _Look, view: str, phase: float, cx: float, feet_y: float, unit: float) -> None:
    """Draw one walking person whose feet touch ``feet_y`` and who is ``unit`` pixels tall (before head room)."""
    attributes, colours = look.attributes, look.colours
    build = look.width_factor
    side = view in ("left", "right")
    facing = 1.0 if view == "right" else -1.0
    swing = math.sin(phase)
    top = feet_y - unit
    head_cy, head_rx, head_ry = top + 0.075 * unit, 0.05 * unit, 0.068 * unit
    shoulder_y = top + 0.165 * unit
    hip_y = top + (1.0 - look.leg_ratio) * unit
    leg_length = feet_y - hip_y
    shoulder_half = (0.075 if side else 0.13) * unit * build
    hip_half = (0.07 if side else 0.1) * unit * build
    arm_radius, leg_radius = 0.03 * unit * build, 0.043 * unit * build
    skin, hair, upper, lower = colours["skin"], colours["hair"], colours["upper"], colours["lower"]
    far_shade = np.float32(0.78)

    # Shadow first: a soft dark ellipse on the ground ties the figure to the background.
    canvas.ellipse(cx, feet_y, 0.16 * unit * build, 0.025 * unit, _shadow_paint(canvas, cx, feet_y))

    # Limbs as (hip, knee, foot) and (shoulder, elbow, hand) with a depth shade: far limbs are drawn darker first.
    if side:
        foot_offset = swing * 0.16 * unit * facing
        legs = [
            ((cx, hip_y), (cx - foot_offset, feet_y - 0.025 * unit), far_shade),
            ((cx, hip_y), (cx + foot_offset, feet_y - 0.025 * unit), np.float32(1.0)),
        ]
        hand_offset = swing * 0.13 * unit * facing
        arms = [
            ((cx, shoulder_y + arm_radius), (cx + hand_offset, hip_y + 0.03 * unit - abs(swing) * 0.03 * unit), far_shade),
            ((cx, shoulder_y + arm_radius), (cx - hand_offset, hip_y + 0.03 * unit - abs(swing) * 0.03 * unit), None),
        ]
    else:
        lift = 0.03 * unit
        legs = [
            ((cx + sign * 0.05 * unit * build, hip_y),
             (cx + sign * 0.058 * unit * build, feet_y - 0.025 * unit - max(0.0, sign * swing) * lift), np.float32(1.0))
            for sign in (-1.0, 1.0)
        ]  # fmt: skip
        arms = [
            ((cx + sign * (shoulder_half - arm_radius * 0.6), shoulder_y + arm_radius),
             (cx + sign * (shoulder_half + 0.012 * unit), hip_y + 0.035 * unit - max(0.0, -sign * swing) * 0.04 * unit),
             None)
            for sign in (-1.0, 1.0)
        ]  # fmt: skip

    def draw_leg(hip: tuple[float, float], foot: tuple[float, float], shade: np.float32) -> None:
        knee = ((hip[0] + foot[0]) / 2 + (0.015 * unit * facing if side else 0.0), (hip[1] + foot[1]) / 2)
        if attributes.lower_type == "trousers":
            canvas.capsule(*hip, *knee, leg_radius, lower * shade)
            canvas.capsule(*knee, *foot, leg_radius * 0.85, lower * shade)
        else:
            canvas.capsule(*hip, *knee, leg_radius * 0.8, skin * shade)
            canvas.capsule(*knee, *foot, leg_radius * 0.7, skin * shade)
            if attributes.lower_type == "shorts":
                thigh = (hip[0] + (knee[0] - hip[0]) * 0.6, hip[1] + (knee[1] - hip[1]) * 0.6)
                canvas.capsule(*hip, *thigh, leg_radius * 1.1, lower * shade)
        shoe_x = foot[0] + (0.018 * unit * facing if side else 0.0)
        canvas.ellipse(shoe_x, foot[1] + 0.01 * unit, (0.052 if side else 0.038) * unit, 0.022 * unit,
                       colours["shoes"] * shade)  # fmt: skip

    def draw_arm(shoulder: tuple[float, float], hand: tuple[float, float], shade: np.float32 | None) -> None:
        factor = np.float32(1.0) if shade is None else shade
        elbow = ((shoulder[0] + hand[0]) / 2, (shoulder[1] + hand[1]) / 2)
        canvas.capsule(*shoulder, *elbow, arm_radius, upper * factor * np.float32(0.9))
        forearm = upper * np.float32(0.9) if attributes.sleeves == "long" else skin
        canvas.capsule(*elbow, *hand, arm_radius * 0.85, forearm * factor)
        canvas.ellipse(*hand, arm_radius * 0.85, arm_radius * 0.95, skin * factor)

    def draw_long_hair() -> None:
        hair_cx = cx - 0.02 * unit * facing if side else cx
        half = (0.035 if side else 0.06) * unit
        canvas.trapezoid(hair_cx, head_cy, shoulder_y + 0.09 * unit, half, half * 1.15, hair)

    def draw_bag(before_torso: bool) -> None:
        bag = colours["bag"]
        if attributes.bag == "backpack":
            if side and before_torso:
                near = cx - facing * (shoulder_half - 0.01 * unit)
                far = cx - facing * (shoulder_half + 0.075 * unit)
                canvas.rectangle(min(near, far), shoulder_y + 0.02 * unit, max(near, far), hip_y - 0.02 * unit, bag)
            elif view == "back" and not before_torso:
                canvas.rectangle(cx - shoulder_half * 0.78, shoulder_y + 0.02 * unit,
                                 cx + shoulder_half * 0.78, hip_y - 0.015 * unit, bag)  # fmt: skip
                canvas.rectangle(cx - shoulder_half * 0.5, hip_y - 0.14 * unit,
                                 cx + shoulder_half * 0.5, hip_y - 0.04 * unit, bag * np.float32(0.75))  # fmt: skip
            elif view == "front" and not before_torso:
                for sign in (-1.0, 1.0):
                    canvas.capsule(cx + sign * shoulder_half * 0.55, shoulder_y,
                                   cx + sign * shoulder_half * 0.6, shoulder_y + 0.17 * unit, 0.014 * unit, bag)  # fmt: skip
        elif before_torso:
            return
        elif attributes.bag == "handbag":
            # The bag hangs from the hand on its owner's side; the back view mirrors the front.
            if side:
                hand = arms[1][1]
            else:
                on_image_right = look.bag_on_right == (view == "back")
                hand = arms[1][1] if on_image_right else arms[0][1]
            canvas.capsule(hand[0], hand[1], hand[0], hand[1] + 0.04 * unit, 0.008 * unit, bag)
            canvas.rectangle(hand[0] - 0.045 * unit, hand[1] + 0.035 * unit,
                             hand[0] + 0.045 * unit, hand[1] + 0.115 * unit, bag)  # fmt: skip
        elif attributes.bag == "shoulder bag":
            bag_sign = 1.0 if (look.bag_on_right == (view == "back")) else -1.0
            if side:
                bag_x = cx - facing * 0.05 * unit
                canvas.capsule(cx, shoulder_y, bag_x, hip_y - 0.02 * unit, 0.011 * unit, bag)
            else:
                bag_x = cx + bag_sign * (hip_half + 0.02 * unit)
                canvas.capsule(cx - bag_sign * shoulder_half * 0.7, shoulder_y + 0.01 * unit,
                               bag_x, hip_y - 0.02 * unit, 0.012 * unit, bag)  # fmt: skip
            canvas.rectangle(bag_x - 0.05 * unit, hip_y - 0.04 * unit, bag_x + 0.05 * unit, hip_y + 0.06 * unit, bag)

    if attributes.hair_length == "long" and view != "back":
        draw_long_hair()
    if side:
        draw_arm(*arms[0][:2], arms[0][2])
    draw_bag(before_torso=True)
    for hip, foot, shade in legs:
        draw_leg(hip, foot, shade)
    if attributes.lower_type == "skirt":
        flare = 1.2 if side else 1.6
        canvas.trapezoid(cx, hip_y - 0.02 * unit, hip_y + 0.42 * leg_length, hip_half, hip_half * flare, lower)
    else:
        canvas.trapezoid(cx, hip_y - 0.03 * unit, hip_y + 0.07 * unit, hip_half, hip_half * 0.9, lower)
    canvas.capsule(cx, head_cy + head_ry * 0.7, cx, shoulder_y, 0.026 * unit, skin)
    torso_top = shoulder_y - 0.015 * unit
    canvas.trapezoid(cx, torso_top, hip_y + 0.01 * unit, shoulder_half, hip_half * 1.02,
                     _torso_paint(look, view, cx, shoulder_half, torso_top, unit))  # fmt: skip
    if attributes.upper_pattern == "logo" and view == "front":
        canvas.ellipse(cx, shoulder_y + 0.09 * unit, 0.045 * unit, 0.04 * unit, colours["secondary"])
    if attributes.hair_length == "long" and view == "back":
        draw_long_hair()
    draw_bag(before_torso=False)
    if side:
        draw_arm(*arms[1][:2], arms[1][2])
    else:
        for shoulder, hand, shade in arms:
            draw_arm(shoulder, hand, shade)

    if view == "back":
        canvas.ellipse(cx, head_cy, head_rx, head_ry, hair)
    elif view == "front":
        canvas.ellipse(cx, head_cy, head_rx, head_ry, skin)
        canvas.ellipse(cx, head_cy - 0.022 * unit, head_rx * 1.05, head_ry * 0.72, hair)
        canvas.ellipse(cx, head_cy + 0.014 * unit, head_rx * 0.8, head_ry * 0.76, skin)
    else:
        canvas.ellipse(cx + 0.008 * unit * facing, head_cy, head_rx * 1.05, head_ry, skin)
        canvas.ellipse(cx - 0.012 * unit * facing, head_cy - 0.012 * unit, head_rx * 0.95, head_ry * 0.86, hair)


def _shadow_paint(canvas: _Canvas, cx: float, feet_y: float) -> Paint:
    """A paint that darkens whatever is already under the person's feet."""
    pixels = canvas.pixels

    def paint(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        rows = slice(int(ys[0, 0]), int(ys[-1, 0]) + 1)
        cols = slice(int(xs[0, 0]), int(xs[0, -1]) + 1)
        return pixels[rows, cols] * np.float32(0.55)

    return paint


# --- scenes -----------------------------------------------------------------------------------------------------


def _camera_background(seed: int, camera_index: int, height: int, width: int) -> np.ndarray:
    """A scene larger than one image (a wall, a floor, windows, doors, signs) that each image crops from."""
    rng = np.random.default_rng([seed, _CAMERA_STREAM, camera_index, 1])
    scene_h, scene_w = height * 2, width * 4
    horizon = int(scene_h * rng.uniform(0.45, 0.62))
    wall, floor = _random_colour(rng) * 0.8, _random_colour(rng) * 0.7
    rows = np.arange(scene_h, dtype=np.float32)[:, None, None]
    scene = np.where(
        rows < horizon,
        wall * (0.85 + 0.3 * rows / max(horizon, 1)),
        floor * (0.8 + 0.3 * (rows - horizon) / max(scene_h - horizon, 1)),
    ) * np.ones((1, scene_w, 1), np.float32)
    scene = scene.astype(np.float32)
    canvas = _Canvas(scene)
    tile = int(rng.integers(8, 24))
    for x in range(int(rng.integers(0, tile)), scene_w, tile):
        canvas.rectangle(x, horizon, x + 1, scene_h, floor * 0.6)
    for _ in range(int(rng.integers(8, 16))):
        x0, y0 = rng.uniform(-10, scene_w), rng.uniform(-10, horizon)
        w, h = rng.uniform(0.15, 0.8) * width, rng.uniform(0.1, 0.5) * height
        colour = _random_colour(rng) if rng.random() < 0.5 else wall * rng.uniform(0.5, 1.4)
        canvas.rectangle(x0, y0, x0 + w, y0 + h, np.clip(colour, 0, 255).astype(np.float32))
    # Low-frequency stains and lighting so flat regions are not flat.
    stains = rng.normal(0, 14, size=(max(scene_h // 16, 2), max(scene_w // 16, 2), 3)).astype(np.float32)
    scene += _resize_float(stains, scene_h, scene_w)
    return np.clip(scene, 0, 255).astype(np.float32)


def _resize_float(array: np.ndarray, height: int, width: int) -> np.ndarray:
    channels = [
        np.asarray(Image.fromarray(array[..., c]).resize((width, height), Image.Resampling.BICUBIC))
        for c in range(array.shape[2])
    ]
    return np.stack(channels, axis=-1)


@dataclass(frozen=True)
class _Tracklet:
    """What stays nearly constant while one person passes one camera."""

    view: str
    phase: float
    scale: float
    centre_offset: float
    crop_x: float
    crop_y: float
    drift_x: float


def _tracklet(seed: int, pid: int, camid: int, camera: CameraStyle, height: int, width: int) -> _Tracklet:
    rng = np.random.default_rng([seed, _TRACKLET_STREAM, pid, camid])
    return _Tracklet(
        view=VIEWS[int(rng.choice(len(VIEWS), p=np.array(camera.view_weights) / sum(camera.view_weights)))],
        phase=float(rng.uniform(0, 2 * math.pi)),
        scale=camera.person_scale * float(rng.uniform(0.95, 1.05)),
        centre_offset=float(rng.normal(0, 0.04)) * width,
        crop_x=float(rng.uniform(0, 3 * width)),
        crop_y=float(rng.uniform(0, height)),
        drift_x=float(rng.normal(0, 0.08)) * width,
    )


def _render_image(
    planned: _PlannedImage,
    tracklet: _Tracklet,
    look: _Look,
    camera: CameraStyle,
    background: np.ndarray,
    seed: int,
    occlusion_rate: float,
    height: int,
    width: int,
) -> tuple[np.ndarray, str, str | None]:
    """One image as uint8 pixels, with the viewpoint it shows and the occluder drawn over it (if any)."""
    rng = np.random.default_rng([seed, _IMAGE_STREAM, planned.pid, planned.camid, planned.index_in_camera])
    # Occlusion has its own stream so that an image without an occluder is the same whatever the occlusion rate.
    occlusion_rng = np.random.default_rng(
        [seed, _OCCLUSION_STREAM, planned.pid, planned.camid, planned.index_in_camera]
    )

    scene_h, scene_w = background.shape[:2]
    crop_x = int(np.clip(tracklet.crop_x + planned.index_in_camera * tracklet.drift_x + rng.normal(0, 2),
                         0, scene_w - width))  # fmt: skip
    crop_y = int(np.clip(tracklet.crop_y + rng.normal(0, 2), 0, scene_h - height))
    canvas = _Canvas(background[crop_y : crop_y + height, crop_x : crop_x + width].copy())
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.25) * width, rng.uniform(0.03, 0.12) * height
        if rng.random() < 0.5:
            canvas.ellipse(x, y, rx, ry, _random_colour(rng))
        else:
            canvas.rectangle(x - rx, y - ry, x + rx, y + ry, _random_colour(rng))

    view = tracklet.view if rng.random() < _TRACKLET_VIEW_KEEP else VIEWS[int(rng.integers(len(VIEWS)))]
    phase = tracklet.phase + planned.index_in_camera * float(rng.uniform(0.6, 1.4))
    unit = height * tracklet.scale * look.height_factor * float(1 + rng.normal(0, 0.03))
    feet_y = height * float(rng.uniform(0.93, 0.99))
    cx = width / 2 + tracklet.centre_offset + float(rng.normal(0, 0.04)) * width
    _draw_person(canvas, look, view, phase, cx, feet_y, unit)

    occluder = None
    if occlusion_rng.random() < occlusion_rate:
        occluder = OCCLUDERS[int(occlusion_rng.integers(len(OCCLUDERS)))]
        _draw_occluder(canvas, occluder, occlusion_rng, cx, feet_y, unit)

    exposure = np.float32(1 + rng.normal(0, _IMAGE_EXPOSURE_SIGMA))
    pixels = _apply_camera(canvas.pixels, camera, exposure, rng)
    return pixels, view, occluder


def _draw_occluder(
    canvas: _Canvas, kind: str, rng: np.random.Generator, cx: float, feet_y: float, unit: float
) -> None:
    width, height = canvas.width, canvas.height
    colour = _random_colour(rng)
    if kind == "box":
        # A car, bench or barrier hiding the legs.
        top = feet_y - rng.uniform(0.2, 0.45) * unit
        left = cx + rng.uniform(-0.9, 0.1) * width
        canvas.rectangle(left, top, left + rng.uniform(0.5, 1.0) * width, height + 1, colour)
        canvas.rectangle(left, top, left + width, top + 0.02 * height, colour * np.float32(0.7))
    elif kind == "pole":
        x = cx + rng.uniform(-0.25, 0.25) * width
        half = rng.uniform(0.04, 0.09) * width
        shade = np.float32(rng.uniform(80, 190))
        canvas.rectangle(x - half, -1, x + half, height + 1, np.array([shade, shade, shade * 1.05], np.float32))
    elif kind == "person":
        # Another pedestrian passing in front: a random look, cut off by the image border.
        stranger = _make_look(rng, _independent_attributes(rng))
        side = 1.0 if rng.random() < 0.5 else -1.0
        _draw_person(
            canvas, stranger, VIEWS[int(rng.integers(len(VIEWS)))], float(rng.uniform(0, 2 * math.pi)),
            cx + side * rng.uniform(0.45, 0.7) * width, feet_y + rng.uniform(0.0, 0.05) * height,
            unit * float(rng.uniform(0.95, 1.1)),
        )  # fmt: skip
    else:
        # A wall or door frame entering from one side.
        cover = rng.uniform(0.2, 0.38) * width
        x0, x1 = (-1.0, cover) if rng.random() < 0.5 else (width - cover, width + 1.0)
        canvas.rectangle(x0, -1, x1, height + 1, colour)


def _apply_camera(pixels: np.ndarray, camera: CameraStyle, exposure: np.float32, rng: np.random.Generator) -> np.ndarray:
    """Colour cast, exposure, contrast, gamma, blur, lost resolution and sensor noise of one camera."""
    contrast = np.float32(camera.contrast)
    gains = np.array(camera.channel_gains, np.float32) * (exposure * contrast)
    toned = pixels * gains + np.float32(128.0 * (1.0 - camera.contrast) + camera.brightness + 0.5)
    image = Image.fromarray(np.minimum(np.maximum(toned, 0.0), 255.0).astype(np.uint8))
    image = image.point(_gamma_table(camera.gamma) * 3)
    height, width = pixels.shape[:2]
    if camera.blur_radius > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur_radius))
    if camera.softness < 0.98:
        small = (max(round(width * camera.softness), 1), max(round(height * camera.softness), 1))
        image = image.resize(small, Image.Resampling.BILINEAR).resize((width, height), Image.Resampling.BILINEAR)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(camera.noise_sigma)
    noisy = np.asarray(image, np.float32) + noise + np.float32(0.5)
    return np.minimum(np.maximum(noisy, 0.0), 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _gamma_table(gamma: float) -> list[int]:
    return [round(255.0 * (level / 255.0) ** gamma) for level in range(256)]


# --- checks and publishing --------------------------------------------------------------------------------------


def _check_int(name: str, value: object, low: int, high: int | None, why: str) -> None:
    in_range = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not in_range:
        expected = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise ConfigError(f"{name}={value!r} is invalid; expected {expected} ({why})")


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    valid = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        and MIN_SIZE[0] <= size[0] <= MAX_SIZE[0]
        and MIN_SIZE[1] <= size[1] <= MAX_SIZE[1]
    )
    if not valid:
        raise ConfigError(
            f"size={size!r} is invalid; expected (height, width) integers with height {MIN_SIZE[0]}-{MAX_SIZE[0]} "
            f"and width {MIN_SIZE[1]}-{MAX_SIZE[1]}, e.g. {DEFAULT_SIZE}"
        )
    return int(size[0]), int(size[1])


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"'{out_dir}' exists and is not a folder; expected a folder to write the synthetic set into")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(
            f"'{out_dir}' is not empty; expected an empty or new folder (pass overwrite=True, or --overwrite, "
            "to replace its contents)"
        )


def _published_mode(out_dir: Path) -> int:
    """The permission bits for the published set: those of the folder it replaces, else 0777 less the umask."""
    if out_dir.is_dir():
        return stat.S_IMODE(out_dir.stat().st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


__all__ = [
    "COLOURS",
    "METADATA_FILE",
    "NUM_ATTRIBUTES",
    "SPLIT_DIRS",
    "CameraStyle",
    "IdentityAttributes",
    "SyntheticSummary",
    "generate_synthetic",
    "sample_camera_style",
    "sample_identities",
]
