# Stage: the second stage of detection (docs/detection.md): detectors of mode rescore re-score
# the candidates of their stage-1 detector (detection.stage1) with a crop model: stage 1 over the
# training scans, crops around its candidates and the cohort nodules, the crop model trained on
# them, stage 1's validation candidates re-scored. Scoring and figures: rules/detection.smk.


rule detect_training_scans:
    input:
        scans="results/detection_volumes/scans.csv",
        volumes=detection_volume_files,
        # searched instead of the detection volumes by a detector with test_spacing
        source_volumes=volume_files,
        best="results/detection/{detector}/best.pt",
    output:
        candidates="results/detection/{detector}/train_candidates.csv",
    log:
        "logs/detect_training_scans/{detector}.log",
    benchmark:
        "benchmarks/detect_training_scans/{detector}.tsv"
    wildcard_constraints:
        detector=detector_wildcard_pattern(("whole", "patch")),
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: detection_resource("threads")
    resources:
        mem_mb=detection_resource("mem_mb"),
        runtime=detection_resource("runtime"),
        gpu=detection_resource("gpu"),
    params:
        code=stage_code("detect_training_scans"),
        settings=detector_settings,
        subset="train",
    script:
        "../workflow_scripts/detect_training_scans.py"


rule rescorer_samples:
    input:
        train_candidates=stage1_output("train_candidates.csv"),
        val_candidates=stage1_output("candidates.csv"),
        scans="results/detection_volumes/scans.csv",
        nodules="results/nodules.csv",
        volumes=volume_files,
    output:
        samples="results/detection/{detector}/samples.h5",
        table="results/detection/{detector}/samples.csv",
    log:
        "logs/rescorer_samples/{detector}.log",
    benchmark:
        "benchmarks/rescorer_samples/{detector}.tsv"
    wildcard_constraints:
        detector=detector_wildcard_pattern(("rescore",)),
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        # one scan's volume and label map at a time, and the crops (~100 kB each)
        mem_mb=3000,
        runtime=30,
    params:
        code=stage_code("rescorer_samples"),
        settings=detector_settings,
    script:
        "../workflow_scripts/rescorer_samples.py"


rule train_rescorer:
    input:
        samples="results/detection/{detector}/samples.h5",
        table="results/detection/{detector}/samples.csv",
    output:
        metrics="results/detection/{detector}/metrics.csv",
        best="results/detection/{detector}/best.pt",
    log:
        "logs/train_rescorer/{detector}.log",
    benchmark:
        "benchmarks/train_rescorer/{detector}.tsv"
    wildcard_constraints:
        detector=detector_wildcard_pattern(("rescore",)),
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: detection_resource("threads")
    resources:
        mem_mb=detection_resource("mem_mb"),
        runtime=detection_resource("runtime"),
        gpu=detection_resource("gpu"),
    params:
        code=stage_code("train_rescorer"),
        settings=detector_settings,
    script:
        "../workflow_scripts/train_rescorer.py"


rule rescore:
    input:
        candidates=stage1_output("candidates.csv"),
        scans="results/detection_volumes/scans.csv",
        volumes=volume_files,
        best="results/detection/{detector}/best.pt",
    output:
        rescored="results/detection/{detector}/candidates.csv",
    log:
        "logs/rescore/{detector}.log",
    benchmark:
        "benchmarks/rescore/{detector}.tsv"
    wildcard_constraints:
        detector=detector_wildcard_pattern(("rescore",)),
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: detection_resource("threads")
    resources:
        mem_mb=detection_resource("mem_mb"),
        runtime=detection_resource("runtime"),
        gpu=detection_resource("gpu"),
    params:
        code=stage_code("rescore"),
        settings=detector_settings,
    script:
        "../workflow_scripts/rescore.py"


# Robustness (target bench_detection): the second stage once per seed, each over its stage-1
# detector's run of the same seed (lungseg.bench.detection.bench_rescorer).
rule bench_rescorer_seeds:
    input:
        stage1_table=stage1_output("seeds.csv", "results/bench_detection"),
        scans="results/detection_volumes/scans.csv",
        volumes=detection_volume_files,
        source_volumes=volume_files,
        nodules="results/nodules.csv",
    output:
        table="results/bench_detection/{detector}/seeds.csv",
    log:
        "logs/bench_detection/{detector}.log",
    benchmark:
        "benchmarks/bench_detection/{detector}.tsv"
    wildcard_constraints:
        detector=detector_wildcard_pattern(("rescore",)),
    conda:
        "../envs/lungseg.yaml"
    threads: detection_resource("threads")
    resources:
        mem_mb=detection_resource("mem_mb"),
        runtime=lambda wildcards: detection_resource("runtime") * len(bench_seeds()),
        gpu=detection_resource("gpu"),
    params:
        code=stage_code("bench_rescorer_seeds"),
        detector="{detector}",
        seeds=bench_seeds(),
        settings=detector_settings,
    script:
        "../workflow_scripts/bench_rescorer_seeds.py"
