"""The split CSV (``data/<split>.csv``) shared by every stage: read, write and validate it.

Columns: ``id, image, mask, labels``. ``labels`` holds class names joined by ``;`` (no
background); ``mask`` may be empty; ``image`` and ``mask`` are absolute or relative to the CSV's
directory. Errors name the file and the line (the header is line 1, like a spreadsheet row).

Ids name files (``masks/<split>/<id>.png``, ``report/overlays/<id>.png``) and HDF5 groups
(``/images/<id>``), so an id must be a plain name: :func:`check_id` gives the rule, enforced
wherever CSV rows become records (every data set at ``prepare_data`` and every stage that reads a
split CSV) and by the ``folder`` data set's labels CSV.
"""

from __future__ import annotations

import csv
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.classes import IGNORE_INDEX
from wsss.data.images import READ_ERRORS, orientation, read_rgb
from wsss.errors import DataError
from wsss.io.atomic import atomic_path

COLUMNS: tuple[str, ...] = ("id", "image", "mask", "labels")
LABEL_SEP = ";"
ID_RULE = ("ids name files and HDF5 groups, so an id must be a plain name: not empty, no '/' "
           "or '\\', not '.' or '..', no leading '.', no control characters")


@dataclass(frozen=True)
class Record:
    """One image of a split: id, absolute image path, optional mask path, class indices 1..C."""

    id: str
    image: Path
    mask: Path | None
    labels: tuple[int, ...]


def _cell(value: object) -> str:
    """Format one CSV cell (paths as POSIX strings, ``None`` as empty)."""
    if value is None:
        return ""
    if isinstance(value, os.PathLike):
        return Path(value).as_posix()
    return str(value)


def write_split_csv(path: Path, records: Iterable[Mapping[str, object]]) -> None:
    """Write records (dicts with id, image, mask, labels as a list of class names) atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for rec in records:
            labels = rec.get("labels") or []
            if isinstance(labels, str):
                labels = [labels]
            writer.writerow([_cell(rec["id"]), _cell(rec["image"]), _cell(rec.get("mask")),
                             LABEL_SEP.join(str(x) for x in labels)])


def check_id(ident: str, where: str) -> None:
    """Raise a DataError (prefixed with ``where``, e.g. ``train.csv, line 4``) when ``ident``
    breaks the id rule: empty, containing ``/`` or ``\\``, ``.`` or ``..``, starting with
    ``.``, or containing a control character (Unicode category Cc: NUL, tab, newline, DEL...)."""
    if not ident:
        problem = "is empty"
    elif "/" in ident or "\\" in ident:
        flat = ident.replace("/", "_").replace("\\", "_")
        problem = "contains a path separator"
        if not flat.startswith("."):
            problem += f" (an image in a sub-folder: give it a flat name such as {flat!r})"
    elif ident in (".", ".."):
        problem = "is a relative directory name"
    elif ident.startswith("."):
        problem = "starts with '.'"
    elif any(unicodedata.category(ch) == "Cc" for ch in ident):
        problem = "contains a control character"
    else:
        return
    raise DataError(f"{where}: id {ident!r} {problem}; {ID_RULE}")


def parse_labels(text: str, classes: Sequence[str], where: str) -> tuple[int, ...]:
    """Turn ``'cat;dog'`` into sorted class indices; ``where`` names the file and line on error."""
    index = {name: i for i, name in enumerate(classes) if i > 0}
    out = set()
    for name in (t.strip() for t in text.split(LABEL_SEP)):
        if not name:
            continue
        if name not in index:
            raise DataError(f"{where}: unknown class {name!r} (known: {', '.join(classes[1:])})")
        out.add(index[name])
    return tuple(sorted(out))


def records_from_rows(rows: Iterable[Mapping[str, object]], classes: Sequence[str], base: Path,
                      source: str, first_line: int = 2) -> list[Record]:
    """Turn CSV-like rows into records; relative paths are taken relative to ``base``."""
    out: list[Record] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=first_line):
        where = f"{source}, line {line}"
        ident = _cell(row.get("id")).strip()
        image = _cell(row.get("image")).strip()
        mask = _cell(row.get("mask")).strip()
        if not ident:
            raise DataError(f"{where}: empty id")
        check_id(ident, where)
        if ident in seen:
            raise DataError(f"{where}: duplicate id {ident!r} (first on line {seen[ident]})")
        seen[ident] = line
        if not image:
            raise DataError(f"{where}: empty image path for id {ident!r}")
        labels_cell = row.get("labels")
        if not isinstance(labels_cell, str):
            labels_cell = LABEL_SEP.join(str(x) for x in (labels_cell or []))
        out.append(Record(
            id=ident,
            image=(base / image).resolve(),
            mask=(base / mask).resolve() if mask else None,
            labels=parse_labels(labels_cell, classes, where),
        ))
    return out


def read_split_csv(path: Path, classes: Sequence[str]) -> list[Record]:
    """Read ``data/<split>.csv`` into records; ``classes`` includes background at index 0."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split CSV not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}, line 1: missing column(s) {', '.join(missing)} "
                            f"(expected {', '.join(COLUMNS)})")
        try:
            records = records_from_rows(reader, classes, path.parent.resolve(), str(path))
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: unreadable CSV: {exc}") from None
    if not records:
        raise DataError(f"{path}: empty split (no rows after the header)")
    return records


def _check_one(rec: Record, n_classes: int, check_masks: bool
               ) -> tuple[str | None, tuple[int, int] | None]:
    """(problem description or None, the image's displayed (H, W) or None) for one record.

    The image is read as every stage reads it (:func:`wsss.data.images.read_rgb`: EXIF
    orientation applied, any mode converted), so its size is the displayed one; the mask is a
    label map drawn on the displayed image, read as stored, and must have that size."""
    if not rec.image.is_file():
        return f"image not found: {rec.image} (id {rec.id})", None
    try:
        with Image.open(rec.image) as im:
            im.verify()
        h, w = read_rgb(rec.image).shape[:2]
    except DataError as exc:
        if exc.__cause__ is None:  # readable but refused (unsupported mode, NaN pixels)
            return f"{exc} (id {rec.id})", None
        return f"corrupt image: {rec.image} (id {rec.id}): {exc.__cause__}", None
    except READ_ERRORS as exc:
        return f"corrupt image: {rec.image} (id {rec.id}): {exc}", None
    size = (w, h)
    if not check_masks or rec.mask is None:
        return None, (h, w)
    if not rec.mask.is_file():
        return f"mask not found: {rec.mask} (id {rec.id})", (h, w)
    try:
        with Image.open(rec.mask) as m:
            m.load()
            if m.mode not in ("P", "L", "I", "I;16"):
                return (f"mask is not a single-channel label image (mode {m.mode}): {rec.mask} "
                        f"(id {rec.id})"), (h, w)
            msize = m.size
            values = np.unique(np.asarray(m))
    except READ_ERRORS as exc:
        return f"corrupt mask: {rec.mask} (id {rec.id}): {exc}", (h, w)
    if msize != size:
        with Image.open(rec.image) as im:
            turn = orientation(im)
        shown = f" as displayed (EXIF orientation {turn} applied)" if turn != 1 else ""
        return (f"mask size {msize[0]}x{msize[1]} differs from image size {size[0]}x{size[1]}"
                f"{shown}: {rec.mask} (id {rec.id})"), (h, w)
    bad = [int(v) for v in values if not (0 <= v < n_classes or v == IGNORE_INDEX)]
    if bad:
        return (f"mask values {bad[:5]} outside 0..{n_classes - 1} and {IGNORE_INDEX}: {rec.mask} "
                f"(id {rec.id})"), (h, w)
    return None, (h, w)


def validate_records(records: Sequence[Record], classes: Sequence[str], check_masks: bool = True,
                     threads: int = 1, progress: bool = False) -> list[tuple[int, int]]:
    """Open every image (and mask) of a split; raise DataError naming the first bad file.

    Returns the images' displayed (H, W) sizes (after EXIF transposition), in record order."""
    n_classes = len(classes)

    def check(rec: Record) -> tuple[str | None, tuple[int, int] | None]:
        return _check_one(rec, n_classes, check_masks)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results: Iterable[tuple[str | None, tuple[int, int] | None]] = pool.map(check, records)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(records), desc="validate", unit="img",
                           mininterval=1.0)
        checked = list(results)
    problems = [p for p, _ in checked if p is not None]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    return [size for _, size in checked if size is not None]
