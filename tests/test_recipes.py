"""The training recipes that keep every variant learning: the KL schedule, the latent and output-spread
metrics, the fragment loss, and the collapse warning the loop raises at validation."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from trainers.metrics.collapse import SPREAD_WARNING, check_collapse, collapse_note, collapse_reasons
from trainers.training.tasks import (
    CORRUPTED_WEIGHT,
    feature_spread_ratio,
    fragment_loss,
    latent_usage,
    sar_output_spread,
    task_for,
)

pytestmark = pytest.mark.usefixtures("seeded", "single_thread")


def test_kl_weight_warms_up_linearly_then_stays_at_its_value() -> None:
    task = task_for("audio-vae", kl_weight=0.02, kl_warmup=100, free_bits=0.25)
    assert [task.kl_beta(s) for s in (0, 25, 50, 100, 1000)] == pytest.approx([0, 0.005, 0.01, 0.02, 0.02])
    task.step = 40
    assert task.kl_beta() == pytest.approx(0.008)
    assert task_for("audio-vae", kl_weight=0.02).kl_beta(0) == 0.02  # no warm-up: the weight at once


def test_audio_task_loss_uses_the_scheduled_weight_and_free_bits() -> None:
    from models import create_model
    from models.audio import vae_loss

    model = create_model("audio-vae", widths=[4, 8, 8, 8, 8], latent_dim=8, n_mels=32, n_frames=21).eval()
    x = torch.rand(3, 2, 32, 21)
    task = task_for("audio-vae", kl_weight=0.5, kl_warmup=10, free_bits=0.1)
    task.step = 5
    torch.manual_seed(1)
    loss = task.loss(model, x)
    torch.manual_seed(1)
    recon, mu, logvar = model(x)
    expected = vae_loss(recon, x, mu, logvar, kl_weight=0.25, free_bits=0.1, weighting="magnitude")[0]
    torch.testing.assert_close(loss, expected)


def test_magnitude_weighting_weighs_if_errors_by_the_target_magnitude() -> None:
    from models.audio import spectrogram_mse

    # One example, 1x2 bins: magnitudes 0 (silent) and 0.5; every output value off by its own amount.
    target = torch.tensor([[[[0.0, 0.5]], [[0.9, -0.4]]]])
    recon = torch.tensor([[[[0.1, 0.3]], [[-0.9, 0.0]]]])
    # magnitude MSE (0.1^2 + 0.2^2) / 2 = 0.025; IF: silent bin weight 0 (its 1.8 error is free),
    # 0.5 * 0.4^2 = 0.08, averaged over the 2 bins = 0.04.
    assert float(spectrogram_mse(recon, target, "magnitude")) == pytest.approx(0.025 + 0.04)
    assert float(spectrogram_mse(recon, target, "plain")) == pytest.approx((0.01 + 0.04 + 3.24 + 0.16) / 4)
    one = target[:, :1]  # a 1-channel (log-mel) input has no IF: the plain MSE
    assert float(spectrogram_mse(recon[:, :1], one, "magnitude")) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="weighting"):
        spectrogram_mse(recon, target, "loud")
    assert task_for("audio-vae").weighting == "magnitude" and task_for("audio-vae-mel").weighting == "plain"


def test_latent_usage_counts_active_units_and_summarises_kl_per_dimension() -> None:
    mu = torch.zeros(20, 3)
    mu[:, 0] = torch.linspace(-2, 2, 20)
    logvar = torch.zeros(20, 3)
    usage = latent_usage(mu, logvar)
    per_dim = (0.5 * mu.pow(2)).mean(0)  # KL of N(mu, 1) from N(0, 1)
    assert usage["active_units"] == 1
    assert usage["kl_dim_max"] == pytest.approx(per_dim.max().item())
    assert usage["kl_dim_median"] == pytest.approx(0.0)
    assert latent_usage(mu[:1], logvar[:1]) == {}


def test_spread_ratios_are_zero_for_a_constant_output_and_one_for_the_input() -> None:
    x = torch.rand(6, 2, 8, 5)
    assert feature_spread_ratio(x, x) == pytest.approx(1.0)
    assert feature_spread_ratio(x.mean(0, keepdim=True).expand_as(x), x) == pytest.approx(0.0)
    assert feature_spread_ratio(0.5 * x, x) == pytest.approx(0.5)
    images = torch.rand(3, 1, 16, 16)
    valid = torch.ones_like(images)
    assert sar_output_spread(images, images, valid) == pytest.approx(1.0)
    flat = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    assert sar_output_spread(images, flat, valid) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(sar_output_spread(images, images, torch.zeros_like(images)))


def test_fragment_loss_per_output_kind() -> None:
    clean = torch.rand(2, 1, 16)
    changed = torch.rand(2, 16) < 0.3
    logits = torch.randn(2, 256, 16)
    target = torch.round(clean[:, 0] * 255).long()
    ce = F.cross_entropy(logits, target, reduction="none")  # corrupted bytes weigh CORRUPTED_WEIGHT times
    w = torch.where(changed, CORRUPTED_WEIGHT, 1.0)
    torch.testing.assert_close(fragment_loss(logits, clean, changed), (w * ce).sum() / w.sum())
    whole = torch.rand(2, 1, 16)
    torch.testing.assert_close(fragment_loss(whole, clean, changed), F.mse_loss(whole, clean))
    two = torch.rand(2, 2, 16)
    mask = changed.float().unsqueeze(1)
    bce = -(mask * two[:, 1:].log() + (1 - mask) * (1 - two[:, 1:]).log()).mean()
    expected = F.mse_loss(two[:, :1], clean) + bce
    torch.testing.assert_close(fragment_loss(two, clean, changed), expected)


def test_closed_gate_gets_the_cross_entropy_gradient_not_the_vanishing_mse_one() -> None:
    """The fragment-dae's gate starts closed (bias -4): its loss must still push it open on corrupted bytes.
    The MSE gate loss's gradient there is g (1 - g) = 0.018 of the cross-entropy's (the old recipe's gate
    stayed shut through a whole reference training)."""
    from models.fragments import FragmentAutoencoder

    torch.manual_seed(0)
    model = FragmentAutoencoder(fragment_size=64, channels=(4, 8, 8))
    clean = torch.rand(4, 1, 64)
    noisy = clean.clone()
    changed = torch.zeros(4, 64, dtype=torch.bool)
    changed[:, ::8] = True
    noisy[:, 0][changed] = 1.0 - noisy[:, 0][changed]

    def gate_bias_grad(loss_fn) -> float:
        model.zero_grad()
        loss_fn(model(noisy)).backward()
        return abs(float(model.decoder[-1].bias.grad[1]))

    ours = gate_bias_grad(lambda out: fragment_loss(out, clean, changed))
    old = gate_bias_grad(
        lambda out: F.mse_loss(out[:, :1], clean) + F.mse_loss(out[:, 1:], changed.float().unsqueeze(1))
    )
    assert ours > 10 * old


@pytest.mark.parametrize(
    ("domain", "metrics", "words"),
    [
        ("sar", {"output_spread": 0.03, "psnr": 14.0}, "near-constant output"),
        ("audio", {"output_spread": 0.8, "active_units": 0.0}, "posterior collapse"),
        ("audio", {"output_spread": 0.01, "active_units": 12.0}, "near-constant output"),
        ("fragments", {"accuracy": 0.04, "identity_accuracy": 0.93}, "worse than the identity"),
    ],
)
def test_collapse_reasons_name_what_collapsed(domain: str, metrics: dict, words: str) -> None:
    reasons = collapse_reasons(domain, metrics)
    assert len(reasons) == 1 and words in reasons[0]


@pytest.mark.parametrize(
    ("domain", "metrics"),
    [
        ("sar", {"output_spread": 0.9}),
        ("sar", {"output_spread": math.nan}),  # missing: nothing to say
        ("audio", {"output_spread": 0.6, "active_units": 5.0}),
        ("fragments", {"accuracy": 0.925, "identity_accuracy": 0.93}),  # within the margin
        ("fragments", {"accuracy": 0.95, "identity_accuracy": 0.93}),
    ],
)
def test_healthy_metrics_raise_no_collapse(domain: str, metrics: dict) -> None:
    assert collapse_reasons(domain, metrics) == []
    assert SPREAD_WARNING > 0.05  # warns earlier than the leaderboard's constant-output flag


def test_check_collapse_notes_the_run_and_writes_its_flag(tmp_path, caplog) -> None:
    from trainers.runs.store import RunStore

    with RunStore(tmp_path / "runs") as store:
        run_id = store.create_run("sar-attention", "sar", {"variant": "sar-attention"})
        folder = tmp_path / "runs" / run_id
        assert check_collapse("sar", {"output_spread": 0.5}, store, run_id, folder, 1) == {"collapsing": 0.0}
        assert collapse_note(folder) == ""
        with caplog.at_level("WARNING"):
            out = check_collapse("sar", {"output_spread": 0.02}, store, run_id, folder, 2)
            check_collapse("sar", {"output_spread": 0.01}, store, run_id, folder, 3)
        assert out == {"collapsing": 1.0}
        assert "collapsing at epoch 2" in caplog.text
        assert "collapse warning (epoch 3)" in store.get_run(run_id).reason
        record = json.loads((folder / "collapse.json").read_text())
        assert record["first_epoch"] == 2 and record["epoch"] == 3
        assert collapse_note(folder).startswith("⚠ collapsing since epoch 2: near-constant output")


def test_a_collapsing_run_is_flagged_at_its_first_validation(tmp_path) -> None:
    """The plain-gate Variant C (the shipped collapsed design) trained for one epoch is caught by the loop:
    the `collapsing` metric is logged with the validation metrics and collapse.json says why."""
    from trainers.runs.store import RunStore
    from trainers.settings import make_config
    from trainers.training.loop import train

    cfg = make_config(
        "sar-attention",
        "smoke",
        data="sar:synthetic,n=16,size=64,val=8,looks=4",
        epochs=1,
        batch_size=8,
        model={"gate": "sigmoid"},
    )
    with RunStore(tmp_path / "runs") as store:
        result = train(cfg, store)
        assert result.status == "completed"
        flags = [v for _, v in store.metric_series(result.run_id, "collapsing", split="val")]
        spread = result.val_metrics["output_spread"]
    assert spread < SPREAD_WARNING
    assert flags == [1.0]
    assert "near-constant output" in collapse_note(tmp_path / "runs" / result.run_id)


def test_audio_output_spread_is_the_magnitude_channels() -> None:
    """A 2-channel VAE whose IF varies with the input but whose magnitude is one constant spectrogram has
    a constant spectrum: its output_spread is 0 (the IF channel alone would have scored it far above)."""
    from torch import nn

    class ConstantSpectrum(nn.Module):
        def forward(self, x):
            mu = x.mean(dim=(2, 3))
            return self.decode(mu), mu, torch.zeros_like(mu)

        def decode(self, mu):
            magnitude = torch.full((mu.shape[0], 1, 4, 3), 0.3)
            return torch.cat([magnitude, mu[:, 1:2, None, None].expand(-1, 1, 4, 3)], dim=1)

    x = torch.rand(6, 2, 4, 3)
    metrics = task_for("audio-vae").evaluate(ConstantSpectrum(), [x], torch.device("cpu"))
    assert metrics["output_spread"] == pytest.approx(0.0)
    assert feature_spread_ratio(ConstantSpectrum().decode(x.mean(dim=(2, 3))), x) > 0.1


@pytest.mark.parametrize("correction", [True, False])
def test_compare_decodes_the_fragment_dae_latent_as_predict_bytes_does(correction: bool) -> None:
    """compare scores fragment-dae from its latent: the gated correction of the corrupted input (the
    receiver holds it), not the value logits scaled to bytes (which scored the reference 12.6 % of bytes)."""
    from models.fragments import FragmentAutoencoder
    from trainers.evaluation.compare import _fragment_bytes

    torch.manual_seed(0)
    model = FragmentAutoencoder(fragment_size=64, channels=(4, 8, 8), correction=correction).eval()
    with torch.no_grad():
        last = model.decoder[-1] if correction else model.decoder[-2]  # the last conv (Sigmoid after it)
        last.bias[-1] = 0.3  # some gates open (correction) / a nonzero output
        x = torch.randint(0, 256, (1, 1, 64)).float() / 255
        expected = model.predict_bytes(x)[0].numpy()
        got = _fragment_bytes(model, model.encode(x), x)
    assert (got == expected).all()


def test_fragment_task_loss_adds_the_value_mse_on_corrupted_bytes() -> None:
    """The correcting fragment-dae's training loss = the gated repair's loss + the replacement value's MSE
    against the clean bytes over the corrupted positions only (hand-computed from the model's parts)."""
    from models.fragments import FragmentAutoencoder

    torch.manual_seed(0)
    model = FragmentAutoencoder(fragment_size=64, channels=(4, 8, 8)).eval()
    clean = torch.rand(3, 1, 64)
    noisy = clean.clone()
    changed = torch.zeros(3, 64, dtype=torch.bool)
    changed[:, 5::9] = True
    noisy[:, 0][changed] = 0.0
    loss = task_for("fragment-dae").loss(model, (noisy, clean, changed))
    with torch.no_grad():
        value, gate = model.correction_parts(noisy)
    value_mse = (value[:, 0][changed] - clean[:, 0][changed]).pow(2).mean()
    expected = fragment_loss(model(noisy), clean, changed) + value_mse
    torch.testing.assert_close(loss, expected)
