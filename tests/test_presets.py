"""Presets yield exactly their own settings over the schema defaults, whatever config.yaml holds;
config errors a later stage would hit stop the parse; the weights story works offline."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from wsss.checks import check_config
from wsss.config import load_workflow_config, repeated_configfile_flags, validate_config
from wsss.data.dataset_classes import classes_for
from wsss.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "workflow/presets").glob("*.yaml"))
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
             "--directory", str(ROOT)]


def leaves(node: object, prefix: str = "") -> dict[str, object]:
    """Flatten nested dicts to ``{"a.b.c": value}`` (empty dicts and lists are leaves)."""
    if isinstance(node, dict) and node:
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def dry_run_params(*args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The ``--params`` JSON of every job a forced dry run would execute (what stages receive)."""
    proc = subprocess.run(SNAKEMAKE + ["-n", "-p", "--forceall", *args], capture_output=True,
                          text=True, cwd=ROOT)
    params = []
    for line in proc.stdout.splitlines():
        if "python -m wsss " in line:
            words = shlex.split(line.strip())
            params.append(json.loads(words[words.index("--params") + 1]))
    return proc, params


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_leaves_are_preset_or_schema_default(preset: Path) -> None:
    """Every setting a stage receives under a preset is the preset's value or the schema
    default; none comes from config.yaml (the demo), checked on the dry run's shell lines."""
    own = leaves(yaml.safe_load(preset.read_text()))
    defaults = leaves(validate_config({}))
    demo_config = load_workflow_config()

    def demo(key: str) -> object:
        node: object = demo_config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node
    proc, jobs = dry_run_params("--configfile", str(preset))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(jobs) >= 13, proc.stdout[-2000:]
    seen = 0
    for params in jobs:
        for section in ("classifier", "cams", "ir_labels", "irn", "masks", "segmentation",
                        "predict", "report", "seeds"):
            if section not in params:
                continue
            for key, value in leaves(params[section], f"{section}.").items():
                expected = own[key] if key in own else defaults[key]
                assert value == expected, f"{preset.stem}: {key} = {value!r}, not {expected!r}"
                if key not in own and demo(key) != defaults[key]:
                    assert value != demo(key), f"{preset.stem}: demo value leaked into {key}"
                seen += 1
    # not a vacuous comparison: a CoSA DAG compares 97 settings (since train_classifier's params
    # carry only the chosen method's classifier keys), a CoBra one more
    assert seen > 90


def test_demo_has_its_own_config_and_stacked_files_merge(tmp_path: Path) -> None:
    """Without --configfile the demo's config.yaml is used; files after one flag stack."""
    _, jobs = dry_run_params("--until", "train_classifier")
    cls = next(p["classifier"] for p in jobs if "classifier" in p)
    assert cls["cnn"]["name"] == "tf_efficientnet_lite0" and cls["epochs"] == 3
    site = tmp_path / "site.yaml"
    site.write_text("classifier: {epochs: 7}\n")
    proc, jobs = dry_run_params("--until", "train_classifier", "--configfile",
                                str(ROOT / "workflow/presets/tiny.yaml"), str(site))
    cls = next(p["classifier"] for p in jobs if "classifier" in p)
    assert (cls["epochs"], cls["crop"], cls["batch_size"]) == (7, 64, 4), proc.stderr[-2000:]


def test_repeated_configfile_flag_is_refused() -> None:
    assert repeated_configfile_flags(["snakemake", "--configfile", "a", "--configfile", "b"])
    assert repeated_configfile_flags(["x", "--configfile=a", "--configfiles", "b"])
    assert not repeated_configfile_flags(["snakemake", "--configfile", "a", "b"])
    preset = str(ROOT / "workflow/presets/tiny.yaml")
    proc = subprocess.run(SNAKEMAKE + ["-n", "--configfile", preset, "--configfile", preset],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "--configfile given more than once" in proc.stdout + proc.stderr


def _config(**sections: dict) -> dict:
    return validate_config(yaml.safe_load((ROOT / "workflow/presets/tiny.yaml").read_text())
                           | sections)


@pytest.mark.parametrize("sections, key", [
    ({"segmentation": {"backbone": {"name": "resnet18"}, "freeze_prefixes": ["conv_stem"]}},
     r"segmentation\.freeze_prefixes: no parameter starts with 'conv_stem'"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18"},
                     "freeze_prefixes": ["layer9"]}},
     r"classifier\.freeze_prefixes: no parameter starts with 'layer9'"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "tf_efficientnet_lite0"},
                     "freeze_prefixes": [], "vit": {"name": "resnet18"}}},
     r"classifier\.vit\.name: 'resnet18' is not a timm ViT"),
    ({"irn": {"backbone": {"name": "no_such_net"}}}, r"irn\.backbone\.name: .*no_such_net"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18", "kwargs": {"foo": 1}},
                     "freeze_prefixes": []}},
     r"classifier\.cnn\.kwargs: .*foo"),
    ({"classifier": {"method": "cam", "cnn": {"name": "resnet18"}, "freeze_prefixes": []},
      "fusion": "fuse"}, r"config key fusion: 'fuse' needs the ViT"),
    ({"classifier": {"method": "cam", "cnn": {"name": "resnet18"}, "freeze_prefixes": []},
      "fusion": "cnn", "ir_labels": {"threshold": "attention"}},
     r"ir_labels\.threshold: 'attention'"),
    ({"predict": {"split": "test"}}, r"predict\.split: 'test'"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18"}, "freeze_prefixes": [],
                     "vit": {"name": "vit_tiny_patch16_224",
                             "hybrid": {"name": "no_such_cnn"}}}},
     r"classifier\.vit\.hybrid\.name: .*no_such_cnn"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18"}, "freeze_prefixes": [],
                     "vit": {"name": "vit_tiny_patch16_224", "pretrained": "timm",
                             "hybrid": {"name": "resnet18"}}}},
     r"classifier\.vit\.pretrained: a hybrid ViT's blocks start from random weights"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18"}, "freeze_prefixes": [],
                     "crop": 120, "vit": {"name": "vit_tiny_patch16_224",
                                          "hybrid": {"name": "resnet18"}}}},
     r"classifier\.crop: 120 is not a multiple of the ViT's token stride 16"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18"}, "freeze_prefixes": [],
                     "vit": {"name": "vit_small_patch8_224"}}},
     r"classifier\.vit\.name: 'vit_small_patch8_224' has token stride 8, the CNN branch 16"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18"}, "freeze_prefixes": [],
                     "vit": {"name": "eva02_tiny_patch14_224"}}},
     r"classifier\.vit\.name: 'eva02_tiny_patch14_224' is not a timm ViT whose attention"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18"}, "freeze_prefixes": [],
                     "vit": {"name": "vit_medium_patch16_gap_256"}}},
     r"classifier\.vit\.name: 'vit_medium_patch16_gap_256' has no CLS token"),
    ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18"}, "freeze_prefixes": [],
                     "vit": {"name": "vit_tiny_patch16_224",
                             "hybrid": {"name": "resnet18", "freeze_prefixes": ["blocks.0"]}}}},
     r"classifier\.vit\.hybrid\.freeze_prefixes: no parameter starts with 'blocks\.0'"),
    ({"segmentation": {"backbone": {"name": "resnet18", "pretrained": "~/no/such.pth"},
                       "freeze_prefixes": []}},
     r"segmentation\.backbone\.pretrained: weights file not found: /.*/no/such\.pth"),
])
def test_parse_time_checks_name_the_key(sections: dict, key: str) -> None:
    config = _config(**sections)
    with pytest.raises(ConfigError, match=key):
        check_config(config, len(classes_for(config["dataset"])))


def test_a_hybrid_vit_passes_the_parse_time_checks() -> None:
    config = _config(classifier={"method": "cobra", "cnn": {"name": "resnet18"},
                                 "freeze_prefixes": [],
                                 "vit": {"name": "vit_tiny_patch16_224", "kwargs": {"depth": 2},
                                         "hybrid": {"name": "resnet18"}}})
    assert config["classifier"]["vit"]["hybrid"] == {"name": "resnet18", "pretrained": "none",
                                                     "freeze_prefixes": []}
    check_config(config, len(classes_for(config["dataset"])))


def test_presets_pass_the_parse_time_checks() -> None:
    for preset in PRESETS:
        config = load_workflow_config([preset])
        check_config(config, len(classes_for(config["dataset"])))


def test_freeze_prefix_error_stops_the_dry_run(tmp_path: Path) -> None:
    """The error the issue met after hours on a GPU now stops `snakemake -n` (exit 1)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("segmentation: {backbone: {name: resnet18}, freeze_prefixes: [conv_stem]}\n")
    proc = subprocess.run(SNAKEMAKE + ["-n", "--configfile",
                                       str(ROOT / "workflow/presets/tiny.yaml"), str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "config key segmentation.freeze_prefixes" in proc.stdout + proc.stderr


def test_weights_of_another_architecture_stop_the_parse(tmp_path: Path) -> None:
    """A weights file that exists but belongs to another network stops the parse-time check
    (and so ``snakemake -n``, exit 1) with the config key, the file and the model, not the
    training stage after the earlier jobs; a replaced file is checked again despite the cache."""
    import timm

    r18, vit = tmp_path / "resnet18.pth", tmp_path / "vit.pth"
    torch.save(timm.create_model("resnet18").state_dict(), r18)
    torch.save(timm.create_model("vit_tiny_patch16_224", depth=2).state_dict(), vit)
    cam = {"method": "cam", "freeze_prefixes": []}
    cases = [
        ({"classifier": {**cam, "cnn": {"name": "resnet50", "pretrained": str(r18)}},
          "fusion": "cnn"},
         rf"config key classifier\.cnn\.pretrained: pretrained weights {r18} do not fit the "
         r"model 'resnet50' .*: 198 of the model's 318 tensors missing from the file "
         r"\(layer1\.0\.conv3\.weight, .*23 of another shape \(layer1\.0\.conv1\.weight: file "
         r"64x64x3x3, model 64x64x1x1"),
        ({"segmentation": {"backbone": {"name": "resnet18", "pretrained": str(vit)},
                           "freeze_prefixes": []}},
         rf"config key segmentation\.backbone\.pretrained: pretrained weights {vit} do not fit "
         r"the model 'resnet18' .*: 120 of the model's 120 tensors missing"),
        ({"classifier": {"method": "cobra", "cnn": {"name": "resnet18"}, "freeze_prefixes": [],
                         "vit": {"name": "vit_tiny_patch16_224", "kwargs": {"depth": 2},
                                 "hybrid": {"name": "resnet50", "pretrained": str(r18)}}}},
         r"config key classifier\.vit\.hybrid\.pretrained: .* do not fit the model 'resnet50'"),
    ]
    for sections, message in cases:
        config = _config(**sections)
        with pytest.raises(ConfigError, match=message):
            check_config(config, len(classes_for(config["dataset"])))
    # fitting files pass (heads and, for features_only backbones, unused layers aside) ...
    good = _config(classifier={**cam, "cnn": {"name": "resnet18", "pretrained": str(r18)}},
                   fusion="cnn", irn={"backbone": {"name": "resnet18", "pretrained": str(r18)}},
                   segmentation={"backbone": {"name": "resnet18", "pretrained": str(r18)},
                                 "freeze_prefixes": []})
    cache = tmp_path / "checks"
    check_config(good, len(classes_for(good["dataset"])), cache)
    assert len(list(cache.iterdir())) == 1
    # ... and a file replaced by another network's weights is caught on the next parse
    r18.write_bytes(vit.read_bytes())
    with pytest.raises(ConfigError, match=r"config key classifier\.cnn\.pretrained: "
                                          r".*resnet18\.pth do not fit the model 'resnet18'"):
        check_config(good, len(classes_for(good["dataset"])), cache)
    # end to end: the dry run stops before any job
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"segmentation": {
        "backbone": {"name": "resnet18", "pretrained": str(vit)}, "freeze_prefixes": []}}))
    proc = subprocess.run(SNAKEMAKE + ["-n", "--configfile",
                                       str(ROOT / "workflow/presets/tiny.yaml"), str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert re.search(r"config key segmentation\.backbone\.pretrained: pretrained weights "
                     rf"{vit} do not fit the model 'resnet18'", proc.stdout + proc.stderr)


def _fake_hub_cache(cache: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """Lay out a Hugging Face hub cache entry holding ``state`` as model.safetensors."""
    from safetensors.torch import save_file

    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs/main").write_text(revision)
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snap / "model.safetensors")
    return snap / "model.safetensors"


def test_weights_from_a_hub_cache_offline(tmp_path: Path) -> None:
    """A preset's timm weights placed in the hub cache load with HF_HUB_OFFLINE=1; the weights
    command lists them as cached, and a missing one as missing (exit 1) before any job."""
    import timm

    reference = timm.create_model("test_resnet", pretrained=False).state_dict()
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "timm/test_resnet.r160_in1k", reference)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "classifier": {"method": "cam", "cnn": {"name": "test_resnet", "pretrained": "timm"},
                       "freeze_prefixes": []},
        "fusion": "cnn", "ir_labels": {"threshold": "fixed"},
        "irn": {"backbone": {"name": "test_resnet", "pretrained": "timm"}},
        "segmentation": {"backbone": {"name": "test_resnet", "pretrained": "timm"}}}))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "wsss", "weights", "--configfile", str(config)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(re.findall(r"\bok\b.*test_resnet \(timm\): .*model\.safetensors", proc.stdout)) == 3
    code = ("import torch, wsss; from wsss.models.weights import create_backbone; "
            "m = create_backbone('test_resnet', 'timm'); "
            "print(sum(float(v.float().sum()) for v in m.state_dict().values()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = sum(float(v.float().sum()) for v in reference.values())
    assert float(out.stdout.strip()) == pytest.approx(expected, rel=1e-6)
    # a model whose weights are not cached: listed as missing, and the parse-time check names it
    settings = yaml.safe_load(config.read_text())
    settings["segmentation"]["backbone"]["name"] = "test_vit"
    config.write_text(yaml.safe_dump(settings))
    proc = subprocess.run([sys.executable, "-m", "wsss", "weights", "--configfile", str(config)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 1 and re.search(r"segmentation\.backbone\s+missing", proc.stdout)
    code = ("import wsss; from wsss.checks import check_pretrained as c; "
            "c('irn.backbone', {'name': 'test_resnet', 'pretrained': 'timm'}); "
            "c('segmentation.backbone', {'name': 'test_vit', 'pretrained': 'timm'})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 1
    assert re.search(r"ConfigError: config key segmentation\.backbone\.pretrained: "
                     r"HF_HUB_OFFLINE is set and the timm weights of 'test_vit' are not",
                     out.stderr)
