import pytest
import torch

from common.metrics import alignment_metrics


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
