# CoSA's single-stage result (classifier.method: cosa): the assignment network's own segmentation
# head on cosa_seg.split (multi-scale + flip, no image labels, each image at its own size), raw
# and after CoSA's test-time CRF, scored like the segmenter into metrics/cosa_seg.csv.


if METHOD == "cosa":
    PREDICT_COSA = {
        "cosa_seg": config["cosa_seg"],
        "classes": classes_params(),
        "device": config["device"],
        "max_side": config["dataset"]["max_side"],
    }

    rule predict_cosa:
        """The AN's segmentation head on a split (CoSA single stage), optional softmax CRF."""
        input:
            model=f"{R}/classifier/model.pt",
            split=f"{R}/data/{{split}}.csv",
        output:
            predictions=f"{R}/cosa_seg/{{split}}.h5",
            png=directory(f"{R}/cosa_seg/{{split}}"),
        log:
            f"{R}/logs/predict_cosa_{{split}}.log",
        benchmark:
            f"{R}/benchmarks/predict_cosa_{{split}}.tsv"
        conda:
            ENV
        threads: job_threads("predict_cosa")
        resources:
            **job_resources("predict_cosa"),
        params:
            **stage_params("predict_cosa", PREDICT_COSA),
        shell:
            "python -m wsss predict_cosa --input model={input.model:q}"
            " --input split={input.split:q} --output predictions={output.predictions:q}"
            " --output png={output.png:q} --params {params.cfg:q} --options {params.opts:q}"
            " --threads {threads} --log {log:q}"

    rule eval_cosa_seg:
        """mIoU of CoSA's single-stage prediction, raw and after the CRF (eval_segmentation)."""
        input:
            predictions=f"{R}/cosa_seg/{config['cosa_seg']['split']}.h5",
            split=f"{R}/data/{config['cosa_seg']['split']}.csv",
        output:
            metrics=f"{R}/metrics/cosa_seg.csv",
        log:
            f"{R}/logs/eval_cosa_seg.log",
        benchmark:
            f"{R}/benchmarks/eval_cosa_seg.tsv"
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
