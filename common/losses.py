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


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, without gradient (e.g. integer keys)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
    dist.all_gather_into_tensor(out, x.contiguous())
    return out


def duplicate_mask(anchor_keys: Tensor, candidate_keys: Tensor, offset: int = 0) -> Tensor:
    """(B, G) bool: the cells of the logit matrix that are false negatives and must not count.

    ``anchor_keys`` (B, 2) are this process's rows, ``candidate_keys`` (G, 2) the gathered global batch;
    column 0 identifies a row's Korean text and column 1 its English text (e.g. a hash of the token
    ids). Cell (i, j), j != offset + i, is masked when row j shares either text with row i: its
    candidate is then a translation of anchor i too (the same English sentence, or another
    translation of the same Korean one), and counting it as a negative would push the anchor away
    from a correct translation. The relation is symmetric, so one mask serves both directions.
    """
    same = (anchor_keys[:, None, :] == candidate_keys[None, :, :]).any(dim=-1)
    own = torch.arange(anchor_keys.shape[0], device=same.device) + offset
    same[torch.arange(anchor_keys.shape[0], device=same.device), own] = False
    return same


def info_nce(
    anchors: Tensor,
    candidates: Tensor,
    temperature: float = 0.05,
    symmetric: bool = True,
    pair_keys: Tensor | None = None,
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

    ``pair_keys`` (B, 2) int64, this process's rows (Korean text id, English text id): cells whose
    candidate shares a text with the anchor's pair are left out of the softmax denominator
    (``duplicate_mask``; the keys are gathered from all processes, so 2 processes still equal 1).
    """
    if anchors.shape != candidates.shape or anchors.dim() != 2:
        raise ValueError(f"anchors and candidates must both be (B, D); "
                         f"got {tuple(anchors.shape)} and {tuple(candidates.shape)}")
    a = F.normalize(anchors.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    batch = a.shape[0]
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(batch, device=a.device) + rank * batch

    mask = None
    if pair_keys is not None:
        mask = duplicate_mask(pair_keys, gather(pair_keys), offset=rank * batch)

    def one_way(x: Tensor, all_y: Tensor) -> Tensor:
        logits = x @ all_y.T / temperature
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        return F.cross_entropy(logits, labels)

    loss = one_way(a, gather_with_grad(c))
    if symmetric:
        loss = (loss + one_way(c, gather_with_grad(a))) / 2
    return loss
