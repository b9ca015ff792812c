rule train_classifier:
    """Train the CAM classifier (cam | cobra); resumable from classifier/_state/."""
    input:
        train=f"{R}/data/train.csv",
        code=stage_sources("train_classifier"),
    output:
        model=f"{R}/classifier/model.pt",
        metrics=f"{R}/classifier/metrics.csv",
    params:
        cfg=as_params(
            {
                "classifier": config["classifier"],
                "classes": classes_params(),
                "device": config["device"],
                "seed": config["seed"],
            }
        ),
    log:
        f"{R}/logs/train_classifier.log",
    benchmark:
        f"{R}/benchmarks/train_classifier.tsv"
    threads: CORES
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=24 * 60,
    conda:
        ENV
    shell:
        "python -m wsss train_classifier --input train={input.train}"
        " --output model={output.model} --output metrics={output.metrics}"
        " --params {params.cfg:q} --threads {threads} --log {log}"
