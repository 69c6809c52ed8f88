# Stage: train each model variant (config["models"]) on the crops; docs/training.md.
# last.pt is written next to the declared outputs but deliberately not declared: Snakemake
# deletes a job's outputs before running it, and last.pt is what a killed job resumes from.


rule train:
    input:
        crops="results/crops/crops.h5",
        table="results/crops/crops.csv",
        split="results/split/split.csv",
    output:
        metrics="results/models/{model}/metrics.csv",
        best="results/models/{model}/best.pt",
    log:
        "logs/train/{model}.log",
    benchmark:
        "benchmarks/train/{model}.tsv"
    wildcard_constraints:
        model=model_wildcard_pattern(),
    conda:
        "../envs/lungseg.yaml"
    threads: train_resource("threads")
    resources:
        mem_mb=train_resource("mem_mb"),
        runtime=train_resource("runtime"),
        gpu=train_resource("gpu"),
    params:
        settings=model_settings,
        code=stage_code("train"),
    script:
        "../workflow_scripts/train.py"


rule train_all:
    input:
        train_outputs(),
        volumes=volume_files,
