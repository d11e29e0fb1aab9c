"""Bytes per checkpoint: measured on a small model through train_contrastive.py, then scaled to the 1.3B target.

A checkpoint is the model export (every checkpoint keeps it) plus, for the newest --save_state_limit
ones, the resume state (optimizer, scheduler, RNG). Without DeepSpeed the resume state no longer repeats
the weights; before, it held a second fp32 copy (accelerate's model.safetensors, the size of the export).
The bytes scale with the parameter count, so the target's are the measured bytes per parameter times its
parameter count (the Sheared-LLaMA-1.3B architecture with a Korean-expanded vocabulary, counted on the
meta device: nothing is allocated).

    python -m bench.bench_checkpoint [--vocab_size 46336]
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, PartialState
from transformers import LlamaConfig, LlamaForCausalLM

import train_contrastive as tc
from bench.bench_contrastive import CONFIGS
from common.demo import DEMO_DIR


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(vocab_size: int = 46336) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
        # with the LM loss on, every parameter gets a gradient and so an AdamW state, as in a full run
        tc.main([str(DEMO_DIR / "stage1.yaml"), "--output_dir", str(out), "--max_steps", "2", "--save_steps", "1",
                 "--eval_steps", "100", "--report_to", "none", "--save_state_limit", "1", "--lm_weight", "0.5",
                 "--lm_train_file", str(DEMO_DIR / "mono_ko_train.txt"), "--block_size", "64"])
        new, old = out / "checkpoint-2", out / "checkpoint-1"
        state = new / "accelerate_state"
        export = sum(f.stat().st_size for f in new.glob("*.safetensors"))
        params = sum(t.numel() for t in LlamaForCausalLM.from_pretrained(new).parameters())
        measured = {
            "parameters": params,
            "export_bytes": export,
            "resume_state_bytes": folder_bytes(state),
            "weights_in_resume_state_bytes": sum(f.stat().st_size for f in state.glob("model*.safetensors")),
            "newest_checkpoint_bytes": folder_bytes(new),
            "older_checkpoint_bytes": folder_bytes(old),
        }
    with torch.device("meta"):
        target = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=False,
                                              **CONFIGS["sheared-1.3b"]))
    n = sum(p.numel() for p in target.parameters())
    per_param = {k: v / measured["parameters"] for k, v in measured.items() if k.endswith("_bytes")}
    gb = {k.replace("_bytes", "_gb"): round(v * n / 1e9, 2) for k, v in per_param.items()}
    # before: every checkpoint held the export, the resume state and in it a second copy of the weights
    before = per_param["newest_checkpoint_bytes"] + per_param["export_bytes"]
    gb["before_each_checkpoint_gb"] = round(before * n / 1e9, 2)
    results = {"measured_small_model": measured, "bytes_per_parameter": per_param, "target_parameters": n,
               "target_vocab_size": vocab_size, "target": gb}
    print(json.dumps(results, indent=2))
    out = Path(__file__).resolve().parent / "results_checkpoint.json"
    out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--vocab_size") + 1]) if "--vocab_size" in sys.argv else 46336)
