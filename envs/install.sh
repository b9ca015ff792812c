#!/usr/bin/env bash
# Install wsss and every dependency into a virtual environment (default: .venv).
#
#   bash envs/install.sh            # CPU or CUDA machine; creates .venv next to the Snakefile
#   VENV=/path/env bash envs/install.sh
#
# torch, torchvision and timm are pinned together in ONE pip command: an unpinned torch or timm
# pulls a newer torch with several GB of CUDA wheels. animal-mnist (demo silhouettes) declares a
# tensorflow dependency it does not need: it is installed with --no-deps.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[wsss] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip "setuptools>=61"
echo "[wsss] installing pinned requirements (envs/requirements.txt)"
"${pip[@]}" install --quiet -r "$here/envs/requirements.txt"
"${pip[@]}" install --quiet --no-deps -r "$here/envs/requirements-nodeps.txt"
"${pip[@]}" install --quiet --no-deps --no-build-isolation -e "$here"
if "$venv/bin/python" -m pip list 2>/dev/null | grep -qiE '^(nvidia-|tensorflow)'; then
  if ! "$venv/bin/python" -c "import torch,sys; sys.exit(0 if torch.version.cuda else 1)"; then
    echo "[wsss] error: CUDA or tensorflow packages were pulled into a CPU install" >&2
    exit 1
  fi
fi
"$venv/bin/python" -c "import wsss, timm, torchvision, h5py, pydensecrf.densecrf, pycocotools.mask; print('[wsss] ok: torch', __import__('torch').__version__, '| timm', timm.__version__)"
