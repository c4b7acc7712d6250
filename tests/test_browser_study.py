"""A study end to end in a real headless Chromium (issue 24's "Done when"): launch 2 SAR variants × 2 seeds
from the Train tab, see the runs grouped under their study, search the metric panels, draw the grouped
curves and the parallel coordinates, then run the study leaderboard from the Compare tab with claims
answered. Screenshots go to test-artifacts/study-*.png."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VARIANTS = ("sar-baseline", "sar-residual")
TINY_SAR = "sar:synthetic,n=8,size=32,val=2"  # one step an epoch: each run ends in seconds
RUNS_TIMEOUT_MS = 150_000
CLAIM = "sar-residual - sar-baseline >= -1000 on psnr"  # any difference a run can give is above -1000 dB
# The jobs table's rows (Gradio's virtual table draws them as divs; `tbody tr` is its one sizing row).
JOB_ROWS = "#train-jobs .virtual-body [role=row]"
STUDY_ID = re.compile(r"study-\d{8}-\d{6}-[0-9a-f]{4}")
RUN_ID = re.compile(r"\d{8}-\d{6}-sar-(?:baseline|residual)-[0-9a-f]{4}")
# The y-axis title and the run ids drawn in panel `index`.
PANEL = """(index) => {
    const graph = document.querySelector('#train-plot-' + index + ' .js-plotly-plot');
    if (!graph || !graph._fullLayout) return null;
    return {metric: graph._fullLayout.yaxis.title.text,
            runs: graph._fullData.filter(t => t.meta && t.x && t.x.length).map(t => t.meta)};
}"""
# The names of the lines of a plot (grouped curves: one mean line and its band per group).
LINE_NAMES = """(sel) => {
    const graph = document.querySelector(sel + ' .js-plotly-plot');
    return graph && graph._fullData ? graph._fullData.filter(t => t.mode === 'lines').map(t => t.name) : [];
}"""


@pytest.fixture
def failure_screenshot(page, artifacts, request):
    """On failure, a screenshot of the page as it was."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        page.screenshot(path=str(artifacts / f"failure-{request.node.name}.png"), full_page=True)


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Enter")


def choose(page, elem_id: str, text: str) -> None:
    """Open the dropdown `elem_id` and pick the option containing `text`."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option").filter(has_text=text).first.click(timeout=15_000)
    page.keyboard.press("Escape")


def short_id(run_id: str) -> str:
    """A run as the jobs table names it: its id without the creation time ("sar-residual-3fa2")."""
    return run_id.split("-", 2)[2]


def group_name(study: str) -> str:
    """A study's group row as the jobs table names it: "study 180105-2143" (the date left out)."""
    return "study " + study.split("-", 2)[2]


def expect_grouped(page, study: str, run_ids: list[str]) -> None:
    """The study's runs sit under one group row that sums them up: the filter `tag:STUDY` (its runs carry
    the id as a tag) leaves that row, first, and a row per run."""
    fill(page, "train-filter", f"tag:{study}")
    rows = page.locator(JOB_ROWS)
    expect(rows).to_have_count(1 + len(run_ids), timeout=15_000)
    group = rows.first
    expect(group).to_contain_text(group_name(study))
    expect(group).to_contain_text("2 variants × 2 seeds")
    expect(group).to_contain_text("4/4 done · 100%")
    for run_id in run_ids:
        expect(rows.filter(has_text=short_id(run_id))).to_have_count(1)
    fill(page, "train-filter", "")


def test_a_study_from_launch_to_claims_in_the_browser(studio, page, artifacts, failure_screenshot):
    page.goto(studio.url)
    train = page.locator("#tab-train")
    for variant in VARIANTS:
        train.get_by_text(re.compile(rf"^{variant} — ")).click()
    fill(page, "train-epochs", "1")
    fill(page, "train-seeds", "2")
    fill(page, "train-data", TINY_SAR)
    page.locator("#train-preset-info").get_by_text("sar-residual").wait_for()
    page.locator("#train-launch").click()
    status = page.locator("#train-status")
    status.get_by_text("Queued 4 run").wait_for()
    study = STUDY_ID.search(status.inner_text()).group(0)
    run_ids = RUN_ID.findall(status.inner_text())
    assert len(set(run_ids)) == 4, status.inner_text()

    # All four end; the jobs table shows them under their study's row.
    group = page.locator(JOB_ROWS, has_text=group_name(study))
    expect(group).to_contain_text("completed", timeout=RUNS_TIMEOUT_MS)
    expect_grouped(page, study, run_ids)

    # Panels: the SAR defaults first, then a search leaves one panel per matching metric.
    expect(page.locator("#train-panel-note")).to_contain_text("metrics match", timeout=15_000)
    # Panel 0 draws each run of the study (and any SAR run plotted before: the session's studio is shared).
    drawn = f"(ids) => ({PANEL})(0) && ids.every(id => ({PANEL})(0).runs.includes(id))"
    page.wait_for_function(drawn, arg=run_ids, timeout=30_000)
    assert page.evaluate(PANEL, 0)["metric"] == "train/loss"
    assert page.evaluate(PANEL, 1)["metric"] == "val/psnr"
    fill(page, "train-metric-search", "^sys/")
    expect(page.locator("#train-panel-note")).to_contain_text(re.compile(r"\b\d metrics? match\s*$"))
    page.wait_for_function(f"() => ({PANEL})(0) && ({PANEL})(0).metric.startsWith('sys/')", timeout=15_000)
    expect(page.locator("#train-plot-0")).to_be_visible()
    expect(page.locator("#train-plot-5")).to_be_hidden()
    page.screenshot(path=str(artifacts / "study-train.png"), full_page=True)

    # Studies: grouped curves (a mean line per variant over its 2 seeds) and the parallel coordinates.
    page.get_by_text("Studies: seeds grouped").click()
    choose(page, "train-study", study)
    page.wait_for_function(f"() => ({LINE_NAMES})('#train-grouped').length >= 2", timeout=30_000)
    means = [n for n in page.evaluate(LINE_NAMES, "#train-grouped") if "mean of" in n]
    assert means == [f"{v} (mean of 2)" for v in VARIANTS], means
    expect(page.locator("#train-parcoords .parcoords")).to_have_count(1, timeout=15_000)
    axes = page.locator("#train-parcoords .parcoords .axis-title").all_text_contents()
    assert "variant" in axes and "seed" in axes and "val/loss" in axes, axes
    page.locator("#train-grouped").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "study-groups.png"), full_page=True)

    # Compare tab, "A study": the leaderboard on 2 built-in images, the design's claim and ours answered.
    page.get_by_role("tab", name="Compare").click()
    compare = page.locator("#tab-compare")
    page.locator("#compare-what").get_by_text("A study").click()
    choose(page, "compare-study", study)
    compare.get_by_label("Built-in data: examples (fragments: corpus files)").fill("2")
    page.locator("#compare-claims textarea").fill(CLAIM)
    page.locator("#compare-study-run").click()
    board = page.locator("#compare-study-result")
    expect(board).to_contain_text("Claims:", timeout=120_000)
    text = board.inner_text()
    for variant in VARIANTS:
        assert re.search(rf"{variant}\s+2\s", text), text  # its row: the mean over 2 seeds
    assert re.search(r"sar-residual − sar-baseline ≥ 1\.5 on psnr: (not supported|inconclusive)", text), text
    assert "sar-residual − sar-baseline ≥ -1000 on psnr: supported" in text, text
    expect(page.locator("#compare-summary")).to_contain_text(f"Study {study}: 4 runs in 2 groups")
    expect(page.locator("#compare-study-plot .js-plotly-plot")).to_have_count(1)
    page.screenshot(path=str(artifacts / "study-compare.png"), full_page=True)
    assert not page.console_errors, page.console_errors
