"""Share checkpoints: export a run's checkpoint as a Hub-ready folder, push it to the Hugging Face Hub, and
load a checkpoint back from the Hub or from any folder.

An exported folder holds ``model.safetensors`` + ``config.json`` (architecture and preprocessing; what
``models.load_pretrained`` needs) + ``README.md`` (model card with metadata, metrics and examples)
+ ``examples.png`` + ``runs/RUN_ID/`` (the run's TensorBoard event files: every logged point and the media
logged along the run; the Hub shows them in its metrics tab, ``tensorboard --logdir runs`` locally); the
optimiser state and trainer bookkeeping stay in the run. The hand-drawn ``loss_curve.png`` of earlier
versions is gone: the metrics tab shows the same curves, zoomable, with every validation metric.

A Hub token is taken from the ``token`` argument (the studio's password field, for one push) or from
``huggingface_hub``'s own lookup (``HF_TOKEN``, then ``hf auth login``). It is handed to the client for the
requests and nowhere else: never logged, never put in a message, a run, a config or a model card.

Hub failures become exceptions with a message for a person: ``ConnectionError`` (no network, offline mode),
``PermissionError`` (401 bad/missing token, 403 no write access), ``FileNotFoundError`` (404: repo, branch or
file), ``ValueError`` (malformed repo id or branch, anything else the Hub refused).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from trainers.hub.model_card import (
    EXAMPLES_FILE,
    LOSS_CURVE_FILE,
    TAB_OF_DOMAIN,
    CardInfo,
    audio_examples,
    build_model_card,
    fragment_examples,
    sar_examples,
)
from trainers.hub.source import resolve_source_url
from trainers.runs import checkpoints
from trainers.runs.store import DB_NAME, RunRecord, RunStore
from trainers.training.progress import Progress, no_progress, terminal_progress

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
README_FILE = "README.md"
# The folder of the run's TensorBoard event files in an export (``runs/RUN_ID/events.out.tfevents.RUN_ID``).
TENSORBOARD_DIR = "runs"
# Everything an export writes; an existing folder holding anything else is refused, never overwritten.
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, README_FILE, EXAMPLES_FILE, TENSORBOARD_DIR)
# What earlier versions also wrote: still recognised (and removed) when an old export is replaced.
_OLD_EXPORT_FILES = (LOSS_CURVE_FILE,)
# What a load fetches from a Hub repo: the checkpoint and its card, nothing executable.
LOAD_PATTERNS = [CONFIG_FILE, WEIGHTS_FILE, README_FILE]
KINDS = checkpoints.KINDS
TOKEN_HELP = "create one with write access at https://huggingface.co/settings/tokens"
# Git ref rules that matter for a branch typed by hand: no spaces, '..', '//', leading '-'/'/', '.lock' end.
_BRANCH = re.compile(r"^(?![-./])(?!.*\.\.)(?!.*//)(?!.*\.lock$)(?!.*[/.]$)[A-Za-z0-9._/-]{1,100}$")
_HUB_URL = re.compile(r"^https?://(?:www\.)?huggingface\.co/")


# ------------------------------------------------------------------------------------------ validation
def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return str(kind)


def parse_repo_id(text: Any, allow_revision: bool = False) -> tuple[str, str | None]:
    """``owner/name`` (or ``name``), a Hub URL of one, and with ``allow_revision`` a trailing ``@branch``.

    Returns (repo_id, revision or None); a malformed id raises ValueError naming the expected form.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no Hub repo id given: expected 'owner/name', e.g. 'alice/sar-residual'")
    repo = text.strip()
    endpoint = constants.ENDPOINT.rstrip("/") + "/"
    # Only a pasted URL loses its trailing '/': a typed id goes to the Hub's own validator as it is, so
    # '/etc' is refused instead of silently becoming 'etc'.
    if repo.startswith(endpoint) or _HUB_URL.match(repo):
        repo = (repo[len(endpoint) :] if repo.startswith(endpoint) else _HUB_URL.sub("", repo)).rstrip("/")
    revision = None
    if allow_revision and "@" in repo:
        repo, revision = repo.split("@", 1)
        revision = check_branch(revision)
    tree = re.match(r"^([^/]+/[^/]+)/tree/([^/]+)$", repo)  # a pasted ".../owner/name/tree/branch" URL
    if tree and allow_revision:
        repo, revision = tree.group(1), check_branch(tree.group(2))
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ValueError(
            f"invalid Hub repo id {_shorten(text.strip())!r}: expected 'owner/name' (or 'name' for your own "
            "namespace) made of letters, digits, '-', '_' and '.', not starting or ending with '-' or '.', "
            "at most 96 characters"
        ) from None
    return repo, revision


def _shorten(text: str, limit: int = 80) -> str:
    """``text`` as a message quotes it: a 500-character paste is cut, not echoed whole."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_branch(branch: Any) -> str:
    """A branch name the Hub accepts (git ref rules), else ValueError."""
    if not isinstance(branch, str) or not _BRANCH.match(branch.strip()):
        raise ValueError(
            f"invalid branch name {_shorten(str(branch))!r}: use letters, digits, '.', '_', '-' and '/' "
            "(no spaces, no '..', not starting with '-', '.' or '/'), at most 100 characters"
        )
    return branch.strip()


def _scrub(text: str, token: str | None) -> str:
    # Hub error texts never contain the token, but a message must not leak it whatever a server answers.
    return text.replace(token, "***") if token else text


# --------------------------------------------------------------------------------------------- the run
def _open_store(runs_dir: str | Path) -> RunStore:
    folder = Path(runs_dir).expanduser()
    if not (folder / DB_NAME).is_file():  # RunStore would create an empty one: a typo'd path is an error
        raise FileNotFoundError(
            f"no runs database in {str(folder)!r} (expected {DB_NAME}; is --runs-dir right?)"
        )
    return RunStore(folder)


def _run_checkpoint(store: RunStore, run_id: Any, kind: str) -> tuple[RunRecord, Path]:
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError("no run chosen: expected a run id, e.g. 20260101-120000-sar-residual-3fa2")
    run = store.get_run(run_id.strip())
    if run is None:
        raise FileNotFoundError(f"no run with id {run_id!r} in {str(store.runs_dir)!r}")
    run_folder = store.run_dir(run.id)
    folder = checkpoints.checkpoint_path(run_folder, kind)
    if folder is None:
        other = next((k for k in KINDS if k != kind and checkpoints.checkpoint_path(run_folder, k)), None)
        hint = f"; it has a '{other}' checkpoint (choose kind '{other}')" if other else "; it has none yet"
        raise FileNotFoundError(f"run {run.id} ({run.status}) has no '{kind}' checkpoint{hint}")
    return run, folder


def _val_metrics(store: RunStore, run_id: str, step: int | None) -> tuple[dict, dict, dict]:
    """(metrics at the checkpoint's step, best over the run, last logged) of the run's "val" metrics."""
    at_step: dict[str, float] = {}
    final: dict[str, float] = {}
    for key in store.metric_names([run_id]):
        split, name = key.split("/", 1)
        if split != "val":
            continue
        series = store.metric_series(run_id, name, split)
        if not series:
            continue
        final[name] = series[-1][1]
        values = dict(series)
        if step is not None and step in values:
            at_step[name] = values[step]
    return at_step, store.best_metrics(run_id), final


def _examples(model: Any, config: dict[str, Any]):
    """Render the domain's example figure from a few samples of its built-in data (see model_card)."""
    import torch

    from trainers.data.spec import DataSpec
    from trainers.training.tasks import task_for

    task = task_for(model.VARIANT)
    preprocessing = dict(getattr(model, "preprocessing", None) or {})
    if task.domain == "fragments":
        data = task.dataset_for_eval(DataSpec("fragments", options={"max_files": 12}), preprocessing, config)
        picked = []
        for i in range(min(len(data), 256)):  # fragments the noise actually touched show the repair
            corrupted, clean, changed = data[i]
            if bool(torch.as_tensor(changed).any()):
                picked.append((corrupted, clean))
            if len(picked) == 3:
                break
        if not picked:
            raise ValueError("no corrupted fragment among the built-in samples")
        corrupted = torch.stack([c for c, _ in picked])
        clean = torch.stack([c for _, c in picked])
        return fragment_examples(model, corrupted, clean)
    n = 3 if task.domain == "sar" else 2
    data = task.dataset_for_eval(DataSpec(task.domain, options={"n": n}), preprocessing, config)
    items = [data[i] for i in range(min(n, len(data)))]
    # SAR items are (x, valid, db_range): the examples show the normalised images.
    batch = torch.stack([it[0] if isinstance(it, tuple) else it for it in items]).float()
    return sar_examples(model, batch) if task.domain == "sar" else audio_examples(model, batch)


def _build_folder(
    store: RunStore,
    run: RunRecord,
    checkpoint: Path,
    kind: str,
    dest: Path,
    repo_id: str | None = None,
    progress: Progress = no_progress,
    source_url: str | None = None,
) -> list[str]:
    """Write the export files of ``checkpoint`` into the empty folder ``dest``; returns their names.

    ``source_url`` (checked, or None) is where the card tells a reader to install the studio from.
    ``progress`` hears each step (the example reconstructions take the longest: they build data)."""
    from models import load_pretrained

    progress(0.0, "loading the checkpoint")
    model = load_pretrained(checkpoint).cpu().eval()  # also proves the weights fit their config
    # copyfile, not copy2: the export gets ordinary permissions, not the checkpoint's private ones.
    shutil.copyfile(checkpoint / WEIGHTS_FILE, dest / WEIGHTS_FILE)
    shutil.copyfile(checkpoint / CONFIG_FILE, dest / CONFIG_FILE)
    config = json.loads((checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
    state = checkpoints.read_trainer_state(checkpoint)
    step = state.get("step") if isinstance(state.get("step"), int) else None
    epoch = state.get("epoch") if isinstance(state.get("epoch"), int) else None
    at_step, best, final = _val_metrics(store, run.id, step)
    info = CardInfo(
        run_id=run.id,
        variant=model.VARIANT,
        domain=model.DOMAIN,
        kind=kind,
        step=step,
        epoch=epoch,
        status=run.status,
        run_config=dict(run.config),
        model_config=config,
        parameters=model.count_parameters(),
        model_class=f"{type(model).__module__}.{type(model).__name__}",
        checkpoint_metrics=at_step,
        best_metrics=best,
        final_metrics=final,
        repo_id=repo_id,
        source_url=source_url,
    )
    progress(0.1, "TensorBoard event files")
    try:
        from trainers.runs.export import write_tensorboard

        write_tensorboard(store, run.id, dest / TENSORBOARD_DIR / run.id)
    except (ValueError, ImportError, OSError, RuntimeError) as exc:
        # E.g. a run that logged nothing, or no tensorboard package: the checkpoint is still worth sharing.
        log.warning("TensorBoard event files of run %s not written: %s", run.id, exc)
        shutil.rmtree(dest / TENSORBOARD_DIR, ignore_errors=True)
    else:
        info.tensorboard_dir = TENSORBOARD_DIR
    progress(0.3, "example reconstructions")
    try:
        image, markdown = _examples(model, config)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        # A card without examples beats no export (e.g. the built-in data cannot be read on this machine).
        log.warning("example reconstructions for run %s not rendered: %s", run.id, exc)
        info.examples_markdown = f"_Example reconstructions could not be rendered: {exc}_"
    else:
        image.save(dest / EXAMPLES_FILE)
        info.has_examples = True
        info.examples_markdown = markdown
    progress(0.9, "model card")
    (dest / README_FILE).write_text(build_model_card(info), encoding="utf-8")
    progress(1.0, "written")
    return sorted(p.name for p in dest.iterdir())


# ----------------------------------------------------------------------------------------------- export
def export_checkpoint(
    run_id: str,
    runs_dir: str | Path,
    to_folder: str | Path,
    kind: str = "best",
    progress: Progress = no_progress,
    source_url: str | None = None,
) -> Path:
    """Write the run's ``kind`` checkpoint with its model card into ``to_folder`` and return that folder.

    ``to_folder`` may be new, empty, or an earlier export (only export files in it); anything else is
    refused. The files are built in a temporary sibling folder first, so a failure leaves it unchanged.
    ``source_url``: the studio's source repository the card installs from (default: see trainers.hub.source).
    """
    kind = _check_kind(kind)
    source_url = resolve_source_url(source_url)
    if to_folder is None or not str(to_folder).strip():
        raise ValueError("no export folder given: expected a folder path, e.g. ./exports/my-model")
    target = Path(str(to_folder).strip()).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise ValueError(f"export target {str(target)!r} exists and is not a folder")
    if target.is_dir():
        ours = EXPORT_FILES + _OLD_EXPORT_FILES
        foreign = sorted(p.name for p in target.iterdir() if p.name not in ours)
        if foreign:
            raise ValueError(
                f"export folder {str(target)!r} already holds other files ({', '.join(foreign[:5])}); "
                "choose a new or empty folder"
            )
    with _open_store(runs_dir) as store:
        run, checkpoint = _run_checkpoint(store, run_id, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.export-{secrets.token_hex(4)}"
        staging.mkdir()  # not mkdtemp: that one is private (0700), an export is meant to be shared
        try:
            written = _build_folder(
                store, run, checkpoint, kind, staging, progress=progress, source_url=source_url
            )
            if not target.exists():
                os.replace(staging, target)
            else:
                for name in written:
                    if (target / name).is_dir():  # runs/: a folder is replaced whole, not merged
                        shutil.rmtree(target / name)
                    os.replace(staging / name, target / name)
                for name in set(EXPORT_FILES + _OLD_EXPORT_FILES) - set(written):  # e.g. old loss_curve.png
                    if (target / name).is_dir():
                        shutil.rmtree(target / name)
                    else:
                        (target / name).unlink(missing_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.debug("exported run %s (%s checkpoint) to %s", run.id, kind, target)
    return target


# ------------------------------------------------------------------------------------------------- push
def _hub_error(
    exc: BaseException, action: str, repo_id: str | None, token: str | None, user: str | None = None
) -> Exception:
    """The exception to raise instead of a huggingface_hub/httpx error, with a message for a person."""
    endpoint = constants.ENDPOINT
    if isinstance(exc, OfflineModeIsEnabled) or (
        isinstance(exc, LocalEntryNotFoundError) and constants.is_offline_mode()
    ):
        return ConnectionError(
            f"cannot {action}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1)"
            + (" and the repo is not in the local cache" if isinstance(exc, LocalEntryNotFoundError) else "")
            + "; unset HF_HUB_OFFLINE to reach the Hub"
        )
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, (httpx2.TransportError, HfHubHTTPError)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, httpx2.TransportError):
        return ConnectionError(
            f"cannot {action}: the Hugging Face Hub at {endpoint} cannot be reached "
            f"({type(cause).__name__}: {_scrub(str(cause), token)}). Check the network connection"
            + (" and HF_ENDPOINT" if endpoint != "https://huggingface.co" else "")
            + "."
        )
    if isinstance(exc, LocalTokenNotFoundError):
        return PermissionError(
            f"cannot {action}: no Hugging Face token. Paste one in the token field, set HF_TOKEN, or run "
            f"`hf auth login` ({TOKEN_HELP})"
        )
    if isinstance(cause, HfHubHTTPError) and cause.response is not None:
        status = cause.response.status_code
        server = _scrub(cause.server_message or "", token).strip()
        detail = f" The Hub said: {server}" if server else ""
        namespace = repo_id.split("/")[0] if repo_id and "/" in repo_id else None
        if isinstance(cause, RevisionNotFoundError):
            return FileNotFoundError(f"cannot {action}: branch or revision not found in '{repo_id}'.{detail}")
        if isinstance(cause, RepositoryNotFoundError):
            return FileNotFoundError(
                f"cannot {action}: Hub repo '{repo_id}' not found, or it is private and "
                + ("this token cannot see it." if token or user else "needs a token with access to it.")
                + detail
            )
        if status == 401:
            return PermissionError(
                f"cannot {action}: the Hub rejected the token (401 Unauthorized): it is missing, invalid or "
                f"expired; {TOKEN_HELP}.{detail}"
            )
        if status == 403:
            if user and namespace and namespace != user:
                return PermissionError(
                    f"cannot {action}: '{repo_id}' is in the namespace '{namespace}', and the token's user "
                    f"'{user}' has no write access there (403 Forbidden). Push to '{user}/"
                    f"{repo_id.split('/', 1)[1]}' or ask '{namespace}' for write access.{detail}"
                )
            return PermissionError(
                f"cannot {action}: no write access to '{repo_id}' (403 Forbidden); the token may be "
                f"read-only or the repo may belong to someone else; {TOKEN_HELP}.{detail}"
            )
        if status == 404:
            return FileNotFoundError(f"cannot {action}: not found on the Hub (404).{detail}")
        if status >= 500:
            return ConnectionError(f"cannot {action}: the Hub answered {status}; try again later.{detail}")
        return ValueError(f"cannot {action}: the Hub refused the request ({status}).{detail}")
    return ValueError(f"cannot {action}: {type(exc).__name__}: {_scrub(str(exc), token)}")


def push_checkpoint(
    run_id: str,
    runs_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    branch: str | None = None,
    commit_message: str | None = None,
    kind: str = "best",
    progress: Progress = no_progress,
    source_url: str | None = None,
) -> str:
    """Push the run's ``kind`` checkpoint with its model card to the Hub model repo ``repo_id``.

    Creates the repo (``private`` applies only to a new repo) and the branch when missing. Returns the URL
    of the commit (``<endpoint>/<owner>/<name>/commit/<sha>``). Everything is checked before any upload.
    ``source_url``: the studio's source repository the card installs from (default: see trainers.hub.source).
    """
    kind = _check_kind(kind)
    source_url = resolve_source_url(source_url)
    repo_id, _ = parse_repo_id(repo_id)
    branch = None if branch is None or not str(branch).strip() else check_branch(str(branch))
    if branch == constants.DEFAULT_REVISION:
        branch = None
    if commit_message is not None and not isinstance(commit_message, str):
        raise ValueError(f"commit message must be text, got {type(commit_message).__name__}")
    token = token.strip() if isinstance(token, str) and token.strip() else None
    if constants.is_offline_mode():
        raise _hub_error(OfflineModeIsEnabled("offline"), f"push to '{repo_id}'", repo_id, token)

    with _open_store(runs_dir) as store:
        run, checkpoint = _run_checkpoint(store, run_id, kind)
        api = HfApi()
        action = f"push to '{repo_id}'"
        user = None
        try:
            me = api.whoami(token=token)
            user = me.get("name")
            role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
        except (HfHubHTTPError, httpx2.HTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled) as exc:
            raise _hub_error(exc, action, repo_id, token) from None
        if role == "read":
            raise PermissionError(f"cannot {action}: the token of '{user}' is read-only; {TOKEN_HELP}")
        if "/" not in repo_id and user:
            repo_id = f"{user}/{repo_id}"
            action = f"push to '{repo_id}'"
        message = (commit_message or "").strip() or (
            f"Upload {run.variant} {kind} checkpoint of run {run.id}"
        )
        with tempfile.TemporaryDirectory(prefix="hub-push-") as tmp:
            # Building the folder takes most of the time; in a terminal the upload shows its own bytes bar.
            def building(fraction: float, desc: str) -> None:
                progress(0.8 * fraction, desc)

            _build_folder(
                store,
                run,
                checkpoint,
                kind,
                Path(tmp),
                repo_id=repo_id,
                progress=building,
                source_url=source_url,
            )
            progress(0.8, f"uploading to {repo_id}")
            try:
                # private=None rather than False: a new repo then follows the namespace's default visibility.
                url = api.create_repo(repo_id, token=token, private=True if private else None, exist_ok=True)
                repo_id = getattr(url, "repo_id", None) or repo_id
                if branch:
                    api.create_branch(repo_id, branch=branch, token=token, exist_ok=True)
                info = api.upload_folder(
                    repo_id=repo_id, folder_path=tmp, commit_message=message, revision=branch, token=token
                )
            except (HfHubHTTPError, httpx2.HTTPError, OfflineModeIsEnabled) as exc:
                raise _hub_error(exc, action, repo_id, token, user) from None
    progress(1.0, "pushed")
    commit_url = str(info.commit_url)
    log.info(
        "pushed run %s (%s checkpoint) to %s%s", run.id, kind, repo_id, f" branch {branch}" if branch else ""
    )
    return commit_url


# ------------------------------------------------------------------------------------------------- load
def _exists(path: Path) -> bool:
    """Path.exists that answers False for a name the OS cannot even look up (ENAMETOOLONG: a 500-character
    repo id typed into the load field), which would otherwise surface as "[Errno 36] File name too long"."""
    try:
        return path.exists()
    except OSError:
        return False


def load_from_hub_or_folder(
    source: str, cache_dir: str | Path | None = None, token: str | bool | None = None
) -> tuple[str, Path]:
    """A checkpoint folder, or a Hub repo id (``owner/name``, ``owner/name@branch`` or its URL), as
    (label, local folder) after checking that ``models.load_pretrained`` accepts it.

    Hub repos are fetched with ``snapshot_download`` (config, safetensors weights and card only) into
    ``cache_dir`` (default: the Hugging Face cache); offline, a cached copy is used. ``token=None`` lets
    huggingface_hub find one (HF_TOKEN, ``hf auth login``); ``token=False`` loads anonymously.
    """
    from models import load_pretrained

    if not isinstance(source, str) or not source.strip():
        raise ValueError("nothing to load: expected a Hub repo id ('owner/name') or a checkpoint folder path")
    text = source.strip()
    path = Path(text).expanduser()
    if isinstance(token, str):
        token = token.strip() or None
    elif token is not False:
        token = None
    is_url = text.startswith(("http://", "https://"))
    exists = _exists(path)
    # Repo ids have at most one '/', so anything with more, or that looks like a path, is a folder.
    if not is_url and (
        exists or text.startswith((".", "/", "~", "\\")) or text.split("@", 1)[0].count("/") > 1
    ):
        if not exists:
            raise FileNotFoundError(f"checkpoint folder {_shorten(text)!r} does not exist")
        if not path.is_dir():
            raise ValueError(
                f"{_shorten(text)!r} is a file; expected a checkpoint folder with config.json and "
                "model.safetensors"
            )
        folder, where = path.absolute(), f"folder {path.name or text}"
    else:
        repo_id, revision = parse_repo_id(text, allow_revision=True)
        action = f"load '{repo_id}'"
        try:
            folder = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    allow_patterns=LOAD_PATTERNS,
                )
            )
        except (HfHubHTTPError, httpx2.HTTPError, OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
            raise _hub_error(exc, action, repo_id, token or None) from None
        where = f"hub {repo_id}" + (f"@{revision}" if revision else "")
    try:
        model = load_pretrained(folder)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise ValueError(f"{where} is not a checkpoint this studio can load: {exc}") from None
    label = f"{where} · {model.VARIANT}"
    return label, folder


def domain_tab(folder: str | Path) -> tuple[str, str, str]:
    """(variant, domain, studio tab) of a checkpoint folder, from its config.json."""
    from models import VARIANTS

    config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    info = VARIANTS[config["variant"]]
    return info.name, info.domain, TAB_OF_DOMAIN[info.domain]


# -------------------------------------------------------------------------------------------------- CLI
def cli_push(args: argparse.Namespace) -> int:
    """``python -m trainers push RUN_ID --repo-id OWNER/NAME`` or ``--to-folder DIR``; returns the exit code.

    The token comes from HF_TOKEN or ``hf auth login``; there is deliberately no --token flag, so a token
    never lands in shell history or process listings.
    """
    kind = getattr(args, "kind", "best") or "best"
    runs_dir = getattr(args, "runs_dir", "runs")
    source_url = getattr(args, "source_url", None)
    if args.to_folder and args.repo_id:
        raise ValueError("give either --repo-id (push to the Hub) or --to-folder (export locally), not both")
    if args.to_folder:
        for flag, value in (
            ("--private", args.private),
            ("--branch", args.branch),
            ("--commit-message", args.commit_message),
        ):
            if value:
                raise ValueError(f"{flag} applies to a Hub push; it has no meaning with --to-folder")
        with terminal_progress(f"export {args.run_id}") as progress:
            folder = export_checkpoint(
                args.run_id, runs_dir, args.to_folder, kind=kind, progress=progress, source_url=source_url
            )
        files = ", ".join(sorted(p.name for p in folder.iterdir()))
        print(f"exported run {args.run_id} ({kind} checkpoint) to {folder}: {files}")
        return 0
    if not args.repo_id:
        raise ValueError("--repo-id OWNER/NAME is required (or --to-folder DIR to export locally)")
    try:
        with terminal_progress(f"push {args.run_id}") as progress:
            url = push_checkpoint(
                args.run_id,
                runs_dir,
                args.repo_id,
                private=bool(args.private),
                branch=args.branch,
                commit_message=args.commit_message,
                kind=kind,
                progress=progress,
                source_url=source_url,
            )
    except ConnectionError as exc:  # main() reports only ValueError/FileNotFoundError/PermissionError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"pushed run {args.run_id} ({kind} checkpoint): {url}")
    return 0
