# Shared setup: validated config, the results root, the python that runs stages, helpers.
import os
import shlex
import sys

sys.path.insert(0, workflow.basedir)

from wsss.checks import check_config
from wsss.config import method_section, repeated_configfile_flags, validate_config
from wsss.data.dataset_classes import classes_for
from wsss.codehash import code_hash
from wsss.devices import GPU_STAGES, TRAINING_STAGES
from wsss.hashing import Untracked, as_params, only_execution, without_execution
from wsss.errors import ConfigError

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
METHOD = config["classifier"]["method"]
# what trains the segmenter: walk (IR labels, IRN, random walk) or cpl (CoSA-MS: the seeds' CAM
# pseudo labels; no IR labels, no IRN in the DAG)
MASK_SOURCE = config["masks"]["source"]


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
# Rules whose stage runs a network ask for a GPU (resources gpu=1; SLURM --gpus=1); the training
# ones for cluster.gpus_per_job (torchrun processes). One list with the stages: wsss.devices.
GPU_RULES = GPU_STAGES
TRAINING_RULES = TRAINING_STAGES


def job_resources(name):
    """A rule's resources: its runtime (minutes) and mem_mb from the config's ``resources``
    section (sized by the presets), gpu=1 for the GPU rules, and the SLURM partition from
    ``cluster.gpu_partition`` / ``cluster.cpu_partition`` when set. Resources never rerun a job."""
    out = dict(config["resources"][name])
    partition = config["cluster"]["gpu_partition" if name in GPU_RULES else "cpu_partition"]
    if partition:
        out["slurm_partition"] = partition
    if name in GPU_RULES:
        out["gpu"] = config["cluster"]["gpus_per_job"] if name in TRAINING_RULES else 1
    out["mem_mb"] = _memory_check(name, out["mem_mb"], partition)
    return out


def _memory_check(name, mem_mb, partition):
    """On a cluster executor, refuse a job no node could ever run (it would pend forever)."""

    def mem(wildcards):
        if workflow.local_exec:
            return mem_mb
        from wsss.cluster import check_memory

        try:
            return check_memory(f"resources.{name}.mem_mb", mem_mb, partition)
        except ConfigError as exc:
            raise WorkflowError(str(exc)) from None

    return mem


def job_threads(name):
    """Threads of a multi-threaded rule: --cores on a workstation (and inside a cluster job), on
    a cluster executor ``cluster.threads`` capped at what a node of its partition offers (a job
    asking for more CPUs than any node has would stay pending forever)."""

    def threads(wildcards):
        if workflow.local_exec:
            return CORES
        from wsss.cluster import threads_for

        partition = config["cluster"]["gpu_partition" if name in GPU_RULES else "cpu_partition"]
        return threads_for(config["cluster"]["threads"], partition)

    return threads


def stage_params(stage, sections):
    """A stage rule's params: ``cfg``, its config sections without the execution-only keys, and
    ``code``, the hash of the code its run() reaches (wsss.codehash), both compared by Snakemake,
    so a changed setting or a changed line of reached code reruns the stage and its descendants;
    and ``opts``, the execution-only keys (num_workers, save_every_steps, and for a training
    stage the processes of cluster.gpus_per_job), which Snakemake does not compare: changing
    them reruns nothing."""
    opts = only_execution(sections)
    if stage in TRAINING_RULES:
        opts["processes"] = config["cluster"]["gpus_per_job"]
    return {
        "cfg": as_params(without_execution(sections)),
        "code": code_hash(stage),
        "opts": Untracked(as_params(opts)),
    }


SHARDS = config["cluster"]["shards"]


def shard_files(pattern):
    """The SHARDS files of ``pattern`` (with {split} and {shard}) for one split."""
    return lambda wildcards: [pattern.format(split=wildcards.split, shard=i) for i in range(SHARDS)]


def shard_params(stage, sections):
    """stage_params for shard ``{shard}`` of SHARDS: the shard goes to the stage with the
    execution-only options (untracked: the merged result equals one job's)."""

    def opts(wildcards):
        return Untracked(
            as_params({**only_execution(sections), "shard": [int(wildcards.shard), SHARDS]})
        )

    return {**stage_params(stage, sections), "opts": opts}


def numbered_inputs(name):
    """``--input <name>0=... --input <name>1=...`` for a list input of a merge rule."""

    def args(wildcards, input):
        return " ".join(
            f"--input {name}{i}={shlex.quote(str(p))}" for i, p in enumerate(input[name])
        )

    return args


def named_inputs(names):
    """``--input <name>=...`` for each of ``names`` (inputs only some configurations have)."""

    def args(wildcards, input):
        return " ".join(f"--input {k}={shlex.quote(str(input[k]))}" for k in names)

    return args


def classes_params():
    """Class list of the configured data set, passed to every stage that needs it."""
    return classes_for(config["dataset"])


wildcard_constraints:
    split="[A-Za-z0-9_]+",
    shard="[0-9]+",
