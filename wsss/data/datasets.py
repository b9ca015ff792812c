"""Torch datasets over split records: augmented classification crops and whole images."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from wsss.data.classes import IGNORE_INDEX
from wsss.data.images import cap_rgb, image_size, read_rgb
from wsss.errors import DataError


def jitter_flip_crop(img: np.ndarray, label: np.ndarray, rescale: tuple[float, float], crop: int,
                     mean: Sequence[float], std: Sequence[float],
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training augmentation of an image and its label map at one place: random rescale
    (bilinear / nearest), horizontal flip, normalisation and a random crop padded with 0 / 255."""
    s = rng.uniform(*rescale)
    h, w = max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))
    img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    if rng.random() < 0.5:
        img, label = img[:, ::-1], label[:, ::-1]
    x, y = random_crop([normalize(img, mean, std), torch.from_numpy(np.array(label))],
                       [0.0, IGNORE_INDEX], crop, rng)
    return x, y


def load_mask(path: object, size: tuple[int, int], image_id: str) -> np.ndarray:
    """Read a ground-truth mask (uint8 class indices, 255 ignore) and check it has ``size``.

    Masks are label maps drawn on the displayed image: read as stored, with no EXIF
    transposition (docs/images.md). Masks are optional: callers skip images without one
    (``path`` None is a ValueError, a programming error; see
    :func:`wsss.data.coverage.split_by_ground_truth`). An unreadable mask or one of another size
    is a DataError naming it.
    """
    if path is None:
        raise ValueError(f"image {image_id!r} has no ground-truth mask: skip it before scoring")
    try:
        with Image.open(path) as im:
            gt = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from exc
    if gt.shape != tuple(size):
        raise DataError(f"mask {path} is {gt.shape[1]}x{gt.shape[0]} but the maps of "
                        f"{image_id!r} are {size[1]}x{size[0]}")
    return gt


def multi_hot(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """Turn class indices 1..C into a (C,) float multi-hot vector (background excluded)."""
    out = torch.zeros(n_classes)
    for c in labels:
        out[c - 1] = 1.0
    return out


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Convert an (H, W, 3) uint8 image to a normalised (3, H, W) float tensor."""
    # a copy: PIL-backed arrays are read-only, which torch.from_numpy warns about
    t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    return t.sub_(torch.tensor(mean)[:, None, None]).div_(torch.tensor(std)[:, None, None])


class ClassificationCrops(Dataset):
    """Training crops (IRN style): random long-side resize, flip, normalise, random crop + pad."""

    def __init__(self, records: Sequence, n_classes: int, crop: int,
                 resize_long: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 seed: int = 0) -> None:
        self.records, self.n_classes, self.crop = list(records), n_classes, crop
        self.resize_long, self.mean, self.std, self.seed = resize_long, mean, std, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.records[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img = Image.fromarray(read_rgb(rec.image))
        long = int(rng.integers(self.resize_long[0], self.resize_long[1] + 1))
        w, h = img.size
        s = long / max(h, w)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        arr = np.asarray(img)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        t = normalize(arr, self.mean, self.std)
        (t,) = random_crop([t], [0.0], self.crop, rng)
        return t, multi_hot(rec.labels, self.n_classes)


def random_crop(tensors: Sequence[torch.Tensor], fills: Sequence[float], crop: int,
                rng: np.random.Generator) -> list[torch.Tensor]:
    """Crop (or pad with ``fills``, then crop) same-size (..., H, W) tensors to (..., crop, crop)
    at one random place, e.g. an image (fill 0) and its label map (fill 255)."""
    h, w = tensors[0].shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    sy, sx = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    dy, dx = int(rng.integers(0, crop - ch + 1)), int(rng.integers(0, crop - cw + 1))
    out = []
    for t, fill in zip(tensors, fills, strict=True):
        o = torch.full((*t.shape[:-2], crop, crop), fill, dtype=t.dtype)
        o[..., dy:dy + ch, dx:dx + cw] = t[..., sy:sy + ch, sx:sx + cw]
        out.append(o)
    return out


class WholeImages(Dataset):
    """Whole images at their own size, normalised, with their multi-hot labels and index."""

    def __init__(self, records: Sequence, n_classes: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.records, self.n_classes, self.mean, self.std = list(records), n_classes, mean, std

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rec = self.records[i]
        return (normalize(read_rgb(rec.image), self.mean, self.std),
                multi_hot(rec.labels, self.n_classes), i)


def size_batches(records: list, batch_size: int) -> list[list[int]]:
    """Group record indices into batches of images with identical displayed (H, W) (after EXIF
    transposition, :func:`wsss.data.images.image_size`), in record order."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        groups[image_size(rec.image)].append(i)
    batches = [idx[j:j + batch_size] for idx in groups.values()
               for j in range(0, len(idx), batch_size)]
    return sorted(batches, key=lambda b: b[0])


class InferenceImages(Dataset):
    """Whole images as the inference networks see them: read as displayed
    (:func:`wsss.data.images.read_rgb`), long side capped at ``max_side`` (bicubic, antialiased;
    :func:`wsss.data.images.cap_rgb`), NOT normalised. Items: ((3, h, w) uint8 tensor, (C,)
    multi-hot labels, index, the displayed (H, W) before the cap)."""

    def __init__(self, records: Sequence, n_classes: int, max_side: int | None) -> None:
        self.records, self.n_classes, self.max_side = list(records), n_classes, max_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, tuple[int, int]]:
        rec = self.records[i]
        img = read_rgb(rec.image)
        seen = cap_rgb(img, self.max_side)
        x = torch.from_numpy(np.array(seen, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return x, multi_hot(rec.labels, self.n_classes), i, (img.shape[0], img.shape[1])
