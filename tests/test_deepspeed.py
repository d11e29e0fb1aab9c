"""The trainers under DeepSpeed ZeRO-2 / ZeRO-3 (2 CPU processes, gloo) against one process on the same
global batch (which tests/test_distributed.py and tests/test_train_stages.py tie to plain DDP), and the
shipped DeepSpeed and accelerate configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import DeepSpeedPlugin
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import train_contrastive
import train_full
import train_lm_head
from common.demo import demo_config, tiny_llama

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "ds_configs"


def launch(tmp_path, name, script, args, zero):
    """Run ``script`` on 2 CPU processes under DeepSpeed ZeRO ``zero`` (2 or 3); return (output dir, log)."""
    out = tmp_path / name
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           # the DeepSpeed op compiled at first use is cached here, once per checkout
           "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed",
           "--deepspeed_config_file", str(CONFIGS / f"zero{zero}.json"),
           "--zero3_init_flag", "true" if zero == 3 else "false",
           "--num_processes", "2", "--num_machines", "1", "--dynamo_backend", "no",
           str(ROOT / script), *demo(script, args), "--output_dir", str(out), "--report_to", "none",
           "--logging_steps", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "over 2 process(es)" in proc.stderr
    return out, read_log(out)


def one_process(tmp_path, name, module, args, reset):
    """The same run in this process with twice the per-process batch: the same global batches."""
    out = tmp_path / name
    args = list(args)
    i = args.index("--per_device_train_batch_size") + 1
    args[i] = str(2 * int(args[i]))
    reset()
    module.main([*demo(module.__name__ + ".py", args), "--output_dir", str(out), "--report_to", "none",
                 "--logging_steps", "1"])
    return out, read_log(out)


def demo(script, args):
    """The script's demo config (model and data) under ``args``, unless they name their own model."""
    if "--model_name_or_path" in args:
        return list(args)
    return [demo_config({"train_contrastive.py": "stage1", "train_lm_head.py": "stage2",
                         "train_full.py": "stage3"}[Path(script).name]), *args]


def read_log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def losses(log, key):
    return {r["step"]: r[key] for r in log if key in r}


STAGE1 = ["--max_steps", "4", "--save_steps", "2", "--eval_steps", "2", "--per_device_train_batch_size", "8",
          "--save_state_limit", "0",
          "--warmup_ratio", "0.25"]


def assert_same_run(out, log, ref_out, ref_log, key, step):
    ours, ref = losses(log, key), losses(ref_log, key)
    assert sorted(ours) == sorted(ref) and ours
    for s in ours:  # fp32; only the order of the gradient reductions differs
        assert ours[s] == pytest.approx(ref[s], rel=1e-4), s
    model = AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{step}")  # the exported folder loads
    ref_weights = load_file(str(ref_out / f"checkpoint-{step}" / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, ref_weights[name], rtol=1e-3, atol=1e-5)


CHUNKED = ["--cl_chunk_size", "3"]  # 8 pairs a process: chunks of 3, 3 and 2
PACKED = ["--pack_length", "32"]


@pytest.mark.parametrize("zero, extra, fast", [
    (2, [], []),
    (3, ["--english_encoder", "frozen", "--mix_layers", "1-3"], []),
    (2, ["--english_encoder", "frozen", "--mix_layers", "1-3"], CHUNKED),
    (3, [], CHUNKED + PACKED),
], ids=["zero2", "zero3-frozen-mixture", "zero2-frozen-mixture-chunked", "zero3-chunked-packed"])
def test_stage1_under_zero_matches_one_process(tmp_path, zero, extra, fast, reset_accelerate):
    """ZeRO on 2 processes = one process on the same global batch; with gradient caching (and packed sentences)
    under ZeRO against the whole padded batch at once in one process (tests/test_instruments.py ties chunked
    to unchunked there too)."""
    out, log = launch(tmp_path, f"zero{zero}", "train_contrastive.py", STAGE1 + extra + fast, zero=zero)
    ref_out, ref_log = one_process(tmp_path, "one", train_contrastive, STAGE1 + extra, reset_accelerate)
    assert_same_run(out, log, ref_out, ref_log, "cl_loss", 4)
    assert losses(log, "eval/gap")[4] == pytest.approx(losses(ref_log, "eval/gap")[4], rel=1e-3, abs=1e-4)
    if "--mix_layers" in extra:
        w, w_ref = (json.loads((d / "checkpoint-4" / "layer_weights.json").read_text()) for d in (out, ref_out))
        assert w == pytest.approx(w_ref, rel=1e-4)
        assert losses(log, "layer_weight/2") == pytest.approx(losses(ref_log, "layer_weight/2"), rel=1e-4)
    if zero == 2 and not fast:  # resume under ZeRO-2 from step 2 reproduces steps 3-4
        _, resumed = launch(tmp_path, "resumed", "train_contrastive.py",
                            STAGE1 + ["--resume_from_checkpoint", str(out / "checkpoint-2")], zero=2)
        a, b = losses(log, "cl_loss"), losses(resumed, "cl_loss")
        assert sorted(b) == [3, 4]
        for step in b:
            assert b[step] == pytest.approx(a[step], rel=1e-6), step


@pytest.mark.parametrize("zero", [2, 3])
@pytest.mark.parametrize("script, module", [("train_lm_head.py", train_lm_head), ("train_full.py", train_full)])
def test_stages_2_and_3_under_zero_match_one_process(tmp_path, script, module, zero, reset_accelerate):
    args = ["--max_steps", "3", "--save_steps", "3", "--eval_steps", "3", "--per_device_train_batch_size", "2",
            "--warmup_ratio", "0.34"]
    out, log = launch(tmp_path, "zero", script, args, zero=zero)
    ref_out, ref_log = one_process(tmp_path, "one", module, args, reset_accelerate)
    assert_same_run(out, log, ref_out, ref_log, "loss", 3)


def leftover_autos(node, path=""):
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in leftover_autos(v, f"{path}.{k}" if path else k)]
    return [path] if node == "auto" else []


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero3_offload.json"])
def test_deepspeed_configs_validate_with_every_auto_filled(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    plugin = DeepSpeedPlugin(hf_ds_config=str(CONFIGS / name))
    hidden = 2048
    # what accelerate fills from the model and the scripts (configure_deepspeed) at prepare time
    plugin.deepspeed_config_process(must_match=False, **{
        # DeepSpeedConfig checks the batch sizes against a world of 1 here
        "train_micro_batch_size_per_gpu": 64, "gradient_accumulation_steps": 1, "train_batch_size": 64,
        "gradient_clipping": 1.0, "bf16.enabled": True,
        "zero_optimization.reduce_bucket_size": hidden * hidden,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden,
    })
    config = plugin.deepspeed_config
    assert leftover_autos(config) == []
    ds = DeepSpeedConfig(config)
    assert ds.zero_optimization_stage == int(name[4])
    assert ds.bfloat16_config.enabled
    if name.startswith("zero3"):
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_accelerate_configs_point_at_existing_deepspeed_files():
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config["num_processes"] >= config["num_machines"] >= 1, path.name
        if config["distributed_type"] == "DEEPSPEED":
            assert (ROOT / config["deepspeed_config"]["deepspeed_config_file"]).is_file(), path.name
            assert "mixed_precision" not in config, path.name  # the JSON's bf16 "auto" follows --bf16


def test_frozen_parameters_are_exported_exactly_under_bf16_zero(tmp_path):
    """DeepSpeed bf16 holds every parameter in bf16; the stage 2 body never trains, and its export must
    still be the starting checkpoint's fp32 tensors, bitwise (the head, trained, is the engine's bf16)."""
    from transformers import AutoTokenizer

    start = tmp_path / "start"
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "demo" / "model")
    tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, seed=3).save_pretrained(start)  # fp32 on disk
    tokenizer.save_pretrained(start)
    args = ["--model_name_or_path", str(start), "--train_file", str(ROOT / "data" / "demo" / "mono_ko_train.txt"),
            "--block_size", "32", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "100",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--bf16"]
    out, _ = launch(tmp_path, "zero2_bf16", "train_lm_head.py", args, zero=2)
    before = load_file(str(start / "model.safetensors"))
    after = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    for name, tensor in before.items():
        if name != "lm_head.weight":
            assert after[name].dtype == tensor.dtype == torch.float32 and torch.equal(after[name], tensor), name
    assert not torch.equal(after["lm_head.weight"].float(), before["lm_head.weight"])
