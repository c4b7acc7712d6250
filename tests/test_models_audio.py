"""Audio VAEs and losses: reference values, lazy heads, activations, loss formulas, validation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from models.audio import (
    ConvDecoder,
    ConvEncoder,
    ConvVAE,
    MelConvVAE,
    active_units,
    compute_kl_divergence,
    kl_per_dimension,
    vae_loss,
)

SMALL_2CH = {"latent_dim": 16, "n_mels": 32, "n_frames": 20, "widths": (8, 16, 32, 64, 128)}


pytestmark = pytest.mark.usefixtures("seeded", "single_thread")


@pytest.fixture(scope="module")
def conv_vae() -> ConvVAE:
    torch.manual_seed(1)
    return ConvVAE()


def test_conv_vae_defaults_shapes_and_split_activations(conv_vae: ConvVAE) -> None:
    """The v2.0 VAE at its defaults: latent 128, 2-channel round trip, Softplus / Tanh, sample, >10M."""
    model = conv_vae.train()
    assert model.latent_dim == 128
    x = torch.randn(2, 2, 128, 94)
    recon, mu, logvar = model(x)
    assert recon.shape == x.shape
    assert mu.shape == (2, 128) and logvar.shape == (2, 128)
    assert (recon[:, 0] >= 0).all(), "magnitude channel should be non-negative (Softplus)"
    assert (recon[:, 1] >= -1).all() and (recon[:, 1] <= 1).all(), "IF channel should be in [-1, 1] (Tanh)"
    model.eval()
    samples = model.sample(3, torch.device("cpu"))
    assert samples.shape == (3, 2, 128, 94)
    assert (samples[:, 0] >= 0).all() and samples[:, 1].abs().max() <= 1
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 10_000_000
    assert model.count_parameters()["total"] == n_params
    assert model.count_parameters()["encoder"] + model.count_parameters()["decoder"] == n_params


def test_conv_vae_architecture_matches_spec(conv_vae: ConvVAE) -> None:
    convs = [m for m in conv_vae.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (2, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, 1024),
    ]
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.Dropout2d) for m in conv_vae.encoder.modules()) == 5
    # (128, 94) is padded to (128, 96): 5 halvings leave 4 x 3 positions of 1024 channels
    assert conv_vae.encoder.padded_shape == (128, 96)
    assert conv_vae.encoder.fc_mu.in_features == 1024 * 4 * 3
    deconvs = [m for m in conv_vae.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.in_channels, d.out_channels) for d in deconvs] == [
        (1024, 512),
        (512, 256),
        (256, 128),
        (128, 64),
        (64, 2),
    ]
    assert all(d.output_padding == (1, 1) and d.stride == (2, 2) for d in deconvs)
    assert isinstance(conv_vae.decoder.deconv[-1], nn.ConvTranspose2d)  # last block: no activation


def test_lazy_heads_are_materialised_without_touching_batchnorm() -> None:
    model = ConvVAE(**SMALL_2CH)
    assert model.training and model.encoder.training
    for name, p in model.named_parameters():
        assert not isinstance(p, nn.parameter.UninitializedParameter), name
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
    assert type(model.encoder.fc_mu) is nn.Linear and type(model.encoder.fc_logvar) is nn.Linear


def test_latent_dim_is_configurable() -> None:
    model = ConvVAE(**{**SMALL_2CH, "latent_dim": 7}).eval()
    with torch.no_grad():
        mu, logvar = model.encode(torch.rand(3, 2, 32, 20))
        assert mu.shape == (3, 7) and logvar.shape == (3, 7)
        assert model.sample(2).shape == (2, 2, 32, 20)
        assert model.decode(mu).shape == (3, 2, 32, 20)


def test_decoder_applies_softplus_to_channel_0_and_tanh_to_channel_1_after_cropping() -> None:
    decoder = ConvDecoder(out_channels=2, widths=(8, 16, 32), latent_dim=4, output_shape=(13, 21)).eval()
    assert decoder.base_shape == (2, 3)  # (13, 21) padded to (16, 24), three halvings
    z = torch.randn(5, 4)
    with torch.no_grad():
        out = decoder(z)
        raw = decoder.deconv(decoder.fc(z).view(5, 32, 2, 3))[..., :13, :21]
    assert raw.shape == out.shape == (5, 2, 13, 21)
    torch.testing.assert_close(out[:, 0], F.softplus(raw[:, 0]))
    torch.testing.assert_close(out[:, 1], torch.tanh(raw[:, 1]))
    mono = ConvDecoder(out_channels=1, widths=(8, 16, 32), latent_dim=4, output_shape=(13, 21)).eval()
    with torch.no_grad():
        raw1 = mono.deconv(mono.fc(z).view(5, 32, 2, 3))[..., :13, :21]
        torch.testing.assert_close(mono(z), F.softplus(raw1))


def test_encoder_pads_odd_shapes_and_clamps_logvar() -> None:
    encoder = ConvEncoder(in_channels=2, widths=(8, 16), latent_dim=3, input_shape=(10, 7)).eval()
    assert encoder.padded_shape == (12, 8) and encoder.fc_mu.in_features == 16 * 3 * 2
    x = torch.rand(2, 2, 10, 7)
    with torch.no_grad():
        h = encoder.conv(F.pad(x, (0, 1, 0, 2))).flatten(1)
        mu, logvar = encoder(x)
        torch.testing.assert_close(mu, encoder.fc_mu(h))
        encoder.fc_logvar.bias.fill_(1e3)
        assert torch.all(encoder(x)[1] == 20.0)
        encoder.fc_logvar.bias.fill_(-1e3)
        assert torch.all(encoder(x)[1] == -20.0)


def test_mel_conv_vae_v1_model() -> None:
    model = MelConvVAE()
    assert model.latent_dim == 64 and model.input_shape == (1, 128, 94)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and convs[0].in_channels == 1
    total = model.count_parameters()["total"]
    assert abs(total - 3.1e6) / 3.1e6 < 0.10, f"{total:,}"
    recon, mu, logvar = model(torch.randn(2, 1, 128, 94))
    assert recon.shape == (2, 1, 128, 94) and mu.shape == (2, 64) and (recon >= 0).all()
    model.eval()
    assert model.sample(2).shape == (2, 1, 128, 94)


@pytest.mark.parametrize("cls", [ConvVAE, MelConvVAE], ids=["audio-vae", "audio-vae-mel"])
def test_gradients_reach_every_parameter(cls: type) -> None:
    model = cls().train()
    x = torch.rand(2, cls.IN_CHANNELS, 128, 94)
    recon, mu, logvar = model(x)
    total, _, _ = vae_loss(recon, x, mu, logvar, kl_weight=0.01)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert p.grad.abs().sum() > 0, f"all-zero gradient for {name}"


def test_reconstruct_is_deterministic_decode_of_mu() -> None:
    model = ConvVAE(**SMALL_2CH).eval()
    x = torch.rand(2, 2, 32, 20)
    with torch.no_grad():
        a = model.reconstruct(x)
        b = model.reconstruct(x)
        mu, _ = model.encode(x)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, model.decode(mu))


def test_reparameterize_has_the_right_moments() -> None:
    mu = torch.tensor([[1.0, -2.0, 0.5]]).repeat(20000, 1)
    logvar = torch.tensor([[0.0, np.log(4.0), np.log(0.25)]], dtype=torch.float32).repeat(20000, 1)
    z = ConvVAE.reparameterize(mu, logvar)
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0, 0.5]), atol=0.05, rtol=0)


def test_vae_loss_matches_reference_formula_on_two_channel_tensors() -> None:
    recon = torch.randn(4, 2, 128, 94).abs()
    target = torch.randn(4, 2, 128, 94).abs()
    mu = torch.randn(4, 128)
    logvar = torch.randn(4, 128)
    total, recon_loss, kl_loss = vae_loss(recon, target, mu, logvar, kl_weight=0.01)
    assert total.isfinite() and recon_loss.isfinite() and kl_loss.isfinite()

    r, t, m, lv = (a.double().numpy() for a in (recon, target, mu, logvar))
    ref_recon = np.mean((r - t) ** 2)
    ref_kl = np.mean(-0.5 * np.sum(1 + lv - m**2 - np.exp(lv), axis=1))
    assert recon_loss.item() == pytest.approx(ref_recon, rel=1e-5)
    assert kl_loss.item() == pytest.approx(ref_kl, rel=1e-5)
    assert total.item() == pytest.approx(ref_recon + 0.01 * ref_kl, rel=1e-5)
    # independent check of the KL term against torch.distributions
    ref_kl_dist = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1).mean()
    assert kl_loss.item() == pytest.approx(ref_kl_dist.item(), rel=1e-4)

    kl = compute_kl_divergence(mu, logvar)
    assert isinstance(kl, float) and kl == pytest.approx(ref_kl, rel=1e-5)
    assert compute_kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)) == 0.0


def test_free_bits_floor_each_dimensions_batch_mean_kl_and_leave_the_logged_kl_plain() -> None:
    """total = recon + beta * sum_d max(lambda, mean_b KL_bd) (Kingma et al. 2016); kl_loss stays the KL."""
    recon, target = torch.rand(3, 1, 8, 6), torch.rand(3, 1, 8, 6)
    mu = torch.tensor([[0.0, 2.0, 0.1], [0.0, -1.0, 0.0], [0.0, 0.5, -0.1]])
    logvar = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    m, lv = mu.double().numpy(), logvar.double().numpy()
    per_dim = np.mean(-0.5 * (1 + lv - m**2 - np.exp(lv)), axis=0)
    torch.testing.assert_close(kl_per_dimension(mu, logvar).double(), torch.from_numpy(per_dim))
    total, rec, kl = vae_loss(recon, target, mu, logvar, kl_weight=0.1, free_bits=0.5)
    assert kl.item() == pytest.approx(per_dim.sum(), rel=1e-5)
    assert total.item() == pytest.approx(rec.item() + 0.1 * np.maximum(per_dim, 0.5).sum(), rel=1e-5)
    # Below the floor a dimension gets no gradient from the KL term: it is free to carry information.
    mu.requires_grad_(True)
    vae_loss(target, target, mu, logvar, kl_weight=1.0, free_bits=0.5)[0].backward()
    assert mu.grad[:, 0].abs().sum() == 0 and mu.grad[:, 2].abs().sum() == 0 and mu.grad[:, 1].abs().sum() > 0
    with pytest.raises(ValueError, match="free_bits must be >= 0"):
        vae_loss(recon, target, mu, logvar, free_bits=-1.0)


def test_active_units_count_dimensions_whose_posterior_mean_varies_across_inputs() -> None:
    mu = torch.zeros(50, 4)
    mu[:, 0] = torch.linspace(-1, 1, 50)  # variance ~0.35: active
    mu[:, 1] = 0.05 * torch.linspace(-1, 1, 50)  # variance ~0.0009: inactive
    mu[:, 2] = 3.0  # constant: inactive however far from 0
    mu[:, 3] = torch.linspace(-0.3, 0.3, 50)  # variance ~0.031: active
    assert active_units(mu) == 2
    assert active_units(mu, threshold=0.05) == 1
    with pytest.raises(ValueError, match="N >= 2"):
        active_units(torch.zeros(1, 4))


def test_vae_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="recon and target of the same shape"):
        vae_loss(torch.zeros(2, 2, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(2, 3), torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="mu and logvar"):
        compute_kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4))


def test_bad_inputs_raise_clear_value_errors() -> None:
    model = ConvVAE(**SMALL_2CH)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 2, 32, 20\), got \(32, 20\)"):
        model(torch.rand(32, 20))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 20\)"):
        model.encode(torch.rand(2, 1, 32, 20))
    with pytest.raises(ValueError, match=r"got \(2, 2, 32, 19\)"):
        model.reconstruct(torch.rand(2, 2, 32, 19))
    with pytest.raises(ValueError, match=r"got \(2, 2, 31, 20\)"):
        model(torch.rand(2, 2, 31, 20))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(2, 2, 32, 20, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"expected latent of shape \(B, 16\), got \(2, 8\)"):
        model.decode(torch.rand(2, 8))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        model.sample(0)
    mel = MelConvVAE(latent_dim=8, widths=(8, 16, 32, 64))
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 128, 94\), got \(2, 2, 128, 94\)"):
        mel(torch.rand(2, 2, 128, 94))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="dropout"):
        ConvVAE(**SMALL_2CH, dropout=1.5)
    with pytest.raises(ValueError, match="widths"):
        ConvVAE(**{**SMALL_2CH, "widths": ()})
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        ConvVAE(**{**SMALL_2CH, "latent_dim": 0})
    with pytest.raises(
        ValueError, match="checkpoint is for variant 'audio-vae-mel', but ConvVAE builds 'audio-vae'"
    ):
        ConvVAE(variant="audio-vae-mel")


def test_default_conv_vae_saves_and_loads_without_a_prior_forward(conv_vae: ConvVAE, tmp_path) -> None:
    """The lazy heads must not break save_pretrained on a freshly built model."""
    fresh = ConvVAE(preprocessing={"mag_mean": -4.2, "mag_std": 2.5})
    fresh.save_pretrained(tmp_path)
    loaded = ConvVAE.from_pretrained(tmp_path)
    assert loaded.preprocessing == {"mag_mean": -4.2, "mag_std": 2.5}
    assert not loaded.training
    fresh.eval()
    x = torch.rand(2, 2, 128, 94)
    with torch.no_grad():
        torch.testing.assert_close(loaded.reconstruct(x), fresh.reconstruct(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode(x), fresh.encode(x), rtol=0, atol=0)
