# The report: one summary table, two plots and overlay sheets, all in `snakemake --report`.

# Inputs only some configurations have: the IR labels (masks.source walk) and CoSA's single-stage
# scores (classifier.method cosa).
REPORT_OPTIONAL = {
    **(
        {
            "ir_metrics": f"{R}/metrics/ir_labels_train.csv",
            "ir_labels": f"{R}/ir_labels/train.h5",
        }
        if MASK_SOURCE == "walk"
        else {}
    ),
    **({"cosa_seg_metrics": f"{R}/metrics/cosa_seg.csv"} if METHOD == "cosa" else {}),
}


rule report:
    """Summary table (stage, variant, miou, split, method), mIoU plots, overlay sheets of fixed
    images and the warnings (classes without positive/negative images, images without ground
    truth)."""
    input:
        **REPORT_OPTIONAL,
        seeds_metrics=f"{R}/metrics/seeds.csv",
        masks_metrics=f"{R}/metrics/masks.csv",
        seg_metrics=f"{R}/metrics/segmentation.csv",
        split=f"{R}/data/train.csv",
        seg_split=f"{R}/data/{config['predict']['split']}.csv",
        classes=f"{R}/data/classes.csv",
        seeds=f"{R}/seeds/train.h5",
        masks=f"{R}/masks/train.h5",
        model=f"{R}/segmentation/model.pt",
    output:
        summary=report(
            f"{R}/report/summary.csv", caption="../report/summary.rst", category="Summary"
        ),
        stages_plot=report(
            f"{R}/report/miou_stages.png", caption="../report/miou_stages.rst", category="Summary"
        ),
        classes_plot=report(
            f"{R}/report/iou_classes.png", caption="../report/iou_classes.rst", category="Summary"
        ),
        warnings=report(
            f"{R}/report/warnings.txt", caption="../report/warnings.rst", category="Summary"
        ),
        overlays=report(
            directory(f"{R}/report/overlays"),
            patterns=["{image}.png"],
            caption="../report/overlays.rst",
            category="Overlays",
            labels={"image": "{image}"},
        ),
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    conda:
        ENV
    threads: job_threads("report")
    resources:
        **job_resources("report"),
    params:
        **stage_params(
            "report",
            {
                "report": config["report"],
                "predict": config["predict"],
                "classes": classes_params(),
                "device": config["device"],
                "max_side": config["dataset"]["max_side"],
                "method": METHOD,
                **({"cosa_split": config["cosa_seg"]["split"]} if METHOD == "cosa" else {}),
            },
        ),
        optional=named_inputs(REPORT_OPTIONAL),
    shell:
        "python -m wsss report --input seeds_metrics={input.seeds_metrics:q}"
        " --input masks_metrics={input.masks_metrics:q}"
        " --input seg_metrics={input.seg_metrics:q} --input split={input.split:q}"
        " --input seg_split={input.seg_split:q} --input classes={input.classes:q}"
        " --input seeds={input.seeds:q} {params.optional}"
        " --input masks={input.masks:q} --input model={input.model:q}"
        " --output summary={output.summary:q} --output stages_plot={output.stages_plot:q}"
        " --output classes_plot={output.classes_plot:q} --output overlays={output.overlays:q}"
        " --output warnings={output.warnings:q}"
        " --params {params.cfg:q} --options {params.opts:q} --threads {threads} --log {log:q}"
