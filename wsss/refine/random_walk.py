"""IRN's random walk from edge-map affinities: a sparse implementation and the dense reference.

IRN (``propagate_to_edge``) builds, over the stride-4 pixels, the symmetric affinity matrix ``A``
with ones on the diagonal and, for each pair at an offset strictly inside ``radius``,
``1 - max(edge over the path)``; then ``A <- A ** beta`` (elementwise), ``T = A / column sums``,
``T <- T ** (2 ** exp_times)`` by repeated squaring, and ``rw = x @ T`` with
``x = cams * (1 - edge)``. The dense ``T`` is (HW x HW): ~0.55 GB and ~2.6e13 FLOP for a VOC
image. Because ``A`` is symmetric, one step ``x @ T`` is ``y[j] = sum_i A[j, i] x[i] / s[j]``
(``s`` the row = column sums), i.e. a product with the row-normalised sparse matrix ``D^-1 A``
(~69 non-zeros a row at radius 5), so :func:`sparse_random_walk` applies it ``2 ** exp_times``
times: memory linear in the pixels and ~2e9 FLOP per VOC image.
"""

from __future__ import annotations

import torch

from wsss.refine.paths import pair_affinity, search_offsets

__all__ = ["dense_random_walk", "sparse_random_walk"]


def _check(cams: torch.Tensor, edge: torch.Tensor, exp_times: int) -> None:
    """Raise ValueError unless cams is (C, h, w) and edge (h, w) on the same grid."""
    if cams.dim() != 3 or edge.dim() != 2 or cams.shape[-2:] != edge.shape:
        raise ValueError(f"need cams (C, h, w) and edge (h, w), got {tuple(cams.shape)} and "
                         f"{tuple(edge.shape)}")
    if exp_times < 0:
        raise ValueError(f"exp_times must be >= 0, got {exp_times}")


def _pair_entries(edge: torch.Tensor, radius: int,
                  beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat (src, dst, affinity, affinity ** beta) of every in-image half-plane pair."""
    h, w = edge.shape
    aff = pair_affinity(edge[None, None], radius)[0]  # (K, h, w), source-indexed
    index = torch.arange(h * w, device=edge.device).view(h, w)
    src, dst, val = [], [], []
    for k, (dy, dx) in enumerate(search_offsets(radius)):
        x0, x1 = max(0, -dx), w - max(0, dx)  # sources whose destination stays inside
        src.append(index[:h - dy, x0:x1].reshape(-1))
        dst.append(index[dy:, x0 + dx:x1 + dx].reshape(-1))
        val.append(aff[k, :h - dy, x0:x1].reshape(-1))
    a = torch.cat(val)
    return torch.cat(src), torch.cat(dst), a, a.pow(beta)


@torch.no_grad()
def sparse_random_walk(cams: torch.Tensor, edge: torch.Tensor, beta: float = 10,
                       exp_times: int = 8, radius: int = 5) -> torch.Tensor:
    """IRN random walk of (C, h, w) maps over a (h, w) edge map, as 2**exp_times sparse steps.

    Same result as :func:`dense_random_walk` (up to rounding) with a CSR matrix of
    ``h*w*(2*len(search_offsets(radius)) + 1)`` entries instead of a dense (h*w)^2 one. Returns the
    propagated (C, h, w) maps in the dtype and on the device of ``cams``; the caller upsamples,
    crops and normalises.
    """
    _check(cams, edge, exp_times)
    c, h, w = cams.shape
    n = h * w
    edge = edge.to(cams.dtype)
    src, dst, _, val = _pair_entries(edge, radius, beta)
    diag = torch.arange(n, device=cams.device)
    rows = torch.cat([src, dst, diag])
    cols = torch.cat([dst, src, diag])
    vals = torch.cat([val, val, torch.ones(n, dtype=val.dtype, device=val.device)])
    sums = torch.zeros(n, dtype=vals.dtype, device=vals.device).index_add_(0, rows, vals)
    # P = D^-1 A (rows sum to 1); x @ T == (P @ x^T)^T since A is symmetric
    order = torch.argsort(rows * n + cols)
    rows, cols, vals = rows[order], cols[order], (vals / sums[rows])[order]
    crow = torch.zeros(n + 1, dtype=torch.int64, device=cams.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    step = torch.sparse_csr_tensor(crow, cols, vals, (n, n))
    x = (cams * (1.0 - edge)).reshape(c, n).T.contiguous()  # (n, C)
    for _ in range(2 ** exp_times):
        x = step @ x
    return x.T.reshape(c, h, w).contiguous()


@torch.no_grad()
def dense_random_walk(cams: torch.Tensor, edge: torch.Tensor, beta: float = 10,
                      exp_times: int = 8, radius: int = 5) -> torch.Tensor:
    """IRN's dense formulation (HW x HW matrix, T ** (2**exp_times) by squaring); reference only.

    Needs ~3 (h*w)^2 floats of memory and 2 (h*w)^3 FLOP per squaring: use it in tests and the
    bench, never in the pipeline.
    """
    _check(cams, edge, exp_times)
    c, h, w = cams.shape
    n = h * w
    edge = edge.to(cams.dtype)
    src, dst, aff, _ = _pair_entries(edge, radius, beta)
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
