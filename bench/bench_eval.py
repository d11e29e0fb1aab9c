"""Wall time of eval_agreement's paired evaluation on the full ARC-Challenge EN/KO pair, and where it goes.

Builds a tiny random Llama (no download) with the Llama-2 tokenizer from ../shared/data (32,000
pieces, the target's vocabulary before expansion) and times, per batch size: the whole lm-eval call
for both languages, the model forwards inside it (``HFLM._model_call``), and the full-vocabulary
log-softmax lm-eval applies to every position of every request; the rest is lm-eval's request
building, tokenization, sorting and bookkeeping.

    python -m bench.bench_eval                                  # full 1,172 + 1,172 items, batch 32
    python -m bench.bench_eval --limit 200 --batch_sizes 8,32,64 --hidden_size 128 --num_layers 4

Run from the repository root, with the project installed (``pip install -e .``).
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import eval_agreement as ea
from evaluation.tasks import evaluate_pair

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="first N items of each language (default: all 1,172)")
    p.add_argument("--batch_sizes", default="32", help="comma-separated lm-eval batch sizes to time")
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--num_layers", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model weights' dtype")
    p.add_argument("--tokenizer", default=str(DATA / "llama2_tokenizer"),
                   help="folder with tokenizer.model / tokenizer.json")
    args = p.parse_args()

    from lm_eval.models import huggingface
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    arc = DATA / "arc_challenge_en_ko"
    t0 = time.perf_counter()
    eargs = ea.Arguments(models=["x"], en_data=str(arc / "ai2_arc-ARC-Challenge-test.jsonl"),
                         ko_data=str(arc / "ko_ai2_arc-ARC-Challenge-test.jsonl"), limit=args.limit)
    (pair,) = ea.prepare_pairs(eargs)
    t_prepare = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    # the longest Korean ARC requests are ~620 Llama-2 tokens: a 2,048-token window cuts none (the target has 4,096)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
                         num_hidden_layers=args.num_layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=2048, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(getattr(torch, args.dtype)).eval()
    n_req = sum(len(pair["en_items"][i]["choices"]) for i in pair["en_idx"]) * 2
    print(f"torch threads {torch.get_num_threads()}; items {len(pair['en_idx'])} per language, "
          f"{n_req} log-likelihood requests; loading and checking both tasks: {t_prepare:.1f}s; "
          f"model hidden {args.hidden_size}, {args.num_layers} layers, vocab {len(tok)}, {args.dtype}")

    # one forward of a typical batch, split into the decoder and the LM head over the vocabulary
    with torch.no_grad():
        x = torch.randint(0, len(tok), (8, 100))
        for _ in range(2):
            t = time.perf_counter()
            h = model.model(input_ids=x).last_hidden_state
            t_body = time.perf_counter() - t
            t = time.perf_counter()
            F.log_softmax(model.lm_head(h).float(), dim=-1)
            t_head = time.perf_counter() - t
    print(f"one forward of 8 x 100 tokens: decoder {t_body * 1e3:.0f} ms, "
          f"LM head + log_softmax over {len(tok):,} pieces {t_head * 1e3:.0f} ms")

    timers = {"forward": 0.0, "log_softmax": 0.0, "tokens": 0, "padded_tokens": 0}
    real_log_softmax = F.log_softmax

    def timed_log_softmax(*a, **k):
        t = time.perf_counter()
        out = real_log_softmax(*a, **k)
        timers["log_softmax"] += time.perf_counter() - t
        return out

    huggingface.F.log_softmax = timed_log_softmax  # only lm-eval's module sees the timed one
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=bs)
        real_call = lm._model_call

        def timed_call(inps, *a, _real=real_call, **k):
            t = time.perf_counter()
            out = _real(inps, *a, **k)
            timers["forward"] += time.perf_counter() - t
            timers["padded_tokens"] += inps.numel()
            return out

        lm._model_call = timed_call
        timers.update(forward=0.0, log_softmax=0.0, padded_tokens=0)
        t0 = time.perf_counter()
        stats, _ = evaluate_pair(lm, pair, seed=1234)
        total = time.perf_counter() - t0
        rest = total - timers["forward"] - timers["log_softmax"]
        print(f"batch {bs:3d}: {total:7.1f}s total | "
              f"model forward {timers['forward']:6.1f}s ({timers['forward'] / total:.0%}) | "
              f"log_softmax over the vocabulary {timers['log_softmax']:6.1f}s ({timers['log_softmax'] / total:.0%}) | "
              f"rest (requests, tokenizing, bookkeeping) {rest:5.1f}s | padded tokens {timers['padded_tokens']:,} | "
              f"acc_en {stats['acc_en']:.3f} acc_ko {stats['acc_ko']:.3f} agreement {stats['agreement']:.3f}")


if __name__ == "__main__":
    main()
