"""IRN pair geometry: search offsets, straight paths, path affinities, pair labels and the loss.

Conventions used throughout (pure torch, no state):

* An *offset* ``(dy, dx)`` links a source pixel ``(y, x)`` to the destination ``(y + dy, x + dx)``.
  Only one of each ``+/-`` pair is kept (the half plane ``dy > 0`` or ``dy == 0 and dx > 0``);
  the other direction is the same pair seen from the destination.
* Per-pair tensors have shape ``(B, n_offsets, H, W)``: entry ``[b, k, y, x]`` is the pair whose
  source is ``(y, x)`` and whose offset is ``search_offsets(radius)[k]``. Every pixel is a source,
  so ``H' = H`` and ``W' = W``; pairs whose destination leaves the image have affinity 0 and are
  never used as labels.
* The path between the two pixels follows IRN: the pixels of the offset's bounding box whose
  distance to the line through 0 and the offset is < 1; the affinity of a pair is
  ``1 - max(edge)`` over the path *including both endpoints*.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "affinity_loss",
    "pair_affinity",
    "pair_counts",
    "pair_labels",
    "path_pixels",
    "search_offsets",
]

IGNORE = 255
_EPS = 1e-5
PAIR_KINDS: tuple[str, ...] = ("bg_pos", "fg_pos", "neg")
# What the loss loses when a kind of pair is absent (for the training stage's warnings).
PAIR_ROLES: dict[str, str] = {
    "bg_pos": "nothing teaches 'no edge' inside the background",
    "fg_pos": "nothing teaches 'no edge' inside objects",
    "neg": "nothing teaches where the edges are (a foreground pixel and a background or "
           "other-class pixel within the radius), so the random walk spreads seeds across "
           "object borders",
}


def search_offsets(radius: int) -> list[tuple[int, int]]:
    """The half-plane offsets (dy, dx) with 0 < dy^2 + dx^2 < radius^2, sorted by (dy, dx).

    Of each pair ``(dy, dx)`` / ``(-dy, -dx)`` only the one with ``dy > 0`` or ``dy == 0 and
    dx > 0`` is returned. Radius 5 gives 34 offsets (68 neighbours), radius 10 gives 152.
    """
    if radius < 2:
        raise ValueError(f"radius must be >= 2 (no offsets strictly inside {radius})")
    reach = radius - 1  # largest |component| with d^2 < radius^2
    return [(dy, dx)
            for dy in range(reach + 1)
            for dx in range(-reach, reach + 1)
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius]


def path_pixels(dy: int, dx: int) -> list[tuple[int, int]]:
    """Pixels (origin excluded, destination included) of IRN's straight path from 0 to (dy, dx).

    A pixel ``(y, x)`` of the bounding box of 0 and ``(dy, dx)`` is on the path when its distance
    to the line through 0 and ``(dy, dx)`` is < 1, i.e. ``(dy*x - dx*y)^2 < dy^2 + dx^2``.
    Sorted from the origin outwards (by ``|y| + |x|``, then ``(y, x)``); the origin ``(0, 0)``
    always satisfies the rule and is left out, so callers add it themselves.
    """
    length_sq = dy * dy + dx * dx
    if length_sq == 0:
        raise ValueError("the offset (0, 0) has no path")
    ys = range(min(0, dy), max(0, dy) + 1)
    xs = range(min(0, dx), max(0, dx) + 1)
    pts = [(y, x) for y in ys for x in xs
           if (y, x) != (0, 0) and (dy * x - dx * y) ** 2 < length_sq]
    return sorted(pts, key=lambda p: (abs(p[0]) + abs(p[1]), p))


def _shifted(padded: torch.Tensor, dy: int, dx: int, size: tuple[int, int],
             margin: int) -> torch.Tensor:
    """View of a (..., H + margin, W + 2 margin) padded map moved so [y, x] reads (y+dy, x+dx)."""
    h, w = size
    return padded[..., dy:dy + h, margin + dx:margin + dx + w]


def pair_affinity(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinity 1 - max(edge over the path) of every (pixel, offset) pair: (B, n_offsets, H, W).

    ``edge`` is a (B, 1, H, W) boundary probability in [0, 1]. The map is padded with 1.0 by
    ``radius - 1`` pixels left, right and below (offsets never point up), so a pair whose
    destination leaves the image gets affinity 0. The maxima are found on shifted views without
    autograd (no loop over pixels); the result is then gathered from ``edge`` at each path's
    argmax, so it is differentiable (gradient to the first maximum along the path, origin first)
    while the graph keeps one int64 index per pair instead of every path pixel.
    """
    if edge.dim() != 4 or edge.shape[1] != 1:
        raise ValueError(f"edge must be (B, 1, H, W), got {tuple(edge.shape)}")
    offsets = search_offsets(radius)
    margin = radius - 1
    b, _, h, w = edge.shape
    padded = F.pad(edge[:, 0], (margin, margin, 0, margin), value=1.0)
    row = w + 2 * margin  # flat index of padded[y, x] is y * row + x
    origin = (torch.arange(h, device=edge.device)[:, None] * row + margin
              + torch.arange(w, device=edge.device)[None, :]).expand(b, h, w)
    with torch.no_grad():
        argmax = []
        for dy, dx in offsets:
            best, where = edge[:, 0], origin
            for py, px in path_pixels(dy, dx):
                value = _shifted(padded, py, px, (h, w), margin)
                better = value > best
                best = torch.where(better, value, best)
                where = torch.where(better, origin + (py * row + px), where)
            argmax.append(where)
        index = torch.stack(argmax, 1).reshape(b, -1)
    picked = padded.reshape(b, -1).gather(1, index)
    return 1.0 - picked.view(b, len(offsets), h, w)


def pair_labels(labels: torch.Tensor, radius: int) -> dict[str, torch.Tensor]:
    """IRN pair classes from (B, H, W) uint8 labels (255 = unknown), each (B, n_offsets, H, W) bool.

    ``bg_pos``: both pixels 0; ``fg_pos``: the same label > 0; ``neg``: different labels, neither
    255. Pairs with a 255 end or a destination outside the image are in none of the three.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got {tuple(labels.shape)}")
    margin = radius - 1
    size = (labels.shape[-2], labels.shape[-1])
    padded = F.pad(labels, (margin, margin, 0, margin), value=IGNORE)
    src = labels.unsqueeze(1)
    dst = torch.stack([_shifted(padded, dy, dx, size, margin)
                       for dy, dx in search_offsets(radius)], 1)
    known = (src != IGNORE) & (dst != IGNORE)
    same = src == dst
    return {
        "bg_pos": known & same & (src == 0),
        "fg_pos": known & same & (src != 0),
        "neg": known & ~same,
    }


def pair_counts(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """How many pairs of each kind :func:`pair_labels` found: (3,) int64 counts in the order of
    :data:`PAIR_KINDS` (bg_pos, fg_pos, neg), summed over the batch, offsets and pixels.

    The affinity loss learns "no edge" from the positives and "edge" from the negatives only; a
    kind with no pair contributes nothing (:func:`affinity_loss`), which the training stage
    reports (IRN, Ahn et al. 2019: the boundary map is learnt from these pairs alone).
    """
    return torch.stack([masks[k].sum() for k in PAIR_KINDS])


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` over ``mask`` (0 when empty) and a 0/1 flag: did it have pairs."""
    count = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / count.clamp(min=1), (count > 0).to(values.dtype)


def affinity_loss(aff: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """IRN's affinity loss over the masked pairs; returns bg_pos, fg_pos, pos, neg and total.

    ``bg_pos``/``fg_pos`` = mean of -log(aff + 1e-5) over their pairs, ``neg`` = mean of
    -log(1 + 1e-5 - aff) over the negatives (means over the whole batch, as IRN),
    ``pos = (bg_pos + fg_pos) / 2`` and ``total = (pos + neg) / 2``. Unlike IRN (which divides
    by 2 regardless), a term with no pairs is 0 and is left out of the average it belongs to:
    with no fg pairs ``pos = bg_pos``, with no negatives ``total = pos``, with nothing at all
    ``total = 0`` (still attached to the graph). No host synchronisation.
    """
    pos_log = -torch.log(aff + _EPS)
    neg_log = -torch.log(1.0 + _EPS - aff)
    bg, has_bg = _masked_mean(pos_log, masks["bg_pos"])
    fg, has_fg = _masked_mean(pos_log, masks["fg_pos"])
    neg, has_neg = _masked_mean(neg_log, masks["neg"])
    pos = (bg * has_bg + fg * has_fg) / (has_bg + has_fg).clamp(min=1)
    has_pos = torch.maximum(has_bg, has_fg)
    total = (pos * has_pos + neg * has_neg) / (has_pos + has_neg).clamp(min=1)
    return {"bg_pos": bg, "fg_pos": fg, "pos": pos, "neg": neg, "total": total}
