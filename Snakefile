# wsss: weakly supervised semantic segmentation, one artifact per stage under results/<run>/.
#
#   snakemake --cores all                      # the demo (config.yaml), end to end
#   snakemake --cores all --configfile workflow/presets/voc12-cobra.yaml
#   snakemake --cores all --configfile workflow/presets/voc12-cobra.yaml my-site.yaml
#   snakemake --cores all -R fuse_cams         # rerun one stage (and what depends on it)
#
# config.yaml (the demo) is read only when no --configfile is given: a preset is merged over the
# schema defaults (the papers' settings) alone, so no demo value leaks into a paper run. Several
# files stack in ONE flag, later ones winning (Snakemake keeps only the last of repeated flags).
# The config is validated against workflow/schemas/config.schema.yaml at parse time, with
# defaults filled in, and checked against the models it names (wsss.checks); each rule passes
# its own config section through `params:` so that a changed setting reruns that stage and its
# descendants only.


if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classifier.smk"
include: "workflow/rules/cams.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/cosa.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/shards.smk"


report: "workflow/report/workflow.rst"


# The whole DAG: seeds -> IR labels -> IRN -> masks -> segmentation -> report; with
# masks.source cpl the masks are the seeds' CAM pseudo labels (no IR labels, no IRN); with
# classifier.method cosa the report adds CoSA's own segmentation head (metrics/cosa_seg.csv).
rule all:
    default_target: True
    input:
        f"{R}/report/summary.csv",


rule masks:
    """Stop after the pseudo masks: snakemake --cores all masks"""
    input:
        f"{R}/metrics/seeds.csv",
        f"{R}/metrics/masks.csv",
