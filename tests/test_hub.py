"""Hub export/push/load end to end: a smoke-trained checkpoint goes through the real huggingface_hub client
to a local fake Hub and back with identical outputs; the model card carries the run's metrics; the export
loads in a fresh process; every Hub failure has its own message; the token is never written anywhere."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_hub import FakeHub, Token, use_fake_hub
from huggingface_hub import ModelCard, constants
from PIL import Image

from models import load_pretrained
from models.fragments import FragmentAutoencoder
from trainers import cli
from trainers.hub import model_card
from trainers.hub import push as hub
from trainers.runs import checkpoints
from trainers.runs.store import RunStore
from trainers.settings import make_config
from trainers.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
# Random per session and shaped like real tokens, so a leak anywhere is found by a plain text search.
ALICE = "hf_" + secrets.token_hex(17)
ALICE_READ = "hf_" + secrets.token_hex(17)
TOKENS = (ALICE, ALICE_READ)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One fragment-dae smoke run, trained for a few steps on a few files (val metrics + both checkpoints)."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = make_config(
        "fragment-dae",
        "smoke",
        data="fragments:python,max_files=8,n=64",
        batch_size=16,
        max_steps=8,
        device="cpu",
    )
    with RunStore(runs) as store:
        result = train(cfg, store)
    assert result.status == "completed", result.reason
    return runs, result.run_id


@pytest.fixture(scope="module")
def fake_hub():
    with FakeHub({ALICE: Token("alice", orgs=("lab",)), ALICE_READ: Token("alice", role="read")}) as server:
        server.add_repo("bob/their-model", owner="bob", files={"README.md": b"bob's model\n"})
        server.add_repo("bob/not-a-checkpoint", owner="bob", files={"config.json": b'{"hidden_size": 8}'})
        yield server


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch):
    use_fake_hub(monkeypatch, fake_hub, tmp_path)
    return fake_hub


def _checkpoint(runs: Path, run_id: str, kind: str = "best") -> Path:
    folder = checkpoints.checkpoint_path(runs / run_id, kind)
    assert folder is not None
    return folder


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.rand(4, 1, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------- export
def test_export_writes_loadable_folder_with_card_of_the_run(trained, tmp_path):
    runs, run_id = trained
    folder = hub.export_checkpoint(run_id, runs, tmp_path / "export", kind="best")
    ckpt = _checkpoint(runs, run_id)
    assert sorted(p.name for p in folder.iterdir()) == sorted(hub.EXPORT_FILES)
    assert (folder / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert json.loads((folder / "config.json").read_text()) == json.loads((ckpt / "config.json").read_text())

    # The metadata names no Hub dataset (no source of the studio is one: `datasets` and model-index's
    # dataset.type take Hub dataset ids only); the card's table holds the metrics at the checkpoint's step.
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "autoencoder-comparison-studio" and card.data.license == "mit"
    assert {"fragments", "fragment-dae", "autoencoder"} <= set(card.data.tags)
    meta = card.data.to_dict()
    assert "datasets" not in meta and "model-index" not in meta and card.data.eval_results is None
    # No Hub pipeline repairs file fragments: there is no pipeline_tag.
    assert card.data.pipeline_tag is None
    step = checkpoints.read_trainer_state(ckpt)["step"]
    with RunStore(runs) as store:
        rows = [r for r in store.metrics_after(0, run_ids=[run_id])[0] if r.split == "val" and r.step == step]
        best = store.best_metrics(run_id)
    logged = {r.name: r.value for r in rows}
    assert {"loss", "accuracy", "identity_accuracy"} <= set(logged)
    tabled = {line.split("|")[1].strip() for line in card.text.splitlines() if line.startswith("| ")}
    assert set(logged) <= tabled
    assert "**Data:** `fragments:python,max_files=8,n=64` (files of a Python installation" in card.text
    table_row = next(line for line in card.text.splitlines() if line.startswith("| loss |"))
    assert table_row.split("|")[2].strip() == f"{logged['loss']:.4g}"
    assert table_row.split("|")[3].strip() == f"{best['loss']:.4g}"
    assert "lower" in table_row
    assert f"run `{run_id}`" in card.text and f"step {step}" in card.text
    assert "loss_curve.png" not in card.text  # the Hub's metrics tab shows the curves (TensorBoard files)
    assert "![example reconstructions](examples.png)" in card.text
    assert "tensorboard --logdir runs" in card.text

    # The run's TensorBoard event file, with every logged train/val point at its step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert [p.name for p in (folder / "runs" / run_id).iterdir()] == [f"events.out.tfevents.{run_id}"]
    acc = EventAccumulator(str(folder / "runs" / run_id), size_guidance={"scalars": 0})
    acc.Reload()
    with RunStore(runs) as store:
        for split in ("train", "val"):
            series = store.metric_series(run_id, "loss", split)
            assert [(e.step, e.value) for e in acc.Scalars(f"{split}/loss")] == [
                (s, pytest.approx(v, rel=1e-6)) for s, v in series
            ]
    examples = Image.open(folder / "examples.png")
    assert examples.size[0] >= 600 and examples.size[1] >= 300


def test_export_loads_in_a_fresh_process(trained, hub_env, tmp_path):
    """The exported folder, and the pushed repo through HF_ENDPOINT as a user would set it, load in a new
    interpreter (nothing of this process's state) and compute what the run's checkpoint computes."""
    runs, run_id = trained
    folder = hub.export_checkpoint(run_id, runs, tmp_path / "fresh", kind="last")
    hub.push_checkpoint(run_id, runs, "alice/fresh", token=ALICE, kind="last")
    code = (
        "import sys, numpy as np, torch\n"
        "from models import load_pretrained\n"
        "x = torch.rand(4, 1, 512, generator=torch.Generator().manual_seed(0))\n"
        "for source, out in ((sys.argv[1], sys.argv[2]), ('alice/fresh', sys.argv[3])):\n"
        "    model = load_pretrained(source)\n"
        "    with torch.no_grad():\n"
        "        np.save(out, model(x).numpy())\n"
        "    print(type(model).__name__, model.VARIANT)\n"
    )
    outs = [tmp_path / "folder.npy", tmp_path / "hub.npy"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # HF_ENDPOINT, HF_HOME, HF_HUB_CACHE set by hub_env
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder), *map(str, outs)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["FragmentAutoencoder", "fragment-dae"] * 2
    expected = _outputs(load_pretrained(_checkpoint(runs, run_id, "last")))
    for out in outs:
        torch.testing.assert_close(torch.from_numpy(np.load(out)), expected, rtol=0, atol=1e-6)


def test_export_refuses_bad_input_and_changes_nothing(trained, tmp_path):
    runs, run_id = trained
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds other files"):
        hub.export_checkpoint(run_id, runs, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    with pytest.raises(FileNotFoundError, match="no runs database"):
        hub.export_checkpoint(run_id, tmp_path / "no-runs-here", tmp_path / "x")
    assert not (tmp_path / "no-runs-here").exists() and not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError, match="no run with id"):
        hub.export_checkpoint("20200101-000000-nope-0000", runs, tmp_path / "x")
    with pytest.raises(ValueError, match="kind must be one of best, last"):
        hub.export_checkpoint(run_id, runs, tmp_path / "x", kind="worst")
    with pytest.raises(ValueError, match="no export folder"):
        hub.export_checkpoint(run_id, runs, "  ")
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"1")
    with pytest.raises(ValueError, match="not a folder"):
        hub.export_checkpoint(run_id, runs, a_file)
    assert not (tmp_path / "x").exists()
    # A run without checkpoints (queued, never started) says so.
    with RunStore(runs) as store:
        queued = store.create_run("fragment-dae", "fragments", {"variant": "fragment-dae"})
    with pytest.raises(FileNotFoundError, match="has no 'best' checkpoint; it has none yet"):
        hub.export_checkpoint(queued, runs, tmp_path / "x")
    # Exporting again into an earlier export replaces it.
    first = hub.export_checkpoint(run_id, runs, tmp_path / "again")
    (first / "README.md").write_text("stale")
    (first / "loss_curve.png").write_bytes(b"an earlier version's chart")
    (first / "runs" / run_id / "events.out.tfevents.stale").write_bytes(b"")
    hub.export_checkpoint(run_id, runs, tmp_path / "again")
    assert (first / "README.md").read_text().startswith("---")
    assert sorted(p.name for p in first.iterdir()) == sorted(hub.EXPORT_FILES)
    assert [p.name for p in (first / "runs" / run_id).iterdir()] == [f"events.out.tfevents.{run_id}"]


# ----------------------------------------------------------------------------------------------- push
def test_push_end_to_end_and_download_back_identical(trained, hub_env, tmp_path):
    runs, run_id = trained
    url = hub.push_checkpoint(run_id, runs, "alice/frag-dae", token=ALICE, commit_message="first push")
    assert url.startswith(f"{hub_env.url}/alice/frag-dae/commit/")
    repo = hub_env.repos["alice/frag-dae"]
    assert repo.owner == "alice" and not repo.private
    assert repo.messages[repo.branches["main"]] == "first push"
    files = hub_env.files("alice/frag-dae")
    ckpt = _checkpoint(runs, run_id)
    assert set(hub.EXPORT_FILES) - {"runs"} <= set(files)
    assert f"runs/{run_id}/events.out.tfevents.{run_id}" in files  # the Hub's metrics tab reads it
    assert files["model.safetensors"] == (ckpt / "model.safetensors").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert 'load_pretrained("alice/frag-dae")' in card.text
    assert card.data.model_name == "alice/frag-dae"

    # Back through from_pretrained (the mixin) and through the studio's loader: identical outputs.
    expected = _outputs(load_pretrained(ckpt))
    model = FragmentAutoencoder.from_pretrained("alice/frag-dae", cache_dir=tmp_path / "c1")
    torch.testing.assert_close(_outputs(model), expected, rtol=0, atol=0)
    label, folder = hub.load_from_hub_or_folder("alice/frag-dae", cache_dir=tmp_path / "c2")
    assert label == "hub alice/frag-dae · fragment-dae"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    torch.testing.assert_close(_outputs(load_pretrained(folder)), expected, rtol=0, atol=0)

    # A second push of the same checkpoint adds a commit on top; the URL names the new commit.
    url2 = hub.push_checkpoint(run_id, runs, f"{hub_env.url}/alice/frag-dae", token=ALICE, kind="last")
    assert url2 != url and repo.branches["main"] in url2
    assert (
        hub_env.files("alice/frag-dae")["model.safetensors"]
        == (_checkpoint(runs, run_id, "last") / "model.safetensors").read_bytes()
    )


def test_push_private_branch_and_default_namespace(trained, hub_env, tmp_path, monkeypatch):
    runs, run_id = trained
    url = hub.push_checkpoint(run_id, runs, "frag-private", token=ALICE, private=True, branch="exp/v1")
    assert "/alice/frag-private/commit/" in url  # a bare name goes to the token's user
    repo = hub_env.repos["alice/frag-private"]
    assert repo.private and set(repo.branches) == {"main", "exp/v1"}
    assert set(hub_env.files("alice/frag-private", "main")) == {".gitattributes"}
    assert "model.safetensors" in hub_env.files("alice/frag-private", "exp/v1")

    # Private: invisible without the token, loadable with it, from the branch.
    with pytest.raises(FileNotFoundError, match="not found, or it is private"):
        hub.load_from_hub_or_folder("alice/frag-private@exp/v1", cache_dir=tmp_path / "c")
    label, folder = hub.load_from_hub_or_folder(
        "alice/frag-private@exp/v1", cache_dir=tmp_path / "c", token=ALICE
    )
    assert label == "hub alice/frag-private@exp/v1 · fragment-dae"
    assert load_pretrained(folder).VARIANT == "fragment-dae"

    # An org the user belongs to; the token from HF_TOKEN when none is passed.
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert "/lab/frag/commit/" in hub.push_checkpoint(run_id, runs, "lab/frag")


@pytest.mark.parametrize(
    ("repo_id", "token", "error", "pattern"),
    [
        ("alice/m", "hf_" + "x" * 34, PermissionError, r"rejected the token \(401 Unauthorized\)"),
        ("alice/m", None, PermissionError, "no Hugging Face token.*HF_TOKEN"),
        ("alice/m", ALICE_READ, PermissionError, "read-only"),
        ("bob/their-model", ALICE, PermissionError, r"namespace 'bob'.*'alice' has no write access.*403"),
        ("carol/new-model", ALICE, PermissionError, r"namespace 'carol'.*'alice' has no write access.*403"),
    ],
    ids=[
        "401-bad-token",
        "no-token",
        "403-read-only-token",
        "403-repo-of-another-owner",
        "403-foreign-namespace",
    ],
)
def test_push_hub_errors_have_their_message(trained, hub_env, repo_id, token, error, pattern):
    runs, run_id = trained
    before = {rid: dict(r.branches) for rid, r in hub_env.repos.items()}
    with pytest.raises(error, match=pattern):
        hub.push_checkpoint(run_id, runs, repo_id, token=token)
    assert {rid: dict(r.branches) for rid, r in hub_env.repos.items()} == before  # nothing was committed


def test_push_without_network_or_offline(trained, hub_env, monkeypatch):
    runs, run_id = trained
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(
        ConnectionError, match=r"cannot be reached \(ConnectError.*Check the network connection"
    ):
        hub.push_checkpoint(run_id, runs, "alice/m", token=ALICE)
    monkeypatch.setattr(constants, "ENDPOINT", "http://no-such-host.invalid")
    with pytest.raises(ConnectionError, match="cannot be reached"):
        hub.push_checkpoint(run_id, runs, "alice/m", token=ALICE)
    monkeypatch.setattr(constants, "ENDPOINT", hub_env.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    seen = len(hub_env.requests)
    with pytest.raises(ConnectionError, match="offline mode is on"):
        hub.push_checkpoint(run_id, runs, "alice/m", token=ALICE)
    assert len(hub_env.requests) == seen


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"repo_id": "not a repo!"}, "invalid Hub repo id"),
        ({"repo_id": "a/b/c"}, "invalid Hub repo id"),
        ({"repo_id": "/etc"}, "invalid Hub repo id '/etc'"),  # was silently pushed to 'etc'
        ({"repo_id": "a" * 500}, r"invalid Hub repo id 'a{77}\.\.\.'"),
        ({"repo_id": "alice/m", "source_url": "not a url"}, "invalid source URL"),
        ({"repo_id": "alice/m", "source_url": 'https://x.org/a"; rm -rf ~'}, "invalid source URL"),
        ({"repo_id": "  "}, "no Hub repo id"),
        ({"repo_id": "alice/m", "branch": "bad branch"}, "invalid branch name"),
        ({"repo_id": "alice/m", "branch": "../x"}, "invalid branch name"),
        ({"repo_id": "alice/m", "kind": "worst"}, "kind must be one of"),
    ],
)
def test_push_rejects_malformed_input_before_any_request(trained, hub_env, kwargs, pattern):
    runs, run_id = trained
    seen = len(hub_env.requests)
    with pytest.raises(ValueError, match=pattern):
        hub.push_checkpoint(run_id, runs, token=ALICE, **kwargs)
    assert len(hub_env.requests) == seen


@pytest.mark.parametrize(
    ("text", "allow_revision", "expected"),
    [
        (" alice/m ", False, ("alice/m", None)),
        ("https://huggingface.co/alice/m", False, ("alice/m", None)),
        ("alice/m@exp/v1", True, ("alice/m", "exp/v1")),
        ("https://huggingface.co/alice/m/tree/dev", True, ("alice/m", "dev")),
        ("m", False, ("m", None)),
    ],
)
def test_repo_id_forms(text, allow_revision, expected):
    assert hub.parse_repo_id(text, allow_revision=allow_revision) == expected
    with pytest.raises(ValueError, match="invalid Hub repo id"):
        hub.parse_repo_id("alice/m@dev")  # a revision only where one makes sense (loading)


# ----------------------------------------------------------------------------------------------- load
def test_load_from_folder_and_its_errors(trained, hub_env, tmp_path, monkeypatch):
    runs, run_id = trained
    ckpt = _checkpoint(runs, run_id)
    label, folder = hub.load_from_hub_or_folder(str(ckpt))
    assert folder == ckpt and label == f"folder {ckpt.name} · fragment-dae"
    assert hub.domain_tab(folder) == ("fragment-dae", "fragments", "Fragments")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.load_from_hub_or_folder(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a checkpoint this studio can load.*config.json"):
        hub.load_from_hub_or_folder(str(empty))
    with pytest.raises(ValueError, match="nothing to load"):
        hub.load_from_hub_or_folder("")
    with pytest.raises(FileNotFoundError, match="'alice/does-not-exist' not found"):
        hub.load_from_hub_or_folder("alice/does-not-exist", cache_dir=tmp_path / "c", token=ALICE)
    with pytest.raises(ValueError, match="not a checkpoint this studio can load"):
        hub.load_from_hub_or_folder("bob/not-a-checkpoint", cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="branch or revision not found"):
        hub.load_from_hub_or_folder("bob/their-model@nope", cache_dir=tmp_path / "c")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ConnectionError, match="cannot be reached"):
        hub.load_from_hub_or_folder("bob/their-model", cache_dir=tmp_path / "c3")


def test_load_offline_uses_the_cache_or_says_offline(trained, hub_env, tmp_path, monkeypatch):
    runs, run_id = trained
    hub.push_checkpoint(run_id, runs, "alice/cached", token=ALICE)
    _, online = hub.load_from_hub_or_folder("alice/cached", cache_dir=tmp_path / "c")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _, offline = hub.load_from_hub_or_folder("alice/cached", cache_dir=tmp_path / "c")
    assert offline == online
    with pytest.raises(ConnectionError, match="offline mode is on.*not in the local cache"):
        hub.load_from_hub_or_folder("alice/never-fetched", cache_dir=tmp_path / "c")


def test_source_url_defaults_to_the_space_else_the_projects_source():
    import tomllib

    from trainers.hub import source

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    assert source.project_source_url() == declared
    assert source.default_source_url({}) == declared
    space = source.default_source_url({"SPACE_ID": "alice/studio"})
    assert space == f"{constants.ENDPOINT.rstrip('/')}/spaces/alice/studio"
    assert source.resolve_source_url("  https://x.org/r  ") == "https://x.org/r"
    assert source.pip_requirement("git+ssh://git@x.org/r") == "git+ssh://git@x.org/r"
    for bad in ("x.org/r", "https://x.org/a b", "javascript://x", "https://" + "a" * 600):
        with pytest.raises(ValueError, match="invalid source URL"):
            source.check_source_url(bad)


def test_load_refuses_a_very_long_name_with_a_message(hub_env):
    """A 500-character name answered "[Errno 36] File name too long" (the folder check asked the OS)."""
    with pytest.raises(ValueError, match="invalid Hub repo id") as err:
        hub.load_from_hub_or_folder("a" * 500)
    assert "Errno" not in str(err.value) and len(str(err.value)) < 300
    with pytest.raises(FileNotFoundError, match="checkpoint folder '/b+\\.\\.\\.' does not exist"):
        hub.load_from_hub_or_folder("/" + "b" * 500)


def test_the_cards_install_line_installs_the_studio_from_its_source(trained, tmp_path):
    """The card said `pip install autoencoder-comparison-studio`, which no index has. Its install line, run as
    written against a git repository of this checkout (pip's VCS support, a file:// URL instead of a host),
    installs classes that load the exported checkpoint in a process that cannot see the checkout."""
    runs, run_id = trained
    repo = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md", "docs/package.md"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    for name in ("models", "trainers", "studio", "assets"):
        shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "source"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=120)

    folder = hub.export_checkpoint(run_id, runs, tmp_path / "export", source_url=repo.as_uri())
    card = (folder / "README.md").read_text()
    assert "pip install autoencoder-comparison-studio" not in card
    (line,) = [line for line in card.splitlines() if line.startswith('pip install "git+')]
    requirement = line.removeprefix("pip install ").strip('"')
    assert requirement == f"git+{repo.as_uri()}"
    target = tmp_path / "installed"
    # As written, but with the dependencies this interpreter already has (no index is reachable here).
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*pip, "--target", str(target), requirement], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    code = (
        "import sys, torch, models\n"
        "from models import load_pretrained\n"
        "x = torch.rand(4, 1, 512, generator=torch.Generator().manual_seed(0))\n"
        "with torch.no_grad():\n"
        "    torch.save(load_pretrained(sys.argv[1])(x), sys.argv[2])\n"
        "print(models.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), PYTHONSAFEPATH="1")
    out = tmp_path / "out.pt"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.split()[-1]).is_relative_to(target)
    x = torch.rand(4, 1, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_pretrained(_checkpoint(runs, run_id))(x)
    torch.testing.assert_close(torch.load(out), expected)


# ------------------------------------------------------------------------------------------------ CLI
def _args(run_id: str, runs: Path, **kw) -> list[str]:
    argv = ["push", run_id, "--runs-dir", str(runs)]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def test_cli_push_export_and_errors(trained, hub_env, tmp_path, monkeypatch, capsys):
    runs, run_id = trained
    assert cli.main(_args(run_id, runs, repo_id="alice/frag")) == 2
    assert "error: cannot push to 'alice/frag': no Hugging Face token" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert (
        cli.main(_args(run_id, runs, repo_id="alice/cli-frag", branch="dev", commit_message="from cli")) == 0
    )
    out = capsys.readouterr().out
    assert f"pushed run {run_id} (best checkpoint): {hub_env.url}/alice/cli-frag/commit/" in out
    repo = hub_env.repos["alice/cli-frag"]
    assert repo.messages[repo.branches["dev"]] == "from cli"

    assert cli.main(_args(run_id, runs, to_folder=tmp_path / "cli-export", kind="last")) == 0
    assert "exported run" in capsys.readouterr().out
    assert (tmp_path / "cli-export" / "model.safetensors").is_file()
    source = "https://git.example.org/me/autoencoder-comparison-studio"
    assert cli.main(_args(run_id, runs, to_folder=tmp_path / "cli-source", source_url=source)) == 0
    capsys.readouterr()
    assert f'pip install "git+{source}"' in (tmp_path / "cli-source" / "README.md").read_text()

    for argv, message in [
        (_args(run_id, runs), "--repo-id OWNER/NAME is required"),
        (_args(run_id, runs, repo_id="alice/x", to_folder=tmp_path / "y"), "either --repo-id"),
        (_args(run_id, runs, to_folder=tmp_path / "y", private=True), "--private applies to a Hub push"),
        (_args(run_id, runs, repo_id="bob/their-model"), "no write access"),
        (_args(run_id, runs, repo_id="/etc"), "invalid Hub repo id '/etc'"),
        (_args(run_id, runs, repo_id="alice/x", source_url="ftp://x"), "invalid source URL"),
    ]:
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    args = argparse.Namespace(
        run_id=run_id,
        repo_id="alice/x",
        to_folder=None,
        private=False,
        branch=None,
        commit_message=None,
        kind="best",
        runs_dir=str(runs),
    )
    assert hub.cli_push(args) == 2
    assert "error: cannot push to 'alice/x': the Hugging Face Hub at" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- token hygiene
def test_token_is_never_written_or_logged(trained, hub_env, tmp_path, monkeypatch, capfd, caplog):
    """Push (ok and failing), export, load and the CLI with debug logging on; then search everything."""
    runs, run_id = trained
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # curl-like request lines in the debug log
    hub.push_checkpoint(run_id, runs, "alice/hygiene", token=ALICE, branch="b1")
    for repo_id, token in [("bob/their-model", ALICE), ("alice/m", ALICE_READ), ("alice/m", ALICE + "x")]:
        with pytest.raises(PermissionError) as info:
            hub.push_checkpoint(run_id, runs, repo_id, token=token)
        assert not any(t in str(info.value) for t in TOKENS)
    hub.load_from_hub_or_folder("alice/hygiene@b1", token=ALICE)
    export = hub.export_checkpoint(run_id, runs, tmp_path / "hygiene-export")
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.main(_args(run_id, runs, repo_id="alice/hygiene-cli")) == 0

    captured = capfd.readouterr()
    texts = {"stdout": captured.out, "stderr": captured.err, "log": caplog.text}
    for where, text in texts.items():
        assert not any(t in text for t in TOKENS), f"token found in {where}"
    scanned = 0
    # Everything this session wrote: every test's runs, exports, download caches and hf_xet logs.
    assert export.is_relative_to(tmp_path) and Path(constants.HF_HUB_CACHE).is_relative_to(tmp_path)
    # Links are not followed and unreadable folders skipped: other tests leave such things on purpose (a
    # link to /proc/1/cwd, a folder that cannot be listed), and nothing of ours is only behind a link.
    for root in {runs.parent, tmp_path.parent}:
        for folder, _, names in os.walk(root, followlinks=False):
            for path in (Path(folder) / name for name in names):
                if path.is_symlink() or not path.is_file() or path.stat().st_size >= 50_000_000:
                    continue
                data = path.read_bytes()
                assert not any(t.encode() in data for t in TOKENS), f"token found in {path}"
                scanned += 1
    for repo_id in ("alice/hygiene", "alice/hygiene-cli"):
        for revision in hub_env.repos[repo_id].branches:
            for name, data in hub_env.files(repo_id, revision).items():
                assert not any(t.encode() in data for t in TOKENS), f"token pushed in {repo_id}/{name}"
    assert scanned > 10  # the run database, checkpoints, the export and the download cache were searched
    with RunStore(runs) as store:
        assert not any(t in json.dumps(r.config) for r in store.list_runs() for t in TOKENS)


# ---------------------------------------------------------------------------------------- model card
def test_chart_ticks_log_axis_and_missing_values():
    assert model_card._nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert model_card._nice_ticks(3.0, 97.0) == pytest.approx([20.0, 40.0, 60.0, 80.0])
    colour = np.array(model_card.SERIES_COLOURS[0])

    def drawn(image: Image.Image) -> int:
        return int((np.abs(np.asarray(image.convert("RGB")) - colour).sum(-1) < 30).sum())

    steps = list(range(1, 101))
    decaying = model_card.render_chart({"train/loss": [(s, 10.0 / s**2) for s in steps]}, "t", y_label="loss")
    assert decaying.size == (900, 500) and drawn(decaying) > 300
    # The automatic log axis puts 10/s^2 at s=10 (0.1, two decades below the start) mid-height; a linear
    # axis squashes it to the bottom. Plot area: x 90..876 for steps 1..100, y 56..436.
    column = round(90 + (10 - 1) / 99 * (876 - 90))

    def row_of_step_10(image: Image.Image) -> float:
        pixels = np.abs(np.asarray(image.convert("RGB")) - colour).sum(-1) < 30
        rows = np.nonzero(pixels[:, column - 1 : column + 2].any(axis=1))[0]
        assert rows.size
        return float(rows.mean())

    assert 56 + 0.3 * 380 < row_of_step_10(decaying) < 56 + 0.7 * 380
    linear = model_card.render_chart({"train/loss": [(s, 10.0 / s**2) for s in steps]}, "t", log_y=False)
    assert row_of_step_10(linear) > 56 + 0.9 * 380
    only_nan = model_card.render_chart({"train/loss": [(1, math.nan), (2, math.inf)]}, "t")
    assert drawn(only_nan) == 0
    assert model_card.lower_is_better("broken_fraction") and model_card.lower_is_better("val_loss")
    assert not model_card.lower_is_better("accuracy")
