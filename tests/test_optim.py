"""Learning-rate schedules and parameter groups against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgereid.recipes.schema import SolverConfig
from edgereid.training.optim import build_optimizer, build_scheduler, lr_factor_schedule


def solver(**values: object) -> SolverConfig:
    return SolverConfig.model_validate(values)


def test_linear_warmup_then_multistep() -> None:
    factor = lr_factor_schedule(
        solver(epochs=6, warmup={"iters": 4, "factor": 0.2}, schedule={"name": "multistep", "steps": [2, 4], "gamma": 0.5}),
        iters_per_epoch=3,
    )
    # Warm-up: 0.2 + (1 - 0.2) * it / 4 for it < 4; epoch = it // 3; gamma ** (steps passed).
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert [factor(it) for it in range(14)] == pytest.approx(expected)


def test_warmup_multiplies_the_schedule() -> None:
    factor = lr_factor_schedule(
        solver(epochs=4, warmup={"iters": 10, "factor": 0.1}, schedule={"name": "multistep", "steps": [1]}),
        iters_per_epoch=4,
    )
    # Iteration 5 is in epoch 1 (lr × 0.1) and still warming up (0.1 + 0.9 × 5/10 = 0.55).
    assert factor(5) == pytest.approx(0.1 * 0.55)


def test_cosine_with_delay() -> None:
    factor = lr_factor_schedule(
        solver(epochs=10, schedule={"name": "cosine", "delay_epochs": 4, "eta_min_factor": 0.1}), iters_per_epoch=2
    )
    assert factor(0) == factor(7) == 1.0
    # Annealing runs over iterations 8..20: halfway (iteration 14) is at the mean of 1 and the floor.
    assert factor(14) == pytest.approx(0.55)
    assert factor(8 + 3) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 12)))
    assert factor(20) == pytest.approx(0.1)


def test_scheduler_steps_the_optimizer_lr() -> None:
    model = nn.Linear(2, 2)
    config = solver(lr=0.5, epochs=2, warmup={"iters": 2, "factor": 0.5}, schedule={"name": "constant"})
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, iters_per_epoch=2)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.25, 0.375, 0.5])


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.heads = nn.Linear(3, 2)
        self.heads.bias.requires_grad_(False)


def test_parameter_groups_get_their_factors() -> None:
    model = _Tiny()
    optimizer = build_optimizer(model, solver(lr=1.0, head_lr_factor=10.0, bias_lr_factor=2.0, optimizer="sgd"))
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates[id(model.backbone.weight)] == 1.0
    assert rates[id(model.backbone.bias)] == 2.0
    assert rates[id(model.heads.weight)] == 10.0
    # A parameter that never trains is not handed to the optimizer.
    assert id(model.heads.bias) not in rates
    assert isinstance(optimizer, torch.optim.SGD)
