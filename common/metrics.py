"""Evaluation metrics: alignment of Korean and English sentence vectors, and language-model loss.

For alignment, raw cosine in an anisotropic space is near 1 for any two sentences, so the numbers that compare
across checkpoints are the gap between parallel and random-pair cosine, and retrieval accuracy.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def alignment_metrics(ko: Tensor, en: Tensor) -> dict[str, float]:
    """Metrics for N parallel pairs: ``ko`` (N, D) and ``en`` (N, D), row i translations of each other.

    - ``parallel_cos``: mean cos(ko_i, en_i).
    - ``random_cos``: mean cos(ko_i, en_j) over all i != j (every non-parallel pair, so no sampling noise).
    - ``gap``: parallel_cos - random_cos.
    - ``centred_cos``: mean parallel cosine after subtracting the mean vector of all 2N vectors,
      which removes the common direction that makes raw cosine near 1.
    - ``retrieval_ko_en``: share of i for which en_i is the nearest English vector to ko_i (P@1);
      ``retrieval_en_ko`` the other way. Chance is 1/N.
    """
    if ko.shape != en.shape or ko.dim() != 2 or ko.shape[0] < 2:
        raise ValueError(f"need two (N, D) tensors with N >= 2; got {tuple(ko.shape)} and {tuple(en.shape)}")
    ko, en = ko.float(), en.float()
    n = ko.shape[0]
    sim = F.normalize(ko, dim=-1) @ F.normalize(en, dim=-1).T
    parallel = sim.diagonal().mean()
    random = (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
    mean = torch.cat([ko, en]).mean(dim=0)
    centred = F.cosine_similarity(ko - mean, en - mean, dim=-1).mean()
    target = torch.arange(n, device=sim.device)
    return {
        "parallel_cos": parallel.item(),
        "random_cos": random.item(),
        "gap": (parallel - random).item(),
        "centred_cos": centred.item(),
        "retrieval_ko_en": (sim.argmax(dim=1) == target).float().mean().item(),
        "retrieval_en_ko": (sim.argmax(dim=0) == target).float().mean().item(),
    }


@torch.no_grad()
def language_model_loss(model, batches, device) -> dict[str, float]:
    """Mean next-token loss and perplexity of a causal LM over ``batches`` of ``{"input_ids"[, "labels"]}``.

    The mean is over predicted tokens (positions whose shifted label is not -100), pooled across
    batches, so a short last batch weighs by its tokens and not as a whole batch. Labels default
    to the input ids (plain text). Returns ``{"loss", "perplexity", "tokens"}``.
    """
    total, count = 0.0, 0
    for batch in batches:
        input_ids = batch["input_ids"].to(device)
        labels = batch.get("labels", batch["input_ids"]).to(device)
        n = int((labels[:, 1:] != -100).sum())
        if n == 0:
            continue
        attention_mask = batch.get("attention_mask", torch.ones_like(input_ids)).to(device)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        total += loss.float().item() * n
        count += n
    if count == 0:
        raise ValueError("no token to score")
    mean = total / count
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": count}
