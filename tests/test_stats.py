"""common/stats.py against plain references: each bootstrap replicate rebuilt as a resample by indexing (the
documented order of random numbers, written as a loop) and its statistic recomputed the plain way; McNemar
against a brute-force enumeration of the binomial; the errors."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import stats
from common.metrics import alignment_metrics

LEVEL = 0.95


def loop_resamples(n, iters, seed, clusters=None, strata=None) -> list[np.ndarray]:
    """The item indices of each resample, drawn in the order resample_counts documents, as a plain loop."""
    rng = np.random.default_rng(seed)
    strata = [0] * n if strata is None else list(strata)
    clusters = list(range(n)) if clusters is None else list(clusters)
    order = []
    for s in strata:
        if s not in order:
            order.append(s)
    groups = []  # per stratum: its clusters (first appearance), each the list of its items
    for s in order:
        labels = []
        for i in range(n):
            if strata[i] == s and clusters[i] not in labels:
                labels.append(clusters[i])
        groups.append([[i for i in range(n) if clusters[i] == c] for c in labels])
    resamples = []
    for _ in range(iters):
        idx = []
        for group in groups:
            for d in rng.integers(0, len(group), len(group)):
                idx.extend(group[d])
        resamples.append(np.array(idx, dtype=np.int64))
    return resamples


def ref_ci(values) -> list:
    """Percentile interval of a list of replicate values, None/NaN dropped."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return [None, None]
    lo, hi = np.quantile(np.array(kept), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return [float(lo), float(hi)]


def random_predictions(n, seed, choices=4, p_agree=0.6):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, choices, n)
    pred_en = np.where(rng.random(n) < 0.5, gold, rng.integers(0, choices, n))
    pred_ko = np.where(rng.random(n) < p_agree, pred_en, rng.integers(0, choices, n))
    return gold, pred_en, pred_ko


# a suite: strata interleaved and not in sorted order, clusters of unequal size (a passage and its questions)
STRATA = ["paws", "belebele", "paws", "belebele", "belebele", "arc", "paws", "belebele", "arc", "arc", "belebele",
          "paws", "arc", "belebele", "paws", "paws"]
CLUSTERS = ["p0", "b0", "p1", "b0", "b1", "a0", "p2", "b1", "a1", "a2", "b0", "p3", "a3", "b2", "p4", "p5"]


# ----------------------------------------------------------------------------- resample_counts


@pytest.mark.parametrize("clusters, strata", [(None, None), (CLUSTERS, None), (None, STRATA), (CLUSTERS, STRATA)])
def test_resample_counts_follow_the_documented_draws(clusters, strata):
    n, iters, seed = len(STRATA), 40, 7
    counts = stats.resample_counts(n, iters, seed, clusters, strata)
    ref = np.array([np.bincount(idx, minlength=n) for idx in loop_resamples(n, iters, seed, clusters, strata)])
    assert counts.shape == (iters, n) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, ref)
    # the first replicates do not depend on how many follow
    np.testing.assert_array_equal(stats.resample_counts(n, 5, seed, clusters, strata), counts[:5])


def test_resample_counts_plain_odd_n_and_empty():
    counts = stats.resample_counts(37, 30, 3)
    np.testing.assert_array_equal(counts, [np.bincount(i, minlength=37) for i in loop_resamples(37, 30, 3)])
    assert (counts.sum(axis=1) == 37).all()
    assert stats.resample_counts(5, 0, 0).shape == (0, 5)
    assert stats.resample_counts(0, 3, 0).shape == (3, 0)


def test_strata_keep_their_size_and_clusters_stay_whole():
    n = len(STRATA)
    counts = stats.resample_counts(n, 200, 1, strata=STRATA)
    for s in set(STRATA):
        members = [i for i in range(n) if STRATA[i] == s]
        assert (counts[:, members].sum(axis=1) == len(members)).all()
    counts = stats.resample_counts(n, 200, 1, clusters=CLUSTERS, strata=STRATA)
    for c in set(CLUSTERS):
        members = [i for i in range(n) if CLUSTERS[i] == c]
        assert (counts[:, members] == counts[:, members[:1]]).all()  # a cluster is drawn as a whole
    for s in set(STRATA):  # each stratum draws as many clusters as it has
        labels = sorted({CLUSTERS[i] for i in range(n) if STRATA[i] == s})
        first = [CLUSTERS.index(c) for c in labels]
        assert (counts[:, first].sum(axis=1) == len(labels)).all()


def test_resample_counts_errors():
    with pytest.raises(ValueError, match="clusters has 2 entries for 3 items"):
        stats.resample_counts(3, 10, 0, clusters=[0, 1])
    with pytest.raises(ValueError, match="strata has 4 entries"):
        stats.resample_counts(3, 10, 0, strata=[0, 1, 1, 1])
    with pytest.raises(ValueError, match="cluster 'c' lies in two strata"):
        stats.resample_counts(3, 10, 0, clusters=["c", "c", "d"], strata=["x", "y", "y"])
    with pytest.raises(ValueError, match="hashable"):
        stats.resample_counts(2, 10, 0, clusters=[[1], [2]])
    with pytest.raises(ValueError, match="iters >= 0"):
        stats.resample_counts(3, -1, 0)


# ----------------------------------------------------------------------------- percentile_ci


def test_percentile_ci_by_hand():
    assert stats.percentile_ci(np.arange(101.0), 0.9) == pytest.approx([5.0, 95.0])
    # undefined replicates are dropped: the interval of the defined ones
    assert stats.percentile_ci([np.nan, None, *range(101), np.nan], 0.9) == pytest.approx([5.0, 95.0])
    assert stats.percentile_ci([np.nan, None]) == [None, None]
    assert stats.percentile_ci(np.empty(0)) == [None, None]
    with pytest.raises(ValueError, match="level"):
        stats.percentile_ci([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="one-dimensional"):
        stats.percentile_ci(np.zeros((2, 2)))


# ----------------------------------------------------------------------------- agreement


def test_agreement_replicates_with_counts_one_equal_agreement_stats():
    cases = [random_predictions(n, seed) for n, seed in ((1, 0), (7, 1), (300, 2))]
    cases += [([2, 2, 2], [2, 2, 2], [2, 2, 2]), ([0, 1], [1, 0], [1, 0]), (["a", "b", "c"], ["a", "c", "c"],
                                                                             ["b", "c", "a"])]
    for gold, en, ko in cases:
        ref = stats.agreement_stats(gold, en, ko)
        reps = stats.agreement_replicates(gold, en, ko, np.ones((3, len(gold)), dtype=np.int64))
        for key in stats.AGREEMENT_KEYS:
            expected = np.nan if ref[key] is None else ref[key]
            np.testing.assert_array_equal(reps[key], [expected] * 3, err_msg=key)  # exactly, NaN for None


@pytest.mark.parametrize("clusters", [None, "pairs"])
def test_agreement_intervals_equal_the_loop_reference(clusters):
    n, iters, seed = 60, 300, 11
    gold, en, ko = random_predictions(n, 5)
    clusters = None if clusters is None else [i // 2 for i in range(n)]
    counts = stats.resample_counts(n, iters, seed, clusters)
    got = stats.agreement_intervals(gold, en, ko, counts, LEVEL)
    resamples = loop_resamples(n, iters, seed, clusters)
    per = [stats.agreement_stats(gold[idx], en[idx], ko[idx]) for idx in resamples]
    for key in stats.AGREEMENT_KEYS:
        assert got[key] == ref_ci([s[key] for s in per]), key


def test_agreement_intervals_drop_undefined_replicates():
    # 6 items, mostly one label and one English right: some resamples have a single label (kappa undefined)
    # and some no item right in English (agreement_en_right undefined); the loop reference drops them alike
    gold, en, ko = np.array([0, 0, 0, 0, 0, 1]), np.array([1, 1, 1, 1, 1, 1]), np.array([1, 1, 1, 1, 1, 0])
    counts = stats.resample_counts(6, 400, 2)
    per = [stats.agreement_stats(gold[idx], en[idx], ko[idx]) for idx in loop_resamples(6, 400, 2)]
    assert any(s["kappa"] is None for s in per) and any(s["agreement_en_right"] is None for s in per)
    got = stats.agreement_intervals(gold, en, ko, counts, LEVEL)
    for key in ("kappa", "agreement_en_right", "agreement"):
        assert got[key] == ref_ci([s[key] for s in per]), key


def test_no_bootstrap_gives_no_interval():
    gold, en, ko = random_predictions(20, 0)
    none = stats.resample_counts(20, 0, 0)  # --bootstrap_iters 0
    assert stats.agreement_intervals(gold, en, ko, none) == {key: [None, None] for key in stats.AGREEMENT_KEYS}
    a, b = two_models(20, 0)
    assert all(v["ci"] == [None, None] for v in stats.paired_comparison(a, b, none).values())
    assert stats.weighted_mean_ci(np.ones(20), none) == [None, None]


def test_agreement_errors():
    with pytest.raises(ValueError, match="same length"):
        stats.agreement_intervals([0, 1], [0, 1, 1], [0, 1], np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"counts must be \(replicates, 2\)"):
        stats.agreement_intervals([0, 1], [0, 1], [0, 1], np.ones((2, 3)))


def test_clustered_interval_is_wider_on_clustered_data():
    # 40 clusters of 5 items answered alike (a passage and its questions): 40 independent units, not 200
    rng = np.random.default_rng(0)
    unit_gold, unit_en = rng.integers(0, 4, 40), rng.integers(0, 4, 40)
    unit_ko = np.where(rng.random(40) < 0.5, unit_en, rng.integers(0, 4, 40))
    gold, en, ko = (np.repeat(x, 5) for x in (unit_gold, unit_en, unit_ko))
    clusters = np.repeat(np.arange(40), 5).tolist()
    plain = stats.agreement_intervals(gold, en, ko, stats.resample_counts(200, 1000, 3))
    clustered = stats.agreement_intervals(gold, en, ko, stats.resample_counts(200, 1000, 3, clusters))
    for key in ("acc_en", "acc_ko", "agreement"):
        width_plain, width_clustered = plain[key][1] - plain[key][0], clustered[key][1] - clustered[key][0]
        assert width_clustered > 1.6 * width_plain, key  # about sqrt(5) = 2.2 times


# ----------------------------------------------------------------------------- McNemar


def outcomes(b, c, both_right=3, both_wrong=4, seed=0):
    """x, y with b items right only in x, c right only in y, and concordant items, shuffled."""
    x = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    y = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    order = np.random.default_rng(seed).permutation(len(x))
    return np.array(x)[order], np.array(y)[order]


def test_mcnemar_against_brute_force():
    for b, c in itertools.product(range(8), repeat=2):
        x, y = outcomes(b, c)
        p, n_d = stats.mcnemar_exact(x, y)
        assert n_d == b + c
        # every way the n_d discordant items could have split under the null (each side 1/2)
        extreme = sum(1 for split in itertools.product((0, 1), repeat=n_d) if min(sum(split), n_d - sum(split))
                      <= min(b, c))
        # two-sided: both tails, as many outcomes as extreme as the observed; capped at 1 when they overlap
        one_tail = Fraction(sum(1 for split in itertools.product((0, 1), repeat=n_d) if sum(split) <= min(b, c)),
                            2 ** n_d)
        assert p == float(min(Fraction(1), 2 * one_tail)), (b, c)
        if b != c:
            assert p == float(Fraction(extreme, 2 ** n_d)), (b, c)
    assert stats.mcnemar_exact(*outcomes(0, 6)) == (0.03125, 6)
    assert stats.mcnemar_exact(*outcomes(1, 9)) == (22 / 1024, 10)
    assert stats.mcnemar_exact(*outcomes(0, 0)) == (1.0, 0)
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1]) == (1.0, 0)


def test_mcnemar_large_counts_exact():
    b, c = 1400, 1600
    p, n_d = stats.mcnemar_exact(*outcomes(b, c, both_right=500, both_wrong=500))
    exact = Fraction(2 * sum(math.comb(n_d, i) for i in range(b + 1)), 2 ** n_d)
    assert n_d == 3000 and p == float(exact)
    # 15,000 discordant items: the binomial tail summed in log space (lgamma) agrees to its own accuracy
    p, n_d = stats.mcnemar_exact(*outcomes(7300, 7700, both_right=0, both_wrong=0))
    log_terms = [math.lgamma(n_d + 1) - math.lgamma(i + 1) - math.lgamma(n_d - i + 1) - n_d * math.log(2)
                 for i in range(7301)]
    top = max(log_terms)
    assert n_d == 15000 and p == pytest.approx(2 * math.exp(top) * math.fsum(math.exp(t - top) for t in log_terms),
                                               rel=1e-8)
    assert 5e-4 < p < 2e-3  # z = (7700 - 7500) / sqrt(15000 / 4) = 3.3


def test_mcnemar_errors():
    with pytest.raises(ValueError, match="same length"):
        stats.mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="booleans"):
        stats.mcnemar_exact([0, 2], [1, 1])


# ----------------------------------------------------------------------------- paired comparisons


def two_models(n, seed):
    gold, en_a, ko_a = random_predictions(n, seed)
    rng = np.random.default_rng(seed + 100)
    # model b: model a with a third of its predictions redrawn, so the two are correlated as checkpoints are
    en_b = np.where(rng.random(n) < 0.3, rng.integers(0, 4, n), en_a)
    ko_b = np.where(rng.random(n) < 0.3, rng.integers(0, 4, n), ko_a)
    return {"gold": gold, "pred_en": en_a, "pred_ko": ko_a}, {"gold": gold, "pred_en": en_b, "pred_ko": ko_b}


@pytest.mark.parametrize("clusters", [None, "triples"])
def test_paired_comparison_equals_the_loop_reference(clusters):
    n, iters, seed = 90, 300, 4
    a, b = two_models(n, 1)
    clusters = None if clusters is None else [i // 3 for i in range(n)]
    got = stats.paired_comparison(a, b, stats.resample_counts(n, iters, seed, clusters), LEVEL)
    full_a = stats.agreement_stats(a["gold"], a["pred_en"], a["pred_ko"])
    full_b = stats.agreement_stats(b["gold"], b["pred_en"], b["pred_ko"])
    deltas = {key: [] for key in stats.PAIRED_KEYS}
    for idx in loop_resamples(n, iters, seed, clusters):  # both models on the same resampled items
        sa = stats.agreement_stats(a["gold"][idx], a["pred_en"][idx], a["pred_ko"][idx])
        sb = stats.agreement_stats(b["gold"][idx], b["pred_en"][idx], b["pred_ko"][idx])
        for key in deltas:
            deltas[key].append(sa[key] - sb[key])
    agree_a, agree_b = a["pred_en"] == a["pred_ko"], b["pred_en"] == b["pred_ko"]
    flips = {"acc_en": (a["pred_en"] == a["gold"]) != (b["pred_en"] == b["gold"]),
             "acc_ko": (a["pred_ko"] == a["gold"]) != (b["pred_ko"] == b["gold"]),
             "agreement": agree_a != agree_b}
    for key in stats.PAIRED_KEYS:
        assert got[key]["delta"] == full_a[key] - full_b[key]
        assert got[key]["ci"] == ref_ci(deltas[key]), key
        assert got[key]["n_discordant"] == int(flips[key].sum())
    assert got["agreement"]["p_mcnemar"] == stats.mcnemar_exact(agree_a, agree_b)[0]
    assert got["acc_en"]["p_mcnemar"] == stats.mcnemar_exact(a["pred_en"] == a["gold"], b["pred_en"] == b["gold"])[0]


def test_a_model_against_itself():
    a, _ = two_models(80, 2)
    got = stats.paired_comparison(a, {k: v.copy() for k, v in a.items()}, stats.resample_counts(80, 200, 0))
    for key in stats.PAIRED_KEYS:
        assert got[key] == {"delta": 0.0, "ci": [0.0, 0.0], "p_mcnemar": 1.0, "n_discordant": 0}


def test_paired_comparison_errors():
    a, b = two_models(10, 3)
    counts = stats.resample_counts(10, 5, 0)
    with pytest.raises(ValueError, match="different items: 10 and 9"):
        stats.paired_comparison(a, {k: v[:9] for k, v in b.items()}, counts)
    with pytest.raises(ValueError, match="gold answers differ"):
        stats.paired_comparison(a, {**b, "gold": (b["gold"] + 1) % 4}, counts)
    with pytest.raises(ValueError, match="model b: gold, pred_en and pred_ko"):
        stats.paired_comparison(a, {**b, "pred_ko": b["pred_ko"][:9]}, counts)
    with pytest.raises(ValueError, match="model a must be a dict"):
        stats.paired_comparison({"gold": a["gold"]}, b, counts)


# ----------------------------------------------------------------------------- soft agreement


def ref_soft(le, lk):
    """JSD in bits and q[argmax p] of one item, with math and the textbook formulas."""
    p = [math.exp(x - max(le)) for x in le]
    q = [math.exp(x - max(lk)) for x in lk]
    p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
    m = [(u + v) / 2 for u, v in zip(p, q)]
    kl = lambda a: sum(u * math.log2(u / w) for u, w in zip(a, m) if u > 0)
    return (kl(p) + kl(q)) / 2, q[le.index(max(le))]


def ragged_logliks(n, seed):
    rng = np.random.default_rng(seed)
    en, ko = [], []
    for _ in range(n):
        k = int(rng.integers(2, 6))
        en.append((rng.normal(size=k) * 3 - 20).tolist())
        ko.append((rng.normal(size=k) * 3 - 20).tolist())
    en[0] = [-5.0, -5.0, -7.0]  # a tie: the first choice is the English prediction
    ko[0] = [-6.0, -5.0, -5.5]
    return en, ko


def test_soft_agreement_equals_the_loop_reference():
    en, ko = ragged_logliks(50, 0)
    got = stats.soft_agreement(en, ko)
    ref = [ref_soft(le, lk) for le, lk in zip(en, ko)]
    np.testing.assert_allclose(got["jsd"], [r[0] for r in ref], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["p_ko_of_en_pred"], [r[1] for r in ref], rtol=0, atol=1e-12)
    assert got["p_ko_of_en_pred"][0] == pytest.approx(ref_soft([-5.0, -5.0, -7.0], [-6.0, -5.0, -5.5])[1])


def test_soft_agreement_by_hand():
    got = stats.soft_agreement([[-1.0, -2.0], [0.0, -1000.0], [0.0, 0.0]], [[-1.0, -2.0], [-1000.0, 0.0],
                                                                          [0.0, -1000.0]])
    assert got["jsd"][0] == 0.0  # the same distribution
    assert got["jsd"][1] == pytest.approx(1.0, abs=1e-12)  # disjoint: 1 bit
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4): 1/2 (1/2 log2(2/3) + 1/2 log2 2) + 1/2 log2(4/3)
    jsd = 0.5 * (0.5 * math.log2(2 / 3) + 0.5 * math.log2(2)) + 0.5 * math.log2(4 / 3)
    assert got["jsd"][2] == pytest.approx(jsd, abs=1e-12)
    assert got["p_ko_of_en_pred"].tolist() == pytest.approx([math.exp(-1) / (math.exp(-1) + math.exp(-2)), 0.0, 1.0])


def test_soft_agreement_errors():
    with pytest.raises(ValueError, match="item 1: 2 English and 3 Korean"):
        stats.soft_agreement([[0.0, 1.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="2 items and loglik_ko 1"):
        stats.soft_agreement([[0.0], [0.0]], [[0.0]])
    with pytest.raises(ValueError, match="item 0: 0 English"):
        stats.soft_agreement([[]], [[]])
    with pytest.raises(ValueError, match="item 1: log-likelihoods must be finite"):
        stats.soft_agreement([[0.0, 1.0], [0.0, float("nan")]], [[0.0, 1.0], [0.0, 1.0]])


@pytest.mark.parametrize("clusters", [None, "pairs"])
def test_weighted_mean_ci_equals_the_loop_reference(clusters):
    en, ko = ragged_logliks(40, 1)
    jsd = stats.soft_agreement(en, ko)["jsd"]
    clusters = None if clusters is None else [i // 2 for i in range(40)]
    got = stats.weighted_mean_ci(jsd, stats.resample_counts(40, 300, 5, clusters), LEVEL)
    ref = ref_ci([float(np.mean(jsd[idx])) for idx in loop_resamples(40, 300, 5, clusters)])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="finite"):
        stats.weighted_mean_ci([0.1, np.nan], np.ones((2, 2)))


# ----------------------------------------------------------------------------- representation metrics


def embeddings(n=30, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ko = torch.randn(n, d, generator=g) + 1.5  # a shared offset, so raw and centred cosines differ
    en = ko + 0.8 * torch.randn(n, d, generator=g)
    ko_keys = [f"k{i}" for i in range(n)]
    en_keys = [f"e{i}" for i in range(n)]
    if n >= 10:
        en[3], en_keys[3] = en[4], en_keys[4]  # pairs 3 and 4: the same English text
        ko[7], ko_keys[7] = ko[9], ko_keys[9]  # pairs 7 and 9: the same Korean text
    return ko, en, ko_keys, en_keys


def loop_alignment(ko, en, ko_keys, en_keys, resamples) -> list[dict]:
    """The metrics of each resample, the plain way: the resample's pairs by indexing, each pair's cosine from
    the whole sample's matrices, random pairs of the resample by a loop over its positions."""
    n = len(ko_keys)
    sim = (F.normalize(ko, dim=-1) @ F.normalize(en, dim=-1).T).double().numpy()
    cen = (F.normalize(ko - ko.mean(0), dim=-1) @ F.normalize(en - en.mean(0), dim=-1).T).double().numpy()
    equivalent = [[i == j or ko_keys[i] == ko_keys[j] or en_keys[i] == en_keys[j] for j in range(n)]
                  for i in range(n)]
    return [loop_alignment_one(sim, cen, equivalent, idx) for idx in resamples]


def loop_alignment_one(sim, cen, equivalent, idx) -> dict:
    rand = [(i, j) for i in idx for j in idx if not equivalent[i][j]]  # copies of a pair are equivalent
    parallel = np.mean([sim[i, i] for i in idx])
    random = np.mean([sim[i, j] for i, j in rand]) if rand else np.nan
    return {
        "parallel_cos": parallel, "random_cos": random, "gap": parallel - random,
        "centred_cos": np.mean([cen[i, i] for i in idx]),
        "centred_random_cos": np.mean([cen[i, j] for i, j in rand]) if rand else np.nan,
        # the nearest candidate among the whole sample's rows, first on ties
        "retrieval_ko_en": np.mean([equivalent[i][int(np.argmax(sim[i]))] for i in idx]),
        "retrieval_en_ko": np.mean([equivalent[int(np.argmax(sim[:, j]))][j] for j in idx]),
    }


@pytest.mark.parametrize("keys", [False, True])
def test_alignment_intervals_equal_the_loop_reference(keys):
    ko, en, ko_keys, en_keys = embeddings()
    if not keys:
        ko_keys = en_keys = None
    n, iters, seed = ko.shape[0], 100, 9
    counts = stats.resample_counts(n, iters, seed)
    reps = stats.alignment_replicates(ko, en, ko_keys, en_keys, counts=counts)
    ref_keys = (ko_keys or list(range(n)), en_keys or list(range(n)))
    per = loop_alignment(ko, en, *ref_keys, loop_resamples(n, iters, seed))
    got = stats.alignment_intervals(ko, en, ko_keys, en_keys, counts=counts, level=LEVEL)
    for key in stats.ALIGNMENT_KEYS:
        np.testing.assert_allclose(reps[key], [p[key] for p in per], rtol=0, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(got[key], ref_ci([p[key] for p in per]), rtol=0, atol=1e-12, err_msg=key)


def test_alignment_replicates_are_the_metrics_of_the_resampled_pairs():
    ko, en, ko_keys, en_keys = embeddings()
    n = ko.shape[0]
    # counts of one: alignment_metrics itself (up to its float32 means)
    ones = stats.alignment_replicates(ko, en, ko_keys, en_keys, counts=np.ones((2, n), dtype=np.int64))
    ref = alignment_metrics(ko, en, ko_keys, en_keys)
    for key in stats.ALIGNMENT_KEYS:
        np.testing.assert_allclose(ones[key], [ref[key]] * 2, rtol=0, atol=1e-6, err_msg=key)
    # a resample: alignment_metrics on the resampled rows, copies carrying their row's text, gives the same
    # raw-cosine metrics (the centred ones and retrieval keep the whole sample's means and pool by design)
    counts = stats.resample_counts(n, 3, 1)
    reps = stats.alignment_replicates(ko, en, ko_keys, en_keys, counts=counts)
    for b, idx in enumerate(loop_resamples(n, 3, 1)):
        m = alignment_metrics(ko[idx], en[idx], [ko_keys[i] for i in idx], [en_keys[i] for i in idx])
        for key in ("parallel_cos", "random_cos", "gap"):
            assert reps[key][b] == pytest.approx(m[key], abs=1e-6), key


def test_alignment_replicate_without_random_pair_is_dropped():
    ko, en, _, _ = embeddings(n=4)
    counts = np.array([[4, 0, 0, 0], [1, 1, 1, 1], [2, 2, 0, 0]])  # the first: one pair drawn 4 times
    reps = stats.alignment_replicates(ko, en, counts=counts)
    assert math.isnan(reps["random_cos"][0]) and math.isnan(reps["gap"][0])
    assert not np.isnan(reps["random_cos"][1:]).any()
    ci = stats.alignment_intervals(ko, en, counts=counts)["random_cos"]
    assert ci == stats.percentile_ci(reps["random_cos"][1:])


def test_alignment_errors():
    ko, en, ko_keys, _ = embeddings(n=5)
    with pytest.raises(ValueError, match="need two"):
        stats.alignment_replicates(ko, en[:4], counts=np.ones((1, 5)))
    with pytest.raises(ValueError, match=r"counts must be \(replicates, 5\)"):
        stats.alignment_replicates(ko, en, counts=np.ones((1, 4)))
    with pytest.raises(ValueError, match="ko_keys has 4 entries"):
        stats.alignment_replicates(ko, en, ko_keys[:4], counts=np.ones((1, 5)))


def test_auc_replicates_equal_a_loop_over_resampled_items():
    """Each replicate's AUC is roc_auc of the resampled items (drawn as resample_counts draws them)."""
    from common.metrics import roc_auc

    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(size=40), 1)  # rounded: ties between the classes occur
    labels = rng.random(40) < 0.6
    counts = stats.resample_counts(40, 50, seed=9)
    got = stats.auc_replicates(scores, labels, counts)
    draw = np.random.default_rng(9)
    for b in range(50):
        idx = draw.integers(0, 40, 40)
        want = roc_auc(scores[idx], labels[idx]) if labels[idx].any() and not labels[idx].all() else np.nan
        assert got[b] == pytest.approx(want, abs=1e-12, nan_ok=True)
    ones = np.ones((1, 40), dtype=int)
    assert stats.auc_replicates(scores, labels, ones)[0] == pytest.approx(roc_auc(scores, labels))
    assert stats.auc_interval(scores, labels, counts) == stats.percentile_ci(got)
