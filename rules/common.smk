# Helpers and input functions shared by the rules. Logic beyond file wiring lives in src/lungseg.
from pathlib import Path

SAMPLE_ROOT = "results/sample_data"


def using_sample_data():
    """True when no LIDC-IDRI download is configured: the workflow generates sample data."""
    return not config["lidc_root"]


def raw_root():
    """The folder the index walks: the user's LIDC-IDRI download or the sample data."""
    return config["lidc_root"] or f"{SAMPLE_ROOT}/LIDC-IDRI"


def final_targets():
    """Everything `rule all` builds."""
    targets = []
    if using_sample_data():
        targets.append(f"{SAMPLE_ROOT}/done.txt")
    return targets
