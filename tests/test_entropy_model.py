"""The learned entropy model as a training option (issue 22 item 2): ``--set entropy_model=factorized`` gives
any SAR variant Ballé et al.'s factorized prior and the loss D + rd_lambda * R; the prior's probabilities
code the latent in compare's bitstream."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import create_model, load_pretrained
from models.entropy import FactorizedPrior, rate_bits
from trainers.evaluation import bitstream
from trainers.settings import validate_run
from trainers.training.tasks import task_for

pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny(variant: str = "sar-baseline", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(variant, base_channels=4, image_size=32, entropy_model="factorized", **kw)


def test_the_density_integrates_to_one_and_rounding_is_scored_in_eval():
    prior = FactorizedPrior(3)
    probs = prior.bin_probabilities([-200] * 3, [200] * 3)[1]
    assert probs.dtype == torch.float64 and float(probs.sum()) == pytest.approx(1.0, abs=1e-6)
    z = torch.randn(2, 3, 4, 4) * 3
    prior.eval()
    z_hat, lik = prior(z)
    assert torch.equal(z_hat, torch.round(z)) and lik.shape == z.shape and bool((lik > 0).all())
    prior.train()
    noisy, _ = prior(z)
    assert 0 < float((noisy - z).abs().max()) <= 0.5


def test_the_rate_term_decreases_over_a_few_steps_and_is_logged_as_parts():
    model = _tiny(rd_lambda=1.0).train()
    task = task_for("sar-baseline")
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 32, 32, generator=gen)
    batch = (x, torch.ones_like(x), None)
    rates = []
    for _ in range(8):
        loss = task.loss(model, batch)
        parts = task.last_parts
        rates.append(float(parts["rate_bpp"]))
        assert float(loss.detach()) == pytest.approx(float(parts["distortion"]) + 1.0 * rates[-1], rel=1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.mean(rates[-3:]) < 0.9 * np.mean(rates[:3]), rates


def test_the_option_round_trips_through_a_checkpoint(tmp_path):
    model = _tiny("sar-attention", rd_lambda=0.05).eval()
    with torch.no_grad():
        for p in model.entropy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    back = load_pretrained(tmp_path).eval()
    assert back.entropy_model == "factorized" and back.rd_lambda == 0.05
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a, b = model(x)[0], back(x)[0]
        assert torch.equal(a, b)
        assert float(model.last_rate_bits) == pytest.approx(float(back.last_rate_bits))
    plain = create_model("sar-baseline", base_channels=4, image_size=32)
    assert plain.entropy is None and plain.entropy_model == "none"


def test_the_bitstream_codes_under_the_learned_density_and_decodes_bit_exact():
    model = _tiny().eval()
    with torch.no_grad():
        z = model.encode(torch.rand(1, 1, 64, 64))[0].numpy() * 4
        enc = bitstream.encode_learned(z, model.entropy)
        symbols, latent = bitstream.decode(enc.data, model.entropy)
        assert np.array_equal(symbols, enc.symbols) and np.array_equal(latent, enc.latent)
        assert np.array_equal(latent, np.rint(z).astype(np.float32))
        # The payload costs at most the information content under the density (the coder renormalises it
        # over each channel's range in the header, which only helps) plus the coder's last words.
        _, lik = model.entropy(torch.from_numpy(z)[None])
        info_bytes = float(rate_bits(lik)) / 8
        header = 1 + 2 * 3 + 1 + 4 + 4 * z.shape[0]
        assert 0 < len(enc.data) - header <= info_bytes + 8
        coarse = bitstream.encode_learned(z, model.entropy, 2.0)
        assert len(coarse.data) < len(enc.data)
    with pytest.raises(ValueError, match="needs the model's prior"):
        bitstream.decode(enc.data)


@pytest.mark.parametrize(
    ("variant", "model", "needle"),
    [
        ("sar-residual", {"entropy_model": "hyper"}, "entropy_model must be one of none, factorized"),
        ("audio-vae", {"entropy_model": "factorized"}, "option of the SAR variants"),
        ("sar-baseline", {"rd_lambda": 0.1}, "only entropy_model=factorized adds"),
        ("sar-baseline", {"entropy_model": "factorized", "rd_lambda": "a"}, "rd_lambda must be a number"),
        ("sar-baseline", {"entropy_model": "factorized", "rd_lambda": math.inf}, "from 0 to"),
    ],
)
def test_bad_values_are_refused_in_one_sentence(variant, model, needle):
    with pytest.raises(ValueError, match=needle) as info:
        validate_run(variant, "smoke", model=model, check_paths=False)
    assert str(info.value).count(". ") == 0


def test_compare_scores_a_learned_model_from_its_learned_density_bytes(tmp_path):
    from trainers.evaluation.compare import run_compare

    model = _tiny()
    model.save_pretrained(tmp_path / "ckpt")
    result = run_compare([str(tmp_path / "ckpt")], "sar:synthetic,n=2,size=32", baselines=False, seed=0)
    (row,) = result["rows"]
    assert row["rate"] == "measured" and row["entropy_model"] == "factorized" and row["quant_step"] == 1.0
    steps = [p["quant_step"] for p in row["rd"]]
    assert sorted(steps, reverse=True) == steps and len(steps) >= 4  # coarse steps are the low rates
    assert [p["bpp"] for p in row["rd"]] == sorted(p["bpp"] for p in row["rd"])
    from trainers.evaluation.compare import rd_figure

    names = [trace.name for trace in rd_figure(result).data]
    assert any("quantisation step 2, 1.5, 1, 0.75, 0.5" in n for n in names), names
