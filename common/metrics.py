"""Evaluation metrics: alignment of Korean and English sentence vectors, and language-model loss.

For alignment, raw cosine in an anisotropic space is near 1 for any two sentences, so the numbers that compare
across checkpoints are the gap between parallel and random-pair cosine, and retrieval accuracy.
"""

import math
from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _same_text(keys: Sequence[Hashable] | None, n: int, device, side: str) -> Tensor:
    """(n, n) bool: row i and row j carry the same text (the identity matrix when ``keys`` is None)."""
    if keys is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    if len(keys) != n:
        raise ValueError(f"{side}_keys has {len(keys)} entries for {n} rows")
    index: dict = {}
    ids = torch.tensor([index.setdefault(k, len(index)) for k in keys], device=device)
    return ids[:, None] == ids[None, :]


@torch.no_grad()
def alignment_metrics(ko: Tensor, en: Tensor, ko_keys: Sequence[Hashable] | None = None,
                      en_keys: Sequence[Hashable] | None = None) -> dict[str, float]:
    """Metrics for N parallel pairs: ``ko`` (N, D) and ``en`` (N, D), row i translations of each other.

    ``ko_keys`` / ``en_keys`` (optional, N hashables each) identify each row's text, e.g. the string or the
    tuple of its token ids; rows with equal keys hold the same text. None: all texts distinct. With
    c(i, j) = cos(ko_i, en_j), the pair (i, j) is *equivalent* when i = j, ko_keys[i] = ko_keys[j] or
    en_keys[i] = en_keys[j] (en_j is then also a translation of ko_i), and *random* otherwise.

    - ``parallel_cos``: mean over i of c(i, i).
    - ``random_cos``: mean of c(i, j) over every random pair (all of them, so no sampling noise; pairs whose
      texts repeat the parallel partner are left out, so duplicate sentences do not read as random pairs).
      NaN when there is no random pair (every row the same text).
    - ``gap``: parallel_cos - random_cos.
    - ``centred_cos``: mean over i of cos(ko_i - mean_ko, en_i - mean_en), each language centred by its own
      mean over the N rows. This removes the direction shared by all sentences of a language (raw cosine
      near 1), and a constant Korean/English offset as well, which is not misalignment.
    - ``centred_random_cos``: its chance level: mean of cos(ko_i - mean_ko, en_j - mean_en) over the random
      pairs (NaN when there is none).
    - ``retrieval_ko_en``: P@1, the share of i whose nearest English vector (highest c(i, j) over all N rows,
      ties to the first) is an equivalent pair (i, j): the gold row or a row of the same text, so duplicates
      are not misses and a perfect encoder scores 1.0; ``retrieval_en_ko`` the other way (the nearest Korean
      vector of each en_j). Chance is about 1/N (with duplicates, the number of distinct texts).
    """
    if ko.shape != en.shape or ko.dim() != 2 or ko.shape[0] < 2:
        raise ValueError(f"need two (N, D) tensors with N >= 2; got {tuple(ko.shape)} and {tuple(en.shape)}")
    ko, en = ko.float(), en.float()
    n = ko.shape[0]
    equivalent = _same_text(ko_keys, n, ko.device, "ko") | _same_text(en_keys, n, ko.device, "en")
    random_pairs = ~equivalent

    def random_mean(s: Tensor) -> Tensor:
        return s[random_pairs].mean() if random_pairs.any() else s.new_tensor(float("nan"))

    sim = F.normalize(ko, dim=-1) @ F.normalize(en, dim=-1).T
    parallel = sim.diagonal().mean()
    random = random_mean(sim)
    centred_sim = F.normalize(ko - ko.mean(dim=0), dim=-1) @ F.normalize(en - en.mean(dim=0), dim=-1).T
    rows = torch.arange(n, device=sim.device)
    return {
        "parallel_cos": parallel.item(),
        "random_cos": random.item(),
        "gap": (parallel - random).item(),
        "centred_cos": centred_sim.diagonal().mean().item(),
        "centred_random_cos": random_mean(centred_sim).item(),
        "retrieval_ko_en": equivalent[rows, sim.argmax(dim=1)].float().mean().item(),
        "retrieval_en_ko": equivalent[sim.argmax(dim=0), rows].float().mean().item(),
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


def require_finite(logs: dict, step: int, keys: Sequence[str] = ("loss", "cl_loss", "lm_loss")) -> None:
    """Stop a run whose logged loss is NaN or infinite: the weights are ruined from that step on, and
    training on would only write ruined checkpoints."""
    bad = [f"{k}={logs[k]}" for k in keys if k in logs and not math.isfinite(logs[k])]
    if bad:
        raise FloatingPointError(f"step {step}: {', '.join(bad)} (the mean of the last logging window): the run "
                                 "stops; a checkpoint written inside that window may hold the same non-finite "
                                 "weights. Lower --learning_rate or look at the data of those steps")
