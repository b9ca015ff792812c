"""Per-image overlay sheets: one row of panels from the image to the segmenter's prediction.

Panels: image | fused CAM (max over classes, heat map over the image) | IR label | pseudo mask |
prediction | ground truth. Label maps use the VOC palette (255 in its own colour) and a legend
lists the classes present. The prediction comes from a ``predict(image_uint8) -> labels``
callable, so sheets can be drawn without a trained model. Without IR labels (``masks.source:
cpl``: the pseudo masks are CoSA's CAM pseudo labels, no IRN) the IR-label panel is grey.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tqdm import tqdm

from wsss.data.classes import IGNORE_INDEX, voc_palette
from wsss.data.datasets import load_mask
from wsss.data.images import read_rgb, resize_labels
from wsss.data.table import Record
from wsss.errors import DataError
from wsss.io.atomic import atomic_path
from wsss.io.h5store import H5Reader

Predictor = Callable[[np.ndarray], np.ndarray]

PANELS: tuple[str, ...] = ("image", "fused CAM", "IR label", "pseudo mask", "prediction",
                           "ground truth")
PANEL_INCHES = 2.0  # width and height of one panel
TITLE_INCHES = 0.3
LEGEND_INCHES = 0.4
DPI = 100
PANEL_PX = int(PANEL_INCHES * DPI)
NO_GT_GREY = 0.75


@dataclass(frozen=True)
class SheetData:
    """Everything one sheet shows, all at the image's size."""

    image_id: str
    image: np.ndarray  # (H, W, 3) uint8
    cam: np.ndarray  # (H, W) fused CAM in [0, 1]
    ir_label: np.ndarray | None  # (H, W) uint8, None without IR labels (masks.source: cpl)
    mask: np.ndarray  # (H, W) uint8
    prediction: np.ndarray  # (H, W) uint8
    gt: np.ndarray | None  # (H, W) uint8, None when the image has no ground truth
    mask_title: str = "pseudo mask"


def choose_records(records: Sequence[Record], selection: int | Sequence[str],
                   source: str) -> list[Record]:
    """The first ``selection`` records of the split, or the listed ids in the given order."""
    if isinstance(selection, bool):
        raise DataError(f"report.overlay_images must be a count or a list of ids, got {selection}")
    if isinstance(selection, int):
        return list(records[:max(0, selection)])
    by_id = {r.id: r for r in records}
    unknown = [i for i in selection if str(i) not in by_id]
    if unknown:
        raise DataError(f"report.overlay_images: image {unknown[0]!r} is not in {source}")
    return [by_id[str(i)] for i in selection]


def fused_cam(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Max over classes of a (K, H, W) CAM stack; zeros when the image has no classes."""
    if cams.shape[0] == 0:
        return np.zeros(size, dtype=np.float32)
    return cams.max(axis=0).astype(np.float32)


def colourise(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """A (H, W) label map as (H, W, 3) uint8 colours of a (256, 3) palette."""
    return palette[np.asarray(labels, dtype=np.uint8)]


def _check_size(name: str, arr: np.ndarray, size: tuple[int, int], image_id: str) -> np.ndarray:
    """Raise a DataError when a map's (H, W) differs from its image's."""
    if arr.shape[:2] != tuple(size):
        raise DataError(f"{name} of image {image_id!r} is {arr.shape[1]}x{arr.shape[0]} but the "
                        f"image is {size[1]}x{size[0]}")
    return arr


def gather(rec: Record, seeds: H5Reader, ir_labels: H5Reader | None, masks: H5Reader,
           predict: Predictor) -> SheetData:
    """Read one image's maps from the stores (``ir_labels`` None: no IR labels), predict its
    labels and load its ground truth."""
    image = read_rgb(rec.image)
    size = image.shape[:2]
    cam = fused_cam(seeds.get(rec.id, ["cam"])["cam"], size)
    ir = None
    if ir_labels is not None:
        ir = _check_size(f"the IR label in {ir_labels.path}",
                         ir_labels.get(rec.id, ["label"])["label"], size, rec.id)
    stored = masks.get(rec.id)
    key = "mask_crf" if "mask_crf" in stored else "mask"
    if key not in stored:
        raise DataError(f"{masks.path} has neither mask_crf nor mask for image {rec.id!r}")
    name = "CPL" if masks.meta.get("source") == "cpl" else "pseudo mask"  # masks.source
    prediction = np.asarray(predict(image), dtype=np.uint8)
    gt = load_mask(rec.mask, size, rec.id) if rec.mask is not None else None
    return SheetData(
        image_id=rec.id, image=image,
        cam=_check_size(f"the seed CAM in {seeds.path}", cam, size, rec.id),
        ir_label=ir,
        mask=_check_size(f"the {key} in {masks.path}", stored[key], size, rec.id),
        prediction=_check_size("the prediction", prediction, size, rec.id),
        gt=gt, mask_title=f"{name} (CRF)" if key == "mask_crf" else name)


def _legend_handles(maps: Sequence[np.ndarray], classes: Sequence[str],
                    palette: np.ndarray) -> list[Patch]:
    """One coloured patch per label value present in any of the maps (ignore last)."""
    present = sorted(set().union(*(np.unique(m).tolist() for m in maps)))
    present = [v for v in present if v != IGNORE_INDEX] + \
        ([IGNORE_INDEX] if IGNORE_INDEX in present else [])
    return [Patch(facecolor=palette[v] / 255.0, edgecolor="black", linewidth=0.4,
                  label=classes[v] if v < len(classes) else
                  ("ignore" if v == IGNORE_INDEX else f"class {v}"))
            for v in present]


def draw_sheet(data: SheetData, classes: Sequence[str], path: str | Path) -> None:
    """Draw one sheet (six panels in a row, legend below) as a PNG at ``path``."""
    palette = voc_palette(256)
    n = len(PANELS)
    height = PANEL_INCHES + TITLE_INCHES + LEGEND_INCHES
    fig = Figure(figsize=(n * PANEL_INCHES, height), dpi=DPI)
    bottom, panel_h = LEGEND_INCHES / height, PANEL_INCHES / height
    axes = [fig.add_axes((i / n + 0.005, bottom, 1 / n - 0.01, panel_h)) for i in range(n)]
    titles = [f"image {data.image_id}", "fused CAM (max over classes)", "IR label",
              data.mask_title, "prediction", "ground truth"]
    axes[0].imshow(data.image)
    axes[1].imshow(data.image)
    axes[1].imshow(data.cam, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    label_maps = [m for m in (data.ir_label, data.mask, data.prediction) if m is not None]
    for ax, labels in zip(axes[2:5], (data.ir_label, data.mask, data.prediction)):
        if labels is None:
            ax.imshow(np.full(data.image.shape[:2], NO_GT_GREY), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(colourise(labels, palette), interpolation="nearest")
    if data.ir_label is None:
        titles[2] = "no IR labels"
    if data.gt is None:
        axes[5].imshow(np.full(data.image.shape[:2], NO_GT_GREY), cmap="gray", vmin=0, vmax=1)
        titles[5] = "no ground truth"
    else:
        axes[5].imshow(colourise(data.gt, palette), interpolation="nearest")
        label_maps.append(data.gt)
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    handles = _legend_handles(label_maps, classes, palette)
    fig.legend(handles=handles, loc="lower center", ncol=max(1, min(len(handles), 11)),
               fontsize=7, frameon=False, handlelength=1.2, columnspacing=1.0)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def sheet_name(image_id: str) -> str:
    """A file name for an image id (characters other than letters, digits, ``._-`` -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id) + ".png"


def write_sheets(records: Sequence[Record], seeds: H5Reader, ir_labels: H5Reader | None,
                 masks: H5Reader, predict: Predictor, classes: Sequence[str],
                 out_dir: str | Path) -> list[Path]:
    """Draw one sheet per record into ``out_dir`` (which must exist); return the files
    (``ir_labels`` None: a grey IR-label panel)."""
    out_dir = Path(out_dir)
    written = []
    for rec in tqdm(records, desc="overlay sheets", mininterval=5):
        path = out_dir / sheet_name(rec.id)
        draw_sheet(gather(rec, seeds, ir_labels, masks, predict), classes, path)
        written.append(path)
    return written


def segmenter_predictor(model_path: str | Path, predict_cfg: dict[str, Any], device_name: str,
                        classes: Sequence[str], max_side: int | None = None) -> Predictor:
    """A ``predict(image_uint8) -> labels`` callable from segmentation/model.pt (multi-scale),
    as the predict stage runs it: the network sees the image with its long side capped at
    ``max_side`` (bicubic), the labels come back at the image's size (nearest)."""
    from wsss.models.segmentation import load_segmenter
    from wsss.segment.inference import predict_labels
    from wsss.segment.prediction import predict_image
    from wsss.train.utils import resolve_device

    model, meta = load_segmenter(model_path, resolve_device(device_name), classes, fold=True)
    scales, flip = [float(s) for s in predict_cfg["scales"]], bool(predict_cfg["flip"])

    def predict(image: np.ndarray) -> np.ndarray:
        probs = predict_image(model, meta, image, scales, flip, max_side)
        return resize_labels(predict_labels(probs), image.shape[:2])

    return predict
