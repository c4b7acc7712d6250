"""The benchmark harness on tiny settings: every measurement runs and returns well-formed figures, the two
loops of the overhead benchmark do identical work, and `benchmarks/run.py` prints its table last and writes
results only when it should. No timing thresholds: the numbers depend on the machine."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from benchmarks import run as bench_run  # noqa: E402
from benchmarks.common import (  # noqa: E402
    NOT_MEASURED_NO_CUDA,
    Figure,
    format_table,
    quantile,
    sized_config,
    write_result,
)
from benchmarks.studio import fill_store, measure_app_memory, measure_curve_refresh  # noqa: E402
from benchmarks.throughput import (  # noqa: E402
    GPU_MODES,
    count_step_flops,
    gpu_figures,
    gpu_setup,
    measure_cpu_throughput,
    measure_gpu_throughput,
    measure_gpu_variant,
    run_setup,
)
from benchmarks.trainer_overhead import measure_trainer_overhead, overhead_config, paired_windows  # noqa: E402
from trainers.data.spec import parse_data_spec  # noqa: E402


def _finite(figure: Figure) -> bool:
    return figure.value is not None and math.isfinite(figure.value)


# ------------------------------------------------------------------------------------------ figures
def test_figure_target_and_table():
    under = Figure("a", "ratio a", 1.04, "x", bound=1.05, goal="max")
    over = Figure("b", "ratio b", 1.06, "x", bound=1.05, goal="max")
    at_least = Figure("c", "speed-up", 2.0, "x", bound=3.0, goal="min")
    untargeted = Figure("d", "memory", 512.0, "MiB")
    missing = Figure("e", "gpu", None, "samples/s", note=NOT_MEASURED_NO_CUDA)
    assert (under.met, over.met, at_least.met, untargeted.met, missing.met) == (
        True,
        False,
        False,
        None,
        None,
    )
    assert under.target == "≤ 1.050×" and at_least.target == "≥ 3.000×" and untargeted.target == "—"
    assert missing.shown_value() == NOT_MEASURED_NO_CUDA
    assert over.to_dict()["met"] is False and over.to_dict()["target"] == "≤ 1.050×"

    lines = format_table([under, over, missing]).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["figure", "value", "target", "met?"]
    assert set(lines[1]) <= {"|", "-"}
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert cells == [
        ["ratio a", "1.040×", "≤ 1.050×", "yes"],
        ["ratio b", "1.060×", "≤ 1.050×", "NO"],
        ["gpu", NOT_MEASURED_NO_CUDA, "—", "—"],
    ]
    assert len({len(line) for line in lines}) == 1  # aligned columns


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"value": 1.0, "bound": 1.0, "goal": "below"}, "goal must be"),
        ({"value": 1.0, "bound": 1.0}, "both bound and goal"),
        ({"value": float("nan")}, "finite"),
    ],
)
def test_figure_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Figure("k", "label", unit="x", **kwargs)


def test_quantile_is_the_nearest_observed_value():
    values = [float(v) for v in range(20, -1, -1)]  # 0..20 in reverse: it sorts
    assert quantile(values, 0.5) == 10.0 and quantile(values, 0.95) == 19.0 and quantile(values, 0.99) == 20.0
    assert quantile(values, 0.0) == 0.0 and quantile(values, 1.0) == 20.0
    assert quantile([0.1, 0.4], 0.5) in (0.1, 0.4)  # an observed latency, never the 0.25 between them
    with pytest.raises(ValueError, match="no values"):
        quantile([], 0.5)


def test_write_result_round_trips(tmp_path, capsys):
    import json
    import time

    path = tmp_path / "results" / "x.json"
    figure = Figure("p95", "latency p95", 0.25, "s", bound=2.0, goal="max")
    write_result(path, {"steps": 3}, time.monotonic() - 1.5, [figure], {"n": 3})
    got = json.loads(path.read_text())
    assert got["settings"] == {"steps": 3} and got["detail"] == {"n": 3} and 1.5 <= got["seconds"] < 60
    assert got["figures"] == [figure.to_dict()] and got["machine"]["python"]
    assert f"wrote {path}" in capsys.readouterr().err


def test_every_section_has_a_runner_and_settings_at_each_level():
    for section in bench_run.SECTIONS:
        assert callable(bench_run._runner(section)), section
        assert all(section in bench_run.SETTINGS[level] for level in ("full", "quick", "dry")), section
    with pytest.raises(ValueError, match="unknown benchmark section 'nope'; choose from: overhead"):
        bench_run._runner("nope")


def test_sized_config_sizes_one_epoch_to_the_steps():
    cfg = sized_config("sar-baseline", "smoke", 5)
    spec = parse_data_spec(cfg.data)
    assert spec.options["n"] == 5 * cfg.batch_size and spec.options["val"] == 2
    assert cfg.epochs == 1 and cfg.device == "cpu"
    full = sized_config("audio-vae", "full", 3)
    assert parse_data_spec(full.data).options["n"] == 3 * 32 and full.batch_size == 32
    frag = sized_config("fragment-dae", "smoke", 40)
    assert parse_data_spec(frag.data).options["max_files"] >= 40 * 64 // 32
    with pytest.raises(ValueError, match="batches must be at least 1"):
        sized_config("sar-baseline", "smoke", 0)


# ------------------------------------------------------------------------------------------ overhead
def test_overhead_pairs_both_orders_with_identical_losses():
    figures, raw = measure_trainer_overhead(("fragment-dae",), steps=10, repeats=2)
    assert [f.key for f in figures] == ["overhead/fragment-dae", "overhead/store_share/fragment-dae"]
    assert all(_finite(f) and f.value > 0 for f in figures)
    r = raw["variants"]["fragment-dae"]
    # One timed window (steps 6-10) per run; run 1 ours-first, run 2 bare-first.
    assert r["windows"] == 2 and [p["step"] for p in r["pairs"]] == [10, 10]
    # Same seed, weights, batches and loss: the loss windows the two loops report are bit-identical.
    assert r["max_loss_rel_diff"] == 0.0
    for p in r["pairs"]:
        assert p["ours_s"] > 0 and p["bare_s"] > 0 and 0 < p["ours_store_s"] < p["ours_s"]
    assert figures[0].value == pytest.approx(r["wall"]["median"])
    assert r["control_wall"] is None and r["control_pairs"] == []


def test_overhead_control_runs_a_bare_loop_in_our_place():
    # The A/A control: a second bare loop behind train()'s interface, same work, no run store.
    pairs = paired_windows(overhead_config("fragment-dae", 15), bare_first=True, control=True)
    assert [p["step"] for p in pairs] == [10, 15]
    assert all(p["ours_loss"] == p["bare_loss"] and p["ours_store_s"] == 0 for p in pairs)
    assert all(p["ours_s"] > 0 and p["bare_s"] > 0 for p in pairs)


def test_overhead_loops_draw_the_same_random_numbers():
    # The VAE samples its latent and uses dropout: both loops share torch's global RNG in one process, so
    # the benchmark swaps RNG streams between them; without that the losses would differ.
    pairs = paired_windows(overhead_config("audio-vae", 10, batch_size=2))
    assert len(pairs) == 1
    assert pairs[0]["ours_loss"] == pairs[0]["bare_loss"]


def test_overhead_rejects_bad_settings():
    with pytest.raises(ValueError, match="multiple of the loop's log interval"):
        overhead_config("fragment-dae", 12)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        measure_trainer_overhead(("fragment-dae",), steps=10, repeats=0)
    with pytest.raises(ValueError, match="unknown variant"):
        overhead_config("sar-nope", 10)


# ------------------------------------------------------------------------------------------ throughput
def test_cpu_throughput_figures():
    figures, raw = measure_cpu_throughput(["sar-baseline", "sar-resnet"], steps=1, batch_size=2)
    by_key = {f.key: f for f in figures}
    assert set(by_key) == {
        "throughput/cpu/relative/sar-resnet",
        "memory/cpu/sar-baseline",
        "memory/cpu/sar-resnet",
        "data_share/cpu/sar/first",
        "data_share/cpu/sar/later",
    }
    assert by_key["throughput/cpu/relative/sar-resnet"].value > 0
    for key in ("data_share/cpu/sar/first", "data_share/cpu/sar/later"):
        assert 0 < by_key[key].value < 100 and by_key[key].bound == 10.0
    res = raw["domains"]["sar"]
    assert res["sar-resnet"]["parameters"] > res["sar-baseline"]["parameters"]
    speed = res["sar-resnet"]["samples_per_s"] / res["sar-baseline"]["samples_per_s"]
    assert by_key["throughput/cpu/relative/sar-resnet"].value == pytest.approx(speed)
    if os.path.exists("/proc/self/clear_refs"):
        assert by_key["memory/cpu/sar-resnet"].value > 0
    with pytest.raises(ValueError, match="unknown variant"):
        measure_cpu_throughput(["sar-nope"], steps=1)


def test_step_flops_match_the_matmul_formula():
    class SumSquares:
        def loss(self, model, batch):
            return model(batch).square().mean()

    b, i, h, o = 4, 16, 8, 3
    model = nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))
    # First layer: forward + weight gradient (the input needs no gradient); second: forward, weight and
    # input gradients; 2 FLOPs per multiply-add.
    assert count_step_flops(SumSquares(), model, torch.randn(b, i)) == 4 * b * i * h + 6 * b * h * o
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("variant, image", [("fragment-dae", False), ("sar-baseline", True)])
def test_gpu_modes_run_on_cpu(variant, image):
    from benchmarks.common import build_run

    cfg = sized_config(variant, "smoke", 1, batch_size=2)
    task, data, _ = build_run(cfg)
    batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=2)))
    losses = {}
    for mode in GPU_MODES:
        fast = gpu_setup(mode, task.domain)
        r, model = run_setup(cfg, task, data.preprocessing, [batch], fast, steps=1, warmup=1, device="cpu")
        assert r["samples_per_s"] > 0 and math.isfinite(r["mean_loss"]) and len(r["losses"]) == 2
        assert r["peak_allocated_mib"] is None  # CUDA memory only
        assert r["options"]["channels_last"] == (mode != "fp32-eager" and image)
        # bf16 is the GPU default for the SAR nets only (trainers.training.fastpath.BF16_DOMAINS)
        assert r["options"]["bf16"] == (mode != "fp32-eager" and image)
        assert r["options"]["compile"] is False  # not compiled off the GPU unless asked
        if image and mode != "fp32-eager":
            conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        losses[mode] = r["losses"][0]
    # Same weights and batch in every set-up: the first losses differ by bf16 rounding at most. For SAR that
    # is several %: the SSIM term reads the tiny variance of the untrained, near-constant output (5.2 % on
    # the smoke batch of the piecewise dB map), so 10 % still catches other weights or another batch.
    assert losses["default"] == pytest.approx(losses["fp32-eager"], rel=0.10)
    with pytest.raises(ValueError, match="unknown GPU mode"):
        gpu_setup("turbo", "sar")


def test_gpu_figures_from_a_cpu_run_of_the_gpu_code():
    r = measure_gpu_variant("fragment-dae", steps=1, warmup=1, n_batches=1, device="cpu", preset="smoke")
    assert set(r["modes"]) == set(GPU_MODES) and r["flops_per_step"] > 0
    figures = {f.key: f for f in gpu_figures(100.0, {"fragment-dae": r})}
    assert set(figures) == {
        "gpu/matmul_peak",
        "gpu/fragment-dae/fp32-eager/samples_per_s",
        "gpu/fragment-dae/default/speedup",
        "gpu/fragment-dae/compiled/speedup",
        "gpu/fragment-dae/compiled/peak_memory",
        "gpu/fragment-dae/compiled/mfu",
        "gpu/fragment-dae/default/data_share",
    }
    fast, base = r["modes"]["compiled"], r["modes"]["fp32-eager"]
    assert figures["gpu/fragment-dae/compiled/speedup"].value == pytest.approx(
        fast["samples_per_s"] / base["samples_per_s"]
    )
    # FLOPs per step x steps per second, over the 100 TFLOP/s peak given.
    expected = 100 * r["flops_per_step"] * fast["samples_per_s"] / r["batch_size"] / 100e12
    assert figures["gpu/fragment-dae/compiled/mfu"].value == pytest.approx(expected)
    assert 0 < figures["gpu/fragment-dae/default/data_share"].value < 100
    broken = {**r, "modes": {**r["modes"], "compiled": {"mode": "compiled", "error": "RuntimeError: boom"}}}
    keys = {f.key: f for f in gpu_figures(100.0, {"fragment-dae": broken})}
    assert "boom" in keys["gpu/fragment-dae/compiled/error"].note
    assert "gpu/fragment-dae/default/peak_memory" in keys  # the next set-up stands in


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the figures of a machine without CUDA")
def test_gpu_figures_say_not_measured_without_cuda():
    figures, raw = measure_gpu_throughput(["sar-baseline"])
    assert raw == {"cuda": False, "note": NOT_MEASURED_NO_CUDA}
    assert figures and all(f.value is None and f.shown_value() == NOT_MEASURED_NO_CUDA for f in figures)
    with pytest.raises(ValueError, match="unknown variant"):
        measure_gpu_throughput(["sar-nope"])


# ------------------------------------------------------------------------------------------ studio
def test_curve_refresh_figures(tmp_path):
    store, run_ids = fill_store(tmp_path / "runs", 3, 50)
    with store:
        assert [len(store.metric_series(r, "train/loss")) for r in run_ids] == [50, 50, 50]
    figures, raw = measure_curve_refresh(n_runs=3, histories=(20, 100), repeats=2)
    assert [f.key.split("/")[-1] for f in figures] == [
        "full_over_incremental",
        "history_growth",
        "incremental_read",
        "refresh",
    ]
    assert all(_finite(f) and f.value > 0 for f in figures)
    large = raw["results"][100]
    assert large["refresh_s"] >= large["incremental_read_s"] > 0
    with pytest.raises(ValueError, match="two increasing"):
        measure_curve_refresh(n_runs=2, histories=(100, 100))


@pytest.mark.slow
def test_jobs_table_figures():
    from benchmarks.jobs_table import measure_jobs_table

    figures, raw = measure_jobs_table(studies=2, repeats=3)
    assert [f.key for f in figures] == [
        "studio/jobs_table/poll",
        "studio/jobs_table/poll_cpu",
        "studio/jobs_table/first",
    ]
    assert all(_finite(f) and f.value > 0 for f in figures)
    assert raw["runs"] == 8 and len(raw["total_ms"]) == 3
    assert "10 table rows" in figures[0].note  # 8 runs under their 2 studies' group rows
    with pytest.raises(ValueError, match="at least 1 study and 3 repeats"):
        measure_jobs_table(studies=2, repeats=2)


def test_app_start_and_memory_with_a_job_launched_through_the_app():
    figures, raw = measure_app_memory(n_jobs=1, sample_s=1.0, variants=("fragment-dae",))
    assert raw["startup_s"] > 0  # `python app.py` served its first page
    idle, busy = (f.value for f in figures)
    assert idle > 50 and busy > 50  # a Python process with gradio and torch loaded
    assert raw["jobs"] == ["fragment-dae"] and raw["still_running_at_end"] == 1
    assert max(raw["trainers_rss_mib"]) > 50  # the trainer process was found and measured
    assert raw["jobs_ended"]  # cancelled through the app, nothing left running


# ------------------------------------------------------------------------------------------ run.py
def _table_tail(text: str, rows: int) -> list[str]:
    lines = text.rstrip("\n").splitlines()
    return lines[-(rows + 2) :]


def test_run_dry_prints_the_table_last_and_writes_nothing(tmp_path, capsys):
    md = tmp_path / "BENCHMARKS.md"
    code = bench_run.main(
        [
            "--dry",
            "--only",
            "curves",
            "gpu",
            "--results-dir",
            str(tmp_path / "results"),
            "--markdown",
            str(md),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    n_gpu = 1 if torch.cuda.is_available() else 6
    tail = _table_tail(out, 4 + n_gpu)
    assert tail[0].startswith("| figure") and tail[1].startswith("|--")
    assert all(line.startswith("| ") and line.endswith(" |") for line in tail[:1] + tail[2:])
    assert "curve refresh, 3 panels, new points" in tail[5]
    assert not md.exists() and not (tmp_path / "results").exists()


def test_run_full_writes_json_and_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(
        bench_run.SETTINGS["full"], "curves", {"n_runs": 2, "histories": (10, 40), "repeats": 2}
    )
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(
        f"# Benchmarks\n\nintro\n\n{bench_run.START_MARK}\nold\n{bench_run.END_MARK}\n\n## Findings\nkept\n"
    )
    args = ["--only", "curves", "--results-dir", str(tmp_path / "results"), "--markdown", str(md)]
    assert bench_run.main(args) == 0
    capsys.readouterr()
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n") and text.endswith("## Findings\nkept\n")
    assert "old" not in text and text.count(bench_run.START_MARK) == 1
    assert "| curve refresh, 3 panels, new points" in text and "Measured " in text
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    curves = json.loads((tmp_path / "results" / "curves.json").read_text())
    assert summary["level"] == "full" and len(summary["figures"]) == 4
    assert summary["machine"]["cpu_cores"] == os.cpu_count()
    assert curves["figures"] == summary["figures"] and curves["settings"]["n_runs"] == 2
    assert bench_run.main(args) == 0  # a second run replaces the block instead of adding one
    assert md.read_text().count(bench_run.START_MARK) == 1


def test_a_partial_run_adds_its_rows_beside_those_measured_elsewhere(tmp_path, monkeypatch, capsys):
    """`--only gpu` on a GPU machine must not drop the CPU rows measured on another machine."""
    results, md = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    elsewhere = {"command": "python benchmarks/run.py", "date": "2026-01-01 00:00 UTC"}
    machine = {**bench_run.machine_info(), "cpu": "Elsewhere CPU", "gpu": "Elsewhere GPU"}
    old = Figure("throughput/x", "an older throughput row", 2.0, "x", bound=1.0, goal="min")
    results.mkdir()
    (results / "throughput.json").write_text(
        json.dumps({"figures": [old.to_dict()], "measured": {**elsewhere, "machine": machine}})
    )
    monkeypatch.setitem(
        bench_run.SETTINGS["full"], "curves", {"n_runs": 2, "histories": (10, 40), "repeats": 2}
    )
    args = ["--only", "curves", "--results-dir", str(results), "--markdown", str(md)]
    assert bench_run.main(args) == 0
    capsys.readouterr()
    text = md.read_text()
    # Both runs are described, each naming its sections, and the table holds both sections' rows in order.
    assert "Elsewhere CPU" in text and "Elsewhere GPU" in text and "(throughput):" in text
    assert "(curves):" in text and text.index("an older throughput row") < text.index("| curve refresh")
    summary = json.loads((results / "summary.json").read_text())
    assert [f["key"] for f in summary["figures"]][0] == "throughput/x" and len(summary["figures"]) == 5
    assert bench_run.main(args) == 0  # rerunning a section replaces its rows
    capsys.readouterr()
    assert md.read_text().count("| curve refresh, 3 panels, new points") == 1
    kept = json.loads((results / "throughput.json").read_text())
    assert kept["measured"]["machine"]["cpu"] == "Elsewhere CPU"


def test_run_failing_section_becomes_a_row(monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("no luck")

    monkeypatch.setattr(bench_run, "_runner", lambda section: broken)
    figures, raw = bench_run.run_sections(["curves"], "dry", log=lambda m: None)
    assert figures[0].value is None and "RuntimeError: no luck" in figures[0].note
    assert raw["curves"]["raw"]["error"] == "failed: RuntimeError: no luck"
    with pytest.raises(ValueError, match="unknown level"):
        bench_run.run_sections(["curves"], "huge")
