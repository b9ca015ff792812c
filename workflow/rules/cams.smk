EXTRACT_CAMS = {
    "cams": config["cams"],
    "classes": classes_params(),
    "method": config["classifier"]["method"],
    "device": config["device"],
    "max_side": config["dataset"]["max_side"],
}


rule extract_cams:
    """Multi-scale + flip CAMs (and attention) of a split into one HDF5 file."""
    input:
        model=f"{R}/classifier/model.pt",
        split=f"{R}/data/{{split}}.csv",
    output:
        cams=f"{R}/cams/{{split}}.h5",
    log:
        f"{R}/logs/extract_cams_{{split}}.log",
    benchmark:
        f"{R}/benchmarks/extract_cams_{{split}}.tsv"
    conda:
        ENV
    threads: job_threads("extract_cams")
    resources:
        **job_resources("extract_cams"),
    params:
        **stage_params("extract_cams", EXTRACT_CAMS),
    shell:
        "python -m wsss extract_cams --input model={input.model:q} --input split={input.split:q}"
        " --output cams={output.cams:q} --params {params.cfg:q} --options {params.opts:q}"
        " --threads {threads} --log {log:q}"


rule fuse_cams:
    """Fuse CNN and ViT maps into seeds (fusion: fuse | cnn | tran | avg | max)."""
    input:
        cams=f"{R}/cams/{{split}}.h5",
    output:
        seeds=f"{R}/seeds/{{split}}.h5",
    log:
        f"{R}/logs/fuse_cams_{{split}}.log",
    benchmark:
        f"{R}/benchmarks/fuse_cams_{{split}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("fuse_cams"),
    params:
        **stage_params("fuse_cams", {"fusion": config["fusion"], "classes": classes_params()}),
    shell:
        "python -m wsss fuse_cams --input cams={input.cams:q} --output seeds={output.seeds:q}"
        " --params {params.cfg:q} --options {params.opts:q} --threads {threads} --log {log:q}"


rule eval_seeds:
    """Seed mIoU for every fusion variant: threshold sweep, CoBra's attention rule and, for CoSA
    or masks.source cpl, the CAM pseudo labels (rule cpl, CoSA Eq. 3)."""
    input:
        cams=f"{R}/cams/train.h5",
        seeds=f"{R}/seeds/train.h5",
        split=f"{R}/data/train.csv",
    output:
        metrics=f"{R}/metrics/seeds.csv",
    log:
        f"{R}/logs/eval_seeds.log",
    benchmark:
        f"{R}/benchmarks/eval_seeds.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("eval_seeds"),
    params:
        **stage_params(
            "eval_seeds",
            {
                "seeds": config["seeds"],
                "attention": config["ir_labels"]["attention"],
                "classes": classes_params(),
                # the CPL row (CoSA Eq. 3): for CoSA, and for the masks it makes (cpl)
                **(
                    {"cpl": config["masks"]["cpl"]}
                    if METHOD == "cosa" or MASK_SOURCE == "cpl"
                    else {}
                ),
            },
        ),
    shell:
        "python -m wsss eval_seeds --input cams={input.cams:q} --input seeds={input.seeds:q}"
        " --input split={input.split:q} --output metrics={output.metrics:q}"
        " --params {params.cfg:q} --options {params.opts:q} --threads {threads} --log {log:q}"
