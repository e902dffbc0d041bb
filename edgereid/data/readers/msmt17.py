"""MSMT17 as released: image folders plus list_{train,val,query,gallery}.txt files of 'RELATIVE_PATH PID' lines."""

from __future__ import annotations

from pathlib import Path

from edgereid.data.readers._common import warn_single_image_identities
from edgereid.data.readers.market import MSMT17_NAMES
from edgereid.data.records import ImageRecord, ReIDDataset
from edgereid.data.registry import register_reader, require_directory
from edgereid.errors import DataError

# V1 keeps images in train/ and test/; V2 in mask_train_v2/ and mask_test_v2/.
IMAGE_DIRS = {"v1": ("train", "test"), "v2": ("mask_train_v2", "mask_test_v2")}
LISTS = {"train": ("list_train.txt", "list_val.txt"), "query": ("list_query.txt",), "gallery": ("list_gallery.txt",)}


@register_reader(
    "msmt17",
    description="MSMT17 V1/V2 with list_train/val/query/gallery.txt",
    looks_like=lambda root: (root / "list_query.txt").is_file(),
)
def read_msmt17(root: Path) -> ReIDDataset:
    require_directory(root, "MSMT17 data set root")
    version = next((v for v, dirs in IMAGE_DIRS.items() if (root / dirs[0]).is_dir()), None)
    if version is None:
        raise DataError(f"'{root}' holds neither train/ and test/ (MSMT17 V1) nor mask_train_v2/ (V2)")
    train_dir, test_dir = (root / d for d in IMAGE_DIRS[version])
    splits: dict[str, list[ImageRecord]] = {}
    for split, list_names in LISTS.items():
        image_dir = train_dir if split == "train" else test_dir
        splits[split] = [r for name in list_names if (root / name).is_file() for r in _read_list(root / name, image_dir)]
        if not splits[split]:
            raise DataError(f"'{root}' lists no {split} images; expected {' or '.join(list_names)} with entries")
    warn_single_image_identities(splits["train"], f"'{train_dir}'")
    return ReIDDataset("msmt17", root, **splits)


def _read_list(list_file: Path, image_dir: Path) -> list[ImageRecord]:
    records = []
    for line_number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        parsed = MSMT17_NAMES.parse(Path(fields[0]).name) if len(fields) == 2 else None
        if parsed is None or not fields[1].isdigit():
            raise DataError(
                f"{list_file}:{line_number}: expected 'RELATIVE_PATH PID' with an MSMT17 file name like "
                f"'0000/{MSMT17_NAMES.example} 0', got {line!r}"
            )
        # The list's pid is authoritative (train ids are relabelled 0..N-1 in the lists); the camera is in the name.
        records.append(ImageRecord(image_dir / fields[0], int(fields[1]), parsed[1]))
    return records
