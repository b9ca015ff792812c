# Final segmentation: train on the pseudo masks, predict (multi-scale + flip, softmax CRF), score.


rule train_segmentation:
    """DeepLabV3+ / LargeFOV on the pseudo masks; resumable from segmentation/_state/."""
    input:
        masks=f"{R}/masks/train.h5",
        split=f"{R}/data/train.csv",
        code=stage_sources("train_segmentation"),
    output:
        model=f"{R}/segmentation/model.pt",
        metrics=f"{R}/segmentation/metrics.csv",
    params:
        cfg=as_params(
            {
                "segmentation": config["segmentation"],
                "classes": classes_params(),
                "device": config["device"],
                "seed": config["seed"],
            }
        ),
    log:
        f"{R}/logs/train_segmentation.log",
    benchmark:
        f"{R}/benchmarks/train_segmentation.tsv"
    threads: CORES
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=24 * 60,
    conda:
        ENV
    shell:
        "python -m wsss train_segmentation --input masks={input.masks} --input split={input.split}"
        " --output model={output.model} --output metrics={output.metrics}"
        " --params {params.cfg:q} --threads {threads} --log {log}"


rule predict:
    """Multi-scale + flip inference of a split (no image labels used), optional softmax CRF."""
    input:
        model=f"{R}/segmentation/model.pt",
        split=f"{R}/data/{{split}}.csv",
        code=stage_sources("predict"),
    output:
        predictions=f"{R}/predictions/{{split}}.h5",
        png=directory(f"{R}/predictions/{{split}}"),
    params:
        cfg=as_params(
            {
                "predict": config["predict"],
                "classes": classes_params(),
                "device": config["device"],
                "max_side": config["dataset"]["max_side"],
            }
        ),
    log:
        f"{R}/logs/predict_{{split}}.log",
    benchmark:
        f"{R}/benchmarks/predict_{{split}}.tsv"
    threads: CORES
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=4 * 60,
    conda:
        ENV
    shell:
        "python -m wsss predict --input model={input.model} --input split={input.split}"
        " --output predictions={output.predictions} --output png={output.png}"
        " --params {params.cfg:q} --threads {threads} --log {log}"


rule eval_segmentation:
    """Segmentation mIoU of the predicted split, raw and after the CRF."""
    input:
        predictions=f"{R}/predictions/{config['predict']['split']}.h5",
        split=f"{R}/data/{config['predict']['split']}.csv",
        code=stage_sources("eval_segmentation"),
    output:
        metrics=f"{R}/metrics/segmentation.csv",
    params:
        cfg=as_params({"classes": classes_params()}),
    log:
        f"{R}/logs/eval_segmentation.log",
    benchmark:
        f"{R}/benchmarks/eval_segmentation.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    shell:
        "python -m wsss eval_segmentation --input predictions={input.predictions}"
        " --input split={input.split} --output metrics={output.metrics}"
        " --params {params.cfg:q} --threads {threads} --log {log}"
