"""The weighted soft-margin ranking loss of CVM-Net (original `train.py` `compute_loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_soft_margin_loss(
    grd: torch.Tensor,
    sat: torch.Tensor,
    alpha: float = 10.0,
    batch_size: int | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exhaustive in-batch soft-margin triplet loss, both directions.

    grd: (n, d) ground descriptors, sat: (n, d) satellite descriptors; row i of each is a pair.
    Distances d_ij = 2 - 2 <sat_i, grd_j> (squared Euclidean for unit vectors; for the
    unnormalised CVM-Net-II output a negated dot product, as in the original).
    ground->satellite: softplus(alpha (d_jj - d_ij)) for every anchor j and satellite i;
    satellite->ground: softplus(alpha (d_ii - d_ij)). Each direction is summed over all n^2
    entries (the n diagonal terms are the constant ln 2) and divided by N(N-1), where N is
    `batch_size` when given (the original divides by its global batch size even for a short
    batch) or n. Returns the scalar mean of the two directions.

    exclude: optional (n, n) bool, True at (i, j) when satellite i's tile also shows ground j
    (a semi-positive, `model.sampling.semi_positive_mask`). Such an entry is not a negative: it
    is left out of both directions (the ground->satellite term with anchor j and negative i, and
    the satellite->ground term with anchor i and negative j). The normaliser stays N(N-1), so a
    masked entry simply contributes nothing and the loss of an unmasked batch is unchanged.
    softplus is used instead of the literal log(1 + exp(.)), which overflows for CVM-Net-II.
    """
    if grd.dim() != 2 or grd.shape != sat.shape:
        raise ValueError(f"grd and sat must both be (n, d); got {tuple(grd.shape)} and {tuple(sat.shape)}")
    n = batch_size if batch_size is not None else grd.shape[0]
    if n < 2:
        raise ValueError(f"the loss needs at least 2 pairs per batch (N(N-1) > 0), got N={n}")
    dist = 2.0 - 2.0 * sat @ grd.T  # (n, n): row = satellite i, column = ground j
    pos = dist.diagonal()
    g2s = F.softplus(alpha * (pos.unsqueeze(0) - dist))
    s2g = F.softplus(alpha * (pos.unsqueeze(1) - dist))
    if exclude is not None:
        if exclude.shape != dist.shape:
            raise ValueError(f"exclude must be (n, n) = {tuple(dist.shape)}, got {tuple(exclude.shape)}")
        # The diagonal (the positives) is never excluded: it is the constant ln 2 of the original.
        keep = ~exclude.to(device=dist.device, dtype=torch.bool)
        keep.fill_diagonal_(True)
        g2s, s2g = g2s * keep, s2g * keep
    return (g2s.sum() + s2g.sum()) / (2.0 * n * (n - 1))
