"""Statistics of the evaluation: agreement of paired predictions, bootstrap intervals, paired comparisons of two
models, soft (probability) agreement, and intervals of the representation metrics.

The bootstrap works in two steps. ``resample_counts`` draws, once, how many times each item is drawn in each
replicate: a (B, n) integer array ``counts``. Every statistic is then recomputed on every replicate as the
statistic of the resampled multiset of items, i.e. with ``counts[b]`` as integer weights, vectorised over the
replicates (no resample is materialised). The same counts serve every statistic and every model, so two models
compared on them are compared on the same resampled items (a paired bootstrap). The intervals are percentile
intervals of the replicates (``percentile_ci``).

Plain numpy; torch only in ``alignment_replicates``, whose cosines are computed with the same torch operations
as ``common.metrics.alignment_metrics`` so that the per-pair values and the retrieval ties are that function's.
"""

import math
from collections.abc import Hashable, Sequence

import numpy as np

AGREEMENT_KEYS = ("acc_en", "acc_ko", "agreement", "kappa", "agreement_en_right")
PAIRED_KEYS = ("acc_en", "acc_ko", "agreement")
ALIGNMENT_KEYS = ("parallel_cos", "random_cos", "gap", "centred_cos", "centred_random_cos", "retrieval_ko_en",
                  "retrieval_en_ko")
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- agreement of two predictions


def cohen_kappa(a, b) -> float | None:
    """Cohen's kappa of two labelings of the same items: (p_o - p_e) / (1 - p_e), with p_o the observed
    agreement and p_e = sum_k p_a(k) p_b(k) the agreement expected from the two marginals.
    None when p_e = 1 (both always give the same single label: kappa is undefined)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two label lists of the same non-zero length, got {a.size} and {b.size}")
    labels = np.union1d(a, b)
    p_o = float(np.mean(a == b))
    p_e = float(sum(np.mean(a == k) * np.mean(b == k) for k in labels))
    if math.isclose(p_e, 1.0):
        return None
    return (p_o - p_e) / (1 - p_e)


def agreement_stats(gold, pred_en, pred_ko) -> dict:
    """Accuracy per language, agreement of the predicted choices, Cohen's kappa, the 2x2 table of
    correctness and the agreement among the items answered right in English."""
    gold, pred_en, pred_ko = (np.asarray(x) for x in (gold, pred_en, pred_ko))
    right_en, right_ko = pred_en == gold, pred_ko == gold
    n_en_right = int(right_en.sum())
    return {
        "n": int(gold.size),
        "acc_en": float(right_en.mean()),
        "acc_ko": float(right_ko.mean()),
        "agreement": float(np.mean(pred_en == pred_ko)),
        "kappa": cohen_kappa(pred_en, pred_ko),
        "table": {
            "both_right": int((right_en & right_ko).sum()),
            "only_en_right": int((right_en & ~right_ko).sum()),
            "only_ko_right": int((~right_en & right_ko).sum()),
            "both_wrong": int((~right_en & ~right_ko).sum()),
        },
        "agreement_en_right": float(np.mean(pred_ko[right_en] == pred_en[right_en])) if n_en_right else None,
    }


# ----------------------------------------------------------------------------- resampling


def _first_appearance_ids(labels: Sequence[Hashable], name: str) -> np.ndarray:
    """(n,) int: each label's number, labels numbered 0, 1, ... in order of first appearance."""
    index: dict = {}
    try:
        return np.asarray([index.setdefault(x, len(index)) for x in labels], dtype=np.int64)
    except TypeError as e:  # an unhashable label (a list, a dict)
        raise ValueError(f"{name}: every entry must be hashable ({e})") from None


def resample_counts(n: int, iters: int, seed: int, clusters: Sequence[Hashable] | None = None,
                    strata: Sequence[Hashable] | None = None) -> np.ndarray:
    """(iters, n) int64: ``counts[b, i]``, how many times item i is drawn in bootstrap replicate b.

    - Plain (no ``clusters``, no ``strata``): each replicate draws n items with replacement.
    - ``clusters`` (n hashables, e.g. a Belebele passage id): the clusters are drawn with replacement, as many
      as there are, and every item of a drawn cluster is counted once per draw (the cluster bootstrap of
      clustered standard errors, Miller 2024, "Adding Error Bars to Evals": items that share a context are
      not independent, and resampling them one by one would understate the error).
    - ``strata`` (n hashables, e.g. the task of each item in a suite): each stratum is resampled on its own,
      its clusters among its clusters, so each stratum keeps its number of clusters exactly and its number of
      items in expectation (exactly when unclustered). Clusters are nested in strata: a cluster label met in
      two strata is refused (label them (stratum, cluster) if they are distinct clusters).

    Order of the random numbers, with ``rng = np.random.default_rng(seed)`` (a loop reproduces it exactly)::

        strata in order of first appearance (a single one when strata is None);
        in each, its clusters in order of first appearance (each item its own cluster when clusters is None)
        for b in range(iters):
            for each stratum s, with m_s clusters C_s[0..m_s-1]:
                draw = rng.integers(0, m_s, m_s)         # one call per replicate and stratum
                for d in draw: counts[b, items of C_s[d]] += 1

    Replicate b only uses the numbers drawn for it, so the first k replicates of ``iters`` are those of
    ``iters = k``. ``iters = 0`` gives shape (0, n).
    """
    if n < 0 or iters < 0:
        raise ValueError(f"need n >= 0 and iters >= 0, got n={n}, iters={iters}")
    for name, labels in (("clusters", clusters), ("strata", strata)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} entries for {n} items")
    cluster_of = np.arange(n) if clusters is None else _first_appearance_ids(clusters, "clusters")
    stratum_of = np.zeros(n, dtype=np.int64) if strata is None else _first_appearance_ids(strata, "strata")
    n_clusters = int(cluster_of.max()) + 1 if n else 0
    cluster_stratum = np.full(n_clusters, -1, dtype=np.int64)
    for i, (c, s) in enumerate(zip(cluster_of.tolist(), stratum_of.tolist())):
        if cluster_stratum[c] == -1:
            cluster_stratum[c] = s
        elif cluster_stratum[c] != s:
            raise ValueError(f"clusters: cluster {clusters[i]!r} lies in two strata ({strata[i]!r} at item {i} and "
                             "an earlier one); clusters must be nested in strata")
    n_strata = int(stratum_of.max()) + 1 if n else 0
    # clusters are numbered by first appearance, so ascending numbers are first-appearance order within a stratum
    members = [np.flatnonzero(cluster_stratum == s) for s in range(n_strata)]
    rng = np.random.default_rng(seed)
    drawn = np.empty((iters, n_clusters), dtype=np.int64)  # the clusters drawn in each replicate
    for b in range(iters):
        start = 0
        for m in members:
            drawn[b, start:start + m.size] = m[rng.integers(0, m.size, m.size)]
            start += m.size
    # per-replicate histogram of the drawn clusters in one bincount: replicate b's clusters shifted by b * K
    offsets = n_clusters * np.arange(iters, dtype=np.int64)[:, None]
    cluster_counts = np.bincount((drawn + offsets).ravel(), minlength=iters * n_clusters)
    return cluster_counts.reshape(iters, n_clusters)[:, cluster_of]


def _weights(counts, n: int) -> np.ndarray:
    """``counts`` as a (B, n) float64 array (integer counts are exact in float64)."""
    w = np.asarray(counts, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"counts must be (replicates, {n}), got shape {w.shape}")
    return w


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den = 0 (a statistic undefined on that replicate)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def percentile_ci(replicates, level: float = 0.95) -> list[float | None]:
    """Percentile bootstrap interval [lo, hi]: the (1 - level)/2 and (1 + level)/2 quantiles of the replicates
    (numpy's default linear interpolation between order statistics).

    ``replicates``: (B,) values of a statistic, NaN (or None) where it is undefined on a replicate (kappa when
    a resample has a single label, agreement_en_right with no item right in English); those replicates are
    dropped, so the interval is conditional on the statistic being defined. [None, None] when no replicate is
    left (B = 0: no bootstrap, or all undefined)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(replicates, dtype=np.float64)  # None -> nan
    if values.ndim != 1:
        raise ValueError(f"replicates must be one-dimensional, got shape {values.shape}")
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [None, None]
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def weighted_mean_ci(values, counts, level: float = 0.95) -> list[float | None]:
    """Interval of the mean of a per-item quantity: replicate b is sum_i counts[b, i] v_i / sum_i counts[b, i],
    the mean over the resampled multiset. ``values`` (n,) finite floats, ``counts`` (B, n)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not np.all(np.isfinite(v)):
        raise ValueError(f"values must be a one-dimensional array of finite numbers, got shape {v.shape}")
    w = _weights(counts, v.size)
    return percentile_ci(_ratio(w @ v, w.sum(axis=1)), level)


# ----------------------------------------------------------------------------- agreement intervals


def _predictions(gold, pred_en, pred_ko, who: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gold, pred_en, pred_ko = (np.asarray(x) for x in (gold, pred_en, pred_ko))
    if not gold.ndim == pred_en.ndim == pred_ko.ndim == 1 or not gold.size == pred_en.size == pred_ko.size:
        raise ValueError(f"{who}gold, pred_en and pred_ko must be three lists of the same length, got "
                         f"{gold.shape}, {pred_en.shape} and {pred_ko.shape}")
    return gold, pred_en, pred_ko


def agreement_replicates(gold, pred_en, pred_ko, counts) -> dict[str, np.ndarray]:
    """The statistics of ``agreement_stats`` on every bootstrap replicate: {key: (B,) float64} for the keys
    acc_en, acc_ko, agreement, kappa, agreement_en_right. ``gold``, ``pred_en``, ``pred_ko``: (n,) labels;
    ``counts``: (B, n) from ``resample_counts``.

    With w = counts[b] and W = sum_i w_i, replicate b is the statistic of the multiset holding item i w_i times:
    acc_en = sum_i w_i [pred_en_i = gold_i] / W (acc_ko, agreement alike); kappa = (p_o - p_e) / (1 - p_e) with
    p_o the weighted agreement and p_e = sum_k p_en(k) p_ko(k) over the labels k of the whole sample, p_en(k) =
    sum_i w_i [pred_en_i = k] / W (weighted marginals; NaN where p_e = 1, as cohen_kappa's None);
    agreement_en_right = sum_i w_i [right_en_i and agree_i] / sum_i w_i [right_en_i] (NaN when 0 / 0).
    Counts of all ones give agreement_stats' values exactly (same sums, same order of additions)."""
    gold, pred_en, pred_ko = _predictions(gold, pred_en, pred_ko)
    w = _weights(counts, gold.size)
    total = w.sum(axis=1)
    right_en, agree = pred_en == gold, pred_en == pred_ko

    def mean(x: np.ndarray) -> np.ndarray:
        return _ratio(w @ x.astype(np.float64), total)

    p_o = mean(agree)
    p_e = np.zeros(w.shape[0])
    for k in np.union1d(pred_en, pred_ko):  # one addition per label, in cohen_kappa's order
        p_e = p_e + mean(pred_en == k) * mean(pred_ko == k)
    undefined = np.abs(p_e - 1.0) <= 1e-9 * np.maximum(np.abs(p_e), 1.0)  # math.isclose(p_e, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(undefined, np.nan, (p_o - p_e) / (1 - p_e))
    return {
        "acc_en": mean(right_en),
        "acc_ko": mean(pred_ko == gold),
        "agreement": p_o,
        "kappa": kappa,
        "agreement_en_right": _ratio(w @ (right_en & agree).astype(np.float64), w @ right_en.astype(np.float64)),
    }


def agreement_intervals(gold, pred_en, pred_ko, counts, level: float = 0.95) -> dict[str, list]:
    """{key: [lo, hi]} for acc_en, acc_ko, agreement, kappa and agreement_en_right: percentile intervals of
    ``agreement_replicates`` (see there for the weighted statistics; an undefined replicate is dropped)."""
    reps = agreement_replicates(gold, pred_en, pred_ko, counts)
    return {key: percentile_ci(reps[key], level) for key in AGREEMENT_KEYS}


# ----------------------------------------------------------------------------- paired comparisons


def _outcomes(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != bool:
        if x.size and not np.isin(x, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans (or 0/1)")
        x = x.astype(bool)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    return x


def mcnemar_exact(x, y) -> tuple[float, int]:
    """Exact two-sided McNemar test of two models' outcomes on the same items: (p, n_discordant).

    ``x``, ``y``: (n,) bool (right/wrong, or any paired yes/no). b = #(x and not y), c = #(not x and y),
    n_d = b + c (the discordant items; the concordant ones carry no information on the difference). Under
    the null each discordant item goes either way with probability 1/2, so
    p = min(1, 2 P(Binom(n_d, 1/2) <= min(b, c))) = min(1, 2 sum_{i <= min(b,c)} C(n_d, i) / 2^n_d),
    computed in integers and divided once (correctly rounded, for any n_d). n_d = 0: p = 1."""
    x, y = _outcomes(x, "x"), _outcomes(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    b, c = int(np.sum(x & ~y)), int(np.sum(~x & y))
    n_d = b + c
    if n_d == 0:
        return 1.0, 0
    term = tail = 1  # C(n_d, 0)
    for i in range(1, min(b, c) + 1):
        term = term * (n_d - i + 1) // i  # C(n_d, i), exact
        tail += term
    return min(1.0, 2 * tail / (1 << n_d)), n_d


def _model(m, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(m, dict) or any(k not in m for k in ("gold", "pred_en", "pred_ko")):
        raise ValueError(f"model {name} must be a dict with 'gold', 'pred_en' and 'pred_ko'")
    return _predictions(m["gold"], m["pred_en"], m["pred_ko"], f"model {name}: ")


def paired_comparison(a: dict, b: dict, counts, level: float = 0.95) -> dict[str, dict]:
    """Model a against model b on the same items: {metric: {"delta", "ci", "p_mcnemar", "n_discordant"}} for
    acc_en, acc_ko and agreement.

    ``a``, ``b``: {"gold", "pred_en", "pred_ko"}, (n,) each, the same items in the same order (same gold, else
    ValueError). ``counts``: (B, n). delta = metric(a) - metric(b) on the whole sample; ci: percentile interval
    of the replicate deltas metric_b(a) - metric_b(b), both on the same counts[b] (paired: the item-to-item
    variation common to both models cancels). p_mcnemar / n_discordant: ``mcnemar_exact`` on the per-item
    outcomes: right in English (acc_en), right in Korean (acc_ko), same choice in both languages (agreement,
    so the discordant items are those whose agree/disagree status flipped)."""
    gold_a, en_a, ko_a = _model(a, "a")
    gold_b, en_b, ko_b = _model(b, "b")
    if gold_a.size != gold_b.size:
        raise ValueError(f"the two models were scored on different items: {gold_a.size} and {gold_b.size} items")
    if not np.array_equal(gold_a, gold_b):
        first = int(np.flatnonzero(gold_a != gold_b)[0])
        raise ValueError(f"the two models' gold answers differ (first at item {first}): not the same items, or "
                         "not in the same order")
    reps_a = agreement_replicates(gold_a, en_a, ko_a, counts)
    reps_b = agreement_replicates(gold_b, en_b, ko_b, counts)
    outcomes = {
        "acc_en": (en_a == gold_a, en_b == gold_b),
        "acc_ko": (ko_a == gold_a, ko_b == gold_b),
        "agreement": (en_a == ko_a, en_b == ko_b),
    }
    out = {}
    for key in PAIRED_KEYS:
        x, y = outcomes[key]
        p, n_d = mcnemar_exact(x, y)
        out[key] = {"delta": float(x.mean()) - float(y.mean()), "ci": percentile_ci(reps_a[key] - reps_b[key], level),
                    "p_mcnemar": p, "n_discordant": n_d}
    return out


# ----------------------------------------------------------------------------- soft agreement


def soft_agreement(loglik_en: Sequence[Sequence[float]], loglik_ko: Sequence[Sequence[float]]) -> dict[str, np.ndarray]:
    """Agreement of the two languages' choice distributions, per item: {"jsd": (n,), "p_ko_of_en_pred": (n,)}.

    ``loglik_en``, ``loglik_ko``: n items, each a list of per-choice log-likelihoods (items may have different
    numbers of choices; an item's two lists the same number). Per item, in float64,
    p = softmax(loglik_en), q = softmax(loglik_ko) (shifted by the max, so stable), m = (p + q) / 2, and

    - jsd = 1/2 sum_k p_k log2(p_k / m_k) + 1/2 sum_k q_k log2(q_k / m_k), the Jensen-Shannon divergence in
      bits, in [0, 1]: 0 for the same distribution, 1 for disjoint ones (0 log 0 = 0; computed from the
      log-probabilities, rounding clipped to [0, 1]);
    - p_ko_of_en_pred = q[argmax loglik_en]: the probability the Korean distribution gives the English
      prediction (argmax of the log-likelihoods, ties to the first choice, as lm-eval's acc and pred_en)."""
    if len(loglik_en) != len(loglik_ko):
        raise ValueError(f"loglik_en has {len(loglik_en)} items and loglik_ko {len(loglik_ko)}")
    n = len(loglik_en)
    by_size: dict[int, list[int]] = {}  # items grouped by number of choices, each group computed as one array
    for i, (le, lk) in enumerate(zip(loglik_en, loglik_ko)):
        if len(le) != len(lk) or len(le) == 0:
            raise ValueError(f"item {i}: {len(le)} English and {len(lk)} Korean log-likelihoods (need the same "
                             "number, at least one)")
        by_size.setdefault(len(le), []).append(i)
    jsd, p_top = np.empty(n), np.empty(n)
    for idx in by_size.values():
        le = np.asarray([loglik_en[i] for i in idx], dtype=np.float64)  # (m, k)
        lk = np.asarray([loglik_ko[i] for i in idx], dtype=np.float64)
        if not (np.all(np.isfinite(le)) and np.all(np.isfinite(lk))):
            bad = idx[int(np.flatnonzero(~(np.isfinite(le).all(1) & np.isfinite(lk).all(1)))[0])]
            raise ValueError(f"item {bad}: log-likelihoods must be finite")
        log_p, log_q = _log_softmax(le), _log_softmax(lk)
        log_m = np.logaddexp(log_p, log_q) - LN2
        # p_k (log p_k - log m_k) is 0 when p_k underflows to 0: 0 log 0 = 0 without a special case
        kl_pm = np.sum(np.exp(log_p) * (log_p - log_m), axis=1)
        kl_qm = np.sum(np.exp(log_q) * (log_q - log_m), axis=1)
        jsd[idx] = np.clip((kl_pm + kl_qm) / (2 * LN2), 0.0, 1.0)
        p_top[idx] = np.exp(log_q[np.arange(len(idx)), np.argmax(le, axis=1)])
    return {"jsd": jsd, "p_ko_of_en_pred": p_top}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """(m, k) -> (m, k): x - logsumexp(x) along the last axis, shifted by the row max (no overflow)."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


# ----------------------------------------------------------------------------- representation metrics


def alignment_replicates(ko, en, ko_keys: Sequence[Hashable] | None = None,
                         en_keys: Sequence[Hashable] | None = None, *, counts) -> dict[str, np.ndarray]:
    """The metrics of ``common.metrics.alignment_metrics`` on every bootstrap replicate of the pairs:
    {key: (B,) float64}. ``ko``, ``en``: (N, D) tensors or arrays, row i translations of each other;
    ``ko_keys`` / ``en_keys``: as in alignment_metrics (equivalent pairs by its ``_same_text``); ``counts``:
    (B, N) from ``resample_counts`` (the resampling unit is the pair).

    With c(i, j) = cos(ko_i, en_j) (float32, computed as alignment_metrics does), R the (N, N) mask of the
    random (non-equivalent) pairs, w = counts[b] and W = sum_i w_i:

    - parallel_cos = sum_i w_i c(i, i) / W;
    - random_cos = sum_{i,j} w_i w_j R_ij c(i, j) / sum_{i,j} w_i w_j R_ij: the mean over the random pairs
      of the resampled multiset (copies of a pair are equivalent to each other, so never random), computed
      as rows of (w @ (C * R)) * w summed; NaN when a replicate has no random pair. gap = parallel - random;
    - centred_cos, centred_random_cos: the same on cos(ko_i - mean_ko, en_j - mean_en) with the means of the
      whole sample, not re-estimated per replicate (re-centring would cost B N D per replicate; the means of
      N pairs vary little next to the spread of the cosines), so the centred cosine of each pair is fixed;
    - retrieval_ko_en = sum_i w_i hit_i / W, hit_i whether ko_i's nearest English vector among all N rows is
      equivalent to it (alignment_metrics' hits); the candidate pool is the whole sample, not resampled, so
      chance stays about 1/N and duplicated candidates do not change a hit. retrieval_en_ko the other way.

    Counts of all ones give alignment_metrics' values up to its float32 means (about 1e-7). Cost:
    O(B N^2) (one (B, N) @ (N, 3N) product), O(N^2) memory."""
    import torch
    import torch.nn.functional as F

    from common.metrics import _same_text

    ko, en = torch.as_tensor(ko), torch.as_tensor(en)
    if ko.shape != en.shape or ko.dim() != 2 or ko.shape[0] < 2:
        raise ValueError(f"need two (N, D) tensors with N >= 2; got {tuple(ko.shape)} and {tuple(en.shape)}")
    n = ko.shape[0]
    w = _weights(counts, n)
    with torch.no_grad():  # the operations of alignment_metrics, so the same per-pair values and argmax ties
        ko, en = ko.float(), en.float()
        equivalent = _same_text(ko_keys, n, ko.device, "ko") | _same_text(en_keys, n, ko.device, "en")
        sim = F.normalize(ko, dim=-1) @ F.normalize(en, dim=-1).T
        centred = F.normalize(ko - ko.mean(dim=0), dim=-1) @ F.normalize(en - en.mean(dim=0), dim=-1).T
        rows = torch.arange(n, device=sim.device)
        hit_ko_en = equivalent[rows, sim.argmax(dim=1)]
        hit_en_ko = equivalent[sim.argmax(dim=0), rows]
    sim, centred = (t.double().cpu().numpy() for t in (sim, centred))
    random = (~equivalent).cpu().numpy().astype(np.float64)
    hit_ko_en, hit_en_ko = (t.cpu().numpy().astype(np.float64) for t in (hit_ko_en, hit_en_ko))
    total = w.sum(axis=1)
    # sum_{i,j} w_i w_j M_ij for the three matrices at once: ((w @ [C*R | Cc*R | R]) * [w | w | w]) per block
    product = w @ np.concatenate([sim * random, centred * random, random], axis=1)  # (B, 3N)
    num_random, num_centred, n_random = (np.einsum("bj,bj->b", product[:, k * n:(k + 1) * n], w) for k in range(3))
    parallel = _ratio(w @ np.diagonal(sim), total)
    random_cos = _ratio(num_random, n_random)
    return {
        "parallel_cos": parallel,
        "random_cos": random_cos,
        "gap": parallel - random_cos,
        "centred_cos": _ratio(w @ np.diagonal(centred), total),
        "centred_random_cos": _ratio(num_centred, n_random),
        "retrieval_ko_en": _ratio(w @ hit_ko_en, total),
        "retrieval_en_ko": _ratio(w @ hit_en_ko, total),
    }


def alignment_intervals(ko, en, ko_keys: Sequence[Hashable] | None = None, en_keys: Sequence[Hashable] | None = None,
                        *, counts, level: float = 0.95) -> dict[str, list]:
    """{key: [lo, hi]} for the seven metrics of ``alignment_metrics``: percentile intervals of
    ``alignment_replicates`` (see there: pairs resampled, centring means and retrieval pool of the whole
    sample; a replicate without a random pair is dropped)."""
    reps = alignment_replicates(ko, en, ko_keys, en_keys, counts=counts)
    return {key: percentile_ci(reps[key], level) for key in ALIGNMENT_KEYS}


# ----------------------------------------------------------------------------- AUC


def auc_replicates(scores, labels, counts) -> np.ndarray:
    """The ROC AUC of ``scores`` (n,) separating ``labels`` (n,) bool (True: the positive class) on every
    bootstrap replicate: (B,) float64. On a replicate with item weights w (``counts[b]``), AUC = sum over
    positive i and negative j of w_i w_j (1[s_i > s_j] + 1/2 1[s_i = s_j]) / (sum_pos w)(sum_neg w): the
    Mann-Whitney AUC of the resampled multiset (``common.metrics.roc_auc`` when all weights are 1). NaN on a
    replicate without a positive or a negative item. O(B n_pos n_neg) through one matrix product."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"need scores and labels of one length, got {s.shape} and {y.shape}")
    w = _weights(counts, s.size)
    pos, neg = s[y], s[~y]
    above = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (n_pos, n_neg)
    w_pos, w_neg = w[:, y], w[:, ~y]
    return _ratio(np.einsum("bi,ij,bj->b", w_pos, above, w_neg), w_pos.sum(axis=1) * w_neg.sum(axis=1))


def auc_interval(scores, labels, counts, level: float = 0.95) -> list[float | None]:
    """Percentile interval of ``auc_replicates`` (replicates without both classes dropped)."""
    return percentile_ci(auc_replicates(scores, labels, counts), level)
