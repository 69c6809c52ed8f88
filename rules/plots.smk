# Figures: Dice and loss curves per model (rerun only when its metrics.csv changes), validation
# Dice of all models, validation examples per model; all in the Snakemake report.


rule plots:
    input:
        metrics="results/models/{model}/metrics.csv",
    output:
        dice=report(
            "results/plots/dice_{model}.png",
            caption="../report/dice_curve.rst",
            category="Training curves",
            subcategory="Dice",
            labels={"model": "{model}", "figure": "Dice per epoch"},
        ),
        loss=report(
            "results/plots/loss_{model}.png",
            caption="../report/loss_curve.rst",
            category="Training curves",
            subcategory="Loss",
            labels={"model": "{model}", "figure": "loss per epoch"},
        ),
    log:
        "logs/plots/{model}.log",
    wildcard_constraints:
        model=evaluation_model_pattern(),
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        model=model_of,
        code=stage_code("plots"),
    script:
        "../workflow_scripts/plots.py"


rule plot_examples:
    input:
        predictions="results/models/{model}/predictions.h5",
        evaluation="results/models/{model}/evaluation.csv",
        crops="results/crops/crops.h5",
        crops_table="results/crops/crops.csv",
    output:
        figure=report(
            "results/plots/examples_{model}.png",
            caption="../report/examples.rst",
            category="Validation examples",
            labels={"model": "{model}", "figure": "validation examples"},
        ),
    log:
        "logs/plot_examples/{model}.log",
    wildcard_constraints:
        model=evaluation_model_pattern(),
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        model=model_of,
        settings=settings_of(ExamplesSettings),
        code=stage_code("plot_examples"),
    script:
        "../workflow_scripts/plot_examples.py"


rule plot_comparison:
    input:
        metrics=model_metrics_tables(),
    output:
        figure=report(
            "results/plots/dice_comparison.png",
            caption="../report/dice_comparison.rst",
            category="Training curves",
            subcategory="All models",
            labels={"model": "all", "figure": "validation Dice"},
        ),
    log:
        "logs/plot_comparison.log",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        models=evaluated_models(),
        code=stage_code("plot_comparison"),
    script:
        "../workflow_scripts/plot_comparison.py"


rule plots_all:
    input:
        plot_outputs(),
        volumes=volume_files,
