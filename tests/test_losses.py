import pytest
import torch
import torch.nn.functional as F

from common.losses import info_nce


def loop_info_nce(a, c, tau, symmetric):
    """Plain reference: for each anchor, -log softmax over all candidates at its own index."""
    def one_way(x, y):
        losses = []
        for i in range(len(x)):
            logits = torch.stack([F.cosine_similarity(x[i], y[j], dim=0) / tau for j in range(len(y))])
            losses.append(torch.logsumexp(logits, 0) - logits[i])
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


def test_one_directional_gives_no_gradient_to_frozen_candidates():
    a = torch.randn(4, 8, requires_grad=True)
    c = torch.randn(4, 8)  # a frozen English encoder's output
    info_nce(a, c, symmetric=True).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_info_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="anchors and candidates"):
        info_nce(torch.randn(4, 8), torch.randn(5, 8))
