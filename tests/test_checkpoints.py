"""Checkpoints: safetensors/JSON round trips, exact resume, atomic symlink swaps and crash leftovers."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import safe_open
from torch import nn

from trainers.runs import checkpoints as ck
from trainers.runs.checkpoints import (
    checkpoint_path,
    is_complete,
    load_model_weights,
    load_optimizer_state,
    read_preprocessing,
    read_trainer_state,
    save_checkpoint,
)


class TinyNet(nn.Module, PyTorchModelHubMixin):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.Tanh())
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel, which keeps the real model in .module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def make(seed: int = 0, width: int = 6) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(width=width)


def make_adam(model: TinyNet, lr: float = 1e-2) -> torch.optim.Adam:
    # Two groups and amsgrad so every kind of state is exercised (step, exp_avg, exp_avg_sq, max_exp_avg_sq).
    return torch.optim.Adam(
        [{"params": model.body.parameters()}, {"params": model.head.parameters(), "lr": lr / 2}],
        lr=lr,
        betas=(0.8, 0.95),
        weight_decay=1e-3,
        amsgrad=True,
    )


def batches(n: int, offset: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1234 + offset)
    return [(torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)) for _ in range(n)]


def train(
    model: nn.Module, opt: torch.optim.Optimizer, data: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    model.train()
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_weights_trainer_state_and_preprocessing_round_trip(tmp_path: Path) -> None:
    model = make(width=5)
    train(model, make_adam(model), batches(3))
    state = {"step": 3, "epoch": 1, "best_val_loss": math.inf, "seed": np.int64(7), "history": [0.5, 0.25]}
    pre = {"log_min": -3.2, "log_max": 4.1, "looks": 1}
    folder = save_checkpoint(tmp_path, "best", model, state=state, preprocessing=pre)

    assert folder == tmp_path / "checkpoints" / "best-3"
    assert checkpoint_path(tmp_path, "best") == folder.resolve()
    assert is_complete(folder)
    assert json.loads((folder / "config.json").read_text()) == {"width": 5}
    restored = TinyNet.from_pretrained(folder)  # the Hub path: builds the model from config.json
    assert_same_state(model, restored)
    fresh = make(seed=99, width=5)
    load_model_weights(folder, fresh)  # the resume path: into an existing model
    assert_same_state(model, fresh)
    assert read_trainer_state(folder) == {
        "step": 3, "epoch": 1, "best_val_loss": math.inf, "seed": 7, "history": [0.5, 0.25],
    }  # fmt: skip
    assert read_preprocessing(folder) == pre
    plain = save_checkpoint(tmp_path, "last", model)  # no state, no optimizer, no preprocessing
    assert read_trainer_state(plain) == {} and read_preprocessing(plain) is None
    assert plain.name == "last-1"  # no step: a counter


def test_resume_continues_exactly_like_uninterrupted_training(tmp_path: Path) -> None:
    data = batches(6)
    model = make()
    opt = make_adam(model)
    train(model, opt, data[:3])
    saved_opt_state = copy.deepcopy(opt.state_dict())  # state_dict() aliases the live tensors
    folder = save_checkpoint(tmp_path, "last", model, optimizer=opt, state={"step": 3})
    train(model, opt, data[3:])  # the uninterrupted run

    resumed = make(seed=42)
    load_model_weights(folder, resumed)
    resumed_opt = make_adam(resumed, lr=0.5)  # wrong hyperparameters on purpose: the checkpoint's must win
    load_optimizer_state(folder, resumed_opt)
    loaded = resumed_opt.state_dict()
    assert loaded["param_groups"] == saved_opt_state["param_groups"]
    assert isinstance(loaded["param_groups"][0]["betas"], tuple)
    assert loaded["state"].keys() == saved_opt_state["state"].keys()
    for index, per_param in saved_opt_state["state"].items():
        assert (
            per_param.keys()
            == loaded["state"][index].keys()
            == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        )
        for key, value in per_param.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)
    train(resumed, resumed_opt, data[3:])
    assert_same_state(model, resumed)  # bitwise


def test_optimizer_with_tensor_hyperparameter_and_scalar_state(tmp_path: Path) -> None:
    model = make()
    # A tensor lr lives in param_groups, so it must go to safetensors rather than JSON.
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01), foreach=False)
    train(model, opt, batches(2))
    tensors, meta = ck.optimizer_to_files(opt)
    assert "param_groups.0.lr" in tensors and "lr" not in meta["param_groups"][0]
    folder = save_checkpoint(tmp_path, "last", model, optimizer=opt, state={"step": 2})
    other = torch.optim.Adam(make().parameters(), lr=torch.tensor(0.5), foreach=False)
    load_optimizer_state(folder, other)
    assert torch.equal(other.param_groups[0]["lr"], torch.tensor(0.01))
    # Non-tensor per-parameter state goes through optimizer.json.
    fake = {"state": {0: {"step": 5, "buf": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}

    class Fake:
        param_groups = [{"lr": 0.1, "params": [0]}]

        def state_dict(self) -> dict:
            return fake

    tensors, meta = ck.optimizer_to_files(Fake())  # type: ignore[arg-type]
    rebuilt = ck.optimizer_from_files(tensors, json.loads(json.dumps(meta)), Fake())  # type: ignore[arg-type]
    assert rebuilt["state"][0]["step"] == 5 and torch.equal(rebuilt["state"][0]["buf"], torch.ones(2))
    assert rebuilt["param_groups"] == fake["param_groups"]


def test_repeated_saves_leave_one_folder_per_kind(tmp_path: Path) -> None:
    model = make()
    opt = make_adam(model)
    for step in range(1, 6):
        train(model, opt, batches(1, offset=step))
        save_checkpoint(tmp_path, "last", model, optimizer=opt, state={"step": step})
        if step % 2:
            save_checkpoint(tmp_path, "best", model, optimizer=opt, state={"step": step})
    save_checkpoint(tmp_path, "last", model, optimizer=opt, state={"step": 5})  # same step again
    entries = sorted(os.listdir(tmp_path / "checkpoints"))
    assert entries == ["best", "best-5", "last", "last-5-1"]
    for kind, target in [("best", "best-5"), ("last", "last-5-1")]:
        link = tmp_path / "checkpoints" / kind
        assert link.is_symlink() and os.readlink(link) == target  # relative: the run folder can move
        assert read_trainer_state(checkpoint_path(tmp_path, kind))["step"] == 5
    fresh = make(seed=3)
    load_model_weights(checkpoint_path(tmp_path, "last"), fresh)
    assert_same_state(model, fresh)


def test_crash_leftovers_do_not_affect_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make()
    good = save_checkpoint(tmp_path, "last", model, state={"step": 10})
    ckpt_dir = tmp_path / "checkpoints"

    # 1) A crash mid-save: a folder with a truncated weight file and no manifest, plus a stray temp link.
    partial = ckpt_dir / "last-20"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:100])
    os.symlink("last-20", ckpt_dir / ".last.tmp-dead")
    assert not is_complete(partial)
    assert checkpoint_path(tmp_path, "last") == good.resolve()
    assert read_trainer_state(checkpoint_path(tmp_path, "last"))["step"] == 10

    # 2) A crash right at the swap: the new folder is complete but never pointed at.
    trained = make(seed=5)

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(tmp_path, "last", trained, state={"step": 30})
    monkeypatch.undo()
    assert checkpoint_path(tmp_path, "last") == good.resolve()
    loaded = make(seed=8)
    load_model_weights(checkpoint_path(tmp_path, "last"), loaded)
    assert_same_state(model, loaded)

    # 3) A save that fails while writing removes its own folder and leaves the link alone.
    def broken_save(folder: Path) -> None:
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(trained, "save_pretrained", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, "last", trained, state={"step": 40})
    monkeypatch.undo()
    assert not (ckpt_dir / "last-40").exists()

    # The next successful save cleans up every leftover of its kind and leaves "best" alone.
    best = save_checkpoint(tmp_path, "best", model, state={"step": 10})
    newest = save_checkpoint(tmp_path, "last", trained, state={"step": 50})
    assert sorted(os.listdir(ckpt_dir)) == ["best", "best-10", "last", "last-50"]
    assert checkpoint_path(tmp_path, "best") == best.resolve()
    assert checkpoint_path(tmp_path, "last") == newest.resolve()


def test_checkpoint_path_absent_broken_and_copied(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert checkpoint_path(run, "best") is None
    model = make()
    folder = save_checkpoint(run, "best", model, state={"step": 1})
    (folder / "trainer_state.json").write_text('{"step": 1, "edited": true}')  # size changes
    with pytest.raises(ValueError, match="missing or incomplete"):
        checkpoint_path(run, "best")
    shutil.rmtree(folder)
    with pytest.raises(ValueError, match="missing or incomplete"):
        checkpoint_path(run, "best")

    folder = save_checkpoint(run, "best", model, state={"step": 2})
    # Copies with and without symlinks both keep working.
    shutil.copytree(run, tmp_path / "kept", symlinks=True)
    assert (
        checkpoint_path(tmp_path / "kept", "best") == (tmp_path / "kept" / "checkpoints" / "best-2").resolve()
    )
    shutil.copytree(run, tmp_path / "deref")  # the default dereferences: "best" becomes a real folder
    copied = tmp_path / "deref" / "checkpoints"
    assert (copied / "best").is_dir() and not (copied / "best").is_symlink()
    assert checkpoint_path(tmp_path / "deref", "best") == (copied / "best").resolve()
    save_checkpoint(tmp_path / "deref", "best", model, state={"step": 3})
    assert sorted(os.listdir(copied)) == ["best", "best-3"] and (copied / "best").is_symlink()


def test_no_pickle_anywhere(tmp_path: Path) -> None:
    model = make()
    opt = make_adam(model)
    train(model, opt, batches(2))
    save_checkpoint(tmp_path, "best", model, optimizer=opt, state={"step": 2}, preprocessing={"mean": 0.5})
    files = [p for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"model.safetensors", "config.json", "optimizer.safetensors", "optimizer.json"} <= names
    assert {"trainer_state.json", "preprocessing.json", "manifest.json"} <= names
    for path in files:
        assert path.suffix not in {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"}, path
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80") and head != b"PK\x03\x04", path  # pickle / torch.save zip
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                assert len(list(handle.keys())) > 0
        elif path.suffix == ".json":
            json.loads(path.read_text())
    with safe_open(str(tmp_path / "checkpoints" / "best" / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(model.state_dict().keys())


def test_bad_arguments_raise_before_writing(tmp_path: Path) -> None:
    model = make()
    with pytest.raises(ValueError, match="checkpoint kind must be one of best, last; got 'final'"):
        save_checkpoint(tmp_path, "final", model)
    with pytest.raises(ValueError, match="model must provide save_pretrained"):
        save_checkpoint(tmp_path, "best", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="trainer state must be JSON-serialisable"):
        save_checkpoint(tmp_path, "best", model, state={"rng": object()})
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        save_checkpoint(tmp_path, "best", model, optimizer={"lr": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="preprocessing must be a dict"):
        save_checkpoint(tmp_path, "best", model, preprocessing=[1, 2])  # type: ignore[arg-type]
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(ValueError, match="checkpoint kind"):
        checkpoint_path(tmp_path, "latest")

    # A wrapped model (DDP keeps it in .module) is saved as the inner model.
    folder = save_checkpoint(tmp_path, "best", Wrapper(model), state={"step": 0})
    assert_same_state(model, TinyNet.from_pretrained(folder))


def test_load_errors_are_clear(tmp_path: Path) -> None:
    model = make()
    folder = save_checkpoint(tmp_path, "best", model, state={"step": 1})
    with pytest.raises(FileNotFoundError, match="has no optimizer state"):
        load_optimizer_state(folder, make_adam(model))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_trainer_state(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_weights(tmp_path / "nope", model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit TinyNet"):
        load_model_weights(folder, make(width=9))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    opt = make_adam(model)
    train(model, opt, batches(1))
    with_opt = save_checkpoint(tmp_path, "last", model, optimizer=opt, state={"step": 2})
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="checkpoint holds Adam state, cannot load it into SGD"):
        load_optimizer_state(with_opt, sgd)
    one_group = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="2 optimizer param groups, the optimizer has 1"):
        load_optimizer_state(with_opt, one_group)
    (with_opt / "trainer_state.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_trainer_state(with_opt)
