# Stage: whole-scan prediction (docs/predict.md). The chosen detector and crop model bundled for
# `lungseg predict`, every validation scan predicted from its DICOM files (what a user's own scan
# goes through), and the cascade scored against the reference nodules, radiomics included.


rule predictor:
    input:
        detection_table="results/detection.csv",
        evaluation_table="results/evaluation.csv",
        detector_checkpoints=detector_outputs("best.pt"),
        operating_points=detector_outputs("operating_point.json"),
        segmenter_checkpoints=[
            f"results/models/{m}/best.pt" for m in evaluated_models()
        ],
        # predict.ensemble_folds: every evaluated model's fold models (the choice is made in the
        # job); none by default
        fold_checkpoints=(
            [
                f"results/models/{m}/fold_{k}/best.pt"
                for m in evaluated_models()
                for k in cv_fold_list()
            ]
            if config["predict"]["ensemble_folds"]
            else []
        ),
    output:
        detector="results/predictor/detector.pt",
        segmenter="results/predictor/segmenter.pt",
        choice="results/predictor/choice.json",
    log:
        "logs/predictor.log",
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=stage_code("predictor"),
        settings=settings_of(PredictorSettings),
    script:
        "../workflow_scripts/predictor.py"


rule predict:
    input:
        files="results/index/files.csv",
        detector="results/predictor/detector.pt",
        segmenter="results/predictor/segmenter.pt",
        params_file=PredictSettings.radiomics_params_file(
            config["predict"]["radiomics_params"]
        ),
    output:
        prediction=directory("results/predictions/{series_uid}"),
    log:
        "logs/predict/{series_uid}.log",
    benchmark:
        "benchmarks/predict/{series_uid}.tsv"
    wildcard_constraints:
        series_uid=r"[0-9.]+",
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: predict_resource("threads")
    resources:
        mem_mb=predict_resource("mem_mb"),
        runtime=predict_resource("runtime"),
        gpu=predict_resource("gpu"),
    params:
        code=stage_code("predict"),
        series_uid="{series_uid}",
        settings=settings_of(PredictSettings),
    script:
        "../workflow_scripts/predict.py"


rule cascade:
    input:
        predictions=prediction_folders,
        nodules="results/nodules.csv",
        volumes=predicted_volumes,
        evaluations=evaluation_tables(),
        choice="results/predictor/choice.json",
        params_file=PredictSettings.radiomics_params_file(
            config["predict"]["radiomics_params"]
        ),
    output:
        cascade=report(
            "results/cascade.csv",
            caption="../report/cascade_table.rst",
            category="Prediction",
            subcategory="Cascade",
            labels={"table": "cascade.csv"},
        ),
        summary="results/cascade_summary.csv",
        reference_features="results/radiomics_reference.csv",
        agreement="results/radiomics_agreement.csv",
        agreement_classes="results/radiomics_agreement_classes.csv",
    log:
        "logs/cascade.log",
    benchmark:
        "benchmarks/cascade.tsv"
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        code=stage_code("cascade"),
        buckets=settings_of(BucketSettings),
        settings=settings_of(PredictSettings),
    script:
        "../workflow_scripts/cascade.py"


rule plot_cascade:
    input:
        cascade="results/cascade.csv",
        summary="results/cascade_summary.csv",
        reference_features="results/radiomics_reference.csv",
        agreement="results/radiomics_agreement.csv",
        agreement_classes="results/radiomics_agreement_classes.csv",
    output:
        cascade_figure=report(
            "results/plots/cascade.png",
            caption="../report/cascade.rst",
            category="Prediction",
            subcategory="Cascade",
            labels={"figure": "cascade by size"},
        ),
        agreement_figure=report(
            "results/plots/radiomics_agreement.png",
            caption="../report/radiomics_agreement.rst",
            category="Prediction",
            subcategory="Radiomics agreement",
            labels={"figure": "radiomics ICC"},
        ),
    log:
        "logs/plot_cascade.log",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=stage_code("plot_cascade"),
    script:
        "../workflow_scripts/plot_cascade.py"


rule predict_all:
    input:
        prediction_outputs(),
        volumes=volume_files,
