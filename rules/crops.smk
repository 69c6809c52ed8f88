# Stage: tumour-centred crops of the training nodules and the patient-level split
# (docs/crops_and_split.md). The split reads only results/nodules.csv, so changing the crops
# (size, spacing) reruns crops and training but neither conversion nor the split.


rule crops:
    input:
        nodules="results/nodules.csv",
        volumes=volume_files,
    output:
        crops="results/crops/crops.h5",
        table="results/crops/crops.csv",
    log:
        "logs/crops.log",
    benchmark:
        "benchmarks/crops.tsv"
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        settings=settings_of(CropSettings),
        code=stage_code("crops"),
    script:
        "../workflow_scripts/crops.py"


checkpoint split:
    input:
        nodules="results/nodules.csv",
        conversion="results/index/conversion.csv",
    output:
        split="results/split/split.csv",
        patients="results/split/patients.csv",
    log:
        "logs/split.log",
    benchmark:
        "benchmarks/split.tsv"
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        settings=settings_of(SplitSettings),
        code=stage_code("split"),
    script:
        "../workflow_scripts/split.py"


rule crops_overview:
    input:
        crops="results/crops/crops.h5",
        table="results/crops/crops.csv",
        split="results/split/split.csv",
    output:
        figure=report(
            "results/plots/crops_overview.png",
            caption="../report/crops_overview.rst",
            category="Data",
            labels={"figure": "crops overview"},
        ),
    log:
        "logs/crops_overview.log",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        settings=settings_of(CropsOverviewSettings),
        code=stage_code("crops_overview"),
    script:
        "../workflow_scripts/crops_overview.py"


# Named target: the crops, their overview and the split, and every volume they read (a deleted
# volume is converted again, then the crops are rebuilt from it).
rule crops_all:
    input:
        crops_outputs(),
        volumes=volume_files,
    localrule: True
