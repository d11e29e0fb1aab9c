"""Training throughput and model FLOPs utilisation (MFU) of each stage on one device.

A script, not a test. For each scenario it builds the model (random weights, fp32 master weights,
bf16 autocast with --bf16, sdpa attention, fused AdamW on CUDA), runs timed optimizer steps on real
parallel pairs (length-grouped, as the trainer batches them) and random LM blocks, and reports
tokens/s, pairs/s, peak memory and MFU = achieved model FLOP/s / peak FLOP/s, the peak being the
trainers' (the data sheet's bf16 figure for a known GPU, else a large matrix product measured here), so
that this MFU and the trainers' logged one are the same figure; the measured product is printed too.

Model FLOPs per step, 6 x parameters x tokens for a trained forward + backward, 2 x for a forward
without gradient, where "parameters" are those the tokens actually pass through:
- stage 1: decoder layers 1..L (the truncated forward; embeddings are a lookup) for the Korean
  side, and for the English side too when shared, or 2 x for the frozen copy's forward;
  with the LM loss, 6 x (all layers + LM head) x block tokens;
- stage 3: 6 x (all layers + LM head) x block tokens.
Attention score FLOPs are left out (short sentences; they add a few percent at 1,024-token blocks).
Tokens are real (unpadded) tokens, as in the trainers' tokens_per_s and mfu: padding is work but not
useful work. The real-token share of the pair batches is reported too.

From the measured pairs/s it projects one epoch of the research's stage 1 (5.7M pairs, with the LM
stream cycled 1:1 when on) on 1 GPU and on 8 (assuming linear scaling; gathered negatives and the
gradient all-reduce cost a little on NVLink).

    python -m bench.bench_throughput                                        # CPU, tiny config
    python -m bench.bench_throughput --model_config sheared-1.3b --bf16 --vocab_size 46336 \\
        --train_file pairs.jsonl --tokenizer TOKENIZER_DIR --batch_sizes 64,128,256
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import train_contrastive as tc
from bench.bench_contrastive import CONFIGS
from common.args import parse_arguments
from common.data import LengthGroupedBatchSampler, ParallelCollator, iter_parallel_jsonl
from common.demo import DEMO_DIR, train_demo_tokenizer
from common.flops import layer_params, lm_params, peak_flops, stage1_flops

RESEARCH_PAIRS = 5_700_000


@dataclass
class Arguments:
    model_config: str = field(default="tiny", metadata={"help": f"Architecture, random weights: {', '.join(CONFIGS)}."})
    vocab_size: int | None = field(default=None, metadata={"help": (
        "Model vocabulary (the expanded size); unset: the tokenizer's."
    )})
    train_file: str = field(default=str(DEMO_DIR / "train.jsonl"), metadata={"help": (
        "Parallel JSONL giving realistic sentence lengths."
    )})
    tokenizer: str | None = field(default=None, metadata={"help": (
        "Tokenizer folder; unset: the demo tokenizer trained on --train_file."
    )})
    scenarios: str = field(default="stage1_shared,stage1_frozen,stage1_shared_lm,stage3", metadata={"help": (
        "Comma-separated scenarios to run."
    )})
    batch_sizes: str = field(default="32", metadata={"help": (
        "Comma-separated per-device pair batch sizes to try (stage 3: blocks = batch / 16); an out-of-memory "
        "ends the search."
    )})
    pool_layer: int | None = field(default=None, metadata={"help": "Pooled layer; unset: the middle one."})
    layouts: str = field(default="padded", metadata={"help": (
        "Comma-separated stage-1 layouts of a step's sentences, each measured: padded (each side padded to its "
        "longest, two forwards), joint (both sides in one forward, padded to the longer), packed (each side's "
        "sentences packed into rows of --pack_length, no padding), joint_packed (both sides packed together)."
    )})
    pack_length: int = field(default=256, metadata={"help": "Row length of the packed layouts."})
    block_size: int = field(default=1024, metadata={"help": "LM block length (stage 1 LM loss, stage 3)."})
    lm_batch_size: int = field(default=4, metadata={"help": "LM blocks per step in stage 1 with the LM loss."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length per sentence."})
    steps: int = field(default=10, metadata={"help": "Timed steps per measurement (after 3 warm-up steps)."})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": (
        "Recompute activations (more fits, ~1/3 more compute)."
    )})
    output: str = field(default="bench/results_throughput.json", metadata={"help": "Where to write the JSON results."})


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_scenario(name, config, lm_state, pair_batches, args, device, batch_size, layout="padded") -> dict:
    with torch.device(device):
        lm = LlamaForCausalLM(config)
    lm.load_state_dict(lm_state)
    lm.config.use_cache = False
    if args.gradient_checkpointing:
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    n_layers = config.num_hidden_layers
    layer = n_layers // 2 if args.pool_layer is None else args.pool_layer
    full_params = lm_params(lm)
    stage1 = name.startswith("stage1")
    frozen = None
    if name == "stage1_frozen":
        frozen = LlamaForCausalLM(config).to(device, dtype=torch.bfloat16 if args.bf16 else torch.float32)
        frozen.load_state_dict(lm_state)
        frozen.requires_grad_(False).eval()
    lm_weight = 1.0 if name.endswith("_lm") else 0.0
    model = tc.ContrastiveModel(lm, layers=[layer], bos_token_id=config.bos_token_id, joint=layout.startswith("joint"),
                                pack_length=args.pack_length if layout.endswith("packed") else 0).train()
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-5, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    n_blocks = args.lm_batch_size if stage1 else max(1, batch_size // 16)
    blocks = [torch.randint(3, config.vocab_size, (n_blocks, args.block_size), generator=gen).to(device)
              for _ in range(2)]

    def step(i):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            if stage1:
                lm_batch = blocks[i % 2] if lm_weight > 0 else None
                ko, en, lm_loss, _ = model(**pair_batches[i % len(pair_batches)], english_encoder=frozen,
                                        lm_input_ids=lm_batch)
                loss, _, _ = tc.step_losses(ko, en, lm_loss, temperature=0.05, symmetric=True, cl_weight=1.0,
                                            lm_weight=lm_weight)
            else:
                loss = lm(input_ids=blocks[i % 2], labels=blocks[i % 2]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(3):
        step(i)
    sync(device)
    model.positions = 0  # the positions the timed steps' forwards run, padding included
    start = time.perf_counter()
    for i in range(args.steps):
        step(3 + i)
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps

    trunc_params = layer_params(lm, layer)
    if stage1:
        used = [pair_batches[(3 + i) % len(pair_batches)] for i in range(args.steps)]
        # real tokens, as the trainer counts them: padding is not useful work
        ko_tokens = np.mean([int(b["ko_attention_mask"].sum()) for b in used])
        en_tokens = np.mean([int(b["en_attention_mask"].sum()) for b in used])
        lm_tokens = n_blocks * args.block_size if lm_weight > 0 else 0
        flops = stage1_flops(trunc_params, ko_tokens, en_tokens, frozen is not None, full_params, lm_tokens)
        tokens = ko_tokens + en_tokens + lm_tokens
        positions = model.positions / args.steps
        pairs_per_s = batch_size / seconds
    else:
        tokens = n_blocks * args.block_size
        flops = 6 * full_params * tokens
        pairs_per_s = None
    result = {"batch_size": batch_size if stage1 else n_blocks, "layout": layout if stage1 else None,
              "seconds_per_step": seconds,
              "tokens_per_s": tokens / seconds, "model_flops_per_s": flops / seconds, "pairs_per_s": pairs_per_s}
    if stage1:  # the share of the positions run that are real tokens of the pairs
        result["real_token_share_pairs"] = (ko_tokens + en_tokens) / positions
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result  # the model and optimizer go with this frame


def main(argv=None):
    args = parse_arguments(Arguments, argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pairs = list(iter_parallel_jsonl(args.train_file))
    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        tokenizer = train_demo_tokenizer([p[s] for p in pairs for s in ("ko", "en")])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    ko = tokenizer([p["ko"] for p in pairs], truncation=True, max_length=args.max_seq_length)["input_ids"]
    en = tokenizer([p["en"] for p in pairs], truncation=True, max_length=args.max_seq_length)["input_ids"]
    config = LlamaConfig(vocab_size=args.vocab_size or len(tokenizer), tie_word_embeddings=False,
                         max_position_embeddings=max(2048, args.block_size), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **CONFIGS[args.model_config])
    with torch.device(device):
        lm_state = LlamaForCausalLM(config).state_dict()
    # the trainers' peak (the data sheet's for a known GPU, else measured), so that both MFUs are one figure;
    # the large matrix product measured here is printed beside it
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    measured = peak_flops(device, dtype, measure=True)
    peak = peak_flops(device, dtype) if device.type == "cuda" else measured  # a CPU has no data sheet here
    collate = ParallelCollator(tokenizer, pad_to_multiple_of=8 if device.type == "cuda" else None)
    lengths = [len(a) + len(b) for a, b in zip(ko, en)]

    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "args": asdict(args),
               "peak_flops_per_s": peak, "measured_matmul_flops_per_s": measured,
               "parameters": sum(v.numel() for v in lm_state.values()), "scenarios": {}}
    print(f"device {results['device']}, {args.model_config}, {results['parameters'] / 1e9:.3f}B parameters, "
          f"peak {'bf16' if args.bf16 else 'fp32'} {peak / 1e12:.1f} TFLOP/s (a large matmul here: "
          f"{measured / 1e12:.1f})")
    runs = [(name, layout) for name in args.scenarios.split(",")
            for layout in (args.layouts.split(",") if name.startswith("stage1") else ["padded"])
            if not (name == "stage1_frozen" and layout.startswith("joint"))]  # the frozen copy: two forwards
    for name, layout in runs:
        key = name if layout == "padded" else f"{name}/{layout}"
        best = None
        for batch_size in map(int, args.batch_sizes.split(",")):
            sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=0)
            batches = []
            for batch, _ in zip(sampler, range(13)):
                b = collate([{"ko_ids": ko[i], "en_ids": en[i]} for i in batch])
                batches.append({k: v.to(device) for k, v in b.items()})
            try:
                r = run_scenario(name, config, lm_state, batches, args, device, batch_size, layout)
            except torch.OutOfMemoryError:
                print(f"{key}: batch {batch_size} does not fit")
                break
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            r["mfu"] = r["model_flops_per_s"] / peak
            if r["pairs_per_s"]:
                # with the LM stream on, an epoch is still one pass over the pairs (they outnumber the blocks)
                r["epoch_hours_1gpu"] = RESEARCH_PAIRS / r["pairs_per_s"] / 3600
                r["epoch_hours_8gpu"] = r["epoch_hours_1gpu"] / 8
            line = f"{key:<31} batch {r['batch_size']:>4}: {r['tokens_per_s']:>9.0f} tok/s, MFU {r['mfu']:.1%}"
            if r.get("real_token_share_pairs"):
                line += f", {r['real_token_share_pairs']:.0%} real"
            if r["pairs_per_s"]:
                line += f", {r['pairs_per_s']:.0f} pairs/s, epoch {r['epoch_hours_1gpu']:.1f} h on one such device"
            if "peak_memory_gib" in r:
                line += f", peak {r['peak_memory_gib']:.1f} GiB"
            print(line)
            if best is None or r["tokens_per_s"] > best["tokens_per_s"]:
                best = r
            results["scenarios"].setdefault(key, []).append(r)
        results.setdefault("best", {})[key] = best
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        # written after each scenario: a cut-off run keeps what it measured
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
