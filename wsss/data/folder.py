"""A user's own data set: an images folder, a labels CSV per split and optional masks.

Ids follow the rule of :func:`wsss.data.table.check_id` (plain names: no path separators, not
``.``/``..``, no leading dot, no control characters); a bad one stops with the labels CSV's file
and line. Masks are optional: an image without ``<masks>/<id>.png`` is trained on but not scored.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from wsss.data.table import check_id, parse_labels
from wsss.errors import DataError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".JPG", ".JPEG",
                                  ".PNG", ".TIF", ".TIFF")


def _find_image(images_dir: Path, ident: str) -> Path | None:
    """Return ``<images_dir>/<id>.<jpg|jpeg|png|tif|tiff>`` (any case listed) if one exists."""
    for suffix in IMAGE_SUFFIXES:
        path = images_dir / f"{ident}{suffix}"
        if path.is_file():
            return path
    return None


def folder_records(images_dir: Path, labels_csv: Path, classes: Sequence[str],
                   masks_dir: Path | None = None) -> list[dict]:
    """Return records for the ids of ``labels_csv`` (columns ``id, labels``; names joined by ';').

    With ``masks_dir``, ``<masks_dir>/<id>.png`` becomes the mask where it exists (ids without
    one get an empty mask and are left out of evaluation).
    """
    images_dir = Path(images_dir).resolve()
    labels_csv = Path(labels_csv)
    if not images_dir.is_dir():
        raise DataError(f"images directory not found: {images_dir}")
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise DataError(f"masks directory not found: {masks_dir}")
    if not labels_csv.is_file():
        raise DataError(f"labels CSV not found: {labels_csv}")
    records: list[dict] = []
    with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        try:
            _read_rows(reader, labels_csv, images_dir, classes, masks_dir, records)
        except csv.Error as exc:
            raise DataError(f"{labels_csv}, line {reader.line_num}: unreadable CSV: {exc}"
                            ) from None
    if not records:
        raise DataError(f"{labels_csv}: no rows after the header")
    return records


def _read_rows(reader: csv.DictReader, labels_csv: Path, images_dir: Path,
               classes: Sequence[str], masks_dir: Path | None, records: list[dict]) -> None:
    """Append the records of the rows of ``reader`` to ``records`` (errors name the line)."""
    header = [h.strip() for h in reader.fieldnames or []]
    if "id" not in header or "labels" not in header:
        raise DataError(f"{labels_csv}, line 1: expected columns id, labels (got "
                        f"{', '.join(header) or 'nothing'})")
    reader.fieldnames = header
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        where = f"{labels_csv}, line {line}"
        ident = (row.get("id") or "").strip()
        check_id(ident, where)
        if ident in seen:
            raise DataError(f"{where}: duplicate id {ident!r} (first on line {seen[ident]})")
        seen[ident] = line
        names = parse_labels(row.get("labels") or "", classes, where)
        image = _find_image(images_dir, ident)
        if image is None:
            raise DataError(f"{where}: no image {images_dir / ident}.jpg|.jpeg|.png")
        mask = Path(masks_dir).resolve() / f"{ident}.png" if masks_dir is not None else None
        records.append({
            "id": ident,
            "image": str(image),
            "mask": str(mask) if mask is not None and mask.is_file() else "",
            "labels": [classes[i] for i in names],
        })
