"""The studio's API through gradio_client against a real `python app.py`: launch a job, watch it complete,
read its curves and log, cancel, and refuse bad input with a message; plus the command line."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from gradio_client.exceptions import AppError

from studio.app import DEFAULT_PORT, parse_args
from studio.views.fragments import builtin_choices
from trainers.runs.store import RunStore

FRAGMENT_DATA = "fragments:python,max_files=12"
# /sar_compare after the checkpoints: source, scene seed, size (0: the checkpoint's), looks, upload, pixel
# kind, patch, error-map scale.
SAR_SETTINGS = ("validation sample", 0, 0, 4, None, "auto", "centre", "stretched to the largest error")
JOB_TIMEOUT_S = 180.0


def launch(client, variants, preset="smoke", epochs="", batch_size="", lr="", data="", seed=""):
    """Call /launch; returns (status message, plotted runs, selected run)."""
    return client.predict(
        variants=variants,
        preset=preset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        data=data,
        seed=seed,
        device="auto",
        plotted_runs=[],
        api_name="/launch",
    )


def job_row(client, run_id: str) -> dict:
    rows = client.predict(api_name="/jobs")
    matches = [row for row in rows if row["id"] == run_id]
    assert matches, f"run {run_id} missing from /jobs: {[row['id'] for row in rows]}"
    return matches[0]


def wait_for_status(client, run_id: str, statuses: set[str], timeout: float = JOB_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    row = job_row(client, run_id)
    while row["status"] not in statuses and time.monotonic() < deadline:
        time.sleep(1.0)
        row = job_row(client, run_id)
    assert row["status"] in statuses, (
        f"run {run_id} is {row['status']} after {timeout:.0f} s: {row['reason']}"
    )
    return row


def decode_array(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype": ..., "bdata": base64} (plotly >= 6)."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


def plotted_series(plot_value: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(steps, values) per run of a /curves plot, decoded from the plotly JSON the page draws."""
    figure = json.loads(plot_value["plot"])
    return {t["meta"]: (decode_array(t["x"]), decode_array(t["y"])) for t in figure["data"] if "meta" in t}


def test_launch_a_fragments_job_watch_it_complete_and_read_its_curves(client, studio, cli_checkpoints):
    # cli_checkpoints: the comparison tabs' checkpoints train meanwhile (see the last test).
    message, plotted, run_id = launch(client, ["fragment-dae"], epochs="2", data=FRAGMENT_DATA, seed="3")
    assert run_id and run_id in message and "Queued 1 run" in message
    assert plotted == [run_id]

    # cpu_slots=1: a second job waits in the queue, and cancelling it there is immediate.
    _, _, queued_id = launch(client, ["fragment-dae-bytes"], data=FRAGMENT_DATA)
    answer = client.predict(queued_id, api_name="/cancel")
    assert queued_id in answer and "cancel" in answer.lower()
    assert wait_for_status(client, queued_id, {"cancelled"}, timeout=30)["status"] == "cancelled"

    row = wait_for_status(client, run_id, {"completed", "failed", "diverged", "cancelled"})
    assert row["status"] == "completed", row["reason"]
    assert row["variant"] == "fragment-dae" and row["epoch"] == 2 and row["step"] > 0
    assert row["metric"] == "val/accuracy_corrupted" and 0.0 <= row["best"] <= 1.0
    assert row["elapsed"] > 0 and row["device"] == "cpu, fp32"

    with RunStore(studio.runs_dir) as store:
        run = store.get_run(run_id)
        assert run.config["epochs"] == 2 and run.config["seed"] == 3 and run.config["data"] == FRAGMENT_DATA
        train_losses = store.metric_series(run_id, "train/loss")
        val_losses = store.metric_series(run_id, "val/loss")
        names = store.metric_names([run_id])
    assert (studio.runs_dir / run_id / "checkpoints" / "best" / "model.safetensors").is_file()

    plot, caption = client.predict("train/loss", [run_id], 0.0, False, "", api_name="/curves")
    series = plotted_series(plot)
    assert list(series) == [run_id] and len(train_losses) >= 2
    np.testing.assert_array_equal(series[run_id][0], [step for step, _ in train_losses])
    np.testing.assert_allclose(series[run_id][1], [value for _, value in train_losses])
    figure = json.loads(plot["plot"])
    assert figure["layout"]["yaxis"]["type"] == "linear" and figure["layout"]["uirevision"]
    assert f"{len(train_losses)} points" in caption

    plot, _ = client.predict("val/loss", [run_id], 0.5, True, "", api_name="/curves")
    steps, _ = plotted_series(plot)[run_id]
    assert len(val_losses) == 2 and steps.tolist() == [step for step, _ in val_losses]  # one point per epoch
    assert json.loads(plot["plot"])["layout"]["yaxis"]["type"] == "log"
    assert {"train/loss", "val/loss", "val/accuracy_corrupted"} <= set(names)

    log = client.predict(run_id, api_name="/log_tail")
    assert "completed" in log and run_id in log

    finished = client.predict(run_id, api_name="/cancel")
    assert "already ended (completed)" in finished


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"variants": []}, "No variant chosen"),
        ({"variants": ["fragment-dae"], "lr": "fast"}, "learning rate must be a positive number"),
        ({"variants": ["fragment-dae"], "lr": "-1e-3"}, "learning rate must be a positive number"),
        ({"variants": ["fragment-dae"], "epochs": "-2"}, "epochs must be a whole number >= 1"),
        ({"variants": ["fragment-dae"], "batch_size": "2.5"}, "batch size must be a whole number"),
        ({"variants": ["fragment-dae"], "data": "pictures:folder=/x"}, "unknown data domain"),
        ({"variants": ["fragment-dae", "sar-baseline"], "data": FRAGMENT_DATA}, "sar-baseline"),
        ({"variants": ["fragment-dae"], "data": "fragments:folder=/no/such/folder"}, "/no/such/folder"),
    ],
)
def test_bad_launch_input_gives_a_message_and_launches_nothing(client, studio, kwargs, expected):
    with RunStore(studio.runs_dir) as store:
        before = len(store.list_runs())
    message, _, _ = launch(client, **kwargs)
    assert expected in message and message.startswith("⚠️")
    with RunStore(studio.runs_dir) as store:
        assert len(store.list_runs()) == before


def test_cancel_and_curves_refuse_bad_input_with_a_message(client):
    assert "No run selected" in client.predict("", api_name="/cancel")
    assert "no run with id 'nope'" in client.predict("nope", api_name="/cancel")
    _, caption = client.predict("train/loss", ["nope"], 0.0, False, "", api_name="/curves")
    assert "no run with id 'nope'" in caption
    _, caption = client.predict("", [], 0.0, False, "", api_name="/curves")
    assert "No metric chosen" in caption


def choice_of(update: dict, variant: str) -> str:
    """The checkpoint value (RUN_ID/best, never a server path) of `variant` among a refreshed dropdown's
    (label, value) choices."""
    values = [value for label, value in update["choices"] if f" · {variant} · " in label]
    assert values, f"no {variant} checkpoint among {update['choices']}"
    assert not any(value.startswith("/") for _, value in update["choices"]), update["choices"]
    return values[0]


def test_comparison_and_hub_tabs_through_the_api(client, studio, cli_checkpoints, tmp_path):
    cli_checkpoints.wait()

    # SAR: refresh the checkpoint list (as the page's button does), then compare on a synthetic scene.
    sar_folder = choice_of(client.predict([], api_name="/sar_checkpoints"), "sar-baseline")
    notes, plot, table = client.predict([sar_folder], *SAR_SETTINGS, api_name="/sar_compare")
    assert [row[0] for row in table["data"]] == ["sar-baseline"]
    psnr = table["data"][0][table["headers"].index("PSNR (dB) ↑")]
    assert float(psnr) > 0  # rounded per the metric registry, as text
    assert table["headers"][-1].startswith("flag")  # a useless model is flagged in words beside its row
    heatmaps = [t for t in json.loads(plot["plot"])["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) >= 3  # input, reconstruction, error map
    with pytest.raises(AppError, match="no checkpoint chosen"):
        client.predict([], *SAR_SETTINGS, api_name="/sar_compare")

    # Audio: three players' worth of 1 s WAV files, and the metrics table.
    audio_folder = choice_of(client.predict(None, api_name="/audio_checkpoints"), "audio-vae")
    outputs = client.predict(audio_folder, "built-in clip", "note", 0, None, 0.0, api_name="/audio_compare")
    for path in outputs[2:5]:
        info = soundfile.info(path)
        assert info.samplerate > 0 and info.duration == pytest.approx(1.0, abs=0.05), path
    assert soundfile.read(outputs[2])[0].std() > 0  # the input clip is not silent
    assert outputs[5]["headers"][:3] == ["figure", "reconstruction", "feature round trip"]
    assert outputs[5]["headers"][3].startswith("trivial baseline")

    # Fragments: accuracy table and a hex view of all 512 bytes.
    fragment_folder = choice_of(client.predict(None, api_name="/fragments_checkpoints"), "fragment-dae")
    builtin = builtin_choices()[0][1]
    noise = (0.005, 0.01, 0.002, 0.0)  # bit errors, substitutions, erasures, bursts
    notes, table, hex_html = client.predict(
        fragment_folder, "built-in file", builtin, None, 0, *noise, 0, False, api_name="/fragments_compare"
    )
    assert table["headers"] == ["figure", "repair", "identity baseline"]
    assert "00000000" in hex_html and "000001f0" in hex_html

    # Hub: export a run's checkpoint to a folder, load it back, and find it among the SAR checkpoints.
    sar_run = sar_folder.split("/")[0]  # RUN_ID/best
    # The run started after the page was built; the API takes its id without a /hub_runs call first.
    export_dir = tmp_path / "export"
    client.predict(sar_run, "best", str(export_dir), api_name="/hub_export")
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in export_dir.iterdir()}
    status, _ = client.predict(str(export_dir), "", api_name="/hub_load")
    choices = client.predict([], api_name="/sar_checkpoints")["choices"]
    loaded = [value for label, value in choices if label == value and label in status]  # by its label
    assert loaded and not any(str(tmp_path) in value for _, value in choices)
    client.predict(loaded[0], *SAR_SETTINGS, api_name="/sar_compare")  # the label names the folder
    with pytest.raises(AppError):
        client.predict(str(tmp_path / "missing"), "", api_name="/hub_load")


def test_a_fresh_api_session_names_checkpoints_by_run_id(studio, cli_checkpoints):
    """No checkpoint-list call first, no server folder paths: what a script knows is the run id."""
    from gradio_client import Client

    cli_checkpoints.wait()
    with RunStore(studio.runs_dir) as store:
        runs = store.list_runs()
    run_id = next(r.id for r in runs if r.variant == "fragment-dae" and r.status == "completed")
    fresh = Client(studio.url, verbose=False)
    try:
        builtin = builtin_choices()[0][1]
        notes, table, hex_html = fresh.predict(
            run_id, "built-in file", builtin, None, 0, 0.01, 0.0, 0.0, 0.0, 0, False,
            api_name="/fragments_compare",
        )  # fmt: skip
        assert run_id in notes.replace("\\", "") and "000001f0" in hex_html
        with pytest.raises(AppError, match="unknown checkpoint 'no-such-run'"):
            fresh.predict(
                "no-such-run", "built-in file", builtin, None, 0, 0.01, 0.0, 0.0, 0.0, 0, False,
                api_name="/fragments_compare",
            )  # fmt: skip
    finally:
        fresh.close()


def test_parse_args_defaults_and_environment(monkeypatch):
    for name in ("GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME", "STUDIO_RUNS_DIR", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    args = parse_args([])
    assert (args.host, args.port, args.runs_dir, args.cpu_slots) == ("127.0.0.1", DEFAULT_PORT, "runs", None)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("STUDIO_RUNS_DIR", "/tmp/elsewhere")
    args = parse_args(["--cpu-slots", "3"])
    assert (args.port, args.runs_dir, args.cpu_slots) == (7999, "/tmp/elsewhere", 3)
    assert parse_args(["--port", "8001", "--host", "0.0.0.0"]).port == 8001
    monkeypatch.setenv("SPACE_ID", "user/studio")
    assert parse_args([]).host == "0.0.0.0"
    for bad in (["--port", "0"], ["--port", "http"], ["--cpu-slots", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_bad_uploads_through_the_running_app_give_messages_and_the_app_keeps_working(
    client, cli_checkpoints, tmp_path
):
    """The issue's bad inputs, sent through the page's own endpoints as a browser would upload them."""
    from gradio_client import handle_file

    cli_checkpoints.wait()
    sar_folder = choice_of(client.predict([], api_name="/sar_checkpoints"), "sar-baseline")
    audio_folder = choice_of(client.predict(None, api_name="/audio_checkpoints"), "audio-vae")
    fragment_folder = choice_of(client.predict(None, api_name="/fragments_checkpoints"), "fragment-dae")

    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    short = tmp_path / "short.wav"
    soundfile.write(short, 0.3 * np.sin(np.linspace(0, 400, 4800)), 48000)  # 0.1 s
    other_rate = tmp_path / "other_rate.wav"
    soundfile.write(other_rate, 0.3 * np.sin(np.linspace(0, 4000, 22050)), 22050)  # 1 s at 22.05 kHz
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"0123456789")

    def sar_upload(path: Path, folders: list[str]):
        settings = ("uploaded image", 0, 0, 4, handle_file(str(path)), "auto", "centre", SAR_SETTINGS[-1])
        return client.predict(folders, *settings, api_name="/sar_compare")

    for path, message in ((empty, "empty"), (corrupt, "corrupt.png")):
        with pytest.raises(AppError, match=message):
            sar_upload(path, [sar_folder])
    # A checkpoint of another domain is never offered by the SAR picker; named anyway, it is refused.
    with pytest.raises(AppError, match="fragment-dae.*this view needs a SAR model"):
        client.predict([fragment_folder], *SAR_SETTINGS, api_name="/sar_compare")
    with pytest.raises(AppError, match="0.10 s"):
        client.predict(audio_folder, "upload or recording", "note", 0, handle_file(str(short)), 0.0,
                       api_name="/audio_compare")  # fmt: skip
    with pytest.raises(AppError, match="10 bytes"):
        client.predict(fragment_folder, "uploaded file", None, handle_file(str(tiny)), 0, 0.005, 0.01, 0.002,
                       0.0, 0, False, api_name="/fragments_compare")  # fmt: skip

    # Another sample rate is resampled (and said so), not refused; and the app still answers good requests.
    notes = client.predict(audio_folder, "upload or recording", "note", 0, handle_file(str(other_rate)), 0.0,
                           api_name="/audio_compare")[0]  # fmt: skip
    assert "22050" in notes and "resampled" in notes
    table = client.predict([sar_folder], *SAR_SETTINGS, api_name="/sar_compare")[2]
    assert [row[0] for row in table["data"]] == ["sar-baseline"]


def test_every_api_parameter_and_result_has_a_name(tmp_path):
    """gradio_client users read these names in view_api(); an unlabelled component shows as value_71."""
    from studio.app import build_app, make_context

    ctx = make_context(tmp_path / "runs", cpu_slots=1, space=False)
    try:
        endpoints = build_app(ctx).get_api_info()["named_endpoints"]
    finally:
        ctx.jobs.shutdown()
        ctx.store.close()
    assert {"/launch", "/sar_compare", "/audio_compare", "/fragments_compare", "/hub_load"} <= set(endpoints)
    unnamed = {
        name: [item.get("label") for item in ep["parameters"] + ep["returns"]]
        for name, ep in endpoints.items()
        if any(
            not item.get("label") or item["label"].startswith("value_")
            for item in ep["parameters"] + ep["returns"]
        )
    }
    assert not unnamed, unnamed
