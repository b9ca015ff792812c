"""The paper presets run as they are: voc12-cobra, voc12-cosa, coco14-cobra and coco14-cosa each
validate, pass the parse-time checks and plan their whole DAG against a data root given on the
command line, with the rules, data set, class list and per-rule SLURM limits they should have.

The DAG is planned from prepare_data's outputs only (the class list comes from
wsss.data.classes, nothing under dataset.root is read before prepare_data runs), so the data
root of the dry runs is an empty directory: the test checks that it stays untouched.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wsss.checks import check_config
from wsss.config import load_workflow_config, validate_config
from wsss.data.classes import COCO_CLASSES, VOC_CLASSES
from wsss.data.dataset_classes import classes_for

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "workflow/presets"

SHARED = {"prepare_data", "train_classifier", "extract_cams", "fuse_cams", "eval_seeds",
          "eval_masks", "train_segmentation", "predict", "eval_segmentation", "report", "all"}
# CoBra: IR labels, IRN and the random walk make the masks
COBRA_RULES = SHARED | {"make_ir_labels", "train_irn", "make_pseudo_masks"}
# CoSA-MS (masks.source cpl): the CAM pseudo labels train the segmenter, no IRN; CoSA's own
# segmentation head is predicted and scored too
COSA_MS_RULES = SHARED | {"make_cpl_masks", "predict_cosa", "eval_cosa_seg"}

# preset -> (dataset.name, class list, classifier.method, planned rules)
EXPECTED = {
    "voc12-cobra": ("voc12", VOC_CLASSES, "cobra", COBRA_RULES),
    "voc12-cosa": ("voc12", VOC_CLASSES, "cosa", COSA_MS_RULES),
    "coco14-cobra": ("coco14", COCO_CLASSES, "cobra", COBRA_RULES),
    "coco14-cosa": ("coco14", COCO_CLASSES, "cosa", COSA_MS_RULES),
}
# rules whose jobs take another rule's resources (workflow/rules/cosa.smk)
RESOURCES_OF = {"eval_cosa_seg": "eval_segmentation"}


def plan(configfiles: list[Path], workdir: Path, *config: str) -> tuple[int, str, dict]:
    """Dry-run the whole DAG (``snakemake -n -p --forceall``) in ``workdir``; returns the exit
    status, the output and per planned job its rule's ``resources`` and the ``--params`` JSON
    its stage would receive."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), "-n", "-p", "--forceall",
           "--configfile", *map(str, configfiles)]
    if config:
        cmd += ["--config", *config]
    # the presets' timm weights are fetched when a stage starts: an offline test machine would
    # refuse them at parse time, which says nothing about the preset
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    out = proc.stdout + proc.stderr
    jobs: dict[str, dict] = {}
    rule = None
    for line in proc.stdout.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if head:
            rule = head.group(1)
            assert rule not in jobs, f"{rule} planned twice (cluster.shards is 1)"
            jobs[rule] = {"resources": {}, "params": None}
        elif rule and line.strip().startswith("resources:"):
            pairs = (kv.split("=", 1) for kv in line.split(":", 1)[1].split(","))
            jobs[rule]["resources"] = {k.strip(): v.strip() for k, v in pairs}
        elif rule and "python -m wsss " in line:
            words = shlex.split(line.strip())
            jobs[rule]["params"] = json.loads(words[words.index("--params") + 1])
    return proc.returncode, out, jobs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_preset_validates_and_passes_the_parse_time_checks(name: str) -> None:
    dataset, classes, method, _ = EXPECTED[name]
    raw = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    config = validate_config(raw)
    assert config == load_workflow_config([PRESETS / f"{name}.yaml"])
    assert (config["run"], config["dataset"]["name"]) == (name, dataset)
    assert config["classifier"]["method"] == method
    assert classes_for(config["dataset"]) == list(classes)
    check_config(config, len(classes))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_preset_plans_its_dag_against_a_data_root(name: str, tmp_path: Path) -> None:
    dataset, classes, method, rules = EXPECTED[name]
    preset = PRESETS / f"{name}.yaml"
    data_root = tmp_path / "data"
    data_root.mkdir()
    code, out, jobs = plan([preset], tmp_path / "work", f"dataset={{root: {data_root}}}")
    assert code == 0, out[-3000:]
    assert set(jobs) == rules, f"{name}: planned {sorted(jobs)}"
    assert list(data_root.iterdir()) == [], "the dry run wrote under the data root"

    data = jobs["prepare_data"]["params"]
    assert (data["name"], data["root"]) == (dataset, str(data_root))
    if dataset == "coco14":
        assert data["coco14"] == {"train_split": "train2014", "val_split": "val2014"}
    else:
        assert data["voc12"]["train_split"] == "train_aug"
    assert jobs["train_classifier"]["params"]["classifier"]["method"] == method
    # (prepare_data's "classes" is dataset.classes, the class list of a folder data set)
    with_classes = [r for r, job in jobs.items()
                    if r != "prepare_data" and job["params"] and "classes" in job["params"]]
    assert "train_classifier" in with_classes and "predict" in with_classes
    for rule in with_classes:
        assert jobs[rule]["params"]["classes"] == list(classes), rule
    assert len(classes) == {"voc12": 21, "coco14": 81}[dataset]

    # each job asks SLURM for its rule's limits from the config (the preset's, else the
    # schema's VOC-sized defaults); the COCO presets size every rule of their DAG themselves
    config = load_workflow_config([preset])
    own = yaml.safe_load(preset.read_text()).get("resources", {})
    for rule, job in jobs.items():
        if rule == "all":
            continue
        limits = config["resources"][RESOURCES_OF.get(rule, rule)]
        assert int(job["resources"]["runtime"]) == limits["runtime"], rule
        assert int(job["resources"]["mem_mb"]) == limits["mem_mb"], rule
        if dataset == "coco14":
            assert RESOURCES_OF.get(rule, rule) in own, f"{name}: no resources for {rule}"
    if dataset == "coco14":
        # Python's json holds instances_train2014.json in several GB
        assert config["resources"]["prepare_data"]["mem_mb"] >= 8000
        defaults = validate_config({})["resources"]
        for rule in ("extract_cams", "eval_seeds", "train_segmentation", "predict"):
            assert config["resources"][rule]["runtime"] >= defaults[rule]["runtime"], rule


@pytest.mark.parametrize("broken, key", [
    ({"dataset": {"name": "coco2014"}}, "dataset.name"),
    ({"resources": {"prepare_data": {"mem_mb": 8}}}, "resources.prepare_data.mem_mb"),
    ({"fusion": "fuse"}, "fusion"),  # a CoSA classifier has no ViT maps to fuse
])
def test_a_broken_coco_preset_stops_the_dry_run(broken: dict, key: str, tmp_path: Path
                                                ) -> None:
    """The checks above fail on a broken preset: the dry run stops, naming the key."""
    preset = yaml.safe_load((PRESETS / "coco14-cosa.yaml").read_text())
    for section, value in broken.items():
        if isinstance(value, dict):
            preset[section] = {**preset.get(section, {}), **value}
        else:
            preset[section] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(preset))
    code, out, jobs = plan([bad], tmp_path / "work", f"dataset={{root: {tmp_path}}}")
    assert code != 0 and not jobs
    assert f"config key {key}" in out, out[-2000:]
