"""Fragment denoising autoencoders: reference values, byte head, learning on a tiny task, validation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.fragments import ByteFragmentAutoencoder, FragmentAutoencoder

pytestmark = pytest.mark.usefixtures("seeded", "single_thread")


def _fragments(n: int, length: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Random structured bytes (text-like runs) as (LongTensor (n, L), float (n, 1, L) = byte / 255)."""
    base = torch.randint(32, 127, (n, length // 8)).repeat_interleave(8, dim=1)
    data = (base + torch.randint(0, 3, (n, length))).clamp(0, 255)
    return data, (data.float() / 255.0).unsqueeze(1)


def test_fragment_dae_preserves_the_512_byte_shape_with_1d_convs() -> None:
    model = FragmentAutoencoder().eval()
    _, x = _fragments(4)
    with torch.no_grad():
        out = model(x)
        z = model.encode(x)
        value, gate = model.correction_parts(x)
        logits = model.decode(z)
    assert out.shape == (4, 2, 512) and logits.shape == (4, 2, 512)
    assert z.shape == (4, 128, 64)
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(value, x + 2 * torch.sigmoid(logits[:, :1]) - 1)  # delta: a change to x
    torch.testing.assert_close(gate, torch.sigmoid(logits[:, 1:]))
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv1d)]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose1d)]
    assert len(convs) == 3 and all(c.stride == (2,) for c in convs)
    assert len(deconvs) == 3 and all(d.stride == (2,) for d in deconvs)
    assert deconvs[-1].out_channels == 2  # a replacement value and a gate per byte
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    whole = FragmentAutoencoder(correction=False).eval()  # the first design, for older checkpoints
    assert isinstance(whole.decoder[-1], nn.Sigmoid)
    with torch.no_grad():
        torch.testing.assert_close(whole.decode(whole.encode(x)), whole(x))


def test_fragment_dae_output_is_its_input_corrected_by_the_gated_value() -> None:
    """forward = x + g (v - x); predict_bytes keeps the input byte unless g > 0.5, then round(255 v) (the
    default rule; the tuned rules are in test_fragment_decision.py)."""
    model = FragmentAutoencoder().eval()
    data, x = _fragments(3)
    with torch.no_grad():
        # At initialisation the gate is closed everywhere: the model starts as the identity repair.
        assert torch.equal(model.predict_bytes(x), data)
        torch.testing.assert_close(model.reconstruct(x), x)
        model.decoder[-1].bias[1] = 0.0  # now some gates open, some stay closed
        model.decoder[-1].weight[:, 1].normal_(0.0, 0.2)
        value, gate = model.correction_parts(x)
        torch.testing.assert_close(model(x), torch.cat([x + gate * (value - x), gate], dim=1))
        predicted = model.predict_bytes(x)
        expected = torch.where(gate[:, 0] > 0.5, torch.round(value[:, 0] * 255).long(), data).clamp(0, 255)
    assert 0 < (gate > 0.5).float().mean() < 1
    assert predicted.dtype == torch.int64 and predicted.shape == (3, 512)
    assert torch.equal(predicted, expected)
    whole = FragmentAutoencoder(correction=False).eval()
    with torch.no_grad():
        assert torch.equal(whole.predict_bytes(x), torch.round(whole(x).squeeze(1) * 255).long())
    with pytest.raises(ValueError, match="correction must be true or false"):
        FragmentAutoencoder(correction="yes")


def test_fragment_dae_checkpoints_without_the_option_load_as_whole_fragment_models(tmp_path) -> None:
    import json

    FragmentAutoencoder(correction=False).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["correction"]  # as written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert FragmentAutoencoder.from_pretrained(tmp_path).correction is False


def test_fragment_dae_learns_to_find_the_corrupted_bytes_without_breaking_clean_ones() -> None:
    """Runs of equal bytes with 3 % replaced at random: after a short training run with the task's loss the
    gate opens mostly on corrupted bytes (precision and recall over 0.5), so byte accuracy stays at or above
    the corrupted input's (the whole-fragment design fell to a few % of bytes right)."""
    from trainers.training.tasks import fragment_loss

    torch.manual_seed(0)
    model = FragmentAutoencoder(channels=(16, 32, 64)).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        data = torch.randint(32, 127, (n, 64)).repeat_interleave(8, dim=1)
        clean = (data.float() / 255.0).unsqueeze(1)
        noisy = clean.clone()
        mask = torch.rand_like(noisy) < 0.03
        noisy[mask] = torch.randint(0, 256, (int(mask.sum()),)).float() / 255
        return data, clean, noisy, (noisy != clean)[:, 0]

    first = None
    for _ in range(150):
        _, clean, noisy, changed = batch(32)
        loss = fragment_loss(model(noisy), clean, changed)
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.3 * first
    model.eval()
    data, _, noisy, changed = batch(64)
    with torch.no_grad():
        opened = model.correction_parts(noisy)[1][:, 0] > 0.5
        accuracy = (model.predict_bytes(noisy) == data).float().mean().item()
    identity = (torch.round(noisy[:, 0] * 255).long() == data).float().mean().item()
    precision = (opened & changed).sum() / opened.sum().clamp(min=1)
    recall = (opened & changed).sum() / changed.sum()
    assert precision > 0.5 and recall > 0.5, f"gate precision {precision:.2f}, recall {recall:.2f}"
    assert accuracy >= identity - 0.002, f"accuracy {accuracy:.4f} vs identity {identity:.4f}"


def test_byte_model_shares_the_encoder_and_returns_per_byte_logits() -> None:
    model = ByteFragmentAutoencoder().eval()
    dae = FragmentAutoencoder()
    enc_shapes = {k: v.shape for k, v in model.encoder.state_dict().items()}
    assert enc_shapes == {k: v.shape for k, v in dae.encoder.state_dict().items()}
    _, x = _fragments(4)
    with torch.no_grad():
        logits = model(x)
        predicted = model.predict_bytes(x)
        recon = model.reconstruct(x)
    assert logits.shape == (4, 256, 512)
    assert torch.equal(predicted, logits.argmax(dim=1)) and predicted.shape == (4, 512)
    assert recon.shape == (4, 1, 512)
    torch.testing.assert_close(recon, predicted.unsqueeze(1).float() / 255.0)
    head = model.head
    assert isinstance(head, nn.Conv1d) and head.out_channels == 256


def test_byte_skip_connection_lets_the_identity_be_represented() -> None:
    """The classifier sees each input byte: with the context path silenced and a one-hot head, the model
    returns its input exactly (what makes short training runs keep clean bytes intact)."""
    model = ByteFragmentAutoencoder(byte_embedding=256).eval()
    with torch.no_grad():
        model.embed.weight.copy_(torch.eye(256))
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[:, 64:, 0].copy_(torch.eye(256))
        data, x = _fragments(3)
        assert torch.equal(model.predict_bytes(x), data)
    no_skip = ByteFragmentAutoencoder(byte_embedding=0)
    assert no_skip.embed is None and no_skip.head.in_channels == 64


@pytest.mark.parametrize("cls", [FragmentAutoencoder, ByteFragmentAutoencoder], ids=["dae", "bytes"])
def test_gradients_reach_every_parameter(cls: type) -> None:
    model = cls().train()
    data, x = _fragments(4)
    out = model(x)
    loss = F.mse_loss(out, x.expand_as(out)) if cls is FragmentAutoencoder else F.cross_entropy(out, data)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert p.grad.abs().sum() > 0, f"all-zero gradient for {name}"


@pytest.mark.parametrize(
    ("cls", "max_ratio"), [(FragmentAutoencoder, 0.6), (ByteFragmentAutoencoder, 0.75)], ids=["dae", "bytes"]
)
def test_loss_decreases_when_denoising_a_small_batch(cls: type, max_ratio: float) -> None:
    """Reconstruction loss decreases on dummy data (corrupted -> clean): the fragment-dae's regressed repair
    (MSE through its gate, which starts nearly closed), the byte model's cross-entropy."""
    model = cls().train()
    clean_bytes, clean = _fragments(4)
    noisy = clean.clone()
    mask = torch.rand_like(noisy) < 0.05
    noisy[mask] = torch.rand(int(mask.sum()))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        out = model(noisy)
        return (
            F.mse_loss(out[:, :1], clean) if cls is FragmentAutoencoder else F.cross_entropy(out, clean_bytes)
        )

    first = loss_fn().item()
    for _ in range(12):
        optimiser.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimiser.step()
    assert loss_fn().item() < max_ratio * first


def test_custom_fragment_size_and_channels() -> None:
    model = FragmentAutoencoder(fragment_size=256, channels=(8, 16, 32, 64), kernel_size=5).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 256)).shape == (2, 2, 256)
        assert model.encode(torch.rand(2, 1, 256)).shape == (2, 64, 16)
    byte_model = ByteFragmentAutoencoder(fragment_size=128, head_channels=16).eval()
    with torch.no_grad():
        assert byte_model(torch.rand(2, 1, 128)).shape == (2, 256, 128)


@pytest.mark.parametrize("cls", [FragmentAutoencoder, ByteFragmentAutoencoder], ids=["dae", "bytes"])
def test_bad_inputs_raise_clear_value_errors(cls: type) -> None:
    model = cls()
    with pytest.raises(ValueError, match=r"^expected input of shape \(B, 1, 512\), got \(4, 512\)$"):
        model(torch.rand(4, 512))
    with pytest.raises(ValueError, match=r"got \(4, 2, 512\)"):
        model(torch.rand(4, 2, 512))
    with pytest.raises(ValueError, match=r"got \(4, 1, 500\)"):
        model.predict_bytes(torch.rand(4, 1, 500))
    with pytest.raises(ValueError, match="floating-point"):
        model.reconstruct(torch.zeros(4, 1, 512, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expected latent of shape \(B, 128, 64\), got \(4, 128, 32\)"):
        model.decode(torch.rand(4, 128, 32))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="fragment_size must be a multiple of 8"):
        FragmentAutoencoder(fragment_size=500)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        FragmentAutoencoder(kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        ByteFragmentAutoencoder(channels=[32, -1, 8])
    with pytest.raises(ValueError, match="but ByteFragmentAutoencoder builds 'fragment-dae-bytes'"):
        ByteFragmentAutoencoder(variant="fragment-dae")
