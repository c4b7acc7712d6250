"""Helpers shared by the comparison tabs: error reporting, uploads, checkpoint selection, figures, timing.

The views compute everything in pure functions that raise ValueError / FileNotFoundError with a message
for a person; :func:`user_errors` turns those into a ``gr.Error`` on the page, so no stack trace ever
reaches the browser.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DOMAIN_NAMES = {"sar": "SAR", "audio": "audio", "fragments": "fragment"}

#: Table rules of every tab (the app passes them to ``launch(css=...)``). Gradio's wrapping cells break
#: anywhere once a column is narrow ("laten t bpp", "-0.000/8", a flagged ENL figure on five lines): a cell
#: stays on one line and the table scrolls sideways instead; a header wraps between words only; the SAR flag
#: column, the one text column, wraps between words.
TABLE_CSS = """
.gradio-container table th span, .gradio-container table td span {
  word-break: normal !important; overflow-wrap: normal !important; hyphens: none !important;
}
.gradio-container table td span { white-space: nowrap !important; }
.gradio-container table th span { white-space: normal !important; }
#sar-metrics td:last-child span { white-space: normal !important; max-width: 22em; display: inline-block; }
#compare-study-result td:first-child, #train-study-result td:first-child { white-space: nowrap; }
"""


# -------------------------------------------------------------------------------------------------- errors
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
_WORD_JOINER = "\u2060"


def plain_message(text: str) -> str:
    """An error message that reads the same in the page and in an API client.

    Gradio renders a gr.Error message as HTML in the page, but an API client gets the string itself: escaped
    with html.escape the client read "dtype &lt;U1", unescaped the page dropped "<U1 ..." as a tag. An
    invisible word joiner after a '<' that would open a tag (or an '&' that would start an entity) makes the
    HTML parser keep both as text, and leaves the client plain text."""
    return _ENTITY.sub("&" + _WORD_JOINER, _TAG_START.sub("<" + _WORD_JOINER, text))


def user_errors(fn: F) -> F:
    """Wrap a Gradio handler so that bad input shows as a readable message instead of a stack trace.

    ValueError / FileNotFoundError / OSError carry messages written for the user and are shown as they are;
    anything else is a bug: its traceback goes to the server log and the page gets a short summary.
    """
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise gr.Error(plain_message(str(exc)), print_exception=False) from exc
        except Exception as exc:  # noqa: BLE001 - the page must never show a traceback
            log.exception("unexpected error in %s", getattr(fn, "__name__", "handler"))
            raise gr.Error(
                plain_message(f"unexpected error ({type(exc).__name__}): {exc}"), print_exception=False
            ) from exc

    return wrapper  # type: ignore[return-value]


def page_handler(
    ctx: Any,
    compute: Callable[..., Any],
    present: Callable[[Any], Any] = lambda result: result,
    optional: tuple[str, ...] = (),
) -> Callable[..., Any]:
    """The Gradio handler of a page action `compute(ctx, *inputs, progress=None)`.

    It takes the inputs under `compute`'s own parameter names (Gradio reads them for the API page), hands on
    the page's gr.Progress, returns `present(result)` (the outputs; the result itself by default) and shows
    bad input as a message (:func:`user_errors`). The inputs named in `optional` keep `compute`'s default, so
    an API client written before such an input was added still works (it gets the default)."""
    import gradio as gr

    params = list(inspect.signature(compute).parameters.values())[1:]
    if not params or params[-1].name != "progress":
        raise TypeError(f"{compute.__name__} must take `progress` as its last parameter")

    def handler(*inputs: Any) -> Any:  # Gradio passes the progress tracker last, as the signature says
        return present(compute(ctx, *inputs))

    # Plain names, as a handwritten handler has them: no defaults (every input comes from a component) but
    # the gr.Progress that tells Gradio to track this event.
    plain = [
        p.replace(default=p.default if p.name in optional else p.empty, annotation=p.empty)
        for p in params[:-1]
    ]
    tracked = params[-1].replace(default=gr.Progress(), annotation=inspect.Parameter.empty)
    handler.__signature__ = inspect.Signature([*plain, tracked])  # type: ignore[attr-defined]
    handler.__name__ = handler.__qualname__ = compute.__name__
    return user_errors(handler)


def model_call(what: str, fn: Callable[[], Any]) -> Any:
    """Run a model call; a torch RuntimeError (shape/dtype mismatch) becomes a ValueError naming `what`."""
    try:
        return fn()
    except RuntimeError as exc:
        raise ValueError(f"{what} could not process this input: {exc}") from exc


# ------------------------------------------------------------------------------------------------ visitors
#: localStorage key of the visitor id a Space keeps in each browser.
VISITOR_STORAGE_KEY = "autoencoder-studio-visitor"


def visitor_state(ctx: Any) -> Any:
    """A ``gr.BrowserState`` holding this browser's visitor id, filled when the page loads (call once, at the
    page's top level, inside the Blocks).

    On a public Space the load ties the page session to the id (``ctx.remember_visitor``), so the visitor's
    jobs, logs and Hub loads stay theirs after a reload; the id is never an API argument, so API clients are
    told apart by their session. Elsewhere the load does nothing."""
    import gradio as gr

    state = gr.BrowserState("", storage_key=VISITOR_STORAGE_KEY)
    root = gr.context.Context.root_block
    if root is not None and getattr(ctx, "space", False):

        def remember(browser_id: Any, request: gr.Request) -> str:
            return ctx.remember_visitor(getattr(request, "session_hash", None), browser_id)

        remember.__annotations__["request"] = gr.Request  # gradio is imported here, not at module level

        root.load(remember, inputs=state, outputs=state, api_visibility="private", queue=False)
    return state


# ------------------------------------------------------------------------------------------------- uploads
def upload_path(value: Any, what: str = "file") -> Path:
    """The local path of an uploaded file (a str/Path, a Gradio FileData dict or an object with ``.name``).

    Refuses a missing upload, a file that is not there any more and an empty file, each with its own message.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"no {what} uploaded: choose a file first")
    if isinstance(value, dict):
        value = value.get("path") or value.get("name")
    elif not isinstance(value, (str, Path)):
        value = getattr(value, "path", None) or getattr(value, "name", None)
    if not value:
        raise ValueError(f"could not read the uploaded {what}: expected a file path")
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"the uploaded {what} {path.name!r} no longer exists; upload it again")
    if not path.is_file():
        raise ValueError(f"the uploaded {what} {path.name!r} is not a regular file")
    if path.stat().st_size == 0:
        raise ValueError(f"the uploaded {what} {path.name!r} is empty (0 bytes)")
    return path


def clear_results_on_change(upload: Any, status: Any, results: Sequence[Any], button: str) -> None:
    """When `upload` changes, empty `results` and say so on `status`: results on screen always belong to
    the input named beside them, also when the new file turns out to be bad (its error leaves them as they
    were)."""

    def clear(value: Any) -> tuple[Any, ...]:
        name = Path(str(value)).name if value else ""
        what = f"New input **{escape_markdown(name)}**" if name else "Input removed"
        note = f"{what}: press **{button}** to see its results (the previous results were cleared)."
        return (note, *[None] * len(results))

    upload.change(clear, inputs=upload, outputs=[status, *results], api_visibility="private", queue=False)


# --------------------------------------------------------------------------------------------- checkpoints
def selected_folders(selection: Any, domain: str, multiple: bool = False, ctx: Any = None) -> list[str]:
    """Checkpoint folders picked in a dropdown (a str, a list, or None), with a clear error if none is.

    With `ctx`, each item may also name a run, as API clients do (see `resolve_checkpoint`).
    """
    if selection is None:
        items: list[Any] = []
    elif isinstance(selection, (str, Path)):
        items = [selection]
    elif isinstance(selection, Iterable):
        items = list(selection)
    else:
        raise ValueError(f"expected a checkpoint folder (or a list of them), got {type(selection).__name__}")
    folders = [str(s) for s in items if s is not None and str(s).strip()]
    if not folders:
        what = "one or more" if multiple else "a"
        noun = "checkpoints" if multiple else "checkpoint"
        raise ValueError(
            f"no checkpoint chosen: pick {what} {DOMAIN_NAMES[domain]} {noun} (train one in the Train "
            "tab, or load one in the Hub tab, then press refresh)"
        )
    return folders if ctx is None else [resolve_checkpoint(ctx, f, domain) for f in folders]


def resolve_checkpoint(ctx: Any, name: str, domain: str) -> str:
    """The checkpoint folder `name` stands for: a dropdown value or label (``RUN_ID/best``,
    ``reference · sar-baseline``), a run id (its best checkpoint, else its last), ``RUN_ID/last``, or (not on
    a public Space) a folder.

    The dropdowns accept values outside their choices so that an API client need not fetch a session's
    choices first; this is where such a value is checked.
    """
    name = str(name).strip()
    catalog = ctx.checkpoint_folders(domain)
    space = bool(getattr(ctx, "space", False))
    for label, value, folder in catalog:
        if name in (value, label) or (not space and name == folder):
            return folder
    run_id, _, kind = name.partition("/")
    if kind in ("", "best", "last") and ctx.store.get_run(run_id) is not None:
        from trainers.runs import checkpoints

        run_dir = Path(ctx.runs_dir) / run_id
        for k in [kind] if kind else ["best", "last"]:
            try:
                found = checkpoints.checkpoint_path(run_dir, k)
            except (ValueError, OSError) as exc:
                raise ValueError(f"run {run_id!r}: its {k} checkpoint cannot be read ({exc})") from None
            if found is not None:
                return str(run_dir / checkpoints.CHECKPOINTS_DIR / k)
        raise ValueError(f"run {run_id!r} has no {kind or 'saved'} checkpoint yet")
    if not space and (Path(name).is_absolute() or name.count("/") > 1 or Path(name).is_dir()):
        # A folder outside the catalogue (scripts, the Hub tab's exports), or one that has gone: loading
        # it says which. A public Space reads no server folder.
        return name
    typed = match_choice(name, [(label, value) for label, value, _ in catalog], "checkpoint")
    if typed is not None:  # part of a name typed into the dropdown, matching one checkpoint
        return next(folder for _, value, folder in catalog if value == typed)
    # The values, which name each checkpoint distinctly (a run id and kind; "reference · sar-baseline").
    known = ", ".join(value for _, value, _ in catalog[:5]) or "none yet"
    where = "" if space else " or a checkpoint folder"
    raise ValueError(
        f"unknown checkpoint {name!r}: give a run id, RUN_ID/last{where} "
        f"({DOMAIN_NAMES[domain]} checkpoints here: {known}{', ...' if len(catalog) > 5 else ''})"
    )


def match_choice(text: str, choices: Sequence[tuple[str, str]], noun: str = "run") -> str | None:
    """The value of the one dropdown choice (label, value) whose label or value contains ``text`` (case
    apart), so a part of a run's name or id typed into a dropdown picks that run; None when none does.

    Several matches raise a ValueError naming a few of them. Only the choices the page offers are searched,
    so a typed text never reaches runs the visitor cannot see."""
    needle = text.strip().lower()
    if not needle:
        return None
    hits = list(dict.fromkeys(v for label, v in choices if needle in label.lower() or needle in v.lower()))
    if len(hits) > 1:
        shown = ", ".join(hits[:3]) + (", ..." if len(hits) > 3 else "")
        raise ValueError(
            f"{text.strip()!r} matches {len(hits)} {noun}s ({shown}): type more of the one you mean"
        )
    return hits[0] if hits else None


def load_checkpoint(ctx: Any, folder: str, domain: str) -> nn.Module:
    """``ctx.load_model`` with the folder named in every error (missing folder, other domain, bad weights)."""
    path = Path(folder)
    name = run_label(ctx, folder)  # never the server path (the API answers with these messages)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {name!r} does not exist (was the run deleted?)")
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ValueError(f"{name!r} is not a checkpoint folder: it needs config.json and model.safetensors")
    try:
        model = ctx.load_model(path, domain)
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"cannot use checkpoint {run_label(ctx, folder)!r}: {exc}") from exc
    if getattr(model, "DOMAIN", None) != domain:  # belt and braces: the cache may hold any model
        raise ValueError(
            f"checkpoint {run_label(ctx, folder)!r} is a {getattr(model, 'VARIANT', '?')} model; "
            f"this tab needs a {DOMAIN_NAMES[domain]} model"
        )
    return model


def run_label(ctx: Any, folder: str | Path) -> str:
    """Short name of a checkpoint for tables: the run id for runs, the catalogue label for external ones."""
    folder_s = str(folder)
    externals = ctx.externals() if hasattr(ctx, "externals") else getattr(ctx, "external", {})
    for label, ext in {**getattr(ctx, "reference", {}), **externals}.items():
        if str(ext) == folder_s:
            return str(label)
    path = Path(folder_s)
    try:
        rel = path.resolve().relative_to(Path(ctx.runs_dir).resolve())
        return f"{rel.parts[0]} ({path.name})" if len(rel.parts) > 1 else rel.parts[0]
    except (ValueError, AttributeError, OSError, IndexError):
        return path.name or folder_s


def display_name(ctx: Any, folder: str | Path) -> str:
    """What a person calls a checkpoint in a title: the run's name where it has one, else its id, with
    "(best)"/"(last)"; the catalogue label of an external or reference checkpoint."""
    label = run_label(ctx, folder)
    run_id, _, kind = label.partition(" (")
    store = getattr(ctx, "store", None)
    run = store.get_run(run_id) if store is not None and run_id else None
    name = getattr(run, "name", None)
    return f"{name} ({kind}" if name and kind else (name or label)


def wrap_title(text: str, width: int, lines: int = 2, keep_tail: bool = True) -> str:
    """``text`` on at most ``lines`` lines of at most ``width`` characters, joined by <br> for a plotly title:
    broken after spaces, "·", "-" or "_" where possible, and cut with "…" when it is still too long, keeping
    its end (``keep_tail``: a run id's distinguishing suffix) or its start (a name a person wrote). Plotly
    never wraps a title itself, so a long one runs into its neighbour's."""
    width = max(4, int(width))
    parts = [p for p in re.findall(r"[^\s·_-]*[\s·_-]*", text.strip()) if p]
    raw: list[str] = []  # lines as in the text, separators kept, so a cut tail reads as written
    line = ""
    for part in parts:
        if len(line) + len(part.rstrip()) <= width or not line:
            line += part
        else:
            raw.append(line)
            line = part
    raw.append(line)
    raw = [piece for chunk in raw for piece in _chunks(chunk, width)]
    if len(raw) > lines:
        rest = "".join(raw[lines - 1 :]).strip()
        raw = raw[: lines - 1] + ["…" + rest[-(width - 1) :] if keep_tail else rest[: width - 1] + "…"]
    return "<br>".join(html.escape(piece.strip(), quote=False) for piece in raw)


def _chunks(text: str, width: int) -> list[str]:
    """A word longer than a line, cut into pieces of ``width`` (trailing separators do not count)."""
    if len(text.rstrip()) <= width:
        return [text]
    return [text[i : i + width] for i in range(0, len(text), width)]


def dropdown_update(ctx: Any, domain: str, current: Any = None, multiselect: bool = False) -> Any:
    """A ``gr.update`` with fresh checkpoint choices, keeping the user's selections that still exist; with
    nothing chosen (or a choice that is gone), the shipped reference checkpoints, as the README says."""
    import gradio as gr

    choices = ctx.checkpoint_choices(domain)
    if multiselect and current is None:  # never chosen: start from the shipped reference checkpoints
        return gr.update(choices=choices, value=ctx.default_checkpoints(domain))
    return choices_update(choices, current, multiselect, default_checkpoint(ctx, domain))


def default_checkpoint(ctx: Any, domain: str) -> str | None:
    """The checkpoint a single-choice tab shows first: the domain's first shipped reference (not the newest
    run, which may be a cancelled 6-step one); None when none ships."""
    return next(iter(ctx.default_checkpoints(domain)), None)


def choices_update(
    choices: list[tuple[str, Any]], current: Any, multiselect: bool = False, default: Any = None
) -> Any:
    """A ``gr.update`` with fresh (label, value) choices, keeping the selections that still exist; a single
    choice that is gone (or none) becomes ``default`` when it is offered, else the first choice."""
    import gradio as gr

    valid = {value for _, value in choices}
    if multiselect:
        return gr.update(choices=choices, value=[c for c in current or [] if c in valid])
    if current in valid:
        return gr.update(choices=choices, value=current)
    value = default if default in valid else (choices[0][1] if choices else None)
    return gr.update(choices=choices, value=value)


def checkpoint_picker(
    ctx: Any, domain: str, label: str, info: str, multiselect: bool = False
) -> tuple[Any, Callable[[Any], Any]]:
    """A checkpoint dropdown of `domain` with a refresh button (API endpoint ``<domain>_checkpoints``).

    Returns (dropdown, refresh function); the app also runs the refresh when the tab is opened.
    """
    import gradio as gr

    with gr.Row():
        dropdown = gr.Dropdown(
            choices=ctx.checkpoint_choices(domain),
            value=ctx.default_checkpoints(domain) if multiselect else default_checkpoint(ctx, domain),
            multiselect=multiselect,
            label=label,
            info=info,
            scale=4,
            allow_custom_value=True,  # API clients may name a run; `resolve_checkpoint` checks the value
        )
        button = gr.Button("↻ refresh", scale=1, size="sm")

    @user_errors
    def refresh(current: Any) -> Any:
        return dropdown_update(ctx, domain, current, multiselect=multiselect)

    button.click(refresh, inputs=dropdown, outputs=dropdown, api_name=f"{domain}_checkpoints")
    return dropdown, refresh


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def timed_ms(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, wall time in ms) of one call; synchronises CUDA so the time covers the kernels too."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) * 1000.0


# ------------------------------------------------------------------------------------------------ display
def fmt(value: Any, digits: int = 3) -> Any:
    """Round floats for tables; NaN/inf are shown as text rather than as a blank cell."""
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if np.isnan(v):
            return "n/a"
        if np.isinf(v):  # never a figure: an infinite metric is a missing one (no +/-inf is ever shown)
            return "n/a"
        if abs(v) >= 1e4:  # e.g. the ENL ratio of an untrained model: significant digits, not decimals
            return float(f"{v:.4g}")
        return round(v, digits)
    return value


# Characters that Markdown reads as formatting: `__future__.py` would otherwise show as a bold "future".
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")


def escape_markdown(text: str) -> str:
    """Plain text (file names, user input) that a Markdown component shows exactly as written."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def notes_markdown(notes: Sequence[str]) -> str:
    """Status line(s) for a Markdown component; the notes are plain text, escaped as such."""
    return "\n".join(f"- {escape_markdown(n)}" for n in notes)


def heatmap(z: np.ndarray, coloraxis: str, name: str) -> Any:
    """A plotly heatmap of an image with row 0 at the top, sharing the colour axis ``coloraxis``."""
    import plotly.graph_objects as go

    # float32 keeps the base64-encoded figure at 4 bytes per pixel.
    return go.Heatmap(
        z=np.asarray(z, dtype=np.float32),
        coloraxis=coloraxis,
        name=name,
        hovertemplate="x=%{x} y=%{y}<br>%{z:.4f}<extra>" + html.escape(name) + "</extra>",
    )
