"""IRN's objective for the boundary branch: the inter-pixel affinity loss on IR labels."""

from __future__ import annotations

import torch

from wsss.refine.paths import affinity_loss, pair_affinity, pair_counts, pair_labels


def irn_loss(edge_logits: torch.Tensor, labels: torch.Tensor, radius: int
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """IRN's affinity loss (Ahn et al. 2019) of stride-4 edge logits (B, 1, h, w)
    against stride-4 IR labels (B, h, w) (255 = unused), over the pixel pairs within ``radius``.

    The affinity of a pair is 1 - the maximum edge probability on the line between them
    (:func:`wsss.refine.paths.pair_affinity`); the terms are those of
    :func:`wsss.refine.paths.affinity_loss` (``bg_pos``, ``fg_pos``, ``pos``, ``neg``,
    ``total``).

    Returns:
        ``(terms, counts)``: the scalar loss terms and the pairs learnt from per kind,
        (3,) int64 in :data:`wsss.refine.paths.PAIR_KINDS` order.
    """
    aff = pair_affinity(torch.sigmoid(edge_logits.float()), radius)
    masks = pair_labels(labels, radius)
    return affinity_loss(aff, masks), pair_counts(masks)
