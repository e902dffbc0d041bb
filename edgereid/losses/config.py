"""Which training losses are on, with their weights and parameters (FastReID's names), validated by pydantic.

A loss is on when its weight is above 0. The defaults are BoT's: label-smoothed cross-entropy plus batch-hard
triplet, both with weight 1; Circle and the AlignedReID local triplet are off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from edgereid.errors import ConfigError

NonNegative = Annotated[float, Field(ge=0.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CrossEntropyConfig(_Section):
    """Identity cross-entropy on the classifier's logits (margin logits for ArcFace/CosFace/Circle heads)."""

    weight: NonNegative = 1.0
    # A fraction in [0, 1] (1 - epsilon on the true class, epsilon / (K - 1) on each other one, as FastReID), or
    # "adaptive" for FastReID's per-sample epsilon = alpha * p(target) (its CE.EPSILON < 0).
    epsilon: float | Literal["adaptive"] = 0.1
    alpha: float = Field(default=0.2, ge=0.0, le=1.0)

    @field_validator("epsilon", mode="before")
    @classmethod
    def _fraction_or_adaptive(cls, value: Any) -> Any:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if value == "adaptive" or (is_number and 0.0 <= value <= 1.0):
            return value
        raise ValueError(f"expected a number in [0, 1] or 'adaptive', got {value!r}")

    @model_validator(mode="after")
    def _alpha_only_when_adaptive(self) -> CrossEntropyConfig:
        # Compared with the default rather than "was it set", so a fully spelled-out (saved) recipe loads again.
        if self.alpha != type(self).model_fields["alpha"].default and self.epsilon != "adaptive":
            raise ValueError(f"alpha applies only with epsilon: adaptive, but epsilon is {self.epsilon}")
        return self


class TripletConfig(_Section):
    """Triplet loss on the pre-BN global feature."""

    weight: NonNegative = 1.0
    margin: NonNegative = 0.3
    soft_margin: bool = False
    hard_mining: bool = True
    normalize: bool = False

    @model_validator(mode="after")
    def _margin_only_without_soft_margin(self) -> TripletConfig:
        if self.margin != type(self).model_fields["margin"].default and self.soft_margin:
            raise ValueError("margin has no effect with soft_margin: true; leave one of them out")
        return self


class CircleConfig(_Section):
    """Pairwise Circle loss on the pre-BN global feature."""

    weight: NonNegative = 0.0
    margin: NonNegative = 0.25
    gamma: float = Field(default=128.0, gt=0.0)


class LocalTripletConfig(_Section):
    """AlignedReID's local triplet loss: the shortest-path stripe distances at the pairs mined on global ones."""

    weight: NonNegative = 0.0
    margin: NonNegative = 0.3


class LossConfig(_Section):
    ce: CrossEntropyConfig = Field(default_factory=CrossEntropyConfig)
    triplet: TripletConfig = Field(default_factory=TripletConfig)
    circle: CircleConfig = Field(default_factory=CircleConfig)
    local_triplet: LocalTripletConfig = Field(default_factory=LocalTripletConfig)

    @model_validator(mode="after")
    def _some_loss_is_on(self) -> LossConfig:
        if not any(getattr(self, name).weight > 0 for name in type(self).model_fields):
            raise ValueError(
                f"every loss has weight 0; give at least one of {', '.join(type(self).model_fields)} a weight > 0"
            )
        return self


def parse_loss_config(data: Mapping[str, Any] | None, key: str = "losses") -> LossConfig:
    """Validate the ``losses`` section of a recipe; every error names its key path (``losses.triplet.margin``).

    ``key`` is where the section sits in its file, for the messages; None or an empty mapping gives the defaults.
    """
    try:
        return LossConfig.model_validate(data or {})
    except ValidationError as error:
        problems = "\n".join(f"  {_describe(detail, key)}" for detail in error.errors())
        raise ConfigError(f"invalid loss configuration:\n{problems}") from None


def _describe(detail: ErrorDetails, key: str) -> str:
    path = ".".join([key, *map(str, detail["loc"])])
    if detail["type"] == "extra_forbidden":
        return f"{path}: unknown key; expected one of {', '.join(_known_keys(detail['loc'][:-1]))}"
    if detail["type"] == "value_error":
        # Our validators' messages already show the value.
        return f"{path}: {detail['ctx']['error']}"
    return f"{path}: {detail['msg']}, got {detail['input']!r}"


def _known_keys(section_path: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = LossConfig
    for name in section_path:
        model = cast(type[BaseModel], model.model_fields[str(name)].annotation)
    return list(model.model_fields)
