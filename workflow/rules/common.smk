# Shared setup: validated config, the results root, the python that runs stages, helpers.
import os
import sys

sys.path.insert(0, workflow.basedir)

from wsss.checks import check_config
from wsss.config import repeated_configfile_flags, validate_config
from wsss.data.dataset_classes import classes_for
from wsss.hashing import as_params
from wsss.errors import ConfigError
from wsss.workflow import stage_sources

if repeated_configfile_flags(sys.argv):
    raise WorkflowError(
        "--configfile given more than once: Snakemake keeps only the last one. List every file "
        "after ONE flag, later files winning: --configfile workflow/presets/voc12-cobra.yaml "
        "my-site.yaml"
    )
try:
    _validated = validate_config(config)
    # Consistency and the networks every stage will build (cached per setting in .snakemake/).
    check_config(_validated, len(classes_for(_validated["dataset"])), ".snakemake/wsss-checks")
except ConfigError as _exc:
    raise WorkflowError(str(_exc)) from None
config.clear()
config.update(_validated)

R = f"{config['results']}/{config['run']}"
# Jobs run `python`: the interpreter running Snakemake (so a venv needs no activation), or with
# --sdm conda the environment's own python, which conda's activation puts first on PATH.
envvars:
    "PATH",


_search_path = os.environ["PATH"]
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + _search_path
ENV = f"{workflow.basedir}/envs/wsss.yaml"
CAM_SPLITS = ["train"]


def _total_cores():
    """This invocation's --cores; where none is given (--report, --lint, a cluster executor)
    the machine's core count (the SLURM profile sets the heavy rules' threads itself)."""
    try:
        return workflow.cores
    except WorkflowError:
        return os.cpu_count() or 1


CORES = _total_cores()


def classes_params():
    """Class list of the configured data set, passed to every stage that needs it."""
    return classes_for(config["dataset"])


wildcard_constraints:
    split="[A-Za-z0-9_]+",
