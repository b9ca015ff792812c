"""The report stage: summary rows and order, charts, overlay sheets and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsss.config import validate_config
from wsss.data.coverage import class_table, read_class_table, write_class_table
from wsss.data.table import read_split_csv, write_split_csv
from wsss.errors import DataError
from wsss.io.h5store import H5Reader, H5Writer
from wsss.report import overlays
from wsss.report.overlays import PANEL_PX, PANELS, choose_records, write_sheets
from wsss.report.plots import best_per_stage, load_summary, stage_bars
from wsss.stages import report

CLASSES = ["background", "cat", "dog"]
SIZES = {"a": (20, 24), "b": (16, 16), "c": (18, 12)}  # (H, W); "b" has no ground truth


def _write_csv(path: Path, rows: list[dict]) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _ious(miou: float) -> dict[str, float]:
    return {f"iou_{c}": miou + 0.01 * i for i, c in enumerate(CLASSES)}


def predict_half(image: np.ndarray) -> np.ndarray:
    """A stand-in segmenter: the left half of the image is 'cat'."""
    out = np.zeros(image.shape[:2], dtype=np.uint8)
    out[:, : image.shape[1] // 2] = 1
    return out


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    """Three tiny images, their stores (seeds, IR labels, masks) and the four metrics CSVs."""
    rng = np.random.default_rng(0)
    records = []
    for ident, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / f"{ident}.png")
        mask = None
        if ident != "b":
            gt = np.zeros((h, w), np.uint8)
            gt[2:8, 2:8], gt[0] = 1, 255
            Image.fromarray(gt).save(tmp_path / f"{ident}_gt.png")
            mask = f"{ident}_gt.png"
        records.append({"id": ident, "image": f"{ident}.png", "mask": mask, "labels": ["cat"]})
    write_split_csv(tmp_path / "train.csv", records)
    split = read_split_csv(tmp_path / "train.csv", CLASSES)
    # every image is labelled cat and none dog: both get a warning; val = train here
    write_class_table(tmp_path / "classes.csv", class_table({"train": split, "val": split},
                                                            CLASSES))
    with H5Writer(tmp_path / "seeds.h5", "seeds", CLASSES, {"fusion": "fuse"}) as seeds, \
            H5Writer(tmp_path / "ir.h5", "ir_labels", CLASSES,
                     {"ir_labels": {"threshold": "attention"}}) as ir, \
            H5Writer(tmp_path / "masks.h5", "masks", CLASSES, {"rule": "cobra"}) as masks:
        for ident, (h, w) in SIZES.items():
            keys = np.array([1])
            label = np.zeros((h, w), np.uint8)
            label[3:9, 3:9], label[-1] = 1, 255
            seeds.add(ident, (h, w), keys, {"cam": rng.random((1, h, w))})
            ir.add(ident, (h, w), keys, {"label": label}, dtypes={"label": np.uint8})
            masks.add(ident, (h, w), keys, {"mask": label, "mask_crf": np.minimum(label, 1)},
                      dtypes={"mask": np.uint8, "mask_crf": np.uint8})
    seeds_rows = [{"variant": v, "rule": r, "threshold": t, "miou": m, "selected": v == "fuse",
                   "at_sweep_end": t == 1.0, **_ious(m)}
                  for v, r, t, m in [("fuse", "sweep", 0.3, 0.40), ("fuse", "attention", 0.3, 0.35),
                                     ("cnn", "sweep", 1.0, 0.45), ("cnn", "attention", 0.3, 0.30)]]
    ir_rows = [{"id": "a", "bg_threshold": 0.1, "fg_threshold": 0.3, "confident_fraction": 0.5,
                "precision": 0.9},
               {"id": "__total__", "bg_threshold": 0.1, "fg_threshold": 0.3,
                "confident_fraction": 0.5, "precision": 0.9, "miou": 0.5, **_ious(0.5)}]
    return {
        "seeds_metrics": _write_csv(tmp_path / "seeds.csv", seeds_rows),
        "ir_metrics": _write_csv(tmp_path / "ir.csv", ir_rows),
        "masks_metrics": _write_csv(tmp_path / "masks.csv", [
            {"variant": "walk", "rule": "cobra", "miou": 0.55, **_ious(0.55)},
            {"variant": "walk_crf", "rule": "cobra", "miou": 0.60, **_ious(0.60)}]),
        "seg_metrics": _write_csv(tmp_path / "seg.csv", [
            {"variant": "raw", "miou": 0.62, "iou_background": 0.9},  # class columns may be absent
            {"variant": "crf", "miou": 0.65, **_ious(0.65)}]),
        "split": str(tmp_path / "train.csv"),
        "seg_split": str(tmp_path / "train.csv"),
        "classes": str(tmp_path / "classes.csv"),
        "seeds": str(tmp_path / "seeds.h5"),
        "ir_labels": str(tmp_path / "ir.h5"),
        "masks": str(tmp_path / "masks.h5"),
        "model": str(tmp_path / "model.pt"),  # never opened: the predictor is injected
    }


def _outputs(root: Path) -> dict[str, str]:
    return {"summary": str(root / "report/summary.csv"),
            "stages_plot": str(root / "report/miou_stages.png"),
            "classes_plot": str(root / "report/iou_classes.png"),
            "overlays": str(root / "report/overlays"),
            "warnings": str(root / "report/warnings.txt")}


PARAMS = {"report": {"overlay_images": 2},
          "predict": {**validate_config({})["predict"], "scales": [1.0], "flip": False},
          "classes": CLASSES, "device": "cpu", "max_side": 1024, "method": "cobra"}


def _png_size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"
        return im.size


@pytest.fixture
def injected(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replace the segmentation model by ``predict_half``; records the loader's arguments."""
    calls: list[tuple] = []

    def fake(*args: object) -> overlays.Predictor:
        calls.append(args)
        return predict_half

    monkeypatch.setattr(report, "segmenter_predictor", fake)
    return calls


def test_stage_writes_summary_plots_and_sheets(inputs, tmp_path, injected):
    outs = _outputs(tmp_path)
    report.run(inputs, outs, PARAMS)
    summary = pd.read_csv(outs["summary"])
    assert list(summary.columns[:5]) == ["stage", "variant", "miou", "split", "method"]
    assert list(summary["split"]) == ["train"] * 7 + [PARAMS["predict"]["split"]] * 2
    assert set(summary["method"]) == {"cobra"}  # the run's classifier.method on every row
    assert list(summary["stage"]) == ["seeds"] * 4 + ["ir_labels", "masks", "masks",
                                                      "segmentation", "segmentation"]
    assert list(summary["variant"]) == ["fuse/sweep", "fuse/attention", "cnn/sweep",
                                        "cnn/attention", "attention", "walk", "walk_crf",
                                        "raw", "crf"]
    assert summary["miou"].tolist() == pytest.approx(
        [0.40, 0.35, 0.45, 0.30, 0.50, 0.55, 0.60, 0.62, 0.65])
    assert {f"iou_{c}" for c in CLASSES} <= set(summary.columns)
    assert np.isnan(summary.loc[7, "iou_cat"])  # absent in the raw segmentation row
    for key in ("stages_plot", "classes_plot"):
        w, h = _png_size(outs[key])
        assert w > 300 and h > 200
    sheets = sorted(Path(outs["overlays"]).iterdir())
    assert [p.name for p in sheets] == ["a.png", "b.png"]  # the first two ids of the split
    assert injected[0][1:] == (PARAMS["predict"], "cpu", CLASSES, 1024)  # the cap reaches it
    assert not list(tmp_path.glob("report/.*"))  # no temporary leftovers
    warnings = Path(outs["warnings"]).read_text().splitlines()
    assert len(warnings) == 5, warnings
    assert warnings[0].startswith("class 'cat' is on every one of the 3 train images: no "
                                  "negative examples")
    assert warnings[1].startswith("class 'dog' is on none of the train images: no positive")
    assert warnings[2] == ("train: 1 of 3 images have no ground-truth mask and were not scored "
                           "(b); seeds, IR labels and pseudo masks were scored on the other 2")
    assert warnings[3].startswith("val: 1 of 3 images have no ground-truth mask")
    assert warnings[4].startswith("seeds: the best background threshold of cnn (1.00) is an end "
                                  "of the sweep range")


def test_class_table_counts(inputs):
    table = read_class_table(inputs["classes"])
    assert list(table.columns) == ["class", "train_images", "val_images", "train_masks",
                                   "val_masks", "problem"]
    assert table.to_dict("list") == {
        "class": ["cat", "dog"], "train_images": [3, 0], "val_images": [3, 0],
        "train_masks": [2, 0], "val_masks": [2, 0], "problem": ["no_negatives", "no_positives"]}


def test_nothing_scored_is_reported_and_plotted(inputs, tmp_path, injected):
    """Metrics without any score (no ground truth anywhere): the report still draws its plots
    and its warnings say that nothing could be scored."""
    for key in ("seeds_metrics", "ir_metrics", "masks_metrics", "seg_metrics"):
        table = pd.read_csv(inputs[key])
        for col in table.columns:
            if col == "miou" or col.startswith("iou_"):
                table[col] = np.nan
        table.to_csv(inputs[key], index=False)
    outs = _outputs(tmp_path)
    report.run(inputs, outs, {**PARAMS, "report": {"overlay_images": 0}})
    assert pd.read_csv(outs["summary"])["miou"].isna().all()
    assert _png_size(outs["stages_plot"])[0] > 300 and _png_size(outs["classes_plot"])[0] > 300
    text = Path(outs["warnings"]).read_text()
    assert "nothing could be scored: no stage has an mIoU" in text


def test_stage_plot_keeps_best_seed_only(inputs):
    summary = load_summary(inputs, "attention", CLASSES)
    bars = stage_bars(summary)
    assert list(zip(bars["stage"], bars["variant"])) == [
        ("seeds", "cnn/sweep"), ("ir_labels", "attention"), ("masks", "walk"),
        ("masks", "walk_crf"), ("segmentation", "raw"), ("segmentation", "crf")]
    best = best_per_stage(summary)
    assert list(best["variant"]) == ["cnn/sweep", "attention", "walk_crf", "crf"]


def test_ir_variant_defaults_to_total(inputs, tmp_path, injected):
    with H5Writer(tmp_path / "ir2.h5", "ir_labels", CLASSES, {}) as ir:
        for ident, size in SIZES.items():
            ir.add(ident, size, np.array([1]), {"label": np.zeros(size, np.uint8)},
                   dtypes={"label": np.uint8})
    outs = _outputs(tmp_path)
    report.run({**inputs, "ir_labels": str(tmp_path / "ir2.h5")}, outs,
               {**PARAMS, "report": {"overlay_images": 0}})
    summary = pd.read_csv(outs["summary"])
    assert summary.loc[summary["stage"] == "ir_labels", "variant"].tolist() == ["total"]
    assert list(Path(outs["overlays"]).iterdir()) == [] and injected == []


def test_ir_metrics_without_miou_names_the_file(inputs, tmp_path, injected):
    table = pd.read_csv(inputs["ir_metrics"])
    table = table.drop(columns=[c for c in table.columns if c == "miou" or c.startswith("iou_")])
    table.to_csv(inputs["ir_metrics"], index=False)
    with pytest.raises(DataError, match=r"ir\.csv.*miou"):
        report.run(inputs, _outputs(tmp_path), PARAMS)
    assert not (tmp_path / "report").exists()


def test_unknown_overlay_id_names_it(inputs, tmp_path, injected):
    params = {**PARAMS, "report": {"overlay_images": ["c", "zebra"]}}
    with pytest.raises(DataError, match=r"'zebra'.*train\.csv"):
        report.run(inputs, _outputs(tmp_path), params)
    assert not (tmp_path / "report").exists()


def test_choose_records_count_or_ids(inputs):
    records = read_split_csv(Path(inputs["split"]), CLASSES)
    assert [r.id for r in choose_records(records, 2, "x")] == ["a", "b"]
    assert [r.id for r in choose_records(records, 10, "x")] == ["a", "b", "c"]
    assert [r.id for r in choose_records(records, ["c", "a"], "x")] == ["c", "a"]


def test_sheet_has_six_panels_and_grey_no_gt_panel(inputs, tmp_path):
    records = read_split_csv(Path(inputs["split"]), CLASSES)[:2]
    stores = [H5Reader(inputs[k]) for k in ("seeds", "ir_labels", "masks")]
    out = tmp_path / "sheets"
    out.mkdir()
    written = write_sheets(records, *stores, predict_half, CLASSES, out)
    assert [p.name for p in written] == ["a.png", "b.png"]
    for path in written:
        w, h = _png_size(path)
        assert len(PANELS) == 6 and w == 6 * PANEL_PX and PANEL_PX < h < 2 * PANEL_PX
    with Image.open(written[1]) as im:  # "b" has no ground truth: a grey last panel
        rgb = np.asarray(im.convert("RGB"))
    centre = rgb[rgb.shape[0] // 2, int(5.5 * PANEL_PX)]
    assert np.all(np.abs(centre.astype(int) - 191) <= 2)


def test_prediction_of_wrong_size_is_refused(inputs, tmp_path):
    records = read_split_csv(Path(inputs["split"]), CLASSES)[:1]
    stores = [H5Reader(inputs[k]) for k in ("seeds", "ir_labels", "masks")]
    with pytest.raises(DataError, match="prediction of image 'a'"):
        write_sheets(records, *stores, lambda img: np.zeros((3, 3), np.uint8), CLASSES,
                     tmp_path)


def _tiny_segmenter(path: Path, classes: list[str]) -> None:
    """A randomly initialised DeepLabV3+ on timm's tiny test backbone, saved as model.pt."""
    import torch

    from wsss.models.segmentation import build_segmenter, save_segmenter, segmenter_meta

    torch.manual_seed(0)
    cfg = validate_config({"segmentation": {"model": "deeplabv3plus", "backbone": {
        "name": "test_efficientnet", "pretrained": "none", "kwargs": {}}}})["segmentation"]
    model = build_segmenter(cfg, len(classes))
    save_segmenter(path, model, {**segmenter_meta(model, cfg, classes), "config_hash": "0" * 16})


def test_stage_with_a_saved_segmenter(inputs, tmp_path):
    _tiny_segmenter(Path(inputs["model"]), CLASSES)
    outs = _outputs(tmp_path)
    params = {**PARAMS, "report": {"overlay_images": ["c"]},
              "predict": {**PARAMS["predict"], "scales": [1.0, 0.5], "flip": True}}
    report.run(inputs, outs, params)
    (sheet,) = Path(outs["overlays"]).iterdir()
    assert sheet.name == "c.png" and _png_size(sheet)[0] == 6 * PANEL_PX


def test_segmenter_of_other_classes_is_refused(inputs, tmp_path):
    _tiny_segmenter(Path(inputs["model"]), ["background", "cat"])
    with pytest.raises(DataError, match=r"model\.pt holds a segmenter for classes"):
        report.run(inputs, _outputs(tmp_path), PARAMS)


def test_cosa_cpl_run_has_no_ir_rows_and_its_single_stage_rows(inputs, tmp_path, injected):
    """``masks.source: cpl`` (no IR labels: no ir_labels row, grey IR panels) with
    ``classifier.method: cosa`` (cosa_seg rows from metrics/cosa_seg.csv, on its split)."""
    inputs = {k: v for k, v in inputs.items() if k not in ("ir_metrics", "ir_labels")}
    inputs["cosa_seg_metrics"] = _write_csv(tmp_path / "cosa_seg.csv", [
        {"variant": "raw", "miou": 0.70, **_ious(0.70)},
        {"variant": "crf", "miou": 0.71, **_ious(0.71)}])
    with H5Writer(tmp_path / "cpl.h5", "masks", CLASSES, {"source": "cpl", "rule": "cpl"}) as w:
        for ident, size in SIZES.items():
            w.add(ident, size, np.array([1]), {"mask": np.ones(size, np.uint8)},
                  dtypes={"mask": np.uint8})
    inputs["masks"] = str(tmp_path / "cpl.h5")
    pd.DataFrame([{"variant": "cpl", "rule": "cpl", "miou": 0.58, **_ious(0.58)}]).to_csv(
        inputs["masks_metrics"], index=False)
    outs = _outputs(tmp_path)
    report.run(inputs, outs, {**PARAMS, "method": "cosa", "cosa_split": "val"})
    summary = pd.read_csv(outs["summary"])
    assert list(summary["stage"]) == ["seeds"] * 4 + ["masks", "segmentation", "segmentation",
                                                      "cosa_seg", "cosa_seg"]
    assert list(summary["variant"])[-5:] == ["cpl", "raw", "crf", "raw", "crf"]
    assert list(summary["split"])[-2:] == ["val", "val"] and set(summary["method"]) == {"cosa"}
    assert summary["miou"].tolist()[-2:] == pytest.approx([0.70, 0.71])
    assert list(best_per_stage(summary)["stage"]) == ["seeds", "masks", "segmentation",
                                                      "cosa_seg"]
    assert [p.name for p in sorted(Path(outs["overlays"]).iterdir())] == ["a.png", "b.png"]
    for key in ("stages_plot", "classes_plot"):
        assert _png_size(outs[key])[0] > 300


def test_methods_side_by_side_stacks_runs(tmp_path, capsys):
    """bench/methods_side_by_side.py: one mIoU column per run (headed by run and method), the
    rows of every run in stage order, '-' where a run lacks a row."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "methods_side_by_side", Path(__file__).resolve().parent.parent
        / "bench/methods_side_by_side.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = {"demo": [("seeds", "fuse/sweep", "train", 0.50, "cobra"),
                     ("ir_labels", "gmm", "train", 0.60, "cobra"),
                     ("masks", "walk_crf", "train", 0.52, "cobra"),
                     ("segmentation", "crf", "val", 0.52, "cobra")],
            "demo-cosa": [("seeds", "cnn/sweep", "train", 0.45, "cosa"),
                          ("seeds", "cnn/cpl", "train", 0.44, "cosa"),
                          ("masks", "cpl", "train", 0.44, "cosa"),
                          ("segmentation", "crf", "val", 0.47, "cosa"),
                          ("cosa_seg", "raw", "val", 0.46, "cosa")]}
    for run, table in rows.items():
        (tmp_path / run / "report").mkdir(parents=True)
        pd.DataFrame(table, columns=["stage", "variant", "split", "miou", "method"]).to_csv(
            tmp_path / run / "report/summary.csv", index=False)
    out_csv = tmp_path / "side.csv"
    assert bench.main([str(tmp_path / "demo"), str(tmp_path / "demo-cosa"), "--csv",
                       str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "demo (cobra)" in printed and "demo-cosa (cosa)" in printed
    table = pd.read_csv(out_csv)
    assert list(table.columns) == ["stage", "variant", "split", "demo (cobra)",
                                   "demo-cosa (cosa)"]
    assert list(zip(table["stage"], table["variant"])) == [
        ("seeds", "fuse/sweep"), ("seeds", "cnn/sweep"), ("seeds", "cnn/cpl"),
        ("ir_labels", "gmm"), ("masks", "walk_crf"), ("masks", "cpl"), ("segmentation", "crf"),
        ("cosa_seg", "raw")]
    seg = table[table["stage"] == "segmentation"].iloc[0]
    assert (seg["demo (cobra)"], seg["demo-cosa (cosa)"]) == (0.52, 0.47)
    assert table.loc[table["stage"] == "cosa_seg", "demo (cobra)"].isna().all()
    with pytest.raises(SystemExit, match="no summary"):
        bench.main([str(tmp_path / "nothing")])
