"""Users' own data (luggage, products, …): one folder per identity, cameras from sub-folders or a name regex.

    root/<identity>/*.jpg                       (cameras from ``camera_regex``, or none)
    root/<identity>/<camera>/*.jpg              (cameras from sub-folders)
    root/{train,query,gallery}/<identity>/...   (splits given; otherwise everything is train)

Without any camera information every image counts as a camera of its own, so evaluation only excludes the
query itself from the gallery.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgereid.data.readers._common import list_images, remap_to_index, warn_single_image_identities
from edgereid.data.records import ImageRecord, ReIDDataset
from edgereid.data.registry import register_reader, require_directory
from edgereid.errors import ConfigError, DataError

SPLITS = ("train", "query", "gallery")


@register_reader("folder", description="root/<identity>/[<camera>/]*.jpg, optional train/ query/ gallery/ splits")
def read_folder(root: Path, camera_regex: str | None = None) -> ReIDDataset:
    require_directory(root, "data set root")
    camera_pattern = _compile(camera_regex)
    split_roots = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_roots and "train" not in split_roots and set(split_roots) != {"query", "gallery"}:
        raise DataError(f"'{root}' has {', '.join(split_roots)}/ but not a full split; expected train/ and/or query/ + gallery/")
    if not split_roots:
        split_roots = {"train": root}
    found = {split: _scan(directory, camera_pattern) for split, directory in split_roots.items()}
    ids = remap_to_index(identity for entries in found.values() for _, identity, _ in entries)
    cameras = remap_to_index(camera for entries in found.values() for _, _, camera in entries if camera is not None)
    splits: dict[str, list[ImageRecord]] = {}
    next_own_camera = max(cameras.values(), default=-1) + 1
    for split, entries in found.items():
        records = []
        for path, identity, camera in entries:
            if camera is None:
                camid, next_own_camera = next_own_camera, next_own_camera + 1
            else:
                camid = cameras[camera]
            records.append(ImageRecord(path, ids[identity], camid))
        splits[split] = records
    if "train" in splits:
        warn_single_image_identities(splits["train"], f"'{split_roots['train']}'")
    return ReIDDataset("folder", root, **splits)


def _compile(camera_regex: str | None) -> re.Pattern[str] | None:
    if camera_regex is None:
        return None
    try:
        pattern = re.compile(camera_regex)
    except re.error as error:
        raise ConfigError(f"camera_regex {camera_regex!r} is not a valid regular expression: {error}") from None
    if "cam" not in pattern.groupindex:
        raise ConfigError(f"camera_regex {camera_regex!r} needs a named group 'cam', e.g. r'_c(?P<cam>\\d+)_'")
    return pattern


def _scan(directory: Path, camera_pattern: re.Pattern[str] | None) -> list[tuple[Path, str, str | None]]:
    identity_dirs = sorted(p for p in directory.iterdir() if p.is_dir())
    if not identity_dirs:
        raise DataError(f"'{directory}' holds no identity folders; expected {directory}/<identity>/*.jpg")
    entries: list[tuple[Path, str, str | None]] = []
    for identity_dir in identity_dirs:
        camera_dirs = sorted(p for p in identity_dir.iterdir() if p.is_dir())
        if camera_dirs:
            for camera_dir in camera_dirs:
                entries += [(p, identity_dir.name, camera_dir.name) for p in list_images(camera_dir)]
        else:
            entries += [(p, identity_dir.name, _camera_from_name(p, camera_pattern)) for p in list_images(identity_dir)]
    if not entries:
        raise DataError(f"the identity folders in '{directory}' hold no images (.jpg, .jpeg, .png, .bmp, .webp)")
    return entries


def _camera_from_name(path: Path, camera_pattern: re.Pattern[str] | None) -> str | None:
    if camera_pattern is None:
        return None
    match = camera_pattern.search(path.name)
    if match is None:
        raise DataError(f"'{path}' has no camera matching camera_regex {camera_pattern.pattern!r}")
    return match["cam"]
