rule train_classifier:
    """Train the CAM classifier (cam | cobra | cosa); resumable from classifier/_state/."""
    input:
        train=f"{R}/data/train.csv",
    output:
        model=f"{R}/classifier/model.pt",
        metrics=f"{R}/classifier/metrics.csv",
    log:
        f"{R}/logs/train_classifier.log",
    benchmark:
        f"{R}/benchmarks/train_classifier.tsv"
    conda:
        ENV
    threads: job_threads("train_classifier")
    resources:
        **job_resources("train_classifier"),
    params:
        **stage_params(
            "train_classifier",
            {
                "classifier": method_section(config["classifier"]),
                "classes": classes_params(),
                "device": config["device"],
                "seed": config["seed"],
            },
        ),
    shell:
        "python -m wsss train_classifier --input train={input.train:q}"
        " --output model={output.model:q} --output metrics={output.metrics:q}"
        " --params {params.cfg:q} --options {params.opts:q} --threads {threads} --log {log:q}"
