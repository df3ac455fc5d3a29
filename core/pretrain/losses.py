"""Losses of the contrastive / redundancy-reduction pretraining methods (SimCLR, MICLe, FG-SSL, multimodal).

* :func:`multi_positive_nt_xent`: NT-Xent with in-batch negatives where every view carries a *positive
  group* id; all other views of the same group are positives of an anchor (SupCon "L_out" form: the mean
  of the log-probabilities of its positives). With two views per group it is exactly SimCLR's NT-Xent;
  with several images of one case in a batch (MICLe), they pull together instead of pushing apart.
* :func:`barlow_twins_loss`: the cross-correlation of batch-standardised embeddings pushed to the
  identity, in the **canonical** Barlow Twins form ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``
  (Zbontar et al. 2021, lambda = 5e-3). FG-SSL's public code scales both terms by lambda^2
  (``lambda^2 * ||C - I||^2``), which only rescales the gradient by 2.5e-5 and weights invariance and
  redundancy equally; we keep the canonical weighting (redundancy term down-weighted by lambda) and let the
  learning rate do the scaling. Standardisation uses the biased batch variance (as BatchNorm does), so a
  perfectly correlated pair gives C_ii = 1 exactly.

DDP: both losses gather the embeddings of all ranks *with gradient* (``torch.distributed.nn``) when a
process group is running, so in-batch negatives and the cross-correlation cover the global batch and the
result equals one process with the same global batch (see the note in :func:`gather`).
Shapes: ``z`` [N, D] (N views), ``groups`` [N] int.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gather", "multi_positive_nt_xent", "nt_xent_metrics", "standardize", "cross_correlation",
           "barlow_twins_loss"]


def _world() -> int:
    return torch.distributed.get_world_size() if (torch.distributed.is_available()
                                                   and torch.distributed.is_initialized()) else 1


def gather(x: torch.Tensor, *, grad: bool = True) -> torch.Tensor:
    """Concatenate ``x`` over DDP ranks (rank order); identity without a process group.

    With ``grad`` the gather is differentiable: the backward sums, for each rank's shard, the gradients of
    every rank's loss. DDP then averages parameter gradients over ranks, which gives exactly the gradient
    of the mean of the per-rank losses (NT-Xent) or of the common loss (Barlow Twins).
    """
    if _world() == 1:
        return x
    if grad:
        import torch.distributed.nn.functional as dist_fn
        return torch.cat(dist_fn.all_gather(x), 0)
    parts = [torch.empty_like(x) for _ in range(_world())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def _local_offset(n_local: int) -> int:
    return torch.distributed.get_rank() * n_local if _world() > 1 else 0


def multi_positive_nt_xent(z: torch.Tensor, groups: torch.Tensor, temperature: float = 0.1, *,
                           normalize: bool = True, distributed: bool = True) -> torch.Tensor:
    """Multi-positive NT-Xent (SupCon numerator), mean over the local anchors that have a positive.

    For anchor i with positives P(i) = {p != i : g_p = g_i} among all views A (in-batch negatives)::

        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{a in A, a != i} exp(s_ia / t) )

    with s = cosine similarity. ``z`` [N, D], ``groups`` [N] (same id = positives). Anchors without any
    positive (a lone view) only serve as negatives of the others.
    """
    if z.ndim != 2 or groups.shape != (z.shape[0],):
        raise ValueError(f"expected z [N, D] and groups [N], got {tuple(z.shape)} and {tuple(groups.shape)}")
    z = z.float()
    if normalize:
        z = F.normalize(z, dim=1)
    n_local = z.shape[0]
    groups = groups.to(z.device)
    z_all = gather(z) if distributed else z                                  # [M, D]
    g_all = gather(groups, grad=False) if distributed else groups            # [M]
    off = _local_offset(n_local) if distributed else 0
    idx = torch.arange(n_local, device=z.device) + off                       # anchor positions in [0, M)
    logits = z @ z_all.T / temperature                                       # [N, M]
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(n_local, device=z.device), idx] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)         # [N, M]
    pos = (groups[:, None] == g_all[None, :]) & ~self_mask                   # [N, M]
    n_pos = pos.sum(1)                                                       # [N]
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        raise ValueError("no anchor has a positive in this batch (every group id is unique)")
    pos_log_prob = log_prob.masked_fill(~pos, 0.0).sum(1)                    # [N]
    per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos]
    return per_anchor.mean()


@torch.no_grad()
def nt_xent_metrics(z: torch.Tensor, groups: torch.Tensor) -> dict[str, float]:
    """Top-1 retrieval accuracy (nearest other view is a positive) and mean positive/negative cosine."""
    z = F.normalize(z.float(), dim=1)
    sim = z @ z.T
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    pos = (groups[:, None] == groups[None, :]) & ~eye
    neg = (groups[:, None] != groups[None, :])
    nearest = sim.masked_fill(eye, float("-inf")).argmax(1)
    has_pos = pos.any(1)
    acc = pos[torch.arange(n, device=z.device), nearest][has_pos].float().mean() if has_pos.any() else z.new_tensor(0.)
    out = {"pos_acc": float(acc)}
    if pos.any():
        out["pos_sim"] = float(sim[pos].mean())
    if neg.any():
        out["neg_sim"] = float(sim[neg].mean())
    return out


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-dimension batch standardisation: (z - mean) / sqrt(biased var + eps), over dim 0."""
    mean = z.mean(0, keepdim=True)
    var = z.var(0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """C [D, D] = standardize(z1)^T standardize(z2) / N (entries in [-1, 1])."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two [N, D] tensors of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError("Barlow Twins needs a batch of at least 2 samples")
    return standardize(z1.float(), eps).T @ standardize(z2.float(), eps) / z1.shape[0]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, *, eps: float = 1e-5,
                      distributed: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Canonical Barlow Twins: sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 over the (global) batch.

    Returns the loss and ``{"on_diag": ..., "off_diag": ...}`` (the two unweighted sums) for the log.
    """
    if distributed:
        z1, z2 = gather(z1), gather(z2)
    c = cross_correlation(z1, z2, eps)                                       # [D, D]
    diag = torch.diagonal(c)
    on = (1.0 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off, {"on_diag": float(on.detach()), "off_diag": float(off.detach())}
