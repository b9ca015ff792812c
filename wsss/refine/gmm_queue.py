"""CoSA's dynamic threshold during training (Sec. 3.3, Eq. 6): a queue of the assignment
network's CAM confidences over the last batches, a two-component Gaussian mixture fitted to it,
and its likelihood-maximising split xi*, smoothed over the steps."""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import numpy as np
import torch

from wsss.refine.gmm import GmmFit, gmm_fit

log = logging.getLogger(__name__)


class GmmQueueThreshold:
    """The dynamic CPL threshold xi* of CoSA Eq. (6), fitted on a queue of recent batches.

    Each :meth:`update` enqueues one batch's AN confidences (the oldest batch leaves once the
    queue holds ``queue_length`` batches, CoSA Sec. 3.3 "to avoid mini-batch bias"), fits the
    bimodal mixture with :func:`wsss.refine.gmm.gmm_fit` on the whole queue and takes its
    ``split`` as xi*. The threshold returned is smoothed: ``threshold = ema * threshold +
    (1 - ema) * xi*``, starting from ``initial``.

    Per batch, values <= ``floor`` and non-finite ones are dropped (``gmm_fit`` leaves them out
    of the fit anyway: a ReLU CAM's exact zeros would collapse the background component), then
    at most ``per_batch`` of the rest are kept, drawn without replacement from
    ``np.random.default_rng([seed, n])`` for the n-th update, so the queue (and the threshold)
    are deterministic and a resumed run (:meth:`load_state_dict`) draws what an uninterrupted
    one would. Memory is bounded by ``queue_length * per_batch`` float32 values.

    Fallback: when the queue is degenerate (``gmm_fit`` raises ValueError: too few values above
    the floor, all nearly equal, coinciding components) or the split is not finite, the previous
    threshold is kept, and one warning is logged per instance (python ``logging``); the update
    never raises for the data and never returns NaN.

    Args:
        queue_length: number of batches in the queue (100 in CoSA Sec. 4.1), >= 1.
        ema: smoothing momentum in [0, 1) (0 = use xi* directly).
        initial: the threshold before any successful fit, in [0, 1] (CoSA's fixed xi = 0.5).
        floor: confidences <= floor are not enqueued, in [0, 1).
        per_batch: at most this many values are kept per batch, >= 1.
        confidence: the posterior level of ``gmm_fit``'s bg / fg band (only ``split`` is used
            here), in (0.5, 1).
        seed: seeds the per-batch subsampling and the mixture's ``random_state``.
        min_values: the fewest values ``gmm_fit`` accepts.

    Raises:
        ValueError: any argument outside its range.
    """

    def __init__(self, queue_length: int = 100, ema: float = 0.99, initial: float = 0.5,
                 floor: float = 0.05, per_batch: int = 1024, confidence: float = 0.9,
                 seed: int = 0, min_values: int = 50) -> None:
        if queue_length < 1:
            raise ValueError(f"queue_length must be >= 1, got {queue_length}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        if not 0.0 <= initial <= 1.0:
            raise ValueError(f"initial threshold must be in [0, 1], got {initial}")
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        if per_batch < 1:
            raise ValueError(f"per_batch must be >= 1, got {per_batch}")
        if not 0.5 < confidence < 1.0:  # checked here: gmm_fit's ValueError means "degenerate"
            raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.queue_length = int(queue_length)
        self.ema = float(ema)
        self.floor = float(floor)
        self.per_batch = int(per_batch)
        self.confidence = float(confidence)
        self.seed = int(seed)
        self.min_values = int(min_values)
        self._threshold = float(initial)
        self._queue: deque[np.ndarray] = deque(maxlen=self.queue_length)
        self._updates = 0
        self._warned = False
        self._last_fit: GmmFit | None = None

    @property
    def threshold(self) -> float:
        """The current (smoothed) threshold."""
        return self._threshold

    @property
    def last_fit(self) -> GmmFit | None:
        """The mixture of the last successful fit (None before one)."""
        return self._last_fit

    def __len__(self) -> int:
        """The number of batches in the queue."""
        return len(self._queue)

    def _sample(self, values: np.ndarray | torch.Tensor) -> np.ndarray:
        """The batch's values above the floor, at most ``per_batch`` of them, as float32."""
        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().numpy()
        x = np.asarray(values, dtype=np.float32).ravel()
        x = x[np.isfinite(x) & (x > self.floor)]
        if x.size > self.per_batch:
            rng = np.random.default_rng([self.seed, self._updates])
            x = x[np.sort(rng.choice(x.size, self.per_batch, replace=False))]
        return x

    def update(self, values: np.ndarray | torch.Tensor) -> float:
        """Enqueue one batch of AN confidences (any shape), refit, and return the new threshold
        (the previous one when the queue is degenerate, see the class docstring)."""
        self._queue.append(self._sample(values))
        self._updates += 1
        try:
            fit = gmm_fit(np.concatenate(list(self._queue)), confidence=self.confidence,
                          floor=self.floor, random_state=self.seed, min_values=self.min_values)
            if not math.isfinite(fit.split):
                raise ValueError(f"the mixture split is not finite ({fit.split})")
        except ValueError as err:
            if not self._warned:
                log.warning("GMM dynamic threshold (CoSA Eq. 6): %s; keeping the previous "
                            "threshold %.4f (warned once)", err, self._threshold)
                self._warned = True
            return self._threshold
        self._last_fit = fit
        self._threshold = self.ema * self._threshold + (1.0 - self.ema) * fit.split
        return self._threshold

    def state_dict(self) -> dict[str, Any]:
        """The resume state, tensors and builtins only (``torch.load(weights_only=True)``)."""
        return {"threshold": self._threshold, "updates": self._updates, "warned": self._warned,
                "queue": [torch.from_numpy(a.copy()) for a in self._queue]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the last ``queue_length`` batches are kept).

        Raises:
            ValueError: a missing key or a threshold that is not finite.
        """
        missing = [k for k in ("threshold", "updates", "queue") if k not in state]
        if missing:
            raise ValueError(f"GMM threshold state lacks {missing}")
        threshold = float(state["threshold"])
        if not math.isfinite(threshold):
            raise ValueError(f"GMM threshold state holds a non-finite threshold {threshold}")
        self._threshold = threshold
        self._updates = int(state["updates"])
        self._warned = bool(state.get("warned", False))
        self._queue = deque((np.asarray(torch.as_tensor(a).cpu().numpy(), dtype=np.float32)
                             for a in state["queue"]), maxlen=self.queue_length)
        self._last_fit = None
