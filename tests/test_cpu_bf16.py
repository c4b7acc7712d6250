"""The CPU's native bf16 (issue 21): the detection and its override, the per-variant CPU default, what a run
records, the prepared inference model and its cache, and that a bf16 step computes the fp32 loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import VARIANTS, create_model
from trainers.runs.store import RunStore
from trainers.settings import make_config
from trainers.training import fastpath
from trainers.training.fastpath import (
    CPU_BF16_VARIANTS,
    CPU_CHANNELS_LAST_VARIANTS,
    NATIVE_BF16_ENV,
    FastPath,
    InferenceModel,
    cpu_has_native_bf16,
    prepare_for_inference,
)
from trainers.training.loop import PHASES_NAME, TrainStep, cpu_threads, train

CPU = torch.device("cpu")


def _resolved(variant: str, precision: str = "auto") -> FastPath:
    return FastPath.resolve(CPU, VARIANTS[variant].domain, precision, variant=variant)


def test_forcing_the_detection_off_makes_every_variant_fp32(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    assert not cpu_has_native_bf16()
    assert all(_resolved(v) == FastPath(fused=True) for v in VARIANTS), "fp32 with the fused Adam kernel"
    # An explicit bf16 is still honoured (the user asked), in the variant's layout.
    assert _resolved("sar-baseline", "bf16").bf16


def test_with_native_bf16_the_table_decides_per_variant(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    assert CPU_BF16_VARIANTS, "the table names at least one variant (measured by benchmarks/cpu_bf16.py)"
    assert CPU_CHANNELS_LAST_VARIANTS <= CPU_BF16_VARIANTS, "channels_last only goes with bf16"
    for v in VARIANTS:
        fast = _resolved(v)
        assert fast.bf16 == (v in CPU_BF16_VARIANTS), v
        assert fast.channels_last == (v in CPU_CHANNELS_LAST_VARIANTS), v
        assert not fast.compile and fast.fused, "no compile on the CPU; the fused Adam kernel"
        assert _resolved(v, "fp32") == FastPath(fused=True), "fp32 when asked, whatever the table says"
        assert fast.precision == ("bf16" if fast.bf16 else "fp32")
    assert FastPath.resolve(CPU, "sar") == FastPath(fused=True), "no variant named: fp32"
    # A net narrowed by its settings (the smoke and reference presets) trains in fp32: slower in bf16 here.
    for v in CPU_BF16_VARIANTS:
        narrow = make_config(v, "reference").model or {"channels": [8, 16, 16]}
        assert FastPath.resolve(CPU, VARIANTS[v].domain, variant=v, model=narrow) == FastPath(fused=True), v
        assert FastPath.resolve(CPU, VARIANTS[v].domain, "bf16", variant=v, model=narrow).bf16, "asked: bf16"
        wide = {"base_channels": 96}
        assert FastPath.resolve(CPU, VARIANTS[v].domain, variant=v, model=wide).bf16, "wider: bf16"


def test_detection_follows_torchs_cpu_report(monkeypatch):
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu_has_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not cpu_has_native_bf16(), "torch's kernels at AVX2 do not use the bf16 instructions"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not cpu_has_native_bf16(), "AVX512 without BF16 or AMX emulates bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_native_bf16()


def test_with_amx_narrow_sar_nets_and_the_mel_vae_train_in_bf16(monkeypatch):
    """AMX tiles made narrow nets and audio-vae-mel faster in bf16 too (issue 21's Xeon); without AMX a narrow
    net stays fp32. The kind follows torch's probes, and `AE_STUDIO_CPU_BF16=amx` forces it."""
    monkeypatch.setenv(NATIVE_BF16_ENV, "amx")
    assert fastpath.cpu_bf16_kind() == "amx" and cpu_has_native_bf16()
    for v in VARIANTS:
        narrow = make_config(v, "reference").model
        fast = FastPath.resolve(CPU, VARIANTS[v].domain, variant=v, model=narrow)
        assert fast.bf16 == (v in fastpath.AMX_BF16_VARIANTS), v
        assert fast.channels_last == (v in CPU_CHANNELS_LAST_VARIANTS), v
    assert "audio-vae-mel" in fastpath.AMX_BF16_VARIANTS and "audio-vae" not in fastpath.AMX_BF16_VARIANTS
    monkeypatch.delenv(NATIVE_BF16_ENV)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert fastpath.cpu_bf16_kind() == "amx"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert fastpath.cpu_bf16_kind() == "avx512-bf16"
    narrow = make_config("sar-residual", "reference").model
    assert not FastPath.resolve(CPU, "sar", variant="sar-residual", model=narrow).bf16


@pytest.mark.parametrize("forced, precision", [("1", "bf16"), ("0", "fp32")])
def test_a_run_records_the_precision_it_ran_in(tmp_path, monkeypatch, forced, precision):
    monkeypatch.setenv(NATIVE_BF16_ENV, forced)
    monkeypatch.setattr(fastpath, "CPU_BF16_VARIANTS", frozenset({"fragment-dae"}))
    cfg = make_config("fragment-dae", "smoke", data="fragments:python,max_files=12", epochs=1, max_steps=2)
    with RunStore(tmp_path / "runs") as store:
        result = train(cfg, store)
        assert result.status == "completed", result.reason
        run = store.get_run(result.run_id)
        assert run.device == f"cpu, {precision} + fused", "the jobs table's device column says what ran"
        assert run.config["precision"] == "auto", "the request is kept, so a resume resolves it afresh"
    phases = json.loads((tmp_path / "runs" / result.run_id / PHASES_NAME).read_text())
    assert phases["precision"] == precision and phases["fast_path"] == f"{precision} + fused"
    assert phases["cpu_native_bf16"] is (forced == "1")
    assert phases["threads"] == torch.get_num_threads() and phases["data_workers"] == 0


def test_threads_follow_the_cores_a_job_may_use(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3, "the studio's share of the CPU slots wins"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu_threads(world=2) in (1, 2), "4 pinned cores (or fewer under a quota) shared by 2 ranks"
    assert 1 <= cpu_threads() <= 4


def _sar_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("sar-baseline", base_channels=8, image_size=64).eval()


def test_prepared_model_is_cached_and_gives_the_uncached_outputs(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    monkeypatch.setattr(fastpath, "CPU_BF16_VARIANTS", frozenset({"sar-baseline"}))
    monkeypatch.setattr(fastpath, "CPU_CHANNELS_LAST_VARIANTS", frozenset({"sar-baseline"}))
    model, twin = _sar_model(), _sar_model()
    x = torch.rand(2, 1, 64, 64)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    prepared = prepare_for_inference(model, example=x)
    assert len(calls) == 1, "warmed up once on the example's shape"
    assert prepare_for_inference(model, example=x) is prepared and len(calls) == 1, (
        "cached, no second warm-up"
    )
    assert prepared.VARIANT == "sar-baseline" and prepared.fast == FastPath(bf16=True, channels_last=True)
    uncached = InferenceModel(twin, FastPath(bf16=True, channels_last=True), CPU)
    twin.to(memory_format=torch.channels_last)
    with torch.no_grad():
        (a, za), (b, zb) = prepared(x), uncached(x)
    assert a.dtype == torch.float32 and a.is_contiguous(), "scoring gets contiguous fp32"
    assert torch.equal(a, b) and torch.equal(za, zb)
    with torch.no_grad():
        plain, _ = twin(x)
    assert (a - plain).abs().max() < 0.05, "bf16 inference stays close to fp32"
    assert "_fastpath_inference_forms" not in "".join(model.state_dict()), "the cache is not in the weights"


def test_forced_off_inference_is_the_plain_fp32_model(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    model = _sar_model()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected, _ = model(x)
        got, _ = prepare_for_inference(model, CPU)(x)
    assert torch.equal(got, expected)


def test_ssim_term_stays_fp32_under_bf16_autocast():
    from trainers.training.tasks import masked_sar_loss

    torch.manual_seed(0)
    x = torch.rand(4, 1, 64, 64)
    x_hat = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    valid = torch.ones_like(x)
    fp32 = masked_sar_loss(x_hat, x, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = masked_sar_loss(x_hat, x, valid)
    # With the SSIM convolutions in bf16 this loss came out 42 % too high near a perfect reconstruction.
    assert torch.allclose(bf16, fp32, rtol=1e-5), (float(bf16), float(fp32))


@pytest.mark.parametrize("variant", ["sar-residual", "fragment-dae"])
def test_a_bf16_step_has_the_fp32_loss(variant):
    from benchmarks.common import build_run, sized_config, train_loader

    cfg = sized_config(variant, "smoke", 1, batch_size=4)
    task, data, _ = build_run(cfg)
    batch = task.batch_to(next(iter(train_loader(cfg, data.train))), CPU)
    losses = {}
    for fast in (FastPath(), FastPath.cpu_default(variant, bf16=True)):
        torch.manual_seed(0)
        model = create_model(variant, preprocessing=data.preprocessing, **cfg.model).train()
        step = TrainStep(
            task, model, fast.optimizer(model.parameters(), 1e-3), 1.0, fast, CPU, fast.prepare(model)
        )
        torch.manual_seed(1)
        losses[fast.precision] = float(step(fast.inputs(batch)))
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02), losses


@pytest.mark.parametrize("entry", ["trainers.cli", "studio.app", "app"])
def test_every_entry_point_makes_openmp_threads_wait_passively_before_torch_loads(entry):
    """libgomp reads OMP_WAIT_POLICY once, when torch loads it: each entry point (`ae-train`, `ae-studio`,
    `python app.py`, `python -m trainers`) must set it first. Spinning threads made a 2-thread step 8-15x
    slower on the shared 2-core machine (BENCHMARKS.md, "CPU bf16"); an explicit setting still wins."""
    probe = (
        "import os, sys\n"
        "was_loaded = 'torch' in sys.modules\n"
        f"import {entry}\n"  # trainers/__init__.py runs before any module of the entry point imports torch
        "print(os.environ.get('OMP_WAIT_POLICY'), was_loaded)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["PASSIVE", "False"], out.stderr[-2000:]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["ACTIVE", "False"], out.stderr[-2000:]
