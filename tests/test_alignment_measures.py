"""CKA, debiased CKA, the language probe, strict retrieval and the item-link AUC: their defining properties, and
each against a plain loop reference written from the definition (not from the implementation's algebra)."""

import itertools
import math

import numpy as np
import pytest
import torch

from common.metrics import (
    alignment_measures,
    alignment_metrics,
    cka,
    cka_debiased,
    language_probe,
    language_probe_hits,
    pair_cosine,
    retrieval_hits,
    retrieval_strict,
    roc_auc,
)


def gaussian(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(gaussian(d, d, seed=seed))
    return q * torch.sign(torch.diagonal(r))


# --- references, loop by loop from the definitions ---

def ref_gram(x: np.ndarray) -> np.ndarray:
    """Uncentred linear Gram K_ij = x_i . x_j."""
    n = len(x)
    return np.array([[sum(x[i, d] * x[j, d] for d in range(x.shape[1])) for j in range(n)] for i in range(n)])


def ref_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.: HSIC(K, L) = tr(K H L H) / (n-1)^2 with the centring matrix H, on uncentred Grams."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k, m):
        return np.trace(k @ h @ m @ h) / (n - 1) ** 2

    k, m = ref_gram(x), ref_gram(y)
    return hsic(k, m) / math.sqrt(hsic(k, k) * hsic(m, m))


def ref_cka_debiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased HSIC as a U-statistic over distinct index tuples of the uncentred Grams:
    mean_{i!=j} K_ij L_ij + mean_{i,j,q,r distinct} K_ij L_qr - 2 mean_{i,j,q distinct} K_ij L_iq."""
    n = len(x)

    def hsic(k, m):
        two = [k[i, j] * m[i, j] for i, j in itertools.permutations(range(n), 2)]
        four = [k[i, j] * m[q, r] for i, j, q, r in itertools.permutations(range(n), 4)]
        three = [k[i, j] * m[i, q] for i, j, q in itertools.permutations(range(n), 3)]
        return np.mean(two) + np.mean(four) - 2 * np.mean(three)

    k, m = ref_gram(x), ref_gram(y)
    return hsic(k, m) / math.sqrt(hsic(k, k) * hsic(m, m))


def ref_probe_hits(ko: np.ndarray, en: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Per-pair held-out hits of the nearest-class-mean probe on standardised vectors, folds by pair as
    documented (a seeded torch.randperm dealt round-robin), distances compared one row at a time."""
    n, dim = ko.shape
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    fold = [0] * n
    for position, pair in enumerate(perm):
        fold[pair] = position % folds
    hits = np.zeros(n)
    for f in range(folds):
        train = [i for i in range(n) if fold[i] != f]
        rows = [ko[i] for i in train] + [en[i] for i in train]
        mean = [sum(r[d] for r in rows) / len(rows) for d in range(dim)]
        std = [math.sqrt(sum((r[d] - mean[d]) ** 2 for r in rows) / len(rows)) or 1.0 for d in range(dim)]

        def z(v):
            return np.array([(v[d] - mean[d]) / std[d] for d in range(dim)])

        mu_ko = sum(z(ko[i]) for i in train) / len(train)
        mu_en = sum(z(en[i]) for i in train) / len(train)
        for i in (i for i in range(n) if fold[i] == f):
            for v, truth in ((ko[i], "ko"), (en[i], "en")):
                d_ko, d_en = sum((z(v) - mu_ko) ** 2), sum((z(v) - mu_en) ** 2)
                guess = "ko" if d_ko < d_en else "en" if d_en < d_ko else None
                hits[i] += 0.25 if guess is None else 0.5 * (guess == truth)
    return hits


# --- CKA ---

def test_cka_is_one_under_rotation_scale_and_offset():
    x = gaussian(30, 50, seed=0)
    y = 3.7 * x @ orthogonal(50, seed=1) + gaussian(50, seed=2)
    assert cka(x, y) == pytest.approx(1.0, abs=1e-12)
    assert cka_debiased(x, y) == pytest.approx(1.0, abs=1e-9)
    assert cka(x.float(), y.float()) == pytest.approx(1.0, abs=1e-6)  # float32 input, computed in float64


def test_debiased_cka_of_shuffled_rows_is_near_zero_where_plain_cka_is_inflated():
    """Pairs broken (one side's rows shuffled) at N = 80 sentences and D = 400: nothing is shared, the plain
    estimator still reads high (its bias grows with D / N), the debiased one near 0 (its spread for unrelated
    Gaussian rows at this N and D: standard deviation 0.023 over 40 seeds, so 0.1 is over 4 of them)."""
    x = gaussian(80, 400, seed=3)
    y = (x @ orthogonal(400, seed=4))[torch.randperm(80, generator=torch.Generator().manual_seed(5))]
    assert cka(x, y) > 0.75
    assert abs(cka_debiased(x, y)) < 0.1
    # and a real but partial link reads between the two ends
    partial = cka_debiased(x, x + 2 * gaussian(80, 400, seed=6))
    assert 0.1 < partial < 0.5


def test_cka_equals_the_loop_references():
    # an offset on each side, so that a missing centring shows; 8 rows keep the 4-index U-statistic cheap
    x = gaussian(8, 5, seed=7) + 3.0
    y = x @ gaussian(5, 5, seed=8) + gaussian(8, 5, seed=9) - 2.0
    xn, yn = x.numpy(), y.numpy()
    assert cka(x, y) == pytest.approx(ref_cka(xn, yn), abs=1e-10)
    assert cka_debiased(x, y) == pytest.approx(ref_cka_debiased(xn, yn), abs=1e-10)
    assert abs(cka(x, y) - cka_debiased(x, y)) > 0.01  # the two estimators differ at this N


def test_debiased_cka_keeps_its_precision_under_a_large_shared_mean():
    """Hidden states share a large mean direction. The estimator does not depend on it in exact arithmetic; in
    float64 it must not either (the centring before the Gram products is what keeps it so)."""
    x = gaussian(40, 64, seed=10)
    y = x @ gaussian(64, 64, seed=11) + gaussian(40, 64, seed=12)
    offset = 1e4 * gaussian(64, seed=13)
    for measure in (cka, cka_debiased):
        assert measure(x + offset, y - offset) == pytest.approx(measure(x, y), abs=1e-9)


def test_debiased_cka_needs_four_rows():
    assert math.isnan(cka_debiased(gaussian(3, 5, seed=0), gaussian(3, 5, seed=1)))
    assert not math.isnan(cka_debiased(gaussian(4, 5, seed=0), gaussian(4, 5, seed=1)))


# --- language probe ---

def test_probe_is_exactly_at_chance_for_identical_vectors():
    x = gaussian(37, 20, seed=14)
    assert language_probe(x, x.clone()) == 0.5
    assert language_probe(x, x.clone(), folds=3, seed=9) == 0.5
    assert torch.equal(language_probe_hits(x, x.clone()), torch.full((37,), 0.5, dtype=torch.float64))


def test_probe_is_one_for_a_constant_offset():
    x = gaussian(50, 40, seed=15)
    assert language_probe(x, x + gaussian(40, seed=16)) == 1.0


def test_probe_is_near_chance_for_two_samples_of_one_distribution_at_n_below_d():
    """200 pairs in 1,000 dimensions: the 400 rows are linearly separable whatever they hold, yet the held-out
    nearest-class-mean probe stays near 1/2 when the languages do not differ (0.47 to 0.52 over 10 other seeds)."""
    assert language_probe(gaussian(200, 1000, seed=17), gaussian(200, 1000, seed=18)) == pytest.approx(0.5, abs=0.1)


def test_probe_equals_the_loop_reference():
    # 13 pairs in 5 folds (sizes 3, 3, 3, 2, 2); a weak language difference, so the accuracy lies inside (1/2, 1)
    ko = gaussian(13, 6, seed=19)
    en = ko + 0.6 * gaussian(6, seed=20) + gaussian(13, 6, seed=21)
    expected = ref_probe_hits(ko.numpy(), en.numpy(), folds=5, seed=3)
    hits = language_probe_hits(ko, en, folds=5, seed=3)
    np.testing.assert_allclose(hits.numpy(), expected, atol=1e-12)
    assert language_probe(ko, en, folds=5, seed=3) == pytest.approx(expected.mean(), abs=1e-12)
    assert 0.5 < expected.mean() < 1.0
    # a shift shared by both languages changes nothing
    assert torch.equal(language_probe_hits(ko + 1e4 * gaussian(6, seed=22), en + 1e4 * gaussian(6, seed=22),
                                           folds=5, seed=3), hits)
    # fewer pairs than folds: leave one pair out
    np.testing.assert_allclose(language_probe_hits(ko[:4], en[:4], folds=5, seed=3).numpy(),
                               ref_probe_hits(ko[:4].numpy(), en[:4].numpy(), folds=4, seed=3), atol=1e-12)


# --- strict retrieval ---

def unit(*degrees: float) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees])


def test_strict_retrieval_by_hand():
    # ko_1 (20 deg) is nearest en_0 (15): a ko->en miss; en_0 is nearest ko_1: an en->ko miss for pair 0;
    # pair 2 (180 deg) is found both ways. ko->en hits {0, 2}, en->ko hits {1, 2}, both ways only {2}.
    ko, en = unit(0, 20, 180), unit(15, 60, 180)
    hits = retrieval_hits(ko, en)
    assert hits["ko_en"].tolist() == [True, False, True]
    assert hits["en_ko"].tolist() == [False, True, True]
    assert hits["strict"].tolist() == [False, False, True]
    assert retrieval_strict(ko, en) == pytest.approx(1 / 3)
    one_way = alignment_metrics(ko, en)
    assert one_way["retrieval_ko_en"] == one_way["retrieval_en_ko"] == pytest.approx(2 / 3)
    # ko_0 and ko_1 the same Korean text: each retrieves a translation of itself, every pair counts
    assert retrieval_strict(ko, en, ko_keys=["a", "a", "c"]) == 1.0


def test_strict_retrieval_is_both_one_way_hit_vectors_of_alignment_metrics():
    ko = gaussian(60, 8, seed=22)
    en = ko + 1.2 * gaussian(60, 8, seed=23)
    keys = [i % 50 for i in range(60)]  # ten repeated Korean texts
    hits, one_way = retrieval_hits(ko, en, ko_keys=keys), alignment_metrics(ko, en, ko_keys=keys)
    assert hits["ko_en"].float().mean().item() == one_way["retrieval_ko_en"]
    assert hits["en_ko"].float().mean().item() == one_way["retrieval_en_ko"]
    strict = retrieval_strict(ko, en, ko_keys=keys)
    assert strict == hits["strict"].float().mean().item()
    assert strict < min(one_way["retrieval_ko_en"], one_way["retrieval_en_ko"])


# --- item link ---

def test_roc_auc_equals_the_pairwise_count_with_ties_half():
    scores = [0.3, 0.1, 0.3, 0.9, 0.5, 0.1, 0.3, 0.7]
    labels = [1, 0, 0, 1, 1, 1, 0, 0]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    expected = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(expected, abs=1e-15)
    assert roc_auc([1.0, 2.0, 3.0], [False, True, True]) == 1.0
    assert roc_auc([1.0, 2.0, 3.0], [True, False, False]) == 0.0
    assert roc_auc([0.5] * 4, [0, 1, 0, 1]) == 0.5
    assert math.isnan(roc_auc([1.0, 2.0], [1, 1]))
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([1.0, 2.0], [1])


def test_pair_cosine_averages_to_the_parallel_cosines():
    ko, en = gaussian(12, 7, seed=24) + 1, gaussian(12, 7, seed=25)
    one_way = alignment_metrics(ko, en)
    assert pair_cosine(ko, en).mean().item() == pytest.approx(one_way["parallel_cos"], abs=1e-6)
    assert pair_cosine(ko, en, centred=True).mean().item() == pytest.approx(one_way["centred_cos"], abs=1e-6)
    assert pair_cosine(ko, en)[3].item() == pytest.approx(
        (ko[3] @ en[3] / (ko[3].norm() * en[3].norm())).item(), abs=1e-12)


# --- together ---

def test_alignment_measures_equals_the_four_functions():
    ko = gaussian(30, 16, seed=26)
    en = ko @ gaussian(16, 16, seed=27) + gaussian(30, 16, seed=28)
    keys = [i % 25 for i in range(30)]
    assert alignment_measures(ko, en, en_keys=keys, folds=4, seed=1) == {
        "cka": cka(ko, en), "cka_debiased": cka_debiased(ko, en),
        "language_probe": language_probe(ko, en, folds=4, seed=1),
        "retrieval_strict": retrieval_strict(ko, en, en_keys=keys)}


@pytest.mark.parametrize("measure", [cka, cka_debiased, language_probe, retrieval_strict, pair_cosine])
def test_mismatched_shapes_fail_in_one_line(measure):
    with pytest.raises(ValueError, match=r"need two \(N, D\) tensors"):
        measure(gaussian(5, 3, seed=0), gaussian(4, 3, seed=1))
