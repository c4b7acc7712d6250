"""Progress outside the training loop: the terminal bar draws the fractions it is given, and an export reports
its steps in order from 0 to 1 (the studio hands the same callback its gr.Progress)."""

from __future__ import annotations

import pytest

from trainers import cli
from trainers.hub import push as hub
from trainers.runs.store import RunStore
from trainers.settings import make_config
from trainers.training.loop import train
from trainers.training.progress import bar, terminal_progress


def test_terminal_bar_draws_fractions_and_stays_off_when_disabled(capsys) -> None:
    with terminal_progress("export r1", enabled=True) as progress:
        progress(0.25, "loss curve")
        progress(1.0, "written")
    err = capsys.readouterr().err
    assert "export r1" in err and "25%" in err and "100%" in err and "written" in err
    with terminal_progress("quiet", enabled=False) as progress:
        progress(0.5, "half")
    assert list(bar(range(3), "eval", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    data = "fragments:python,max_files=6,n=48"
    cfg = make_config("fragment-dae", "smoke", data=data, batch_size=16, max_steps=3, device="cpu")
    with RunStore(runs) as store:
        result = train(cfg, store, progress=False)
    assert result.status == "completed", result.reason
    return runs, result.run_id


def test_export_reports_its_steps_in_order(run, tmp_path) -> None:
    runs, run_id = run
    calls: list[tuple[float, str]] = []
    hub.export_checkpoint(run_id, runs, tmp_path / "out", progress=lambda f, d: calls.append((f, d)))
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    steps = [d for _, d in calls]
    assert steps.index("example reconstructions") < steps.index("model card")
    assert (tmp_path / "out" / "README.md").read_text().startswith("---")


def test_cli_eval_and_export_print_no_bar_off_a_terminal(run, tmp_path, capsys) -> None:
    """Logs and pipes get the results only: the bars appear on a terminal alone."""
    runs, run_id = run
    assert cli.main(["push", run_id, "--runs-dir", str(runs), "--to-folder", str(tmp_path / "e")]) == 0
    out = capsys.readouterr()
    assert "exported run" in out.out and "\r" not in out.err and "%|" not in out.err
