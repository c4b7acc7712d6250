"""SAR models and their blocks: reference values, block formulas, structure, init, validation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import (
    CBAM,
    ChannelAttention,
    PreActBlockWithBranchCBAM,
    PreActResidualBlock,
    ResidualBlock,
    ResidualBlockWithCBAM,
    ResidualBlockWithDownsample,
    ResidualBlockWithUpsample,
    SpatialAttention,
)
from models.sar import (
    AttentionAutoencoder,
    BaselineAutoencoder,
    BranchAttentionAutoencoder,
    ResidualAutoencoder,
    ResNetAutoencoder,
)

SAR_CLASSES = [
    BaselineAutoencoder,
    ResNetAutoencoder,
    ResidualAutoencoder,
    AttentionAutoencoder,
    BranchAttentionAutoencoder,
]
SMALL = {"base_channels": 8, "image_size": 64}


pytestmark = pytest.mark.usefixtures("seeded", "single_thread")


def _randomise_bn(module: nn.Module) -> None:
    """Give every BatchNorm non-trivial affine params and running stats so formulas are really exercised."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode batch norm written out."""
    shape = (1, -1, 1, 1)
    scale = bn.weight.view(shape) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


# ------------------------------------------------------------------------------------------ blocks


def test_preact_block_matches_reference_and_has_no_activation_after_addition() -> None:
    block = PreActResidualBlock(4, 8, stride=2)
    _randomise_bn(block)
    block.eval()
    assert isinstance(block.shortcut, nn.Conv2d)
    assert block.shortcut.kernel_size == (1, 1) and block.shortcut.stride == (2, 2)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        out = block(x)
        h = F.conv2d(F.relu(_bn(x, block.bn1)), block.conv1.weight, stride=2, padding=1)
        h = F.conv2d(F.relu(_bn(h, block.bn2)), block.conv2.weight, padding=1)
        expected = h + F.conv2d(x, block.shortcut.weight, stride=2)
    assert out.shape == (2, 8, 8, 8)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert (out < 0).any(), "pre-activation block must not apply an activation after the addition"


def test_preact_block_identity_shortcut_when_shape_is_kept() -> None:
    block = PreActResidualBlock(8, 8, stride=1)
    assert isinstance(block.shortcut, nn.Identity)
    with torch.no_grad():
        for p in (block.conv2.weight,):
            p.zero_()  # residual branch off -> the block is exactly the identity
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(block(x), x)


def test_post_activation_block_applies_relu_after_addition() -> None:
    block = ResidualBlock(4, 8, stride=2)
    _randomise_bn(block)
    block.eval()
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        out = block(x)
        h = F.relu(_bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1))
        h = _bn(F.conv2d(h, block.conv2.weight, padding=1), block.bn2)
        short = _bn(F.conv2d(x, block.shortcut[0].weight, stride=2), block.shortcut[1])
        pre = h + short
    torch.testing.assert_close(out, F.relu(pre), rtol=1e-4, atol=1e-5)
    assert (pre < 0).any() and (out >= 0).all()
    linear = ResidualBlock(4, 8, stride=2, activate_output=False)
    linear.load_state_dict(block.state_dict())
    linear.eval()
    with torch.no_grad():
        torch.testing.assert_close(linear(x), pre, rtol=1e-4, atol=1e-5)


def test_down_and_up_residual_blocks_change_resolution() -> None:
    x = torch.randn(2, 8, 16, 16)
    assert ResidualBlockWithDownsample(8, 16)(x).shape == (2, 16, 8, 8)
    assert ResidualBlockWithUpsample(8, 4)(x).shape == (2, 4, 32, 32)


def test_cbam_equals_input_times_channel_times_spatial_attention() -> None:
    channels = 32
    cbam = CBAM(channels, reduction=16, kernel_size=7)
    w1 = cbam.channel_attention.mlp[0].weight
    w2 = cbam.channel_attention.mlp[2].weight
    assert w1.shape == (2, channels, 1, 1) and w2.shape == (channels, 2, 1, 1)  # hidden = 32 // 16
    assert cbam.spatial_attention.conv.weight.shape == (1, 2, 7, 7)
    x = torch.randn(3, channels, 10, 12)
    with torch.no_grad():
        out = cbam(x)

        def mlp(v: torch.Tensor) -> torch.Tensor:  # v: (B, C)
            return F.relu(v @ w1.view(2, channels).T) @ w2.view(channels, 2).T

        ca = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3)))).view(3, channels, 1, 1)
        refined = x * ca
        maps = torch.stack([refined.mean(dim=1), refined.amax(dim=1)], dim=1)
        sa = torch.sigmoid(F.conv2d(maps, cbam.spatial_attention.conv.weight, padding=3))
        expected = x * ca * sa
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cbam.channel_attention(x), ca)
    torch.testing.assert_close(cbam.spatial_attention(refined), sa)


def test_unit_mean_gate_cbam_rescales_each_map_to_mean_one_and_starts_near_identity() -> None:
    """gate="unit-mean": out = x' * s(x') / mean_hw s(x') with x' = x * c(x) / mean_c c(x); at
    initialisation out ~ x, where the paper's gates start near 0.5 each (the cause of Variant C's collapse:
    16 CBAMs, 32 such gates, on the main path)."""
    x = torch.randn(3, 32, 10, 12)
    cbam = CBAM(32, reduction=16, kernel_size=7, gate="unit-mean")
    with torch.no_grad():
        ca = cbam.channel_attention(x)
        refined = x * ca / ca.mean(dim=1, keepdim=True)
        sa = cbam.spatial_attention(refined)
        expected = refined * sa / sa.mean(dim=(2, 3), keepdim=True)
        torch.testing.assert_close(cbam(x), expected)
        assert (cbam(x) / x - 1).abs().max() < 0.05  # within 5 % of the identity
        # Trained weights can re-weight channels and pixels but not change the overall scale.
        cbam.channel_attention.mlp[2].weight.normal_(0.0, 3.0)
        cbam.spatial_attention.conv.weight.normal_(0.0, 3.0)
        ca = cbam.channel_attention(x)
        assert ca.std() > 0.1
        torch.testing.assert_close((ca / ca.mean(dim=1, keepdim=True)).mean(dim=1), torch.ones(3, 1, 1))
        plain = CBAM(32, reduction=16, kernel_size=7, gate="sigmoid")(x)
        assert (plain / x).abs().mean() < 0.6  # the paper's gates start near 0.5 * 0.5
    with pytest.raises(ValueError, match="gate must be one of sigmoid, unit-mean, residual"):
        CBAM(32, gate="relu")


def test_residual_gate_cbam_factors_are_bounded_and_start_near_identity() -> None:
    """gate="residual" (Variant C's default): out = x' * (1 + tanh(k_s) (s(x') - 0.5)) with
    x' = x * (1 + tanh(k_c) (c(x) - 0.5)); each factor stays in (0.5, 1.5) whatever the weights, so no gate
    can shut the main path or blow it up."""
    x = torch.randn(3, 32, 10, 12)
    cbam = CBAM(32, reduction=16, kernel_size=7, gate="residual")
    assert torch.equal(cbam.strength.detach(), torch.full((2,), 0.1))
    with torch.no_grad():
        assert (cbam(x) / x - 1).abs().max() < 0.11  # two factors within tanh(0.1) / 2 = 0.05 of 1

        def expected(strength: torch.Tensor) -> torch.Tensor:
            k = torch.tanh(strength)
            refined = x * (1 + k[0] * (cbam.channel_attention(x) - 0.5))
            return refined * (1 + k[1] * (cbam.spatial_attention(refined) - 0.5))

        torch.testing.assert_close(cbam(x), expected(cbam.strength))
        cbam.strength.fill_(50.0)
        cbam.channel_attention.mlp[2].weight.normal_(0.0, 5.0)
        out = cbam(x)
        torch.testing.assert_close(out, expected(cbam.strength))
        ratio = out / x
        assert ratio.min() > 0.25 - 1e-6 and ratio.max() < 2.25 + 1e-6  # two factors in (0.5, 1.5)


def test_branch_cbam_block_is_cbam_of_the_residual_branch_plus_shortcut() -> None:
    torch.manual_seed(0)
    block = PreActBlockWithBranchCBAM(8, 16, stride=2, reduction=4).eval()
    _randomise_bn(block)
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        branch = block.conv2(F.relu(_bn(block.conv1(F.relu(_bn(x, block.bn1))), block.bn2)))
        expected = block.cbam(branch) + block.shortcut(x)
        torch.testing.assert_close(block(x), expected)


def test_variant_c_placements_have_the_same_parameter_count() -> None:
    after = AttentionAutoencoder().count_parameters()["total"]
    branch = BranchAttentionAutoencoder().count_parameters()["total"]
    assert abs(after - branch) <= 0.01 * after


def test_variant_c_starts_close_to_variant_b_and_the_plain_gate_does_not() -> None:
    """With unit-mean gates Variant C's latent keeps the spread of Variant B's at initialisation; the
    paper's gates on the main path shrink it by orders of magnitude (the collapse the shipped model had)."""
    x = torch.rand(4, 1, 64, 64)

    def latent_std(**kw) -> float:
        torch.manual_seed(0)
        model = AttentionAutoencoder(base_channels=8, image_size=64, **kw).eval()
        with torch.no_grad():
            return model.encode(x).std().item()

    torch.manual_seed(0)
    with torch.no_grad():
        b = ResidualAutoencoder(base_channels=8, image_size=64).eval().encode(x).std().item()
    assert 0.5 * b < latent_std(gate="unit-mean") < 2 * b
    assert latent_std(gate="sigmoid") < 0.05 * b


def test_checkpoints_saved_before_the_gate_option_load_with_the_plain_gate(tmp_path) -> None:
    import json

    model = AttentionAutoencoder(base_channels=8, image_size=64, gate="sigmoid").eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["gate"] == "sigmoid"
    del config["gate"]  # as written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AttentionAutoencoder.from_pretrained(tmp_path)
    assert loaded.gate == "sigmoid"
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert AttentionAutoencoder().gate == "residual" and BranchAttentionAutoencoder().gate == "sigmoid"


@pytest.mark.parametrize(("channels", "hidden"), [(16, 1), (8, 1), (64, 4), (512, 32)])
def test_channel_attention_hidden_width_is_max_c_over_16_and_1(channels: int, hidden: int) -> None:
    ca = ChannelAttention(channels, reduction=16)
    assert ca.mlp[0].out_channels == hidden
    out = ca(torch.randn(2, channels, 4, 4))
    assert out.shape == (2, channels, 1, 1) and ((out > 0) & (out < 1)).all()


def test_single_hidden_unit_channel_attention_starts_alive() -> None:
    """A 16-channel latent gets a 1-unit MLP; its ReLU must not start dead (no gradient, constant 0.5)."""
    for seed in range(40):  # a signed (plain Kaiming) squeeze layer starts dead for ~1 in 4 of these
        torch.manual_seed(seed)
        ca = ChannelAttention(16, reduction=16)
        x = torch.randn(1, 16, 4, 4)
        ca(x).square().sum().backward()
        assert ca.mlp[0].weight.grad.abs().sum() > 0, f"dead hidden unit with seed {seed}"


def test_spatial_attention_rejects_even_kernel() -> None:
    with pytest.raises(ValueError, match="odd"):
        SpatialAttention(6)


# ------------------------------------------------------------------------------------------ full-size models


@pytest.mark.parametrize("cls", SAR_CLASSES, ids=lambda c: c.VARIANT)
def test_full_size_shapes_latent_and_output_range(cls: type) -> None:
    """At full size: (2,1,256,256) -> latent (2,16,16,16) -> output (2,1,256,256) in [0,1]."""
    model = cls(latent_channels=16, base_channels=64).eval()
    x = torch.rand(2, 1, 256, 256)
    with torch.no_grad():
        x_hat, z = model(x)
    assert x_hat.shape == x.shape
    assert z.shape == (2, 16, 16, 16)
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    assert model.get_latent_size() == (16, 16, 16)
    assert model.get_compression_ratio() == 16.0
    counts = model.count_parameters()
    assert (
        counts["encoder"] + counts["decoder"] == counts["total"] == sum(p.numel() for p in model.parameters())
    )


@pytest.mark.parametrize(
    ("cls", "target"), [(BaselineAutoencoder, 2.3e6), (ResNetAutoencoder, 5.6e6)], ids=["baseline", "resnet"]
)
def test_parameter_counts_match_seed_table(cls: type, target: float) -> None:
    total = cls().count_parameters()["total"]
    assert abs(total - target) / target < 0.10, f"{cls.__name__}: {total:,} parameters"


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize(
    "cls",
    [ResidualAutoencoder, AttentionAutoencoder, BranchAttentionAutoencoder],
    ids=["B", "C", "C-branch"],
)
def test_variant_b_and_c_structure(cls: type) -> None:
    model = cls()
    enc, dec = model.encoder, model.decoder
    assert _count(enc, PreActResidualBlock) == 8 and _count(dec, PreActResidualBlock) == 8
    assert len(enc.stages) == 4 and len(dec.stages) == 4
    stem = enc.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size) == (1, 64, (7, 7))
    enc_widths = []
    for stage in enc.stages:
        blocks = [m for m in stage.modules() if isinstance(m, PreActResidualBlock)]
        assert [b.conv1.stride for b in blocks] == [(2, 2), (1, 1)]
        enc_widths.append((blocks[0].conv1.in_channels, blocks[0].conv1.out_channels))
    assert enc_widths == [(64, 128), (128, 256), (256, 512), (512, 16)]
    dec_widths = []
    for stage in dec.stages:
        assert (
            isinstance(stage[0], nn.Upsample) and stage[0].mode == "bilinear" and stage[0].scale_factor == 2
        )
        assert stage[1].kernel_size == (1, 1)
        blocks = [m for m in stage.modules() if isinstance(m, PreActResidualBlock)]
        assert len(blocks) == 2 and all(b.conv1.stride == (1, 1) for b in blocks)
        dec_widths.append((stage[1].in_channels, blocks[-1].conv2.out_channels))
    assert dec_widths == [(16, 512), (512, 256), (256, 128), (128, 64)]
    # Final pre-activation (BN-ReLU, He et al. 2016) before the Conv7x7 head, then the Sigmoid.
    assert isinstance(dec.head[0], nn.BatchNorm2d) and isinstance(dec.head[1], nn.ReLU)
    head = dec.head[2]
    assert (head.in_channels, head.out_channels, head.kernel_size) == (64, 1, (7, 7))
    assert isinstance(dec.head[-1], nn.Sigmoid)
    n_cbam = _count(model, CBAM)
    if cls is not ResidualAutoencoder:
        assert n_cbam == 16 and _count(enc, CBAM) == 8
        if cls is AttentionAutoencoder:  # one CBAM right after every residual block
            assert _count(model, ResidualBlockWithCBAM) == 16
        else:  # one CBAM inside every residual block, on its branch
            assert _count(model, PreActBlockWithBranchCBAM) == 16
        assert {m.channel_attention.mlp[0].out_channels for m in model.modules() if isinstance(m, CBAM)} == {
            1,
            4,
            8,
            16,
            32,
        }
    else:
        assert n_cbam == 0


def test_resnet_structure_is_post_activation_with_block_and_down_per_stage() -> None:
    model = ResNetAutoencoder()
    assert _count(model, PreActResidualBlock) == 0
    for stage in model.encoder.stages:
        assert type(stage[0]) is ResidualBlock and type(stage[1]) is ResidualBlockWithDownsample
    for stage in model.decoder.stages:
        assert type(stage[0]) is ResidualBlockWithUpsample and type(stage[1]) is ResidualBlock
    assert model.encoder.stages[0][0].activate_output and not model.encoder.stages[-1][1].activate_output


def test_convs_use_kaiming_normal_fan_out_init() -> None:
    model = ResidualAutoencoder()
    conv = model.encoder.stages[2][1].conv2  # 512 -> 512, 3x3
    expected_std = math.sqrt(2.0 / (512 * 9))
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.03
    bn = model.encoder.stages[0][0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


@pytest.mark.parametrize("cls", SAR_CLASSES, ids=lambda c: c.VARIANT)
@pytest.mark.parametrize("base", [8, 64])
def test_output_sigmoid_starts_unsaturated(cls: type, base: int) -> None:
    """A saturated Sigmoid at init has no gradient, so training never moves (seen with Kaiming-ReLU heads)."""
    torch.manual_seed(0)
    model = cls(base_channels=base, image_size=64).train()
    with torch.no_grad():
        x_hat, _ = model(torch.rand(4, 1, 64, 64))
    saturated = ((x_hat < 0.01) | (x_hat > 0.99)).float().mean().item()
    assert saturated < 0.05, f"{saturated:.0%} of outputs start saturated"


# ------------------------------------------------------------------------------------------ small configs


@pytest.mark.parametrize("cls", SAR_CLASSES, ids=lambda c: c.VARIANT)
def test_gradients_reach_every_parameter(cls: type) -> None:
    model = cls(base_channels=16, image_size=64).train()
    x = torch.rand(4, 1, 64, 64)
    x_hat, z = model(x)
    assert z.shape == (4, 16, 4, 4)
    loss = F.mse_loss(x_hat, torch.rand_like(x))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert p.grad.abs().sum() > 0, f"all-zero gradient for {name}"


@pytest.mark.parametrize("cls", SAR_CLASSES, ids=lambda c: c.VARIANT)
def test_small_and_non_square_and_multichannel_inputs(cls: type) -> None:
    model = cls(**SMALL).eval()
    assert model.get_latent_size() == (16, 4, 4) and model.get_compression_ratio() == 16.0
    x = torch.rand(1, 1, 48, 80)  # fully convolutional: any multiple of 16
    with torch.no_grad():
        x_hat, z = model(x)
        torch.testing.assert_close(model.encode(x), z)
        torch.testing.assert_close(model.decode(z), x_hat)
        torch.testing.assert_close(model.reconstruct(x), x_hat)
    assert x_hat.shape == (1, 1, 48, 80) and z.shape == (1, 16, 3, 5)
    two = cls(in_channels=2, latent_channels=8, **SMALL).eval()
    assert two.get_compression_ratio() == 64 * 64 * 2 / (8 * 4 * 4)
    with torch.no_grad():
        assert two.reconstruct(torch.rand(2, 2, 64, 64)).shape == (2, 2, 64, 64)


@pytest.mark.parametrize("cls", SAR_CLASSES, ids=lambda c: c.VARIANT)
def test_bad_inputs_raise_clear_value_errors(cls: type) -> None:
    model = cls(**SMALL)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, H, W\).*got \(1, 64, 64\)"):
        model(torch.rand(1, 64, 64))
    with pytest.raises(ValueError, match=r"got \(2, 3, 64, 64\)"):
        model(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"multiples of 16, got \(1, 1, 60, 64\)"):
        model(torch.rand(1, 1, 60, 64))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="torch.Tensor"):
        model([[0.0]])
    with pytest.raises(ValueError, match=r"expected latent of shape \(B, 16, h, w\), got \(1, 8, 4, 4\)"):
        model.decode(torch.rand(1, 8, 4, 4))


@pytest.mark.parametrize("cls", SAR_CLASSES, ids=lambda c: c.VARIANT)
def test_bad_constructor_arguments(cls: type) -> None:
    with pytest.raises(ValueError, match="image_size must be a multiple of 16"):
        cls(base_channels=8, image_size=100)
    with pytest.raises(ValueError, match="base_channels must be a positive integer"):
        cls(base_channels=0)
    with pytest.raises(
        ValueError, match=rf"checkpoint is for variant 'fragment-dae', but {cls.__name__} builds"
    ):
        cls(variant="fragment-dae")


@pytest.mark.parametrize(
    "cls", [BaselineAutoencoder, AttentionAutoencoder, BranchAttentionAutoencoder], ids=lambda c: c.VARIANT
)
def test_kernel_size_must_be_a_positive_odd_integer(cls: type) -> None:
    with pytest.raises(ValueError, match="kernel_size must be odd .*, got 4"):
        cls(kernel_size=4, **SMALL)
    with pytest.raises(ValueError, match="kernel_size must be a positive integer, got 0"):
        cls(kernel_size=0, **SMALL)
    model = cls(kernel_size=3, **SMALL)
    assert model.kernel_size == 3 and model(torch.rand(1, 1, 64, 64))[0].shape == (1, 1, 64, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls", [ResidualAutoencoder, AttentionAutoencoder], ids=["B", "C"])
def test_forward_backward_on_gpu(cls: type) -> None:
    model = cls().cuda()
    x = torch.rand(2, 1, 256, 256, device="cuda")
    x_hat, z = model(x)
    F.mse_loss(x_hat, x).backward()
    assert x_hat.shape == x.shape and z.shape == (2, 16, 16, 16)
    assert all(p.grad is not None for p in model.parameters())
