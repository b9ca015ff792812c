"""Command line: ``python -m wsss <stage> --input k=path --output k=path --params JSON``.

``python -m wsss weights --configfile FILE...`` lists (and with ``--fetch`` downloads) the
pretrained weights a config needs (:mod:`wsss.weights_cli`).

Every Snakemake rule calls this; it runs any stage without Snakemake too. A user error
(bad config, data or input file: :class:`wsss.errors.WsssError`) prints one ``error:`` line and
exits with status 2. Any other exception is a bug or an unexpected failure: its full traceback
(with a worker process's own traceback and the image it was working on, see
:mod:`wsss.parallel`) goes to the log (``--log``, else stderr), the console gets one line
naming the exception and the log file, and the exit status is 1. Partial outputs are never
left behind (stages write atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

STAGES = ("prepare_data", "train_classifier", "extract_cams", "fuse_cams", "eval_seeds",
          "make_ir_labels", "train_irn", "make_pseudo_masks", "make_cpl_masks", "eval_masks",
          "train_segmentation", "predict", "eval_segmentation", "predict_cosa", "report",
          "merge_shards")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} expects NAME=PATH, got {item!r}")
        out[key] = value
    return out


def _remove_stale_temps(outputs: object, log: logging.Logger) -> None:
    """Remove what a killed earlier run of this stage left half-written: the atomic writers'
    temporary siblings of its outputs and of the resume state next to them (``_state/``)."""
    from wsss.io.atomic import remove_stale_temps

    for output in outputs:  # type: ignore[attr-defined]
        path = Path(output)
        removed = remove_stale_temps(path)
        state = path.parent / "_state"  # this stage's own resume state (train_*)
        if state.is_dir():
            for stale in state.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
                removed.append(stale)
        for stale in removed:
            log.info("removed %s, left by an interrupted run", stale)


def _merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in recursively (dicts merge, other values replace)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, set up logging and threads, and run one stage (or ``weights``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["weights"]:
        import wsss  # noqa: F401  (installs the torchvision fix)
        from wsss.weights_cli import main as weights_main

        return weights_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m wsss", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--output", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--params", default="{}", help="the stage's config as JSON")
    parser.add_argument("--options", default="{}",
                        help="execution-only settings as JSON (num_workers, save_every_steps), "
                             "merged into --params; rules keep them out of rerun decisions")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    parser.add_argument("--log", default=None, help="log file (also receives progress bars)")
    args = parser.parse_args(argv)
    from wsss.devices import TRAINING_STAGES
    from wsss.train.distributed import current_world

    world = current_world()  # rank r of W under torchrun; rank 0 of 1 otherwise
    # Snakemake and SLURM stop jobs with SIGTERM: turn it into an exception so that atomic
    # writers remove their temporary files (resume state is kept, it is not an output).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    handlers: list[logging.Handler] = []
    log_stream = sys.stderr
    if args.log:
        os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
        # under torchrun the launching process has opened the log: the ranks append to it
        log_stream = open(args.log, "a" if world.size > 1 else "w",  # noqa: SIM115 (lives for
                          buffering=1)                                # the process)
        handlers.append(logging.StreamHandler(log_stream))
        if world.is_main:  # ranks above 0 log their warnings to the file only
            console = logging.StreamHandler(sys.stderr)
            console.setLevel(logging.WARNING)
            # the final error goes to the log only: the console gets one printed line instead
            console.addFilter(lambda record: not getattr(record, "log_only", False))
            handlers.append(console)
        else:
            handlers[-1].setLevel(logging.WARNING)
        sys.stderr = log_stream  # tqdm and warnings go to the log file
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("wsss")

    import wsss  # noqa: F401  (installs the torchvision/offline fixes)
    from wsss.devices import GPU_STAGES, claim_device

    try:
        params = json.loads(args.params)
        options = json.loads(args.options)
    except json.JSONDecodeError as exc:
        log.error("--params / --options is not valid JSON: %s", exc)
        return 2
    processes = int(options.pop("processes", 1)) if args.stage in TRAINING_STAGES else 1
    params = _merge(params, options)
    if world.size > 1:  # a rank started by launch() below: the launcher claimed the devices
        from wsss.train.distributed import init_process_group

        init_process_group(world, params.get("device", "auto"))
        try:
            return _run_stage(args, params, log, world.is_main)
        finally:
            import torch.distributed

            torch.distributed.destroy_process_group()
    with contextlib.ExitStack() as resources:
        if args.stage in GPU_STAGES and params.get("device") != "cpu":
            # free GPUs of several, before CUDA starts (wsss.devices)
            from wsss.errors import WsssError

            try:
                resources.enter_context(claim_device(count=processes))
            except WsssError as exc:  # more processes than GPUs
                log.error("error: %s", exc, extra={"log_only": True})
                print(f"wsss {args.stage}: error: {exc}", file=sys.__stderr__)
                return 2
        if processes > 1:
            return _launch(args, argv, processes, log)
        return _run_stage(args, params, log)


def _launch(args: argparse.Namespace, argv: list[str], processes: int,
            log: logging.Logger) -> int:
    """Run the training stage as ``processes`` ranks under torchrun (wsss.train.distributed).
    Exit status 2 when rank 0 stopped on a user error (it printed its one line), else 1 with
    one line naming the log."""
    from wsss.train.distributed import launch

    _remove_stale_temps(_pairs(args.output, "--output").values(), log)
    if launch(argv, processes):
        return 0
    text = Path(args.log).read_text() if args.log else ""
    if " ERROR wsss: error: " in text:
        return 2
    print(f"wsss {args.stage}: a training process failed; see {args.log or 'the output above'}",
          file=sys.__stderr__)
    return 1


def _run_stage(args: argparse.Namespace, params: dict, log: logging.Logger,
               main: bool = True) -> int:
    """Import and run the stage; one line for an expected error, the traceback otherwise.
    ``main``: this process writes (false for the ranks above 0 under torchrun)."""
    import torch

    from wsss.errors import WsssError
    from wsss.train.distributed import current_world

    # the job's threads are shared by its ranks under torchrun
    torch.set_num_threads(max(1, args.threads // current_world().size))
    t0 = time.time()
    log.info("stage %s: inputs %s outputs %s threads %d", args.stage, args.input, args.output,
             args.threads)
    outputs = _pairs(args.output, "--output")
    if main:
        _remove_stale_temps(outputs.values(), log)
    try:
        module = importlib.import_module(f"wsss.stages.{args.stage}")
        module.run(_pairs(args.input, "--input"), outputs, params, threads=args.threads)
    except WsssError as exc:
        log.error("error: %s", exc, extra={"log_only": True})
        if main:  # the other ranks stop on the same error
            print(f"wsss {args.stage}: error: {exc}", file=sys.__stderr__)
        return 2
    except Exception as exc:
        log.exception("stage %s failed after %.1f s", args.stage, time.time() - t0,
                      extra={"log_only": True})
        if args.log:  # the console gets one line, the log the traceback
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(f"wsss {args.stage}: unexpected {type(exc).__name__}: {first}; see {args.log} "
                  f"for the traceback", file=sys.__stderr__)
        return 1
    log.info("stage %s done in %.1f s", args.stage, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
