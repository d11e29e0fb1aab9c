"""Contrastive losses.

InfoNCE over a batch of parallel pairs, with the negatives gathered from every process.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed._functional_collectives import wait_tensor

try:  # torch >= 2.13; older releases have the same collective under its former name
    from torch.distributed._functional_collectives import all_gather_single_autograd
except ImportError:
    from torch.distributed._functional_collectives import all_gather_tensor_autograd as all_gather_single_autograd


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B, D) from every process along dim 0, keeping the autograd graph.

    ``accelerator.gather`` is not differentiable: gradients would stop at the other ranks' rows and
    every rank would push only its own vectors. Here the backward of the all-gather sums each rank's
    gradient for row block r and hands it back to rank r, so after DDP averages the parameter
    gradients, every process holds the gradient of the mean of the per-process losses, i.e. the
    gradient of the single-process loss over the global batch.

    Every process must pass the same B (drop or pad the last batch). One process: returns ``x``.
    Returns (world_size * B, D), rank r's rows at [r * B, (r + 1) * B).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return wait_tensor(all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD))


def info_nce(
    anchors: Tensor,
    candidates: Tensor,
    temperature: float = 0.05,
    symmetric: bool = True,
) -> Tensor:
    """InfoNCE between parallel rows of ``anchors`` and ``candidates``, in-batch negatives from all processes.

    Shapes: ``anchors`` (B, D) and ``candidates`` (B, D) on this process, row i of one the translation
    of row i of the other (Korean anchors, English candidates in stage 1). With W processes,
    G = W * B pairs take part, and this process's rows are global rows ``offset + i`` with
    ``offset = rank * B``.

    With a = normalize(anchor), c = normalize(candidate) and tau the temperature, the loss of anchor i is

        l_i = -log( exp(a_i . c_{offset+i} / tau) / sum_{j < G} exp(a_i . c_j / tau) )

    i.e. cross-entropy over the (B, G) logit matrix with labels ``offset + arange(B)``.
    ``symmetric=True`` averages this with the same loss in the other direction (candidates as anchors
    against all gathered anchors). The value returned is the mean over this process's B anchors;
    its mean over processes equals the single-process loss on the global batch, and so do the
    gradients once DDP has averaged them (see ``gather_with_grad``).

    The candidates may carry no gradient (a frozen English encoder): the loss then trains the
    anchor side only, through both directions when symmetric.
    """
    if anchors.shape != candidates.shape or anchors.dim() != 2:
        raise ValueError(f"anchors and candidates must both be (B, D); "
                         f"got {tuple(anchors.shape)} and {tuple(candidates.shape)}")
    a = F.normalize(anchors.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    batch = a.shape[0]
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(batch, device=a.device) + rank * batch

    all_c = gather_with_grad(c)
    loss = F.cross_entropy(a @ all_c.T / temperature, labels)
    if symmetric:
        all_a = gather_with_grad(a)
        loss = (loss + F.cross_entropy(c @ all_a.T / temperature, labels)) / 2
    return loss
