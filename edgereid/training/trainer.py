"""The training loop: P×K batches gathered from decoded images kept on the training device, augmented there,
the recipe's losses, warm-up and schedule, backbone freeze, AMP on GPU, periodic evaluation, metrics to JSONL and
TensorBoard, atomic checkpoints and exact resume, one process or many under ``torchrun``.

Mutual learning trains every network of ``recipe.networks()`` on the same augmented batches; distillation trains
the recipe's model against a frozen teacher (`edgereid.training.teaching`). Evaluation scores every network; the
best checkpoint is the student's best.

On a GPU a step never waits for the host: the epoch's batch indices are copied to the device once, losses are
summed on the device and read back only every ``train.log_period`` iterations.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgereid.atomic import atomic_copy, atomic_write_text, remove_partial_files
from edgereid.data import ReIDDataset
from edgereid.data.images import DecodedImages
from edgereid.data.sampler import PKSampler
from edgereid.data.transforms import BatchAugment, EvalTransform
from edgereid.errors import ConfigError, EdgeReIDError
from edgereid.evaluation.features import evaluate_features
from edgereid.locking import LockTimeoutError, exclusive
from edgereid.modeling import ReIDModel, create_model
from edgereid.recipes import Recipe, recipe_from_dict, recipe_to_yaml
from edgereid.run_curves import update_run_curves
from edgereid.training.checkpoint import (
    Checkpoint,
    QuantizationState,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from edgereid.training.data import (
    IdentityClasses,
    check_batch_fits,
    decode_split,
    images_to_tensor,
    prepare_dataset,
)
from edgereid.training.distributed import DistributedContext, init_distributed, shutdown_distributed
from edgereid.training.inference import embed_images
from edgereid.training.optim import build_optimizer, build_scheduler
from edgereid.training.qat import (
    SCHEME,
    build_fp32_model,
    describe_init,
    freeze_norms,
    modelopt_state,
    quantize_model,
    quantized_layers,
    restore_quantized_model,
    sync_weight_ranges,
)
from edgereid.training.teaching import (
    TrainingObjective,
    check_teacher,
    differing_keys,
    load_teacher,
    teacher_outputs,
)

if TYPE_CHECKING:
    from typing_extensions import Self

METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "recipe.yaml"
LAST_CHECKPOINT = "last.pt"
PENDING_CHECKPOINT = ".last.pending.pt"


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs: int
    iterations: int  # where the run stands: the iterations of every session of it
    start_iteration: int  # where this session took it up (0 unless resumed)
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_metrics: dict[str, Any] | None
    last_metrics: dict[str, Any] | None
    elapsed_s: float


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name!r}, but this machine has no CUDA GPU; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def new_run_dir(output_dir: Path, name: str, held: ExitStack) -> Path:
    """``train.output_dir`` with ``{name}`` filled in; a numbered sibling if it already holds a run or another run
    is starting in it. The directory's lock is entered into ``held``, so it stays this run's while ``held`` is open."""
    base = Path(str(output_dir).replace("{name}", name))
    candidate, number = base, 1
    while True:
        with ExitStack() as attempt:
            try:
                attempt.enter_context(exclusive(candidate, "training run", timeout=0))
            except LockTimeoutError:
                taken = True
            else:
                taken = candidate.exists() and any(candidate.iterdir())
            if not taken:
                candidate.mkdir(parents=True, exist_ok=True)
                held.enter_context(attempt.pop_all())
                return candidate
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")


def train(
    recipe: Recipe | None = None,
    *,
    resume: str | Path | None = None,
    device: str | None = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> TrainResult:
    """Train ``recipe`` into a new run directory, or continue the run in ``resume`` (a run directory or a
    checkpoint) from its last checkpoint exactly where it stopped. With both, ``recipe`` may only differ from the
    saved one in ``train`` and ``solver.epochs`` (to train for longer)."""
    if recipe is None and resume is None:
        raise ConfigError("give a recipe to train, or a run directory to resume")
    resumed, run_dir = None, None
    if resume is not None and _killed_before_first_checkpoint(Path(resume)):
        # Nothing to continue from: start again, in the same directory, from the recipe saved there.
        run_dir = Path(resume)
        saved = recipe_from_dict(yaml.safe_load((run_dir / RECIPE_FILE).read_text()), f"'{run_dir / RECIPE_FILE}'")
        recipe = saved if recipe is None else recipe
    elif resume is not None:
        resumed = load_checkpoint(resume)
        recipe = _recipe_for_resume(resumed, recipe)
    assert recipe is not None
    if recipe.teacher is not None and resumed is None and run_dir is None:
        check_teacher(recipe)
    device_name = device or recipe.train.device
    use_cuda = resolve_device(device_name).type == "cuda"
    context = init_distributed(use_cuda)
    try:
        loop = _TrainingLoop(recipe, resolve_device(device_name, context.local_rank), context, resumed, run_dir)
        return loop.run(show_progress, console or Console(stderr=True))
    finally:
        shutdown_distributed(context)


def _killed_before_first_checkpoint(run_dir: Path) -> bool:
    return run_dir.is_dir() and (run_dir / RECIPE_FILE).is_file() and not (run_dir / LAST_CHECKPOINT).exists()


def _recipe_for_resume(checkpoint: Checkpoint, recipe: Recipe | None) -> Recipe:
    saved = checkpoint.recipe
    if recipe is None:
        return saved
    comparable = {"train": None, "solver": {"epochs": None}}
    mine = _without(recipe.model_dump(mode="json"), comparable)
    theirs = _without(saved.model_dump(mode="json"), comparable)
    if mine != theirs:
        differing = sorted(differing_keys(mine, theirs))
        raise ConfigError(
            f"cannot resume '{checkpoint.path}' with a different recipe: {', '.join(differing)} differ from the "
            "saved recipe; only train.* and solver.epochs may change when resuming"
        )
    return recipe


def _without(content: dict[str, Any], dropped: dict[str, Any]) -> dict[str, Any]:
    kept = {}
    for key, value in content.items():
        if key in dropped and dropped[key] is None:
            continue
        kept[key] = _without(value, dropped[key]) if key in dropped and isinstance(value, dict) else value
    return kept


@dataclass
class _TrainData:
    """The decoded train split on the training device, its identity classes, and the query/gallery to evaluate."""

    classes: IdentityClasses
    images: torch.Tensor
    targets: torch.Tensor
    eval_data: tuple[DecodedImages, DecodedImages] | None


@dataclass
class _Window:
    """Losses summed on the device over a logging window, read back once at its end."""

    started: float
    iterations: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.iterations += 1


class _TrainingLoop:
    """One training run in phases: the run directory, the data, the networks (fake-quantized ones in QAT), the
    optimisation, a restored state when resuming; then per epoch the steps, the evaluation and the checkpoint."""

    def __init__(
        self,
        recipe: Recipe,
        device: torch.device,
        context: DistributedContext,
        resumed: Checkpoint | None,
        run_dir: Path | None,
    ) -> None:
        self.fixed_run_dir = run_dir
        self.recipe = recipe
        self.device = device
        self.context = context
        self.resumed = resumed
        self.use_amp = device.type == "cuda" and recipe.solver.amp != "none"
        self.amp_dtype = torch.float16 if recipe.solver.amp == "fp16" else torch.bfloat16
        self.quantization: QuantizationState | None = None

    def run(self, show_progress: bool, console: Console) -> TrainResult:
        """Train in the run directory, holding its lock: a second process cannot resume into a live run."""
        started = time.perf_counter()
        with ExitStack() as run_lock:
            self.run_dir = self._open_run_dir(console, run_lock)
            try:
                return self._train(show_progress, console, started)
            except BaseException:
                self._remove_unstarted_run()
                raise

    def _train(self, show_progress: bool, console: Console, started: float) -> TrainResult:
        recipe, context = self.recipe, self.context
        torch.manual_seed(recipe.seed + context.rank)
        data = self._load_data()
        self.classes = data.classes
        self._build_networks(data, console)
        self._build_optimization(data)
        start_epoch, iteration, best = self._restore()
        start_iteration = iteration
        trained = self._trained_modules()

        self.batches = _endless(self.sampler)
        # A resumed run that has no epoch left still reports its last evaluation.
        last_metrics: dict[str, Any] | None = (self.resumed.metrics or None) if self.resumed is not None else None
        writer = _TensorBoard(self.run_dir, recipe.train.tensorboard and context.is_main)
        total_iters = recipe.solver.epochs * self.iters_per_epoch
        progress = _progress(console, show_progress and context.is_main)
        with progress, writer, _open_metrics(self.run_dir, context.is_main, iteration) as metrics_file:
            task = progress.add_task("train", total=total_iters, completed=iteration, info="")
            for epoch in range(start_epoch, recipe.solver.epochs):
                plan = self._epoch_plan()
                window = _Window(time.perf_counter())
                for module in trained.values():
                    module.train()
                    if recipe.qat is not None:
                        freeze_norms(module)
                for step in range(self.iters_per_epoch):
                    window.add(self._step(trained, data, plan[step], iteration))
                    iteration += 1
                    progress.advance(task)
                    if iteration % recipe.train.log_period == 0 or step == self.iters_per_epoch - 1:
                        info = self._log_window(window, epoch, iteration, len(plan[step]), metrics_file, writer)
                        progress.update(task, info=info)
                        window = _Window(time.perf_counter())
                evaluated = None
                is_last = epoch + 1 == recipe.solver.epochs
                if data.eval_data is not None and ((epoch + 1) % recipe.train.eval_period == 0 or is_last):
                    evaluated = {"epoch": epoch + 1, "iteration": iteration, **self._evaluate(data.eval_data)}
                    _log(metrics_file, writer, "eval", evaluated)
                    if metrics_file is not None:
                        update_run_curves(self.run_dir, console)
                    self._print_scores(console, epoch, evaluated)
                    last_metrics = evaluated
                    if best is None or evaluated["mAP"] > best["mAP"]:
                        best = evaluated
                self._save(epoch + 1, iteration, best, evaluated, improved=evaluated is not None and best is evaluated)
        best_path = self.run_dir / "best.pt"
        return TrainResult(
            run_dir=self.run_dir,
            epochs=recipe.solver.epochs,
            iterations=iteration,
            start_iteration=start_iteration,
            last_checkpoint=self.run_dir / LAST_CHECKPOINT,
            best_checkpoint=best_path if best_path.exists() else None,
            best_metrics=best,
            last_metrics=last_metrics,
            elapsed_s=time.perf_counter() - started,
        )

    # --- set-up -----------------------------------------------------------------------------------------------

    def _open_run_dir(self, console: Console, run_lock: ExitStack) -> Path:
        recipe, context = self.recipe, self.context
        if self.resumed is not None or self.fixed_run_dir is not None:
            run_dir = self.resumed.path.parent if self.resumed is not None else Path(self.fixed_run_dir or "")
            if context.is_main:
                run_lock.enter_context(exclusive(run_dir, "training run", timeout=0))
        else:
            fresh = str(new_run_dir(recipe.train.output_dir, recipe.name, run_lock)) if context.is_main else None
            run_dir = Path(context.broadcast(fresh))
        if context.is_main:
            # Under the run's lock, nothing else writes here: what a killed run was writing is debris.
            partial = [*remove_partial_files(run_dir), *_remove(run_dir / PENDING_CHECKPOINT)]
            if partial:
                console.print(f"[dim]removed what an interrupted run left half-written: "
                              f"{', '.join(path.name for path in partial)}[/]")
            atomic_write_text(run_dir / RECIPE_FILE, recipe_to_yaml(recipe))
            console.print(f"[bold]run[/] {run_dir}  [dim]device {self.device}, {context.world_size} process(es)[/]")
        return run_dir

    def _remove_unstarted_run(self) -> None:
        """A new run that failed before its first checkpoint leaves nothing to resume: its directory goes, so the
        next run of the recipe gets the name rather than a numbered sibling."""
        fresh = self.resumed is None and self.fixed_run_dir is None
        if fresh and self.context.is_main and not (self.run_dir / LAST_CHECKPOINT).exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _load_data(self) -> _TrainData:
        recipe, context = self.recipe, self.context
        if context.is_main:
            dataset = prepare_dataset(recipe.data)
        context.barrier()
        if not context.is_main:
            dataset = prepare_dataset(recipe.data)
        decoded = decode_split(dataset.train, recipe.data, "train")
        classes = IdentityClasses.from_records(decoded.records)
        if self.resumed is not None and self.resumed.class_pids != classes.pids:
            raise ConfigError(
                f"the training identities of '{recipe.data.root}' are not the ones run '{self.run_dir}' was trained "
                "on; resume on the same data"
            )
        check_batch_fits(recipe.data, len(classes.pids), context.world_size)
        return _TrainData(
            classes=classes,
            images=images_to_tensor(decoded.images, self.device),
            targets=torch.from_numpy(classes.targets(decoded.records)).to(self.device),
            eval_data=self._eval_data(dataset) if context.is_main else None,
        )

    def _build_networks(self, data: _TrainData, console: Console) -> None:
        """Every trained network, the student first; a distillation teacher (in QAT the FP32 network) frozen."""
        recipe = self.recipe
        num_classes = len(data.classes.pids)
        self.teacher: ReIDModel | None = None
        if recipe.qat is not None:
            networks = {recipe.student: self._quantized_network(data, console)}
        else:
            # The student first: a single-network run builds its model from the same random state as ever.
            networks = {
                name: create_model(config, num_classes=num_classes).to(self.device)
                for name, config in recipe.networks().items()
            }
            if recipe.distill is not None:
                self.teacher = load_teacher(recipe, data.classes.pids, self.device)
            configs = recipe.networks()
            for name, network in networks.items():
                # A resumed run goes on from its own weights (restored later), never from init_from again.
                if configs[name].init_from is not None and self.resumed is None:
                    from edgereid.training.init_from import load_init_weights

                    where = "model" if name == recipe.student else f"mutual.peers.{name}"
                    console.print(f"[bold]init_from[/] {load_init_weights(network, configs[name], where)}")
        if self.device.type == "cuda":
            networks = {name: network.to(memory_format=torch.channels_last) for name, network in networks.items()}
        self.networks = networks

    def _quantized_network(self, data: _TrainData, console: Console) -> ReIDModel:
        """QAT's network: restored from the checkpoint being resumed, else the FP32 network of ``qat.init``
        fake-quantized and calibrated on train images."""
        recipe = self.recipe
        assert recipe.qat is not None
        if self.resumed is not None and self.resumed.quantization is not None:
            state = self.resumed.quantization
            self.teacher = build_fp32_model(recipe.model, len(data.classes.pids), state).to(self.device)
            self.teacher.requires_grad_(False)
            self.quantization = state
            network = restore_quantized_model(recipe.model, len(data.classes.pids), state, self.resumed.model_state)
            return network.to(self.device)
        self.teacher = load_teacher(recipe, data.classes.pids, self.device)
        init = load_checkpoint(recipe.qat.init)
        network_name, _, weights = init.network(recipe.qat.network)
        count = min(recipe.qat.calibration_images, len(data.images))
        self.quantization = QuantizationState(
            scheme=SCHEME,
            modelopt_state={},  # the quantized network's, taken at each save
            fp32_state={key: value.detach().cpu() for key, value in weights.items()},
            init=describe_init(init.path, init.epoch, init.metrics, network_name),
            calibration={"source": "train", "images": count, "method": "max", "seed": recipe.seed},
        )
        chosen = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(recipe.seed))[:count]
        transform = EvalTransform(recipe.data.size, recipe.data.mean, recipe.data.std).to(self.device)
        batches = [transform(data.images[chosen[start : start + 64].to(self.device)]) for start in range(0, count, 64)]
        fp32 = build_fp32_model(recipe.model, len(data.classes.pids), self.quantization).to(self.device)
        network = quantize_model(fp32, batches).to(self.device)
        console.print(
            f"[bold]qat[/] {len(quantized_layers(network))} layers fake-quantized ({SCHEME}), ranges calibrated on "
            f"{count} train images; from '{init.path}' ({network_name})"
        )
        return network

    def _build_optimization(self, data: _TrainData) -> None:
        recipe, context = self.recipe, self.context
        model = self.networks[recipe.student]
        self.objective = TrainingObjective(recipe, model.feature_dim, self.teacher)
        self.projection = self.objective.projection.to(self.device) if self.objective.projection is not None else None
        self.trainable: list[nn.Module] = [*self.networks.values(), *([self.projection] if self.projection else [])]
        self.frozen = (
            [module for network in self.networks.values() for module in _frozen_modules(network, recipe.solver.freeze.modules)]
            if recipe.solver.freeze.iters
            else []
        )
        self.optimizer = build_optimizer(self.trainable, recipe.solver)
        self.sampler = PKSampler(
            data.targets.tolist(),
            recipe.data.sampler.p,
            recipe.data.sampler.k,
            seed=recipe.seed,
            rank=context.rank,
            world_size=context.world_size,
        )
        self.iters_per_epoch = recipe.solver.iters_per_epoch or len(self.sampler)
        self.scheduler = build_scheduler(self.optimizer, recipe.solver, self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.augment = BatchAugment(recipe.augment, recipe.data.size, recipe.data.mean, recipe.data.std).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(recipe.seed * 1_000_003 + self.context.rank)

    def _restore(self) -> tuple[int, int, dict[str, Any] | None]:
        """The resumed run's weights and training state; the epoch and iteration to go on from, and its best."""
        if self.resumed is None:
            return 0, 0, None
        if self.recipe.qat is None:
            for name, network in self.networks.items():
                load_model_state(network, self.resumed, name)
        state = self.resumed.training_state
        if self.projection is not None:
            self.projection.load_state_dict(state["projection"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["samplers"][self.context.rank])
        rng = state["rng"][self.context.rank]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["augment"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        return self.resumed.epoch, self.resumed.iteration, state.get("best")

    def _trained_modules(self) -> dict[str, nn.Module]:
        if not self.context.enabled:
            return dict(self.networks)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return {name: DistributedDataParallel(network, device_ids=device_ids) for name, network in self.networks.items()}

    # --- one epoch ----------------------------------------------------------------------------------------------

    def _epoch_plan(self) -> torch.Tensor:
        """The epoch's batches as indices, copied to the device once; the sampler's state is then the epoch's end."""
        plan = torch.tensor([next(self.batches) for _ in range(self.iters_per_epoch)], dtype=torch.long)
        return plan.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else plan

    def _step(
        self, trained: dict[str, nn.Module], data: _TrainData, batch: torch.Tensor, iteration: int
    ) -> dict[str, torch.Tensor]:
        """One optimizer step on ``batch``; the detached losses to log."""
        recipe = self.recipe
        in_freeze = iteration < recipe.solver.freeze.iters
        for module in self.frozen:
            module.train(not in_freeze)
        inputs = self.augment(data.images[batch], self.generator)
        if self.device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        batch_targets = data.targets[batch]
        with self._autocast():
            outputs = {name: network(inputs, batch_targets) for name, network in trained.items()}
            taught = teacher_outputs(self.teacher, inputs) if self.teacher is not None else None
        totals, parts = self.objective(
            {name: _float_outputs(out) for name, out in outputs.items()}, batch_targets, taught
        )
        total = torch.stack(list(totals.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if in_freeze:
            for module in self.frozen:
                for parameter in module.parameters():
                    parameter.grad = None
        if recipe.solver.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            for module in self.trainable:
                torch.nn.utils.clip_grad_norm_(module.parameters(), recipe.solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if recipe.qat is not None:
            sync_weight_ranges(self.networks[recipe.student])
        return {"loss": total.detach(), **parts}

    def _log_window(
        self, window: _Window, epoch: int, iteration: int, batch_size: int, metrics_file: TextIO | None,
        writer: _TensorBoard,
    ) -> str:
        """The window's mean losses logged (the one host synchronisation of a window); the progress bar's text."""
        means = torch.stack(list(window.sums.values())).div(window.iterations).tolist()
        losses = dict(zip(window.sums, means, strict=True))
        elapsed = time.perf_counter() - window.started
        logged = {
            "iteration": iteration,
            "epoch": epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{name if name == "loss" else f"loss_{name}": value for name, value in losses.items()},
            "images_per_s": window.iterations * batch_size * self.context.world_size / max(elapsed, 1e-9),
        }
        if not math.isfinite(losses["loss"]):
            raise EdgeReIDError(
                f"the loss became {losses['loss']} by iteration {iteration} (epoch {epoch + 1}); "
                "lower solver.lr, add solver.warmup or solver.clip_grad_norm, or set solver.amp: none"
            )
        _log(metrics_file, writer, "train", logged)
        return f"epoch {epoch + 1} loss {losses['loss']:.3f} {logged['images_per_s']:.0f} img/s"

    def _print_scores(self, console: Console, epoch: int, evaluated: dict[str, Any]) -> None:
        for name in self.networks:
            suffix = "" if name == self.recipe.student else f"/{name}"
            label = f" {name}" if len(self.networks) > 1 else ""
            console.print(
                f"epoch {epoch + 1}{label}: mAP {evaluated['mAP' + suffix]:.2%}  "
                f"rank-1 {evaluated['rank1' + suffix]:.2%}  mINP {evaluated['mINP' + suffix]:.2%}"
            )

    def _autocast(self) -> AbstractContextManager[Any]:
        if not self.use_amp:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    # --- evaluation and checkpoints ------------------------------------------------------------------------------

    def _quantization_state(self) -> QuantizationState | None:
        if self.quantization is None:
            return None
        return dataclasses.replace(self.quantization, modelopt_state=modelopt_state(self.networks[self.recipe.student]))

    def _eval_data(self, dataset: ReIDDataset) -> tuple[DecodedImages, DecodedImages] | None:
        if not dataset.query or not dataset.gallery:
            return None
        return decode_split(dataset.query, self.recipe.data, "query"), decode_split(
            dataset.gallery, self.recipe.data, "gallery"
        )

    def _evaluate(self, eval_data: tuple[DecodedImages, DecodedImages]) -> dict[str, Any]:
        """Every network's scores: the student's as ``mAP``, ``rank1``…, a peer's as ``mAP/NAME``…"""
        data = self.recipe.data
        transform = EvalTransform(data.size, data.mean, data.std)
        query, gallery = eval_data
        scores: dict[str, Any] = {}
        for name, network in self.networks.items():
            flip = self.recipe.train.flip_test
            with self._autocast():
                query_features = embed_images(network, query.images, transform, self.device, flip=flip)
                gallery_features = embed_images(network, gallery.images, transform, self.device, flip=flip)
            result = evaluate_features(query_features, gallery_features, query.records, gallery.records)
            summary = result.to_dict()
            summary.pop("cmc")
            suffix = "" if name == self.recipe.student else f"/{name}"
            scores.update({f"{key}{suffix}": value for key, value in summary.items()})
        return scores

    def _save(
        self, epoch: int, iteration: int, best: dict[str, Any] | None, evaluated: dict[str, Any] | None, improved: bool
    ) -> None:
        context = self.context
        rng = {
            "torch": torch.get_rng_state(),
            "augment": self.generator.get_state().cpu(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        samplers = context.gather(self.sampler.state_dict())
        rngs = context.gather(rng)
        if context.is_main:
            # Written aside, copied, then renamed to last.pt: a kill before the rename leaves last.pt at the
            # previous epoch, whose resume writes this epoch's copies again, identically. (Published first, a last.pt
            # killed before its copies would be resumed after them, and they would never be made.)
            pending = self.run_dir / PENDING_CHECKPOINT
            save_checkpoint(
                pending,
                recipe=self.recipe,
                model_state=self.networks[self.recipe.student].state_dict(),
                peer_states={
                    name: network.state_dict() for name, network in self.networks.items() if name != self.recipe.student
                },
                class_pids=self.classes.pids,
                epoch=epoch,
                iteration=iteration,
                metrics=evaluated or {},
                training_state={
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "samplers": samplers,
                    "rng": rngs,
                    "best": best,
                    "projection": self.projection.state_dict() if self.projection is not None else None,
                },
                quantization=self._quantization_state(),
            )
            period = self.recipe.train.checkpoint_period
            if period is not None and epoch % period == 0:
                atomic_copy(pending, self.run_dir / f"epoch_{epoch:04d}.pt")
            if improved:
                atomic_copy(pending, self.run_dir / "best.pt")
            os.replace(pending, self.run_dir / LAST_CHECKPOINT)
        context.barrier()


def _remove(path: Path) -> list[Path]:
    if path.exists():
        path.unlink()
        return [path]
    return []


def _endless(sampler: PKSampler) -> Iterator[list[int]]:
    while True:
        yield from sampler


def _float_outputs(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Losses in float32 whatever the autocast precision of the forward pass.
    return {key: value.float() for key, value in outputs.items()}


def _frozen_modules(model: ReIDModel, names: list[str]) -> list[nn.Module]:
    children = dict(model.named_children())
    unknown = [name for name in names if name not in children]
    if unknown:
        raise ConfigError(
            f"solver.freeze.modules names {unknown}, which the model does not have; expected some of "
            f"{', '.join(children)}"
        )
    return [children[name] for name in names]


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed}/{task.total} it"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled,
    )


class _TensorBoard:
    """TensorBoard scalars when asked for and installed; nothing otherwise."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.writer: Any = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def add(self, group: str, values: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = values["iteration"]
        for key, value in values.items():
            if key not in ("iteration", "epoch") and isinstance(value, int | float):
                self.writer.add_scalar(f"{group}/{key}", value, step)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        if self.writer is not None:
            self.writer.close()


def _open_metrics(run_dir: Path, enabled: bool, resumed_at: int) -> AbstractContextManager[TextIO | None]:
    """The metrics log, opened for appending; entries an interrupted run logged after its last checkpoint go,
    so a resumed run's log reads like an uninterrupted one's."""
    if not enabled:
        return nullcontext()
    path = run_dir / METRICS_FILE
    if path.exists():
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if _is_complete_entry(line) and json.loads(line)["iteration"] <= resumed_at
        ]
        atomic_write_text(path, "".join(kept))
    return path.open("a", encoding="utf-8")


def _is_complete_entry(line: str) -> bool:
    # A process killed mid-write leaves a truncated last line.
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _log(metrics_file: TextIO | None, writer: _TensorBoard, kind: str, values: dict[str, Any]) -> None:
    if metrics_file is not None:
        metrics_file.write(json.dumps({"kind": kind, **values}) + "\n")
        metrics_file.flush()
    writer.add(kind, values)
