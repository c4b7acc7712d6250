"""What the comparison tabs share: plain text shown exactly as written in Markdown, and checkpoints named
the way people and API clients name them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from markdown_it import MarkdownIt

from models import create_model
from studio.context import StudioContext
from studio.views.common import (
    dropdown_update,
    escape_markdown,
    notes_markdown,
    page_handler,
    resolve_checkpoint,
    selected_folders,
)
from trainers.runs import checkpoints
from trainers.runs.store import RunStore


@pytest.mark.parametrize(
    "text",
    ["python3.11/__future__.py", "__my__*data*.bin", "<b>bold</b> & [link](x) `code` a\\b #1 | ~x~"],
)
def test_notes_render_exactly_as_written(text):
    html = MarkdownIt().render(notes_markdown([text]))
    rendered = html.removeprefix("<ul>\n<li>").removesuffix("</li>\n</ul>\n")
    assert rendered == text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert escape_markdown("plain words, 3.5 dB") == "plain words, 3.5 dB"


@pytest.fixture
def ctx(tmp_path):
    with RunStore(tmp_path / "runs") as store:
        yield StudioContext(runs_dir=tmp_path / "runs", store=store)


def _run_with(ctx: StudioContext, kinds: tuple[str, ...]) -> str:
    config = {"variant": "fragment-dae"}
    run_id = ctx.store.create_run("fragment-dae", "fragments", config, status="completed")
    torch.manual_seed(0)
    model = create_model("fragment-dae", channels=[8, 16, 16])
    for kind in kinds:
        checkpoints.save_checkpoint(ctx.store.run_dir(run_id), kind, model, state={"step": 1, "epoch": 1})
    return run_id


def test_a_checkpoint_can_be_named_by_run_id_label_or_folder(ctx):
    both = _run_with(ctx, ("best", "last"))
    last_only = _run_with(ctx, ("last",))
    run_dir = ctx.runs_dir / both
    assert resolve_checkpoint(ctx, both, "fragments") == str(run_dir / "checkpoints" / "best")
    assert resolve_checkpoint(ctx, f"{both}/last", "fragments") == str(run_dir / "checkpoints" / "last")
    assert resolve_checkpoint(ctx, last_only, "fragments").endswith(f"{last_only}/checkpoints/last")
    label, value = ctx.checkpoint_choices("fragments")[0]
    folder = str(ctx.runs_dir / last_only / "checkpoints" / "last")  # newest run first
    assert value == f"{last_only}/last"
    assert resolve_checkpoint(ctx, label, "fragments") == folder
    assert resolve_checkpoint(ctx, value, "fragments") == folder
    assert resolve_checkpoint(ctx, folder, "fragments") == folder  # a local studio also takes its folders
    assert selected_folders([both, f" {last_only} "], "fragments", multiple=True, ctx=ctx) == [
        str(run_dir / "checkpoints" / "best"),
        resolve_checkpoint(ctx, last_only, "fragments"),
    ]


def test_unknown_checkpoint_names_say_what_would_do(ctx):
    run_id = _run_with(ctx, ("best",))
    with pytest.raises(ValueError, match=rf"unknown checkpoint 'nope'.*{run_id}"):
        resolve_checkpoint(ctx, "nope", "fragments")
    with pytest.raises(ValueError, match="has no last checkpoint yet"):
        resolve_checkpoint(ctx, f"{run_id}/last", "fragments")
    with pytest.raises(ValueError, match="no checkpoint chosen"):
        selected_folders([], "fragments", ctx=ctx)


@pytest.mark.parametrize("target", ["best-999", "/etc"])
def test_a_broken_or_escaping_checkpoint_link_skips_that_run_only(ctx, target):
    healthy = _run_with(ctx, ("best",))
    broken = _run_with(ctx, ("best",))
    link = ctx.store.run_dir(broken) / checkpoints.CHECKPOINTS_DIR / "best"
    link.unlink()
    link.symlink_to(target)
    labels = [label for label, _ in ctx.checkpoint_choices("fragments") if not label.startswith("reference")]
    assert [label.split(" · ")[0] for label in labels] == [healthy]
    with pytest.raises(ValueError, match="outside|incomplete"):
        checkpoints.checkpoint_path(ctx.store.run_dir(broken), "best")


def test_reference_checkpoints_are_offered_and_selected_by_default(tmp_path):
    from studio.context import reference_checkpoints

    ref = tmp_path / "reference"
    model = create_model("fragment-dae", channels=[8, 16, 16])
    model.save_pretrained(ref / "fragment-dae")
    (ref / "not-a-checkpoint").mkdir()
    found = reference_checkpoints(ref)
    assert found == {"reference · fragment-dae": str(ref / "fragment-dae")}
    with RunStore(tmp_path / "runs") as store:
        ctx = StudioContext(runs_dir=tmp_path / "runs", store=store, reference=found)
        run_id = _run_with(ctx, ("best",))
        labels = [label for label, _ in ctx.checkpoint_choices("fragments")]
        assert labels[0].startswith(run_id) and labels[1] == "reference · fragment-dae"
        assert ctx.default_checkpoints("fragments") == ["reference · fragment-dae"]
        assert resolve_checkpoint(ctx, "reference · fragment-dae", "fragments") == str(ref / "fragment-dae")
        assert ctx.default_checkpoints("sar") == []
        # A single-choice tab (Audio, Fragments) shows the reference first, not the newest run (a cancelled
        # 6-step one, say); a choice the user made stays, and one that is gone falls back to the reference.
        assert dropdown_update(ctx, "fragments", None)["value"] == "reference · fragment-dae"
        assert dropdown_update(ctx, "fragments", f"{run_id}/best")["value"] == f"{run_id}/best"
        assert dropdown_update(ctx, "fragments", "gone/best")["value"] == "reference · fragment-dae"
        assert dropdown_update(ctx, "fragments", None, multiselect=True)["value"] == [
            "reference · fragment-dae"
        ]
        assert dropdown_update(ctx, "sar", None)["value"] is None  # no SAR checkpoint at all


def test_no_choice_value_is_a_server_path(ctx, tmp_path):
    """The dropdowns' values (what the API lists) are run ids and labels that resolve back to folders."""
    run_id = _run_with(ctx, ("best", "last"))
    model = create_model("fragment-dae", channels=[8, 16, 16])
    model.save_pretrained(tmp_path / "hub-download" / "m")
    ctx.add_external("hub: someone/m", tmp_path / "hub-download" / "m")
    choices = ctx.checkpoint_choices("fragments")
    assert [value for _, value in choices] == [f"{run_id}/best", f"{run_id}/last", "hub: someone/m"]
    for label, value in choices:
        assert str(tmp_path) not in f"{label}{value}"
        folder = resolve_checkpoint(ctx, value, "fragments")
        assert ctx.load_model(folder, "fragments").VARIANT == "fragment-dae"


def test_typed_parts_of_names_pick_one_checkpoint_and_errors_name_each_distinctly(tmp_path):
    """'SAR checkpoints here: reference, reference, reference, reference' named none of them; a part of a
    run's name typed into a dropdown (Gradio sends the typed text on blur) was an unknown checkpoint."""
    from studio.context import reference_checkpoints
    from studio.views.common import match_choice

    ref = tmp_path / "reference"
    for variant in ("fragment-dae", "fragment-dae-bytes"):
        create_model(variant).save_pretrained(ref / variant)
    with RunStore(tmp_path / "runs") as store:
        ctx = StudioContext(runs_dir=tmp_path / "runs", store=store, reference=reference_checkpoints(ref))
        run_id = _run_with(ctx, ("best",))
        store.set_labels(run_id, name="night run")
        folder = str(ctx.runs_dir / run_id / "checkpoints" / "best")
        assert resolve_checkpoint(ctx, "NIGHT", "fragments") == folder  # part of its name
        assert resolve_checkpoint(ctx, run_id[-6:], "fragments") == folder  # part of its id
        assert resolve_checkpoint(ctx, "dae-bytes", "fragments") == str(ref / "fragment-dae-bytes")
        with pytest.raises(
            ValueError, match=r"'reference' matches 2 checkpoints \(reference · fragment-dae,"
        ):
            resolve_checkpoint(ctx, "reference", "fragments")
        with pytest.raises(ValueError) as info:
            resolve_checkpoint(ctx, "nope", "fragments")
        listed = str(info.value).split("checkpoints here: ")[1]
        assert f"{run_id}/best" in listed
        assert "reference · fragment-dae," in listed and "reference · fragment-dae-bytes" in listed
    assert match_choice("  ", [("a", "a")]) is None and match_choice("zz", [("a", "a")]) is None


def _space_ctx(tmp_path):
    store = RunStore(tmp_path / "space-runs")
    return StudioContext(runs_dir=tmp_path / "space-runs", store=store, space=True, reference={})


def test_a_space_resolves_no_server_folder_and_names_none(tmp_path):
    ctx = _space_ctx(tmp_path)
    try:
        run_id = _run_with(ctx, ("best",))
        folder = str(ctx.runs_dir / run_id / "checkpoints" / "best")
        assert resolve_checkpoint(ctx, f"{run_id}/best", "fragments") == folder
        for name in (folder, str(tmp_path), "assets/sar"):
            with pytest.raises(ValueError, match="unknown checkpoint") as info:
                resolve_checkpoint(ctx, name, "fragments")
            assert "or a checkpoint folder" not in str(info.value)
        (ctx.runs_dir / run_id / "checkpoints" / "best" / "model.safetensors").unlink()
        with pytest.raises(ValueError) as info:  # a broken checkpoint is named by its run, not its path
            from studio.views.common import load_checkpoint

            load_checkpoint(ctx, folder, "fragments")
        assert str(tmp_path) not in str(info.value) and run_id in str(info.value)
    finally:
        ctx.store.close()


class _Request:
    def __init__(self, session_hash: str, username: str | None = None):
        self.session_hash, self.username = session_hash, username


def test_a_space_visitor_keeps_their_id_across_a_reload_and_their_loads_to_themselves(tmp_path):
    ctx = _space_ctx(tmp_path)
    try:
        first = ctx.remember_visitor("page-1", "")  # a fresh browser gets a new random id
        assert len(first) == 32 and int(first, 16) >= 0
        assert ctx.visitor(_Request("page-1")) == first
        # The reload: a new page session, the same id from the browser's storage.
        assert ctx.remember_visitor("page-2", first) == first
        assert ctx.visitor(_Request("page-2")) == first
        other = ctx.remember_visitor("page-3", None)
        assert other != first
        assert ctx.remember_visitor("page-4", "../../etc") not in (first, "../../etc")  # malformed: new id
        assert ctx.visitor(_Request("api-client")) == "api-client"  # no page load: its session
        assert ctx.visitor(_Request("page-1", username="alice")) == "hf:alice"  # an OAuth login wins
        model = create_model("fragment-dae", channels=[8, 16, 16])
        model.save_pretrained(tmp_path / "mine")
        ctx.add_external("hub: a/mine", tmp_path / "mine", visitor=first)
        assert ctx.externals(first) == {"hub: a/mine": str(tmp_path / "mine")}
        assert ctx.externals(other) == {}
        assert ctx.external == {}  # nothing shared app-wide
        from gradio.context import LocalContext

        token = LocalContext.request.set(_Request("page-2"))  # as during a Gradio event of the reloaded page
        try:
            assert [v for _, v in ctx.checkpoint_choices("fragments")] == ["hub: a/mine"]
            assert resolve_checkpoint(ctx, "hub: a/mine", "fragments") == str(tmp_path / "mine")
        finally:
            LocalContext.request.reset(token)
        token = LocalContext.request.set(_Request("page-3"))
        try:
            assert ctx.checkpoint_choices("fragments") == []
            with pytest.raises(ValueError, match="unknown checkpoint"):
                resolve_checkpoint(ctx, "hub: a/mine", "fragments")
        finally:
            LocalContext.request.reset(token)
    finally:
        ctx.store.close()


def test_the_shipped_reference_checkpoints_load_and_stay_under_5_mb():
    import json

    from models import VARIANTS, load_pretrained
    from studio.context import ASSETS_DIR, reference_checkpoints

    shipped = ASSETS_DIR / "reference"  # (the session's fixture points REFERENCE_DIR elsewhere)
    found = reference_checkpoints(shipped)
    assert sorted(found) == sorted(f"reference · {v}" for v in VARIANTS)
    manifest = json.loads((shipped / "manifest.json").read_text())
    for label, folder in found.items():
        assert sum(p.stat().st_size for p in Path(folder).iterdir()) < 5 * 2**20
        model = load_pretrained(folder)
        entry = manifest[model.VARIANT]
        assert label == f"reference · {model.VARIANT}"
        assert entry["preset"] == "reference" and entry["seed"] == 0
        assert entry["train_minutes"] <= 15


def test_page_handler_takes_the_actions_parameter_names_and_tracks_progress():
    import inspect

    import gradio as gr

    def scale(ctx, value: float = 1.0, factor: float = 2.0, progress=None):
        if value < 0:
            raise ValueError("value must not be negative")
        (progress or (lambda *a: None))(0.5, "scaling")
        return {"ctx": ctx, "scaled": value * factor}

    handler = page_handler("the-ctx", scale, lambda r: (r["ctx"], r["scaled"]))
    params = inspect.signature(handler).parameters
    assert list(params) == ["value", "factor", "progress"] and handler.__name__ == "scale"
    assert params["value"].default is inspect.Parameter.empty  # every input comes from a component
    assert isinstance(params["progress"].default, gr.Progress)  # Gradio tracks this event's progress
    heard = []
    assert handler(3.0, 0.5, lambda *a: heard.append(a)) == ("the-ctx", 1.5) and heard == [(0.5, "scaling")]
    with pytest.raises(gr.Error, match="value must not be negative"):
        handler(-1.0, 2.0)
    with pytest.raises(TypeError, match="must take `progress` as its last parameter"):
        page_handler("the-ctx", lambda ctx, value: value)
    # An input added later keeps its default, so API clients that leave it out still work.
    later = inspect.signature(page_handler("the-ctx", scale, optional=("factor",))).parameters
    assert later["value"].default is inspect.Parameter.empty and later["factor"].default == 2.0


@pytest.mark.parametrize(
    "text",
    ["could not cast dtype('<U1') to float", "a <b>bold</b> & c", "already escaped: &lt;U1 &#60; &amp;"],
)
def test_error_messages_are_plain_text_in_the_page_and_in_api_clients(text):
    """An error showed "&lt;U1" to API clients (html.escape'd for the page, which renders gr.Error as HTML).
    Now a client gets the text itself (an invisible word joiner aside) and an HTML parser finds no tag and
    no entity in it, so the page shows the same characters."""
    from html.parser import HTMLParser

    import gradio as gr

    from studio.views.common import user_errors

    @user_errors
    def fails():
        raise ValueError(text)

    with pytest.raises(gr.Error) as err:
        fails()
    message = err.value.message
    assert message.replace("\u2060", "") == text

    class Text(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.data, self.tags = [], []

        def handle_data(self, data):
            self.data.append(data)

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

    parser = Text()
    parser.feed(message)
    parser.close()
    assert parser.tags == [] and "".join(parser.data).replace("\u2060", "") == text
