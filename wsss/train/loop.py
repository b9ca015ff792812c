"""One training loop for every trained stage (classifier, IRN, segmenter), resumable.

A stage describes its training as a :class:`Task` (its model and optimizers, a loader factory,
a step function, its end-of-epoch metrics, its train-mode hook and, optionally, an
``after_step`` hook and more resumable objects) and calls :func:`train`; the loop owns
everything else:

* the learning rate of every param group at every step (:func:`wsss.train.optim.set_lr`:
  poly 0.9 on ``base_lr``, optional linear warm-up over the section's ``lr_warmup_steps``);
* after every optimizer step (all of the task's optimizers stepped, the GradScaler updated),
  the task's ``after_step()`` hook when it has one (CoSA's moving-average update of its
  assignment network), before the step is counted and before any save;
* mixed precision: the step's forward runs under ``ctx.autocast()`` and the loss is scaled by
  a GradScaler, both enabled by the stage's ``<section>.amp`` on CUDA (no-ops on the CPU);
* the non-finite check of every loss term at every step, and of the weights before every save:
  the first failure stops the stage with :class:`NonFiniteError`, naming the stage, the epoch,
  the step and the terms; nothing is saved after it, so the resume state on disk is the last
  finite one;
* resume state (:class:`ResumableRun`, ``<model dir>/_state/last.pt``) every
  ``save_every_steps`` steps and at every epoch end, restored on a rerun with the same
  fingerprint (:func:`fingerprint`): model, optimizers, GradScaler, the task's ``state``
  objects, the global RNGs (torch CPU and CUDA, NumPy, Python) and the position, so a killed
  run resumes to the weights of an uninterrupted one;
* tqdm progress and one metrics row per epoch;
* data-parallel training under torchrun (:mod:`wsss.train.distributed`): the gradients are
  averaged over the processes after each backward, the loss terms averaged and the tallies
  summed before the checks and the metrics, rank 0's weights given to every process after a
  restore, and only rank 0 saves, evaluates at the epoch end and writes.

A metrics row holds ``epoch``, ``steps``, ``lr`` (the first param group of the first optimizer
at the epoch's last step), the mean of each of the task's ``terms`` over the epoch's steps (NaN
for a term no step computed), the task's own columns (``end_epoch``: learning counts, held-out
scores, ...) and ``seconds``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from wsss.errors import WsssError
from wsss.hashing import config_hash, without_execution
from wsss.io.checkpoint import load_state, save_state
from wsss.train.distributed import (
    all_mean,
    all_sum,
    average_gradients,
    broadcast_weights,
    current_world,
)
from wsss.train.optim import set_lr
from wsss.train.rng import rng_state, set_rng_state
from wsss.train.utils import autocast, run_signature

log = logging.getLogger(__name__)


class NonFiniteError(WsssError):
    """A loss term or the weights became NaN or infinite; the message names the stage, the
    step, the terms and where the last finite state is kept."""


class Stateful(Protocol):
    """Anything with ``state_dict`` / ``load_state_dict`` (modules, optimizers, grad scalers)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclasses.dataclass
class Progress:
    """Where a training loop stands: ``step`` counts the steps done in epoch ``epoch`` (both
    0-based counts), ``sums`` the loss-term sums and ``tallies`` the summed per-batch tallies
    of those steps, ``seconds`` the time they took before the last save."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    tallies: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Record an epoch's metrics row and move to the start of the next epoch."""
        self.rows.append(row)
        self.epoch, self.step, self.sums, self.tallies, self.seconds = \
            self.epoch + 1, 0, {}, {}, 0.0


class ResumableRun:
    """Saves and restores the stateful objects of one training run with its progress and the
    global RNG states, under a settings fingerprint."""

    def __init__(self, path: str | Path, fingerprint: str,
                 objects: Mapping[str, Stateful]) -> None:
        self.path, self.fingerprint, self.objects = Path(path), fingerprint, dict(objects)

    def restore(self) -> Progress:
        """Load a matching saved state into the objects and the RNGs and return its progress
        (a fresh Progress when there is none)."""
        state = load_state(self.path, self.fingerprint)
        if state is None:
            return Progress()
        for name, obj in self.objects.items():
            saved = state["objects"][name]
            if saved:  # a disabled GradScaler saves {}: the object then stays as built
                obj.load_state_dict(saved)
        set_rng_state(state["rng"])
        progress = Progress(**state["progress"])
        log.info("resuming from %s: %d epoch(s) done, %d step(s) into the next", self.path,
                 progress.epoch, progress.step)
        return progress

    def save(self, progress: Progress) -> None:
        """Write the objects, the progress and the RNG states atomically."""
        save_state(self.path, {
            "fingerprint": self.fingerprint,
            "objects": {name: obj.state_dict() for name, obj in self.objects.items()},
            "progress": dataclasses.asdict(progress), "rng": rng_state()})


def fingerprint(stage: str, section: Mapping[str, Any], classes: Sequence[str], seed: int,
                data: Any, inputs: dict[str, str]) -> str:
    """The settings a resume state is valid for: the stage's config ``section`` without its
    execution-only keys (:func:`wsss.hashing.without_execution`), the classes, the seed, the
    ``data`` identity (image ids, store meta) and :func:`wsss.train.utils.run_signature` (the
    code the stage reaches and its input files)."""
    return config_hash({"cfg": without_execution(dict(section)), "classes": list(classes),
                        "seed": seed, "data": data, "run": run_signature(stage, inputs)})


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a step function gets besides its batch: the 0-based ``epoch`` and ``step`` (in the
    epoch), the device and ``autocast()``, the mixed-precision context for its forward."""

    epoch: int
    step: int
    device: torch.device
    amp: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision (float16) on CUDA when the stage's ``amp`` is on; else a no-op."""
        return autocast(self.device, self.amp)


StepResult = tuple[dict[str, torch.Tensor], Mapping[str, float]]


@dataclasses.dataclass
class Task:
    """A trained stage's part of the loop.

    ``stage``, ``section``, ``lr_key``: the stage name, its config section and the config key(s)
    of its learning rate, for messages. ``model``: the network whose weights are saved and
    checked. ``optimizers``: by name, their param groups carrying ``base_lr``.
    ``loader(epoch, start_step)``: the batches of 0-based ``epoch`` from ``start_step`` on
    (:func:`wsss.train.data.epoch_loader`), ``steps_per_epoch`` of them in a full epoch.
    ``step(batch, ctx)``: forward (under ``ctx.autocast()``) and loss; returns the loss terms
    (scalar tensors, ``loss`` minimised) and the batch's tallies (learning counts, summed over
    the epoch into ``Progress.tallies``). ``terms``: the loss terms written to the metrics,
    in order. ``end_epoch(epoch, tallies)``: the stage's own metrics columns (it also warns
    about what the epoch lacked). ``train_mode()``: puts the model in training mode at each
    epoch start (freezing BatchNorm where the stage does). ``after_step()`` (optional): called
    after every optimizer step, once all optimizers have stepped (e.g. a moving-average copy of
    the weights). ``state`` (optional): more objects with ``state_dict`` / ``load_state_dict``
    (e.g. a threshold's queue) saved with and restored from the resume state, by name.
    """

    stage: str
    section: str
    lr_key: str
    model: nn.Module
    optimizers: Mapping[str, torch.optim.Optimizer]
    steps_per_epoch: int
    loader: Callable[[int, int], Iterable[Any]]
    step: Callable[[Any, StepContext], StepResult]
    terms: Sequence[str]
    end_epoch: Callable[[int, Mapping[str, float]], dict[str, Any]]
    train_mode: Callable[[], None]
    after_step: Callable[[], None] | None = None
    state: Mapping[str, Stateful] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The loop's settings, read once from a trained stage's config section."""

    epochs: int
    amp: bool
    save_every_steps: int
    warmup_steps: int = 0  # linear lr warm-up steps (0: pure poly)

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> LoopSettings:
        """``epochs``, ``amp``, ``save_every_steps`` and ``lr_warmup_steps`` (0 where the
        section has no such key) of a validated config section."""
        return cls(epochs=section["epochs"], amp=section["amp"],
                   save_every_steps=section["save_every_steps"],
                   warmup_steps=int(section.get("lr_warmup_steps", 0)))


def _nonfinite_tensors(module: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` that hold a NaN/inf."""
    items = [(k, v) for k, v in module.state_dict().items() if v.is_floating_point()]
    if not items:
        return []
    ok = torch.stack([v.detach().isfinite().all() for _, v in items]).tolist()
    return [k for (k, _), good in zip(items, ok, strict=True) if not good]


def _format_terms(values: Mapping[str, float]) -> str:
    """``loss=..., <other terms>=...`` (``loss`` first)."""
    ordered = sorted(values.items(), key=lambda kv: kv[0] != "loss")
    return ", ".join(f"{k}={v:.4g}" for k, v in ordered)


class _Trainer:
    """The state of one :func:`train` call."""

    def __init__(self, task: Task, settings: LoopSettings, state_path: Path, fingerprint: str,
                 device: torch.device) -> None:
        self.task, self.settings, self.device = task, settings, device
        self.world = current_world()
        # every trained parameter once (the optimizers' groups), for the gradient average
        seen: dict[int, nn.Parameter] = {}
        for opt in task.optimizers.values():
            for group in opt.param_groups:
                seen.update((id(p), p) for p in group["params"])
        self.params = list(seen.values())
        self.scaler = torch.amp.GradScaler(device.type,
                                           enabled=settings.amp and device.type == "cuda")
        objects: dict[str, Stateful] = {"model": task.model, "scaler": self.scaler}
        objects.update({f"optimizer_{name}": opt for name, opt in task.optimizers.items()})
        objects.update({f"state_{name}": obj for name, obj in task.state.items()})
        self.run = ResumableRun(state_path, fingerprint, objects)
        self.total = task.steps_per_epoch * settings.epochs
        self.saved: str | None = None  # where the last finite state stands, for messages

    def _position(self, progress: Progress) -> str:
        if progress.step:
            return f"epoch {progress.epoch + 1}, step {progress.step}"
        last = progress.rows[-1]["steps"] if progress.rows else 0
        return f"epoch {progress.epoch}, step {last}"

    def _stop(self, what: str) -> NonFiniteError:
        kept = (f"the last finite state ({self.saved}) is kept in {self.run.path}"
                if self.saved else "no resume state was saved before it (a rerun starts over)")
        return NonFiniteError(f"{self.task.stage}: {what}; {kept}; lower {self.task.lr_key} or "
                              f"set {self.task.section}.amp: false")

    def save(self, progress: Progress, last_terms: Mapping[str, float]) -> None:
        """Save the state after checking that the weights are finite."""
        bad = _nonfinite_tensors(self.task.model)
        if bad:
            raise self._stop(f"non-finite weights after {self._position(progress)} "
                             f"({len(bad)} tensor(s), e.g. {bad[0]}; that step's loss terms: "
                             f"{_format_terms(last_terms)})")
        if self.world.is_main:
            self.run.save(progress)
        self.saved = self._position(progress)

    def restore(self) -> Progress:
        progress = self.run.restore()
        broadcast_weights(self.task.model, self.world)
        if progress.epoch or progress.step:
            self.saved = self._position(progress)
        return progress

    def epoch(self, progress: Progress) -> None:
        """Train (the rest of) epoch ``progress.epoch``, saving as configured."""
        task, settings = self.task, self.settings
        epoch, steps, every = progress.epoch, task.steps_per_epoch, settings.save_every_steps
        t0 = time.perf_counter()
        task.train_mode()
        optimizers = list(task.optimizers.values())
        values: dict[str, float] = {}
        bar = tqdm(task.loader(epoch, progress.step), total=steps, initial=progress.step,
                   desc=f"{task.stage} epoch {epoch + 1}/{settings.epochs}", mininterval=5,
                   dynamic_ncols=True, disable=not self.world.is_main)
        for batch in bar:
            set_lr(optimizers, progress.global_step, self.total, settings.warmup_steps)
            ctx = StepContext(epoch, progress.step, self.device, settings.amp)
            terms, tallies = task.step(batch, ctx)
            values = all_mean(dict(zip(terms, torch.stack(
                [t.detach().float() for t in terms.values()]).tolist(), strict=True)), self.world)
            tallies = all_sum({k: float(v) for k, v in tallies.items()}, self.world)
            if not all(math.isfinite(v) for v in values.values()):
                raise self._stop(f"non-finite loss at epoch {epoch + 1} step {progress.step + 1} "
                                 f"({_format_terms(values)})")
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            self.scaler.scale(terms["loss"]).backward()
            average_gradients(self.params, self.world)
            for opt in optimizers:
                self.scaler.step(opt)
            self.scaler.update()
            if task.after_step is not None:
                task.after_step()
            progress.step += 1
            progress.global_step += 1
            for k, v in values.items():
                progress.sums[k] = progress.sums.get(k, 0.0) + v
            for k, v in tallies.items():
                progress.tallies[k] = progress.tallies.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{progress.sums['loss'] / progress.step:.3f}", refresh=False)
            if every and progress.step % every == 0 and progress.step < steps:
                progress.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save(progress, values)
        bar.close()
        done = max(progress.step, 1)
        row: dict[str, Any] = {"epoch": epoch + 1, "steps": progress.step,
                               "lr": optimizers[0].param_groups[0]["lr"]}
        row.update({t: progress.sums[t] / done if t in progress.sums else math.nan
                    for t in task.terms})
        if self.world.is_main:  # held-out scores, warnings: rank 0 alone
            row.update(task.end_epoch(epoch, progress.tallies))
        row["seconds"] = round(progress.seconds + time.perf_counter() - t0, 1)
        log.info("epoch %d: %s", epoch + 1, ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        progress.end_epoch(row)
        self.save(progress, values)


def train(task: Task, settings: LoopSettings, state_path: str | Path, fingerprint: str,
          device: torch.device) -> Progress:
    """Train ``task`` for ``settings.epochs`` epochs, resuming from ``state_path`` when it holds
    a state of the same ``fingerprint``; returns the final progress (``rows``: the metrics).

    Raises:
        NonFiniteError: at the first non-finite loss term or non-finite weights before a save.
    """
    trainer = _Trainer(task, settings, Path(state_path), fingerprint, device)
    progress = trainer.restore()
    while progress.epoch < settings.epochs:
        trainer.epoch(progress)
    return progress


def train_stage(task: Task, section: Mapping[str, Any], outputs: Mapping[str, str], key: str,
                device: torch.device, save_model: Callable[[], None]) -> Progress:
    """A trained stage's whole run: :func:`train` with its resume state in
    ``<model dir>/_state/last.pt``, then ``save_model()`` and the per-epoch ``metrics`` CSV
    (atomically). Returns the final progress."""
    import pandas as pd

    from wsss.io.atomic import atomic_path

    progress = train(task, LoopSettings.from_section(section),
                     Path(outputs["model"]).parent / "_state" / "last.pt", key, device)
    if not current_world().is_main:
        return progress
    save_model()
    with atomic_path(outputs["metrics"]) as tmp:
        pd.DataFrame(progress.rows).to_csv(tmp, index=False)
    log.info("wrote %s and %s", outputs["model"], outputs["metrics"])
    return progress
