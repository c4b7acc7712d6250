"""The Compare tab's study choice (studio.views.compare_study): the study leaderboard on the tab's data is
the CLI's (``compare --study``) to the number, with the design's claim and the user's answered; a bad choice
is refused in one sentence before anything is scored."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from studio.app import make_context  # noqa: E402
from studio.views.compare_study import compare_study  # noqa: E402
from trainers.evaluation.claims import parse_claim  # noqa: E402
from trainers.evaluation.study import compare_study as cli_compare_study  # noqa: E402
from trainers.runs.studies import create_study_runs, plan_study  # noqa: E402

TINY_SAR = "sar:synthetic,n=8,size=32,val=2"
CLAIM = "sar-residual - sar-baseline >= -1000 on psnr"


@pytest.fixture
def ctx(tmp_path):
    context = make_context(tmp_path / "runs", cpu_slots=1, space=False)
    yield context
    context.jobs.shutdown()
    context.store.close()


@pytest.fixture
def trained_study(ctx, single_thread):
    """sar-baseline and sar-residual × 2 seeds, one step each, trained in this process."""
    from trainers.training.loop import train

    configs = plan_study(["sar-baseline", "sar-residual"], 2, data=TINY_SAR, max_steps=1, epochs=1)
    for cfg, run_id in zip(configs, create_study_runs(ctx.store, configs), strict=True):
        train(cfg, ctx.store, run_id=run_id)
    return configs[0].study


def test_the_tabs_study_leaderboard_is_the_clis_with_claims_answered(ctx, trained_study, monkeypatch):
    import trainers.evaluation.study

    calls = []

    def spy(*args, **kwargs):  # the CLI's function, called once with the tab's data and claims
        calls.append((args, kwargs))
        return cli_compare_study(*args, **kwargs)

    monkeypatch.setattr(trainers.evaluation.study, "compare_study", spy)
    view = compare_study(ctx, trained_study, "built-in", n=3, claims=CLAIM)
    [(args, kwargs)] = calls
    assert args == (trained_study, ctx.runs_dir, "sar:synthetic,n=3", [parse_claim(CLAIM)])
    assert kwargs["seed"] == 0
    [domain] = view.result["domains"]
    assert [(r["name"], r["seeds"]) for r in domain["rows"]] == [("sar-baseline", 2), ("sar-residual", 2)]
    assert [p["metric"] for p in domain["pairs"]][:1] == [domain["metrics"][0]["name"]]
    verdicts = {c["claim"]: c["verdict"] for c in domain["claims"]}
    # The design's claim (B beats the baseline by 1.5 dB) cannot hold after one step; any gain beats -1000.
    assert verdicts["sar-residual − sar-baseline ≥ 1.5 on psnr"] in ("not supported", "inconclusive")
    assert verdicts["sar-residual − sar-baseline ≥ -1000 on psnr"] == "supported"
    assert f"Study `{trained_study}`: 4 runs in 2 groups on built-in SAR data (3 images)" in view.summary
    assert "| sar-residual | 2 |" in view.details and "**supported**" in view.details
    # The figure: each group's mean with its interval, labelled with its seeds.
    [trace] = view.figure.data
    assert list(trace.x) == ["sar-baseline (2 seeds)", "sar-residual (2 seeds)"]
    psnr = {r["name"]: r["metrics"]["psnr"] for r in domain["rows"]}
    assert list(trace.y) == pytest.approx([psnr["sar-baseline"]["mean"], psnr["sar-residual"]["mean"]])
    low = psnr["sar-baseline"]["mean"] - psnr["sar-baseline"]["ci95"][0]
    assert trace.error_y.arrayminus[0] == pytest.approx(low)


def test_a_bad_study_choice_is_refused_before_scoring(ctx, tmp_path):
    with pytest.raises(ValueError, match="no study chosen"):
        compare_study(ctx, "", "built-in")
    with pytest.raises(ValueError, match="no study with id"):
        compare_study(ctx, "study-20990101-000000-ffff", "built-in")
    configs = plan_study(["sar-baseline", "fragment-dae"], 1, check_paths=False)
    create_study_runs(ctx.store, configs)
    with pytest.raises(ValueError, match="has runs of sar and fragments: a folder or upload holds one"):
        compare_study(ctx, configs[0].study, "server folder", folder=str(tmp_path))
    with pytest.raises(ValueError, match="a claim reads 'A - B >= DELTA on METRIC'"):
        compare_study(ctx, configs[0].study, "built-in", claims="residual beats baseline")
