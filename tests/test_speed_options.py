"""The speed options change the speed only: padding to a multiple of 64, another attention kernel,
compiled decoder layers, both sides in one forward and packed sentences give the same losses step for step;
--save_steps 0 writes no checkpoint; --profile_steps records the steps it names."""

import gzip
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

import train_contrastive as tc
import train_full
import train_lm_head
from common.pooling import find_decoder_layers
from common.speed import kernel_time, step_profiler

pytestmark = pytest.mark.usefixtures("reset_accelerate")
DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def losses(out: Path, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if key in r]


def stage1(model: Path, out: Path, *extra: str) -> list[float]:
    trained, _ = tc.main(["--model_name_or_path", str(model), "--train_file", str(DEMO / "train.jsonl"),
                          "--output_dir", str(out), "--per_device_train_batch_size", "8", "--max_steps", "3",
                          "--logging_steps", "1", "--report_to", "none", "--save_steps", "0",
                          "--pad_to_multiple_of", "0", *extra])
    compiled = [getattr(layer, "_compiled_call_impl", None) is not None for layer in find_decoder_layers(trained.lm)]
    assert all(compiled) if "--torch_compile" in extra else not any(compiled)  # the option did what it says
    return losses(out, "cl_loss")


@pytest.mark.parametrize("flags", [
    ["--pad_to_multiple_of", "64"],
    ["--attn_implementation", "eager"],
    ["--torch_compile"],
    ["--joint_forward"],
    ["--pack_length", "32"],
    ["--pack_length", "32", "--joint_forward", "--cl_chunk_size", "3"],
], ids=["pad64", "eager", "compile", "joint", "packed", "packed-joint-chunked"])
def test_stage1_speed_options_change_no_loss(tiny_pair_model, tmp_path, flags, monkeypatch):
    reference = stage1(tiny_pair_model, tmp_path / "reference")
    assert len(reference) == 3
    widths = []  # the width of every forward's rows
    pooled_layers = tc.pooled_layers

    def spy(model, input_ids, attention_mask, *, packed=None, **kwargs):
        widths.append((packed.input_ids if packed is not None else input_ids).shape[1])
        return pooled_layers(model, input_ids, attention_mask, packed=packed, **kwargs)
    monkeypatch.setattr(tc, "pooled_layers", spy)
    assert stage1(tiny_pair_model, tmp_path / "fast", *flags) == pytest.approx(reference, rel=1e-5, abs=1e-6)
    assert widths and (set(widths) == {32}) == ("--pack_length" in flags)  # packed rows when asked, only then
    assert not list((tmp_path / "fast").glob("checkpoint-*")), "--save_steps 0 wrote a checkpoint"


def test_stage3_compiled_layers_change_no_loss(tmp_path):
    def run(out: Path, *extra: str) -> list[float]:
        train_full.main([str(DEMO / "stage3.yaml"), "--output_dir", str(out), "--max_steps", "2",
                         "--logging_steps", "1", "--save_steps", "0", "--report_to", "none", *extra])
        return losses(out, "loss")
    reference = run(tmp_path / "reference")
    assert len(reference) == 2
    assert run(tmp_path / "compiled", "--torch_compile") == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_a_missing_attention_kernel_is_a_clear_error(tiny_pair_model, tmp_path):
    with pytest.raises(ValueError, match="--attn_implementation flash_attention_2"):
        stage1(tiny_pair_model, tmp_path / "out", "--attn_implementation", "flash_attention_2")


def test_packing_with_the_frozen_copy_and_a_mixture_changes_no_loss(tiny_pair_model, tmp_path):
    base = ["--english_encoder", "frozen", "--mix_layers", "1-2"]
    reference = stage1(tiny_pair_model, tmp_path / "reference", *base)
    assert len(reference) == 3
    packed = stage1(tiny_pair_model, tmp_path / "packed", *base, "--pack_length", "32")
    assert packed == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_packing_runs_fewer_positions_and_the_log_counts_them(tiny_pair_model, tmp_path):
    """padded_tokens_per_s / tokens_per_s is the positions run per real token: above 1 with padding, and
    lower when the sentences are packed (the counter, not the padded batch's shape, feeds the log)."""
    def positions_per_token(out: Path, *extra: str) -> float:
        stage1(tiny_pair_model, out, "--max_steps", "2", "--logging_steps", "2", *extra)
        row = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "tokens_per_s" in r][-1]
        return row["padded_tokens_per_s"] / row["tokens_per_s"]
    padded = positions_per_token(tmp_path / "padded", "--pad_to_multiple_of", "64")
    packed = positions_per_token(tmp_path / "packed", "--pad_to_multiple_of", "64", "--pack_length", "64")
    # the demo's sentences are ~7 tokens: padded to 64 that is ~9 positions a token, packed in rows of 64 ~1.5
    assert padded > 5 and packed < padded / 4


# --profile_steps: torch.profiler over chosen training steps

def profiled_steps(folder: Path, first: int, last: int, start_step: int = 0) -> tuple[list[str], list[int]]:
    """The summary's lines, and the training steps the Chrome trace holds (its ProfilerStep#k counts this
    run's steps from 0)."""
    lines = (folder / "profile" / f"steps_{first}-{last}.rank0.txt").read_text().splitlines()
    trace = json.loads(gzip.decompress((folder / "profile" / f"trace_{first}-{last}.rank0.json.gz").read_bytes()))
    steps = sorted(start_step + 1 + int(e["name"].split("#")[1])
                   for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#"))
    return lines, steps


@pytest.mark.parametrize("start_step", [0, 2])
def test_the_profiler_records_the_steps_asked_for(tmp_path, start_step):
    # step N sleeps 20 N ms: the mean wall time says which steps were recorded, not only how many
    profiler = step_profiler("4-6", start_step, 8, str(tmp_path))
    for step in range(start_step + 1, 9):
        time.sleep(0.02 * step)
        profiler.step()
    profiler.stop()
    lines, steps = profiled_steps(tmp_path, 4, 6, start_step)
    assert lines[0] == "training steps recorded: 4, 5, 6" and steps == [4, 5, 6]
    assert lines[1].startswith("wall time per step:")
    assert float(lines[1].split()[-2]) == pytest.approx(100, abs=12)  # (80 + 100 + 120) / 3 ms


def test_a_run_that_stops_early_says_which_steps_it_recorded(tmp_path):
    profiler = step_profiler("2-5", 0, 8, str(tmp_path))
    for _ in range(3):
        profiler.step()
    profiler.stop()  # after step 3
    lines, steps = profiled_steps(tmp_path, 2, 5)
    assert lines[0] == "training steps recorded: 2, 3" and steps[:2] == [2, 3]


@pytest.mark.parametrize("spec", ["5", "a-b", "4-3", "0-2", "3-9"])
def test_profile_steps_outside_the_run_are_a_clear_error(tmp_path, spec):
    with pytest.raises(ValueError, match="--profile_steps"):
        step_profiler(spec, 0, 8, str(tmp_path))
    assert step_profiler("", 0, 8, str(tmp_path)) is None


def test_device_busy_counts_each_kernel_once():
    # as torch.profiler reports a GPU step: the operator that launched a kernel carries its time too, and the
    # step's range on the GPU spans the kernels
    def event(device, us, annotation=False):
        return SimpleNamespace(device_type=device, self_device_time_total=us, is_user_annotation=annotation)
    events = [event(DeviceType.CPU, 100), event(DeviceType.CUDA, 100), event(DeviceType.CUDA, 500, annotation=True),
              event(DeviceType.CUDA, 20), event(DeviceType.CPU, 20)]
    assert kernel_time(events) == 120


@pytest.mark.parametrize("trainer", [tc, train_lm_head, train_full], ids=["stage1", "stage2", "stage3"])
def test_every_trainer_profiles_the_steps_asked_for(tmp_path, trainer):
    config = {tc: "stage1.yaml", train_lm_head: "stage2.yaml", train_full: "stage3.yaml"}[trainer]
    trainer.main([str(DEMO / config), "--output_dir", str(tmp_path), "--max_steps", "3", "--logging_steps", "1",
                  "--save_steps", "0", "--eval_steps", "100", "--report_to", "none", "--profile_steps", "2-3"])
    lines, steps = profiled_steps(tmp_path, 2, 3)
    assert lines[0] == "training steps recorded: 2, 3" and steps == [2, 3]
    assert "aten::mm" in "\n".join(lines)  # the model's matrix products are in the table


def test_sdpa_backends_sets_exactly_the_named_kernels():
    """--sdpa_backends allows the named attention kernels and no other; empty restores all; a typo is an error."""
    import torch

    from common.speed import set_sdpa_backends

    flags = {"flash": torch.backends.cuda.flash_sdp_enabled, "efficient": torch.backends.cuda.mem_efficient_sdp_enabled,
             "cudnn": torch.backends.cuda.cudnn_sdp_enabled, "math": torch.backends.cuda.math_sdp_enabled}
    try:
        set_sdpa_backends("flash, efficient,math")
        assert {k: f() for k, f in flags.items()} == {"flash": True, "efficient": True, "cudnn": False, "math": True}
        set_sdpa_backends("math")
        assert {k: f() for k, f in flags.items()} == {"flash": False, "efficient": False, "cudnn": False, "math": True}
        with pytest.raises(ValueError, match="unknown kernel 'fast'"):
            set_sdpa_backends("cudnn,fast")
    finally:
        set_sdpa_backends("")
    assert all(f() for f in flags.values())
