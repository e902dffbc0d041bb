"""Bad input to the importers: each a one-line error naming the file, the key and what was expected; nothing
written; a pickle with code is refused without running."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edgereid.errors import DataError
from edgereid.importers.common import read_weights
from edgereid.importers.torchreid import import_torchreid
from edgereid.modeling.config import ModelConfig
from edgereid.modeling.model import create_model

ARCH = "osnet_x0_25"


def _torchreid_state() -> dict[str, torch.Tensor]:
    """osnet_x0_25 as torchreid names it: edgereid's osnet_x0_25_fc512 backbone has torchreid's keys."""
    cfg = ModelConfig.model_validate({"backbone": {"name": "osnet_x0_25_fc512"}, "head": {"neck_feat": "before"}})
    model = create_model(cfg, 5)
    state = {key.removeprefix("backbone."): value for key, value in model.state_dict().items()
             if key.startswith("backbone.")}
    return state | {"classifier.weight": torch.zeros(5, 512), "classifier.bias": torch.zeros(5)}


def _refused(weights: Path, tmp_path: Path, match: str) -> str:
    out = tmp_path / "out" / "ck.pt"
    with pytest.raises(DataError, match=match) as error:
        import_torchreid(ARCH, weights, out)
    message = str(error.value)
    assert "\n" not in message and str(weights) in message
    assert not out.exists()
    return message


def test_numpy_scalars_wrappers_and_prefixes_are_read(tmp_path: Path) -> None:
    path = tmp_path / "model.pth.tar-10"
    state = {"module.a": torch.ones(2), "module.b": torch.zeros(1)}
    torch.save({"state_dict": state, "rank1": np.float64(0.9), "mAP": np.float32(0.5), "epoch": np.int64(10)}, path)
    tensors, extra = read_weights(path, "torchreid")
    assert set(tensors) == {"a", "b"}
    assert extra["rank1"] == pytest.approx(0.9) and extra["epoch"] == 10


class _Payload:
    """Unpickling runs os.system: a file with code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    weights = tmp_path / "evil.pth"
    torch.save({"state_dict": _torchreid_state(), "hook": _Payload(marker)}, weights)
    message = _refused(weights, tmp_path, "refused as torchreid weights")
    assert "system" in message  # the callable it would have run (posix.system), named
    assert not marker.exists()
    # A bare pickle (not torch's zip format) with code: refused the same way.
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    _refused(raw, tmp_path, "refused as torchreid weights|is not a PyTorch weights file")
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    _refused(text, tmp_path, "is not a PyTorch weights file")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _refused(empty, tmp_path, "are empty")
    _refused(tmp_path / "missing.pth", tmp_path, "do not exist")
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    _refused(listing, tmp_path, "holds list, not torchreid weights")
    mixed = tmp_path / "mixed.pth"
    torch.save({"conv1.conv.weight": torch.zeros(1), "note": "hello"}, mixed)
    _refused(mixed, tmp_path, "key 'note' holds str, expected a tensor")


def test_weights_not_matching_list_the_keys(tmp_path: Path) -> None:
    state = _torchreid_state()
    del state["conv5.conv.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["fc.0.weight"] = torch.zeros(256, 128)
    weights = tmp_path / "osnet_x0_25.pth"
    torch.save(state, weights)
    message = _refused(weights, tmp_path, "does not fit torchreid's osnet_x0_25")
    assert "missing conv5.conv.weight" in message
    assert "unexpected extra.weight" in message
    assert "mis-shaped fc.0.weight (256, 128) (expected (512, 128))" in message


def test_nothing_is_written_over_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "ck.pt"
    out.write_bytes(b"previous")
    weights = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, weights)
    with pytest.raises(DataError):
        import_torchreid(ARCH, weights, out)
    assert out.read_bytes() == b"previous"
