"""nnU-Net's training and prediction in a child process (``python -m lungseg.bench.nnunet_run``).

nnU-Net reads its folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) from the
environment once, at import: :func:`lungseg.bench.nnunet.run_bench_nnunet` runs each step in a
fresh process with them set. These are nnU-Net's own entry points (``run_training`` of
``nnUNetv2_train``, ``nnUNetPredictor.predict_from_files`` of ``nnUNetv2_predict``) with one
change: trainers are looked up among nnU-Net's base trainer and its fixed-length variants
(``nnUNetTrainer_5epochs`` ...). nnU-Net's own lookup imports every trainer module, Primus' among
them, which needs timm and so torchvision; requirements-nnunet.lock leaves both out (torchvision
would replace the venv's torch).
"""

from __future__ import annotations

import argparse
import sys


def trainer_class(name: str) -> type:
    """nnU-Net's trainer class ``name``: ``nnUNetTrainer`` or one of its fixed-epoch variants."""
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as base
    from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs

    for module in (base, nnUNetTrainer_Xepochs):
        found = getattr(module, name, None)
        if isinstance(found, type) and issubclass(found, base.nnUNetTrainer):
            return found
    raise ValueError(f"unknown nnU-Net trainer {name!r} (nnUNetTrainer or nnUNetTrainer_<N>epochs)")


def _use_our_lookup() -> None:
    from nnunetv2.inference import predict_from_raw_data
    from nnunetv2.run import run_training

    for module in (run_training, predict_from_raw_data):
        # fail loudly, not silently use nnU-Net's lookup, if the pinned nnunetv2 changes
        if not hasattr(module, "recursive_find_trainer_class_by_name"):
            raise RuntimeError(
                f"{module.__name__} has no recursive_find_trainer_class_by_name: nnunetv2 "
                "changed; lungseg is tested with the version of requirements-nnunet.lock"
            )
        module.recursive_find_trainer_class_by_name = trainer_class


def train(dataset: str, configuration: str, fold: int, trainer: str, device: str) -> None:
    """``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -device DEVICE``."""
    import torch
    from nnunetv2.run.run_training import run_training

    _use_our_lookup()
    run_training(dataset, configuration, fold, trainer, device=torch.device(device))


def predict(model_dir: str, fold: int, images: list[str], out_dir: str, device: str) -> None:
    """``nnUNetv2_predict`` of single-channel ``images`` with the final checkpoint of ``fold``
    into ``out_dir``: per case ``<case>.nii.gz`` and ``<case>.npz`` (``probabilities``,
    ``(classes, z, y, x)``)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    _use_our_lookup()
    predictor = nnUNetPredictor(device=torch.device(device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_dir, (fold,), "checkpoint_final.pth")
    predictor.predict_from_files(
        [[image] for image in images],
        out_dir,
        save_probabilities=True,
        overwrite=True,
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lungseg.bench.nnunet_run", description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    steps = parser.add_subparsers(dest="step", required=True)
    step = steps.add_parser("train", help=train.__doc__)
    for name in ("dataset", "configuration", "fold", "trainer", "device"):
        step.add_argument(name, type=int if name == "fold" else str)
    step = steps.add_parser("predict", help=predict.__doc__)
    step.add_argument("model_dir")
    step.add_argument("fold", type=int)
    step.add_argument("out_dir")
    step.add_argument("device")
    step.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.step == "train":
        train(args.dataset, args.configuration, args.fold, args.trainer, args.device)
    else:
        predict(args.model_dir, args.fold, args.images, args.out_dir, args.device)


if __name__ == "__main__":
    main(sys.argv[1:])
