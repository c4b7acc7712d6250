"""Variant table, create_model, and checkpoint save/load (local folders and an offline Hub cache)."""

import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file, save_file
from torch import nn

from models import VARIANTS, create_model, load_pretrained
from models.audio import ConvVAE, MelConvVAE
from models.fragments import ByteFragmentAutoencoder, FragmentAutoencoder
from models.sar import (
    AttentionAutoencoder,
    BaselineAutoencoder,
    BranchAttentionAutoencoder,
    ResidualAutoencoder,
    ResNetAutoencoder,
)

VARIANT_TABLE = [
    ("sar-baseline", "sar", BaselineAutoencoder),
    ("sar-resnet", "sar", ResNetAutoencoder),
    ("sar-residual", "sar", ResidualAutoencoder),
    ("sar-attention", "sar", AttentionAutoencoder),
    ("sar-attention-branch", "sar", BranchAttentionAutoencoder),
    ("audio-vae-mel", "audio", MelConvVAE),
    ("audio-vae", "audio", ConvVAE),
    ("fragment-dae", "fragments", FragmentAutoencoder),
    ("fragment-dae-bytes", "fragments", ByteFragmentAutoencoder),
]
NAMES = [row[0] for row in VARIANT_TABLE]
# Small but non-default configs: the round trip must restore them from config.json, not from defaults.
SMALL = {
    "sar-baseline": {"base_channels": 8, "image_size": 64, "latent_channels": 8},
    "sar-resnet": {"base_channels": 8, "image_size": 64},
    "sar-residual": {"base_channels": 8, "image_size": 64},
    "sar-attention": {"base_channels": 8, "image_size": 64, "reduction": 4},
    "sar-attention-branch": {"base_channels": 8, "image_size": 64, "reduction": 4, "gate": "unit-mean"},
    "audio-vae-mel": {"latent_dim": 8, "n_mels": 32, "n_frames": 20, "widths": (8, 16, 32, 64)},
    "audio-vae": {"latent_dim": 16, "n_mels": 32, "n_frames": 21, "widths": (8, 16, 32, 64, 128)},
    "fragment-dae": {"channels": (8, 16, 32)},
    "fragment-dae-bytes": {"channels": (8, 16, 32), "head_channels": 16},
}
PREPROCESSING = {"method": "log-minmax", "low": -3.25, "high": 2.5, "looks": 4, "clip": [0.01, 99.9]}


pytestmark = pytest.mark.usefixtures("seeded", "single_thread")


def _example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    if model.DOMAIN == "sar":
        return torch.rand(batch, model.in_channels, model.image_size, model.image_size)
    if model.DOMAIN == "audio":
        return torch.rand(batch, *model.input_shape)
    return torch.rand(batch, 1, model.fragment_size)


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every deterministic output of a model in eval mode."""
    with torch.no_grad():
        if model.DOMAIN == "audio":
            return [model.reconstruct(x), *model.encode(x)]
        out = model(x)
        return list(out) if isinstance(out, tuple) else [out, model.reconstruct(x)]


def _trained_checkpoint(name: str, folder: Path) -> nn.Module:
    """Save a small model whose BatchNorm statistics moved away from their initial values."""
    model = create_model(name, preprocessing=PREPROCESSING, **SMALL[name])
    model.train()
    with torch.no_grad():
        model(_example_input(model, 4))  # updates running stats, so buffers must round-trip too
    model.eval()
    model.save_pretrained(folder)
    return model


# ------------------------------------------------------------------------------------------ table


def test_variants_follow_the_variant_table_in_order() -> None:
    assert list(VARIANTS) == NAMES
    for name, domain, cls in VARIANT_TABLE:
        info = VARIANTS[name]
        assert (info.name, info.domain, info.cls) == (name, domain, cls)
        assert name == cls.VARIANT and domain == cls.DOMAIN
        assert info.description and "\n" not in info.description
        params = inspect.signature(cls.__init__).parameters
        # None: the class's own variant (the SAR models share one constructor body, models.sar._build).
        assert params["variant"].default in (name, None) and params["preprocessing"].default is None
        expected = {k: p.default for k, p in params.items() if k not in ("self", "variant", "preprocessing")}
        assert info.default_config == expected
        assert issubclass(cls, nn.Module) and issubclass(cls, PyTorchModelHubMixin)
    with pytest.raises(AttributeError):
        VARIANTS["fragment-dae"].name = "other"  # frozen


def test_model_cards_carry_library_license_and_domain_tags() -> None:
    card = create_model("fragment-dae").generate_model_card()
    assert card.data.library_name == "autoencoder-comparison-studio"
    assert card.data.license == "mit"
    assert {"file-fragments", "fragment-dae", "pytorch_model_hub_mixin"} <= set(card.data.tags)


@pytest.mark.parametrize("name", NAMES)
def test_create_model_builds_every_variant_at_its_defaults(name: str) -> None:
    model = create_model(name)
    info = VARIANTS[name]
    assert type(model) is info.cls and model.variant == name and model.preprocessing == {}
    counts = model.count_parameters()
    assert counts["total"] == sum(p.numel() for p in model.parameters()) > 0
    assert counts["encoder"] + counts["decoder"] == counts["total"]
    assert model._hub_mixin_config == {**info.default_config, "variant": name, "preprocessing": None}


def test_create_model_applies_overrides() -> None:
    model = create_model("sar-residual", base_channels=8, image_size=64, preprocessing={"a": 1})
    assert (
        model.base_channels == 8 and model.get_latent_size() == (16, 4, 4) and model.preprocessing == {"a": 1}
    )


def test_create_model_rejects_unknown_names_and_options() -> None:
    with pytest.raises(
        ValueError, match="unknown variant 'sar-vit'; known variants: sar-baseline, sar-resnet"
    ) as e:
        create_model("sar-vit")
    assert all(name in str(e.value) for name in NAMES)
    with pytest.raises(ValueError, match="unknown variant None"):
        create_model(None)
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) widht for variant 'audio-vae'; valid options: latent_dim"
    ):
        create_model("audio-vae", widht=(1, 2))
    with pytest.raises(ValueError, match="valid options: .*fragment_size.*preprocessing"):
        create_model("fragment-dae", variant="sar-baseline")


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip_gives_identical_outputs(name: str, tmp_path: Path) -> None:
    model = _trained_checkpoint(name, tmp_path)
    # No README: the one model card is written at export (trainers.hub.model_card), not by the hub mixin.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["variant"] == name and config["preprocessing"] == PREPROCESSING
    x = _example_input(model)
    expected = _outputs(model, x)
    for loaded in (
        VARIANTS[name].cls.from_pretrained(tmp_path),
        load_pretrained(tmp_path, expected_variant=name),
    ):
        assert type(loaded) is type(model) and not loaded.training
        assert loaded.preprocessing == PREPROCESSING
        for got, want in zip(_outputs(loaded, x), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(a, b), key
    by_domain = load_pretrained(str(tmp_path), expected_domain=VARIANTS[name].domain)
    assert type(by_domain) is type(model)


def test_preprocessing_set_after_construction_is_saved(tmp_path: Path) -> None:
    model = create_model("fragment-dae", **SMALL["fragment-dae"])
    model.preprocessing = {"fragment_size": 512, "scale": 255}
    model.save_pretrained(tmp_path)
    assert load_pretrained(tmp_path).preprocessing == {"fragment_size": 512, "scale": 255}


def test_non_json_preprocessing_is_rejected() -> None:
    with pytest.raises(ValueError, match="JSON"):
        create_model("fragment-dae", preprocessing={"mean": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="JSON"):
        create_model("fragment-dae", preprocessing={"mean": float("nan")})
    with pytest.raises(ValueError, match="preprocessing must be a dict or None"):
        create_model("fragment-dae", preprocessing=[1, 2])


# ------------------------------------------------------------------------------------------ wrong variants


@pytest.mark.parametrize("index", range(len(NAMES)))
def test_loading_a_checkpoint_as_another_variant_fails_clearly(index: int, tmp_path: Path) -> None:
    saved, domain, _ = VARIANT_TABLE[index]
    other, _, other_cls = VARIANT_TABLE[(index + 3) % len(VARIANT_TABLE)]
    _trained_checkpoint(saved, tmp_path)
    message = f"checkpoint is for variant '{saved}', but {other_cls.__name__} builds '{other}'"
    with pytest.raises(ValueError, match=message):
        other_cls.from_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=f"checkpoint is a '{saved}' \\({domain}\\) model; this view needs a '{other}'"
    ):
        load_pretrained(tmp_path, expected_variant=other)


def test_domain_mismatch_message(tmp_path: Path) -> None:
    _trained_checkpoint("fragment-dae", tmp_path)
    with pytest.raises(ValueError) as e:
        load_pretrained(tmp_path, expected_domain="sar")
    assert str(e.value) == "checkpoint is a 'fragment-dae' (fragments) model; this view needs a SAR model"
    with pytest.raises(ValueError, match="this view needs an audio model"):
        load_pretrained(tmp_path, expected_domain="audio")
    with pytest.raises(ValueError, match="unknown domain 'images'"):
        load_pretrained(tmp_path, expected_domain="images")
    with pytest.raises(ValueError, match="unknown variant 'fragment'"):
        load_pretrained(tmp_path, expected_variant="fragment")


# ------------------------------------------------------------------------------------------ bad checkpoints


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    _trained_checkpoint("sar-baseline", folder)
    return folder


def test_missing_folder_config_or_weights(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "no-such-run" / "best")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(checkpoint / "config.json")  # a file, not a folder
    (checkpoint / "config.json").rename(tmp_path / "moved.json")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_pretrained(checkpoint)
    (tmp_path / "moved.json").rename(checkpoint / "config.json")
    torch.save(load_file(checkpoint / "model.safetensors"), checkpoint / "pytorch_model.bin")
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_pretrained(checkpoint)
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        BaselineAutoencoder.from_pretrained(checkpoint)  # never falls back to the pickle file


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"base_channels": 8}', "names no known variant \\(variant=None\\); known variants: sar-baseline"),
        ('{"variant": "sar-vit"}', "names no known variant \\(variant='sar-vit'\\)"),
    ],
)
def test_bad_config_json(checkpoint: Path, text: str, match: str) -> None:
    (checkpoint / "config.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_pretrained(checkpoint)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"base_channels": 16}, "do not fit BaselineAutoencoder"),  # a valid model, other weights
        ({"image_size": 100}, "image_size must be a multiple of 16"),  # no valid model
    ],
)
def test_config_values_that_cannot_load_are_rejected(checkpoint: Path, change: dict, match: str) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=match):
        load_pretrained(checkpoint)


def test_weights_that_do_not_fit_the_config_are_rejected(checkpoint: Path) -> None:
    weights = load_file(checkpoint / "model.safetensors")
    del weights["encoder.layers.0.weight"]
    save_file(weights, checkpoint / "model.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained(checkpoint)
    (checkpoint / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained(checkpoint)


# ------------------------------------------------------------------------------------------ Hub ids


def _fake_hub_cache(cache: Path, repo_id: str, files_from: Path) -> None:
    """Lay out a huggingface_hub cache entry so a repo id resolves offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(files_from / name, snapshot / name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_repo_id_loads_through_the_hub_cache(checkpoint: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub-cache"
    _fake_hub_cache(cache, "someone/sar-baseline-demo", checkpoint)
    model = load_pretrained(
        "someone/sar-baseline-demo", expected_domain="sar", cache_dir=cache, local_files_only=True
    )
    reference = BaselineAutoencoder.from_pretrained(checkpoint)
    x = _example_input(reference)
    torch.testing.assert_close(_outputs(model, x), _outputs(reference, x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="this view needs a 'audio-vae' model"):
        load_pretrained("someone/sar-baseline-demo", "audio-vae", cache_dir=cache, local_files_only=True)


def test_hub_repo_id_that_cannot_be_fetched(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="could not fetch config.json of 'someone/missing-repo'"):
        load_pretrained("someone/missing-repo", cache_dir=tmp_path, local_files_only=True)
