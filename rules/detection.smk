# Stage: whole-scan nodule detection (docs/detection.md). Detection volumes per series, one
# train / detect / evaluate chain per detector (config["detectors"]), LUNA16 FROC and CPM.
# last.pt is written next to the declared outputs but deliberately not declared (rules/train.smk).


rule detection_volume:
    input:
        volume="results/volumes/{patient_id}/{series_uid}.h5",
        nodules="results/nodules.csv",
    output:
        detection="results/detection_volumes/{patient_id}/{series_uid}.h5",
    log:
        "logs/detection_volume/{patient_id}/{series_uid}.log",
    benchmark:
        "benchmarks/detection_volume/{patient_id}/{series_uid}.tsv"
    wildcard_constraints:
        patient_id=r"[^/]+",
        series_uid=r"[0-9.]+",
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        # float32 copies of the scan for the prefilter and resampling (~4 x 4 bytes a voxel)
        mem_mb=2500,
        runtime=20,
    params:
        code=stage_code("detection_volume"),
        settings=settings_of(VolumeSettings),
    script:
        "../workflow_scripts/detection_volume.py"


rule detection_scans:
    input:
        volumes=detection_volume_files,
        patients="results/split/patients.csv",
    output:
        table="results/detection_volumes/scans.csv",
    log:
        "logs/detection_scans.log",
    benchmark:
        "benchmarks/detection_scans.tsv"
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        code=stage_code("detection_scans"),
    script:
        "../workflow_scripts/detection_scans.py"


rule train_detector:
    input:
        scans="results/detection_volumes/scans.csv",
        volumes=detection_volume_files,
    output:
        metrics="results/detection/{detector}/metrics.csv",
        best="results/detection/{detector}/best.pt",
    log:
        "logs/train_detector/{detector}.log",
    benchmark:
        "benchmarks/train_detector/{detector}.tsv"
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
        code=stage_code("train_detector"),
        settings=detector_settings,
    script:
        "../workflow_scripts/train_detector.py"


rule detect:
    input:
        scans="results/detection_volumes/scans.csv",
        volumes=detection_volume_files,
        # searched instead of the detection volumes by a detector with test_spacing
        source_volumes=volume_files,
        best="results/detection/{detector}/best.pt",
    output:
        candidates="results/detection/{detector}/candidates.csv",
    log:
        "logs/detect/{detector}.log",
    benchmark:
        "benchmarks/detect/{detector}.tsv"
    wildcard_constraints:
        detector=detector_wildcard_pattern(("whole", "patch")),
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    # the train_detector job's resources: the same network over every validation scan (on the
    # real collection ~12-57 CPU hours, docs/cluster.md: a GPU job there)
    threads: detection_resource("threads")
    resources:
        mem_mb=detection_resource("mem_mb"),
        runtime=detection_resource("runtime"),
        gpu=detection_resource("gpu"),
    params:
        code=stage_code("detect"),
        settings=detector_settings,
    script:
        "../workflow_scripts/detect.py"


rule evaluate_detector:
    input:
        candidates="results/detection/{detector}/candidates.csv",
        scans="results/detection_volumes/scans.csv",
        nodules="results/nodules.csv",
        metrics="results/detection/{detector}/metrics.csv",
    output:
        froc=report(
            "results/detection/{detector}/froc.csv",
            caption="../report/detection_froc_table.rst",
            category="Detection",
            subcategory="FROC tables",
            labels={"detector": "{detector}", "table": "froc.csv"},
        ),
        bootstrap_table="results/detection/{detector}/froc_bootstrap.csv",
        summary="results/detection/{detector}/summary.csv",
        operating_point="results/detection/{detector}/operating_point.json",
    log:
        "logs/evaluate_detector/{detector}.log",
    wildcard_constraints:
        detector=detector_wildcard_pattern(),
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=stage_code("evaluate_detector"),
        detector="{detector}",
        settings=detector_settings,
    script:
        "../workflow_scripts/evaluate_detector.py"


rule detection_summary:
    input:
        summaries=detector_outputs("summary.csv"),
    output:
        table=report(
            "results/detection.csv",
            caption="../report/detection_summary.rst",
            category="Detection",
            subcategory="Summary",
            labels={"table": "detection.csv"},
        ),
    log:
        "logs/detection_summary.log",
    # the detection chain, then prediction: make run's longest path, scheduled first
    priority: 1
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=stage_code("detection_summary"),
    script:
        "../workflow_scripts/detection_summary.py"


rule plot_froc:
    input:
        frocs=detector_outputs("froc.csv"),
        bootstraps=detector_outputs("froc_bootstrap.csv"),
        summaries=detector_outputs("summary.csv"),
    output:
        figure=report(
            "results/plots/froc.png",
            caption="../report/froc.rst",
            category="Detection",
            subcategory="FROC",
            labels={"figure": "FROC, all detectors"},
        ),
    log:
        "logs/plot_froc.log",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=stage_code("plot_froc"),
    script:
        "../workflow_scripts/plot_froc.py"


rule plot_detections:
    input:
        candidates="results/detection/{detector}/candidates.csv",
        scans="results/detection_volumes/scans.csv",
        nodules="results/nodules.csv",
        operating_point="results/detection/{detector}/operating_point.json",
        volumes=detection_volume_files,
    output:
        figure=report(
            "results/plots/detections_{detector}.png",
            caption="../report/detections.rst",
            category="Detection",
            subcategory="Validation detections",
            labels={"detector": "{detector}", "figure": "detections"},
        ),
    log:
        "logs/plot_detections/{detector}.log",
    wildcard_constraints:
        detector=detector_wildcard_pattern(),
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=stage_code("plot_detections"),
    script:
        "../workflow_scripts/plot_detections.py"


rule detection_all:
    input:
        detection_outputs(),
        volumes=volume_files,


# Robustness (target bench_detection, not part of all): each detector trained, run and scored
# once per seed of detection_bench.seeds (docs/detection.md).
rule bench_detector_seeds:
    input:
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
        detector=detector_wildcard_pattern(("whole", "patch")),
    conda:
        "../envs/lungseg.yaml"
    threads: detection_resource("threads")
    resources:
        mem_mb=detection_resource("mem_mb"),
        runtime=lambda wildcards: detection_resource("runtime") * len(bench_seeds()),
        gpu=detection_resource("gpu"),
    params:
        code=stage_code("bench_detector_seeds"),
        detector="{detector}",
        seeds=bench_seeds(),
        settings=detector_settings,
    script:
        "../workflow_scripts/bench_detector_seeds.py"


rule bench_detection:
    input:
        tables=[f"results/bench_detection/{d}/seeds.csv" for d in detector_names()],
    output:
        table="results/bench_detection.csv",
        spread="results/bench_detection_spread.csv",
    log:
        "logs/bench_detection.log",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        code=stage_code("bench_detection"),
    script:
        "../workflow_scripts/bench_detection.py"
