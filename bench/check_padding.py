"""Left against right padding through the stage-1 forward and backward on this device: NaN in the hidden
states, the pooled vectors and the weight gradients (bf16 autocast, sdpa). Under a causal mask a left pad
position attends to nothing; this shows what the device's attention kernel makes of such a row. The
ParallelCollator pads on the right (common/data.py).

    python -m bench.check_padding [--hidden_size 2048] [--layers 4]
"""

import argparse
import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from common.pooling import layer_states, pooled_layers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden_size", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=args.hidden_size, intermediate_size=args.hidden_size * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=16, num_key_value_heads=16,
                         bos_token_id=1, eos_token_id=2, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).to(device)
    lengths = [3, 9, 17, 32]
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    for side in ("left", "right"):
        ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(lengths):
            span = slice(max(lengths) - n, None) if side == "left" else slice(0, n)
            ids[row, span] = torch.randint(3, 1000, (n,), device=device)
            ids[row, span.start or 0] = 1  # BOS first
            mask[row, span] = 1
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            vectors = pooled_layers(model, ids, mask, layers=[args.layers], bos_token_id=1)[0]
            with torch.no_grad():
                hidden = layer_states(model, ids, mask)[-1]
        vectors.float().pow(2).sum().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        results[side] = {"nan_in_hidden_at_pads": bool(hidden[mask == 0].isnan().any()),
                         "nan_in_hidden_at_tokens": bool(hidden[mask == 1].isnan().any()),
                         "nan_in_vectors": bool(vectors.isnan().any()),
                         "nan_in_grads": bool(any(g.isnan().any() for g in grads))}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
