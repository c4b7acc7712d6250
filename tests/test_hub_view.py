"""The Hub tab: run list, push / export / load through its handlers and its named API over HTTP, a fake Hub
behind it, and the Space restrictions (no server folders, never the Space owner's token)."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import pytest
import torch
from fake_hub import FakeHub, use_fake_hub

from models import create_model
from studio.context import StudioContext
from studio.views import hub as view
from trainers.runs import checkpoints
from trainers.runs.store import RunStore
from trainers.settings import make_config

TOKEN = "hf_" + secrets.token_hex(17)
OWNER_TOKEN = "hf_" + secrets.token_hex(17)  # plays the Space owner's HF_TOKEN


def _make_run(store: RunStore, seed: int) -> str:
    """A completed fragment-dae run with a real (untrained) checkpoint and a few logged metrics."""
    cfg = make_config("fragment-dae", "smoke", data="fragments:python,max_files=8")
    run_id = store.create_run("fragment-dae", "fragments", cfg.to_dict(), status="completed")
    torch.manual_seed(seed)
    model = create_model("fragment-dae", channels=[8, 16, 16])
    checkpoints.save_checkpoint(store.run_dir(run_id), "best", model, state={"step": 3, "epoch": 1})
    for step, loss in ((1, 0.3), (2, 0.2), (3, 0.15)):
        store.log_metrics(run_id, step, 0, "train", {"loss": loss})
    store.log_metrics(run_id, 3, 1, "val", {"loss": 0.14, "accuracy": 0.5})
    return run_id


@pytest.fixture(scope="module")
def fake_hub():
    with FakeHub({TOKEN: "alice", OWNER_TOKEN: "owner"}) as server:
        server.add_repo("owner/secret", owner="owner", private=True)
        yield server


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    store = RunStore(runs)
    run_id = _make_run(store, 0)
    queued = store.create_run("fragment-dae", "fragments", {"variant": "fragment-dae"})  # no checkpoint
    yield runs, store, run_id, queued
    store.close()


@pytest.fixture
def ctx(studio):
    runs, store, _, _ = studio
    return StudioContext(runs_dir=runs, store=store)


@pytest.fixture
def space_ctx(studio):
    runs, store, _, _ = studio
    return StudioContext(runs_dir=runs, store=store, space=True)


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch):
    use_fake_hub(monkeypatch, fake_hub, tmp_path)
    return fake_hub


def _endpoints(ctx: StudioContext) -> tuple[gr.Blocks, dict]:
    with gr.Blocks() as demo, gr.Tab("Hub"):
        view.build_tab(ctx)
    return demo, {f.api_name: f.fn for f in demo.fns.values() if f.api_name}


def test_tab_lists_runs_with_checkpoints_and_has_a_password_field(ctx, studio):
    _, _, run_id, queued = studio
    choices = view.pushable_runs(ctx)
    assert [value for _, value in choices] == [run_id]
    assert choices[0][0] == f"{run_id} · fragment-dae · completed · best"
    demo, fns = _endpoints(ctx)
    assert {"hub_push", "hub_export", "hub_load", "hub_runs"} <= set(fns)
    passwords = [b for b in demo.blocks.values() if isinstance(b, gr.Textbox) and b.type == "password"]
    assert len(passwords) == 1 and passwords[0].label == "Hugging Face token"
    update = fns["hub_runs"](queued)  # a run without checkpoint is not kept as the selection
    assert update["value"] == run_id and [c[1] for c in update["choices"]] == [run_id]


def test_push_export_and_load_through_the_handlers(ctx, studio, hub_env, tmp_path):
    _, _, run_id, _ = studio
    _, fns = _endpoints(ctx)
    status = fns["hub_push"](run_id, "best", "alice/from-view", False, "", "pushed from the tab", TOKEN)
    assert f"[{hub_env.url}/alice/from-view]({hub_env.url}/alice/from-view)" in status
    repo = hub_env.repos["alice/from-view"]
    assert repo.messages[repo.branches["main"]] == "pushed from the tab"
    weights = (checkpoints.checkpoint_path(ctx.runs_dir / run_id, "best") / "model.safetensors").read_bytes()
    assert hub_env.files("alice/from-view")["model.safetensors"] == weights

    with pytest.raises(gr.Error) as err:
        fns["hub_push"](run_id, "best", "alice/from-view", False, "", "", "hf_" + "0" * 34)
    assert "401" in err.value.message and TOKEN not in err.value.message
    with pytest.raises(gr.Error, match="no run chosen"):
        fns["hub_push"](None, "best", "alice/from-view", False, "", "", TOKEN)

    status, table = fns["hub_load"]("alice/from-view", TOKEN)
    label = "hub alice/from-view · fragment-dae"
    assert f"**{label}**" in status and "**Fragments** tab" in status
    assert label in table and "| fragment-dae | Fragments |" in table
    assert (label, label) in ctx.checkpoint_choices("fragments")  # the value is the label, not a path
    assert ctx.load_model(ctx.external[label], "fragments").VARIANT == "fragment-dae"
    with pytest.raises(gr.Error, match="not a checkpoint this studio can load"):
        fns["hub_load"](str(tmp_path), "")

    status = fns["hub_export"](run_id, "best", str(tmp_path / "exported"))
    assert "Exported to" in status and "model.safetensors" in status
    assert (tmp_path / "exported" / "README.md").read_text().startswith("---")
    status = fns["hub_export"](run_id, "best", str(tmp_path / "exported"))
    assert status.startswith("✅ Replaced the earlier export in")


def test_relative_export_goes_under_the_runs_folder_and_foreign_files_are_safe(
    ctx, studio, tmp_path, monkeypatch
):
    _, _, run_id, _ = studio
    monkeypatch.chdir(tmp_path)  # where the app happens to run: nothing may land here
    _, fns = _endpoints(ctx)
    status = fns["hub_export"](run_id, "best", "my-model")
    target = Path(ctx.runs_dir).resolve() / "exports" / "my-model"
    assert (target / "model.safetensors").is_file() and str(target) in status.replace("\\", "")
    assert not (tmp_path / "my-model").exists()
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(gr.Error, match="already holds other files"):
        fns["hub_export"](run_id, "best", str(precious))
    assert sorted(p.name for p in precious.iterdir()) == ["chapter1.tex"]
    with pytest.raises(gr.Error, match="no export folder given"):
        fns["hub_export"](run_id, "best", "  ")
    with pytest.raises(gr.Error, match="a relative export name stays inside"):
        fns["hub_export"](run_id, "best", "../../escaped")
    assert not (Path(ctx.runs_dir).resolve().parent / "escaped").exists()
    with pytest.raises(gr.Error, match="no run matches 'no-such-run'"):
        fns["hub_export"]("no-such-run", "best", "other")


def test_push_suggestions_follow_the_chosen_run(ctx, studio):
    from studio.views.hub import hub_placeholders

    _, _, run_id, _ = studio
    variant = ctx.store.get_run(run_id).variant
    assert hub_placeholders(ctx, run_id) == (f"your-name/{variant}", f"Upload {variant} checkpoint")
    assert hub_placeholders(ctx, None)[0] == "your-name/sar-residual"


def test_part_of_a_run_id_typed_into_the_run_list_picks_that_run(ctx, studio):
    from studio.views.hub import _run_id

    _, _, run_id, _ = studio
    assert _run_id(ctx, run_id[-4:]) == run_id
    with pytest.raises(ValueError, match="no run matches 'zzz-nothing': pick a run with a checkpoint"):
        _run_id(ctx, "zzz-nothing")


def test_space_never_uses_the_owners_token_nor_server_folders(
    space_ctx, studio, hub_env, tmp_path, monkeypatch
):
    _, _, run_id, _ = studio
    monkeypatch.setenv("HF_TOKEN", OWNER_TOKEN)  # what a Space owner sets as a secret
    _, fns = _endpoints(space_ctx)
    seen = len(hub_env.requests)
    with pytest.raises(gr.Error, match="paste your Hugging Face token"):
        fns["hub_push"](run_id, "best", "owner/hijack", False, "", "", "")
    with pytest.raises(gr.Error, match="disabled on a Space"):
        fns["hub_export"](run_id, "best", str(tmp_path / "x"))
    with pytest.raises(gr.Error, match="loading from a folder is disabled on a Space"):
        fns["hub_load"](str(ctx_folder(space_ctx, run_id)), "")
    assert len(hub_env.requests) == seen and not (tmp_path / "x").exists()
    # Without a pasted token the visitor is anonymous: the owner's private repo stays invisible.
    with pytest.raises(gr.Error, match="'owner/secret' not found, or it is private"):
        fns["hub_load"]("owner/secret", "")
    status = fns["hub_push"](run_id, "best", "alice/from-space", False, "", "", TOKEN)
    assert "alice/from-space" in status and "owner/hijack" not in hub_env.repos


def ctx_folder(ctx: StudioContext, run_id: str):
    return checkpoints.checkpoint_path(ctx.runs_dir / run_id, "best")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Gradio's queue still calls pandas APIs that pandas 3 deprecates; not this tab's concern.
@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")
def test_named_api_over_http(ctx, studio, hub_env, capfd):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    _, _, run_id, _ = studio
    demo, _ = _endpoints(ctx)
    demo.queue()
    _, url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True
    )
    try:
        client = Client(url, verbose=False)
        names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert {"/hub_push", "/hub_export", "/hub_load", "/hub_runs"} <= names
        status = client.predict(run_id, "best", "alice/over-http", False, "", "", TOKEN, api_name="/hub_push")
        assert f"{hub_env.url}/alice/over-http/commit/" in status
        status, _ = client.predict("alice/over-http", TOKEN, api_name="/hub_load")
        assert "hub alice/over-http · fragment-dae" in status
        with pytest.raises(AppError, match="invalid Hub repo id"):
            client.predict(run_id, "best", "not a repo", False, "", "", TOKEN, api_name="/hub_push")
        # "/etc" was pushed to "etc"; a 500-character name to load gave "[Errno 36] File name too long".
        with pytest.raises(AppError, match="invalid Hub repo id '/etc'"):
            client.predict(run_id, "best", "/etc", False, "", "", TOKEN, api_name="/hub_push")
        with pytest.raises(AppError, match="invalid Hub repo id 'a{77}") as err:
            client.predict("a" * 500, TOKEN, api_name="/hub_load")
        assert "Errno" not in str(err.value)
        # The source URL the card installs from (an input API clients written before it may leave out).
        source = "https://git.example.org/me/studio"
        client.predict(
            run_id, "best", "alice/with-source", False, "", "", TOKEN, source, api_name="/hub_push"
        )
        assert f'pip install "git+{source}"' in hub_env.files("alice/with-source")["README.md"].decode()
    finally:
        demo.close()
    captured = capfd.readouterr()
    assert TOKEN not in captured.out and TOKEN not in captured.err
