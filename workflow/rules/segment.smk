# Final segmentation: train on the pseudo masks, predict (multi-scale + flip, softmax CRF), score.


rule train_segmentation:
    """DeepLabV3+ / LargeFOV on the pseudo masks; resumable from segmentation/_state/."""
    input:
        masks=f"{R}/masks/train.h5",
        split=f"{R}/data/train.csv",
    output:
        model=f"{R}/segmentation/model.pt",
        metrics=f"{R}/segmentation/metrics.csv",
    log:
        f"{R}/logs/train_segmentation.log",
    benchmark:
        f"{R}/benchmarks/train_segmentation.tsv"
    conda:
        ENV
    threads: job_threads("train_segmentation")
    resources:
        **job_resources("train_segmentation"),
    params:
        **stage_params(
            "train_segmentation",
            {
                "segmentation": config["segmentation"],
                "classes": classes_params(),
                "device": config["device"],
                "seed": config["seed"],
            },
        ),
    shell:
        "python -m wsss train_segmentation --input masks={input.masks:q}"
        " --input split={input.split:q}"
        " --output model={output.model:q} --output metrics={output.metrics:q}"
        " --params {params.cfg:q} --options {params.opts:q} --threads {threads} --log {log:q}"


PREDICT = {
    "predict": config["predict"],
    "classes": classes_params(),
    "device": config["device"],
    "max_side": config["dataset"]["max_side"],
}


rule predict:
    """Multi-scale + flip inference of a split (no image labels used), optional softmax CRF."""
    input:
        model=f"{R}/segmentation/model.pt",
        split=f"{R}/data/{{split}}.csv",
    output:
        predictions=f"{R}/predictions/{{split}}.h5",
        png=directory(f"{R}/predictions/{{split}}"),
    log:
        f"{R}/logs/predict_{{split}}.log",
    benchmark:
        f"{R}/benchmarks/predict_{{split}}.tsv"
    conda:
        ENV
    threads: job_threads("predict")
    resources:
        **job_resources("predict"),
    params:
        **stage_params("predict", PREDICT),
    shell:
        "python -m wsss predict --input model={input.model:q} --input split={input.split:q}"
        " --output predictions={output.predictions:q} --output png={output.png:q}"
        " --params {params.cfg:q} --options {params.opts:q} --threads {threads} --log {log:q}"


rule eval_segmentation:
    """Segmentation mIoU of the predicted split, raw and after the CRF."""
    input:
        predictions=f"{R}/predictions/{config['predict']['split']}.h5",
        split=f"{R}/data/{config['predict']['split']}.csv",
    output:
        metrics=f"{R}/metrics/segmentation.csv",
    log:
        f"{R}/logs/eval_segmentation.log",
    benchmark:
        f"{R}/benchmarks/eval_segmentation.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **job_resources("eval_segmentation"),
    params:
        **stage_params("eval_segmentation", {"classes": classes_params()}),
    shell:
        "python -m wsss eval_segmentation --input predictions={input.predictions:q}"
        " --input split={input.split:q} --output metrics={output.metrics:q}"
        " --params {params.cfg:q} --options {params.opts:q} --threads {threads} --log {log:q}"
