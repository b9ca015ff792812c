"""IRN's random walk from edge-map affinities: a sparse implementation and the dense reference.

IRN (``propagate_to_edge``) builds, over the stride-4 pixels, the symmetric affinity matrix ``A``
with ones on the diagonal and, for each pair at an offset strictly inside ``radius``,
``1 - max(edge over the path)``; then ``A <- A ** beta`` (elementwise), ``T = A / column sums``,
``T <- T ** (2 ** exp_times)`` by repeated squaring, and ``rw = x @ T`` with
``x = cams * (1 - edge)``. The dense ``T`` is (HW x HW): ~0.55 GB and ~2.6e13 FLOP for a VOC
image. Because ``A`` is symmetric, one step ``x @ T`` is ``y[j] = sum_i A[j, i] x[i] / s[j]``
(``s`` the row = column sums), i.e. a product with the row-normalised sparse matrix ``D^-1 A``
(69 non-zeros a row at radius 5), so :func:`sparse_random_walk` applies it ``2 ** exp_times``
times as a stencil over the neighbour offsets: memory linear in the pixels and ~1e9 FLOP per
VOC image with two channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsss.refine.paths import pair_affinity, search_offsets

__all__ = ["dense_random_walk", "sparse_random_walk", "walk_steps"]


def _check(cams: torch.Tensor, edge: torch.Tensor, exp_times: int) -> None:
    """Raise ValueError unless cams is (C, h, w) and edge (h, w) on the same grid."""
    if cams.dim() != 3 or edge.dim() != 2 or cams.shape[-2:] != edge.shape:
        raise ValueError(f"need cams (C, h, w) and edge (h, w), got {tuple(cams.shape)} and "
                         f"{tuple(edge.shape)}")
    if exp_times < 0:
        raise ValueError(f"exp_times must be >= 0, got {exp_times}")


def _pair_entries(edge: torch.Tensor,
                  radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat (src, dst, affinity) of every half-plane pair with both pixels in the image."""
    h, w = edge.shape
    aff = pair_affinity(edge[None, None], radius)[0]  # (K, h, w), source-indexed
    index = torch.arange(h * w, device=edge.device).view(h, w)
    src, dst, val = [], [], []
    for k, (dy, dx) in enumerate(search_offsets(radius)):
        x0, x1 = max(0, -dx), w - max(0, dx)  # sources whose destination stays inside
        src.append(index[:h - dy, x0:x1].reshape(-1))
        dst.append(index[dy:, x0 + dx:x1 + dx].reshape(-1))
        val.append(aff[k, :h - dy, x0:x1].reshape(-1))
    return torch.cat(src), torch.cat(dst), torch.cat(val)


def _neighbour_weights(edge: torch.Tensor, radius: int,
                       beta: float) -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]:
    """Offsets e of all neighbours, weights A[q, q+e] / s[q] as (B, n_nbr, h, w), and 1 / s[q]
    as (B, 1, h, w), for a (B, h, w) edge map."""
    h, w = edge.shape[-2:]
    margin = radius - 1
    aff = pair_affinity(edge[:, None], radius).pow(beta)  # (B, K, h, w), 0 outside the image
    # pair (q, q+d) is stored at its source q: at q the weight of neighbour q-d is aff_d[q-d]
    padded = F.pad(aff, (margin, margin, margin, margin))
    offsets, maps = [], []
    for k, (dy, dx) in enumerate(search_offsets(radius)):
        offsets += [(dy, dx), (-dy, -dx)]
        maps += [aff[:, k], padded[:, k, margin - dy:margin - dy + h, margin - dx:margin - dx + w]]
    weights = torch.stack(maps, 1)
    sums = 1.0 + weights.sum(1, keepdim=True)  # the diagonal of A is 1
    return offsets, weights / sums, 1.0 / sums


def walk_steps(exp_times: int, side: int, reference_side: float | None) -> int:
    """Number of walk steps for an image of long side ``side`` pixels.

    ``reference_side`` None: ``2 ** exp_times`` (IRN's setting, for ~500-px VOC images, whatever
    the image). A number: ``max(1, round(2 ** exp_times * (side / reference_side) ** 2))``. The
    walk is a diffusion over the stride-4 grid: the mean squared distance a seed travels grows
    linearly with the step count, so reaching the same fraction of a smaller image takes steps
    in proportion to the square of its side (IRN's 256 steps over a 32 x 32 grid of a 128-px
    image spread each seed ~16x further, relative to the image, than over a VOC image's grid).

    Raises:
        ValueError: ``exp_times`` < 0, ``side`` < 1 or ``reference_side`` <= 0.
    """
    if exp_times < 0:
        raise ValueError(f"exp_times must be >= 0, got {exp_times}")
    if side < 1:
        raise ValueError(f"side must be >= 1 pixel, got {side}")
    if reference_side is None:
        return 2 ** exp_times
    if reference_side <= 0:
        raise ValueError(f"reference_side must be > 0, got {reference_side}")
    return max(1, round(2 ** exp_times * (side / reference_side) ** 2))


@torch.no_grad()
def sparse_random_walk(cams: torch.Tensor, edge: torch.Tensor, beta: float, exp_times: int,
                       radius: int, steps: int | None = None) -> torch.Tensor:
    """IRN random walk of (C, h, w) maps over a (h, w) edge map, as 2**exp_times sparse steps
    (or ``steps`` steps when given, e.g. from :func:`walk_steps`).

    Same result as :func:`dense_random_walk` (up to rounding). Each step is
    ``y[q] = (x[q] + sum_e A[q, q+e] x[q+e]) / s[q]`` over the ``2 * len(search_offsets(radius))``
    neighbour offsets ``e``, computed with shifted views of a zero-padded copy of ``x`` (one
    multiply-add per offset, no index tensors): memory ~(n_neighbours + 2 C) h w floats.
    Batched form: (B, C, h, w) maps over (B, h, w) edge maps walk each image independently in
    the same number of tensor operations (the per-operation overhead dominates small images).
    Returns the propagated maps in the shape, dtype and device of ``cams``; the caller
    upsamples, crops and normalises.
    """
    batched = cams.dim() == 4
    if batched:
        if edge.dim() != 3 or edge.shape[0] != cams.shape[0]:
            raise ValueError(f"batched walk needs cams (B, C, h, w) and edge (B, h, w), got "
                             f"{tuple(cams.shape)} and {tuple(edge.shape)}")
        for b in range(cams.shape[0]):
            _check(cams[b], edge[b], exp_times)
    else:
        _check(cams, edge, exp_times)
        cams, edge = cams[None], edge[None]
    b, c, h, w = cams.shape
    margin = radius - 1
    edge = edge.to(cams.dtype)
    offsets, weights, self_weight = _neighbour_weights(edge, radius, beta)
    weights = weights.unsqueeze(2)  # (B, n_nbr, 1, h, w): broadcast over the channels
    padded = cams.new_zeros(b, c, h + 2 * margin, w + 2 * margin)
    inner = padded[..., margin:margin + h, margin:margin + w]
    inner.copy_(cams * (1.0 - edge[:, None]))
    views = [padded[..., margin + ey:margin + ey + h, margin + ex:margin + ex + w]
             for ey, ex in offsets]
    y = torch.empty_like(inner, memory_format=torch.contiguous_format)
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for _ in range(2 ** exp_times if steps is None else steps):
        torch.mul(inner, self_weight, out=y)
        for k, view in enumerate(views):
            y.addcmul_(view, weights[:, k])
        inner.copy_(y)
    return y if batched else y[0]


@torch.no_grad()
def dense_random_walk(cams: torch.Tensor, edge: torch.Tensor, beta: float, exp_times: int,
                      radius: int) -> torch.Tensor:
    """IRN's dense formulation (HW x HW matrix, T ** (2**exp_times) by squaring); reference only.

    Needs ~2 (h*w)^2 floats of memory and 2 (h*w)^3 FLOP per squaring: use it in tests and the
    bench, never in the pipeline.
    """
    _check(cams, edge, exp_times)
    c, h, w = cams.shape
    n = h * w
    edge = edge.to(cams.dtype)
    src, dst, aff = _pair_entries(edge, radius)
    a = torch.zeros(n, n, dtype=cams.dtype, device=cams.device)
    a[src, dst] = aff
    a[dst, src] = aff
    a.diagonal().fill_(1.0)
    trans = a.pow_(beta)
    trans /= trans.sum(0, keepdim=True)  # T = A / column sums, in place
    for _ in range(exp_times):
        trans = trans @ trans
    x = (cams * (1.0 - edge)).reshape(c, n)
    return (x @ trans).reshape(c, h, w)
