"""Settings of the prediction stage (config section ``predict``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lungseg.core.errors import InputError
from lungseg.core.settings import StageSettings

#: lungseg's package data (in the wheel too): the versioned radiomics/params.yaml
DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class PredictorSettings(StageSettings):
    """Rule ``predictor``: which trained detector and crop model ``lungseg predict`` uses."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("predict",)

    detector_name: str
    segmenter_name: str
    ensemble_folds: bool  # the chosen model's cross-validation fold models, averaged


@dataclass(frozen=True)
class PredictSettings(StageSettings):
    """``lungseg predict`` and rule ``predict``: one CT series to segmented, measured nodules."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("predict", "ingest")

    mask_threshold: float
    min_diameter_mm: float
    radiomics_params: str
    device: str
    spacing_tolerance: float  # ingest's: a series is read as the workflow reads it

    @staticmethod
    def radiomics_params_file(value: str | os.PathLike[str]) -> Path:
        """The pyradiomics parameter file that config key ``predict.radiomics_params`` names.

        The user's own file (absolute, or relative to the working directory) when it exists;
        else, for a relative path, lungseg's packaged file of that name: the path's part after
        ``lungseg/data/`` (the checkout's ``src/lungseg/data/radiomics/params.yaml``), or the
        whole path (``radiomics/params.yaml``), under the package's data folder, so that an
        installed wheel finds it outside the checkout. Otherwise a one-line :class:`InputError`
        that names the key. (A static method: the rules reach it through ``PredictSettings``.)
        """
        path = Path(value).expanduser()
        if path.is_file():
            return path
        if not path.is_absolute():
            parts = path.parts
            after = [
                i + 2 for i in range(len(parts) - 1) if parts[i : i + 2] == ("lungseg", "data")
            ]
            tail = parts[after[-1] :] if after else parts
            packaged = DATA.joinpath(*tail)
            if tail and ".." not in tail and packaged.is_file():
                return packaged.resolve()  # one path for one file (a rerun trigger)
        raise InputError(
            f"predict.radiomics_params: {value}: radiomics parameter file not found "
            "(neither as given nor packaged with lungseg)"
        )
