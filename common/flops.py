"""Model FLOPs of a training step, and the device's peak, for MFU = model FLOP/s / peak FLOP/s.

The count is the usual 6 x parameters x tokens for a forward + backward (2 x for a forward without
gradient), where "parameters" are those the tokens pass through: decoder layers 1..L (embeddings are a
lookup), plus the LM head for the next-token loss. Attention-score FLOPs are left out (short sentences;
a few percent at 1,024-token blocks). Tokens are real tokens: padding is work but not useful work, nor
is recomputation (gradient checkpointing, gradient caching's second forward); both lower MFU.
bench/bench_throughput.py and the trainers use these same functions.
"""

import time

import torch
from torch import nn

# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def layer_params(model: nn.Module, upto: int) -> int:
    """Parameters of decoder layers 1..``upto`` of a Llama-family model (whole, also when ZeRO-3 shards them)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    return sum(getattr(p, "ds_numel", p.numel()) for layer in decoder.layers[:upto] for p in layer.parameters())


def lm_params(model: nn.Module) -> int:
    """Parameters a token passes through for the next-token loss: every decoder layer and the LM head."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    head = model.get_output_embeddings().weight
    return layer_params(model, len(decoder.layers)) + getattr(head, "ds_numel", head.numel())


def stage1_flops(trunc_params: int, ko_tokens: int, en_tokens: int, frozen_english: bool,
                 lm_params_: int = 0, lm_tokens: int = 0) -> float:
    """One stage-1 step: both sides through layers 1..L (the English side forward only when frozen), and the
    LM loss through the whole model."""
    return (6 * trunc_params * ko_tokens + (2 if frozen_english else 6) * trunc_params * en_tokens
            + 6 * lm_params_ * lm_tokens)


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, measure: bool = False) -> float:
    """The device's peak FLOP/s: the data-sheet bf16 figure for a known GPU, else a large matrix product
    measured here (also with ``measure=True``)."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not measure:
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BF16.items():
            if key in name:
                return value
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    reps = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)
