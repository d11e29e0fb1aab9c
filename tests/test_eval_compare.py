"""The evaluation's intervals and paired comparisons, wired from the per-item files to results.json and results.md:
each against common/stats.py called directly on the same items and the same resampled counts."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import eval_agreement as ea
from common import stats
from evaluation import compare

ROOT = Path(__file__).resolve().parents[1]
PAIR = "p_en__p_ko"


def random_rows(n: int, seed: int, choices: int = 4, ids=None) -> list[dict]:
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, choices, n)
    rows = []
    for i in range(n):
        en, ko = rng.normal(size=choices), rng.normal(size=choices)
        rows.append({"id": ids[i] if ids else f"q{i}", "gold": int(gold[i]),
                     "pred_en": int(np.argmax(en)), "pred_ko": int(np.argmax(ko)),
                     "pred_norm_en": int(rng.integers(0, choices)), "pred_norm_ko": int(rng.integers(0, choices)),
                     "loglik_en": en.tolist(), "loglik_ko": ko.tolist()})
    return rows


def write_items(out: Path, model: str, rows: list[dict], pair: str = PAIR) -> None:
    path = out / model / f"{pair}.items.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def arrays(rows: list[dict]) -> dict:
    return {k: np.array([r[k] for r in rows]) for k in ("gold", "pred_en", "pred_ko")}


def test_comparison_plan_baselines_and_previous_checkpoint(tmp_path):
    results = {
        "run/checkpoint-400": {"source": str(tmp_path / "run" / "checkpoint-400"), "role": "checkpoint"},
        "run/checkpoint-100": {"source": str(tmp_path / "run" / "checkpoint-100"), "role": "checkpoint"},
        "run/checkpoint-200": {"source": str(tmp_path / "run" / "checkpoint-200"), "role": "checkpoint"},
        "other/checkpoint-300": {"source": str(tmp_path / "other" / "checkpoint-300"), "role": "checkpoint"},
        "base": {"source": str(tmp_path / "base"), "role": "baseline"},
        "polyglot": {"source": "org/polyglot", "role": "baseline"},
    }
    plan = compare.comparison_plan(results)
    assert plan["run/checkpoint-400"] == ["base", "polyglot", "run/checkpoint-200"]  # by step, not by name
    assert plan["run/checkpoint-200"] == ["base", "polyglot", "run/checkpoint-100"]
    assert plan["run/checkpoint-100"] == ["base", "polyglot"]  # the first of its run
    assert plan["other/checkpoint-300"] == ["base", "polyglot"]  # another run's checkpoints are not its previous
    assert plan["base"] == ["polyglot"] and plan["polyglot"] == ["base"]


def test_comparisons_are_paired_on_the_pairs_counts(tmp_path):
    """Every comparison equals stats.paired_comparison on the same items with the pair's one set of resampled
    counts (the counts behind every model's intervals); a copy of a model: delta 0, p 1."""
    n = 60
    rows = {"run/checkpoint-1": random_rows(n, 1), "run/checkpoint-2": random_rows(n, 2), "base": random_rows(n, 3)}
    rows["copy"] = [dict(r) for r in rows["base"]]
    for model in rows:
        for i, r in enumerate(rows[model]):
            r["gold"] = rows["base"][i]["gold"]  # the same items: one gold answer each
        write_items(tmp_path, model, rows[model])
    results = {m: {"source": str(tmp_path / m), "role": "baseline" if m in ("base", "copy") else "checkpoint",
                   PAIR: {}} for m in rows}
    counts = compare.pair_counts(n, 300, seed=7)
    compare.add_comparisons(results, [{"name": PAIR}], tmp_path, {PAIR: counts})
    for model, others in compare.comparison_plan(results).items():
        for other in others:
            got = results[model]["compare"][other][PAIR]
            want = stats.paired_comparison(arrays(rows[model]), arrays(rows[other]), counts)
            assert got == want, (model, other)
    itself = results["copy"]["compare"]["base"][PAIR]
    for key in ("acc_en", "acc_ko", "agreement"):
        assert itself[key] == {"delta": 0.0, "ci": [0.0, 0.0], "p_mcnemar": 1.0, "n_discordant": 0}
    assert set(results["run/checkpoint-2"]["compare"]) == {"base", "copy", "run/checkpoint-1"}


def test_score_intervals_of_both_prediction_rules(tmp_path):
    """acc_* and acc_norm_* intervals come from their own predictions (a swap would pass a test that used one)."""
    rows = random_rows(80, 5)
    counts = compare.pair_counts(80, 200, seed=3)
    got = compare.score_intervals(rows, counts)
    a = arrays(rows)
    norm = {"gold": a["gold"], "pred_en": np.array([r["pred_norm_en"] for r in rows]),
            "pred_ko": np.array([r["pred_norm_ko"] for r in rows])}
    plain = stats.agreement_intervals(a["gold"], a["pred_en"], a["pred_ko"], counts)
    normed = stats.agreement_intervals(norm["gold"], norm["pred_en"], norm["pred_ko"], counts)
    for key in stats.AGREEMENT_KEYS:
        assert got[f"{key}_ci"] == plain[key]
        assert got[f"{compare.NORM[key]}_ci"] == normed[key]
    assert got["acc_en_ci"] != got["acc_norm_en_ci"]
    soft = stats.soft_agreement([r["loglik_en"] for r in rows], [r["loglik_ko"] for r in rows])
    assert got["jsd"] == pytest.approx(soft["jsd"].mean())
    assert got["jsd_ci"] == stats.weighted_mean_ci(soft["jsd"], counts)
    assert set(compare.score_intervals(rows, compare.pair_counts(80, 0, seed=3))) == {"jsd", "ko_prob_of_en_pred"}


def test_suite_resamples_within_each_task(tmp_path):
    """The suite's intervals: the items of all pairs, each task's items resampled within the task (every
    resample keeps each task's size), clusters kept whole."""
    pairs = [{"name": "a_en__a_ko"}, {"name": "b_en__b_ko"}]
    rows_a = random_rows(30, 1)
    rows_b = random_rows(20, 2)
    for k, r in enumerate(rows_b):
        r["cluster"] = f"passage{k // 5}"
    write_items(tmp_path, "m", rows_a, "a_en__a_ko")
    write_items(tmp_path, "m", rows_b, "b_en__b_ko")
    results = {"m": {"source": "m", "role": "baseline", "a_en__a_ko": {}, "b_en__b_ko": {}}}
    compare.add_suite(results, pairs, tmp_path, iters=200, seed=11)
    suite = results["m"]["suite"]
    rows = rows_a + rows_b
    strata = ["a_en__a_ko"] * 30 + ["b_en__b_ko"] * 20
    clusters = [("a_en__a_ko", ("item", k)) for k in range(30)] + [("b_en__b_ko", r["cluster"]) for r in rows_b]
    counts = stats.resample_counts(50, 200, 11, clusters=clusters, strata=strata)
    assert (counts[:, :30].sum(axis=1) == 30).all() and (counts[:, 30:].sum(axis=1) == 20).all()
    a = arrays(rows)
    assert suite["agreement"] == pytest.approx(np.mean(a["pred_en"] == a["pred_ko"]))
    want = stats.agreement_intervals(a["gold"], a["pred_en"], a["pred_ko"], counts)
    assert suite["agreement_ci"] == want["agreement"]
    assert suite["n_items"] == 50 and suite["pairs"] == ["a_en__a_ko", "b_en__b_ko"]


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory, tiny_pair_model):
    """One call on the shipped demo evaluation set (20 items): a tiny model as a checkpoint of a run, and the
    same weights copied as the baseline."""
    tmp = tmp_path_factory.mktemp("demo_eval")
    ckpt = tmp / "run" / "checkpoint-5"
    shutil.copytree(tiny_pair_model, ckpt)
    base = tmp / "base"
    shutil.copytree(tiny_pair_model, base)
    out = tmp / "out"
    results = ea.main([str(ROOT / "data" / "demo" / "eval.yaml"), "--models", str(ckpt), "--baseline", str(base),
                       "--limit", "20", "--bootstrap_iters", "200", "--max_pairs", "40", "--output_dir", str(out)])
    return results, out


def test_demo_eval_intervals_and_comparison_end_to_end(demo_eval):
    results, out = demo_eval
    (pair,) = [k for k, v in results["base"].items() if isinstance(v, dict) and "agreement" in v]
    s = results["run/checkpoint-5"][pair]
    for key in ("acc_en", "acc_ko", "agreement", "acc_norm_en", "agreement_norm", "jsd", "ko_prob_of_en_pred"):
        lo, hi = s[f"{key}_ci"]
        assert lo <= s[key] <= hi and hi > lo, key
    rows = compare.read_items(out / "run" / "checkpoint-5" / f"{pair}.items.jsonl")
    assert s["agreement_ci"] == compare.score_intervals(rows, compare.pair_counts(20, 200, 1234))["agreement_ci"]
    rep = results["run/checkpoint-5"]["layers"][1]
    assert rep["gap_ci"][0] <= rep["gap"] <= rep["gap_ci"][1]
    # the same weights as checkpoint and baseline: nothing differs
    same = results["run/checkpoint-5"]["compare"]["base"][pair]
    assert all(same[k]["delta"] == 0 and same[k]["p_mcnemar"] == 1 for k in ("acc_en", "acc_ko", "agreement"))
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "Paired comparisons" in md and f"| run/checkpoint-5 | base | {pair.replace('__', '/')} | +0.0000" in md
    assert f"{s['acc_en']:.4f} [{s['acc_en_ci'][0]:.3f}, {s['acc_en_ci'][1]:.3f}]" in md
    assert (out / "accuracy_vs_step.png").is_file()


def test_demo_eval_item_link_and_layer_measures(demo_eval):
    """item_link: the AUC of the items file's KO/EN similarity separating agreeing items, with its interval on
    the pair's resamples; the per-layer and pooled representation carry the alignment measures."""
    from common.metrics import roc_auc

    results, out = demo_eval
    (pair,) = [k for k, v in results["base"].items() if isinstance(v, dict) and "agreement" in v]
    for model in ("run/checkpoint-5", "base"):
        rows = compare.read_items(out / model / f"{pair}.items.jsonl")
        sim = np.array([r["similarity"] for r in rows])
        agree = np.array([r["pred_en"] == r["pred_ko"] for r in rows])
        link = results[model][pair]["item_link"]
        assert link["auc"] == pytest.approx(roc_auc(sim, agree))
        assert link["auc_ci"] == stats.auc_interval(sim, agree, compare.pair_counts(20, 200, 1234))
        assert link["n_agree"] == agree.sum() and link["n_disagree"] == (~agree).sum()
    # the same weights pooled the same way: the same similarities
    same = [compare.read_items(out / m / f"{pair}.items.jsonl") for m in ("run/checkpoint-5", "base")]
    assert [r["similarity"] for r in same[0]] == pytest.approx([r["similarity"] for r in same[1]])
    for m in results["run/checkpoint-5"]["layers"]:
        assert {"cka", "cka_debiased", "language_probe", "retrieval_strict", "retrieval_strict_ci"} <= set(m)
        assert m["retrieval_strict"] <= min(m["retrieval_ko_en"], m["retrieval_en_ko"]) + 1e-9
        lo, hi = m["language_probe_ci"]
        assert lo <= m["language_probe"] <= hi
