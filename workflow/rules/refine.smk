rule make_ir_labels:
    """Confident fg/bg labels from the seeds: dynamic thresholds + two label-CRF passes."""
    input:
        seeds=f"{R}/seeds/{{split}}.h5",
        cams=f"{R}/cams/{{split}}.h5",
        split=f"{R}/data/{{split}}.csv",
        code=stage_sources("make_ir_labels"),
    output:
        labels=f"{R}/ir_labels/{{split}}.h5",
        metrics=f"{R}/metrics/ir_labels_{{split}}.csv",
    params:
        cfg=as_params({"ir_labels": config["ir_labels"], "classes": classes_params()}),
    log:
        f"{R}/logs/make_ir_labels_{{split}}.log",
    benchmark:
        f"{R}/benchmarks/make_ir_labels_{{split}}.tsv"
    threads: CORES
    resources:
        mem_mb=4000,
        runtime=4 * 60,
    conda:
        ENV
    shell:
        "python -m wsss make_ir_labels --input seeds={input.seeds} --input cams={input.cams}"
        " --input split={input.split} --output labels={output.labels}"
        " --output metrics={output.metrics} --params {params.cfg:q} --threads {threads}"
        " --log {log}"


rule train_irn:
    """Train IRN's boundary branch on the IR labels; resumable from irn/_state/."""
    input:
        labels=f"{R}/ir_labels/train.h5",
        split=f"{R}/data/train.csv",
        code=stage_sources("train_irn"),
    output:
        model=f"{R}/irn/model.pt",
        metrics=f"{R}/irn/metrics.csv",
    params:
        cfg=as_params(
            {
                "irn": config["irn"],
                "classes": classes_params(),
                "device": config["device"],
                "seed": config["seed"],
            }
        ),
    log:
        f"{R}/logs/train_irn.log",
    benchmark:
        f"{R}/benchmarks/train_irn.tsv"
    threads: CORES
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=12 * 60,
    conda:
        ENV
    shell:
        "python -m wsss train_irn --input labels={input.labels} --input split={input.split}"
        " --output model={output.model} --output metrics={output.metrics}"
        " --params {params.cfg:q} --threads {threads} --log {log}"


rule make_pseudo_masks:
    """Random walk of the seeds over the boundary map, mask rule, final label CRF, PNGs."""
    input:
        irn=f"{R}/irn/model.pt",
        seeds=f"{R}/seeds/{{split}}.h5",
        cams=f"{R}/cams/{{split}}.h5",
        ir_labels=f"{R}/ir_labels/{{split}}.h5",
        split=f"{R}/data/{{split}}.csv",
        code=stage_sources("make_pseudo_masks"),
    output:
        masks=f"{R}/masks/{{split}}.h5",
        png=directory(f"{R}/masks/{{split}}"),
    params:
        cfg=as_params(
            {
                "masks": config["masks"],
                "classes": classes_params(),
                "device": config["device"],
                "max_side": config["dataset"]["max_side"],
            }
        ),
    log:
        f"{R}/logs/make_pseudo_masks_{{split}}.log",
    benchmark:
        f"{R}/benchmarks/make_pseudo_masks_{{split}}.tsv"
    threads: CORES
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=6 * 60,
    conda:
        ENV
    shell:
        "python -m wsss make_pseudo_masks --input irn={input.irn} --input seeds={input.seeds}"
        " --input cams={input.cams} --input ir_labels={input.ir_labels}"
        " --input split={input.split} --output masks={output.masks}"
        " --output png={output.png} --params {params.cfg:q} --threads {threads} --log {log}"


rule eval_masks:
    """Pseudo-mask mIoU with and without the final CRF."""
    input:
        masks=f"{R}/masks/train.h5",
        split=f"{R}/data/train.csv",
        code=stage_sources("eval_masks"),
    output:
        metrics=f"{R}/metrics/masks.csv",
    params:
        cfg=as_params({"classes": classes_params()}),
    log:
        f"{R}/logs/eval_masks.log",
    benchmark:
        f"{R}/benchmarks/eval_masks.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m wsss eval_masks --input masks={input.masks} --input split={input.split}"
        " --output metrics={output.metrics} --params {params.cfg:q} --threads {threads}"
        " --log {log}"
