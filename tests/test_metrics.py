import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from common.data import sample_indices
from common.demo import tiny_llama
from common.metrics import alignment_metrics, language_model_loss, require_finite


def test_alignment_metrics_by_hand():
    # 3 pairs in 2-D: ko_0 matches en_0 and en_1 equally badly, see the hand computation below
    ko = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    en = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    m = alignment_metrics(ko, en)
    s = 2 ** -0.5
    # cos(ko_i, en_j) by hand: row 0 [1, 1, 0], row 1 [0, 0, 1], row 2 [s, s, s]
    parallel = (1 + 0 + s) / 3
    random = (1 + 0 + 0 + 1 + s + s) / 6
    assert m["parallel_cos"] == pytest.approx(parallel)
    assert m["random_cos"] == pytest.approx(random)
    assert m["gap"] == pytest.approx(parallel - random)
    # ko->en argmax per row: row0 -> 0 (tie 0/1, first wins), row1 -> 2, row2 -> 0 (tie, first): 1 of 3 right
    assert m["retrieval_ko_en"] == pytest.approx(1 / 3)
    # en->ko argmax per column: col0 -> 0, col1 -> 0, col2 -> 1: 1 of 3 right
    assert m["retrieval_en_ko"] == pytest.approx(1 / 3)


def test_retrieval_each_way_by_hand():
    # the two directions differ: ko_1 is nearest en_0 (a miss), while en_0 is nearest ko_0 and en_1 nearest ko_1
    ko = torch.tensor([[1.0, 0.0], [1.0, 0.01]])
    en = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    m = alignment_metrics(ko, en)
    assert m["retrieval_ko_en"] == 0.5 and m["retrieval_en_ko"] == 1.0


def test_language_model_loss_is_the_mean_over_predicted_tokens():
    """Batches of different sizes and label masks: the loss is the mean of -log p over every predicted token
    (shifted label not -100) of all batches, not a mean of batch means."""
    torch.manual_seed(0)
    model = tiny_llama(50, hidden_size=32, num_layers=2, seed=3).eval()
    ids = [torch.randint(4, 50, (2, 7)), torch.randint(4, 50, (1, 5))]
    labels = ids[0].clone()
    labels[0, :5] = -100  # a prompt: only its last tokens are predicted
    batches = [{"input_ids": ids[0], "labels": labels}, {"input_ids": ids[1]}]
    terms = []
    for batch in batches:
        target = batch.get("labels", batch["input_ids"])
        logp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits.float(), dim=-1)
        for b in range(target.shape[0]):
            for t in range(1, target.shape[1]):
                if target[b, t] != -100:
                    terms.append(-logp[b, t - 1, target[b, t]].item())
    got = language_model_loss(model, batches, torch.device("cpu"))
    assert got["tokens"] == len(terms) == 2 + 6 + 4
    assert got["loss"] == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(sum(terms) / len(terms)), rel=1e-5)


def test_centred_cosine_removes_a_shared_offset():
    torch.manual_seed(0)
    ko = torch.randn(50, 8)
    en = torch.randn(50, 8)  # unrelated
    offset = torch.full((8,), 100.0)
    m = alignment_metrics(ko + offset, en + offset)
    assert m["parallel_cos"] > 0.99 and m["random_cos"] > 0.99  # anisotropy: raw cosine near 1
    assert abs(m["centred_cos"]) < 0.2
    assert abs(m["gap"]) < 1e-3


def test_perfect_alignment_retrieves_everything():
    x = torch.randn(20, 16)
    m = alignment_metrics(x, 2 * x)
    assert m["retrieval_ko_en"] == 1.0 and m["retrieval_en_ko"] == 1.0
    assert m["parallel_cos"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- reference, written with loops


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def mean_vector(rows: list[list[float]]) -> list[float]:
    return [sum(r[d] for r in rows) / len(rows) for d in range(len(rows[0]))]


def reference_metrics(ko: list[list[float]], en: list[list[float]], ko_keys=None, en_keys=None) -> dict:
    """The definitions of alignment_metrics' docstring, one pair at a time."""
    n = len(ko)
    ko_keys = list(range(n)) if ko_keys is None else ko_keys
    en_keys = list(range(n)) if en_keys is None else en_keys

    def equivalent(i, j):
        return i == j or ko_keys[i] == ko_keys[j] or en_keys[i] == en_keys[j]

    c = [[cos(ko[i], en[j]) for j in range(n)] for i in range(n)]
    mk, me = mean_vector(ko), mean_vector(en)
    ko_c = [[x - m for x, m in zip(r, mk)] for r in ko]
    en_c = [[x - m for x, m in zip(r, me)] for r in en]
    cc = [[cos(ko_c[i], en_c[j]) for j in range(n)] for i in range(n)]
    random_pairs = [(i, j) for i in range(n) for j in range(n) if not equivalent(i, j)]
    parallel = sum(c[i][i] for i in range(n)) / n
    random = sum(c[i][j] for i, j in random_pairs) / len(random_pairs) if random_pairs else math.nan

    def first_argmax(values):
        best = 0
        for k, v in enumerate(values):
            if v > values[best]:
                best = k
        return best

    hits_ko_en = sum(equivalent(i, first_argmax(c[i])) for i in range(n))
    hits_en_ko = sum(equivalent(first_argmax([c[i][j] for i in range(n)]), j) for j in range(n))
    return {
        "parallel_cos": parallel,
        "random_cos": random,
        "gap": parallel - random,
        "centred_cos": sum(cc[i][i] for i in range(n)) / n,
        "centred_random_cos": (sum(cc[i][j] for i, j in random_pairs) / len(random_pairs)
                               if random_pairs else math.nan),
        "retrieval_ko_en": hits_ko_en / n,
        "retrieval_en_ko": hits_en_ko / n,
    }


@pytest.mark.parametrize("with_keys", [False, True])
def test_alignment_metrics_equal_the_loop_reference(with_keys):
    """Random vectors with a different offset per language, and texts that repeat on one side or both."""
    g = torch.Generator().manual_seed(0)
    n, d = 14, 6
    ko = torch.randn(n, d, generator=g) + torch.randn(d, generator=g) * 3
    en = 0.7 * ko + torch.randn(n, d, generator=g) + torch.randn(d, generator=g) * 3
    # rows 0/1 the same pair twice, rows 2/3 one Korean sentence with two translations, rows 4/5/6 three
    # Korean sentences with one English text (e.g. "Yes."), rows 7/8 again the same pair; keys as token tuples
    ko_keys = [(1, 2), (1, 2), (3,), (3,), (4,), (5,), (6,), (7, 7), (7, 7)] + [(100 + i,) for i in range(5)]
    en_keys = ["a", "a", "b", "c", "yes", "yes", "yes", "d", "d"] + [f"e{i}" for i in range(5)]
    keys = (ko_keys, en_keys) if with_keys else (None, None)
    got = alignment_metrics(ko, en, *keys)
    want = reference_metrics(ko.tolist(), en.tolist(), *keys)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
    if with_keys:  # the keys change what counts as random and as a hit
        plain = alignment_metrics(ko, en)
        assert got["random_cos"] != pytest.approx(plain["random_cos"], abs=1e-4)
        assert got["centred_random_cos"] != pytest.approx(plain["centred_random_cos"], abs=1e-4)


def test_perfect_encoder_with_duplicate_texts_scores_one():
    """A perfect encoder (a translation and a repeated text get the same vector as their original) retrieves
    everything, though the validation set repeats pairs and has a sentence with two translations."""
    g = torch.Generator().manual_seed(1)
    meaning = torch.randn(6, 16, generator=g)
    # (ko text, en text, meaning): row 1 repeats row 0, row 3 translates row 2's Korean differently
    rows = [("가", "a", 0), ("가", "a", 0), ("나", "b", 1), ("나", "b2", 1), ("다", "c", 2), ("라", "d", 3),
            ("마", "e", 4), ("바", "f", 5), ("다", "c", 2)]
    ko = torch.stack([meaning[m] for _, _, m in rows])
    en = torch.stack([meaning[m] * 2 + (0.01 * torch.randn(16, generator=g) if e == "b2" else 0) for _, e, m in rows])
    m = alignment_metrics(ko, en, [k for k, _, _ in rows], [e for _, e, _ in rows])
    assert m["retrieval_ko_en"] == 1.0 and m["retrieval_en_ko"] == 1.0
    # random pairs are the pairs of different meanings only: their mean cosine is that of the meanings
    distinct = [(i, j) for i in range(len(rows)) for j in range(len(rows)) if rows[i][2] != rows[j][2]]
    c = F.normalize(ko, dim=-1) @ F.normalize(en, dim=-1).T
    assert m["random_cos"] == pytest.approx(sum(c[i, j].item() for i, j in distinct) / len(distinct), abs=1e-6)
    assert m["parallel_cos"] == pytest.approx(1.0, abs=1e-4)
    plain = alignment_metrics(ko, en)  # without keys, the repeats count as misses (the old behaviour)
    assert plain["retrieval_ko_en"] < 1.0 and plain["retrieval_en_ko"] < 1.0


def test_centring_is_per_language():
    """A constant Korean/English offset is not misalignment: translations that differ by one fixed vector
    have centred cosine 1; unrelated vectors with different offsets have centred cosine near 0, as chance."""
    g = torch.Generator().manual_seed(2)
    ko = torch.randn(40, 8, generator=g)
    offset = torch.randn(8, generator=g) * 10
    m = alignment_metrics(ko, ko + offset)
    assert m["centred_cos"] == pytest.approx(1.0, abs=1e-5)
    assert abs(m["centred_random_cos"]) < 0.1
    unrelated = alignment_metrics(ko + offset, torch.randn(40, 8, generator=g) - offset)
    assert abs(unrelated["centred_cos"]) < 0.2 and abs(unrelated["centred_random_cos"]) < 0.1


def test_alignment_metrics_key_errors_and_all_duplicates():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="ko_keys has 3 entries for 4 rows"):
        alignment_metrics(x, x, ko_keys=["a", "b", "c"])
    m = alignment_metrics(x, x, ko_keys=["a"] * 4)  # one text four times: no random pair
    assert math.isnan(m["random_cos"]) and math.isnan(m["centred_random_cos"]) and math.isnan(m["gap"])
    assert m["retrieval_ko_en"] == 1.0


# ----------------------------------------------------------------------------- validation sample


def counts_by_source(sources: list[str], idx: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in idx:
        out[sources[i]] = out.get(sources[i], 0) + 1
    return out


@pytest.mark.parametrize("sizes, n, expected", [
    ({"a": 50, "b": 30, "c": 20}, 10, {"a": 5, "b": 3, "c": 2}),  # exact shares
    # shares 3.5 / 1.0 / 0.5: the one row left goes to a (tie of remainders with c, a is larger); c then takes
    # one from a, the source most over its share, since n >= 3 sources
    ({"a": 7, "b": 2, "c": 1}, 5, {"a": 3, "b": 1, "c": 1}),
    ({"a": 5, "b": 3, "c": 2}, 2, {"a": 1, "b": 1}),  # n < sources: shares 1.0 / 0.6 / 0.4, no minimum
    ({"a": 997, "b": 2, "c": 1}, 10, {"a": 8, "b": 1, "c": 1}),  # shares 9.97 / 0.02 / 0.01: both small kept
])
def test_sample_indices_allocation_by_hand(sizes, n, expected):
    # the sources interleaved through the file, as a shuffled validation file would be
    sources = [s for k in range(max(sizes.values())) for s in sorted(sizes) if k < sizes[s]]
    idx = sample_indices(sources, n, seed=3)
    assert counts_by_source(sources, idx) == expected
    assert idx == sorted(set(idx)) and len(idx) == n


def test_sample_indices_seeded_over_the_whole_file():
    sources = ["news"] * 600 + ["chat"] * 300 + ["law"] * 100
    a = sample_indices(sources, 100, seed=7)
    assert a == sample_indices(list(sources), 100, seed=7)  # same (sources, n, seed): same sample
    assert a != sample_indices(sources, 100, seed=8)
    assert counts_by_source(sources, a) == {"news": 60, "chat": 30, "law": 10}
    news = [i for i in a if i < 600]
    assert min(news) < 100 and max(news) > 500  # spread over the source's rows, not its first ones
    assert sample_indices(sources[:5], 10, seed=0) == [0, 1, 2, 3, 4]  # n >= rows: all of them
    assert sample_indices(sources, 0, seed=0) == []
    with pytest.raises(ValueError, match=">= 0"):
        sample_indices(sources, -1, seed=0)
    # within a source every row is equally likely: 400 seeds x 5 of 20 rows = 100 expected draws per row
    hits = [0] * 20
    for seed in range(400):
        for i in sample_indices(["x"] * 20, 5, seed):
            hits[i] += 1
    assert min(hits) > 60 and max(hits) < 140


def reference_allocation(sizes: dict[str, int], n: int) -> dict[str, int]:
    """sample_indices' allocation from its docstring, one row at a time."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    count = {s: n * sizes[s] // total for s in sizes}
    given = set()
    while sum(count.values()) < n:
        best = None
        for s in sorted(sizes):
            if s in given:
                continue
            if best is None or (n * sizes[s] % total, sizes[s]) > (n * sizes[best] % total, sizes[best]):
                best = s
        count[best] += 1
        given.add(best)

    def over_share(d):  # how far d's count exceeds its exact share n N_d / N; ties to the larger source
        return (Fraction(count[d]) - Fraction(n * sizes[d], total), sizes[d], d)

    if n >= len(sizes):
        for s in sorted(sizes):
            if count[s] == 0:
                donor = None
                for d in sorted(sizes):
                    if count[d] >= 2 and (donor is None or over_share(d) > over_share(donor)):
                        donor = d
                count[donor] -= 1
                count[s] = 1
    return {s: c for s, c in count.items() if c}


def test_sample_indices_equal_the_reference_allocation():
    import random

    rng = random.Random(0)
    for _ in range(300):
        k = rng.randint(1, 6)
        sources = [f"s{rng.randint(0, k - 1)}" for _ in range(rng.randint(1, 80))]
        n = rng.randint(0, len(sources) + 3)
        idx = sample_indices(sources, n, seed=rng.randint(0, 1000))
        sizes = counts_by_source(sources, list(range(len(sources))))
        assert counts_by_source(sources, idx) == reference_allocation(sizes, n), (sizes, n)
        assert len(idx) == min(n, len(sources)) and idx == sorted(set(idx))
        if n >= len(sizes):
            assert set(counts_by_source(sources, idx)) == set(sizes)  # every source seen


def test_a_non_finite_loss_stops_the_run_naming_the_step():
    require_finite({"cl_loss": 2.0, "lr": float("nan")}, 10)  # only losses are checked
    with pytest.raises(FloatingPointError, match=r"step 20: cl_loss=nan"):
        require_finite({"cl_loss": float("nan"), "lm_loss": 1.0}, 20)
    with pytest.raises(FloatingPointError, match=r"loss=inf"):
        require_finite({"loss": float("inf")}, 30)
