"""Studies (trainers.runs.studies, trainers.training.study, `python -m trainers study|studies`): variants ×
seeds × one swept setting planned and checked before any run exists, launched as one, listed, and cancelled
cleanly on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.helpers import start_trainer, wait_for
from trainers.runs.store import RunStore
from trainers.runs.studies import (
    create_study_runs,
    differing_settings,
    flatten_config,
    list_studies,
    parse_sweep,
    plan_study,
    study_runs,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "fragments:python,max_files=12"


def test_sweep_parses_numbers_and_model_keys():
    sweep = parse_sweep("lr=1e-3, 3e-4")
    assert sweep.key == "lr" and sweep.values == (1e-3, 3e-4)
    model = parse_sweep("model.base_channels=8,16")
    assert model.is_model_key and model.overrides(8) == {"model": {"base_channels": 8}}
    assert parse_sweep("") is None and parse_sweep(None) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr", "KEY=V1,V2"),
        ("lr=1e-3", "2 to 8 values"),
        ("lr=1e-3,1e-3", "given twice"),
        ("lr=1e-3,,2e-3", "empty value"),
    ],
)
def test_a_bad_sweep_says_why(text, message):
    with pytest.raises(ValueError, match=message):
        parse_sweep(text)


def test_plan_is_variants_times_values_times_seeds_with_one_study_id():
    configs = plan_study(
        ["fragment-dae", "fragment-dae-bytes"], 3, parse_sweep("lr=1e-3,3e-4"), preset="smoke", data=TINY
    )
    assert len(configs) == 2 * 2 * 3
    assert len({c.study for c in configs}) == 1 and configs[0].study.startswith("study-")
    triples = {(c.variant, c.lr, c.seed) for c in configs}
    assert len(triples) == 12 and {c.seed for c in configs} == {0, 1, 2}


def test_a_swept_model_key_reaches_the_model_config():
    configs = plan_study(["sar-baseline"], 1, parse_sweep("model.base_channels=8,12"), preset="smoke")
    assert [c.model["base_channels"] for c in configs] == [8, 12]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seeds": 0}, "seeds must be a whole number from 1 to 20"),
        ({"seeds": 1e30}, "seeds must be a whole number from 1 to 20"),
        ({"seeds": 2, "sweep": parse_sweep("lr=-1,1e-3")}, "learning rate"),
        ({"seeds": 2, "epochs": 0}, "epochs"),
        (
            {
                "seeds": 20,
                "sweep": parse_sweep("lr=1,2,3,4,5,6,7,8"),
                "variants": ["sar-baseline", "sar-resnet"],
            },
            "more than the 200",
        ),
    ],
)
def test_a_bad_study_is_refused_before_any_run_exists(tmp_path, kwargs, message):
    variants = kwargs.pop("variants", ["fragment-dae"])
    seeds = kwargs.pop("seeds")
    sweep = kwargs.pop("sweep", None)
    with pytest.raises(ValueError, match=message):
        plan_study(variants, seeds, sweep, preset="smoke", **kwargs)


def test_studies_are_listed_with_their_variants_seeds_and_swept_setting(tmp_path):
    configs = plan_study(["fragment-dae"], 2, parse_sweep("lr=1e-3,3e-4"), preset="smoke", data=TINY)
    with RunStore(tmp_path / "runs") as store:
        ids = create_study_runs(store, configs, name="lr check")
        store.create_run("fragment-dae", "fragments", {"variant": "fragment-dae"})  # not in a study
        [summary] = list_studies(store)
        runs = study_runs(store, summary.id)
        assert [r.id for r in runs] == ids
        assert runs[0].tags == [summary.id] and runs[0].name.startswith("lr check · fragment-dae")
        with pytest.raises(ValueError, match="no study with id"):
            study_runs(store, "study-nope")
    assert summary.variants == ["fragment-dae"] and summary.seeds == [0, 1]
    assert summary.sweep == {"lr": [1e-3, 3e-4]} and summary.statuses == {"queued": 4}
    assert summary.to_dict()["done"] == 0


def test_differing_settings_flatten_model_keys():
    assert flatten_config({"lr": 1, "model": {"w": [1, 2]}}) == {"lr": 1, "model.w": [1, 2]}

    class Run:
        def __init__(self, config):
            self.config = config

    runs = [Run({"lr": 1, "seed": 0, "model": {"w": 8}}), Run({"lr": 1, "seed": 1, "model": {"w": 16}})]
    assert differing_settings(runs) == {"model.w": [8, 16]}


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainers", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cli_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One study made by the CLI, two variants × two seeds of a few steps each (the runs folder and the
    printed JSON): the study and leaderboard tests below read the same one, since each trainer costs a
    process start."""
    runs = tmp_path_factory.mktemp("study") / "runs"
    common = [
        "--preset",
        "smoke",
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--data",
        TINY,
        "--runs-dir",
        str(runs),
    ]
    made = _cli(
        "study", "fragment-dae", "fragment-dae-bytes", "--seeds", "2", "--jobs", "2", "--json", *common
    )
    assert made.returncode == 0, made.stderr
    return runs, json.loads(made.stdout)


def test_cli_study_trains_every_run_and_prints_the_study_as_json(cli_study):
    runs, out = cli_study
    assert out["study"].startswith("study-") and [r["status"] for r in out["runs"]] == ["completed"] * 4
    listed = json.loads(_cli("studies", "--runs-dir", str(runs), "--json").stdout)
    assert [s["study"] for s in listed] == [out["study"]] and listed[0]["done"] == 4
    with RunStore(runs) as store:
        made = sorted((r.variant, r.config["seed"]) for r in study_runs(store, out["study"]))
    assert made == [
        ("fragment-dae", 0),
        ("fragment-dae", 1),
        ("fragment-dae-bytes", 0),
        ("fragment-dae-bytes", 1),
    ]


def test_study_leaderboard_answers_claims_over_seeds_and_files(cli_study, tmp_path):
    """`compare --study`: every run of the study on the same files, a row per variant with its seeds, the
    paired difference on the same seeds and files, and a user's claim answered from the interval."""
    runs, made = cli_study
    study = made["study"]
    claim = "fragment-dae-bytes - fragment-dae >= 0.5 on accuracy"
    data = "fragments:python,max_files=6,n=60"
    proc = _cli(
        "compare", "--study", study, "--runs-dir", str(runs), "--data", data, "--claim", claim, "--json",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    [domain] = out["domains"]
    assert domain["ci_unit"] == "file" and domain["n_units"] >= 2
    rows = {r["name"]: r for r in domain["rows"]}
    assert set(rows) == {"fragment-dae", "fragment-dae-bytes"} and {r["seeds"] for r in rows.values()} == {2}
    [pair] = [p for p in domain["pairs"] if p["metric"] == "accuracy"]
    lo, hi = pair["ci95"]
    assert lo <= pair["diff"] <= hi and 0 < pair["p"] <= 1 and pair["seeds"] == 2
    [answer] = domain["claims"]  # no SAR variant in this study: the design's SAR claims do not apply
    # A half-point gain in byte accuracy is far beyond what 3 training steps give: the interval says so.
    assert answer["claim"] == "fragment-dae-bytes − fragment-dae ≥ 0.5 on accuracy"
    assert answer["verdict"] == "not supported" and answer["ci95"][1] < 0.5
    # The same leaderboard as markdown, written beside the JSON in the same call.
    text = (tmp_path / "study.md").read_text()
    assert "| fragment-dae-bytes | 2 |" in text and "**not supported**" in text
    assert json.loads((tmp_path / "study.json").read_text()) == out
    bad = _cli("compare", "--study", study, "--runs-dir", str(runs), "--claim", "a beats b")
    assert bad.returncode == 2 and bad.stderr.startswith("error: a claim reads")


def test_cli_refuses_a_bad_study_in_one_line_and_creates_no_database(tmp_path):
    runs = tmp_path / "runs"
    proc = _cli("study", "fragment-dae", "--seeds", "0", "--runs-dir", str(runs))
    assert proc.returncode == 2 and proc.stderr.startswith("error: seeds must be")
    assert len(proc.stderr.strip().splitlines()) == 1 and not runs.exists()


@pytest.mark.slow
def test_sigint_cancels_the_running_trainer_and_the_runs_not_started(tmp_path):
    runs = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=ROOT)
    args = ["study", "fragment-dae", "--seeds", "3", "--jobs", "1", "--preset", "smoke", "--epochs", "50"]
    proc = start_trainer([*args, "--data", TINY, "--runs-dir", str(runs)], ROOT, env)
    try:

        def running() -> bool:
            if not (runs / "runs.sqlite").exists():
                return False
            with RunStore(runs) as store:
                return any(r.status == "running" and r.step for r in store.list_runs())

        wait_for(running, 300, "the first run to train")
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    with RunStore(runs) as store:
        statuses = sorted(r.status for r in store.list_runs())
        pids = [r.pid for r in store.list_runs() if r.pid]
    assert statuses == ["cancelled"] * 3, out
    for pid in pids:  # no trainer is left running
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_trainer_logs_its_resource_use_as_sys_metrics(tmp_path):
    """CPU and memory history (sys/…) from the trainer itself; the first flush samples, then every 10 s."""
    runs = tmp_path / "runs"
    args = ["train", "fragment-dae", "--preset", "smoke", "--epochs", "1", "--max-steps", "6", "--data", TINY]
    proc = _cli(*args, "--runs-dir", str(runs), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    with RunStore(runs) as store:
        [run] = store.list_runs()
        cpu = store.metric_series(run.id, "cpu_percent", split="sys")
        memory = store.metric_series(run.id, "memory_mb", split="sys")
    assert len(cpu) >= 1 and len(memory) >= 1
    assert all(0 <= v <= 100 * (os.cpu_count() or 1) + 50 for _, v in cpu)
    assert all(50 < v < 16_000 for _, v in memory)  # a torch process holds tens of MB at least


def test_system_sampler_waits_its_interval():
    from trainers.training.system import SystemSampler

    sampler = SystemSampler("cpu", interval=3600)
    first = sampler.sample()
    assert set(first) == {"cpu_percent", "memory_mb"} and sampler.sample() is None
    assert sampler.sample(force=True) is not None


def test_jobs_rows_carry_the_study_and_a_collapse_warning_after_the_run_ended(tmp_path):
    from studio.jobs.rows import job_rows
    from trainers.metrics.collapse import COLLAPSE_FILE

    with RunStore(tmp_path / "runs") as store:
        [cfg] = plan_study(["fragment-dae"], 1, preset="smoke", data=TINY)
        [run_id] = create_study_runs(store, [cfg])
        store.set_status(run_id, "completed", reason="max epochs")
        record = {"collapsing": True, "first_epoch": 1, "reasons": ["accuracy 2 points below identity"]}
        store.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        (store.run_dir(run_id) / COLLAPSE_FILE).write_text(json.dumps(record))
        [row] = job_rows(store, "here", False, lambda place: None)
    assert row["study"] == cfg.study
    assert row["reason"] == "max epochs · ⚠ collapsing since epoch 1: accuracy 2 points below identity"


class _FakeJobs:
    """Records what the Train tab's launch asks of the job manager (no trainer is started)."""

    def __init__(self, space_limits=None):
        self.space_limits = space_limits
        self.checked, self.submitted = [], []

    def check(self, variant, preset, **settings):
        from trainers.settings import validate_run

        self.checked.append((variant, settings))
        return validate_run(variant, preset, **settings)

    def submit(self, variant, preset, **settings):
        self.submitted.append((variant, settings))
        return f"run-{len(self.submitted)}"


def test_the_train_tab_launches_a_study_of_variants_sweep_values_and_seeds():
    from studio.views.train.form import launch_runs

    ctx = types.SimpleNamespace(space=False, jobs=_FakeJobs())
    ids = launch_runs(
        ctx, ["fragment-dae", "fragment-dae-bytes"], "smoke", seed=5, name="lr", seeds=2, sweep="lr=1e-3,3e-3"
    )
    assert len(ids) == 8 and len(ctx.jobs.checked) == 8  # every run checked before the first is queued
    settings = [s for _, s in ctx.jobs.submitted]
    assert len({s["study"] for s in settings}) == 1 and settings[0]["study"].startswith("study-")
    assert {(v, s["lr"], s["seed"]) for v, s in ctx.jobs.submitted} == {
        (v, lr, seed)
        for v in ("fragment-dae", "fragment-dae-bytes")
        for lr in (1e-3, 3e-3)
        for seed in (5, 6)
    }
    assert all(s["tags"] == [settings[0]["study"]] for s in settings)
    assert settings[0]["name"] == "lr · fragment-dae · seed 5"
    one = launch_runs(types.SimpleNamespace(space=False, jobs=_FakeJobs()), ["fragment-dae"], "smoke")
    assert one == ["run-1"]


def test_a_space_refuses_a_study_beyond_a_visitors_jobs_in_one_sentence():
    from studio.jobs import SpaceLimits
    from studio.views.train.form import launch_runs

    jobs = _FakeJobs(SpaceLimits())
    ctx = types.SimpleNamespace(space=True, jobs=jobs)
    with pytest.raises(
        ValueError, match="this launch is 12 runs, but a visitor of this demo Space may hold 2"
    ):
        launch_runs(ctx, ["sar-baseline", "sar-resnet", "sar-residual", "sar-attention"], "smoke", seeds=3)
    assert jobs.submitted == [] and jobs.checked == []
    with pytest.raises(ValueError, match="seeds must be a whole number from 1 to 20"):
        launch_runs(types.SimpleNamespace(space=False, jobs=_FakeJobs()), ["fragment-dae"], "smoke", seeds=50)


def _fake_study(store, study="study-20261207-000000-abcd"):
    """Two variants x two seeds with logged curves and best values, as a study's runs would have."""
    ids = {}
    for variant in ("sar-baseline", "sar-residual"):
        for seed in (0, 1):
            config = {
                "variant": variant,
                "seed": seed,
                "study": study,
                "lr": 1e-3,
                "model": {"base_channels": 8},
            }
            run_id = store.create_run(variant, "sar", config)
            gain = 0.5 if variant == "sar-residual" else 0.0
            for step in range(0, 50, 5):
                store.log_metrics(run_id, step, 0, "train", {"loss": 1 / (step + 1) + 0.01 * seed})
            store.log_metrics(run_id, 50, 1, "val", {"psnr": 14 + gain + 0.1 * seed, "loss": 0.1})
            ids[(variant, seed)] = run_id
    return study, ids


def test_studies_section_draws_grouped_curves_and_the_settings_views(tmp_path):
    from studio.views.train.studies import grouped_figure, settings_figures, study_choices

    with RunStore(tmp_path / "runs") as store:
        study, ids = _fake_study(store)
        ctx = types.SimpleNamespace(store=store, runs_dir=tmp_path / "runs")
        [(label, value)] = study_choices(ctx)
        assert value == study and "sar-baseline, sar-residual · 2 seeds · 0/4 ended" in label
        fig = grouped_figure(ctx, study, "train/loss", "variant", "min–max")
        lines = [t for t in fig.data if t.mode == "lines"]
        assert [t.name for t in lines] == ["sar-baseline (mean of 2)", "sar-residual (mean of 2)"]
        assert lines[0].y[0] == pytest.approx(1.005)  # the mean of seeds 0 and 1 at step 0
        coords, scatter = settings_figures(ctx, study, "val/psnr", "")
        assert [d.label for d in coords.data[0].dimensions] == ["variant", "seed", "val/psnr"]
        assert sorted(coords.data[0].dimensions[-1].values) == pytest.approx([14.0, 14.1, 14.5, 14.6])
        assert [t.name for t in scatter.data] == ["sar-baseline", "sar-residual"]
        with pytest.raises(ValueError, match="no study chosen"):
            grouped_figure(ctx, "", "train/loss", "variant", "min–max")
        with pytest.raises(ValueError, match="no study with id"):
            grouped_figure(ctx, "study-20990101-000000-ffff", "train/loss", "variant", "min–max")
