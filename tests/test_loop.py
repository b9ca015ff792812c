"""The training loop and what it is built from: lr schedule, optimizers, RNG and resume state,
the data order, the non-finite stop, checkpoints, BatchNorm freezing and the method registry."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from wsss.config import SCHEMA_PATH, validate_config
from wsss.errors import ConfigError, DataError
from wsss.io.checkpoint import load_model, load_state, save_model
from wsss.train.data import epoch_loader
from wsss.train.loop import (
    LoopSettings,
    NonFiniteError,
    Progress,
    ResumableRun,
    StepContext,
    Task,
    train,
)
from wsss.train.optim import build_optimizer, param_group, scheduled_lr, set_lr
from wsss.train.rng import seed_everything
from wsss.train.utils import freeze_batchnorm

CPU = torch.device("cpu")


# ---------------------------------------------------------------- schedule and optimizers


def test_poly_schedule_and_warmup_by_hand():
    # poly: base * (1 - step / total) ** 0.9; 0.5 ** 0.9 = 0.535887, 0.6 ** 0.9 = 0.631446
    assert scheduled_lr(0.1, 0, 10) == 0.1
    assert scheduled_lr(0.1, 5, 10) == pytest.approx(0.0535887, abs=1e-7)
    assert scheduled_lr(0.1, 10, 10) == 0.0 and scheduled_lr(0.1, 12, 10) == 0.0
    # linear warm-up over 4 steps multiplies by (step + 1) / 4: 0.9 ** 0.9 = 0.9095326
    assert scheduled_lr(0.1, 0, 10, warmup_steps=4) == pytest.approx(0.025)
    assert scheduled_lr(0.1, 1, 10, warmup_steps=4) == pytest.approx(0.1 * 0.9095326 * 0.5,
                                                                     abs=1e-8)
    assert scheduled_lr(0.1, 3, 10, warmup_steps=4) == scheduled_lr(0.1, 3, 10)
    assert scheduled_lr(0.1, 4, 10, warmup_steps=4) == pytest.approx(0.0631446, abs=1e-7)


def test_set_lr_scales_every_group_from_its_base_lr():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt1 = build_optimizer([param_group(a.parameters(), 0.1, "backbone"),
                            param_group(b.parameters(), 1.0, "head")], "sgd", 1e-4, 0.9)
    opt2 = build_optimizer([param_group(nn.Linear(1, 1).parameters(), 0.01, "x")], "adamw",
                           0.01, 0.9)
    assert isinstance(opt1, torch.optim.SGD) and opt1.defaults["momentum"] == 0.9
    assert isinstance(opt2, torch.optim.AdamW) and opt2.defaults["weight_decay"] == 0.01
    set_lr([opt1, opt2], 5, 10)
    factor = 0.5 ** 0.9
    assert [g["lr"] for g in opt1.param_groups] == pytest.approx([0.1 * factor, factor])
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01 * factor)
    assert [g["base_lr"] for g in opt1.param_groups] == [0.1, 1.0]
    with pytest.raises(ValueError, match="base_lr"):
        build_optimizer([{"params": list(a.parameters()), "lr": 0.1}], "sgd", 0.0, 0.9)


def test_freeze_batchnorm_fixes_statistics_and_optionally_the_affine():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    net.train()
    assert freeze_batchnorm(net) == 2
    assert not net[1].training and not net[2][0].training and net[0].training
    assert all(p.requires_grad for p in net.parameters())
    freeze_batchnorm(net, affine=False)
    assert [p.requires_grad for p in net.parameters()] == [True, True] + [False] * 4


# ---------------------------------------------------------------- resume state and RNG


def test_resumable_run_restores_objects_scaler_rngs_and_progress(tmp_path):
    torch.manual_seed(1)
    layer = nn.Linear(2, 2)
    # an enabled GradScaler whose scale was halved by one overflowing step
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler.scale(layer(torch.full((1, 2), math.inf)).sum()).backward()  # inf gradients
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 512.0
    path = tmp_path / "_state" / "last.pt"
    run = ResumableRun(path, "abc", {"m": layer, "s": scaler})
    assert run.restore() == Progress()
    progress = Progress(epoch=1, step=3, global_step=7, rows=[{"epoch": 1}], sums={"loss": 2.0},
                        tallies={"n": 4.0}, seconds=1.5)
    seed_everything(5)
    run.save(progress)
    after = torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)]
    fresh, fresh_scaler = nn.Linear(2, 2), torch.amp.GradScaler("cpu", init_scale=8.0)
    again = ResumableRun(path, "abc", {"m": fresh, "s": fresh_scaler})
    assert again.restore() == progress
    assert torch.equal(fresh.weight, layer.weight) and fresh_scaler.get_scale() == 512.0
    assert torch.equal(torch.rand(3), after[0]) and np.array_equal(np.random.rand(3), after[1])
    assert [random.random() for _ in range(3)] == after[2]
    # a scaler disabled on the CPU resumes a state saved with it enabled (and the reverse)
    ResumableRun(path, "abc", {"m": fresh, "s": torch.amp.GradScaler("cpu", enabled=False)}
                 ).restore()
    other = ResumableRun(path, "changed", {"m": fresh})
    assert other.restore() == Progress()  # other settings: start over
    path.write_bytes(b"garbage")
    assert load_state(path, "abc") is None  # unreadable: start over, with a warning


# ---------------------------------------------------------------- the data order


class _Items(Dataset):
    """Item i of epoch e: (i, a draw of the item's own RNG, a draw of NumPy's global RNG)."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        own = np.random.default_rng([7, self.epoch, i]).random()
        return torch.tensor([float(i), own, np.random.rand()], dtype=torch.float64)


def test_epoch_loader_resumes_mid_epoch_and_ignores_num_workers():
    ds = _Items(10)
    full = [b for b in epoch_loader(ds, 3, seed=1, epoch=2, start_step=0, num_workers=0)]
    assert len(full) == 3 and ds.epoch == 2  # drop_last: 3 full batches of 10 items
    order = torch.cat(full)[:, 0].tolist()
    assert order != sorted(order) and len(set(order)) == 9  # shuffled, no repeats
    tail = [b for b in epoch_loader(ds, 3, seed=1, epoch=2, start_step=1, num_workers=0)]
    # (column 2 draws from the main process's global RNG: only the items and their own draws)
    assert all(torch.equal(a[:, :2], b[:, :2]) for a, b in zip(full[1:], tail, strict=True))
    other_epoch = [b for b in epoch_loader(ds, 3, seed=1, epoch=3, start_step=0, num_workers=0)]
    assert not torch.equal(full[0][:, 0], other_epoch[0][:, 0])
    workers = [b for b in epoch_loader(ds, 3, seed=1, epoch=2, start_step=0, num_workers=2)]
    assert all(torch.equal(a[:, :2], b[:, :2]) for a, b in zip(full, workers, strict=True))
    again = [b for b in epoch_loader(ds, 3, seed=1, epoch=2, start_step=0, num_workers=2)]
    # worker processes seed NumPy's global RNG from the loader's generator: reproducible
    assert all(torch.equal(a, b) for a, b in zip(workers, again, strict=True))


# ---------------------------------------------------------------- the loop on a toy task


class _Toy(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(12, 4, generator=g), torch.randn(12, 1, generator=g)
        self.epoch = 0

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _toy_task(ds: _Toy, fail_at: int | None = None, interrupt_at: int | None = None,
              lr: float = 0.1) -> tuple[Task, nn.Module]:
    """A linear regression with dropout (global torch RNG), NumPy and Python noise (their
    global RNGs) in the loss; ``fail_at``: global step whose ``aux`` term is NaN;
    ``interrupt_at``: global step that raises KeyboardInterrupt (a kill)."""
    seed_everything(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 1))
    opt = build_optimizer([param_group(model.parameters(), lr, "all")], "sgd", 0.0, 0.9)
    calls = []

    def step(batch: Any, ctx: StepContext) -> tuple[dict, dict[str, float]]:
        calls.append(1)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        x, y = batch
        noise = float(np.random.rand()) + random.random()
        loss = ((model(x) - y) ** 2).mean() * (1 + 0.01 * noise)
        aux = torch.tensor(math.nan if len(calls) == fail_at else 1.0)
        terms = {"loss": loss, "aux": aux}
        if ctx.epoch == 1:
            terms["late"] = torch.tensor(2.0 * (ctx.step + 1))
        return terms, {"items": float(len(x))}

    def end_epoch(epoch: int, tallies: Mapping[str, float]) -> dict[str, Any]:
        return {"items": int(tallies["items"])}

    task = Task(stage="toy", section="toy", lr_key="toy.lr", model=model,
                optimizers={"all": opt}, steps_per_epoch=len(ds) // 3,
                loader=lambda e, s: epoch_loader(ds, 3, 0, e, s, 0), step=step,
                terms=("loss", "aux", "late"), end_epoch=end_epoch, train_mode=model.train)
    return task, model


SETTINGS = LoopSettings(epochs=2, amp=True, save_every_steps=1)


def test_loop_rows_and_a_killed_run_resuming_to_the_same_weights(tmp_path):
    task, straight = _toy_task(_Toy())
    progress = train(task, SETTINGS, tmp_path / "a" / "last.pt", "fp", CPU)
    rows = progress.rows
    assert [list(r) for r in rows] == [["epoch", "steps", "lr", "loss", "aux", "late", "items",
                                        "seconds"]] * 2
    assert [(r["epoch"], r["steps"], r["items"], r["aux"]) for r in rows] == \
        [(1, 4, 12, 1.0), (2, 4, 12, 1.0)]
    assert math.isnan(rows[0]["late"]) and rows[1]["late"] == (2 + 4 + 6 + 8) / 4
    assert rows[1]["lr"] == pytest.approx(0.1 * (1 / 8) ** 0.9)  # the last of 8 steps

    task, _ = _toy_task(_Toy(), interrupt_at=6)  # killed in step 2 of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(task, SETTINGS, tmp_path / "b" / "last.pt", "fp", CPU)
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["progress"]
    assert (saved["epoch"], saved["step"]) == (1, 1)
    task, resumed = _toy_task(_Toy())  # fresh objects and RNGs, as a new process has
    again = train(task, SETTINGS, tmp_path / "b" / "last.pt", "fp", CPU)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())
    for a, b in zip(rows, again.rows, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in b.items() if k != "seconds"}, nan_ok=True, rel=0, abs=0)


class _Counter:
    """A resumable object besides the weights (as CoSA's threshold queue)."""

    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.n = state["n"]


def test_after_step_hook_and_state_objects(tmp_path):
    """``after_step`` runs once per step after the optimizer stepped; ``state`` objects travel
    with the resume state; a section's ``lr_warmup_steps`` reaches the schedule."""
    task, model = _toy_task(_Toy())
    counter, seen = _Counter(), []

    def after() -> None:
        counter.n += 1
        seen.append(model[1].weight.detach().clone())

    task.after_step, task.state = after, {"counter": counter}
    train(task, SETTINGS, tmp_path / "last.pt", "fp", CPU)
    assert counter.n == 8 and torch.equal(seen[-1], model[1].weight)  # after the last step
    assert not torch.equal(seen[0], seen[1])
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["objects"]["state_counter"] == {"n": 8}
    task, _ = _toy_task(_Toy())
    task.state = {"counter": (fresh := _Counter())}
    train(task, SETTINGS, tmp_path / "last.pt", "fp", CPU)  # nothing left to train
    assert fresh.n == 8
    section = {"epochs": 1, "amp": True, "save_every_steps": 0}
    assert LoopSettings.from_section(section).warmup_steps == 0
    assert LoopSettings.from_section({**section, "lr_warmup_steps": 5}).warmup_steps == 5
    assert validate_config({})["classifier"]["lr_warmup_steps"] == 0


def test_non_finite_loss_stops_keeping_the_last_finite_state(tmp_path):
    task, _ = _toy_task(_Toy(), fail_at=3)
    path = tmp_path / "last.pt"
    with pytest.raises(NonFiniteError) as info:
        train(task, SETTINGS, path, "fp", CPU)
    message = str(info.value)
    assert message.startswith("toy: non-finite loss at epoch 1 step 3 (loss=")
    assert "aux=nan" in message and "\n" not in message
    assert message.endswith(f"the last finite state (epoch 1, step 2) is kept in {path}; lower "
                            "toy.lr or set toy.amp: false")
    state = torch.load(path, weights_only=True)
    assert (state["progress"]["epoch"], state["progress"]["step"]) == (0, 2)

    task, _ = _toy_task(_Toy(), fail_at=2)
    no_saves = LoopSettings(epochs=2, amp=True, save_every_steps=0)
    with pytest.raises(NonFiniteError, match=r"epoch 1 step 2 .*no resume state was saved "
                                             r"before it \(a rerun starts over\)"):
        train(task, no_saves, tmp_path / "none.pt", "fp", CPU)
    assert not (tmp_path / "none.pt").exists()


def test_non_finite_weights_are_never_saved(tmp_path):
    ds = _Toy()
    model = nn.Linear(4, 1)
    opt = build_optimizer([param_group(model.parameters(), 1e30, "all")], "sgd", 0.0, 0.0)

    def step(batch: Any, ctx: StepContext) -> tuple[dict, dict[str, float]]:
        # a finite loss whose gradient 1e10 times lr 1e30 overflows the weight to -inf
        return {"loss": model.weight.sum() * 1e10 + model.bias.sum()}, {}

    task = Task(stage="toy", section="toy", lr_key="toy.lr", model=model, optimizers={"": opt},
                steps_per_epoch=4, loader=lambda e, s: epoch_loader(ds, 3, 0, e, s, 0),
                step=step, terms=("loss",), end_epoch=lambda e, t: {}, train_mode=model.train)
    with pytest.raises(NonFiniteError, match=r"^toy: non-finite weights after epoch 1, step 1 "
                                             r"\(1 tensor\(s\), e\.g\. weight; that step's "
                                             r"loss terms: loss=.*no resume state was saved"):
        train(task, SETTINGS, tmp_path / "last.pt", "fp", CPU)
    assert not (tmp_path / "last.pt").exists()


# ---------------------------------------------------------------- model files


def test_model_files_record_their_kind_and_loaders_check_it(tmp_path):
    net = nn.Linear(2, 3)
    path = tmp_path / "irn" / "model.pt"
    save_model(path, net.state_dict(), {"kind": "irn", "method": "edge", "classes": ["bg"],
                                        "config_hash": "0" * 16, "extra": [1]})
    state, meta = load_model(path, "irn")
    assert torch.equal(state["weight"], net.weight) and meta["extra"] == [1]
    with pytest.raises(DataError, match=rf"^{path} holds an irn \(edge\), expected a "
                                        r"classifier$"):
        load_model(path, "classifier")
    torch.save({"state_dict": {}, "meta": {"classes": []}}, path)
    with pytest.raises(DataError, match=r"records no kind of network .*expected a segmenter"):
        load_model(path, "segmenter")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=rf"^{path}: not a readable model file"):
        load_model(path, "irn")
    with pytest.raises(DataError, match="model file not found"):
        load_model(tmp_path / "nope.pt", "irn")
    with pytest.raises(ValueError, match="lacks"):
        save_model(path, {}, {"kind": "irn"})


def test_loaders_name_a_model_file_of_another_stage(tmp_path):
    from wsss.models.classifier import load_classifier
    from wsss.models.irn import load_irn
    from wsss.models.segmentation import load_segmenter

    path = tmp_path / "model.pt"
    save_model(path, {}, {"kind": "segmenter", "method": "deeplabv3plus", "classes": ["bg"],
                          "config_hash": "x"})
    with pytest.raises(DataError, match=r"holds a segmenter \(deeplabv3plus\), expected a "
                                        r"classifier"):
        load_classifier(path, CPU)
    with pytest.raises(DataError, match=r"expected an irn"):
        load_irn(path, CPU)
    save_model(path, {}, {"kind": "classifier", "method": "cobra", "classes": ["bg"],
                          "config_hash": "x"})
    with pytest.raises(DataError, match=r"holds a classifier \(cobra\), expected a segmenter"):
        load_segmenter(path)


# ---------------------------------------------------------------- the method registry


def test_schema_methods_are_the_registered_ones():
    from wsss.checks import IMPLEMENTED_METHODS
    from wsss.methods import METHODS
    from wsss.models.classifier import build_classifier

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    enum = schema["properties"]["classifier"]["properties"]["method"]["enum"]
    assert enum == list(METHODS.names()) == list(IMPLEMENTED_METHODS) == ["cam", "cobra", "cosa"]
    with pytest.raises(ConfigError, match=r"config key classifier\.method: 'mct' is not one of"):
        validate_config({"classifier": {"method": "mct"}})
    with pytest.raises(ConfigError, match=r"config key classifier\.method: unknown classifier "
                                          r"method 'mct' \(known: cam, cobra, cosa\)"):
        build_classifier({"method": "mct"}, 2)


def test_irn_schema_has_the_loop_keys():
    irn = validate_config({})["irn"]
    assert irn["amp"] is True and irn["save_every_steps"] == 0
    assert Path(SCHEMA_PATH).exists()
