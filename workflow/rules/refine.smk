# Refinement: with masks.source walk (default) IR labels -> IRN -> random walk -> pseudo masks;
# with masks.source cpl (CoSA-MS) the seeds' CAM pseudo labels are the masks (no IR labels, no
# IRN, no walk: make_cpl_masks writes masks/<split>.h5 in the same layout).


rule make_ir_labels:
    """Confident fg/bg labels from the seeds: dynamic thresholds + two label-CRF passes."""
    input:
        seeds=f"{R}/seeds/{{split}}.h5",
        cams=f"{R}/cams/{{split}}.h5",
        split=f"{R}/data/{{split}}.csv",
    output:
        labels=f"{R}/ir_labels/{{split}}.h5",
        metrics=f"{R}/metrics/ir_labels_{{split}}.csv",
    log:
        f"{R}/logs/make_ir_labels_{{split}}.log",
    benchmark:
        f"{R}/benchmarks/make_ir_labels_{{split}}.tsv"
    conda:
        ENV
    threads: job_threads("make_ir_labels")
    resources:
        **job_resources("make_ir_labels"),
    params:
        **stage_params(
            "make_ir_labels", {"ir_labels": config["ir_labels"], "classes": classes_params()}
        ),
    shell:
        "python -m wsss make_ir_labels --input seeds={input.seeds:q} --input cams={input.cams:q}"
        " --input split={input.split:q} --output labels={output.labels:q}"
        " --output metrics={output.metrics:q} --params {params.cfg:q} --options {params.opts:q}"
        " --threads {threads}"
        " --log {log:q}"


rule train_irn:
    """Train IRN's boundary branch on the IR labels; resumable from irn/_state/."""
    input:
        labels=f"{R}/ir_labels/train.h5",
        split=f"{R}/data/train.csv",
    output:
        model=f"{R}/irn/model.pt",
        metrics=f"{R}/irn/metrics.csv",
    log:
        f"{R}/logs/train_irn.log",
    benchmark:
        f"{R}/benchmarks/train_irn.tsv"
    conda:
        ENV
    threads: job_threads("train_irn")
    resources:
        **job_resources("train_irn"),
    params:
        **stage_params(
            "train_irn",
            {
                "irn": config["irn"],
                "classes": classes_params(),
                "device": config["device"],
                "seed": config["seed"],
            },
        ),
    shell:
        "python -m wsss train_irn --input labels={input.labels:q} --input split={input.split:q}"
        " --output model={output.model:q} --output metrics={output.metrics:q}"
        " --params {params.cfg:q} --options {params.opts:q} --threads {threads} --log {log:q}"


MAKE_PSEUDO_MASKS = {
    # masks.source and masks.cpl choose what the segmenter trains on, not how the walk runs
    "masks": {k: v for k, v in config["masks"].items() if k not in ("source", "cpl")},
    "classes": classes_params(),
    "device": config["device"],
    "max_side": config["dataset"]["max_side"],
}


if MASK_SOURCE == "walk":

    rule make_pseudo_masks:
        """Random walk of the seeds over the boundary map, mask rule, final label CRF, PNGs."""
        input:
            irn=f"{R}/irn/model.pt",
            seeds=f"{R}/seeds/{{split}}.h5",
            cams=f"{R}/cams/{{split}}.h5",
            ir_labels=f"{R}/ir_labels/{{split}}.h5",
            split=f"{R}/data/{{split}}.csv",
        output:
            masks=f"{R}/masks/{{split}}.h5",
            png=directory(f"{R}/masks/{{split}}"),
        log:
            f"{R}/logs/make_pseudo_masks_{{split}}.log",
        benchmark:
            f"{R}/benchmarks/make_pseudo_masks_{{split}}.tsv"
        conda:
            ENV
        threads: job_threads("make_pseudo_masks")
        resources:
            **job_resources("make_pseudo_masks"),
        params:
            **stage_params("make_pseudo_masks", MAKE_PSEUDO_MASKS),
        shell:
            "python -m wsss make_pseudo_masks --input irn={input.irn:q}"
            " --input seeds={input.seeds:q} --input cams={input.cams:q} --input ir_labels={input.ir_labels:q}"
            " --input split={input.split:q} --output masks={output.masks:q}"
            " --output png={output.png:q} --params {params.cfg:q} --options {params.opts:q}"
            " --threads {threads} --log {log:q}"

else:

    rule make_cpl_masks:
        """CoSA-MS: the fused seeds' CAM pseudo labels (CoSA Eq. 3) as masks, label CRF, PNGs."""
        input:
            cams=f"{R}/cams/{{split}}.h5",
            split=f"{R}/data/{{split}}.csv",
        output:
            masks=f"{R}/masks/{{split}}.h5",
            png=directory(f"{R}/masks/{{split}}"),
        log:
            f"{R}/logs/make_cpl_masks_{{split}}.log",
        benchmark:
            f"{R}/benchmarks/make_cpl_masks_{{split}}.tsv"
        conda:
            ENV
        threads: job_threads("make_cpl_masks")
        resources:
            **job_resources("make_cpl_masks"),
        params:
            **stage_params(
                "make_cpl_masks",
                {
                    "masks": {"cpl": config["masks"]["cpl"], "crf": config["masks"]["crf"]},
                    "fusion": config["fusion"],
                    "classes": classes_params(),
                },
            ),
        shell:
            "python -m wsss make_cpl_masks --input cams={input.cams:q}"
            " --input split={input.split:q} --output masks={output.masks:q}"
            " --output png={output.png:q} --params {params.cfg:q} --options {params.opts:q}"
            " --threads {threads} --log {log:q}"


rule eval_masks:
    """Pseudo-mask mIoU with and without the final CRF."""
    input:
        masks=f"{R}/masks/train.h5",
        split=f"{R}/data/train.csv",
    output:
        metrics=f"{R}/metrics/masks.csv",
    log:
        f"{R}/logs/eval_masks.log",
    benchmark:
        f"{R}/benchmarks/eval_masks.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("eval_masks"),
    params:
        **stage_params("eval_masks", {"classes": classes_params()}),
    shell:
        "python -m wsss eval_masks --input masks={input.masks:q} --input split={input.split:q}"
        " --output metrics={output.metrics:q} --params {params.cfg:q} --options {params.opts:q}"
        " --threads {threads}"
        " --log {log:q}"
