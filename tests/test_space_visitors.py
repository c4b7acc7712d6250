"""Two visitors of one served public Space (SPACE_ID set): through the API (gradio_client, one session per
visitor) and in Chromium (one browser profile per visitor), a visitor sees, uses, labels, exports and reads
the media and log of their own runs only, other visitors' jobs show as anonymous queue entries, and a new
session from the same address does not get around the per-visitor cap (issue 19 item 3)."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.conftest import space_server
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow]

FRAGMENT_DATA = "fragments:python,max_files=12"
RUN_ID = re.compile(r"\d{8}-\d{6}-fragment-dae-[0-9a-f]{4}")


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """`python app.py` as on a public Space, one server for the module's tests."""
    with space_server(tmp_path_factory.mktemp("space-visitors")) as server:
        yield server


def answer(client, *args, api_name: str, **kwargs) -> str:
    """What an endpoint answers, as text: its result, or its error message."""
    try:
        return repr(client.predict(*args, api_name=api_name, **kwargs))
    except Exception as exc:  # noqa: BLE001 - gradio_client's AppError and its kin: the message is the answer
        return f"error: {exc}"


def _own_rows(client) -> dict[str, dict]:
    return {row["id"]: row for row in client.predict(api_name="/jobs") if row.get("id")}


def _sar_run_of(runs_dir, owner: str) -> str:
    """A SAR run with a `best` checkpoint owned by `owner`, written into the served store (as a finished
    training would leave it), so /sar_compare has a checkpoint of that visitor to be refused."""
    from models import create_model
    from trainers.runs import checkpoints
    from trainers.runs.store import RunStore

    with RunStore(runs_dir) as store:
        run_id = store.create_run("sar-baseline", "sar", {"variant": "sar-baseline"}, status="completed")
        store.update_run(run_id, owner=owner)
        model = create_model("sar-baseline")
        checkpoints.save_checkpoint(store.run_dir(run_id), "best", model, state={"step": 1, "epoch": 1})
    return run_id


@pytest.mark.timeout(600)
def test_api_visitors_reach_only_their_own_runs(space):
    from gradio_client import Client

    alice, bob = Client(space.url, verbose=False), Client(space.url, verbose=False)
    status = alice.predict(
        ["fragment-dae"],
        "smoke",
        1,
        None,
        None,
        FRAGMENT_DATA,
        api_name="/launch",
        name="alice run",
        tags="private",
        note="alice's note",
    )
    run_id = RUN_ID.search(str(status)).group(0)
    wait_for(lambda: _own_rows(alice)[run_id]["status"] == "completed", 300, "alice's run to complete", 1.0)
    row = _own_rows(alice)[run_id]
    assert (row["name"], row["tags"], row["note"]) == ("alice run", ["private"], "alice's note")  # at launch
    sar_run = _sar_run_of(space.runs_dir, alice.session_hash)

    refused = {
        "set_labels": answer(bob, run_id, "hacked by bob", "x", "y", api_name="/set_labels"),
        "sar_compare": answer(
            bob, [f"{sar_run}/best"], "validation sample", 0, 0, 0, None, api_name="/sar_compare"
        ),
        "compare": answer(bob, "fragments", [run_id], folder=None, uploads=None, n=2, api_name="/compare"),
        "fragments_compare": answer(bob, run_id, upload=None, api_name="/fragments_compare"),
        "export_metrics": answer(bob, [run_id], "csv", api_name="/export_metrics"),
        "media_steps": answer(bob, run_id, None, api_name="/media_steps"),
        "media_view": answer(bob, run_id, 1, key=None, api_name="/media_view"),
        "log_tail": answer(bob, run_id, api_name="/log_tail"),
        "resume": answer(bob, run_id, api_name="/resume"),
        # The run is checked before anything goes out (a Space has no folder export at all).
        "hub_push": answer(
            bob, run_id, "best", "bob/stolen", False, "main", "x", "hf_x", api_name="/hub_push"
        ),
        "curves": answer(bob, "train/loss", [run_id], 0.6, False, "", api_name="/curves"),
    }
    for endpoint, text in refused.items():
        refused = r"no run with id|no run matches|unknown checkpoint|private to the visitor"
        assert re.search(refused, text), (endpoint, text)
    listings = {
        "jobs": answer(bob, api_name="/jobs"),
        "media_runs": answer(bob, None, api_name="/media_runs"),
        "fragments_checkpoints": answer(bob, None, api_name="/fragments_checkpoints"),
        "sar_checkpoints": answer(bob, None, api_name="/sar_checkpoints"),
    }
    for endpoint, text in listings.items():
        assert run_id not in text and sar_run not in text and "alice" not in text, (endpoint, text)
    assert "reference · sar-baseline" in listings["sar_checkpoints"]  # the shipped references are everyone's

    # The owner still has it all: her labels untouched by bob, her media, her export, her checkpoint.
    assert _own_rows(alice)[run_id]["name"] == "alice run"
    assert "Saved: alice's" in answer(alice, run_id, "alice's", "private", "", api_name="/set_labels")
    assert not re.search("no run (with id|matches)", answer(alice, run_id, None, api_name="/media_steps"))
    assert "✅" in answer(alice, [run_id], "csv", api_name="/export_metrics")
    assert f"{sar_run}/best" in answer(alice, None, api_name="/sar_checkpoints")


@pytest.mark.timeout(300)
def test_a_new_session_from_the_same_address_does_not_bypass_the_cap(space):
    from gradio_client import Client

    alice, bob, again = (Client(space.url, verbose=False) for _ in range(3))
    launched = []
    for _ in range(2):
        status = alice.predict(["fragment-dae"], "smoke", 10, None, None, FRAGMENT_DATA, api_name="/launch")
        launched.append(RUN_ID.search(str(status)).group(0))
    try:
        refused = answer(again, ["fragment-dae"], "smoke", 1, None, None, FRAGMENT_DATA, api_name="/launch")
        assert "your address already has 2 jobs" in refused, refused
        rows = bob.predict(api_name="/jobs")
        queue = [row for row in rows if row.get("anonymous")]
        assert len(queue) == 2 and {row["id"] for row in queue} == {""}, rows
        assert all(row.get("name") is None and row.get("data") is None for row in queue)
        assert not any(run_id in repr(rows) for run_id in launched)
    finally:
        for run_id in launched:
            alice.predict(run_id, api_name="/cancel")
        wait_for(
            lambda: all(_own_rows(alice)[r]["status"] not in ("queued", "running") for r in launched),
            60,
            "alice's jobs to stop",
            0.5,
        )


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_two_browser_visitors_see_only_their_own_runs(space, browser, page, artifacts):
    page.goto(space.url)
    train = page.locator("#tab-train")
    assert (
        "full"
        not in train.locator("#train-preset-info, [data-testid='block-info']").all_inner_texts().__str__()
    )
    assert "folder=" not in page.locator("#train-data textarea, #train-data input").first.get_attribute(
        "placeholder"
    )
    # Two jobs: on a Space's one CPU slot the second waits in the queue, so the stranger surely sees an entry.
    # The first is Variant B for 10 epochs, minutes on a CPU, so it is still running when alice cancels it.
    train.get_by_text("Variant B: pre-activation residual autoencoder").click()
    train.get_by_text("fragment-dae-bytes — ").click()
    page.locator("#train-epochs textarea, #train-epochs input").first.fill("10")
    page.locator("#train-launch-name textarea, #train-launch-name input").first.fill("alice browser run")
    page.locator("#train-preset-info").get_by_text("fragment-dae-bytes", exact=True).wait_for()
    page.locator("#train-launch").click()
    status = page.locator("#train-status")
    status.get_by_text("Queued 2 run").wait_for()
    run_id = re.search(r"\d{8}-\d{6}-sar-residual-[0-9a-f]{4}", status.inner_text()).group(0)
    expect(page.locator("#train-jobs")).to_contain_text("alice browser run", timeout=15_000)

    stranger = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    try:
        stranger.goto(space.url)
        jobs = stranger.locator("#train-jobs")
        expect(jobs).to_contain_text("another visitor's job", timeout=30_000)
        time.sleep(2.5)  # a poll later: still nothing of alice's
        assert run_id not in jobs.inner_text() and "alice" not in jobs.inner_text()
        assert stranger.locator("#train-selected input").input_value() == ""  # nothing selected for him
        selected = stranger.locator("#train-selected input")
        selected.fill(run_id)
        selected.press("Enter")
        stranger.wait_for_timeout(1500)
        expect(stranger.locator("#train-cancel")).to_be_disabled()
        expect(stranger.locator("#train-resume")).to_be_disabled()
        assert stranger.locator("#train-name input, #train-name textarea").first.input_value() == ""
        stranger.locator("#train-name input, #train-name textarea").first.fill("hacked by bob")
        stranger.locator("#train-save-labels").click()
        expect(stranger.locator("#train-labels-status")).to_contain_text("no run with id", timeout=15_000)
        stranger.screenshot(path=str(artifacts / "space-stranger.png"), full_page=True)
    finally:
        stranger.context.close()
    expect(page.locator("#train-jobs")).to_contain_text("alice browser run")
    page.screenshot(path=str(artifacts / "space-owner.png"), full_page=True)
    selected = page.locator("#train-selected input")
    selected.fill(run_id)
    selected.press("Enter")
    expect(page.locator("#train-cancel")).to_be_enabled(timeout=15_000)
    page.locator("#train-cancel").click()
    expect(page.locator("#train-cancel-status")).to_contain_text("ancel", timeout=15_000)
