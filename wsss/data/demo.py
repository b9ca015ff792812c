"""The embedded demo data set: animal silhouettes filled with photo textures on habitat photos.

Everything comes from installed packages (animal-mnist silhouettes, scikit-image and scikit-learn
sample photos); nothing is downloaded. Generation is deterministic: image ``i`` of a split depends
only on ``(seed, split, i)`` and the size arguments, never on how many images are made or on how
many worker processes make them.
"""

from __future__ import annotations

import gzip
import importlib.util
import multiprocessing
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.classes import DEMO_CLASSES, IGNORE_INDEX, voc_palette
from wsss.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val")

# animal-mnist 0.4 label ids (checked by eye: the ten classes in alphabetical order).
ANIMAL_MNIST_IDS: dict[str, int] = {
    "bear": 0, "bird": 1, "cat": 2, "cow": 3, "dog": 4,
    "elephant": 5, "giraffe": 6, "horse": 7, "sheep": 8, "zebra": 9,
}

# Each class is filled with crops of one photo; ``roi`` (y0, x0, y1, x1 as fractions) keeps the
# crops on the textured part of the photo (the retina photo is a disc on black).
FILL_PHOTOS: dict[str, str] = {
    "bird": "immunohistochemistry",
    "cat": "chelsea",
    "cow": "brick",
    "dog": "coffee",
    "horse": "retina",
    "sheep": "gravel",
}
_ROI: dict[str, tuple[float, float, float, float]] = {"retina": (0.22, 0.22, 0.78, 0.78)}

# Backgrounds: crops of the other photos, grouped into habitats. No fill photo appears here.
HABITATS: dict[str, tuple[str, ...]] = {
    "field": ("grass", "china", "camera", "flower"),
    "house": ("motorcycle", "astronaut", "clock", "page", "text"),
    "night": ("rocket", "hubble_deep_field", "moon", "cell", "coins"),
}
HOME_HABITAT: dict[str, str] = {
    "bird": "night", "cat": "house", "cow": "field",
    "dog": "house", "horse": "night", "sheep": "field",
}

VAL_FOLD = 5  # animal-mnist silhouettes with index % 5 == 4 are kept for val, the rest for train
_CLASS_COUNT_P = (0.5, 0.35, 0.15)  # probability of 1, 2, 3 classes in an image
_INSTANCE_COUNT_P = (0.72, 0.23, 0.05)  # probability of 1, 2, 3 instances of a class
_MIN_SILHOUETTE_PIXELS = 60  # skip degenerate silhouettes (a few specks, or a thin line)
_MIN_SILHOUETTE_EXTENT = 8
_MIN_VISIBLE_FRACTION = 0.01
_MIN_VISIBLE_PIXELS = 30
_FILL_SCALE = 2.4  # fill photos are resized so their short side is about this x image size
_BG_SCALES = (1.3, 2.0)  # background photos: two zoom levels relative to the image long side
_SATURATION = (0.35, 1.15)  # saturation factor range of every crop (0 = grey)


@dataclass(frozen=True)
class Instance:
    """One pasted animal: class index, top-left corner and its soft alpha mask."""

    cls: int
    top: int
    left: int
    alpha: np.ndarray  # float32 (h, w) in [0, 1]; the hard mask is alpha >= 0.5


@dataclass(frozen=True)
class ImagePlan:
    """The geometry of one demo image: size, instances, ground truth, labels and habitat."""

    height: int
    width: int
    instances: tuple[Instance, ...]
    mask: np.ndarray  # uint8 (H, W): 0 background, 1..6 classes, 255 border band / too small
    labels: tuple[int, ...]  # visible class indices, sorted
    habitat: str
    context: bool  # True when the habitat was drawn as the home of a visible class


@dataclass(frozen=True)
class _Assets:
    """Photos and silhouettes prepared once per generation call."""

    fills: dict[str, np.ndarray]  # class name -> uint8 RGB photo (ROI, rescaled)
    backgrounds: dict[str, tuple[np.ndarray, ...]]  # photo name -> uint8 RGB zoom levels
    silhouettes: np.ndarray  # uint8 (N, 28, 28)
    pools: dict[tuple[str, int], np.ndarray]  # (split, class index) -> silhouette indices


def _animal_mnist_dir() -> Path:
    """Locate animal-mnist's bundled data without importing its (tensorflow-based) loader."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "package animal-mnist is not installed (pip install --no-deps animal-mnist==0.4)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


@cache
def load_silhouettes() -> tuple[np.ndarray, np.ndarray]:
    """Return animal-mnist's (10000, 28, 28) uint8 silhouettes and their label ids."""
    folder = _animal_mnist_dir()
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        path = folder / name
        if not path.is_file():
            raise DataError(f"animal-mnist data file missing: {path}")
        with gzip.open(path, "rb") as fh:
            arrays.append(np.asarray(pickle.load(fh)))
    data, labels = arrays
    return data.astype(np.uint8), labels.astype(np.int64)


@cache
def load_photo(name: str) -> np.ndarray:
    """Return one bundled sample photo as uint8 RGB (grey photos are replicated to 3 channels)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(
            skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3].astype(np.uint8))


def _resize_short(img: np.ndarray, short: int) -> np.ndarray:
    """Resize an RGB array so that its short side is ``short`` pixels (Lanczos)."""
    h, w = img.shape[:2]
    f = short / min(h, w)
    size = (max(short, round(w * f)), max(short, round(h * f)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def _build_assets(size: int, size_jitter: int) -> _Assets:
    """Load and rescale every photo and silhouette pool for images of the given size range."""
    long_side = size + size_jitter
    fills = {}
    for cls, photo in FILL_PHOTOS.items():
        img = load_photo(photo)
        y0, x0, y1, x1 = _ROI.get(photo, (0.0, 0.0, 1.0, 1.0))
        h, w = img.shape[:2]
        img = img[round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)]
        fills[cls] = _resize_short(img, max(long_side, round(_FILL_SCALE * size)))
    backgrounds = {}
    for names in HABITATS.values():
        for name in names:
            img = load_photo(name)
            backgrounds[name] = tuple(
                _resize_short(img, max(long_side, round(s * long_side))) for s in _BG_SCALES)
    data, labels = load_silhouettes()
    index = np.arange(len(labels))
    fg = data > 127
    rows, cols = fg.any(axis=2), fg.any(axis=1)
    extent = np.minimum(28 - rows[:, ::-1].argmax(1) - rows.argmax(1),
                        28 - cols[:, ::-1].argmax(1) - cols.argmax(1))
    usable = (fg.sum(axis=(1, 2)) >= _MIN_SILHOUETTE_PIXELS) & (extent >= _MIN_SILHOUETTE_EXTENT)
    pools = {}
    for c, name in enumerate(DEMO_CLASSES[1:], start=1):
        of_class = index[(labels == ANIMAL_MNIST_IDS[name]) & usable]
        is_val = of_class % VAL_FOLD == VAL_FOLD - 1
        pools["train", c] = of_class[~is_val]
        pools["val", c] = of_class[is_val]
    return _Assets(fills, backgrounds, data, pools)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Return the random generator of one demo image (independent of split sizes)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [seed, SPLITS.index(split), index])))


def _silhouette_alpha(sil: np.ndarray, h: int, w: int, flip: bool) -> np.ndarray:
    """Upsample a 28x28 silhouette smoothly to (h, w) and return a soft alpha with ~1 px edge."""
    fg = sil > 127
    ys, xs = np.nonzero(fg)
    crop = sil[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    if flip:
        crop = crop[:, ::-1]
    up = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
        (w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    scale = max(h / crop.shape[0], w / crop.shape[1])
    return np.clip((up - 127.5) * (scale / 255.0) + 0.5, 0.0, 1.0)


def _shift_max_min(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 maximum and minimum filters of an integer map (edge-replicated)."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    hi = a.copy()
    lo = a.copy()
    for dy in range(3):
        for dx in range(3):
            s = p[dy:dy + h, dx:dx + w]
            np.maximum(hi, s, out=hi)
            np.minimum(lo, s, out=lo)
    return hi, lo


SIZE_STEP = 16


def _plan(rng: np.random.Generator, assets: _Assets, split: str, size: int, size_jitter: int,
          p_ctx: float) -> ImagePlan:
    """Draw size, classes, instances and habitat of one image; retry until a label is visible."""
    # Sides step by 16 px (like VOC's few distinct sizes), so same-size images batch together.
    height = size + SIZE_STEP * int(rng.integers(0, size_jitter // SIZE_STEP + 1))
    width = size + SIZE_STEP * int(rng.integers(0, size_jitter // SIZE_STEP + 1))
    n_cls = len(DEMO_CLASSES) - 1
    while True:
        k = 1 + int(rng.choice(3, p=_CLASS_COUNT_P))
        classes = sorted(int(c) + 1 for c in rng.choice(n_cls, size=k, replace=False))
        todo = [c for c in classes for _ in range(1 + int(rng.choice(3, p=_INSTANCE_COUNT_P)))]
        order = rng.permutation(len(todo))
        shrink = {1: 1.0, 2: 0.85, 3: 0.75}.get(len(todo), 0.65)
        instances = []
        inst_map = np.zeros((height, width), np.int32)
        cls_map = np.zeros((height, width), np.uint8)
        for n, j in enumerate(order, start=1):
            c = todo[j]
            pool = assets.pools[split, c]
            sil = assets.silhouettes[pool[int(rng.integers(len(pool)))]]
            ys, xs = np.nonzero(sil > 127)
            aspect = (np.ptp(ys) + 1) / (np.ptp(xs) + 1) * rng.uniform(0.85, 1.15)
            long_side = rng.uniform(0.45, 0.95) * min(height, width) * shrink
            h = max(8, round(long_side * min(1.0, aspect)))
            w = max(8, round(long_side * min(1.0, 1.0 / aspect)))
            alpha = _silhouette_alpha(sil, h, w, bool(rng.random() < 0.5))
            top = int(rng.integers(-h // 10, max(-h // 10, height - h + h // 10) + 1))
            left = int(rng.integers(-w // 10, max(-w // 10, width - w + w // 10) + 1))
            inst = Instance(c, top, left, alpha)
            instances.append(inst)
            ys0, ys1 = max(top, 0), min(top + h, height)
            xs0, xs1 = max(left, 0), min(left + w, width)
            hard = alpha[ys0 - top:ys1 - top, xs0 - left:xs1 - left] >= 0.5
            inst_map[ys0:ys1, xs0:xs1][hard] = n
            cls_map[ys0:ys1, xs0:xs1][hard] = c
        hi, lo = _shift_max_min(inst_map)
        mask = cls_map.copy()
        mask[hi != lo] = IGNORE_INDEX
        min_visible = max(_MIN_VISIBLE_PIXELS, round(_MIN_VISIBLE_FRACTION * height * width))
        counts = np.bincount(mask.ravel(), minlength=256)
        labels = tuple(c for c in classes if counts[c] >= min_visible)
        for c in classes:
            if c not in labels:
                mask[mask == c] = IGNORE_INDEX
        if labels:
            break
    context = bool(rng.random() < p_ctx)
    if context:
        habitat = HOME_HABITAT[DEMO_CLASSES[labels[int(rng.integers(len(labels)))]]]
    else:
        habitat = list(HABITATS)[int(rng.integers(len(HABITATS)))]
    return ImagePlan(height, width, tuple(instances), mask, labels, habitat, context)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild colour jitter (saturation, contrast, brightness, per-channel gain) as float32.

    The saturation draw sometimes washes a crop out towards grey, so mean colour alone is a
    weaker cue than texture.
    """
    x = img.astype(np.float32)
    grey = (x @ _LUMA)[:, :, None]
    x = grey + np.float32(rng.uniform(*_SATURATION)) * (x - grey)
    mean = x.mean()
    gain = rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    x = (x - mean) * np.float32(rng.uniform(0.85, 1.15)) + mean + np.float32(rng.normal(0, 10))
    return x * gain


def _crop(img: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Random (h, w) crop of ``img`` with random flips (the photo must be at least that big)."""
    y = int(rng.integers(0, img.shape[0] - h + 1))
    x = int(rng.integers(0, img.shape[1] - w + 1))
    out = img[y:y + h, x:x + w]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return out


def _render(plan: ImagePlan, assets: _Assets, rng: np.random.Generator) -> np.ndarray:
    """Paint the background crop and the textured instances of a plan; return uint8 RGB."""
    names = HABITATS[plan.habitat]
    levels = assets.backgrounds[names[int(rng.integers(len(names)))]]
    bg = levels[int(rng.integers(len(levels)))]
    canvas = _jitter(_crop(bg, plan.height, plan.width, rng), rng)
    for inst in plan.instances:
        h, w = inst.alpha.shape
        fill = _jitter(_crop(assets.fills[DEMO_CLASSES[inst.cls]], h, w, rng), rng)
        ys0, ys1 = max(inst.top, 0), min(inst.top + h, plan.height)
        xs0, xs1 = max(inst.left, 0), min(inst.left + w, plan.width)
        if ys1 <= ys0 or xs1 <= xs0:
            continue
        a = inst.alpha[ys0 - inst.top:ys1 - inst.top, xs0 - inst.left:xs1 - inst.left, None]
        f = fill[ys0 - inst.top:ys1 - inst.top, xs0 - inst.left:xs1 - inst.left]
        region = canvas[ys0:ys1, xs0:xs1]
        region += a * (f - region)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Settings:
    """Everything a worker needs besides the image index."""

    image_root: Path
    mask_root: Path
    assets: _Assets
    size: int
    size_jitter: int
    seed: int
    p_ctx: float


_WORKER: list[_Settings] = []
_PALETTE: list[int] = voc_palette(256).ravel().tolist()


def _init_worker(settings: _Settings) -> None:
    """Store the shared generation settings in a worker process."""
    _WORKER[:] = [settings]


def _make_one(job: tuple[str, int]) -> dict:
    """Generate, write and describe one image (runs in a worker or in-process)."""
    split, i = job
    st = _WORKER[0]
    rng = image_rng(st.seed, split, i)
    plan = _plan(rng, st.assets, split, st.size, st.size_jitter, st.p_ctx)
    image = _render(plan, st.assets, rng)
    ident = f"{split}_{i:05d}"
    Image.fromarray(image).save(st.image_root / split / f"{ident}.jpg", format="JPEG", quality=95)
    m = Image.fromarray(plan.mask, mode="P")
    m.putpalette(_PALETTE)
    m.save(st.mask_root / split / f"{ident}.png", format="PNG")
    return {"id": ident, "image": f"images/{split}/{ident}.jpg",
            "mask": f"masks/{split}/{ident}.png", "labels": [DEMO_CLASSES[c] for c in plan.labels]}


def plan_demo_image(seed: int, split: str, index: int, size: int, p_ctx: float,
                    size_jitter: int = 32) -> ImagePlan:
    """Return the geometry (mask, labels, habitat) that ``generate_demo`` uses for one image."""
    assets = _cached_assets(size, size_jitter)
    return _plan(image_rng(seed, split, index), assets, split, size, size_jitter, p_ctx)


@cache
def _cached_assets(size: int, size_jitter: int) -> _Assets:
    """Assets memoised per size (for ``plan_demo_image``)."""
    return _build_assets(size, size_jitter)


def generate_demo(root: Path, n_train: int, n_val: int, size: int, seed: int, p_ctx: float,
                  size_jitter: int = 32, *, workers: int = 1,
                  image_root: Path | None = None, mask_root: Path | None = None,
                  progress: Callable[[Iterator[dict], int], Iterator[dict]] | None = None,
                  ) -> dict[str, list[dict]]:
    """Write demo images and masks under ``root``; return per split records with relative paths.

    Files go to ``root/images/<split>/<id>.jpg`` and ``root/masks/<split>/<id>.png``, or to
    ``image_root`` / ``mask_root`` (staging directories) when given; record paths always read
    ``images/<split>/<id>.jpg`` and ``masks/<split>/<id>.png``. ``progress(iterator, total)`` may
    wrap the per-image results (e.g. tqdm).
    """
    if size < 32 or size_jitter < 0 or n_train < 1 or n_val < 1 or not 0.0 <= p_ctx <= 1.0:
        raise DataError(f"invalid demo settings: n_train={n_train} n_val={n_val} size={size} "
                        f"size_jitter={size_jitter} p_ctx={p_ctx}")
    image_root = Path(image_root) if image_root is not None else Path(root) / "images"
    mask_root = Path(mask_root) if mask_root is not None else Path(root) / "masks"
    for split in SPLITS:
        (image_root / split).mkdir(parents=True, exist_ok=True)
        (mask_root / split).mkdir(parents=True, exist_ok=True)
    assets = _cached_assets(size, size_jitter)
    jobs = [("train", i) for i in range(n_train)] + [("val", i) for i in range(n_val)]
    settings = _Settings(image_root, mask_root, assets, size, size_jitter, seed, p_ctx)
    wrap = progress if progress is not None else (lambda it, total: it)
    if workers <= 1 or len(jobs) < 64:
        _init_worker(settings)
        results = list(wrap(map(_make_one, jobs), len(jobs)))
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ctx.Pool(workers, initializer=_init_worker, initargs=(settings,)) as pool:
            chunk = max(1, min(32, len(jobs) // (8 * workers)))
            results = list(wrap(pool.imap(_make_one, jobs, chunksize=chunk), len(jobs)))
    return {"train": results[:n_train], "val": results[n_train:]}
