"""The Snakemake DAG end to end on a tiny config, rerun rules, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
             "--directory", str(ROOT), "--cores", "2"]


def smk(results: Path, *args: str, config: tuple[str, ...] = (), check: bool = True,
        overlays: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run Snakemake on the tiny preset (and the ``overlays`` presets over it) with artifacts
    under ``results``."""
    files = [str(ROOT / "workflow/presets" / name) for name in ("tiny.yaml", *overlays)]
    cmd = SNAKEMAKE + [*args, "--configfile", *files, "--config", f"results={results}", *config]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> set[str]:
    """Rules a dry run would execute, from its job-stats table."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"total"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny DAG run once for the module (about a minute on 2 cores)."""
    results = tmp_path_factory.mktemp("results")
    smk(results)
    return results


def test_dag_produces_seed_metrics(tiny_run):
    run = tiny_run / "tiny"
    seeds = pd.read_csv(run / "metrics/seeds.csv")
    assert set(seeds["variant"]) == {"fuse", "cnn", "tran", "avg", "max"}
    assert set(seeds["rule"]) == {"sweep", "attention"}
    assert len(seeds) == 10
    assert seeds["miou"].between(0, 1).all()
    selected = seeds.loc[seeds["selected"], "variant"]
    assert len(selected) == 2 and selected.nunique() == 1  # the configured fusion, both rules
    for col in ("iou_background", "iou_bird", "iou_sheep"):
        assert col in seeds.columns
    metrics = pd.read_csv(run / "classifier/metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert {"loss_cls", "loss_cap", "loss_sap", "loss_cam", "holdout_map_cnn"} <= set(metrics)
    assert (run / "classifier/_state/last.pt").exists()
    for rule in ("prepare_data", "train_classifier", "extract_cams_train", "fuse_cams_train",
                 "eval_seeds"):
        assert (run / "logs" / f"{rule}.log").stat().st_size > 0
        assert (run / "benchmarks" / f"{rule}.tsv").exists()


def test_refinement_chain_reaches_masks(tiny_run):
    proc = smk(tiny_run, "masks")
    run = tiny_run / "tiny"
    masks = pd.read_csv(run / "metrics/masks.csv")
    assert list(masks["variant"]) == ["walk", "walk_crf"]
    assert masks["miou"].between(0, 1).all()
    ir = pd.read_csv(run / "metrics/ir_labels_train.csv")
    assert ir["id"].iloc[-1] == "__total__" and len(ir) == 25
    assert len(list((run / "masks/train").glob("*.png"))) == 24, proc.stdout[-2000:]
    assert planned_jobs(smk(tiny_run, "-n", "masks")) == set()


def test_dag_ends_with_segmentation_and_report(tiny_run):
    run = tiny_run / "tiny"
    seg = pd.read_csv(run / "metrics/segmentation.csv")
    assert list(seg["variant"]) == ["raw", "crf"] and seg["miou"].between(0, 1).all()
    summary = pd.read_csv(run / "report/summary.csv")
    assert list(summary.columns[:3]) == ["stage", "variant", "miou"]
    assert list(dict.fromkeys(summary["stage"])) == ["seeds", "ir_labels", "masks",
                                                     "segmentation"]
    assert set(summary.loc[summary["stage"] == "segmentation", "variant"]) == {"raw", "crf"}
    assert set(summary.loc[summary["stage"] == "masks", "variant"]) == {"walk", "walk_crf"}
    assert len(list((run / "report/overlays").glob("*.png"))) == 2
    for png in ("miou_stages.png", "iou_classes.png"):
        assert (run / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((run / "predictions/val").glob("*.png"))) == 8
    metrics = pd.read_csv(run / "segmentation/metrics.csv")
    assert list(metrics["epoch"]) == [1] and (run / "segmentation/_state/last.pt").exists()
    # every demo image has a mask: every scoring stage scored them all
    assert list(seg["images"]) == [8, 8]
    assert (pd.read_csv(run / "metrics/seeds.csv")["images"] == 24).all()
    # what each trained stage learnt from, per epoch (tiny crops may miss a class: >= 0)
    classes = pd.read_csv(run / "data/classes.csv")["class"].tolist()
    assert metrics[[f"pixels_{c}" for c in ["background", *classes]]].to_numpy().sum() > 0
    irn = pd.read_csv(run / "irn/metrics.csv")
    assert (irn[["pairs_bg_pos", "pairs_fg_pos", "pairs_neg"]].to_numpy() >= 0).all()
    assert irn["pairs_bg_pos"].iloc[0] > 0
    clf = pd.read_csv(run / "classifier/metrics.csv")
    positives = clf[[f"pos_{c}" for c in classes]].to_numpy()
    assert (positives.sum(1) >= clf["steps"] * 4).all()  # every image has a class, batch 4
    assert (run / "report/warnings.txt").read_text().strip()
    for rule in ("train_segmentation", "predict_val", "eval_segmentation", "report"):
        assert (run / "logs" / f"{rule}.log").stat().st_size > 0
        assert (run / "benchmarks" / f"{rule}.tsv").exists()


def test_a_second_run_from_scratch_gives_the_same_results(tiny_run, tmp_path):
    """The config's seed reaches every random source (Python, NumPy, torch, DataLoader workers
    and their augmentation): the tiny DAG run again from nothing, on the same machine, gives
    the same summary, training metrics and pseudo masks."""
    smk(tmp_path)
    first, second = tiny_run / "tiny", tmp_path / "tiny"
    for table in ("report/summary.csv", "metrics/seeds.csv", "metrics/masks.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(first / table), pd.read_csv(second / table),
                                      check_exact=True, obj=table)
    for table in ("classifier/metrics.csv", "irn/metrics.csv", "segmentation/metrics.csv"):
        a, b = pd.read_csv(first / table), pd.read_csv(second / table)
        pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"),
                                      check_exact=True, obj=table)
    _same_store(first / "masks/train.h5", second / "masks/train.h5")


def test_second_run_does_nothing(tiny_run):
    assert planned_jobs(smk(tiny_run, "-n")) == set()


DOWNSTREAM_OF_SEEDS = {"make_ir_labels", "train_irn", "make_pseudo_masks", "eval_masks",
                       "train_segmentation", "predict", "eval_segmentation", "report", "all"}


def test_fusion_change_reruns_from_fusion_on(tiny_run):
    jobs = planned_jobs(smk(tiny_run, "-n", config=("fusion=avg",)))
    assert jobs == {"fuse_cams", "eval_seeds"} | DOWNSTREAM_OF_SEEDS


def test_scale_change_reruns_extraction_and_after(tiny_run):
    jobs = planned_jobs(smk(tiny_run, "-n", config=("cams={scales: [1.0], flip: true}",)))
    assert jobs == {"extract_cams", "fuse_cams", "eval_seeds"} | DOWNSTREAM_OF_SEEDS


def test_predict_change_reruns_only_prediction_and_after(tiny_run):
    jobs = planned_jobs(smk(tiny_run, "-n", config=("predict={scales: [1.0, 0.5]}",)))
    assert jobs == {"predict", "eval_segmentation", "report", "all"}


def test_config_error_names_the_key(tmp_path):
    proc = smk(tmp_path, "-n", config=("classifier={epochs: many}",), check=False)
    assert proc.returncode != 0
    assert "config key classifier.epochs" in proc.stdout + proc.stderr


def test_corrupt_image_stops_extraction_with_its_name(tiny_run, tmp_path):
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run / "tiny", run)
    first = pd.read_csv(run / "data/train.csv")["image"][0]
    (run / "data" / first).write_bytes(b"not a jpeg")
    proc = smk(tmp_path, "--until", "extract_cams", "-R", "extract_cams", check=False)
    assert proc.returncode != 0
    assert Path(first).name in proc.stdout + proc.stderr
    assert not (run / "cams/train.h5").exists()
    assert not list((run / "cams").glob(".*tmp"))


def insert_statement(path: Path, function: str, statement: str) -> None:
    """Insert ``statement`` as the first statement (after the docstring) of a top-level
    function, or of the first method, of ``function`` (a class)."""
    import ast

    lines = path.read_text().splitlines(keepends=True)
    node = next(n for n in ast.parse("".join(lines)).body if getattr(n, "name", None) == function)
    if isinstance(node, ast.ClassDef):
        node = next(n for n in node.body if isinstance(n, ast.FunctionDef))
    body = node.body[1:] if isinstance(node.body[0], ast.Expr) and len(node.body) > 1 \
        else node.body
    lines.insert(body[0].lineno - 1, " " * body[0].col_offset + statement + "\n")
    path.write_text("".join(lines))


def test_touching_code_reruns_nothing(tiny_run):
    """A touched module (a git checkout round trip) is not a change: nothing reruns."""
    errors = ROOT / "wsss/errors.py"
    os.utime(errors)
    assert planned_jobs(smk(tiny_run, "-n")) == set()


def test_execution_settings_rerun_nothing(tiny_run):
    """Worker counts and checkpoint frequency change how a stage runs, not what it computes."""
    jobs = planned_jobs(smk(tiny_run, "-n", config=(
        "classifier={num_workers: 2, save_every_steps: 7}",
        "segmentation={num_workers: 3, save_every_steps: 2}", "irn={num_workers: 2}")))
    assert jobs == set()


def test_other_methods_settings_rerun_nothing(tiny_run):
    """The tiny run is CoBra: CoSA's settings are not its parameters; CoBra's own are."""
    other = planned_jobs(smk(tiny_run, "-n", config=(
        "classifier={cosa: {seg_width: 3, momentum: 0.5}, cosa_optim: {lr: 0.5}}",)))
    assert other == set()
    own = planned_jobs(smk(tiny_run, "-n", config=("classifier={cobra: {tau: 0.5}}",)))
    assert "train_classifier" in own


def test_code_edit_reruns_the_stage_and_its_descendants_only(tiny_run, tmp_path):
    """An edit of a function fuse_cams reaches reruns fuse_cams and what depends on it (a copy
    of the workflow and package, with this run's metadata, is edited; the run is not)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Snakefile", "config.yaml", "workflow", "wsss", "envs"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, repo / name)
    shutil.copytree(ROOT / ".snakemake/metadata", repo / ".snakemake/metadata")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"),
           "--directory", str(repo), "--cores", "2", "-n", "--configfile",
           str(repo / "workflow/presets/tiny.yaml"), "--config", f"results={tiny_run}"]
    before = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    assert planned_jobs(before) == set(), before.stdout[-2000:] + before.stderr[-2000:]
    # a function fuse_cams reaches and no upstream stage does, in a module an upstream stage
    # imports (a file-level rerun rule would rerun that upstream stage too)
    from wsss.codehash import module_file, reachable

    reached = [reachable(f"wsss.stages.{s}") for s in (
        "prepare_data", "train_classifier", "extract_cams")]
    upstream_defs = set().union(*(d for d, _ in reached))
    upstream_modules = set().union(*(m for _, m in reached))
    candidates = sorted(d for d in reachable("wsss.stages.fuse_cams")[0]
                        if d not in upstream_defs and not d[0].startswith("wsss.stages"))
    module, function = next((d for d in candidates if d[0] in upstream_modules), candidates[0])
    target = repo / module_file(module).relative_to(ROOT)
    insert_statement(target, function, "_edited = True")
    after = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    assert planned_jobs(after) == {"fuse_cams", "eval_seeds"} | DOWNSTREAM_OF_SEEDS, \
        after.stdout[-3000:]


def test_unknown_classifier_method_fails_at_parse_time(tmp_path):
    proc = smk(tmp_path, "-n", config=("classifier={method: seam}",), check=False)
    assert proc.returncode == 1
    assert "config key classifier.method: 'seam' is not one of" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- CoSA (tiny-cosa.yaml overlay)

IRN_RULES = {"make_ir_labels", "train_irn", "make_pseudo_masks"}


@pytest.fixture(scope="module")
def tiny_cosa_run(tmp_path_factory) -> Path:
    """The tiny DAG with classifier.method cosa and masks.source cpl (CoSA-MS: no IR labels, no
    IRN), run once for the module."""
    results = tmp_path_factory.mktemp("results_cosa")
    smk(results, overlays=("tiny-cosa.yaml",))
    return results


def test_cosa_dag_reaches_the_report_with_cpl_masks_and_its_single_stage(tiny_cosa_run):
    run = tiny_cosa_run / "tiny-cosa"
    # CoSA's single stage: the assignment network's head on val, raw and with the test CRF
    cosa = pd.read_csv(run / "metrics/cosa_seg.csv")
    assert list(cosa["variant"]) == ["raw", "crf"] and list(cosa["images"]) == [8, 8]
    assert cosa["miou"].between(0, 1).all()
    assert len(list((run / "cosa_seg/val").glob("*.png"))) == 8
    # the CPL scored like every seed, and trained on (masks.source cpl): the same labels
    seeds = pd.read_csv(run / "metrics/seeds.csv")
    assert list(zip(seeds["variant"], seeds["rule"])) == [("cnn", "sweep"), ("cnn", "cpl")]
    assert seeds.loc[1, "threshold"] == 0.5
    masks = pd.read_csv(run / "metrics/masks.csv")
    assert list(masks["variant"]) == ["cpl", "cpl_crf"]
    assert masks.loc[0, "miou"] == pytest.approx(seeds.loc[1, "miou"], abs=1e-4)
    import h5py

    with h5py.File(run / "masks/train.h5") as f:
        assert json.loads(f.attrs["meta"])["source"] == "cpl"
    # no IR labels, no IRN, no walk
    assert not (run / "ir_labels").exists() and not (run / "irn").exists()
    for rule in IRN_RULES:
        assert not list((run / "logs").glob(f"{rule}*")), rule
    summary = pd.read_csv(run / "report/summary.csv")
    assert list(summary.columns[:5]) == ["stage", "variant", "miou", "split", "method"]
    assert set(summary["method"]) == {"cosa"}
    assert list(dict.fromkeys(summary["stage"])) == ["seeds", "masks", "segmentation",
                                                     "cosa_seg"]
    rows = summary.set_index(["stage", "variant"])
    assert rows.loc[("cosa_seg", "crf"), "miou"] == pytest.approx(cosa.loc[1, "miou"],
                                                                  abs=1e-4)
    assert rows.loc[("cosa_seg", "raw"), "split"] == "val"
    assert len(list((run / "report/overlays").glob("*.png"))) == 2
    for rule in ("make_cpl_masks_train", "predict_cosa_val", "eval_cosa_seg", "report"):
        assert (run / "logs" / f"{rule}.log").stat().st_size > 0
        assert (run / "benchmarks" / f"{rule}.tsv").exists()
    assert planned_jobs(smk(tiny_cosa_run, "-n", overlays=("tiny-cosa.yaml",))) == set()


def test_cosa_rules_follow_their_settings(tiny_cosa_run):
    """cosa_seg reruns CoSA's single stage and the report only; masks.source walk brings IRN
    back (and its IR-label row), replacing make_cpl_masks."""
    dry = ("-n", "--forceall")
    jobs = planned_jobs(smk(tiny_cosa_run, "-n", overlays=("tiny-cosa.yaml",),
                            config=("cosa_seg={scales: [1.0, 0.5]}",)))
    assert jobs == {"predict_cosa", "eval_cosa_seg", "report", "all"}
    walk = planned_jobs(smk(tiny_cosa_run, *dry, overlays=("tiny-cosa.yaml",),
                            config=("masks={source: walk}",)))
    assert IRN_RULES | {"predict_cosa", "eval_cosa_seg"} <= walk and "make_cpl_masks" not in walk
    cobra = planned_jobs(smk(tiny_cosa_run, *dry))
    assert not cobra & {"predict_cosa", "eval_cosa_seg", "make_cpl_masks"}


def _same_store(a: Path, b: Path) -> None:
    """Two HDF5 stores hold the same images, attributes and arrays."""
    import h5py
    import numpy as np

    def unhashed(text: str) -> object:
        """The meta without model fingerprints (they cover input file times, which differ)."""
        def strip(node: object) -> object:
            if isinstance(node, dict):
                return {k: strip(v) for k, v in node.items() if not k.endswith("_hash")}
            return node
        return strip(json.loads(text))

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for key in ("kind", "classes"):
            assert fa.attrs[key] == fb.attrs[key], key
        assert unhashed(fa.attrs["meta"]) == unhashed(fb.attrs["meta"])
        # one job lists its images in batch order (same-size batches), a merge in split order;
        # readers look images up by id
        assert sorted(fa["ids"].asstr()[()]) == sorted(fb["ids"].asstr()[()])
        for ident in fa["images"]:
            ga, gb = fa["images"][ident], fb["images"][ident]
            assert dict(ga.attrs).keys() == dict(gb.attrs).keys()
            for key in ga.attrs:
                assert np.array_equal(ga.attrs[key], gb.attrs[key]), (ident, key)
            assert set(ga) == set(gb), ident
            for name in ga:
                assert np.array_equal(ga[name][()], gb[name][()]), (a, ident, name)


def test_shards_merge_to_the_one_job_outputs(tiny_run, tmp_path):
    """With cluster.shards: 2, extract_cams, make_pseudo_masks and predict run as two jobs
    each, merged in split order: every store and PNG equals the one-job run's."""
    from PIL import Image

    run = tmp_path / "tiny"
    shutil.copytree(tiny_run / "tiny", run)
    proc = smk(tmp_path, "--forcerun", "extract_cams_shard", "--until", "merge_predictions",
               config=("cluster={shards: 2}",))
    jobs = re.findall(r"^(?:local)?rule (\w+):", proc.stdout + proc.stderr, re.M)
    assert {"extract_cams_shard", "merge_cams", "make_pseudo_masks_shard", "merge_masks",
            "predict_shard", "merge_predictions"} <= set(jobs), jobs
    assert jobs.count("extract_cams_shard") == 2
    for store in ("cams/train.h5", "masks/train.h5", "predictions/val.h5"):
        _same_store(tiny_run / "tiny" / store, run / store)
    for folder in ("masks/train", "predictions/val"):
        one = sorted(p.name for p in (tiny_run / "tiny" / folder).glob("*.png"))
        assert one == sorted(p.name for p in (run / folder).glob("*.png")) and one
        for name in one:
            a = np.asarray(Image.open(tiny_run / "tiny" / folder / name))
            assert np.array_equal(a, np.asarray(Image.open(run / folder / name)))
