"""The peer for stage 1's throughput: sentence-transformers' MultipleNegativesSymmetricRankingLoss on the same
model folder, pairs and GPU (mean pooling over the model's last hidden state, bf16 autocast, fused AdamW),
timed the same way (steps after warm-up, pairs per second). Needs sentence-transformers (not a dependency
of this project; the GPU machine has it).

    python -m bench.peer_mnsrl MODEL_DIR PAIRS.jsonl [--batch_size 64] [--steps 20]
"""

import argparse
import json
import time

import torch


def main() -> None:
    from sentence_transformers import SentenceTransformer, losses, models

    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("pairs")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max_seq_length", type=int, default=128)
    args = parser.parse_args()
    device = torch.device("cuda")
    word = models.Transformer(args.model, max_seq_length=args.max_seq_length)
    if word.tokenizer.pad_token is None:
        word.tokenizer.pad_token = word.tokenizer.unk_token or word.tokenizer.eos_token
    model = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean")],
                                device=str(device))
    loss_fn = losses.MultipleNegativesSymmetricRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)
    rows = [json.loads(line) for line in open(args.pairs, encoding="utf-8")]
    warmup = 3

    def step(i: int) -> None:
        batch = rows[i * args.batch_size : (i + 1) * args.batch_size]
        features = [{k: v.to(device) if torch.is_tensor(v) else v
                     for k, v in model.tokenize([r[side] for r in batch]).items()} for side in ("ko", "en")]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(features, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(warmup, warmup + args.steps):
        step(i)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({"peer": "sentence-transformers MultipleNegativesSymmetricRankingLoss",
                      "batch_size": args.batch_size, "pairs_per_s": args.steps * args.batch_size / seconds,
                      "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}))


if __name__ == "__main__":
    main()
