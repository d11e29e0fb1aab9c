"""Uncertainty and paired comparisons of the paired-task scores, from the per-item rows (``<pair>.items.jsonl``).

Every interval is a seeded percentile bootstrap over items (``common.stats``): one set of resampled item counts
per pair (``resample_counts`` of the pair's items, --bootstrap_iters, --seed, clustered by the pair's cluster
field where items share a context, e.g. a Belebele passage), the SAME counts for every model. So two models'
intervals are computed on the same resamples, and a comparison's interval is the percentile interval of the
per-resample difference (paired). The point estimates are those of ``common.stats.agreement_stats``,
unchanged; only the ``*_ci`` keys are added beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.stats import (
    AGREEMENT_KEYS,
    PAIRED_KEYS,
    agreement_intervals,
    agreement_stats,
    auc_interval,
    paired_comparison,
    resample_counts,
    soft_agreement,
    weighted_mean_ci,
)
from evaluation import STEP_RE

COMPARED = PAIRED_KEYS  # what paired_comparison reports (report.py's columns)
NORM = {"acc_en": "acc_norm_en", "acc_ko": "acc_norm_ko", "agreement": "agreement_norm", "kappa": "kappa_norm",
        "agreement_en_right": "agreement_norm_en_right"}  # the same metric with acc_norm predictions


def pair_counts(n: int, iters: int, seed: int, clusters: list | None = None, strata: list | None = None) -> np.ndarray:
    """(iters, n) resampled item counts of one pair (or of a suite, with ``strata``); (0, n) when iters = 0."""
    return resample_counts(n, iters, seed, clusters=clusters, strata=strata)


def columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """The per-item rows as arrays: gold, pred_en, pred_ko (argmax of the log-likelihoods) and their acc_norm
    variants."""
    keys = ("gold", "pred_en", "pred_ko", "pred_norm_en", "pred_norm_ko")
    return {k: np.asarray([r[k] for r in rows], dtype=np.int64) for k in keys}


def soft_scores(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per item: ``jsd``, the Jensen-Shannon divergence (bits) between the English and Korean choice distributions
    (softmax of each language's per-choice log-likelihoods), and ``ko_prob_of_en_pred``, the probability the
    Korean distribution gives the English prediction."""
    soft = soft_agreement([r["loglik_en"] for r in rows], [r["loglik_ko"] for r in rows])
    return {"jsd": soft["jsd"], "ko_prob_of_en_pred": soft["p_ko_of_en_pred"]}


def score_intervals(rows: list[dict], counts: np.ndarray, level: float = 0.95) -> dict:
    """``<metric>_ci`` for acc_en, acc_ko, agreement, kappa, agreement_en_right and their acc_norm variants
    (acc_norm_en, acc_norm_ko, agreement_norm, kappa_norm, agreement_norm_en_right), plus the soft agreement:
    ``jsd``, ``ko_prob_of_en_pred`` (means over items) and their intervals. No interval when ``counts`` has no
    row (--bootstrap_iters 0): the ``*_ci`` keys are then absent."""
    c = columns(rows)
    soft = soft_scores(rows)
    out: dict = {name: float(values.mean()) for name, values in soft.items()}
    if len(counts) == 0:
        return out
    acc = agreement_intervals(c["gold"], c["pred_en"], c["pred_ko"], counts, level)
    norm = agreement_intervals(c["gold"], c["pred_norm_en"], c["pred_norm_ko"], counts, level)
    for key in AGREEMENT_KEYS:
        out[f"{key}_ci"] = acc[key]
        out[f"{NORM[key]}_ci"] = norm[key]
    for name, values in soft.items():
        out[f"{name}_ci"] = weighted_mean_ci(values, counts, level)
    return out


def read_items(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def compare_rows(rows: list[dict], other: list[dict], counts: np.ndarray, level: float = 0.95) -> dict:
    """{metric: {"delta", "ci", "p_mcnemar", "n_discordant"}} of one model's rows against another's on the same
    items (same ids in the same order, else ValueError): delta = this - other."""
    if [r["id"] for r in rows] != [r["id"] for r in other]:
        raise ValueError("the two models were scored on different items (another --limit or task data?)")
    a, b = columns(rows), columns(other)
    return paired_comparison({k: a[k] for k in ("gold", "pred_en", "pred_ko")},
                             {k: b[k] for k in ("gold", "pred_en", "pred_ko")}, counts, level)


def comparison_plan(results: dict) -> dict[str, list[str]]:
    """{model: [other models]}: each model against every baseline of the call (but itself), and each checkpoint
    against the previous checkpoint (next lower step) of the same run folder, in that order."""
    baselines = [m for m, r in results.items() if r.get("role") == "baseline"]
    runs: dict[str, list[tuple[int, str]]] = {}
    for m, r in results.items():
        step = STEP_RE.search(Path(r.get("source", m)).name)
        if r.get("role") == "checkpoint" and step:
            runs.setdefault(str(Path(r["source"]).parent), []).append((int(step.group(1)), m))
    previous = {}
    for points in runs.values():
        points.sort()
        previous.update({m: points[i - 1][1] for i, (_, m) in enumerate(points) if i})
    return {m: [b for b in baselines if b != m] + ([previous[m]] if m in previous else []) for m in results}


def add_comparisons(results: dict, pairs: list[dict], out_dir: Path, counts: dict[str, np.ndarray],
                    level: float = 0.95) -> None:
    """``results[model]["compare"][other][pair][metric] = {"delta", "ci", "p_mcnemar", "n_discordant"}`` for the
    ``comparison_plan``, from the per-item files of both models; pairs either model lacks are left out. Without
    resamples (--bootstrap_iters 0) the ``ci`` is [None, None]; delta and McNemar need none."""
    items: dict[tuple[str, str], list[dict]] = {}

    def rows_of(model: str, pair: str) -> list[dict] | None:
        if (model, pair) not in items:
            path = out_dir / model / f"{pair}.items.jsonl"
            items[model, pair] = read_items(path) if pair in results[model] and path.is_file() else None
        return items[model, pair]

    for model, others in comparison_plan(results).items():
        compare = {}
        for other in others:
            per_pair = {}
            for p in pairs:
                mine, theirs = rows_of(model, p["name"]), rows_of(other, p["name"])
                if mine is not None and theirs is not None:
                    per_pair[p["name"]] = compare_rows(mine, theirs, counts[p["name"]], level)
            if per_pair:
                compare[other] = per_pair
        if compare:
            results[model]["compare"] = compare
        else:
            results[model].pop("compare", None)


def add_suite(results: dict, pairs: list[dict], out_dir: Path, iters: int, seed: int, level: float = 0.95) -> None:
    """``results[model]["suite"]``: the scores over the items of all the pairs together (each item counts once, so
    a task weighs by its number of items), for every model scored on every pair: n_items, acc_en, acc_ko,
    agreement, agreement_en_right, jsd, ko_prob_of_en_pred, each with its interval. The bootstrap is stratified
    by task: each task's items (whole clusters where the task has them) are resampled within the task, so every
    resample keeps each task's share. The tasks are the suite's fixed definition, not a sample of tasks; a
    bootstrap that resampled the four or five tasks themselves would have a handful of distinct resamples."""
    for model, r in results.items():
        rows, strata, clusters = [], [], []
        for p in pairs:
            path = out_dir / model / f"{p['name']}.items.jsonl"
            if p["name"] not in r or not path.is_file():
                break
            these = read_items(path)
            rows += these
            strata += [p["name"]] * len(these)
            clusters += [(p["name"], row.get("cluster", ("item", k))) for k, row in enumerate(these)]
        else:
            c = columns(rows)
            stats = agreement_stats(c["gold"], c["pred_en"], c["pred_ko"])
            suite = {"pairs": [p["name"] for p in pairs], "n_items": len(rows),
                     **{k: stats[k] for k in ("acc_en", "acc_ko", "agreement", "agreement_en_right")}}
            counts = pair_counts(len(rows), iters, seed, clusters=clusters, strata=strata)
            suite.update({k: v for k, v in score_intervals(rows, counts, level).items()
                          if k.removesuffix("_ci") in suite or k.removesuffix("_ci") in ("jsd", "ko_prob_of_en_pred")})
            r["suite"] = suite


def item_link(rows: list[dict], similarity, counts: np.ndarray, level: float = 0.95) -> dict:
    """Does an item whose Korean and English questions are closer in the model's representation get the same
    answer in both languages? ``similarity`` (n,): each item's KO/EN cosine, in the order of ``rows``. Returns
    the ROC AUC with which the similarity separates the agreeing items (same predicted choice) from the
    disagreeing ones (0.5: no link; above: closer questions agree more), its interval over the pair's
    resamples, both groups' sizes and mean similarity. ``common.metrics.roc_auc`` gives the point value."""
    from common.metrics import roc_auc

    sim = np.asarray(similarity, dtype=np.float64)
    agree = np.array([r["pred_en"] == r["pred_ko"] for r in rows])
    out = {"auc": roc_auc(sim, agree), "n_agree": int(agree.sum()), "n_disagree": int((~agree).sum()),
           "similarity_agree": float(sim[agree].mean()) if agree.any() else None,
           "similarity_disagree": float(sim[~agree].mean()) if (~agree).any() else None}
    if len(counts):
        out["auc_ci"] = auc_interval(sim, agree, counts, level)
    return out
