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
