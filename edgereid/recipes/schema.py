"""The recipe: one validated object that says what to train on, which model, which losses and how."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgereid.data.transforms import AugmentConfig
from edgereid.losses.config import LossConfig
from edgereid.modeling.config import ModelConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SyntheticDataConfig(_Strict):
    """Generate the synthetic data set at `data.root` first when it does not exist yet."""

    ids: int = Field(100, ge=2)
    cameras: int = Field(4, ge=2)
    seed: int = Field(0, ge=0)
    images_per_id_per_camera: int = Field(6, ge=2)
    size: tuple[int, int] = (128, 64)


class HoldoutConfig(_Strict):
    """Hold identities of a train-only data set out as query/gallery (``edgereid.data.make_holdout``)."""

    num_test_ids: int = Field(ge=1)
    seed: int | None = None


class SamplerConfig(_Strict):
    p: int = Field(16, ge=2, description="identities per batch")
    k: int = Field(4, ge=1, description="images per identity")


class DataConfig(_Strict):
    root: Path
    format: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    holdout: HoldoutConfig | None = None
    synthetic: SyntheticDataConfig | None = None
    size: tuple[int, int] = (256, 128)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    cache_dir: Path | None = None
    strict_images: bool = False

    @model_validator(mode="after")
    def _positive_size(self) -> DataConfig:
        if min(self.size) < 16:
            raise ValueError(f"size must be at least 16×16 pixels, got {self.size[0]}×{self.size[1]}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class WarmupConfig(_Strict):
    iters: int = Field(0, ge=0)
    factor: float = Field(0.1, gt=0, le=1)


class ScheduleConfig(_Strict):
    name: Literal["multistep", "cosine", "constant"] = "multistep"
    steps: list[int] = Field(default_factory=lambda: [30, 50], description="multistep: epochs where lr drops")
    gamma: float = Field(0.1, gt=0, le=1)
    delay_epochs: int = Field(0, ge=0, description="cosine: epochs at full lr before annealing")
    eta_min_factor: float = Field(0.0, ge=0, le=1)


class FreezeConfig(_Strict):
    iters: int = Field(0, ge=0, description="train only the head for this many iterations")
    modules: list[str] = Field(default_factory=lambda: ["backbone"])


class SolverConfig(_Strict):
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3.5e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    bias_lr_factor: float = Field(1.0, gt=0)
    head_lr_factor: float = Field(1.0, gt=0)
    epochs: int = Field(60, ge=1)
    iters_per_epoch: int | None = Field(None, ge=1)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    clip_grad_norm: float | None = Field(None, gt=0)
    amp: Literal["none", "bf16", "fp16"] = "bf16"


class TrainConfig(_Strict):
    output_dir: Path = Path("runs/{name}")
    device: str = "auto"
    eval_period: int = Field(10, ge=1, description="evaluate every N epochs (and after the last)")
    checkpoint_period: int | None = Field(None, ge=1, description="keep a checkpoint every N epochs")
    log_period: int = Field(20, ge=1, description="iterations between logged metrics and finiteness checks")
    flip_test: bool = False
    tensorboard: bool = True


_NETWORK_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"
# The name of a recipe's one network when it trains only one (no ``mutual`` section).
DEFAULT_NETWORK = "model"


class MutualConfig(_Strict):
    """Deep mutual learning: the recipe's ``model`` (named ``student``) and every network in ``peers`` train
    together on the same P×K batches, each also learning from the others' outputs (peers detached)."""

    student: str = Field("student", pattern=_NETWORK_NAME, description="the name of the recipe's `model`")
    peers: dict[str, ModelConfig] = Field(description="the other networks, by name (at least one)")
    kl_weight: float = Field(0.01, ge=0, description="classification mutual loss: KL of the peers' softened logits")
    metric_weight: float = Field(0.001, ge=0, description="metric mutual loss: squared difference of distance matrices")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the KL (scaled by T^2)")

    @model_validator(mode="after")
    def _networks(self) -> MutualConfig:
        if not self.peers:
            raise ValueError(
                "mutual learning needs at least 2 networks: the recipe's model and one or more in mutual.peers"
            )
        if self.student in self.peers:
            raise ValueError(
                f"mutual.peers names {self.student!r}, which is the student's name (mutual.student, the recipe's "
                "model); give the peer another name"
            )
        bad = [name for name in self.peers if not re.match(_NETWORK_NAME, name)]
        if bad:
            raise ValueError(f"mutual.peers names {bad}; expected names of letters, digits, '_' and '-'")
        return self


class DistillConfig(_Strict):
    """Teacher → student distillation: the recipe's ``model`` learns from a frozen network of a trained
    checkpoint, on the same batches, with the same classes and input size."""

    teacher: Path = Field(description="the teacher's checkpoint: a .pt file or a run directory (its last.pt)")
    teacher_network: str | None = Field(None, description="which network of a mutual checkpoint (default its student)")
    kl_weight: float = Field(0.01, ge=0, description="logit KL, teacher → student")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the KL (scaled by T^2)")
    symmetric: bool = Field(False, description="average KL(teacher||student) and KL(student||teacher)")
    metric_weight: float = Field(0.001, ge=0, description="metric mutual loss on the global distance matrices")
    embedding_weight: float = Field(0.0, ge=0, description="MSE between the embeddings (through a projection)")
    embedding_projection: bool = Field(
        True, description="learn a linear projection when the embedding sizes differ; false makes that an error"
    )


class QATConfig(_Strict):
    """Quantization-aware training (:mod:`edgereid.training.qat`): the recipe's ``model``, as trained in the FP32
    checkpoint ``init``, fine-tuned with INT8 fake quantization by the recipe's losses and ``solver`` plus
    self-distillation from the frozen FP32 network (logit KL, metric mutual loss and the embedding itself)."""

    init: Path = Field(description="the trained FP32 checkpoint: a .pt file or a run directory (its last.pt)")
    network: str | None = Field(None, description="which network of a mutual checkpoint (default its student)")
    calibration_images: int = Field(512, ge=16, description="train images the activation ranges are calibrated on")
    kl_weight: float = Field(1.0, ge=0, description="logit KL, FP32 → quantized network")
    temperature: float = Field(4.0, gt=0, description="softmax temperature of the KL (scaled by T^2)")
    metric_weight: float = Field(0.001, ge=0, description="metric mutual loss on the global distance matrices")
    embedding_weight: float = Field(1.0, ge=0, description="MSE between the quantized and the FP32 embeddings")

    def as_distillation(self) -> DistillConfig:
        """The self-distillation as a distillation from the FP32 checkpoint."""
        return DistillConfig(
            teacher=self.init,
            teacher_network=self.network,
            kl_weight=self.kl_weight,
            temperature=self.temperature,
            metric_weight=self.metric_weight,
            embedding_weight=self.embedding_weight,
            embedding_projection=False,
        )


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="names the run directory")
    description: str = ""
    seed: int = Field(0, ge=0)
    data: DataConfig
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    losses: LossConfig = Field(default_factory=LossConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mutual: MutualConfig | None = None
    distill: DistillConfig | None = None
    qat: QATConfig | None = None

    @property
    def student(self) -> str:
        """The name of the recipe's ``model``: the network that evaluation and export take by default."""
        return self.mutual.student if self.mutual is not None else DEFAULT_NETWORK

    def networks(self) -> dict[str, ModelConfig]:
        """Every network the recipe trains, by name: the student (``model``) first, then the mutual peers."""
        peers = self.mutual.peers if self.mutual is not None else {}
        return {self.student: self.model, **peers}

    @property
    def teacher(self) -> DistillConfig | None:
        """What the recipe's model learns from besides its own losses: a ``distill`` teacher, or in QAT the FP32
        network itself."""
        return self.qat.as_distillation() if self.qat is not None else self.distill

    @model_validator(mode="after")
    def _one_teaching_scheme(self) -> Recipe:
        if self.mutual is not None and self.distill is not None:
            raise ValueError(
                "a recipe has either mutual (networks trained together) or distill (a frozen teacher), not both"
            )
        if self.qat is not None and (self.mutual is not None or self.distill is not None):
            raise ValueError(
                "qat fine-tunes one trained network against its own FP32 self; remove mutual and distill (train "
                "with them first, then give that checkpoint as qat.init)"
            )
        return self

    @model_validator(mode="after")
    def _schedule_within_training(self) -> Recipe:
        epochs = self.solver.epochs
        late = [step for step in self.solver.schedule.steps if step > epochs]
        if self.solver.schedule.name == "multistep" and late:
            raise ValueError(f"solver.schedule.steps {late} lie after the last epoch ({epochs}); expected steps <= epochs")
        if self.solver.schedule.name == "cosine" and self.solver.schedule.delay_epochs >= epochs:
            raise ValueError(
                f"solver.schedule.delay_epochs ({self.solver.schedule.delay_epochs}) leaves no epoch to anneal in; "
                f"expected fewer than solver.epochs ({epochs})"
            )
        return self
