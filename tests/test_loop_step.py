"""trainers.training.loop.TrainStep (the one step the loop and the benchmarks run) and `improved` (the
registry's
direction decides early stopping and the best checkpoint), the Trainer's stop rules, its non-finite loss
check and the LoopState a checkpoint keeps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from trainers.training.loop import (
    Diverged,
    LoopState,
    PhaseTimes,
    Trainer,
    TrainStep,
    _CancelFlag,
    _Distributed,
    improved,
)


class _MSETask:
    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return ((model(batch) - batch) ** 2).mean()


def test_train_step_is_forward_backward_clip_update():
    torch.manual_seed(0)
    model, twin = nn.Linear(3, 3), nn.Linear(3, 3)
    twin.load_state_dict(model.state_dict())
    batch = torch.randn(4, 3)
    step = TrainStep(_MSETask(), model, torch.optim.SGD(model.parameters(), lr=0.1), grad_clip=0.5)
    seen = []
    loss = step(batch, after_forward=lambda: seen.append(model.weight.grad))
    # By hand: the same loss, gradients clipped to norm 0.5, one SGD update.
    ref = ((twin(batch) - batch) ** 2).mean()
    ref.backward()
    nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.1 * p.grad
    assert seen == [None] and not loss.requires_grad and math.isclose(float(loss), float(ref), rel_tol=1e-6)
    assert torch.allclose(model.weight, twin.weight) and torch.allclose(model.bias, twin.bias)


def test_improved_follows_the_metric_registry():
    assert improved("loss", 0.1, 0.2) and not improved("loss", 0.3, 0.2)
    assert improved("psnr", 30.0, 25.0) and not improved("psnr", 20.0, 25.0)  # higher is better
    assert improved("val/psnr", 30.0, None) and not improved("psnr", math.nan, 25.0)
    assert improved("no_such_metric", 1.0, 2.0)  # unknown: lower is better, as a loss


def _trainer(**cfg_fields) -> Trainer:
    cfg = SimpleNamespace(patience=2, max_steps=None, epochs=10, log_every=4, **cfg_fields)
    state = LoopState(step=40, epoch=3, bad_epochs=1)
    return Trainer(
        cfg,  # type: ignore[arg-type]
        SimpleNamespace(monitor="psnr"),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        SimpleNamespace(runs_dir="runs"),  # type: ignore[arg-type]
        "run-1",
        _Distributed(torch.device("cpu")),
        state,
        PhaseTimes(),
        _CancelFlag(),
    )


def test_should_stop_names_early_stopping_and_max_steps():
    trainer = _trainer()
    assert trainer.should_stop() == ""  # one flat epoch of the two allowed
    trainer.state.bad_epochs = 2
    assert trainer.should_stop() == "early stopping after 3 epochs: val psnr flat for 2"
    trainer.state.bad_epochs = 0
    trainer.cfg.max_steps = 40
    assert trainer.should_stop() == "stopped at max_steps=40" and trainer.reached_max_steps()


def test_a_loss_window_names_the_first_step_that_went_non_finite():
    trainer = _trainer()
    trainer.window = [torch.tensor(0.5), torch.tensor(math.inf), torch.tensor(math.nan)]
    with pytest.raises(Diverged, match=r"loss became inf at step 39 \(epoch 4\)"):
        trainer._flush(epoch=3)  # steps 38, 39, 40: the second is the first bad one


def test_loop_state_saves_what_a_resume_needs_and_nothing_of_this_process():
    state = LoopState(step=7, epoch=2, best=0.5, bad_epochs=1, steps_here=3, loss_sum=1.0, loss_n=2)
    saved = state.saved(epoch=2)
    assert saved == {"step": 7, "epoch": 2, "best": 0.5, "bad_epochs": 1}
    fresh = LoopState()
    fresh.resume_from({**saved, "written_by": "an older version"})
    assert fresh == LoopState(step=7, epoch=2, best=0.5, bad_epochs=1)
