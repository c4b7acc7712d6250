"""The one validation layer (trainers.settings): the same checks and messages for the CLI, the job manager,
the Train tab and the API."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.views.train import parse_settings
from trainers.cli import main
from trainers.settings import (
    RunSettings,
    check_config,
    make_config,
    parse_run_settings,
    real,
    validate_run,
    whole,
)


def test_whole_and_real_accept_what_the_widgets_hand_over():
    assert whole("epochs", "12") == 12 and whole("epochs", 12.0) == 12 and whole("seed", " 0 ") == 0
    assert real("lr", " 3e-4 ") == pytest.approx(3e-4) and real("kl_weight", 0) == 0.0
    for bad in (0, 1.5, "two", True, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="epochs must be a whole number >= 1"):
            whole("epochs", bad)
    for bad in (0, -1e-3, "fast", "nan", float("inf"), False):
        with pytest.raises(ValueError, match="learning rate must be a positive number such as 3e-4"):
            real("lr", bad)
    with pytest.raises(ValueError, match="grad_clip must be a finite number >= 0"):
        real("grad_clip", -0.1)


def test_validate_run_applies_the_preset_then_the_checked_settings():
    cfg = validate_run("fragment-dae", "smoke", epochs="3", lr=" 2e-3 ", data=" fragments:max_files=5 ")
    preset = make_config("fragment-dae", "smoke")
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (3, 2e-3, preset.batch_size)
    assert cfg.data == "fragments:python,max_files=5"  # canonical form
    assert RunSettings(variant="fragment-dae", preset="smoke").overrides() == {"device": "auto"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"variant": "nope"}, "unknown variant 'nope'"),
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"colour": "red"}, "unknown run setting 'colour'"),
        ({"batch_size": 0}, "batch size must be a whole number >= 1, got 0"),
        ({"max_steps": 0}, "max_steps must be a whole number >= 1"),
        ({"device": "tpu"}, "device must be 'auto', 'cpu' or 'cuda'"),
        ({"precision": "fp16"}, "unknown precision 'fp16'"),
        ({"compile": "yes"}, "compile must be true or false"),
        ({"model": [1]}, "model overrides must be a dict"),
        ({"data": "sar:synthetic"}, "is sar data, but the variant trains on fragments data"),
        ({"epochs": 0, "lr": -1}, "epochs must be a whole number >= 1, got 0; learning rate must be"),
    ],
)
def test_bad_settings_name_the_problem(settings: dict, message: str):
    settings = {"variant": "fragment-dae", "preset": "smoke", **settings}
    with pytest.raises(ValueError, match=message):
        validate_run(**settings)


def test_gpu_and_data_folder_checks(tmp_path: Path):
    with pytest.raises(ValueError, match="no GPU"):
        validate_run("fragment-dae", "smoke", has_gpu=False, device="cuda")
    assert validate_run("fragment-dae", "smoke", has_gpu=None, device="cuda").device == "cuda"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        validate_run("fragment-dae", "smoke", data=f"fragments:folder={tmp_path / 'missing'}")
    (tmp_path / "files").mkdir()
    cfg = validate_run("fragment-dae", "smoke", data="fragments:folder=files", check_paths=False)
    assert cfg.data == "fragments:folder=files"  # not resolved when paths are not checked


def test_presets_and_resumed_configs_go_through_the_same_checks():
    cfg = make_config("fragment-dae", "smoke")
    cfg.patience = -1
    with pytest.raises(ValueError, match="patience must be a whole number >= 0"):
        check_config(cfg)
    with pytest.raises(ValueError, match="learning rate must be a positive number"):
        make_config("fragment-dae", "smoke", lr=0.0)


def test_every_caller_says_the_same(capsys, tmp_path: Path):
    # The Train tab adds only the hint about blanks; the CLI prints the same words on one line.
    with pytest.raises(ValueError, match=r"seed must be a whole number >= 0, got '-1' \(or leave it blank"):
        parse_settings("", "", "", "", "-1")
    assert (
        main(["train", "fragment-dae", "--preset", "smoke", "--epochs", "0", "--runs-dir", str(tmp_path)])
        == 2
    )
    assert "epochs must be a whole number >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="learning rate must be a positive number"):
        parse_run_settings("fragment-dae", "smoke", lr="fast")
