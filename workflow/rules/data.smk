rule prepare_data:
    """Generate (demo) or index (voc12, folder) the data set and validate every file."""
    output:
        train=f"{R}/data/train.csv",
        val=f"{R}/data/val.csv",
        classes=f"{R}/data/classes.csv",
    log:
        f"{R}/logs/prepare_data.log",
    benchmark:
        f"{R}/benchmarks/prepare_data.tsv"
    conda:
        ENV
    threads: job_threads("prepare_data")
    resources:
        **job_resources("prepare_data"),
    params:
        # max_side only changes how the inference stages see an image: not a data setting
        **stage_params(
            "prepare_data", {k: v for k, v in config["dataset"].items() if k != "max_side"}
        ),
    shell:
        "python -m wsss prepare_data --output train={output.train:q} --output val={output.val:q}"
        " --output classes={output.classes:q}"
        " --params {params.cfg:q} --options {params.opts:q} --threads {threads} --log {log:q}"
