import pytest
import torch
import torch.nn.functional as F

from common.losses import duplicate_mask, info_nce


def loop_info_nce(a, c, tau, symmetric, keys=None):
    """Plain reference: for each anchor, -log softmax over the candidates at its own index; with keys
    (Korean id, English id) per row, a candidate j != i sharing either id with row i is left out."""
    def one_way(x, y):
        losses = []
        for i in range(len(x)):
            js = [j for j in range(len(y)) if j == i or keys is None
                  or (keys[j][0] != keys[i][0] and keys[j][1] != keys[i][1])]
            logits = torch.stack([F.cosine_similarity(x[i], y[j], dim=0) / tau for j in js])
            losses.append(torch.logsumexp(logits, 0) - logits[js.index(i)])
        return torch.stack(losses).mean()
    return (one_way(a, c) + one_way(c, a)) / 2 if symmetric else one_way(a, c)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_info_nce_value_and_gradients_match_loop_reference(symmetric, tau):
    torch.manual_seed(0)
    a = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    c = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    loss = info_nce(a, c, temperature=tau, symmetric=symmetric)
    ga, gc = torch.autograd.grad(loss, [a, c])

    a2, c2 = a.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    ref = loop_info_nce(a2, c2, tau, symmetric)
    ra, rc = torch.autograd.grad(ref, [a2, c2])
    # info_nce computes in float32; the reference in float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(ga.to(ra.dtype), ra, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gc.to(rc.dtype), rc, rtol=1e-4, atol=1e-6)


def test_info_nce_is_low_for_aligned_and_chance_for_identical_rows():
    torch.manual_seed(0)
    x = torch.randn(8, 32)
    assert info_nce(x, x + 1e-3 * torch.randn_like(x)).item() < 0.01
    # all candidates identical: every ko->en softmax is uniform, loss = log B
    same = torch.ones(8, 32)
    loss = info_nce(torch.randn(8, 32), same, symmetric=False).item()
    assert loss == pytest.approx(torch.log(torch.tensor(8.0)).item(), rel=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_frozen_candidates_get_no_gradient_and_anchors_get_the_reference_one(symmetric):
    torch.manual_seed(0)
    a = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 8, dtype=torch.float64)  # a frozen English encoder's output: no graph
    info_nce(a, c, symmetric=symmetric).backward()
    assert c.grad is None
    a2 = a.detach().clone().requires_grad_()
    loop_info_nce(a2, c, 0.05, symmetric).backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-4, atol=1e-6)  # one direction differs from both


KEYS = torch.tensor([[0, 10], [1, 11], [0, 12], [2, 11], [3, 13], [4, 14]])  # rows 0/2 share Korean, 1/3 English


@pytest.mark.parametrize("symmetric", [True, False])
def test_duplicate_texts_are_not_negatives_against_loop_reference(symmetric):
    torch.manual_seed(1)
    a = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    c = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    loss = info_nce(a, c, temperature=0.1, symmetric=symmetric, pair_keys=KEYS)
    ga, gc = torch.autograd.grad(loss, [a, c])
    a2, c2 = a.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    ref = loop_info_nce(a2, c2, 0.1, symmetric, keys=KEYS.tolist())
    ra, rc = torch.autograd.grad(ref, [a2, c2])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(ga.to(ra.dtype), ra, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gc.to(rc.dtype), rc, rtol=1e-4, atol=1e-6)
    unmasked = info_nce(a, c, temperature=0.1, symmetric=symmetric)
    assert unmasked.item() > loss.item()  # the mask removes terms from the denominators


def test_duplicate_mask_cells_and_offset():
    mask = duplicate_mask(KEYS, KEYS)
    assert mask.sum().item() == 4 and mask[0, 2] and mask[2, 0] and mask[1, 3] and mask[3, 1]
    assert not mask.diagonal().any()
    # process 1 of 2 holds rows 3..5 of the global batch: its own positives sit at columns 3..5
    local = duplicate_mask(KEYS[3:], KEYS, offset=3)
    assert local.tolist()[0] == [False, True, False, False, False, False]  # row 3 shares English with row 1
    assert not local[:, 3:].diagonal().any()


def test_exact_duplicates_no_longer_floor_the_loss():
    """The audit's case in miniature: each pair 4 times in the batch. Unmasked, even a perfect encoder
    cannot go below log 4; masked, it can approach 0."""
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1).repeat(4, 1)
    keys = torch.arange(4).repeat(4)[:, None].expand(-1, 2)
    assert info_nce(x, x).item() > torch.log(torch.tensor(4.0)).item() - 1e-3
    assert info_nce(x, x, pair_keys=keys).item() < 0.01


def test_info_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="anchors and candidates"):
        info_nce(torch.randn(4, 8), torch.randn(5, 8))
