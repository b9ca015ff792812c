"""Config schema: defaults filled, errors name the key path."""

import subprocess
import sys
from pathlib import Path

import pytest

from wsss.config import load_config, validate_config
from wsss.errors import ConfigError
from wsss.hashing import as_params

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_is_valid_and_defaults_filled():
    cfg = load_config(ROOT / "config.yaml")
    assert cfg["classifier"]["cobra"]["k_sap_pos"] == 20
    assert cfg["classifier"]["cobra"]["tau"] == 0.1
    assert cfg["classifier"]["vit"]["pretrained"] == "none"
    assert cfg["seeds"]["sweep_stop"] == 1.0


@pytest.mark.parametrize("override, key", [
    ({"classifier": {"epochs": "three"}}, "classifier.epochs"),
    ({"dataset": {"demo": {"n_trian": 5}}}, "dataset.demo.n_trian"),
    ({"fusion": "mean"}, "fusion"),
    ({"cams": {"scales": []}}, "cams.scales"),
    ({"classifier": {"cnn": {"name": "resnet50", "weights": "x"}}}, "classifier.cnn.weights"),
])
def test_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"config key {key}\b"):
        load_config(ROOT / "config.yaml", override)


def test_presets_are_valid():
    for preset in sorted((ROOT / "workflow" / "presets").glob("*.yaml")):
        load_config(preset)


def test_command_line_strings_are_coerced_by_schema_type():
    # Snakemake passes nested --config values as strings
    cfg = validate_config({"cams": {"scales": ["0.5", "1.0"], "flip": "false", "batch_size": "4"},
                           "dataset": {"root": "data", "demo": {"n_train": "24"}}})
    assert cfg["cams"]["scales"] == [0.5, 1.0] and cfg["cams"]["flip"] is False
    assert cfg["cams"]["batch_size"] == 4
    assert cfg["dataset"]["root"] == "data" and cfg["dataset"]["demo"]["n_train"] == 24
    assert validate_config({"run": "123"})["run"] == "123"  # strings stay strings
    with pytest.raises(ConfigError, match="config key cams.batch_size"):
        validate_config({"cams": {"batch_size": "four"}})


def test_params_are_stable_json():
    assert as_params({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert validate_config({}) == validate_config({})


def test_method_section_keeps_the_method_own_keys_only():
    from wsss.config import METHOD_KEYS, method_section
    from wsss.methods.base import METHODS

    assert set(METHOD_KEYS) == set(METHODS.names())
    cfg = validate_config({})["classifier"]
    shared = {k for k in cfg if not any(k in keys for keys in METHOD_KEYS.values())}
    assert {"method", "epochs", "crop", "freeze_prefixes"} <= shared
    cosa = method_section({**cfg, "method": "cosa"})
    assert set(cosa) == shared | {"cosa", "cosa_optim"}
    assert set(method_section({**cfg, "method": "cobra"})) == \
        shared | {"cnn", "vit", "cobra", "cnn_optim", "vit_optim"}
    assert set(method_section({**cfg, "method": "cam"})) == shared | {"cnn", "cnn_optim"}


def test_import_wsss_is_light_and_fixes_torchvision():
    code = ("import sys, wsss; assert 'torch' not in sys.modules; "
            "import timm, torchvision.transforms.v2; from wsss.compat import torchvision_ops_mode;"
            " print(torchvision_ops_mode())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out in ("native", "schema-only")


def test_hub_setting_is_left_to_the_user():
    """import wsss never forces HF_HUB_OFFLINE (a connected machine must download weights)."""
    code = ("import os; import wsss, timm; print(os.environ.get('HF_HUB_OFFLINE', 'unset'))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.strip()
    assert out == "unset"


def test_registry_names_the_key_and_the_known_names():
    from wsss.registry import Registry

    reg: Registry[int] = Registry("fusion variant", "fusion")
    reg.register("a")(1)
    reg.register("b")(2)
    assert reg.get("b") == 2 and reg.names() == ("a", "b") and "a" in reg and "c" not in reg
    with pytest.raises(ConfigError, match=r"config key fusion: unknown fusion variant 'c' "
                                          r"\(known: a, b\)"):
        reg.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(3)
