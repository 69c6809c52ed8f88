# Stage: k-fold cross-validation of the model variants (split.folds >= 2; docs/training.md).
# Each fold's split has that fold as validation; the same trainer and evaluation as the single
# split run on it, one job per model and fold, then one summary over all folds (results/cv/).


rule fold_split:
    input:
        split="results/split/split.csv",
    output:
        fold_split_csv="results/cv/fold_{fold}/split.csv",
    log:
        "logs/cv/fold_split_{fold}.log",
    wildcard_constraints:
        fold=r"\d+",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        fold=fold_of,
        code=stage_code("fold_split"),
    script:
        "../workflow_scripts/fold_split.py"


rule train_fold:
    input:
        crops="results/crops/crops.h5",
        table="results/crops/crops.csv",
        split="results/cv/fold_{fold}/split.csv",
    output:
        metrics="results/models/{model}/fold_{fold}/metrics.csv",
        best="results/models/{model}/fold_{fold}/best.pt",
    log:
        "logs/train/{model}_fold_{fold}.log",
    benchmark:
        "benchmarks/train/{model}_fold_{fold}.tsv"
    wildcard_constraints:
        model=model_wildcard_pattern(),
        fold=r"\d+",
    conda:
        "../envs/lungseg.yaml"
    threads: train_resource("threads")
    resources:
        mem_mb=train_resource("mem_mb"),
        runtime=train_resource("runtime"),
        gpu=train_resource("gpu"),
    params:
        settings=model_settings,
        code=stage_code("train_fold"),
    script:
        "../workflow_scripts/train_fold.py"


rule evaluate_fold:
    input:
        checkpoint="results/models/{model}/fold_{fold}/best.pt",
        crops="results/crops/crops.h5",
        crops_table="results/crops/crops.csv",
        split="results/cv/fold_{fold}/split.csv",
    output:
        evaluation="results/models/{model}/fold_{fold}/evaluation.csv",
        predictions="results/models/{model}/fold_{fold}/predictions.h5",
    log:
        "logs/evaluate/{model}_fold_{fold}.log",
    wildcard_constraints:
        model=evaluation_model_pattern(),
        fold=r"\d+",
    conda:
        "../envs/lungseg.yaml"
    threads: config["evaluation"]["resources"]["threads"]
    resources:
        mem_mb=config["evaluation"]["resources"]["mem_mb"],
        runtime=config["evaluation"]["resources"]["runtime"],
        gpu=config["evaluation"]["resources"]["gpu"],
    params:
        settings=evaluation_settings(),
        code=stage_code("evaluate_fold"),
    script:
        "../workflow_scripts/evaluate_fold.py"


rule cv_summary:
    input:
        evaluations=cv_files("evaluation.csv"),
        metrics=cv_files("metrics.csv"),
    output:
        nodules="results/cv/nodules.csv",
        curves="results/cv/curves.csv",
        overfitting="results/cv/overfitting.csv",
        comparison=report(
            "results/cv/comparison.csv",
            caption="../report/cv_comparison_table.rst",
            category="Cross-validation",
            subcategory="Comparison",
            labels={"table": "comparison.csv"},
        ),
    log:
        "logs/cv/cv_summary.log",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        models=cv_models(),
        folds=cv_fold_numbers(),
        settings=settings_of(CrossValidationSettings),
        buckets=settings_of(BucketSettings),
        code=stage_code("cv_summary"),
    script:
        "../workflow_scripts/cv_summary.py"


rule plot_cv:
    input:
        curves="results/cv/curves.csv",
        comparison="results/cv/comparison.csv",
        overfitting="results/cv/overfitting.csv",
    output:
        curves_figure=report(
            "results/plots/cv_curves.png",
            caption="../report/cv_curves.rst",
            category="Cross-validation",
            subcategory="Curves",
            labels={"figure": "Dice per epoch over folds"},
        ),
        comparison_figure=report(
            "results/plots/cv_comparison.png",
            caption="../report/cv_comparison.rst",
            category="Cross-validation",
            subcategory="Comparison",
            labels={"figure": "Dice difference vs baseline"},
        ),
    log:
        "logs/cv/plot_cv.log",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=stage_code("plot_cv"),
    script:
        "../workflow_scripts/plot_cv.py"


rule cv:
    input:
        cv_outputs(),
