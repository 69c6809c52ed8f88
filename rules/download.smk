# Stage -1 (optional, not part of `all`): LIDC-IDRI's CT series from the NCI Imaging Data Commons
# into config lidc_root (`snakemake --cores 1 download --config lidc_root=DIR`), resumable;
# results/download/series.csv: expected vs found instances per series (docs/ingestion.md).


rule download:
    output:
        series="results/download/series.csv",
    log:
        "logs/download.log",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        # ~128 GB at 100-200 MB/s takes a few hours; a rerun resumes
        runtime=24 * 60,
    params:
        lidc_root=config["lidc_root"],
        settings=settings_of(DownloadSettings),
        code=stage_code("download"),
    script:
        "../workflow_scripts/download.py"
