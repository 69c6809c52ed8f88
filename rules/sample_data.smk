# Stage 0: LIDC-shaped sample data (only when config lidc_root is empty). One job per patient
# writes results/sample_data/LIDC-IDRI/<PatientID>/<study>/<series>/1-NNN.dcm.


rule sample_data:
    output:
        patient=directory(f"{SAMPLE_ROOT}/LIDC-IDRI/{{patient}}"),
    log:
        "logs/sample_data/{patient}.log",
    benchmark:
        "benchmarks/sample_data/{patient}.tsv"
    wildcard_constraints:
        patient=r"LIDC-IDRI-\d{4}",
    conda:
        "../envs/lungseg.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    params:
        settings=settings_of(SampleSettings),
        code=stage_code("sample_data"),
    script:
        "../workflow_scripts/sample_data.py"


# Named target: every sample patient of config sample_data.patients.
rule sample_data_all:
    input:
        sample_data_outputs(),
    localrule: True
