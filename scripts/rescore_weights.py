"""CPM of a trained second stage over stage-1 candidates for several score exponents.

The crop model of ``--best`` re-scores the highest ``--cap`` candidates a validation scan of
``--candidates`` once; each pair of ``rescore_stage1_weight`` w and ``rescore_shape_weight`` s
then gives the final probabilities ``r * c**s * p**w`` (lungseg.detection.rescore.rescore_scan,
the workflow's own code), scored with the workflow's LUNA16 FROC (at most 100 a scan). Run from
the workflow folder after ``make run`` (docs/detection.md, "Second stage"):

    .venv/bin/python scripts/rescore_weights.py \\
        --candidates results/detection/unet_patch/candidates.csv \\
        --best results/detection/unet_patch_fpr/best.pt --shape-weights 0 0.5 1 2
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
import pandas as pd
import torch

from lungseg.dataset.crops import volume_locator
from lungseg.detection.rescore import rescore_scan
from lungseg.detection.scans import read_scan_table, volume_geometry
from lungseg.detection.volumes import to_world
from lungseg.evaluation.detection import reference_findings
from lungseg.evaluation.froc import froc_entries, froc_of
from lungseg.inference.checkpoint import read_checkpoint
from lungseg.inference.model import load_model, predict
from lungseg.io.hdf5 import read_volume

CENTRES = ["center_z", "center_y", "center_x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", required=True, help="stage 1's candidates.csv")
    parser.add_argument("--best", required=True, help="the second stage's best.pt")
    parser.add_argument("--shape-weights", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--stage1-weights", type=float, nargs="+", default=[0.5])
    parser.add_argument("--cap", type=int, default=100, help="stage-1 candidates a scan")
    parser.add_argument("--results", default="results", help="the run's results folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, trained = load_model(args.best, "cpu")
    grid = read_checkpoint(args.best)["crop_grid"]
    table = read_scan_table(f"{args.results}/detection_volumes/scans.csv")
    val = table[table["subset"] == "val"]
    reference = reference_findings(f"{args.results}/nodules.csv", val)
    locate = volume_locator(glob.glob(f"{args.results}/volumes/*/*.h5"))
    stage1 = pd.read_csv(args.candidates)
    pairs = [(w, s) for w in args.stage1_weights for s in args.shape_weights]
    found: dict[tuple[float, float], list[pd.DataFrame]] = {pair: [] for pair in pairs}
    for scan in val.itertuples():
        own = stage1[stage1["seriesuid"].astype(str) == str(scan.series_uid)]
        own = own.sort_values("probability", ascending=False, kind="stable").head(args.cap)
        image, _, attrs = read_volume(locate(str(scan.patient_id), str(scan.series_uid)))
        cache: list[np.ndarray] = []

        def probabilities(crops, cache=cache):  # the network once a scan, every pair reuses it
            if not cache:
                cache.append(predict(model, crops, trained, batch_size=16))
            return cache[0]

        for w, s in pairs:
            out = rescore_scan(
                image, attrs["spacing"], own, probabilities, grid["crop_size"],
                grid["target_spacing"], w, s,
            ).head(100)  # fmt: skip
            world = to_world(out[CENTRES].to_numpy(dtype=float), volume_geometry(scan.path))
            out = out.assign(coordX=world[:, 0], coordY=world[:, 1], coordZ=world[:, 2])
            found[(w, s)].append(out.assign(seriesuid=str(scan.series_uid)))
    print("stage1_weight,shape_weight,cap,cpm,sensitivities,threshold_1fp")
    for w, s in pairs:
        entries = froc_entries(pd.concat(found[(w, s)]), reference, list(val["series_uid"]))
        curve = froc_of(entries, len(val))
        points = " ".join(f"{v:.3f}" for v in curve.sensitivity_at())
        print(f"{w},{s},{args.cap},{curve.cpm():.3f},{points},{curve.threshold_at(1.0):.4f}")


if __name__ == "__main__":
    main()
