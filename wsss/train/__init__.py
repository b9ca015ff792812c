"""Training shared by every trained stage: the loop (:mod:`~wsss.train.loop`), optimizers and
the lr schedule (:mod:`~wsss.train.optim`), the data order (:mod:`~wsss.train.data`), RNGs
(:mod:`~wsss.train.rng`), learning counts (:mod:`~wsss.train.counts`) and devices / frozen
layers (:mod:`~wsss.train.utils`)."""
