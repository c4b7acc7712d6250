"""The Fragments tab's pure functions on a tiny real checkpoint, and its Gradio wiring."""

from __future__ import annotations

import html as htmlmod
import os
import re

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model
from studio.context import StudioContext
from studio.views import fragments as view
from trainers.data.fragments import NoiseGenerator, bytes_to_tensor
from trainers.metrics.fragments import fragment_metrics
from trainers.runs.store import RunStore
from trainers.training.fastpath import prepare_for_inference

SPAN = re.compile(r'<span data-col="(\w+)" data-i="(\d+)" data-mark="(\w*)"[^>]*>([0-9a-f]{2})</span>')


def parse_hex(html: str) -> dict[str, dict[int, tuple[str, int]]]:
    """col -> {index: (mark, byte value)} from the hex view's spans."""
    out: dict[str, dict[int, tuple[str, int]]] = {"original": {}, "corrupted": {}, "repaired": {}}
    for col, i, mark, value in SPAN.findall(html):
        out[col][int(i)] = (mark, int(value, 16))
    return out


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    return StudioContext(runs_dir=root / "runs", store=RunStore(root / "runs"))


@pytest.fixture(scope="module")
def frag_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("frag") / "ckpt"
    create_model("fragment-dae", channels=[8, 16, 16]).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def bytes_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("fragb") / "ckpt"
    create_model("fragment-dae-bytes", channels=[8, 16, 16], head_channels=8).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sar_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sar") / "ckpt"
    create_model("sar-baseline", base_channels=4, image_size=32).save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def data_file(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "sample.bin"
    path.write_bytes(
        b"<script>alert('x')</script> & text " * 20 + rng.integers(0, 256, 900, np.uint8).tobytes()
    )
    return path


def test_hex_view_marks_exactly_the_changed_fixed_wrong_and_broken_bytes():
    n = 40
    clean = np.arange(n, dtype=np.uint8) + 60
    corrupted = clean.copy()
    changed_at = [1, 5, 9, 17, 33]
    corrupted[changed_at] = [0, 0, 255, 7, 8]
    changed = corrupted != clean
    repaired = corrupted.copy()
    repaired[[1, 17]] = clean[[1, 17]]  # fixed
    repaired[[20, 39]] = [1, 2]  # intact bytes the repair broke
    # 5, 9, 33 stay wrong; 9 is "repaired" to another wrong value
    repaired[9] = 3

    parsed = parse_hex(view.hex_view_html(clean, corrupted, repaired, changed, base_offset=4096))
    for col, arr in (("original", clean), ("corrupted", corrupted), ("repaired", repaired)):
        assert sorted(parsed[col]) == list(range(n))
        assert [parsed[col][i][1] for i in range(n)] == arr.tolist()

    def marked(col, mark):
        return sorted(i for i, (m, _) in parsed[col].items() if m == mark)

    assert all(m == "" for m, _ in parsed["original"].values())
    assert marked("corrupted", "changed") == changed_at
    assert marked("repaired", "fixed") == [1, 17]
    assert marked("repaired", "wrong") == [5, 9, 33]
    assert marked("repaired", "broken") == [20, 39]
    assert len(marked("repaired", "")) == n - 7


ROW_OFFSETS = re.compile(r"<tr[^>]*><td[^>]*>([0-9a-f]{8})</td>")


def test_hex_view_rows_offsets_and_escaping():
    clean = np.frombuffer(b"<b>&\"'" + bytes(range(26)) + b"</script>", dtype=np.uint8).copy()
    html = view.hex_view_html(clean, clean.copy(), clean.copy(), np.zeros(clean.size, bool), 0x100, True)
    per_row = view.BYTES_PER_ROW_ASCII
    rows = ROW_OFFSETS.findall(html)
    assert rows == [f"{0x100 + per_row * r:08x}" for r in range(-(-clean.size // per_row))]
    assert "<b>" not in html and "</script>" not in html
    assert "|&lt;b&gt;&amp;&quot;&#x27;" in html  # the ASCII column, escaped
    # the legend names every mark with its count
    for meaning in view.MARK_MEANINGS.values():
        assert f"{meaning}: 0" in html


@pytest.mark.parametrize("show_ascii", [False, True])
def test_hex_view_fits_a_1400px_page_and_keeps_every_byte(show_ascii):
    """The widest row (offset, three hex columns, with or without the ASCII gutter) stays within the
    ~1200 px a 1400 px window gives the tab, and the rows scroll in a box no taller than the window, so the
    repaired column and a horizontal scrollbar are in reach; no byte or mark is lost on the way."""
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 256, 512, np.uint8)
    corrupted = clean.copy()
    corrupted[::7] ^= 0xFF
    changed = corrupted != clean
    repaired = corrupted.copy()
    repaired[::14] = clean[::14]
    html = view.hex_view_html(clean, corrupted, repaired, changed, 0, show_ascii)

    per_row = view.BYTES_PER_ROW_ASCII if show_ascii else view.BYTES_PER_ROW
    assert len(ROW_OFFSETS.findall(html)) == 512 // per_row
    rows = re.findall(r"<tr[^>]*>(<td.*?)</tr>", html)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    text = [[htmlmod.unescape(re.sub(r"<[^>]+>", "", c)) for c in row] for row in cells]
    # 12 px monospace is ~7.3 px a character; each cell has 1.2 em (~15 px) of padding on its right.
    widest = max(sum(7.3 * len(c) + 15 for c in row) for row in text)
    assert widest < 1200, widest
    assert "max-height:70vh" in html and "overflow:auto" in html
    assert "position:sticky" in html  # column names stay visible while the rows scroll

    parsed = parse_hex(html)
    for col, arr in (("original", clean), ("corrupted", corrupted), ("repaired", repaired)):
        assert [parsed[col][i][1] for i in range(512)] == arr.tolist()
    marks = view.byte_marks(clean, corrupted, repaired, changed)
    for mark in ("fixed", "wrong", "broken"):
        got = sorted(i for i, (m, _) in parsed["repaired"].items() if m == mark)
        assert got == np.flatnonzero(marks[mark]).tolist()
    assert (
        sorted(i for i, (m, _) in parsed["corrupted"].items() if m == "changed")
        == np.flatnonzero(changed).tolist()
    )
    if show_ascii:
        assert text[0][1].endswith("|" + "".join(chr(b) if 32 <= b < 127 else "." for b in clean[:8]) + "|")


def test_hex_view_refuses_mismatched_arrays():
    a = np.zeros(16, np.uint8)
    with pytest.raises(ValueError, match="same length"):
        view.hex_view_html(a, a[:8], a, np.zeros(16, bool))


@pytest.mark.parametrize("ckpt_name", ["frag_ckpt", "bytes_ckpt"])
def test_compare_fragment_matches_noise_model_and_metrics(request, ctx, data_file, ckpt_name):
    folder = request.getfixturevalue(ckpt_name)
    offset, settings = 100, {"ber": 0.01, "substitution": 0.05, "erasure": 0.004, "burst": 0.01, "seed": 7}
    r = view.compare_fragment(ctx, folder, "uploaded file", None, str(data_file), offset, **settings)

    clean = np.frombuffer(data_file.read_bytes()[offset : offset + 512], np.uint8)
    np.testing.assert_array_equal(r.clean, clean)
    noise = NoiseGenerator(
        bit_error_rate=0.01, substitution_rate=0.05, erasure_rate=0.004, burst_p_enter=0.01, seed=7
    )
    corrupted, changed = noise(clean)
    np.testing.assert_array_equal(r.corrupted, corrupted)
    np.testing.assert_array_equal(r.changed, changed)
    assert changed.any()
    model = prepare_for_inference(ctx.load_model(folder, "fragments"))  # the tab's precision
    with torch.no_grad():
        expected = model.predict_bytes(bytes_to_tensor(corrupted)[None])[0].numpy()
    np.testing.assert_array_equal(r.repaired, expected)

    m = fragment_metrics(clean, corrupted, expected, changed)
    assert r.metrics == pytest.approx(m, nan_ok=True)
    identity = float(np.mean(corrupted == clean))
    assert m["identity_accuracy"] == pytest.approx(identity)
    table = {row[0]: row[1:] for row in r.table}
    n_changed = int(changed.sum())
    # Every label says which way is better (the metric registry's direction).
    assert list(table) == [
        "byte accuracy, all 512 bytes (%) ↑",
        f"byte accuracy, {n_changed} corrupted bytes (%) ↑",
        "bit error rate (%) ↓",
        f"corrupted bytes fixed (of {n_changed}) ↑",
        f"intact bytes broken (of {512 - n_changed}) ↓",
        "flag",
    ]
    assert table["byte accuracy, all 512 bytes (%) ↑"] == [
        round(100 * np.mean(expected == clean), 2),
        round(100 * identity, 2),
    ]
    assert table[f"byte accuracy, {n_changed} corrupted bytes (%) ↑"][1] == 0.0
    fixed = int((changed & (expected == clean)).sum())
    broken = int((~changed & (expected != clean)).sum())
    assert table[f"corrupted bytes fixed (of {n_changed}) ↑"] == [fixed, 0]
    assert table[f"intact bytes broken (of {512 - n_changed}) ↓"] == [broken, 0]
    # The flag row follows the identity baseline: flagged exactly when the repair does not beat it.
    beats = np.mean(expected == clean) > identity
    assert (table["flag"][0] == "none") == beats and bool(r.flags) != beats

    parsed = parse_hex(r.html)
    assert sum(m == "fixed" for m, _ in parsed["repaired"].values()) == fixed
    assert sum(m == "broken" for m, _ in parsed["repaired"].values()) == broken
    assert sum(m == "changed" for m, _ in parsed["corrupted"].values()) == n_changed
    assert re.search(rf">{offset:08x}</td>", r.html)  # rows are labelled with file offsets
    assert "sample.bin" in r.summary and "identity baseline" in r.summary


def test_builtin_file_source(ctx, frag_ckpt):
    choices = view.builtin_choices()
    assert choices, "the default corpus (the Python installation) should offer files"
    label, name = choices[0]
    path = view.builtin_path(name)
    r = view.compare_fragment(ctx, frag_ckpt, "built-in file", name, None, 0, seed=1)
    np.testing.assert_array_equal(r.clean, np.fromfile(path, np.uint8, count=512))
    # The server path an older client sent still works; any other file does not.
    r_path = view.compare_fragment(ctx, frag_ckpt, "built-in file", str(path), None, 0, seed=1)
    np.testing.assert_array_equal(r_path.clean, r.clean)
    with pytest.raises(ValueError, match="'passwd' is not one of the built-in files"):
        view.compare_fragment(ctx, frag_ckpt, "built-in file", "/etc/passwd", None, 0)


def test_builtin_files_are_named_without_the_server_path(ctx, frag_ckpt):
    """A public Space must not show where Python is installed: built-in files are named from the
    installation's lib folder (python3.X/...), in the list, the caption and the error messages."""
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"]).parent
    choices = view.builtin_choices()
    for label, name in choices:
        assert label.startswith(name + " (") and name == view.builtin_path(name).relative_to(lib).as_posix()
        assert str(lib) not in label + name
    label, name = choices[0]
    path = view.builtin_path(name)
    assert name.startswith("python3.") and name.endswith(path.name)
    r = view.compare_fragment(ctx, frag_ckpt, "built-in file", name, None, 0, seed=1)
    shown = r.summary.replace("\\", "")  # the caption escapes Markdown (the _ of __future__.py)
    assert f"input: {name}, bytes 0..511" in shown and str(lib) not in shown
    with pytest.raises(ValueError) as err:
        view.compare_fragment(ctx, frag_ckpt, "built-in file", name, None, 10**9)
    assert name in str(err.value) and str(lib) not in str(err.value)
    assert view.corpus_name("/somewhere/else/data.bin") == "data.bin"


def test_uploads_are_named_by_their_file_name_alone(ctx, frag_ckpt, data_file):
    r = view.compare_fragment(ctx, frag_ckpt, "uploaded file", None, str(data_file), 0)
    shown = r.summary.replace("\\", "")  # the caption escapes Markdown
    assert "input: sample.bin, bytes 0..511" in shown and str(data_file.parent) not in shown
    with pytest.raises(ValueError) as err:
        view.compare_fragment(ctx, frag_ckpt, "uploaded file", None, str(data_file), 10**9)
    assert "sample.bin" in str(err.value)
    assert str(data_file.parent) not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"checkpoint": None}, ValueError, "no checkpoint chosen"),
        ({"checkpoint": []}, ValueError, "no checkpoint chosen"),
        ({"checkpoint": "/nonexistent/ckpt"}, FileNotFoundError, "does not exist"),
        ({"upload": None}, ValueError, "no file uploaded"),
        ({"upload": "tiny"}, ValueError, "is 10 bytes; a fragment needs 512"),
        ({"upload": "empty"}, ValueError, "is empty"),
        ({"offset": 5000}, ValueError, "last valid offset is"),
        ({"offset": -3}, ValueError, "offset must be a non-negative whole number"),
        ({"offset": "abc"}, ValueError, "offset must be a whole number"),
        ({"ber": 1.5}, ValueError, "bit_error_rate must be in"),
        ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
        ({"source": "built-in file", "builtin": None}, ValueError, "no built-in file chosen"),
        ({"source": "telepathy"}, ValueError, "unknown input source"),
        (
            {"source": "built-in file", "builtin": "/etc/passwd"},
            ValueError,
            "is not one of the built-in files",
        ),
    ],
)
def test_bad_inputs_give_clear_messages(ctx, frag_ckpt, data_file, tmp_path, kwargs, exc, message):
    (tmp_path / "tiny.bin").write_bytes(b"0123456789")
    (tmp_path / "empty.bin").write_bytes(b"")
    args = {"checkpoint": frag_ckpt, "source": "uploaded file", "builtin": None, "upload": str(data_file)}
    args.update(kwargs)
    if args["upload"] in ("tiny", "empty"):
        args["upload"] = str(tmp_path / f"{args['upload']}.bin")
    with pytest.raises(exc, match=re.escape(message)):
        view.compare_fragment(ctx, **args)


def test_checkpoint_of_another_domain_is_refused(ctx, sar_ckpt, data_file):
    with pytest.raises(ValueError, match="'sar-baseline' .* this view needs a fragment model"):
        view.compare_fragment(ctx, sar_ckpt, "uploaded file", None, str(data_file))


def test_build_tab_endpoints_and_errors_in_page(ctx, frag_ckpt, data_file):
    import gradio as gr

    with gr.Blocks() as demo:
        view.build_tab(ctx)
    fns = {f.api_name: f for f in demo.fns.values() if f.api_name}
    assert {"fragments_compare", "fragments_checkpoints"} <= set(fns)
    compare = fns["fragments_compare"].fn
    args = ["uploaded file", None, str(data_file), 0, 0.01, 0.0, 0.0, 0.0, 0, False]
    summary, table, html = compare(frag_ckpt, *args)
    assert "identity baseline" in summary and len(table) == 6 and 'data-col="repaired"' in html
    with pytest.raises(gr.Error) as err:
        compare(None, *args)
    assert "no checkpoint chosen" in err.value.message
    with pytest.raises(gr.Error) as err:  # user text in the message is never rendered as HTML
        compare(frag_ckpt, "<img src=x>", *args[1:])
    assert "<\u2060img src=x>" in err.value.message and "&lt;" not in err.value.message
    update = fns["fragments_checkpoints"].fn(None)
    assert update["choices"] == []


def test_a_bad_input_marks_only_the_summary(ctx):
    """The spinner and the "Error" badge go on the summary Markdown alone, so a failed run leaves the
    previous accuracy table and hex view visible instead of covering them with errors."""
    import gradio as gr

    with gr.Blocks() as demo:
        view.build_tab(ctx)
    fn = next(f for f in demo.fns.values() if f.api_name == "fragments_compare")
    summary, table, hex_view = fn.outputs
    assert isinstance(summary, gr.Markdown) and summary.value  # a hint, so the badge has a place to sit
    assert isinstance(table, gr.Dataframe) and isinstance(hex_view, gr.HTML)
    assert list(fn.show_progress_on) == [summary]


class _Repair(torch.nn.Module):
    """A stub with the fragment variants' interface: ``predict_bytes`` returns ``fn(corrupted bytes)``."""

    DOMAIN, VARIANT, fragment_size = "fragments", "fragment-stub", 512

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def predict_bytes(self, x: torch.Tensor) -> torch.Tensor:
        corrupted = np.rint(x.reshape(-1).numpy() * 255).astype(np.uint8)
        return torch.from_numpy(self.fn(corrupted).astype(np.int64)).view(1, 1, -1)


def _zeroed(folder: str) -> torch.nn.Module:
    from models import load_pretrained

    model = load_pretrained(folder).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_a_repair_that_does_not_beat_the_identity_baseline_is_flagged(ctx, frag_ckpt, data_file, monkeypatch):
    offset = 64
    clean = np.frombuffer(data_file.read_bytes()[offset : offset + 512], np.uint8)
    settings = {"ber": 0.01, "substitution": 0.05, "erasure": 0.0, "burst": 0.0, "seed": 3}
    cases = {
        "oracle": _Repair(lambda corrupted: clean),  # a perfect repair
        "identity": _Repair(lambda corrupted: corrupted),  # passes the corrupted bytes through
        # every weight 0: fragment-dae predicts a gated correction to its input, so a zero gate (sigmoid 0.5,
        # not over the 0.5 threshold) replaces nothing and it passes the corrupted bytes through
        "zeroed": _zeroed(frag_ckpt),
    }
    results = {}
    for name, model in cases.items():
        monkeypatch.setattr(ctx, "load_model", lambda folder, domain=None, model=model: model)
        results[name] = view.compare_fragment(ctx, frag_ckpt, "uploaded file", None, str(data_file), offset,
                                              **settings)  # fmt: skip
    oracle, identity, zeroed = results["oracle"], results["identity"], results["zeroed"]
    assert oracle.metrics["accuracy"] == 1.0 > oracle.metrics["identity_accuracy"]
    assert oracle.flags == [] and oracle.table[-1] == ["flag", "none", "the baseline a repair must beat"]
    assert "flagged" not in oracle.summary
    base = identity.metrics["identity_accuracy"]
    assert identity.metrics["accuracy"] == base  # the pass-through is the baseline: not above it
    assert np.array_equal(zeroed.repaired, identity.repaired) and zeroed.metrics["accuracy"] == base
    for r in (identity, zeroed):
        [flag] = r.flags
        assert flag.short == "does not beat the identity baseline"
        expected = f"byte accuracy {r.metrics['accuracy']:.2%} ≤ {base:.2%} of the corrupted input"
        assert expected in flag.detail
        assert r.table[-1][1] == flag.text and f"flagged: {flag.text}" in r.summary


def test_missing_values_say_why():
    """No byte changed: the accuracy over corrupted bytes is n/a, with the registry's reason."""
    clean = np.arange(64, dtype=np.uint8)
    metrics = fragment_metrics(clean, clean, clean, np.zeros(64, bool))
    table = view.metrics_table(metrics, view.byte_marks(clean, clean, clean, np.zeros(64, bool)))
    row = next(r for r in table if r[0].startswith("byte accuracy, 0 corrupted"))
    assert row[1:] == ["n/a: the noise changed no byte"] * 2
