# cluster.shards > 1: extract_cams, make_pseudo_masks and predict run as SHARDS jobs each (whole
# same-size batches, wsss/shards.py) and merge_shards writes the split's store in split order;
# the merged outputs equal one job's. With one shard none of this exists. make_cpl_masks
# (masks.source cpl) and predict_cosa run as one job each.
# shard_files is in common.smk.


if SHARDS > 1:

    use rule extract_cams as extract_cams_shard with:
        output:
            cams=f"{R}/cams/shards/{{split}}.{{shard}}.h5",
        log:
            f"{R}/logs/extract_cams_{{split}}.{{shard}}.log",
        benchmark:
            f"{R}/benchmarks/extract_cams_{{split}}.{{shard}}.tsv"
        params:
            **shard_params("extract_cams", EXTRACT_CAMS),

    if MASK_SOURCE == "walk":

        use rule make_pseudo_masks as make_pseudo_masks_shard with:
            output:
                masks=f"{R}/masks/shards/{{split}}.{{shard}}.h5",
                png=directory(f"{R}/masks/shards/{{split}}.{{shard}}"),
            log:
                f"{R}/logs/make_pseudo_masks_{{split}}.{{shard}}.log",
            benchmark:
                f"{R}/benchmarks/make_pseudo_masks_{{split}}.{{shard}}.tsv"
            params:
                **shard_params("make_pseudo_masks", MAKE_PSEUDO_MASKS),

    use rule predict as predict_shard with:
        output:
            predictions=f"{R}/predictions/shards/{{split}}.{{shard}}.h5",
            png=directory(f"{R}/predictions/shards/{{split}}.{{shard}}"),
        log:
            f"{R}/logs/predict_{{split}}.{{shard}}.log",
        benchmark:
            f"{R}/benchmarks/predict_{{split}}.{{shard}}.tsv"
        params:
            **shard_params("predict", PREDICT),

    rule merge_cams:
        """The CAM shards of a split into its one store."""
        input:
            shard=shard_files(f"{R}/cams/shards/{{split}}.{{shard}}.h5"),
            split=f"{R}/data/{{split}}.csv",
        output:
            store=f"{R}/cams/{{split}}.h5",
        log:
            f"{R}/logs/merge_cams_{{split}}.log",
        conda:
            ENV
        threads: 1
        resources:
            **job_resources("fuse_cams"),
        params:
            **stage_params("merge_shards", {"classes": classes_params()}),
            inputs=numbered_inputs("shard"),
        shell:
            "python -m wsss merge_shards {params.inputs} --input split={input.split:q}"
            " --output store={output.store:q} --params {params.cfg:q}"
            " --options {params.opts:q} --threads {threads} --log {log:q}"

    if MASK_SOURCE == "walk":  # make_cpl_masks runs as one job

        rule merge_masks:
            """The pseudo-mask shards of a split into its one store and PNG folder."""
            input:
                shard=shard_files(f"{R}/masks/shards/{{split}}.{{shard}}.h5"),
                png=shard_files(f"{R}/masks/shards/{{split}}.{{shard}}"),
                split=f"{R}/data/{{split}}.csv",
            output:
                store=f"{R}/masks/{{split}}.h5",
                png=directory(f"{R}/masks/{{split}}"),
            log:
                f"{R}/logs/merge_masks_{{split}}.log",
            conda:
                ENV
            threads: 1
            resources:
                **job_resources("eval_masks"),
            params:
                **stage_params("merge_shards", {"classes": classes_params()}),
                inputs=numbered_inputs("shard"),
                pngs=numbered_inputs("png"),
            shell:
                "python -m wsss merge_shards {params.inputs} {params.pngs}"
                " --input split={input.split:q} --output store={output.store:q}"
                " --output png={output.png:q} --params {params.cfg:q}"
                " --options {params.opts:q} --threads {threads} --log {log:q}"

    rule merge_predictions:
        """The prediction shards of a split into its one store and PNG folder."""
        input:
            shard=shard_files(f"{R}/predictions/shards/{{split}}.{{shard}}.h5"),
            png=shard_files(f"{R}/predictions/shards/{{split}}.{{shard}}"),
            split=f"{R}/data/{{split}}.csv",
        output:
            store=f"{R}/predictions/{{split}}.h5",
            png=directory(f"{R}/predictions/{{split}}"),
        log:
            f"{R}/logs/merge_predictions_{{split}}.log",
        conda:
            ENV
        threads: 1
        resources:
            **job_resources("eval_segmentation"),
        params:
            **stage_params("merge_shards", {"classes": classes_params()}),
            inputs=numbered_inputs("shard"),
            pngs=numbered_inputs("png"),
        shell:
            "python -m wsss merge_shards {params.inputs} {params.pngs}"
            " --input split={input.split:q} --output store={output.store:q}"
            " --output png={output.png:q} --params {params.cfg:q}"
            " --options {params.opts:q} --threads {threads} --log {log:q}"

    ruleorder: merge_cams > extract_cams
    ruleorder: merge_predictions > predict

    if MASK_SOURCE == "walk":

        ruleorder: merge_masks > make_pseudo_masks
