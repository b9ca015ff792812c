"""``classifier.method: cosa``: the online / assignment pair (CoSA Sec. 3.2), its objective
(Eq. 11) through the existing classifier stage and loop, its CAMs through extract_cams, its
views, its config checks and presets."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from wsss.checks import check_config
from wsss.config import load_workflow_config, validate_config
from wsss.data.dataset_classes import classes_for
from wsss.data.table import write_split_csv
from wsss.data.views import APPEARANCE_OPS, random_blur, strong_view
from wsss.errors import ConfigError
from wsss.io.h5store import H5Reader
from wsss.methods.cosa import CoSANet
from wsss.models.cosa import FeaturePair
from wsss.train.optim import build_optimizer, param_group

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["background", "cat", "dog"]
TINY = {"backbone": {"name": "test_efficientnet", "pretrained": "none"}, "seg_width": 8,
        "warmup_steps": 0, "an_scales": [1.0, 0.5]}


def _settings(**over) -> dict:
    """The validated ``classifier.cosa`` section of a tiny CoSANet with ``over``."""
    cosa = {**TINY, **over}
    return validate_config({"classifier": {"method": "cosa", "cosa": cosa}})["classifier"]["cosa"]


def _net(**over) -> CoSANet:
    torch.manual_seed(0)
    return CoSANet(2, _settings(**over))


def _batch(size: int = 32, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, size, size, generator=g), \
        torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]][:b])


def test_one_step_moves_the_assignment_network_by_one_minus_m():
    m = 0.9
    net = _net(momentum=m, threshold="fixed")
    on0 = {k: v.clone() for k, v in net.online.state_dict().items()}
    assert all(torch.equal(v, on0[k]) for k, v in net.assign.state_dict().items())  # a copy
    assert not any(p.requires_grad for p in net.assign.parameters())
    backbone, heads = net.param_groups()["cosa"]
    opt = build_optimizer([param_group(backbone, 0.5, "b"), param_group(heads, 0.5, "h")],
                          "sgd", 0.0, 0.0)
    net.train()
    x, y = _batch()
    terms = net.objective(net(x), y, 0)
    opt.zero_grad()
    terms["loss"].backward()
    opt.step()
    net.after_step()
    assert int(net.steps_done) == 1
    on1 = dict(net.online.named_parameters())
    moved = 0
    for name, an in net.assign.named_parameters():
        if not an.is_floating_point():
            continue
        expected = on0[name].mul(m).add(on1[name].detach(), alpha=1 - m)
        assert torch.equal(an, expected), name  # Theta' = m Theta'_0 + (1 - m) Theta_1
        torch.testing.assert_close(an - on0[name], (1 - m) * (on1[name].detach() - on0[name]))
        moved += int(not torch.equal(on1[name], on0[name]))
    assert moved > 10  # the step changed the ON (and so the AN)
    for name, buf in net.assign.named_buffers():  # buffers are copied, not averaged
        assert torch.equal(buf, dict(net.online.named_buffers())[name])


@pytest.mark.parametrize("threshold", ["gmm", "fixed"])
def test_loss_terms_are_named_and_finite_on_both_thresholds(threshold):
    net = _net(threshold=threshold, threshold_ema=0.0, queue_length=3, xi=0.4)
    net.train()
    for _ in range(3 if threshold == "gmm" else 1):
        x, y = _batch(size=64, b=4)  # 3 batches of 4 x 4 x 4 cells: enough for a GMM fit
        out = net(x)
        assert {"an_cam", "an_aux", "an_seg"} <= set(out)
        assert float(out["an_cam"].min()) >= 0 and float(out["an_cam"].max()) <= 1
        terms = net.objective(out, y, 0)
        assert set(terms) == set(CoSANet.loss_terms)
        assert all(math.isfinite(float(v.detach())) for v in terms.values()), terms
        net.after_step()
    columns = net.epoch_columns(0)
    assert columns["aux_losses"] == 1
    if threshold == "fixed":
        assert columns["threshold"] == 0.4 and net.resume_state() == {}
    else:
        gmm = net.resume_state()["cosa_threshold"]
        assert len(gmm) == 3 and gmm.last_fit is not None  # fitted on the queue
        assert columns["threshold"] == gmm.last_fit.split != 0.4


def test_warmup_trains_the_classification_terms_only():
    net = _net(warmup_steps=1, csc=False, raw=False)
    net.train()
    x, y = _batch()
    out = net(x)
    assert "an_cam" not in out  # the AN is not run while warming up
    assert set(net.objective(out, y, 0)) == {"loss", "loss_cls", "loss_cls_aux"}
    net.after_step()
    assert net.epoch_columns(0)["aux_losses"] == 0
    terms = net.objective(net(x), y, 0)
    assert set(terms) == {"loss", "loss_cls", "loss_cls_aux", "loss_c2s", "loss_c2s_aux",
                          "loss_s2c"}  # csc: false


@pytest.mark.parametrize("pooling", ["gmp", "gap"])
def test_class_scores_pool_the_cam_as_configured(pooling):
    net = _net(pooling=pooling, warmup_steps=10)
    net.eval()
    cam = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]], [[-1.0, -1.0], [-1.0, -5.0]]]])
    scores = net.image_scores({"cam": cam, "aux_cam": cam})
    expected = [[3.0, -1.0]] if pooling == "gmp" else [[0.5, -2.0]]  # max / mean per class
    assert torch.equal(scores["main"], torch.tensor(expected))
    assert torch.equal(scores["aux"], torch.tensor(expected))
    y = torch.tensor([[1.0, 0.0]])
    loss = net.objective({"cam": cam, "aux_cam": cam}, y, 0)["loss_cls"]
    z = torch.tensor(expected[0])  # multilabel soft margin by hand: mean over the classes
    by_hand = (-torch.log(torch.sigmoid(z[0])) - torch.log(1 - torch.sigmoid(z[1]))) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_an_image_without_labels_trains_as_background_and_is_logged_once(caplog):
    net = _net(threshold="fixed")
    net.train()
    x, _ = _batch()
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    with caplog.at_level(logging.WARNING, logger="wsss.methods.cosa"):
        for _ in range(2):
            terms = net.objective(net(x), y, 0)
            assert all(math.isfinite(float(v.detach())) for v in terms.values()), terms
    warned = [r for r in caplog.records if "carry no class label" in r.getMessage()]
    assert len(warned) == 1 and "1 image(s)" in warned[0].getMessage()


def test_bad_settings_name_their_key():
    with pytest.raises(ConfigError, match=r"^config key classifier\.cosa\.momentum: must be in "
                                          r"\[0, 1\)"):
        CoSANet(2, {**_settings(), "momentum": 1.0})
    with pytest.raises(ConfigError, match=r"config key classifier\.cosa\.momentum"):
        _settings(momentum=1.5)
    with pytest.raises(ConfigError, match=r"^config key classifier\.cosa\.aux_stage: "
                                          r"'test_resnet' has no stage 4 before its last one"):
        FeaturePair("test_resnet", "none", aux_stage=4)  # 5 levels: 4 is the last
    with pytest.raises(ConfigError, match=r"^config key classifier\.cosa\.aux_block: "
                                          r"'test_vit' has no block -3 before its last one"):
        FeaturePair("test_vit", "none", {"depth": 2}, aux_block=-3)


def _tiny_config(**cosa) -> dict:
    tiny = yaml.safe_load((ROOT / "workflow/presets/tiny.yaml").read_text())
    tiny["classifier"] = {**tiny["classifier"], "method": "cosa", "freeze_prefixes": [],
                          "cosa": {**TINY, **cosa}}
    tiny["fusion"] = "cnn"
    return validate_config(tiny)


@pytest.mark.parametrize("cosa, key", [
    ({"aux_stage": 9}, r"classifier\.cosa\.aux_stage: 'test_efficientnet' has no stage 9"),
    ({"backbone": {"name": "test_vit", "kwargs": {"depth": 2}}},
     r"classifier\.cosa\.aux_block: 'test_vit' has no block -3"),
    ({"backbone": {"name": "no_such_net"}}, r"classifier\.cosa\.backbone\.name: .*no_such_net"),
])
def test_parse_time_checks_name_the_cosa_key(cosa, key):
    config = _tiny_config(**cosa)
    with pytest.raises(ConfigError, match=key):
        check_config(config, len(classes_for(config["dataset"])))


def test_fusion_needing_vit_maps_is_refused_for_cosa():
    config = _tiny_config()
    config["fusion"] = "fuse"
    with pytest.raises(ConfigError, match=r"config key fusion: 'fuse' needs the ViT maps"):
        check_config(config, len(classes_for(config["dataset"])))


def test_demo_overlay_and_voc_preset_parse():
    demo = load_workflow_config([ROOT / "config.yaml", ROOT / "workflow/presets/demo-cosa.yaml"])
    cls = demo["classifier"]
    assert cls["method"] == "cosa" and demo["fusion"] == "cnn" and demo["run"] == "demo-cosa"
    assert cls["cosa"]["backbone"] == {"name": "tf_efficientnet_lite0",
                                       "pretrained": "efficientnet_lite0", "kwargs": {}}
    check_config(demo, len(classes_for(demo["dataset"])))
    assert cls["cosa"]["lambda_csc"] == 0.05  # the demo's (README "CoSA on the demo")
    voc = load_workflow_config([ROOT / "workflow/presets/voc12-cosa.yaml"])
    cls = voc["classifier"]
    # the paper's loss weights (CoSA Sec. 4.1)
    assert (cls["cosa"]["lambda_c2s"], cls["cosa"]["lambda_s2c"], cls["cosa"]["lambda_csc"]) \
        == (0.1, 0.05, 0.1)
    assert cls["cosa"]["backbone"]["name"] == "vit_base_patch16_224" and cls["crop"] == 448
    assert (cls["batch_size"], cls["lr_warmup_steps"], cls["cosa"]["warmup_steps"]) == \
        (2, 1500, 6000)
    steps = 4 * (10582 * 0.95 // 2)  # 4 epochs of train_aug (5 % held out) at batch 2
    assert cls["epochs"] == 4 and abs(steps - 20000) < 500


def test_views_keep_the_pixels_in_place_and_repeat_with_the_seed():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (torch.rand(9, 3, 16, 16) * 255).round() / 255
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.manual_seed(3)
    view, ops = strong_view(x, mean, std)
    torch.manual_seed(3)
    again, ops2 = strong_view(x, mean, std)
    assert torch.equal(view, again) and ops == ops2 and set(ops) <= set(APPEARANCE_OPS)
    for i, op in enumerate(ops):
        if op == "identity":  # un-normalised, quantised, normalised: the same image
            torch.testing.assert_close(view[i], x[i], atol=1e-5, rtol=0)
    assert torch.equal(random_blur(x, 0.0), x)
    torch.manual_seed(0)
    blurred = random_blur(x, 1.0)
    assert blurred.shape == x.shape and not torch.equal(blurred, x)


# ---------------------------------------------------------------- the stages, end to end


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """8 tiny images (a brighter square of their class) and their split CSV."""
    root = tmp_path_factory.mktemp("cosa")
    rng = np.random.default_rng(0)
    records = []
    for i in range(8):
        img = rng.integers(0, 90, (32, 40, 3), dtype=np.uint8)
        img[8:24, 10:30] += 120
        Image.fromarray(img).save(root / f"im{i}.png")
        records.append({"id": f"im{i}", "image": f"im{i}.png", "mask": None,
                        "labels": [CLASSES[1 + i % 2]] + (["cat"] if i == 3 else [])})
    write_split_csv(root / "train.csv", records)
    return root / "train.csv"


def _train(split: Path, out: Path) -> dict:
    from wsss.stages import train_classifier

    section = _tiny_config(warmup_steps=2, queue_length=4)["classifier"]
    section.update(epochs=2, batch_size=2, crop=32, resize_long=[32, 48], save_every_steps=1,
                   holdout_fraction=0.25, num_workers=0)
    params = {"classifier": section, "classes": CLASSES, "device": "cpu", "seed": 0}
    outputs = {"model": str(out / "model.pt"), "metrics": str(out / "metrics.csv")}
    train_classifier.run({"train": str(split)}, outputs, params)
    return outputs


def test_stage_trains_resumes_and_extract_cams_exports_the_an(split, tmp_path, monkeypatch):
    from wsss.stages import extract_cams, fuse_cams

    straight = _train(split, tmp_path / "a")
    metrics = pd.read_csv(straight["metrics"])
    for column in (*CoSANet.loss_terms, "threshold", "aux_losses", "holdout_map_main",
                   "holdout_map_aux"):
        assert column in metrics.columns, column
    steps = int(metrics["steps"].sum())
    assert steps == 4 and list(metrics["aux_losses"]) == [0, 1]  # epoch 1: the 2 warm-up steps
    assert metrics.loc[0, ["loss_c2s", "loss_s2c", "loss_csc"]].isna().all()
    assert np.isfinite(metrics.loc[1, ["loss_c2s", "loss_s2c", "loss_csc"]].astype(float)).all()
    state = torch.load(straight["model"], weights_only=True)["state_dict"]
    assert int(state["steps_done"]) == steps
    assert any(k.startswith("assign.") for k in state) and any(k.startswith("online.")
                                                               for k in state)
    assert not torch.equal(state["assign.cam_head.weight"], state["online.cam_head.weight"])

    # killed in its 4th step (after step 1 of epoch 2, whose resume state holds the GMM queue
    # and the warm-up clock), rerun: the same weights as the straight run
    calls = {"n": 0}
    original = CoSANet.objective

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CoSANet, "objective", dying)
    with pytest.raises(KeyboardInterrupt):
        _train(split, tmp_path / "b")
    monkeypatch.setattr(CoSANet, "objective", original)
    resumed = _train(split, tmp_path / "b")
    again = torch.load(resumed["model"], weights_only=True)["state_dict"]
    assert all(torch.equal(v, again[k]) for k, v in state.items())

    cams = tmp_path / "cams.h5"
    extract_cams.run({"model": straight["model"], "split": str(split)}, {"cams": str(cams)},
                     {"cams": {"scales": [1.0], "flip": True, "batch_size": 4,
                               "quantization": 512},
                      "classes": CLASSES, "device": "cpu", "method": "cosa", "max_side": None})
    store = H5Reader(cams, kind="cams", classes=CLASSES)
    assert store.meta["maps"] == ["cnn", "aux"] and store.meta["method"] == "cosa"
    item = store.get("im3")
    assert list(item["keys"]) == [1, 2] and item["cnn"].shape == (2, 32, 40)
    assert item["aux"].shape == (2, 32, 40) and "cnn_strided" in item
    fuse_cams.run({"cams": str(cams)}, {"seeds": str(tmp_path / "seeds.h5")},
                  {"fusion": "cnn", "classes": CLASSES})
    seeds = H5Reader(tmp_path / "seeds.h5", kind="seeds", classes=CLASSES)
    cnn = item["cnn"].astype(np.float32)
    np.testing.assert_allclose(seeds.get("im3")["cam"], cnn / (cnn.max((1, 2), keepdims=True)
                                                              + 1e-5), atol=1e-3)
