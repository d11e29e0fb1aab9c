"""What the intervals and paired comparisons cost next to the evaluation itself, side by side in one run.

    python bench/bench_bootstrap.py                 # the statistics alone, at the research's sizes
    python bench/bench_bootstrap.py --demo_eval     # and the shipped demo evaluation with --bootstrap_iters 0 / 1000

The statistics alone: one pair of ARC-Challenge's size (1,172 items, 4 choices) for --models models (their
intervals, soft agreement and the comparisons of each with a baseline and its previous checkpoint), and the
representation intervals of every layer of the 1.3B target (25 layers of 2,048, 1,000 pairs), at --iters resamples.
With --demo_eval, the same demo call (demo model and two copies of it as checkpoints of a run, the 157 shipped
items, the 256 validation pairs) runs once without and once with the bootstrap; the difference of the wall times
is the bootstrap's share of an evaluation (noisy on a busy machine: the first part is the cleaner figure).
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import stats  # noqa: E402
from evaluation import compare  # noqa: E402


def fake_rows(gold: np.ndarray, choices: int, rng) -> list[dict]:
    """One model's items: random log-likelihoods, the predictions their argmax, the same gold for every model."""
    n = len(gold)
    rows = []
    for i in range(n):
        en, ko = rng.normal(size=choices), rng.normal(size=choices)
        rows.append({"id": i, "gold": int(gold[i]), "pred_en": int(en.argmax()), "pred_ko": int(ko.argmax()),
                     "pred_norm_en": int(en.argmax()), "pred_norm_ko": int(ko.argmax()),
                     "loglik_en": en.tolist(), "loglik_ko": ko.tolist()})
    return rows


def statistics_alone(models: int, iters: int, items: int, pairs: int, layers: int, hidden: int) -> dict:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, items)
    rows = [fake_rows(gold, 4, rng) for _ in range(models)]
    t0 = time.perf_counter()
    counts = compare.pair_counts(items, iters, seed=1234)
    for r in rows:
        compare.score_intervals(r, counts)
    for k in range(1, models):  # each against a baseline and its previous checkpoint
        compare.compare_rows(rows[k], rows[0], counts)
        compare.compare_rows(rows[k], rows[k - 1], counts)
    tasks_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(pairs, hidden, generator=g)
    ko = [shared + 0.5 * torch.randn(pairs, hidden, generator=g) for _ in range(layers)]
    en = [shared + 0.5 * torch.randn(pairs, hidden, generator=g) for _ in range(layers)]
    from common.metrics import alignment_metrics

    t0 = time.perf_counter()
    for k in range(layers):
        alignment_metrics(ko[k], en[k])
    metrics_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep_counts = compare.pair_counts(pairs, iters, seed=1234)
    for k in range(layers):
        stats.alignment_intervals(ko[k], en[k], counts=rep_counts)
    rep_s = time.perf_counter() - t0
    return {"iters": iters, "models": models, "items": items, "task_statistics_s": round(tasks_s, 3),
            "layers": layers, "pairs": pairs, "hidden": hidden, "layer_metrics_s": round(metrics_s, 3),
            "layer_intervals_s": round(rep_s, 3), "intervals_over_metrics": round(rep_s / metrics_s, 2)}


def demo_eval() -> dict:
    import eval_agreement as ea

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        for step in (100, 200):  # two copies of the demo model as checkpoints: the comparisons run too
            shutil.copytree(ROOT / "data" / "demo" / "model", run / f"checkpoint-{step}")
        models = [str(run / "checkpoint-100"), str(run / "checkpoint-200")]
        for iters in (0, 1000):
            t0 = time.perf_counter()
            ea.main([str(ROOT / "data" / "demo" / "eval.yaml"), "--models", *models, "--bootstrap_iters", str(iters),
                     "--no_plots", "--output_dir", str(Path(tmp) / f"out{iters}")])
            out[f"demo_eval_s_iters{iters}"] = round(time.perf_counter() - t0, 1)
    out["bootstrap_share"] = round(1 - out["demo_eval_s_iters0"] / out["demo_eval_s_iters1000"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--models", type=int, default=5, help="models evaluated on the pair")
    parser.add_argument("--items", type=int, default=1172)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=25)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--demo_eval", action="store_true", help="also time the demo evaluation without and with")
    args = parser.parse_args()
    result = statistics_alone(args.models, args.iters, args.items, args.pairs, args.layers, args.hidden)
    if args.demo_eval:
        result.update(demo_eval())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
