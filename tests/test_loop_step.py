"""trainers.loop.TrainStep (the one step the loop and the benchmarks run) and `improved` (the registry's
direction decides early stopping and the best checkpoint)."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainers.loop import TrainStep, improved


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
