"""The modified LOUPE NetVLAD of the original CVM-Net code (`loupe.py`, spec section 3.1).

Differences from the NetVLAD paper that the original makes and this module keeps:
  * local features are L2-normalised over channels before anything else;
  * the soft-assignment is a free linear map with bias (not tied to the centroids), softmax over K
    with no temperature;
  * the VLAD matrix is laid out feature-major, [b, D, K], so the flattened index is d*K + k
    (this is what the authors' 32768-row FC / projection matrices are indexed by);
  * no ghost clusters, no context gating, no batch-norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# PyTorch counterpart of TF's l2_normalize(eps=1e-12 on the squared norm).
L2_EPS = 1e-6


class NetVLAD(nn.Module):
    """NetVLAD pooling of a (b, D, H, W) feature map into a (b, D*K) or (b, proj_dim) vector.

    Parameters (names follow the TF variables, shapes the TF layout where it matters):
      assignment: Linear(D -> K, bias)       = cluster_weights^T [K, D] and cluster_biases [K]
      centroids:  [D, K]                     = cluster_weights2 squeezed
      projection: Linear(D*K -> proj, no bias) = hidden1_weights^T, only when proj_dim is given
    Initialisers as the original: assignment weights/bias and centroids ~ N(0, 1/sqrt(D)),
    projection ~ N(0, 1/sqrt(K)).
    """

    def __init__(self, feature_dim: int, num_clusters: int, proj_dim: int | None = None) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.num_clusters = num_clusters
        self.assignment = nn.Linear(feature_dim, num_clusters)
        self.centroids = nn.Parameter(torch.empty(feature_dim, num_clusters))
        self.projection = (
            nn.Linear(feature_dim * num_clusters, proj_dim, bias=False) if proj_dim is not None else None
        )
        self.reset_parameters()

    @property
    def out_dim(self) -> int:
        """Length of the output vector: proj_dim, or D*K without projection."""
        if self.projection is not None:
            return self.projection.out_features
        return self.feature_dim * self.num_clusters

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.feature_dim)
        nn.init.normal_(self.assignment.weight, std=std)
        nn.init.normal_(self.assignment.bias, std=std)
        nn.init.normal_(self.centroids, std=std)
        if self.projection is not None:
            nn.init.normal_(self.projection.weight, std=1.0 / math.sqrt(self.num_clusters))

    def vlad(self, x: torch.Tensor) -> torch.Tensor:
        """(b, D, H, W) local features -> (b, D*K) intra- and globally L2-normalised VLAD,
        flattened feature-major (index d*K + k)."""
        if x.dim() != 4 or x.shape[1] != self.feature_dim:
            raise ValueError(f"NetVLAD expects (b, {self.feature_dim}, H, W) features, got {tuple(x.shape)}")
        x = F.normalize(x.flatten(2), dim=1, eps=L2_EPS)  # (b, D, N), unit length per location
        logits = self.assignment(x.transpose(1, 2))  # (b, N, K)
        a = torch.softmax(logits, dim=2)
        # V[d, k] = sum_n a_nk x_nd - (sum_n a_nk) C[d, k]
        v = torch.bmm(x, a) - a.sum(dim=1).unsqueeze(1) * self.centroids.unsqueeze(0)  # (b, D, K)
        v = F.normalize(v, dim=1, eps=L2_EPS)  # intra-normalisation over D for each cluster
        return F.normalize(v.flatten(1), dim=1, eps=L2_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, D, H, W) -> (b, out_dim): the VLAD vector, projected (unnormalised) if configured."""
        v = self.vlad(x)
        return self.projection(v) if self.projection is not None else v
