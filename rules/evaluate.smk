# Evaluation: each model's best checkpoint on the validation crops (per-nodule Dice, IoU, HD95,
# surface Dice in mm), then one summary table of all models by nodule size (docs/evaluation.md).


rule evaluate:
    input:
        checkpoint="results/models/{model}/best.pt",
        crops="results/crops/crops.h5",
        crops_table="results/crops/crops.csv",
        split="results/split/split.csv",
    output:
        evaluation=report(
            "results/models/{model}/evaluation.csv",
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="Per nodule",
            labels={"model": "{model}", "table": "per-nodule metrics"},
        ),
        predictions="results/models/{model}/predictions.h5",
    log:
        "logs/evaluate/{model}.log",
    benchmark:
        "benchmarks/evaluate/{model}.tsv"
    wildcard_constraints:
        model=evaluation_model_pattern(),
    conda:
        "../envs/lungseg.yaml"
    threads: config["evaluation"]["resources"]["threads"]
    resources:
        mem_mb=config["evaluation"]["resources"]["mem_mb"],
        runtime=config["evaluation"]["resources"]["runtime"],
        gpu=config["evaluation"]["resources"]["gpu"],
    params:
        settings=evaluation_settings(),
        code=stage_code("evaluate"),
    script:
        "../workflow_scripts/evaluate.py"


rule evaluate_summary:
    input:
        evaluations=evaluation_tables(),
    output:
        summary=report(
            "results/evaluation.csv",
            caption="../report/evaluation_summary.rst",
            category="Evaluation",
            subcategory="Summary",
            labels={"table": "summary of all models"},
        ),
    log:
        "logs/evaluate_summary.log",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        models=evaluated_models(),
        settings=settings_of(BucketSettings),
        code=stage_code("evaluate_summary"),
    script:
        "../workflow_scripts/evaluate_summary.py"
