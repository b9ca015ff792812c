"""CoSA (Yang et al., "Weakly Supervised Co-training with Swapping Assignments for Semantic
Segmentation"): an online network (ON) trained on swapped pseudo labels from its moving
average, the assignment network (AN), CoSA Sec. 3, Eq. (1)-(11), supplement A-C.

Per training step (CoSA Algorithm 1):

1. The data set's crop (random rescale, flip, crop) is blurred with p = 0.5
   (:func:`wsss.data.views.random_blur`): the weak view T_w, the AN's input. The strong view
   T_s, the ON's input, is the weak view with one appearance operation per image
   (:func:`wsss.data.views.strong_view`), so both views stay aligned pixel for pixel.
2. The ON gives its CAM M, auxiliary CAM M-dagger (from an earlier stage / block) and
   segmentation logits S on the strong view (gradients flow).
3. After the warm-up, the AN gives the targets without gradient, multi-scale (``an_scales``)
   x flip on the weak view: per scale the CAMs are ReLU'd and the max of an image and its
   flipped-back mirror is kept, the scales are summed on the ON's grid and each class map is
   min-max normalised (M', M-dagger'); the segmentation logits are averaged (S').
4. The objective, CoSA Eq. (11): L_cls + L_cls^aux (multilabel soft margin of the global max
   pooled CAMs, Sec. 3.2; ``pooling: gap`` averages instead) + lambda_c2s (L_c2s + L_c2s^aux) +
   lambda_s2c L_s2c + lambda_csc L_csc, with the CPL of M' (Eq. 3) at the dynamic GMM threshold
   (Eq. 6, a queue of the AN's confidences: :class:`wsss.refine.gmm_queue.GmmQueueThreshold`) or
   a fixed one, the perplexity (Eq. 4) and RAW weights (Eq. 5), L_c2s^aux the same with
   M-dagger' (Algorithm 1 line 16, same threshold), the SPL of S' (Eq. 7) for L_s2c (Eq. 8), and
   L_csc (Eq. 9-10) on M against the low-perplexity CPL of M-dagger'. During the
   ``warmup_steps`` only the two classification losses act (CoSA supplement C: 6k iterations on
   VOC) and the AN is not run.
5. After the optimizer step the AN moves towards the ON: Theta' <- m Theta' + (1 - m) Theta
   (:meth:`CoSANet.after_step`, :func:`wsss.train.ema.ema_update`).

The AN starts as an exact copy of the ON (the CoSA reference code initialises the two heads
independently; a copy gives the AN the ON's pretrained backbone and heads). It is always in
eval mode (BatchNorm running statistics, no dropout): a target generator. Its weights are part
of the model state (``assign.*`` next to the ON's ``online.*``), so model.pt and the resume
state hold it; extract_cams reads the AN's CAMs (:meth:`CoSANet.cams`).

Images without any class label in a batch train as all background (CPL 0 everywhere, SPL the
background alone, every class score pushed down); that is logged once per run.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.views import random_blur, strong_view
from wsss.errors import ConfigError
from wsss.losses.cosa import (
    c2s_loss,
    cam_pseudo_labels,
    csc_loss,
    perplexity,
    reliability_weights,
    s2c_loss,
    seg_pseudo_labels,
)
from wsss.methods.base import METHODS, ClassifierMethod
from wsss.models.cosa import CoSANetwork
from wsss.models.weights import input_stats
from wsss.refine.gmm_queue import GmmQueueThreshold
from wsss.train.ema import ema_update

log = logging.getLogger(__name__)


def _gmp(cam: torch.Tensor) -> torch.Tensor:
    """Class scores Z (B, C) by global max pooling of the CAM logits (CoSA Sec. 3.2, 4.1)."""
    return cam.float().amax(dim=(2, 3))


def _gap(cam: torch.Tensor) -> torch.Tensor:
    """Class scores Z (B, C) by global average pooling of the CAM logits (CAM, Zhou et al.,
    CVPR 2016)."""
    return cam.float().mean(dim=(2, 3))


#: ``classifier.cosa.pooling``: CAM logits (B, C, h, w) -> class scores (B, C).
POOLING = {"gmp": _gmp, "gap": _gap}


def _flip_max(maps: torch.Tensor, b: int) -> torch.Tensor:
    """ReLU'd maps of a batch followed by its mirror (2B, C, h, w) -> the element-wise max of
    each image's map and its mirror's flipped back (B, C, h, w)."""
    m = F.relu(maps.float())
    return torch.maximum(m[:b], m[b:].flip(-1))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def min_max(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each class map (B, C, h, w) min-max normalised to [0, 1] (per image and class)."""
    low = cams.amin(dim=(2, 3), keepdim=True)
    high = cams.amax(dim=(2, 3), keepdim=True)
    return (cams - low) / (high - low + eps)


def confidence(cams: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """nu of CoSA Eq. (3)-(4): per pixel the maximum normalised CAM over the image's classes
    (B, h, w); 0 for an image without any class."""
    masked = cams.float().masked_fill(~present[:, :, None, None], float("-inf"))
    nu = masked.amax(dim=1)
    return torch.where(present.any(dim=1)[:, None, None], nu, torch.zeros_like(nu))


class CoSANet(ClassifierMethod):
    """CoSA's online network (``online``, trained) and assignment network (``assign``, its
    moving average), each a :class:`wsss.models.cosa.CoSANetwork`; ``cosa`` is the
    ``classifier.cosa`` config section.

    Raises:
        ConfigError: naming the ``classifier.cosa`` key of a bad setting (momentum outside
            [0, 1), no AN scale, a backbone without the auxiliary stage / block).
    """

    name = "cosa"
    loss_terms = ("loss", "loss_cls", "loss_cls_aux", "loss_c2s", "loss_c2s_aux", "loss_s2c",
                  "loss_csc")
    maps = ("cnn", "aux")

    def __init__(self, n_classes: int, cosa: Mapping[str, Any]) -> None:
        super().__init__()
        settings = dict(cosa)
        momentum = settings["momentum"]
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"config key classifier.cosa.momentum: must be in [0, 1) (CoSA "
                              f"Sec. 4.1: 0.9994; 1 would freeze the assignment network), got "
                              f"{momentum}")
        if not settings["an_scales"] or min(settings["an_scales"]) <= 0:
            raise ConfigError("config key classifier.cosa.an_scales: needs at least one "
                              f"positive scale, got {settings['an_scales']}")
        self.settings = settings
        self.pool = POOLING[settings.get("pooling", "gmp")]
        self.online = CoSANetwork(n_classes, settings["backbone"], settings["aux_stage"],
                                  settings["aux_block"], settings["seg_width"])
        self.assign = copy.deepcopy(self.online)
        self.assign.requires_grad_(False)
        self.assign.eval()
        # optimizer steps taken: the warm-up's clock, saved with the weights
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.mean, self.std = input_stats(self.online.features.backbone)
        self.threshold: GmmQueueThreshold | None = None
        if settings["threshold"] == "gmm":
            self.threshold = GmmQueueThreshold(queue_length=settings["queue_length"],
                                               ema=settings["threshold_ema"],
                                               initial=settings["xi"])
        self.last_ops: list[str] = []  # the strong view's operations of the last batch
        self._warned_empty = False

    # ------------------------------------------------------------------ the stage's hooks

    def train(self, mode: bool = True) -> CoSANet:
        """Set the ON's mode; the AN stays in eval mode (a target generator)."""
        super().train(mode)
        self.assign.eval()
        return self

    def pretrained_cnns(self) -> list[nn.Module]:
        """The ON's backbone (the AN is always in eval mode)."""
        return [self.online.features.backbone]

    def input_backbone(self) -> nn.Module:
        """The ON's backbone: its pretrained mean / std normalise the images."""
        return self.online.features.backbone

    def freeze_targets(self) -> dict[str, nn.Module]:
        """``classifier.freeze_prefixes`` on the ON's backbone."""
        return {"classifier.freeze_prefixes": self.online.features.backbone}

    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], list[nn.Parameter]]]:
        """{``cosa``: (ON backbone, ON heads)}, optimised with ``classifier.cosa_optim``."""
        return {"cosa": (self.online.backbone_parameters(), self.online.head_parameters())}

    def warming_up(self) -> bool:
        """Whether the next step is one of the ``warmup_steps`` (classification losses only)."""
        return int(self.steps_done) < self.settings["warmup_steps"]

    def after_step(self) -> None:
        """Count the step and move the AN towards the ON: Theta' <- m Theta' + (1 - m) Theta
        (CoSA Sec. 3.2, Algorithm 1 line 25; buffers copied)."""
        self.steps_done += 1
        ema_update(self.assign, self.online, self.settings["momentum"])

    def resume_state(self) -> dict[str, Any]:
        """The GMM threshold's queue and value (``threshold: gmm``)."""
        return {"cosa_threshold": self.threshold} if self.threshold is not None else {}

    def current_threshold(self) -> float:
        """xi: the dynamic threshold now (``gmm``) or the fixed one."""
        return self.threshold.threshold if self.threshold is not None else self.settings["xi"]

    def epoch_columns(self, epoch: int) -> dict[str, Any]:
        """``aux_losses``: 1 when the epoch's last step trained with the CoSA losses (after the
        warm-up); ``threshold``: xi at the epoch's end."""
        last = int(self.steps_done) - 1
        return {"aux_losses": int(last >= self.settings["warmup_steps"]),
                "threshold": float(self.current_threshold())}

    # ------------------------------------------------------------------ forward and targets

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """In eval mode, the ON's outputs on ``x`` (``cam``, ``aux_cam``, ``seg``). In training
        mode, the ON's outputs on the strong view of ``x`` and, after the warm-up, the AN's
        targets on the weak view (``an_cam``, ``an_aux``: M', M-dagger' min-max normalised,
        ``an_seg``: S'), see the module docstring."""
        if not self.training:
            return self.online(x)
        weak = random_blur(x, self.settings["blur"])
        strong, self.last_ops = strong_view(weak, self.mean, self.std)
        out = self.online(strong)
        if not self.warming_up():
            out.update(self.targets(weak, out["cam"].shape[-2:], out["aux_cam"].shape[-2:]))
        return out

    @torch.no_grad()
    def targets(self, weak: torch.Tensor, grid: Sequence[int], aux_grid: Sequence[int]
                ) -> dict[str, torch.Tensor]:
        """The AN's multi-scale x flip outputs on the weak view (CoSA Algorithm 1 lines 6-8):
        ``an_cam`` / ``an_aux`` (B, C, h, w) on ``grid`` / ``aux_grid`` (ReLU, max over the
        flip, summed over ``an_scales``, min-max normalised per class), ``an_seg`` (B, C+1, h, w)
        the mean logits over scales and flips, float32, without gradient."""
        b, _, h, w = weak.shape
        cam = aux = seg = None
        for s in self.settings["an_scales"]:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            xs = _resize(weak, size)
            o = self.assign(torch.cat([xs, xs.flip(-1)]))
            c = _resize(_flip_max(o["cam"], b), grid)
            a = _resize(_flip_max(o["aux_cam"], b), aux_grid)
            g = _resize((o["seg"][:b].float() + o["seg"][b:].float().flip(-1)) / 2, grid)
            cam, aux, seg = (c, a, g) if cam is None else (cam + c, aux + a, seg + g)
        assert cam is not None and aux is not None and seg is not None
        return {"an_cam": min_max(cam), "an_aux": min_max(aux),
                "an_seg": seg / len(self.settings["an_scales"])}

    # ------------------------------------------------------------------ objective

    def _check_labels(self, present: torch.Tensor) -> None:
        empty = int((~present.any(dim=1)).sum())
        if empty and not self._warned_empty:
            log.warning("classifier.method cosa: %d image(s) of a batch carry no class label; "
                        "they train as all background (CPL 0, SPL background only, every class "
                        "score pushed down) (logged once)", empty)
            self._warned_empty = True

    def _threshold(self, nu: torch.Tensor, present: torch.Tensor) -> float:
        """xi for this step: the GMM queue updated with the confidences of the images that
        have a label (CoSA Eq. 6), or the fixed ``xi``."""
        if self.threshold is None:
            return float(self.settings["xi"])
        return self.threshold.update(nu[present.any(dim=1)])

    def objective(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
                  epoch: int) -> dict[str, torch.Tensor]:
        """CoSA Eq. (11) (the module docstring); the classification terms alone while warming
        up (``out`` then has no AN targets). With ``threshold: gmm`` each call enqueues the
        batch's AN confidences (one call per training step)."""
        s = self.settings
        y = labels.float()
        present = y > 0
        self._check_labels(present)
        cls = F.multilabel_soft_margin_loss(self.pool(out["cam"]), y)
        cls_aux = F.multilabel_soft_margin_loss(self.pool(out["aux_cam"]), y)
        terms: dict[str, torch.Tensor] = {"loss_cls": cls, "loss_cls_aux": cls_aux}
        loss = cls + cls_aux
        if "an_cam" in out:
            nu = confidence(out["an_cam"], present)
            xi = self._threshold(nu, present)
            cpl = cam_pseudo_labels(out["an_cam"], y, xi)
            p = perplexity(nu, xi, s["lambda_a"], s["lambda_b"])
            c2s = c2s_loss(out["seg"], cpl, reliability_weights(p) if s["raw"] else None)
            nu_aux = confidence(out["an_aux"], present)
            cpl_aux = cam_pseudo_labels(out["an_aux"], y, xi)
            p_aux = perplexity(nu_aux, xi, s["lambda_a"], s["lambda_b"])
            c2s_aux = c2s_loss(out["seg"], cpl_aux,
                               reliability_weights(p_aux) if s["raw"] else None)
            s2c = s2c_loss(out["cam"], seg_pseudo_labels(out["an_seg"], y, s["tau"]))
            loss = loss + s["lambda_c2s"] * (c2s + c2s_aux) + s["lambda_s2c"] * s2c
            terms.update(loss_c2s=c2s, loss_c2s_aux=c2s_aux, loss_s2c=s2c)
            if s["csc"]:
                csc = csc_loss(out["cam"], cpl_aux, p_aux, eps=s["csc_eps"], tau=s["csc_tau"])
                loss = loss + s["lambda_csc"] * csc
                terms["loss_csc"] = csc
        return {"loss": loss, **terms}

    # ------------------------------------------------------------------ inference

    def image_scores(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``main`` and ``aux``: the pooled (``pooling``) CAM logits Z and Z-dagger (B, C) of a
        forward (the ON's in eval mode)."""
        return {"main": self.pool(out["cam"]), "aux": self.pool(out["aux_cam"])}

    def cams(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The AN's ReLU'd CAMs of a normalised batch: ``cnn`` M' (B, C, h, w), the seed maps
        downstream, and ``aux`` M-dagger' (B, C, h', w')."""
        o = self.assign(x)
        return {"cnn": F.relu(o["cam"]), "aux": F.relu(o["aux_cam"])}

    def seg_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The AN's segmentation logits (B, C+1, H, W), background first, bilinearly upsampled
        to the input size (CoSA's single-stage prediction)."""
        return _resize(self.assign(x)["seg"].float(), x.shape[-2:])


@METHODS.register("cosa")
def build_cosa(cfg: Mapping[str, Any], n_classes: int) -> CoSANet:
    """The ``cosa`` method from the ``classifier`` section (``cosa``)."""
    return CoSANet(n_classes, cfg["cosa"])
