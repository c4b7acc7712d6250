"""The Train tab's jobs table in a real headless Chromium: a study's runs under one group row that folds and
unfolds on a click, the eye that hides a run's curves, and a column choice that survives a reload (it lives
in the browser). The study's runs are written to the studio's run store as `python -m trainers study`
would leave them after training, so nothing trains here."""

from __future__ import annotations

import re
import secrets

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser]

ROWS = "#train-jobs [role=row].virtual-row"
HEADERS = "() => Array.from(document.querySelectorAll('#train-jobs thead th')).map(t => t.innerText.trim())"
HEADERS_ARE = f"(want) => JSON.stringify(({HEADERS})()) === JSON.stringify(want)"
# True when panel 1 draws the run's curve (`drawn` true) or does not (`drawn` false).
PLOTTED = """([runId, drawn]) => {
    const graph = document.querySelector('#train-plot-0 .js-plotly-plot');
    const runs = graph && graph._fullData ? graph._fullData.map(t => t.meta) : [];
    return runs.includes(runId) === drawn;
}"""


def write_study(runs_dir, study: str, name: str) -> list[str]:
    """A finished study of 2 variants × 2 seeds with a few train/loss points each; its run ids."""
    from trainers.runs.store import RunStore

    ids = []
    with RunStore(runs_dir) as store:
        for variant in ("sar-baseline", "sar-residual"):
            for seed in (0, 1):
                run = store.create_run(variant, "sar", {"study": study, "seed": seed}, status="running")
                for step in range(4):
                    store.log_metrics(run, step, 0, "train", {"loss": 1.0 / (step + 1 + seed)})
                store.set_status(run, "completed")
                store.set_labels(run, name=f"{name} · {variant} · seed {seed}", tags=[study])
                ids.append(run)
    return ids


def test_a_study_folds_in_the_jobs_table_and_the_column_choice_survives_a_reload(studio, page):
    study = f"study-20261207-120000-{secrets.token_hex(2)}"
    ids = write_study(studio.runs_dir, study, "browser study")
    page.goto(studio.url)
    group = page.locator(ROWS, has_text="browser study").filter(has_text="4/4 done").first
    expect(group).to_contain_text("4/4 done · 100%", timeout=20_000)
    expect(group).to_contain_text("2 variants × 2 seeds")
    members = page.locator(ROWS, has_text=re.compile(r"sar-(baseline|residual) · seed \d"))
    expect(members).to_have_count(4)
    group.locator("[role=gridcell]").nth(1).click()  # a click on the study's row folds it
    expect(members).to_have_count(0)
    expect(group).to_contain_text("▸")
    group.locator("[role=gridcell]").nth(1).click()
    expect(members).to_have_count(4)

    # The eye of one run: listed as hidden, still in the table, gone from the plotted curves.
    page.locator("#train-curve-runs input").first.fill(ids[0])
    page.keyboard.press("Enter")
    page.wait_for_function(PLOTTED, arg=[ids[0], True], timeout=20_000)
    row = page.locator(ROWS).filter(has=page.locator(f'[title*="{ids[0]}"]'))
    row.locator("[role=gridcell]").first.click()
    expect(page.locator("#train-hidden")).to_contain_text(ids[0])
    page.wait_for_function(PLOTTED, arg=[ids[0], False], timeout=20_000)
    expect(row.locator(".run-eye.off")).to_have_count(1)

    # Columns: seed in, speed out; the page reloads with the same choice.
    assert page.evaluate(HEADERS) == ["show", "run", "status", "progress", "best", "speed · ETA", "variant"]
    page.locator("#train-columns-box").get_by_text("Columns").first.click()
    page.locator("#train-columns").get_by_label("seed", exact=True).check()
    page.locator("#train-columns").get_by_label("speed · ETA", exact=True).uncheck()
    wanted = ["show", "run", "status", "progress", "best", "variant", "seed"]
    page.wait_for_function(HEADERS_ARE, arg=wanted, timeout=15_000)
    page.reload()
    expect(page.locator(ROWS, has_text="browser study").first).to_be_visible(timeout=20_000)
    page.wait_for_timeout(500)
    assert page.evaluate(HEADERS) == wanted
    page.locator("#train-columns-box").get_by_text("Columns").first.click()
    expect(page.locator("#train-columns").get_by_label("seed", exact=True)).to_be_checked()
    expect(page.locator("#train-columns").get_by_label("speed · ETA", exact=True)).not_to_be_checked()
