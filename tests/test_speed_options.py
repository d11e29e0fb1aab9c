"""The speed options change the speed only: padding to a multiple of 64, another attention kernel,
compiled decoder layers and both sides in one forward give the same losses step for step; --save_steps 0
writes no checkpoint."""

import json
from pathlib import Path

import pytest

import train_contrastive as tc
import train_full
from common.pooling import find_decoder_layers

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
], ids=["pad64", "eager", "compile", "joint"])
def test_stage1_speed_options_change_no_loss(tiny_pair_model, tmp_path, flags):
    reference = stage1(tiny_pair_model, tmp_path / "reference")
    assert len(reference) == 3
    assert stage1(tiny_pair_model, tmp_path / "fast", *flags) == pytest.approx(reference, rel=1e-5, abs=1e-6)
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
