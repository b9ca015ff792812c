"""CoBra losses: classification, CAM consistency and the top/bottom-k InfoNCE of CAP and SAP."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F


def multilabel_cls_loss(cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multilabel soft-margin loss on the global average pool of foreground CAMs (B, C, h, w)."""
    return F.multilabel_soft_margin_loss(cam.mean(dim=(2, 3)), labels)


def cam_consistency_loss(cam_a: torch.Tensor, cam_b: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
    """L_cam of CoBra Eq. (3) / Sec. 3.3.1: L1 over all (C+1) channels + L1 over positive classes.

    ``cam_*`` are (B, C+1, h, w) with background first; ``labels`` (B, C) multi-hot. The second
    term averages |a - b| over each image's positive class maps, then over the batch.
    """
    if cam_a.shape[-2:] != cam_b.shape[-2:]:
        cam_a = F.interpolate(cam_a, cam_b.shape[-2:], mode="bilinear", align_corners=False)
    diff = (cam_a - cam_b).abs()
    l_all = diff.mean()
    fg = diff[:, 1:].mean(dim=(2, 3))  # (B, C)
    pos = labels.to(fg.dtype)
    l_pos = ((fg * pos).sum(1) / pos.sum(1).clamp(min=1)).mean()
    return l_all + l_pos


def scaled_k(k: int, n_patches: int, reference: int = 196) -> int:
    """Scale a k given for ``reference`` patches (14x14) to ``n_patches``: max(1, round(k n / ref)),
    capped at n_patches - 1 (the anchor itself is never a candidate)."""
    return int(min(max(1, round(k * n_patches / reference)), n_patches - 1))


def topk_infonce(emb: torch.Tensor, score: torch.Tensor, k_pos: int, k_neg: int,
                 tau: float) -> torch.Tensor:
    """InfoNCE with positives/negatives chosen per anchor by a score matrix (CoBra Eq. 1 and 2).

    ``emb`` (B, N, D) are projections (L2-normalised here); ``score`` (B, N, N) ranks, for anchor
    row i, every other patch j: the ``k_pos`` highest are positives P_i^+, the ``k_neg`` lowest
    are negatives P_i^-. The anchor itself is excluded from both. For each positive j::

        -log( exp(v_i.v_j / tau) / (exp(v_i.v_j / tau) + sum_{k in P_i^-} exp(v_i.v_k / tau)) )

    averaged over positives, anchors and images (the paper sums over anchors; the mean keeps
    lambda_2 independent of the grid size). tau sits inside every exponential.
    """
    b, n, _ = emb.shape
    emb = F.normalize(emb.float(), dim=-1)
    score = score.detach().float()
    eye = torch.eye(n, dtype=torch.bool, device=score.device)
    pos_idx = score.masked_fill(eye, float("-inf")).topk(k_pos, dim=-1).indices  # (B, N, kp)
    neg_idx = score.masked_fill(eye, float("inf")).topk(k_neg, dim=-1, largest=False).indices
    sim = emb @ emb.transpose(1, 2) / tau  # (B, N, N)
    s_pos = sim.gather(-1, pos_idx)  # (B, N, kp)
    s_neg = sim.gather(-1, neg_idx)  # (B, N, kn)
    neg_lse = torch.logsumexp(s_neg, dim=-1, keepdim=True)  # log sum_k exp(s_ik)
    loss = torch.logaddexp(s_pos, neg_lse) - s_pos
    return loss.mean()


def cnn_pseudo_labels(cnn_cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-patch pseudo labels of the CAK branch: argmax of the softmaxed (C+1)-channel CNN CAM
    over background + the image's present classes (absent classes masked out). Returns (B, N)."""
    b = cnn_cam.shape[0]
    present = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1).bool()  # (B, C+1)
    logits = cnn_cam.float().masked_fill(~present[:, :, None, None], float("-inf"))
    return logits.softmax(dim=1).argmax(dim=1).reshape(b, -1)


def sap_loss(vit_proj: torch.Tensor, cnn_cam: torch.Tensor, labels: torch.Tensor, k_pos: int,
             k_neg: int, tau: float) -> torch.Tensor:
    """L_sap, CoBra Eq. (2): ViT projections, positives/negatives from the CNN CAM row of each
    anchor's pseudo class (top ``k_pos`` / bottom ``k_neg`` patches of that class's CAM)."""
    b, c1 = cnn_cam.shape[:2]
    if cnn_cam.shape[-2:] != vit_proj.shape[-2:]:
        cnn_cam = F.interpolate(cnn_cam, vit_proj.shape[-2:], mode="bilinear", align_corners=False)
    pseudo = cnn_pseudo_labels(cnn_cam, labels)  # (B, N)
    flat = cnn_cam.detach().float().reshape(b, c1, -1)  # (B, C+1, N)
    rows = flat.gather(1, pseudo[:, :, None].expand(-1, -1, flat.shape[-1]))  # (B, N, N)
    emb = vit_proj.flatten(2).transpose(1, 2)
    return topk_infonce(emb, rows, k_pos, k_neg, tau)


def cap_loss(cnn_proj: torch.Tensor, affinity: torch.Tensor, k_pos: int, k_neg: int,
             tau: float) -> torch.Tensor:
    """L_cap, CoBra Eq. (1): CNN projections, positives/negatives from the ViT patch affinity
    (attention summed over layers, prefix tokens removed), top ``k_pos`` / bottom ``k_neg``."""
    emb = cnn_proj.flatten(2).transpose(1, 2)
    if emb.shape[1] != affinity.shape[-1]:
        raise ValueError(f"CNN grid has {emb.shape[1]} cells but the ViT affinity "
                         f"{affinity.shape[-1]} patches: use the same input stride (16)")
    return topk_infonce(emb, affinity, k_pos, k_neg, tau)


def cobra_objective(out: dict[str, torch.Tensor], labels: torch.Tensor,
                    patch_affinity: Callable[[torch.Tensor], torch.Tensor],
                    settings: Mapping[str, Any], aux: bool) -> dict[str, torch.Tensor]:
    """CoBra's objective, Eq. (3): L = L_cls + lambda_1 L_cam + lambda_2 (L_sap + L_cap).

    ``out``: a CoBra forward (``cnn_cam``/``vit_cam`` (B, C+1, h, w) background first,
    ``cnn_proj``/``vit_proj`` (B, P, h, w), ``attn`` the layer-summed attention);
    ``labels`` (B, C) multi-hot; ``patch_affinity`` maps ``attn`` to the (B, N, N) patch
    affinity; ``settings`` the ``classifier.cobra`` config section (``lambda_cam`` = lambda_1,
    ``lambda_proj`` = lambda_2, ``tau``, the k values given for ``k_reference_patches``).
    L_cls sums the multilabel loss of both branches' foreground CAMs. Without ``aux`` (the
    warm-up epochs, CoBra Sec. 3.2) the objective is L_cls alone.

    Returns:
        ``loss`` (the weighted sum) and every term computed: ``loss_cls`` and, with ``aux``,
        ``loss_cam``, ``loss_sap``, ``loss_cap``; scalar tensors.
    """
    cls = (multilabel_cls_loss(out["cnn_cam"][:, 1:], labels)
           + multilabel_cls_loss(out["vit_cam"][:, 1:], labels))
    terms = {"loss_cls": cls}
    if not aux:
        terms["loss"] = cls
        return terms
    n = out["vit_proj"].shape[-2] * out["vit_proj"].shape[-1]
    k = {name: scaled_k(settings[f"k_{name}"], n, settings["k_reference_patches"])
         for name in ("sap_pos", "sap_neg", "cap_pos", "cap_neg")}
    terms["loss_cam"] = cam_consistency_loss(out["cnn_cam"], out["vit_cam"], labels)
    terms["loss_sap"] = sap_loss(out["vit_proj"], out["cnn_cam"], labels, k["sap_pos"],
                                 k["sap_neg"], settings["tau"])
    terms["loss_cap"] = cap_loss(out["cnn_proj"], patch_affinity(out["attn"]), k["cap_pos"],
                                 k["cap_neg"], settings["tau"])
    terms["loss"] = (cls + settings["lambda_cam"] * terms["loss_cam"]
                     + settings["lambda_proj"] * (terms["loss_sap"] + terms["loss_cap"]))
    return terms
