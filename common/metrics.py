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


# Measures that hold when the two languages' spaces differ (a rotation, a scale, an offset of one side): linear
# CKA and its debiased estimator, a held-out language probe, strict two-way retrieval, and per-item quantities.

def _pair_of_matrices(ko, en, min_rows: int = 2) -> tuple[Tensor, Tensor]:
    """``ko`` and ``en`` as float64 tensors of one (N, D) shape with N >= ``min_rows``; a clear error otherwise."""
    ko, en = torch.as_tensor(ko).detach(), torch.as_tensor(en).detach()
    if ko.shape != en.shape or ko.dim() != 2 or ko.shape[0] < min_rows:
        raise ValueError(f"need two (N, D) tensors of one shape with N >= {min_rows}; "
                         f"got {tuple(ko.shape)} and {tuple(en.shape)}")
    return ko.double(), en.double()


def _centred_grams(ko: Tensor, en: Tensor) -> tuple[Tensor, Tensor]:
    """(N, N) float64 Gram matrices K = X_c X_c^T and L = Y_c Y_c^T of the column-centred matrices.

    Centring the (N, D) features before the product is the same as H K H with H = I - 11^T/N, and cheaper and
    more precise: hidden states share a large mean direction, whose square would swamp the Gram entries."""
    x, y = _pair_of_matrices(ko, en)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    return x @ x.T, y @ y.T


def _cka_of_grams(k: Tensor, m: Tensor) -> float:
    """Linear CKA from centred Grams: <K, L>_F / (||K||_F ||L||_F); NaN when one side has no variance."""
    denominator = torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(m)
    return ((k * m).sum() / denominator).item() if denominator > 0 else float("nan")


def _hsic_unbiased(k: Tensor, m: Tensor) -> Tensor:
    """Song et al. (2012)'s unbiased HSIC estimator of two (n, n) Grams (n >= 4); see ``cka_debiased``."""
    n = k.shape[0]
    k, m = k.clone(), m.clone()
    k.fill_diagonal_(0)
    m.fill_diagonal_(0)
    trace = (k * m).sum()  # tr(K~ L~), both symmetric
    sums = k.sum() * m.sum() / ((n - 1) * (n - 2))  # (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2))
    cross = 2 * (k.sum(dim=1) @ m.sum(dim=1)) / (n - 2)  # 2 (1^T K~ L~ 1) / (n-2): O(n^2), no n^3 product
    return (trace + sums - cross) / (n * (n - 3))


def _cka_debiased_of_grams(k: Tensor, m: Tensor) -> float:
    if k.shape[0] < 4:
        return float("nan")
    km, kk, mm = _hsic_unbiased(k, m), _hsic_unbiased(k, k), _hsic_unbiased(m, m)
    return (km / (kk * mm).sqrt()).item() if kk > 0 and mm > 0 else float("nan")


@torch.no_grad()
def cka(ko, en) -> float:
    """Linear CKA (Kornblith et al. 2019) of N paired rows: ``ko`` (N, D) and ``en`` (N, D), row i of each the
    same sentence in its language. Returns a float in [0, 1].

    With X_c, Y_c the matrices centred column by column (each language by its own mean over the N rows),
    K = X_c X_c^T, L = Y_c Y_c^T (N, N), the biased HSIC is tr(K L) / (N-1)^2 and

        CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) = <K, L>_F / (||K||_F ||L||_F)
            = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F).

    It compares the two configurations of the N sentences, not the coordinates: it is 1 when Y = X Q s + 1 b^T
    for any orthogonal Q, scale s > 0 and offset b, so a rotated, rescaled or shifted English space is not read
    as misalignment (raw cosine is). It is inflated when N is small next to the rank of the data: for
    unrelated X and Y with N << D both Grams approach a multiple of the centring matrix and CKA approaches 1;
    ``cka_debiased`` corrects this. float64 throughout; O(N^2 D) time, O(N^2) memory (N rows of a few
    thousand). NaN when a side has no variance.

    Not a mean over pairs: an interval needs the measure recomputed on resampled pairs (a bootstrap of the
    pairs), not a bootstrap of per-item values.
    """
    return _cka_of_grams(*_centred_grams(ko, en))


@torch.no_grad()
def cka_debiased(ko, en) -> float:
    """Debiased linear CKA (Murphy et al. 2024, after Nguyen et al. 2021 and Song et al. 2012) of N paired rows:
    ``ko`` (N, D), ``en`` (N, D), row i of each the same sentence. Returns a float, about 0 for unrelated rows
    at any N and D and 1 for ``en`` = ``ko`` Q s (+ offset), Q orthogonal, s > 0; it can be slightly negative.

    K and L are the linear Grams of the two sides (centred as in ``cka``; the estimator is unchanged by the
    centring in exact arithmetic, which keeps it precise when the rows share a large mean). With K~, L~ the
    Grams with their diagonal set to 0 and 1 the all-ones N-vector, Song et al.'s unbiased estimator is

        HSIC_1(K, L) = [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((N-1)(N-2)) - 2/(N-2) 1^T K~ L~ 1 ] / (N (N-3)),

    the U-statistic over distinct index tuples  mean_{i!=j} K_ij L_ij + mean_{i,j,q,r distinct} K_ij L_qr
    - 2 mean_{i,j,q distinct} K_ij L_iq, so its expectation is the population HSIC ||Cov(x, y)||_F^2 with no
    term in D/N. Then

        CKA_debiased = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)).

    The plain ``cka`` of unrelated rows grows towards 1 as D/N grows (a few hundred sentences at hidden size
    2,048); this one stays near 0, so it compares runs evaluated on different numbers of pairs. float64;
    O(N^2 D) time, O(N^2) memory. NaN with fewer than 4 rows (the estimator needs 4 distinct indices) or when
    a side's HSIC_1(K, K) is not positive.

    Not a mean over pairs: an interval needs a recomputation on resampled pairs. A bootstrap resample repeats
    rows, and a repeated row counts as two independent samples (its off-diagonal K_ij = ||x_i||^2), which
    biases the resampled values upwards; a subsample without replacement (or a jackknife) avoids that.
    """
    return _cka_debiased_of_grams(*_centred_grams(ko, en))


@torch.no_grad()
def language_probe_hits(ko, en, folds: int = 5, seed: int = 0) -> Tensor:
    """Per-pair held-out hits of the language probe (see ``language_probe``): (N,) float64, the mean over pair
    i's two rows of 1 (right language), 0 (wrong) or 1/2 (a tie), each scored by the classifier of the fold
    that held pair i out. Its mean is ``language_probe``.

    A bootstrap of this vector gives the test-set part of the uncertainty only: the classifiers were fitted on
    the other pairs and are held fixed (the usual cross-validation practice); refitting per resample would
    put a pair in training and test at once unless the folds are rebuilt.
    """
    x, y = _pair_of_matrices(ko, en)
    n = x.shape[0]
    k = min(folds, n)
    if k < 2:
        raise ValueError(f"language_probe needs folds >= 2; got {folds}")
    # Folds by pair: a seeded permutation of the N pairs dealt round-robin into k folds of sizes differing by
    # at most 1; both rows of a pair land in one fold, so no sentence is scored by a classifier that saw its
    # translation, and each test fold holds as many Korean rows as English ones (chance is exactly 1/2).
    fold = torch.empty(n, dtype=torch.long)
    fold[torch.randperm(n, generator=torch.Generator().manual_seed(seed))] = torch.arange(n) % k
    fold = fold.to(x.device)
    # A shift of all rows changes neither the standardised vectors nor the classifier; removing the overall mean
    # first keeps the variances below (mean of squares minus square of mean) free of cancellation when the
    # rows share a large mean, as hidden states do.
    centre = (x.mean(dim=0) + y.mean(dim=0)) / 2
    x, y = x - centre, y - centre
    # Per-fold sums (k, D) in one pass; a fold's training statistics are the totals minus its own sums.
    member = F.one_hot(fold, k).T.double()  # (k, N)
    sum_ko, sum_en, sum_sq = member @ x, member @ y, member @ (x * x + y * y)
    pairs = member.sum(dim=1)
    hits = torch.empty(n, 2, dtype=torch.float64, device=x.device)
    for f in range(k):
        test, train_pairs = fold == f, n - pairs[f]
        mean_ko = (sum_ko.sum(dim=0) - sum_ko[f]) / train_pairs  # the class means of the training rows
        mean_en = (sum_en.sum(dim=0) - sum_en[f]) / train_pairs
        mean = (mean_ko + mean_en) / 2  # m: both languages, as many rows each
        var = (sum_sq.sum(dim=0) - sum_sq[f]) / (2 * train_pairs) - mean * mean
        std = var.clamp(min=0).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature carries no information
        # In z = (v - m) / s: mu_ko - mu_en = (mean_ko - mean_en) / s = w and b = w . (mu_ko + mu_en) / 2 = 0
        # (m is the midpoint of the class means), so z . w - b = (v - m) . (w / s).
        direction = (mean_ko - mean_en) / (std * std)
        score_ko, score_en = (x[test] - mean) @ direction, (y[test] - mean) @ direction
        # nearer the Korean mean <=> ||z - mu_ko||^2 < ||z - mu_en||^2 <=> z . w - b > 0
        hits[test, 0] = (score_ko > 0).double() + 0.5 * (score_ko == 0).double()
        hits[test, 1] = (score_en < 0).double() + 0.5 * (score_en == 0).double()
    return hits.mean(dim=1)


@torch.no_grad()
def language_probe(ko, en, folds: int = 5, seed: int = 0) -> float:
    """How well a linear classifier tells the language from the vector, held out: a float in [0, 1], 0.5 for
    language-agnostic vectors (the two languages' rows indistinguishable), 1.0 for perfectly separable ones.

    ``ko`` (N, D), ``en`` (N, D), row i of each the same sentence. The N pairs are split into ``folds`` folds by
    pair (``torch.randperm(N)`` seeded with ``seed``, dealt round-robin; leave-one-pair-out when N < folds), and
    each fold's 2 x |fold| rows are classified by a classifier fitted on the other folds' rows:

    - standardise: z = (v - m) / s, m and s (D,) the mean and standard deviation per feature over the training
      rows of both languages (a feature with s = 0 keeps s = 1); test rows never feed m, s or the means;
    - nearest class mean: mu_ko, mu_en the means of the training z of each language, w = mu_ko - mu_en,
      b = w . (mu_ko + mu_en) / 2; a row is called Korean when z . w - b > 0, English when < 0, and a tie
      (w = 0: identical class means) counts half a hit.

    Accuracy = mean over the 2N held-out rows. Why this classifier: with N (hundreds to thousands) far below D
    (2,048) the two languages' training rows are linearly separable almost whatever they hold, so an (almost)
    unregularised logistic regression has no unique optimum (the solver's stopping rule sets its weights) and
    can use any small difference along any of the D directions; it then tends to the ceiling for any two
    languages and separates checkpoints poorly. Nearest class mean is the limit of L2-regularised logistic
    regression as the penalty grows (the weight vector tends to the difference of the class means), so it is
    the strongly regularised end of that family: it asks whether the languages differ along their mean
    direction by more than the spread of the sentences, has no hyperparameter, no iterations or tolerance, and
    is deterministic and O(N D) in all (per-fold sums from one pass over the rows).
    Standardising keeps a few outlier features with huge activations from deciding alone.

    Not a plain mean over independent items: see ``language_probe_hits`` for the per-pair vector and what an
    interval over it does and does not cover.
    """
    return language_probe_hits(ko, en, folds, seed).mean().item()


@torch.no_grad()
def retrieval_hits(ko, en, ko_keys: Sequence[Hashable] | None = None,
                   en_keys: Sequence[Hashable] | None = None) -> dict[str, Tensor]:
    """Per-pair retrieval hits, (N,) bool each, with the equivalence and tie rules of ``alignment_metrics``
    (keys: equal keys mark the same text; c(i, j) = cos(ko_i, en_j) in float32 as there, argmax ties to the
    first row), so that each mean is the figure ``alignment_metrics`` reports:

    - ``ko_en``: ko_i's nearest English row j* = argmax_j c(i, j) is equivalent to i;
    - ``en_ko``: en_i's nearest Korean row i* = argmax_j c(j, i) is equivalent to i;
    - ``strict``: both (MEXA, Kargaran et al. 2024): pair i counts only when each side retrieves the other.
    """
    _pair_of_matrices(ko, en)  # the shape check
    ko, en = torch.as_tensor(ko).detach().float(), torch.as_tensor(en).detach().float()
    n = ko.shape[0]
    equivalent = _same_text(ko_keys, n, ko.device, "ko") | _same_text(en_keys, n, ko.device, "en")
    sim = F.normalize(ko, dim=-1) @ F.normalize(en, dim=-1).T
    rows = torch.arange(n, device=sim.device)
    ko_en = equivalent[rows, sim.argmax(dim=1)]
    en_ko = equivalent[sim.argmax(dim=0), rows]
    return {"ko_en": ko_en, "en_ko": en_ko, "strict": ko_en & en_ko}


@torch.no_grad()
def retrieval_strict(ko, en, ko_keys: Sequence[Hashable] | None = None,
                     en_keys: Sequence[Hashable] | None = None) -> float:
    """Strict bidirectional retrieval P@1 (MEXA, Kargaran et al. 2024) of ``ko`` (N, D) and ``en`` (N, D): the
    share of pairs i whose Korean row retrieves an English row equivalent to i AND whose English row retrieves
    a Korean row equivalent to i (``retrieval_hits``: keys, ties and precision as in ``alignment_metrics``).
    A float in [0, min(retrieval_ko_en, retrieval_en_ko)]; chance about 1/N^2. A mean over pairs: the
    (N,) vector ``retrieval_hits(...)["strict"]`` is its per-item contribution for a bootstrap."""
    return retrieval_hits(ko, en, ko_keys, en_keys)["strict"].float().mean().item()


@torch.no_grad()
def pair_cosine(ko, en, centred: bool = False) -> Tensor:
    """Per-pair similarity, (N,) float64: cos(ko_i, en_i) for ``ko`` (N, D), ``en`` (N, D); with ``centred``,
    cos(ko_i - mean_ko, en_i - mean_en), each language centred by its own mean over the N rows. Their means are
    ``alignment_metrics``'s ``parallel_cos`` and ``centred_cos``. Used per item (the similarity of an item's
    Korean and English question) to ask whether closer items agree more (``roc_auc``)."""
    x, y = _pair_of_matrices(ko, en, min_rows=1 if not centred else 2)
    if centred:
        x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    return F.cosine_similarity(x, y, dim=-1, eps=1e-12)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` (N,) for the binary ``labels`` (N,) (True / 1 = positive), by the
    Mann-Whitney statistic: the probability that a random positive scores above a random negative, ties
    counted half,

        AUC = [ sum_{p positive, q negative} (1[s_p > s_q] + 1/2 1[s_p = s_q]) ] / (n_pos n_neg)
            = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg),

    R_pos the sum of the positives' ranks among all N scores (tied scores share their mean rank). 0.5 = no
    separation, 1.0 = every positive above every negative. float64; NaN when a class is empty. For the item
    link: scores the per-item similarity (``pair_cosine``), labels whether the item gets the same answer in
    both languages."""
    s = torch.as_tensor(scores).detach().double().flatten().cpu()
    y = torch.as_tensor(labels).detach().flatten().cpu()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.numel()} and {y.numel()}")
    if not torch.isfinite(s).all():
        raise ValueError("roc_auc: a score is NaN or infinite")
    y = y.bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # the ranks end-count+1 .. end, averaged
    rank_sum = mean_rank[inverse][y].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@torch.no_grad()
def alignment_measures(ko, en, ko_keys: Sequence[Hashable] | None = None, en_keys: Sequence[Hashable] | None = None,
                       folds: int = 5, seed: int = 0) -> dict[str, float]:
    """``cka``, ``cka_debiased``, ``language_probe`` (``folds``, ``seed``) and ``retrieval_strict`` (``ko_keys``,
    ``en_keys``) of ``ko`` (N, D) and ``en`` (N, D) in one call, equal to the four functions, the two CKAs
    sharing one pair of Gram matrices. Keys of the dict: those names."""
    k, m = _centred_grams(ko, en)
    return {
        "cka": _cka_of_grams(k, m),
        "cka_debiased": _cka_debiased_of_grams(k, m),
        "language_probe": language_probe(ko, en, folds, seed),
        "retrieval_strict": retrieval_strict(ko, en, ko_keys, en_keys),
    }
