# lungseg: LIDC-IDRI -> HDF5 volumes -> tumour-centred crops -> iUNet / U-Net training -> report.
# All logic lives in the lungseg package (src/lungseg); rules only wire files together.
from snakemake.utils import min_version, validate

from lungseg.config_checks import check_config
from lungseg.core.settings import SCHEMA_PATH

min_version("9.0")


configfile: "config.yaml"


# Our check first: it names the bad key in one line (then Snakemake's fills in the defaults),
# and runs every check across keys before any job starts or any output is deleted.
check_config(config)
validate(config, str(SCHEMA_PATH))


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/sample_data.smk"
include: "rules/ingest.smk"
include: "rules/crops.smk"
include: "rules/train.smk"
include: "rules/cv.smk"
include: "rules/benchmark.smk"
include: "rules/evaluate.smk"
include: "rules/plots.smk"
include: "rules/detection.smk"
include: "rules/rescoring.smk"
include: "rules/predict.smk"


rule all:
    default_target: True
    input:
        final_targets(),
        volumes=volume_files,
