"""Stage 1 benchmark: truncated against full forward, and length-grouped against random batching.

A script, not a test: it prints a table and writes JSON. Both comparisons run in one process on the
same model, data and batches, so the ratios are meaningful even on a noisy machine.

1. Throughput (pairs/s, one optimizer step = forward + backward + AdamW) of the contrastive step
   pooling a middle layer, with the forward that stops at that layer (what train_contrastive.py
   does) against the full forward with ``output_hidden_states=True`` (every layer, the final norm
   and the LM head's logits, as a plain Hugging Face call does).
2. Share of real (non-pad) tokens per batch over one epoch of the training pairs, with the
   length-grouped sampler against random batches (both sides of each pair counted).

    python -m bench.bench_contrastive                                   # demo pairs, CPU-sized model
    python -m bench.bench_contrastive --train_file pairs.jsonl --tokenizer path/with/tokenizer.model
    python -m bench.bench_contrastive --model_config sheared-1.3b --bf16 --batch_size 64   # on a GPU
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import train_contrastive as tc
from common.args import parse_arguments
from common.data import LengthGroupedBatchSampler, ParallelCollator, iter_parallel_jsonl
from common.demo import DEMO_DIR, train_demo_tokenizer
from common.pooling import pool, pooling_mask

CONFIGS = {
    # CPU-sized: deep enough that the skipped upper half and the LM head are a real share of the work
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=4),
    # the target architecture, Sheared-LLaMA-1.3B (random weights: nothing is downloaded)
    "sheared-1.3b": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                         num_key_value_heads=16),
}


@dataclass
class BenchArguments:
    train_file: str = field(default=str(DEMO_DIR / "train.jsonl"), metadata={"help": "Parallel JSONL to batch."})
    tokenizer: str | None = field(default=None, metadata={"help": (
        "Tokenizer folder; unset: the demo tokenizer trained on --train_file."
    )})
    model_config: str = field(default="tiny", metadata={"help": f"Architecture, random weights: {', '.join(CONFIGS)}."})
    vocab_size: int | None = field(default=None, metadata={"help": (
        "Model vocabulary (e.g. 46336 for an expanded Llama); unset: the tokenizer's size."
    )})
    pool_layer: int | None = field(default=None, metadata={"help": "Pooled layer; unset: the middle one."})
    batch_size: int = field(default=32, metadata={"help": "Pairs per step."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length per sentence."})
    steps: int = field(default=20, metadata={"help": "Timed steps per variant (after 3 warm-up steps)."})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (use on GPUs)."})
    seed: int = field(default=0, metadata={"help": "Seed for weights and batch order."})
    output: str = field(default="bench/results_contrastive.json", metadata={"help": "Where to write the JSON results."})


class FullForwardModel(tc.ContrastiveModel):
    """The same step, but each side runs the whole model with output_hidden_states=True."""

    def encode(self, input_ids, attention_mask, encoder=None):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        kw = self.pool_kwargs
        mask = pooling_mask(input_ids, attention_mask, kw["bos_token_id"], exclude_bos=kw["exclude_bos"])
        per_layer = torch.stack([pool(out.hidden_states[layer], mask, kw["pooling"]) for layer in kw["layers"]])
        return self.mixture(per_layer) if self.mixture is not None else per_layer[0]


def real_token_share(lengths_ko, lengths_en, batch_size, group_by_length, seed) -> float:
    sampler = LengthGroupedBatchSampler(lengths_ko + lengths_en, batch_size, seed=seed,
                                        group_by_length=group_by_length)
    real = padded = 0
    for batch in sampler:
        ko, en = lengths_ko[batch], lengths_en[batch]
        real += ko.sum() + en.sum()
        padded += len(batch) * (ko.max() + en.max())
    return float(real / padded)


def time_steps(model_cls, lm_state, config, layer, batches, args, device) -> dict:
    with torch.device(device):
        lm = LlamaForCausalLM(config)
    lm.load_state_dict(lm_state)
    lm.config.use_cache = False
    model = model_cls(lm, layers=[layer], bos_token_id=config.bos_token_id).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            ko, en, _, _ = model(**batch)
            loss, _, _ = tc.step_losses(ko, en, None, temperature=0.05, symmetric=True, cl_weight=1.0, lm_weight=0.0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for batch in batches[:3]:
        step(batch)
    sync()
    start = time.perf_counter()
    for i in range(args.steps):
        step(batches[3 + i % (len(batches) - 3)])
    sync()
    seconds = time.perf_counter() - start
    timed = [batches[3 + i % (len(batches) - 3)] for i in range(args.steps)]
    tokens = sum(int(b[k].numel()) for b in timed for k in ("ko_input_ids", "en_input_ids"))
    result = {"pairs_per_s": args.steps * args.batch_size / seconds, "padded_tokens_per_s": tokens / seconds,
              "seconds": seconds}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main(argv=None):
    args = parse_arguments(BenchArguments, argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    pairs = list(iter_parallel_jsonl(args.train_file))
    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        tokenizer = train_demo_tokenizer([p[s] for p in pairs for s in ("ko", "en")])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    ko_ids = tokenizer([p["ko"] for p in pairs], truncation=True, max_length=args.max_seq_length)["input_ids"]
    en_ids = tokenizer([p["en"] for p in pairs], truncation=True, max_length=args.max_seq_length)["input_ids"]
    len_ko, len_en = np.array([len(x) for x in ko_ids]), np.array([len(x) for x in en_ids])

    # 2. padding: one epoch of each sampler over all pairs
    share = {g: real_token_share(len_ko, len_en, args.batch_size, g, args.seed) for g in (True, False)}

    # 1. throughput, on the same length-grouped batches for both forwards
    config = LlamaConfig(vocab_size=args.vocab_size or len(tokenizer), max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **CONFIGS[args.model_config])
    layer = config.num_hidden_layers // 2 if args.pool_layer is None else args.pool_layer
    collate = ParallelCollator(tokenizer, pad_to_multiple_of=8 if device.type == "cuda" else None)
    sampler = LengthGroupedBatchSampler(len_ko + len_en, args.batch_size, seed=args.seed)
    batches = []
    for batch, _ in zip(sampler, range(args.steps + 3)):
        b = collate([{"ko_ids": ko_ids[i], "en_ids": en_ids[i]} for i in batch])
        batches.append({k: v.to(device) for k, v in b.items()})
    with torch.device(device):
        lm_state = LlamaForCausalLM(config).state_dict()
    # Alternate the two variants twice and keep each one's faster run, so neither is favoured by
    # running second (warm allocator and library caches) or hurt by a noisy moment.
    runs = {"truncated": [], "full": []}
    for _ in range(2):
        runs["truncated"].append(time_steps(tc.ContrastiveModel, lm_state, config, layer, batches, args, device))
        runs["full"].append(time_steps(FullForwardModel, lm_state, config, layer, batches, args, device))
    truncated, full = (max(runs[k], key=lambda r: r["pairs_per_s"]) for k in ("truncated", "full"))

    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "args": asdict(args), "pool_layer": layer, "num_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "truncated_forward": truncated, "full_forward": full,
        "speedup_truncated_over_full": truncated["pairs_per_s"] / full["pairs_per_s"],
        "real_token_share_grouped": share[True], "real_token_share_random": share[False],
        "real_token_share_ratio": share[True] / share[False],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(f"device {results['device']}, {args.model_config} ({config.num_hidden_layers} layers, "
          f"vocab {config.vocab_size}), pool layer {layer}, batch {args.batch_size}, bf16 {args.bf16}")
    print(f"{'forward':<12}{'pairs/s':>10}{'tokens/s':>12}")
    for name, r in (("truncated", truncated), ("full", full)):
        print(f"{name:<12}{r['pairs_per_s']:>10.1f}{r['padded_tokens_per_s']:>12.0f}")
    print(f"truncated / full throughput: {results['speedup_truncated_over_full']:.2f}x")
    print(f"real-token share: grouped {share[True]:.3f}, random {share[False]:.3f}, "
          f"ratio {results['real_token_share_ratio']:.2f}x")
    return results


if __name__ == "__main__":
    main()
