"""Checks of a whole workflow config, run by the Snakefile before any job starts.

Every settings class a stage of the registry takes (:func:`lungseg.stages.settings_classes`) is
built from the config (each runs its own checks across keys; one per model and per detector
where jobs are), then the checks that span stages: each model must take the crops, each detector
its volumes, the predictor's choice and (with cross-validation) ``cv.baseline`` must name a
configured model, and ``predict.ensemble_folds`` needs ``split.folds >= 2``. A bad config thus
stops ``snakemake`` at parse time with the key named, before any output is deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lungseg.core.errors import SettingsError
from lungseg.core.settings import check_against_schema
from lungseg.dataset.settings import CropSettings
from lungseg.detection.settings import check_detection_config
from lungseg.evaluation.settings import CrossValidationSettings
from lungseg.predict.settings import PredictorSettings, PredictSettings
from lungseg.stages import settings_classes
from lungseg.training.settings import VariantSettings, variant_config


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`SettingsError` naming the key(s) of the first problem of ``config``."""
    check_against_schema(config)
    for cls in settings_classes():
        cls.check_config(config)
    crops = CropSettings.from_config(CropSettings.config_subset(config))
    for name in config["models"]:
        variant = VariantSettings.from_config(variant_config(config, name))
        if not variant.divides(crops.size):
            raise SettingsError(
                f"crops.size {list(crops.size)} is not divisible by 2**(levels - 1) = "
                f"{2 ** (variant.levels - 1)} of models.{name} (levels {variant.levels}): "
                "change crops.size or the model's levels"
            )
    check_detection_config(config)
    check_predictor_choice(config)
    check_cv_baseline(config)
    check_ensemble_folds(config)


def check_ensemble_folds(config: Mapping[str, Any]) -> None:
    """``predict.ensemble_folds: true`` needs the folds' models: ``split.folds >= 2``."""
    chosen = PredictorSettings.from_config(PredictorSettings.config_subset(config))
    folds = int((config.get("split") or {}).get("folds") or 0)
    if chosen.ensemble_folds and folds < 2:
        raise SettingsError(
            f"predict.ensemble_folds: true needs the cross-validation folds' models, but "
            f"split.folds is {folds}; set split.folds >= 2 or predict.ensemble_folds: false"
        )


def check_cv_baseline(config: Mapping[str, Any]) -> None:
    """With cross-validation (``split.folds >= 2``), ``cv.baseline`` must name a model."""
    if int((config.get("split") or {}).get("folds") or 0) < 2:
        return
    baseline = CrossValidationSettings.from_config(
        CrossValidationSettings.config_subset(config)
    ).baseline
    names = sorted(config.get("models") or {})
    if baseline not in names:
        raise SettingsError(
            f"cv.baseline: {baseline!r} is not in models ({', '.join(names) or 'none'}); "
            "the cross-validation compares every model with it"
        )


def check_predictor_choice(config: Mapping[str, Any]) -> None:
    """``predict.detector_name`` / ``segmenter_name``: ``best`` or a configured name, and the
    radiomics parameter file found, before any training runs."""
    chosen = PredictorSettings.from_config(PredictorSettings.config_subset(config))
    for key, name, section in (
        ("detector_name", chosen.detector_name, "detectors"),
        ("segmenter_name", chosen.segmenter_name, "models"),
    ):
        names = sorted(config.get(section) or {})
        if name != "best" and name not in names:
            raise SettingsError(
                f"predict.{key}: {name!r} is not in {section} ({', '.join(names) or 'none'}); "
                "use one of them or best"
            )
    predict = PredictSettings.from_config(PredictSettings.config_subset(config))
    PredictSettings.radiomics_params_file(predict.radiomics_params)
