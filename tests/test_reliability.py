"""Full disks, killed processes and shared folders: artifacts stay whole, temporary files go,
file modes follow the umask."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.errors import DataError
from wsss.io import atomic, h5store
from wsss.io.atomic import atomic_dir, atomic_path, remove_stale_temps, write_text
from wsss.io.h5store import H5Writer

ROOT = Path(__file__).resolve().parent.parent


def temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
])
def test_full_disk_in_an_atomic_writer_is_one_line_and_leaves_nothing(tmp_path, monkeypatch,
                                                                       failure):
    """ENOSPC (or torch.save's own wording of it on a nearly full disk) -> one DataError naming
    the file; no temporary file and no artifact remain."""
    monkeypatch.setattr(atomic, "free_bytes", lambda directory: 4096)
    target = tmp_path / "model.pt"
    expected = r"^no space left on device while writing " + str(target)
    with pytest.raises(DataError, match=expected), atomic_path(target) as tmp:
        torch.save({"w": torch.zeros(3)}, tmp)
        raise failure
    assert not target.exists() and temps(tmp_path) == []
    with (pytest.raises(DataError, match="no space left on device while writing .*overlays"),
          atomic_dir(tmp_path / "overlays") as folder):
        (folder / "a.png").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not (tmp_path / "overlays").exists() and temps(tmp_path) == []


def test_other_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), atomic_path(tmp_path / "x.pt"):
        raise RuntimeError("boom")
    assert temps(tmp_path) == []


def test_hdf5_writer_stops_before_the_disk_is_full(tmp_path, monkeypatch):
    """The HDF5 writer checks free space before each image (HDF5 itself crashes the process
    when a buffered write meets a full disk): one DataError naming the store, no temp file."""
    free = {"bytes": 10 << 20}
    monkeypatch.setattr(h5store, "free_bytes", lambda directory: free["bytes"])
    store = tmp_path / "cams.h5"
    cam = np.random.default_rng(0).random((1, 300, 300))
    with (pytest.raises(DataError, match=r"no space left on device while writing .*cams\.h5"),
          H5Writer(store, "cams", ["background", "a"], {}) as writer):
        writer.add("img1", (300, 300), np.array([1]), {"cam": cam})
        free["bytes"] = 2 * cam.size * 2  # less than twice the next image + the reserve
        writer.add("img2", (300, 300), np.array([1]), {"cam": cam})
    assert not store.exists() and temps(tmp_path) == []


def test_hdf5_write_error_from_a_full_disk_is_named(tmp_path, monkeypatch):
    def failing(group, name, data, dtype):
        raise OSError(errno.ENOSPC, "Can't write data (file write failed: errno = 28)")

    monkeypatch.setattr(h5store, "_compressed", failing)
    with (pytest.raises(DataError, match="no space left on device while writing"),
          H5Writer(tmp_path / "s.h5", "seeds", ["background"], {}) as writer):
        writer.add("a", (2, 2), np.array([], np.int16), {"cam": np.zeros((0, 2, 2))})
    assert temps(tmp_path) == [] and not (tmp_path / "s.h5").exists()


def test_files_follow_the_umask(tmp_path):
    """Artifacts are readable by the group and others under umask 022 (0644), as open() gives,
    not mkstemp's 0600; directories 0755."""
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.csv", "x")
        with H5Writer(tmp_path / "b.h5", "cams", ["background"], {}) as _:
            pass
        with atomic_dir(tmp_path / "pngs"):
            pass
        os.umask(0o007)
        write_text(tmp_path / "c.csv", "x")
    finally:
        os.umask(old)

    def mode(name: str) -> int:
        return stat.S_IMODE((tmp_path / name).stat().st_mode)

    assert (mode("a.csv"), mode("b.h5"), mode("pngs"), mode("c.csv")) == (
        0o644, 0o644, 0o755, 0o660)


def test_a_stage_removes_the_temporary_files_a_killed_run_left(tmp_path):
    """A SIGKILLed writer leaves `.<name>.<random>.tmp`; the stage's next run removes its own
    (outputs and resume state), and nothing else."""
    data = tmp_path / "data"
    state = tmp_path / "classifier/_state"
    state.mkdir(parents=True)
    (data).mkdir()
    stale = [data / ".train.csv.ab12.tmp", state / ".last.pt.cd34.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (data / ".images.ef56.tmp").mkdir()
    other = data / ".someone_else.tmp"
    other.write_bytes(b"keep")
    assert remove_stale_temps(data / "images") == [data / ".images.ef56.tmp"]
    params = {"name": "demo", "demo": {"n_train": 4, "n_val": 2, "size": 32, "size_jitter": 0,
                                       "seed": 0, "p_ctx": 0.3}}
    outputs = {"train": data / "train.csv", "val": data / "val.csv",
               "classes": data / "classes.csv"}
    cmd = [sys.executable, "-m", "wsss", "prepare_data", "--params", json.dumps(params)]
    cmd += [a for k, v in outputs.items() for a in ("--output", f"{k}={v}")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not stale[0].exists() and other.exists() and (data / "train.csv").exists()
    # a training stage's outputs sit next to its _state/ folder: its temporaries go too
    import logging

    from wsss.__main__ import _remove_stale_temps

    _remove_stale_temps([tmp_path / "classifier/model.pt"], logging.getLogger("test"))
    assert not stale[1].exists()


# ---------------------------------------------------------------- artifacts of the wrong kind

TINY = ROOT / "workflow/presets/tiny.yaml"


def _tiny():
    from wsss.config import load_workflow_config
    from wsss.data.dataset_classes import classes_for

    config = load_workflow_config([TINY])
    return config, classes_for(config["dataset"])


def _classifier(path: Path, method: str, poison: bool = False) -> None:
    from wsss.models.classifier import build_classifier, save_classifier

    config, classes = _tiny()
    cfg = {**config["classifier"], "method": method,
           "cnn": {**config["classifier"]["cnn"], "pretrained": "none"}}
    model = build_classifier(cfg, len(classes) - 1)
    if poison:
        with torch.no_grad():
            next(iter(model.parameters())).fill_(float("nan"))
    save_classifier(path, model, cfg, classes, "test")


def _segmenter(path: Path) -> None:
    from wsss.models.segmentation import build_segmenter, save_segmenter, segmenter_meta

    config, classes = _tiny()
    cfg = config["segmentation"]
    net = build_segmenter(cfg, len(classes))
    save_segmenter(path, net, {**segmenter_meta(net, cfg, classes), "config_hash": "test"})


def _split(path: Path, ids: list[str]) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["id,image,mask,labels"]
    for i, ident in enumerate(ids):
        image = path.parent / f"img{i}.png"
        Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(image)
        rows.append(f"{ident},{image.name},,cat")
    path.write_text("\n".join(rows) + "\n")
    return path


def _stage(name: str, inputs: dict, outputs: dict, params: dict) -> subprocess.CompletedProcess:
    """Run a stage as the rules do (with a log file: the console gets only the error line)."""
    log = Path(next(iter(outputs.values()))).parent / f"{name}.log"
    cmd = [sys.executable, "-m", "wsss", name, "--params", json.dumps(params), "--log", str(log)]
    cmd += [a for k, v in inputs.items() for a in ("--input", f"{k}={v}")]
    cmd += [a for k, v in outputs.items() for a in ("--output", f"{k}={v}")]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def _extract(tmp_path: Path, model: Path, method: str = "cobra") -> subprocess.CompletedProcess:
    config, classes = _tiny()
    split = _split(tmp_path / "data/train.csv", ["a", "b"])
    return _stage("extract_cams", {"model": model, "split": split},
                  {"cams": tmp_path / "cams/train.h5"},
                  {"cams": config["cams"], "classes": classes, "method": method,
                   "device": "cpu", "max_side": None})


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_model_of_another_kind_is_named_in_one_line(tmp_path):
    model = tmp_path / "segmentation/model.pt"
    _segmenter(model)
    line = _one_error_line(_extract(tmp_path, model))
    assert f"{model} holds a segmenter (deeplabv3plus), expected a classifier" in line
    assert not (tmp_path / "cams/train.h5").exists()


def test_a_classifier_of_another_method_is_refused(tmp_path):
    """A `cam` classifier copied into a `cobra` run (the issue's case) is no longer used."""
    model = tmp_path / "classifier/model.pt"
    _classifier(model, "cam")
    line = _one_error_line(_extract(tmp_path, model, method="cobra"))
    assert f"{model} holds a 'cam' classifier, the config asks for 'cobra'" in line
    assert not (tmp_path / "cams/train.h5").exists()


def test_a_model_with_non_finite_weights_is_refused(tmp_path):
    model = tmp_path / "classifier/model.pt"
    _classifier(model, "cobra", poison=True)
    line = _one_error_line(_extract(tmp_path, model))
    assert f"{model} holds non-finite weights" in line


def test_a_store_of_other_classes_or_kind_is_named_by_its_reader(tmp_path):
    """A foreign HDF5 store is caught by the first stage that reads it, naming that file."""
    config, classes = _tiny()
    foreign = tmp_path / "cams/train.h5"
    with H5Writer(foreign, "cams", ["background", "car"], {"maps": ["cnn"]}) as writer:
        writer.add("a", (4, 4), np.array([1]), {"cnn": np.zeros((1, 4, 4))})
    proc = _stage("fuse_cams", {"cams": foreign}, {"seeds": tmp_path / "seeds/train.h5"},
                  {"fusion": "cnn", "classes": classes})
    assert f"{foreign} holds cams for classes ['background', 'car'], the config has" in \
        _one_error_line(proc)
    masks = tmp_path / "masks/train.h5"
    with H5Writer(masks, "masks", classes, {}) as writer:
        writer.add("a", (4, 4), np.array([1]), {"mask": np.zeros((4, 4))})
    proc = _stage("fuse_cams", {"cams": masks}, {"seeds": tmp_path / "seeds/train.h5"},
                  {"fusion": "cnn", "classes": classes})
    assert f"{masks} holds 'masks', expected 'cams'" in _one_error_line(proc)
    assert not (tmp_path / "seeds/train.h5").exists()


def test_a_map_with_nan_is_never_written(tmp_path):
    with (pytest.raises(DataError, match=r"image 'a': its 'cnn' map holds NaN or inf"),
          H5Writer(tmp_path / "cams.h5", "cams", ["background", "cat"], {}) as writer):
        writer.add("a", (2, 2), np.array([1]), {"cnn": np.full((1, 2, 2), np.nan)})
    assert not (tmp_path / "cams.h5").exists() and temps(tmp_path) == []


def test_no_stage_writes_outside_its_results_folder(tmp_path):
    """An id that is a path (hand-edited split CSV) stops a stage that writes one file per id
    before it writes anything; nothing appears outside the run folder."""
    run = tmp_path / "results/run"
    model = run / "segmentation/model.pt"
    _segmenter(model)
    config, classes = _tiny()
    split = _split(run / "data/val.csv", ["ok", "../../escape"])
    before = set(tmp_path.rglob("*"))
    proc = _stage("predict", {"model": model, "split": split},
                  {"predictions": run / "predictions/val.h5", "png": run / "predictions/val"},
                  {"predict": config["predict"], "classes": classes, "device": "cpu",
                   "max_side": None})
    assert "id '../../escape' contains a path separator" in _one_error_line(proc)
    created = set(tmp_path.rglob("*")) - before
    assert all(run in p.parents for p in created), created
    assert not list(tmp_path.rglob("escape*"))
