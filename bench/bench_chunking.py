"""Peak memory of one stage-1 step against the batch size, with and without gradient caching (--cl_chunk_size).

Each measurement runs in a fresh process (the peak resident memory of a process only grows): a random
Llama of the CPU-sized "tiny" architecture, sentences of 64 random tokens, one forward + backward of the
contrastive step, whole or in chunks of ``--chunk`` pairs. Reported: the process's peak resident memory
minus what it held before the step (the step's own activations and gradients). On a GPU the same shape
holds for torch.cuda.max_memory_allocated; this measures the CPU, which CI has.

    python -m bench.bench_chunking [--batch_sizes 32,64,128,256] [--chunk 16]
"""

import json
import subprocess
import sys
from pathlib import Path

WORKER = """
import resource, sys, torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM
import train_contrastive as tc
from bench.bench_contrastive import CONFIGS
batch, chunk = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
lm = LlamaForCausalLM(LlamaConfig(vocab_size=1000, max_position_embeddings=128, tie_word_embeddings=False,
                                  **CONFIGS["tiny"]))
accelerator = Accelerator(cpu=True)
model = accelerator.prepare(tc.ContrastiveModel(lm, layers=[4], bos_token_id=1))
ids = torch.randint(4, 1000, (batch, 64))
mask = torch.ones_like(ids)
b = {"ko_input_ids": ids, "ko_attention_mask": mask, "en_input_ids": ids.flip(0), "en_attention_mask": mask}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if chunk:
    tc.cached_backward(accelerator, model, b, chunk, english_encoder=None, lm_input_ids=None, cl_weight=1.0,
                       lm_weight=0.0, mix_entropy_weight=0.0, temperature=0.05, symmetric=True)
else:
    ko, en, _, _ = model(**b)
    tc.step_losses(ko, en, None, temperature=0.05, symmetric=True, cl_weight=1.0, lm_weight=0.0)[0].backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def main(batch_sizes=(32, 64, 128, 256), chunk: int = 16) -> dict:
    root = Path(__file__).resolve().parents[1]
    results = {"chunk": chunk, "peak_step_mib": {}}
    for batch in batch_sizes:
        row = {}
        for name, size in (("whole", 0), ("cached", chunk)):
            out = subprocess.run([sys.executable, "-c", WORKER, str(batch), str(size)], cwd=root, capture_output=True,
                                 text=True, check=True)
            row[name] = float(out.stdout.strip().splitlines()[-1])
        results["peak_step_mib"][batch] = row
        print(f"batch {batch:>5}: whole {row['whole']:8.1f} MiB, chunks of {chunk}: {row['cached']:8.1f} MiB")
    out = Path(__file__).resolve().parent / "results_chunking.json"
    out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    sizes = tuple(int(x) for x in args[args.index("--batch_sizes") + 1].split(",")) if "--batch_sizes" in args \
        else (32, 64, 128, 256)
    main(sizes, int(args[args.index("--chunk") + 1]) if "--chunk" in args else 16)
