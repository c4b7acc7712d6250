"""The training step's set-up (`trainers.training.fastpath`): what the loop picks per device, that the fast
path
trains like fp32 (run on the CPU, where bf16 autocast, channels_last and the fused Adam kernel all exist),
and that every variant's training step compiles into one graph, so `--compile` on a GPU gets whole-model
kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.fastpath import TOLERANCE, compare_variant
from models import VARIANTS
from trainers.cli import build_parser
from trainers.runs.store import RunStore
from trainers.settings import make_config
from trainers.training.fastpath import PRECISIONS, FastPath
from trainers.training.loop import train

CPU = torch.device("cpu")


def test_cpu_runs_fp32_unless_bf16_is_asked_for():
    # Adam is the fused kernel on the CPU too, in either precision (faster there, same maths).
    assert FastPath.resolve(CPU, "sar") == FastPath(fused=True)
    assert FastPath.resolve(CPU, "sar", compile=True) == FastPath(fused=True), "no compile on the CPU"
    assert FastPath.resolve(CPU, "audio", "bf16") == FastPath(bf16=True, fused=True)
    assert FastPath.resolve(CPU, "audio", "fp32") == FastPath(fused=True)
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        FastPath.resolve(CPU, "sar", "fp16")


def test_cuda_default_is_bf16_and_channels_last_only_where_measured_faster():
    assert FastPath.cuda_default("sar") == FastPath(bf16=True, channels_last=True, fused=True)
    # bf16 made the audio VAEs slower and the fragment nets no faster on the GPU: fp32 with fused Adam there.
    assert FastPath.cuda_default("audio", compile=True) == FastPath(compile=True, fused=True)
    assert FastPath.cuda_default("fragments") == FastPath(fused=True)
    assert FastPath().describe() == "fp32" and FastPath(fused=True).describe() == "fp32 + fused"
    assert FastPath.cuda_default("sar").describe() == "bf16 + channels_last + fused"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resolves_to_the_default():
    cuda = torch.device("cuda")
    if torch.cuda.is_bf16_supported():
        assert FastPath.resolve(cuda, "sar") == FastPath.cuda_default("sar")
    assert not FastPath.resolve(cuda, "sar", "fp32").bf16
    assert not FastPath.resolve(cuda, "audio").bf16, "audio is fp32 unless bf16 is asked for"
    if torch.cuda.is_bf16_supported():
        assert FastPath.resolve(cuda, "audio", "bf16").bf16


def test_prepare_and_inputs_use_the_channels_last_layout():
    fast = FastPath(channels_last=True)
    model = nn.Sequential(nn.Conv2d(1, 4, 3))
    assert fast.prepare(model) is model
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    x, y = fast.inputs([torch.randn(2, 1, 8, 8), torch.randn(2, 3, 5)])
    assert x.is_contiguous(memory_format=torch.channels_last) and y.is_contiguous()
    assert FastPath().inputs(x) is x


def test_optimizer_is_fused_only_when_asked():
    params = [nn.Parameter(torch.randn(3))]
    assert FastPath(fused=True).optimizer(params, 1e-3).defaults["fused"] is True
    assert not FastPath().optimizer(params, 1e-3).defaults["fused"]


def test_precision_setting_reaches_the_loop_and_the_run_record(tmp_path):
    with pytest.raises(ValueError, match="unknown precision"):
        make_config("fragment-dae", "smoke", precision="half")
    cfg = make_config(
        "fragment-dae", "smoke", data="fragments:python,max_files=24", epochs=2, precision="bf16", log_every=1
    )
    with RunStore(tmp_path / "runs") as store:
        result = train(cfg, store)
        assert result.status == "completed", result.reason
        run = store.get_run(result.run_id)
        assert run.device == "cpu, bf16 + fused" and run.config["precision"] == "bf16"
        losses = [v for _, v in store.metric_series(result.run_id, "loss", split="train")]
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3]), "bf16 autocast training still learns"


def test_cli_offers_every_precision():
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    option = next(a for a in train_parser._actions if "--precision" in a.option_strings)
    assert tuple(option.choices) == PRECISIONS
    assert build_parser().parse_args(["train", "sar-baseline", "--precision", "fp32"]).precision == "fp32"


@pytest.mark.parametrize("variant", ["sar-residual", "audio-vae", "fragment-dae-bytes"])
def test_fast_path_trains_like_fp32(variant, single_thread):
    r = compare_variant(variant, steps=12, n_batches=3)
    assert r["fp32_loss_change"] > 0.05, "the runs compared must have trained"
    assert r["held_out_relative_difference"] <= TOLERANCE, r
    assert r["train_relative_difference"] <= TOLERANCE, r
    assert r["fp32"]["losses"] != r["fast"]["losses"], "the fast set-up really ran in bf16"


def test_compiled_fast_path_trains_like_fp32(single_thread):
    r = compare_variant("fragment-dae", steps=8, n_batches=2, compile=True)
    assert "compile" in r["fast"]["setup"]
    assert r["held_out_relative_difference"] <= TOLERANCE, r


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_step_traces_into_one_graph(variant):
    """A graph break would split the compiled step and leave Python between the pieces."""
    from benchmarks.common import build_run, sized_config

    cfg = sized_config(variant, "smoke", 1, batch_size=2)
    task, data, model = build_run(cfg)
    batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=2)))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda b: task.loss(model, b))(batch)
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
