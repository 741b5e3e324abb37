"""The reference's loss formulas (docs/reference.md §9), written independently in PyTorch as a test oracle.

Written in the reference's own style (boolean indexing for hard mining, nn.SoftMarginLoss, F.cross_entropy,
per-channel min-max MSE, L1) so the JAX losses are checked against a second formulation, not a copy of themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _t(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.asarray(x))


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m, n = x.size(0), y.size(0)
    xx = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n)
    yy = torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
    dist = xx + yy
    dist = dist - 2 * (x @ y.t())
    return dist.clamp(min=1e-12).sqrt()


def reference_triplet(feat: torch.Tensor, labels: torch.Tensor, margin: float | None = None) -> torch.Tensor:
    """Batch-hard triplet with boolean indexing (needs equal counts per identity), clamp 1e-8, soft margin."""
    dist_mat = euclidean_dist(feat, feat)
    n = dist_mat.size(0)
    is_pos = labels.expand(n, n).eq(labels.expand(n, n).t())
    is_neg = labels.expand(n, n).ne(labels.expand(n, n).t())
    dist_ap = torch.max(dist_mat[is_pos].contiguous().view(n, -1), 1)[0]
    dist_an = torch.min(dist_mat[is_neg].contiguous().view(n, -1), 1)[0]
    dist_ap = dist_ap.clamp(min=1e-8)
    dist_an = dist_an.clamp(min=1e-8)
    y = torch.ones_like(dist_an)
    if margin is None:
        return torch.nn.SoftMarginLoss()(dist_an - dist_ap, y)
    return torch.nn.MarginRankingLoss(margin=margin)(dist_an, dist_ap, y)


def reference_seg(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-channel min-max over (batch, y, x) for both tensors, then MSE averaged over the channels."""
    losses = []
    for c in range(output.shape[-1]):
        o = output[..., c]
        t = target[..., c]
        o = (o - o.min()) / (o.max() - o.min() + 1e-8)
        t = (t - t.min()) / (t.max() - t.min() + 1e-8)
        losses.append(F.mse_loss(o, t))
    return torch.stack(losses).mean()


def reference_total_loss(
    scores: Sequence, feats: Sequence, pids, targets
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference's training loss (docs/reference.md §9) from its 15 scores and 18 feats; returns (loss, parts)."""
    scores = [_t(s).float() for s in scores]
    feats = [_t(f).float() for f in feats]
    pids = _t(pids).long()
    targets = _t(targets).float()

    # make_loss: 'softmax_triplet', no label smoothing, score/feat are lists.
    id_loss = [F.cross_entropy(s, pids) for s in scores[4:8]]
    id_loss = sum(id_loss) / len(id_loss)
    id_loss_parts = [F.cross_entropy(s, pids) for s in scores[8:]]
    id_loss = 0.5 * id_loss + 0.5 * 0.6 * sum(id_loss_parts)
    id_loss_glob = [F.cross_entropy(s, pids) for s in scores[0:4]]
    id_loss = id_loss + 0.5 * (sum(id_loss_glob) / len(id_loss_glob))

    tri = [reference_triplet(f, pids) for f in feats[7:11]]
    tri = sum(tri) / len(tri)
    tri_parts = [reference_triplet(f, pids) for f in feats[11:]]
    tri = 0.5 * tri + 0.5 * 0.6 * sum(tri_parts)
    tri = tri + 0.5 * reference_triplet(feats[0], pids)
    tri = tri + sum(reference_triplet(f, pids) for f in feats[4:7])

    # processor: semantic (seg) and recovery terms.
    seg = reference_seg(feats[1], targets)
    rec = torch.mean(torch.abs(feats[2] - feats[3]))
    loss = 1.0 * id_loss + 1.0 * tri + 0.25 * seg + 1.0 * rec
    return loss, {"id": id_loss, "triplet": tri, "seg": seg, "rec": rec}
