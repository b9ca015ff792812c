rule prepare_data:
    """Generate (demo) or index (voc12, folder) the data set and validate every file."""
    input:
        code=stage_sources("prepare_data"),
    output:
        train=f"{R}/data/train.csv",
        val=f"{R}/data/val.csv",
        classes=f"{R}/data/classes.csv",
    params:
        # max_side only changes how the inference stages see an image: not a data setting
        cfg=as_params({k: v for k, v in config["dataset"].items() if k != "max_side"}),
    log:
        f"{R}/logs/prepare_data.log",
    benchmark:
        f"{R}/benchmarks/prepare_data.tsv"
    threads: CORES
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m wsss prepare_data --output train={output.train} --output val={output.val}"
        " --output classes={output.classes}"
        " --params {params.cfg:q} --threads {threads} --log {log}"
