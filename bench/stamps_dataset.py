"""A second data set the pipeline was never tuned on: photographed objects on nature photos.

Builds a ``folder`` data set (docs/data.md) from two Debian packages that hold real photos:

* objects: Tux Paint's stamps (``tuxpaint-stamps-default``, GPL-2+ / CC): photographs of birds,
  fish, fruit, vegetables, flowers and vehicles cut out with an alpha channel, so every pasted
  object brings its exact mask;
* backgrounds: MATE's desktop backgrounds (``mate-backgrounds``, GPL-2+ / CC-BY-SA): nature
  and abstract photographs.

Nothing here comes from the demo's sources (animal-mnist silhouettes filled with scikit-image /
scikit-learn photos). Each image pastes 1-3 classes (1-2 instances each, scaled, flipped,
possibly overlapping) on a random crop of a background; the ground truth is the class of the
topmost object's opaque pixels (alpha >= 128), 0 elsewhere and 255 on a 2-px band around every
object boundary (as the demo and VOC); image labels are the classes with at least 1 % of the
image still visible. Object instances are split between train and val (every fourth stamp of
a class is a val object), so val measures generalisation to unseen objects.

    apt-get download tuxpaint-stamps-default mate-backgrounds
    dpkg -x tuxpaint-stamps-default_*.deb /tmp/stamps; dpkg -x mate-backgrounds_*.deb /tmp/stamps
    python bench/stamps_dataset.py --root /tmp/stamps/usr/share --out /tmp/stamps-data
    snakemake --cores all --configfile config.yaml /tmp/stamps-data/config.yaml

The written ``config.yaml`` holds the ``dataset`` section and ``run: stamps``: stacked after the
demo's config.yaml it runs the demo's settings, unchanged, on this data.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage

# class -> stamp folders under <root>/tuxpaint/stamps (cartoon sub-folders are left out)
CLASSES: dict[str, tuple[str, ...]] = {
    "bird": ("animals/birds",),
    "fish": ("animals/fish",),
    "fruit": ("food/fruit",),
    "vegetable": ("food/vegetables",),
    "flower": ("plants/flowers",),
    "vehicle": ("vehicles",),
}
# MATE backgrounds without flowers (a flower in the background would be an unlabelled object of
# a class) and without near-uniform or transparent pictures
BACKGROUNDS = tuple(f"backgrounds/mate/{name}" for name in (
    "nature/Aqua.jpg", "nature/Blinds.jpg", "nature/Dune.jpg", "nature/GreenMeadow.jpg",
    "nature/RainDrops.jpg", "nature/Storm.jpg", "nature/Wood.jpg", "abstract/Elephants.jpg",
    "abstract/Flow.png", "abstract/Gulp.png", "desktop/Float-into-MATE.png",
    "desktop/Stripes.png", "desktop/Ubuntu-Mate-Cold-no-logo.png",
    "desktop/Ubuntu-Mate-Dark-no-logo.png", "desktop/Ubuntu-Mate-Radioactive-no-logo.png",
    "desktop/Ubuntu-Mate-Warm-no-logo.png"))
IGNORE = 255


def load_stamps(root: Path, max_side: int = 192) -> dict[str, list[Image.Image]]:
    """Every photographed stamp of each class as an RGBA image (long side <= ``max_side``)."""
    stamps: dict[str, list[Image.Image]] = {}
    for name, folders in CLASSES.items():
        files = sorted(f for d in folders for f in (root / "tuxpaint/stamps" / d).rglob("*.png")
                       if "cartoon" not in f.parts)
        images = []
        for f in files:
            im = Image.open(f).convert("RGBA")
            box = im.getchannel("A").point(lambda a: 255 if a >= 128 else 0).getbbox()
            if box is None:
                continue
            im = im.crop(box)
            im.thumbnail((max_side, max_side), Image.LANCZOS)
            images.append(im)
        if len(images) < 4:
            raise SystemExit(f"class {name!r}: {len(images)} stamps under {folders} "
                             f"(need >= 4); is --root the unpacked packages' usr/share?")
        stamps[name] = images
    return stamps


def load_backgrounds(root: Path, side: int = 640) -> list[np.ndarray]:
    """The background photos as RGB arrays, shrunk to a short side of ``side``."""
    out = []
    for name in BACKGROUNDS:
        if not (root / name).is_file():
            raise SystemExit(f"background {root / name} not found; is --root the unpacked "
                             "packages' usr/share?")
        im = Image.open(root / name).convert("RGB")
        scale = side / min(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        out.append(np.asarray(im))
    return out


def compose(stamps: dict[str, list[Image.Image]], backgrounds: list[np.ndarray],
            rng: np.random.Generator, size: int, jitter: int) -> tuple[np.ndarray, np.ndarray,
                                                                       list[str]]:
    """One image, its mask and its labels."""
    names = list(stamps)
    h = size + int(rng.integers(0, jitter + 1))
    w = size + int(rng.integers(0, jitter + 1))
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    crop = int(rng.integers(min(bg.shape[:2]) // 3, min(bg.shape[:2]) + 1))
    y0 = int(rng.integers(0, bg.shape[0] - crop + 1))
    x0 = int(rng.integers(0, bg.shape[1] - crop + 1))
    canvas = Image.fromarray(bg[y0:y0 + crop, x0:x0 + crop]).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.FLIP_LEFT_RIGHT)
    label = np.zeros((h, w), np.uint8)
    chosen = rng.choice(len(names), size=int(rng.integers(1, 4)), replace=False)
    for c in chosen:
        for _ in range(int(rng.integers(1, 3))):
            stamp = stamps[names[c]][int(rng.integers(len(stamps[names[c]])))]
            long_side = rng.uniform(0.3, 0.65) * min(h, w)
            scale = long_side / max(stamp.size)
            im = stamp.resize((max(4, round(stamp.width * scale)),
                               max(4, round(stamp.height * scale))), Image.BILINEAR)
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            px = int(rng.integers(-im.width // 4, w - im.width * 3 // 4 + 1))
            py = int(rng.integers(-im.height // 4, h - im.height * 3 // 4 + 1))
            canvas.paste(im, (px, py), im)
            alpha = np.asarray(im.getchannel("A")) >= 128
            ys, xs = np.nonzero(alpha)
            ys, xs = ys + py, xs + px
            keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            obj = np.zeros((h, w), bool)
            obj[ys[keep], xs[keep]] = True
            label[obj] = c + 1
    band = ndimage.morphological_gradient(label, size=3) > 0  # 2 px across each boundary
    visible = [names[c] for c in sorted(chosen) if (label == c + 1).mean() >= 0.01]
    label[band] = IGNORE
    return np.asarray(canvas), label, visible


def main() -> None:
    """Write images/, masks/, train.csv, val.csv and config.yaml under --out."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True,
                    help="usr/share of the unpacked tuxpaint-stamps-default and mate-backgrounds")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=1200)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--jitter", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    stamps = load_stamps(args.root)
    backgrounds = load_backgrounds(args.root)
    # every fourth stamp of a class is seen only in val
    split = {"train": {k: [s for i, s in enumerate(v) if i % 4] for k, v in stamps.items()},
             "val": {k: v[::4] for k, v in stamps.items()}}
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for name, n in (("train", args.n_train), ("val", args.n_val)):
        rows = []
        for i in range(n):
            while True:
                img, mask, labels = compose(split[name], backgrounds, rng, args.size,
                                            args.jitter)
                if labels:
                    break
            ident = f"{name}_{i:05d}"
            Image.fromarray(img).save(args.out / "images" / f"{ident}.jpg", quality=92)
            Image.fromarray(mask).save(args.out / "masks" / f"{ident}.png")
            rows.append((ident, ";".join(labels)))
        with open(args.out / f"{name}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "labels"])
            writer.writerows(rows)
    config = {"run": "stamps",
              "dataset": {"name": "folder", "root": str(args.out.resolve()),
                          "classes": ["background", *CLASSES],
                          "folder": {"images": "images", "masks": "masks",
                                     "train_labels": "train.csv", "val_labels": "val.csv"}}}
    (args.out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    counts = {k: (len(split["train"][k]), len(split["val"][k])) for k in stamps}
    print(f"wrote {args.n_train} train + {args.n_val} val images to {args.out}; stamps per "
          f"class (train, val): {counts}; {len(backgrounds)} backgrounds")


if __name__ == "__main__":
    main()
