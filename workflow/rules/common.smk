# Shared setup: validated config, the results root, the python that runs stages, helpers.
import sys

sys.path.insert(0, workflow.basedir)

from wsss.config import as_params, validate_config
from wsss.errors import ConfigError
from wsss.workflow import stage_sources

try:
    _validated = validate_config(config)
except ConfigError as _exc:
    raise WorkflowError(str(_exc)) from None
config.clear()
config.update(_validated)

R = f"{config['results']}/{config['run']}"
# The interpreter running Snakemake runs the stages too (a venv needs no activation);
# with --sdm conda the environment's own python is used.
PY = "python" if "conda" in str(workflow.deployment_settings.deployment_method) else sys.executable
ENV = f"{workflow.basedir}/envs/wsss.yaml"
CAM_SPLITS = ["train"]


def stage(name):
    """Shell command prefix running one wsss stage."""
    return f"{PY} -m wsss {name}"


def classes_params():
    """Class list of the configured data set, passed to every stage that needs it."""
    from wsss.data.dataset_classes import classes_for

    return classes_for(config["dataset"])


wildcard_constraints:
    split="[A-Za-z0-9_]+",
