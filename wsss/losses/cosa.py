"""CoSA losses and pseudo labels (CoSA Sec. 3.3-3.4, Eq. 3-5 and 7-10) as pure tensor functions.

The assignment network (AN) gives the targets: CAM pseudo labels (CPL, Eq. 3) with their
perplexity (Eq. 4) and reliability weights (RAW, Eq. 5) for the segmentation head of the online
network (ON), and segmentation pseudo labels (SPL, Eq. 7) for the ON's CAMs (Eq. 8). The
contrastive separation loss (CSC, Eq. 9-10) regularises the ON's CAM with the low-perplexity CPL
of the AN's auxiliary CAM. Every target is computed without gradient; the losses are
differentiable in the ON's outputs only.

Conventions: foreground CAMs are (B, C, h, w) without a background channel; segmentation logits
and SPL are (B, C+1, H, W) with background at index 0; CPL are (B, h, w) int64 with 0 =
background, c + 1 = foreground class c and ``ignore_index`` (255) = ignore; image labels are
(B, C) multi-hot (any dtype, nonzero = present).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Threshold = float | torch.Tensor

#: Smallest argument of the logarithm of Eq. (4); caps the perplexity at -log(1e-6) ~ 13.8.
PERPLEXITY_MIN_ARG = 1e-6


def _per_image(value: Threshold, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a float, a 0-d tensor or a (B,) per-image tensor) as a float32 tensor that
    broadcasts against ``like`` (B, ...); other tensor shapes are used as given."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.ndim == 1 and like.ndim > 1 and t.numel() == like.shape[0]:
        t = t.reshape((-1,) + (1,) * (like.ndim - 1))
    return t


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A float32 scalar 0 connected to ``like``'s graph (a loss with nothing to average)."""
    return (like.float() * 0.0).sum()


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, *size) by nearest neighbour, dtype kept."""
    out = F.interpolate(x[:, None].float(), size=size, mode="nearest")[:, 0]
    return out.to(x.dtype)


def cam_pseudo_labels(cam: torch.Tensor, labels: torch.Tensor,
                      threshold: Threshold | tuple[Threshold, Threshold],
                      ignore_index: int = 255) -> torch.Tensor:
    """CAM pseudo labels (CPL), CoSA Sec. 3.3, Eq. (3).

    With nu = max_c M'_c (the maximum activation over the image's present classes)::

        CPL = argmax_c M'_c + 1   if nu >= xi,
              0                   if nu <  xi     (background)

    Args:
        cam: (B, C, h, w) float foreground CAMs of the AN, min-max normalised to [0, 1]. Classes
            absent from ``labels`` are masked out again here (so they can never win the argmax,
            even at threshold 0); an image without any label is all background.
        labels: (B, C) multi-hot image labels.
        threshold: xi, a float or a (B,) tensor of per-image thresholds (the paper's single
            threshold). A pair ``(low, high)`` (each a float or (B,) tensor) gives the
            two-threshold variant of the CoSA reference code: nu >= high -> class, nu < low ->
            background, in between -> ``ignore_index``; ``(xi, xi)`` equals the single form.
        ignore_index: the label of ignored pixels in the two-threshold form.

    Returns:
        (B, h, w) int64 CPL, computed without gradient.

    Raises:
        ValueError: ``cam`` is not 4-D with C >= 1, ``labels`` is not (B, C), or float
            thresholds with low > high.
    """
    if cam.ndim != 4 or cam.shape[1] < 1:
        raise ValueError(f"cam must be (B, C, h, w) with C >= 1, got {tuple(cam.shape)}")
    if tuple(labels.shape) != tuple(cam.shape[:2]):
        raise ValueError(f"labels {tuple(labels.shape)} do not match cam {tuple(cam.shape)}")
    present = labels.to(cam.device).bool()[:, :, None, None]
    masked = cam.detach().float().masked_fill(~present, float("-inf"))
    nu, idx = masked.max(dim=1)  # (B, h, w); nu = -inf for an image without labels
    cls = idx + 1
    if isinstance(threshold, tuple):
        low, high = threshold
        if not isinstance(low, torch.Tensor) and not isinstance(high, torch.Tensor) \
                and low > high:
            raise ValueError(f"CPL thresholds need low <= high, got ({low}, {high})")
        out = torch.full_like(cls, ignore_index)
        out = torch.where(nu >= _per_image(high, nu), cls, out)
        return torch.where(nu < _per_image(low, nu), torch.zeros_like(cls), out)
    return torch.where(nu >= _per_image(threshold, nu), cls, torch.zeros_like(cls))


def perplexity(conf: torch.Tensor, threshold: Threshold, lambda_a: float = 0.8,
               lambda_b: float = 1.0, min_arg: float = PERPLEXITY_MIN_ARG) -> torch.Tensor:
    """Per-pixel CPL perplexity, CoSA Sec. 3.3, Eq. (4).

    With nu = ``conf`` (the maximum CAM activation) and xi = ``threshold``::

        P = [-log(lambda_a (nu - xi) / (1 - xi))]^lambda_b   if nu >= xi,
            [-log(lambda_a (xi - nu) / xi)]^lambda_b         if nu <  xi.

    The normalised distance to xi is clipped to [0, 1] (values of nu outside [0, 1]), the
    denominators 1 - xi and xi are clamped to >= ``min_arg`` (xi = 1 or xi = 0), and the log
    argument lambda_a * distance is clamped to >= ``min_arg``: a pixel exactly at the threshold
    gets the finite maximum (-log min_arg)^lambda_b (~13.8 for the defaults) instead of +inf,
    and nothing is NaN. The minimum, at distance 1, is (-log lambda_a)^lambda_b (0.223 for the
    paper's (lambda_a, lambda_b) = (0.8, 1), CoSA Sec. 4.1).

    Args:
        conf: nu, float, any shape (B, ...).
        threshold: xi, a float or a tensor broadcastable to ``conf``; a (B,) tensor is taken
            per image (leading dimension of ``conf``).
        lambda_a: in (0, 1), so that P > 0 everywhere (P = 0 would make Eq. (5) divide by 0).
        lambda_b: > 0, the sharpness.
        min_arg: the clamp described above, in (0, 1).

    Returns:
        float32 tensor of ``conf``'s shape, values in [(-log lambda_a)^lambda_b,
        (-log min_arg)^lambda_b]; computed without gradient.

    Raises:
        ValueError: ``lambda_a`` not in (0, 1), ``lambda_b`` <= 0 or ``min_arg`` not in (0, 1).
    """
    if not 0.0 < lambda_a < 1.0:
        raise ValueError(f"lambda_a must be in (0, 1), got {lambda_a}")
    if not lambda_b > 0.0:
        raise ValueError(f"lambda_b must be > 0, got {lambda_b}")
    if not 0.0 < min_arg < 1.0:
        raise ValueError(f"min_arg must be in (0, 1), got {min_arg}")
    v = conf.detach().float()
    xi = _per_image(threshold, v)
    above = (v - xi) / (1.0 - xi).clamp(min=min_arg)
    below = (xi - v) / xi.clamp(min=min_arg)
    dist = torch.where(v >= xi, above, below).clamp(0.0, 1.0)
    return (-torch.log((lambda_a * dist).clamp(min=min_arg))) ** lambda_b


def reliability_weights(perplexity: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """Reliability based adaptive weights W^raw (RAW), CoSA Sec. 3.3, Eq. (5).

    The paper defines the reliability as the reciprocal of the perplexity and uses it,
    normalised over the batch, as the per-pixel weight of L_c2s. Its printed formula
    W_xy = |R| / sum_{i,j in R} (P_ij P_xy)^-1 expands to |R| P_xy / sum_ij P_ij^-1, i.e. a
    weight *proportional* to the perplexity, which contradicts the text (unreliable, near-
    threshold pixels are to be penalised). We implement the stated intent::

        W_xy = P_xy^-1 / ( (1 / |R|) sum_{(i,j) in R} P_ij^-1 )

    i.e. the inverse perplexity divided by its mean, where R is the set of all pixels of all
    images in ``perplexity`` (the whole batch, not per image), so the weights have mean 1 over
    R and L_c2s keeps the scale of the unweighted loss. With ``valid``, R is the valid pixels
    only (e.g. not ignored by the CPL); invalid pixels get weight 0.

    Args:
        perplexity: (B, ...) float, > 0 (as :func:`perplexity` returns); values are clamped to
            >= 1e-12 so a zero never divides.
        valid: optional bool mask of the same shape.

    Returns:
        float32 weights of ``perplexity``'s shape, mean 1 over R (all 0 when R is empty);
        computed without gradient.

    Raises:
        ValueError: ``valid`` has another shape.
    """
    p = perplexity.detach().float().clamp(min=1e-12)
    r = p.reciprocal()
    if valid is None:
        return r / r.mean()
    if valid.shape != perplexity.shape:
        raise ValueError(f"valid {tuple(valid.shape)} does not match perplexity "
                         f"{tuple(perplexity.shape)}")
    r = r * valid.to(r.device, torch.float32)
    mean = r.sum() / valid.sum().clamp(min=1)
    return r / mean.clamp(min=1e-12)


def c2s_loss(seg_logits: torch.Tensor, cpl: torch.Tensor, weights: torch.Tensor | None = None,
             ignore_index: int = 255) -> torch.Tensor:
    """CAM2Seg loss L_c2s, CoSA Sec. 3.3, Eq. (5): per-pixel cross-entropy of the ON's
    segmentation logits against the AN's CPL, weighted by RAW.

    L_c2s = sum_{valid (x,y)} W_xy CE(S_xy, CPL_xy) / |valid|, the mean over the non-ignored
    pixels of the batch (``weights=None``: W = 1, the plain mean). RAW weights have mean 1, so
    the weighted loss keeps the unweighted scale. The weights are targets: no gradient flows
    into them.

    If the CPL grid differs from the logits' grid, the CPL (and the weights with it) are
    resized to the LOGITS' grid (H, W) by nearest neighbour, so labels stay labels and each
    weight stays with its label.

    Args:
        seg_logits: (B, C+1, H, W) float segmentation logits of the ON.
        cpl: (B, h, w) integer CPL in [0, C] or ``ignore_index``.
        weights: optional (B, h, w) float RAW weights (:func:`reliability_weights`).
        ignore_index: CPL pixels excluded from the loss and its average.

    Returns:
        scalar float32 loss; 0 (with a grad_fn) when every pixel is ignored.

    Raises:
        ValueError: mismatched batch sizes, or ``weights`` not of ``cpl``'s shape.
    """
    if seg_logits.ndim != 4 or cpl.ndim != 3 or cpl.shape[0] != seg_logits.shape[0]:
        raise ValueError(f"seg_logits {tuple(seg_logits.shape)} (B, C+1, H, W) and cpl "
                         f"{tuple(cpl.shape)} (B, h, w) do not match")
    if weights is not None and weights.shape != cpl.shape:
        raise ValueError(f"weights {tuple(weights.shape)} do not match cpl {tuple(cpl.shape)}")
    size = tuple(seg_logits.shape[-2:])
    cpl = cpl.to(seg_logits.device).long()
    if tuple(cpl.shape[-2:]) != size:
        cpl = _resize_nearest(cpl, size)
        if weights is not None:
            weights = _resize_nearest(weights.float(), size)
    ce = F.cross_entropy(seg_logits.float(), cpl, ignore_index=ignore_index, reduction="none")
    if weights is not None:
        ce = ce * weights.detach().to(ce.device, torch.float32)
    n_valid = (cpl != ignore_index).sum().clamp(min=1)
    return ce.sum() / n_valid


def seg_pseudo_labels(seg_logits: torch.Tensor, labels: torch.Tensor,
                      tau: float = 0.01) -> torch.Tensor:
    """Segmentation pseudo labels (SPL), CoSA Sec. 3.4, Eq. (7).

    The AN's logits of classes absent from the image labels are set to -inf (background,
    channel 0, is always present), then SPL = softmax(S' / tau) over the C+1 channels; the
    temperature tau (0.01 in CoSA Sec. 4.1) sharpens them towards one-hot. Absent classes get
    probability exactly 0.

    Args:
        seg_logits: (B, C+1, h, w) float segmentation logits of the AN.
        labels: (B, C) multi-hot image labels.
        tau: softmax temperature, > 0.

    Returns:
        (B, C+1, h, w) float32 probabilities (sum 1 over channels), without gradient.

    Raises:
        ValueError: ``tau`` <= 0 or ``labels`` not (B, C) for C+1 logit channels.
    """
    if not tau > 0:
        raise ValueError(f"SPL temperature tau must be > 0, got {tau}")
    b, c1 = seg_logits.shape[:2]
    if tuple(labels.shape) != (b, c1 - 1):
        raise ValueError(f"labels {tuple(labels.shape)} do not match seg_logits "
                         f"{tuple(seg_logits.shape)} (expected (B, C) for C+1 channels)")
    bg = torch.ones(b, 1, dtype=torch.bool, device=seg_logits.device)
    present = torch.cat([bg, labels.to(seg_logits.device).bool()], dim=1)[:, :, None, None]
    logits = (seg_logits.detach().float() / tau).masked_fill(~present, float("-inf"))
    return logits.softmax(dim=1)


def s2c_loss(cam_logits: torch.Tensor, spl: torch.Tensor) -> torch.Tensor:
    """Seg2CAM loss L_s2c, CoSA Sec. 3.4, Eq. (8): multi-label binary cross-entropy between
    sigmoid(M) of the ON's CAMs and the SPL::

        L_s2c = -1 / (C |R|) sum_{c=1}^{C} sum_{(x,y) in R} [ SPL_xy[c] log sigma(M^c_xy)
                                                     + (1 - SPL_xy[c]) log(1 - sigma(M^c_xy)) ]

    Eq. (8) sums c = 1..C: only the C foreground channels of the SPL take part; the background
    channel 0 does not (the CAMs have no background channel). All C classes count, absent ones
    included (their SPL is 0, so their CAMs are pushed down); R is every position of every image
    in the batch (the mean over B, C, h, w). If the SPL grid differs from the CAM grid, the SPL
    is resized to the CAM grid (h, w) bilinearly (align_corners=False; values stay in [0, 1]).

    Args:
        cam_logits: (B, C, h, w) float CAM logits M of the ON (before the sigmoid).
        spl: (B, C+1, H, W) SPL probabilities (:func:`seg_pseudo_labels`), background first.

    Returns:
        scalar float32 loss; no gradient flows into ``spl``.

    Raises:
        ValueError: ``spl`` does not have C+1 channels for C CAM channels, or batch sizes differ.
    """
    if cam_logits.ndim != 4 or spl.ndim != 4 or spl.shape[0] != cam_logits.shape[0] \
            or spl.shape[1] != cam_logits.shape[1] + 1:
        raise ValueError(f"spl {tuple(spl.shape)} must be (B, C+1, H, W) for cam_logits "
                         f"{tuple(cam_logits.shape)} (B, C, h, w)")
    target = spl[:, 1:].detach().float().to(cam_logits.device)
    if target.shape[-2:] != cam_logits.shape[-2:]:
        target = F.interpolate(target, size=cam_logits.shape[-2:], mode="bilinear",
                               align_corners=False)
    return F.binary_cross_entropy_with_logits(cam_logits.float(), target)


def csc_loss(cam_features: torch.Tensor, cpl: torch.Tensor, perplexity: torch.Tensor,
             eps: float = 1.0, tau: float = 0.01, max_anchors: int | None = None,
             generator: torch.Generator | None = None, ignore_index: int = 255,
             across_images: bool = False) -> torch.Tensor:
    """Contrastive separation in CAMs L_csc, CoSA Sec. 3.4, Eq. (9) and (10).

    Omega = positions with perplexity P <= ``eps`` (the low-pass filter, eps = 1 in CoSA
    Sec. 4.1) and a CPL that is not ``ignore_index``. ``cpl`` and ``perplexity`` are those of
    the AN's auxiliary CAM M-dagger'. For an anchor (i, j) in Omega (Eq. 9), the positives
    R+_ij are the other positions of Omega with the same CPL class, the negatives R-_ij those
    with a different class (background counts as a class). With v = the L2-normalised C-vector
    of the ON's CAM M at a position, s = v_a . v_b / tau (l_d of Eq. (10) is taken as the
    cosine SIMILARITY: a distance in the numerator of InfoNCE would push positives apart)::

        L_csc = -1/|Omega'| sum_{a in Omega'} 1/|R+_a| sum_{p in R+_a}
                    log( e^{s_ap} / (e^{s_ap} + sum_{n in R-_a} e^{s_an}) )

    Scope: Eq. (9) indexes positions (x, y) of one CAM with no image index, so R+ and R- are
    taken WITHIN the anchor's image (``across_images=True`` pools the whole batch instead). The
    average runs over Omega' = the anchors with at least one positive (1/|R+| is undefined
    otherwise), over all images of the batch. An anchor without negatives contributes
    log(1) = 0, so a map with a single CPL class gives 0.

    Args:
        cam_features: (B, C, h, w) float CAM M of the ON (gradient flows through it).
        cpl: (B, h', w') integer CPL of the AN's auxiliary CAM.
        perplexity: (B, h', w') its perplexity (:func:`perplexity`). If (h', w') != (h, w),
            both are resized to the CAM grid by nearest neighbour.
        eps: the low-perplexity filter epsilon.
        tau: InfoNCE temperature (0.01 in CoSA Sec. 4.1), > 0.
        max_anchors: if set and Omega is larger, that many anchors are drawn at random
            (without replacement, from ``generator``, a CPU generator, so a seeded generator
            gives the same draw); positives and negatives still come from all of Omega. Memory
            is O(anchors x |Omega|).
        generator: the CPU ``torch.Generator`` of that draw (None = the global RNG).
        ignore_index: CPL label never used.
        across_images: take positives / negatives from the whole batch.

    Returns:
        scalar float32 loss; 0 (a tensor with a grad_fn) when Omega has fewer than two
        positions or no anchor has a positive.

    Raises:
        ValueError: mismatched shapes, ``tau`` <= 0 or ``max_anchors`` < 1.
    """
    if not tau > 0:
        raise ValueError(f"CSC temperature tau must be > 0, got {tau}")
    if max_anchors is not None and max_anchors < 1:
        raise ValueError(f"max_anchors must be >= 1 or None, got {max_anchors}")
    if cam_features.ndim != 4 or cpl.ndim != 3 or cpl.shape != perplexity.shape \
            or cpl.shape[0] != cam_features.shape[0]:
        raise ValueError(f"cam_features {tuple(cam_features.shape)} (B, C, h, w), cpl "
                         f"{tuple(cpl.shape)} and perplexity {tuple(perplexity.shape)} "
                         "(B, h, w) do not match")
    b, c, h, w = cam_features.shape
    device = cam_features.device
    cpl = cpl.to(device).long()
    perplexity = perplexity.detach().to(device).float()
    if tuple(cpl.shape[-2:]) != (h, w):
        cpl = _resize_nearest(cpl, (h, w))
        perplexity = _resize_nearest(perplexity, (h, w))
    cls = cpl.reshape(-1)
    img = torch.arange(b, device=device).repeat_interleave(h * w)
    omega = ((perplexity.reshape(-1) <= eps) & (cls != ignore_index)).nonzero().squeeze(1)
    n = omega.numel()
    if n < 2:
        return _zero(cam_features)
    feats = F.normalize(cam_features.float().permute(0, 2, 3, 1).reshape(-1, c), dim=-1)
    feats, cls, img = feats[omega], cls[omega], img[omega]
    anchors = torch.arange(n, device=device)
    if max_anchors is not None and n > max_anchors:
        anchors = torch.randperm(n, generator=generator)[:max_anchors].to(device)
    sim = feats[anchors] @ feats.T / tau  # (A, N)
    same = cls[anchors, None] == cls[None, :]
    scope = (torch.ones_like(same) if across_images
             else img[anchors, None] == img[None, :])
    pos = same & scope & (anchors[:, None] != torch.arange(n, device=device)[None, :])
    neg = ~same & scope
    # A large finite fill instead of -inf keeps rows without negatives free of NaN gradients;
    # exp(fill - anything finite) is exactly 0, so it adds nothing to the sum.
    fill = torch.finfo(sim.dtype).min / 2
    neg_lse = torch.logsumexp(sim.masked_fill(~neg, fill), dim=1, keepdim=True)  # log K
    per_pair = torch.logaddexp(sim, neg_lse) - sim  # -log(L / (L + K))
    n_pos = pos.sum(dim=1)
    per_anchor = torch.where(pos, per_pair, torch.zeros_like(per_pair)).sum(1) \
        / n_pos.clamp(min=1)
    return per_anchor.sum() / (n_pos > 0).sum().clamp(min=1)
