"""``lesion-ai train`` and ``lesion-ai evaluate``.

Both are sub-commands of the ``lesion-ai`` command line, registered through the ``lesion_ai.commands``
entry points (``train = training.cli:register_train``, ``evaluate = training.cli:register_evaluate``).
Several GPUs or machines: ``torchrun --nproc-per-node N -m lesion_engine.cli train ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from lesion_engine.errors import LesionAIError

logger = logging.getLogger(__name__)

__all__ = ["register_evaluate", "register_train", "run_evaluate", "run_train"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_CROP = (16, 96, 96)
LOCALIZATION_MODES = ("fine-tune", "frozen")


def _add_data_arguments(parser: argparse.ArgumentParser, subset: str) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        type=Path,
        required=True,
        help="synthetic data set folder (from `lesion-ai synth`), or the PI-CAI images root",
    )
    group.add_argument(
        "--data-format", choices=("synthetic", "picai"), default="synthetic", help="layout of --data"
    )
    group.add_argument(
        "--picai-labels", type=Path, help="PI-CAI: the picai_labels folder (default: DATA/picai_labels)"
    )
    group.add_argument(
        "--split", type=Path, help="PI-CAI: split file or folder (ds-config-*-fold-K.json or splits.json)"
    )
    group.add_argument("--fold", type=int, default=0, help="PI-CAI: fold of --split (default 0)")
    group.add_argument(
        "--subset",
        choices=("train", "valid"),
        default=subset,
        help=f"PI-CAI: part of the fold (default {subset})",
    )
    group.add_argument(
        "--label-source",
        choices=("human", "ai", "human+ai"),
        default="human+ai",
        help="PI-CAI: expert labels, AI-derived labels, or expert with AI-derived where missing (default)",
    )


def _spec(args: argparse.Namespace) -> Any:
    from training.datasets.dataset import DataSpec

    return DataSpec(
        root=args.data,
        data_format=args.data_format,
        labels_root=args.picai_labels,
        split=args.split,
        fold=args.fold,
        subset=args.subset,
        label_source=args.label_source,
    )


def register_train(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` sub-command."""
    parser = subparsers.add_parser(
        "train",
        help="train the joint localization + classification model and export an artifact",
        description="Train the localization and classification networks jointly (loss = localization + "
        "lambda x classification, classification gradients flowing into the localization network through the "
        "map unless --detach-map), checkpoint without pickles, and export a model artifact to RUN/artifact. "
        "Several GPUs: torchrun --nproc-per-node N -m lesion_engine.cli train ...",
    )
    _add_data_arguments(parser, "train")
    _add_run_arguments(parser)
    _add_optimization_arguments(parser)
    _add_architecture_arguments(parser)
    _add_localization_arguments(parser)
    parser.set_defaults(func=run_train)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` options of ``train``: output, resume, export, seeds, devices, cache and stopping."""
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (default runs/train)")
    run.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last")
    run.add_argument("--export", type=Path, help="also write the model artifact into this folder")
    run.add_argument(
        "--eval-data",
        type=Path,
        help="after training, evaluate on this labelled synthetic data set "
        "and write the metrics into the artifact's card",
    )
    run.add_argument("--name", default="lesion-ai-joint", help="model name in the card")
    run.add_argument("--model-version", default="0.1.0", help="model version in the card")
    run.add_argument("--seed", type=int, default=0, help="seed of weights, crops, augmentation (default 0)")
    run.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if available"
    )
    run.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    run.add_argument("--threads", type=int, help="CPU threads of torch (default: all)")
    run.add_argument("--cache-dir", type=Path, help="case cache folder (default RUN/cache)")
    run.add_argument(
        "--no-preload",
        action="store_true",
        help="read cached cases per sample instead of keeping them in memory",
    )
    run.add_argument("--cache-workers", type=int, default=1, help="processes that build the case cache")
    run.add_argument(
        "--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (0: per epoch)"
    )
    run.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    run.add_argument("--time-limit-min", type=float, help="stop after the first step past N minutes")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_optimization_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``optimization`` options of ``train``: schedule, loss weights, warm-up, crops and candidates."""
    opt = parser.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=20, help="epochs, warm-up included (default 20)")
    opt.add_argument("--samples-per-epoch", type=int, help="crops per epoch (default: one per case)")
    opt.add_argument("--batch-size", type=int, default=2, help="crops per step and process (default 2)")
    opt.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of AdamW (default 2e-3)")
    opt.add_argument(
        "--lambda", dest="lambda_cls", type=float, default=1.0, help="classification loss weight (default 1)"
    )
    opt.add_argument(
        "--zone-weight",
        type=float,
        help="zonal loss weight (default 0.5; an imported localization network has no zonal head)",
    )
    opt.add_argument(
        "--detach-map", action="store_true", help="ablation: classification gradients stop at the map"
    )
    opt.add_argument(
        "--warmup-epochs",
        type=int,
        help="localization-only epochs first (default 1; 0 with --localization-from)",
    )
    opt.add_argument(
        "--crop",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="training crop in voxels (default 16 96 96; with --localization-from the same millimetres on its "
        "crop, 16 192 192 at 3 x 0.5 x 0.5 mm)",
    )
    opt.add_argument("--no-augment", action="store_true", help="no data augmentation")
    opt.add_argument("--random-negatives", type=int, default=2, help="random background candidates per crop")
    opt.add_argument("--map-candidates", type=int, default=3, help="candidates from the current map per crop")


def _add_architecture_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``architecture`` options of ``train``: channels of the two networks."""
    arch = parser.add_argument_group("architecture")
    arch.add_argument(
        "--loc-channels", type=int, nargs="+", help="our U-Net's channels per level (default 16 32 64 128)"
    )
    arch.add_argument(
        "--cls-channels", type=int, nargs="+", default=(16, 32, 64), help="classifier channels per stage"
    )


def _add_localization_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "localization network from an imported model",
        "start the localization network from one fold of an imported detection-map model (a PI-CAI U-Net, "
        "`lesion-ai models import picai-unet`) and train the classifier on top of it, on its input crop",
    )
    group.add_argument("--localization-from", type=Path, metavar="ARTIFACT", help="the detection-map model")
    group.add_argument(
        "--localization-fold", type=int, metavar="K", help="its fold to start from (default 0)"
    )
    group.add_argument(
        "--localization",
        choices=LOCALIZATION_MODES,
        help="fine-tune: the joint loss trains both networks (default); frozen: only the classifier learns",
    )
    group.add_argument(
        "--localization-lr-scale",
        type=float,
        metavar="F",
        help="fine-tune: the imported network's learning rate as a fraction of --lr (default 0.1)",
    )


def _localization_start(args: argparse.Namespace) -> Any:
    """The :class:`~training.fit.localization_start.LocalizationStart` of the options, or None; ValueError
    for options that contradict it."""
    from training.fit.localization_start import DEFAULT_LR_SCALE, LocalizationStart

    options = {
        "--localization-fold": args.localization_fold,
        "--localization": args.localization,
        "--localization-lr-scale": args.localization_lr_scale,
    }
    if args.localization_from is None:
        given = [name for name, value in options.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --localization-from ARTIFACT")
        return None
    for name, value in (("--loc-channels", args.loc_channels), ("--zone-weight", args.zone_weight)):
        if value is not None:
            raise ValueError(
                f"{name} does not apply with --localization-from: the localization network is the imported "
                "U-Net (its own architecture, no zonal head)"
            )
    mode = args.localization or "fine-tune"
    if mode == "frozen" and args.localization_lr_scale is not None:
        raise ValueError("--localization-lr-scale applies to --localization fine-tune only")
    return LocalizationStart.from_artifact(
        args.localization_from,
        fold=0 if args.localization_fold is None else args.localization_fold,
        mode=mode,
        lr_scale=DEFAULT_LR_SCALE if args.localization_lr_scale is None else args.localization_lr_scale,
    )


def _train_config(args: argparse.Namespace) -> Any:
    """The :class:`~training.fit.train_config.TrainConfig` of the options (ValueError when they are invalid)."""
    from training.fit.localization_start import default_crop
    from training.fit.train import TrainConfig

    start = _localization_start(args)
    extra: dict[str, Any] = {}
    if args.loc_channels is not None:
        extra["loc_channels"] = tuple(args.loc_channels)
    if start is not None:
        extra.update(localization_from=start, preprocess=start.preprocess)
    crop = args.crop
    if crop is None:
        crop = default_crop(start.preprocess, start.network.divisor, DEFAULT_CROP) if start else DEFAULT_CROP
    return TrainConfig(
        data=_spec(args),
        out_dir=args.out,
        epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        lambda_cls=args.lambda_cls,
        zone_weight=0.5 if args.zone_weight is None else args.zone_weight,
        detach_map=args.detach_map,
        warmup_epochs=(1 if start is None else 0) if args.warmup_epochs is None else args.warmup_epochs,
        seed=args.seed,
        crop_size=(crop[0], crop[1], crop[2]),
        device=args.device,
        workers=args.workers,
        cache_dir=args.cache_dir,
        cache_workers=args.cache_workers,
        preload=not args.no_preload,
        augment=not args.no_augment,
        random_negatives=args.random_negatives,
        max_map_candidates=args.map_candidates,
        cls_channels=tuple(args.cls_channels),
        checkpoint_every_steps=args.checkpoint_every,
        max_steps=args.max_steps,
        time_limit_s=None if args.time_limit_min is None else args.time_limit_min * 60.0,
        threads=args.threads,
        progress=not args.no_progress,
        name=args.name,
        version=args.model_version,
        **extra,
    )


def run_train(args: argparse.Namespace) -> int:
    """Run ``train`` and return the exit status."""
    from training.fit.train import train

    try:
        config = _train_config(args)
    except ValueError as exc:
        sys.stderr.write(f"lesion-ai train: {exc}\n")
        return EXIT_USAGE
    if not args.data.is_dir():
        sys.stderr.write(f"lesion-ai train: --data {args.data} is not a folder\n")
        return EXIT_USAGE
    argv = ["lesion-ai", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("lesion-ai") else list(sys.argv)
    try:
        result = train(config, resume=args.resume, argv=argv, export=args.export)
    except (FileNotFoundError, ValueError, LesionAIError) as exc:
        sys.stderr.write(f"lesion-ai train: {type(exc).__name__}: {exc}\n")
        return EXIT_FAILED
    if result.artifact is None:  # not rank 0
        return EXIT_OK
    sys.stdout.write(
        f"trained {result.global_step} steps ({result.epochs_done} epochs) in {result.seconds / 60:.1f} min; "
        f"artifact: {result.artifact}\n"
    )
    if args.eval_data is not None:
        from training.artifact.export import update_card_metrics
        from training.datasets.dataset import DataSpec
        from training.evaluation.evaluate import evaluate_model, headline

        record = evaluate_model(
            DataSpec(args.eval_data), result.artifact, args.out / "evaluation", device=None
        )
        metrics = {"held_out": headline(record), "data": str(args.eval_data)}
        update_card_metrics(result.artifact, metrics)
        if args.export is not None:
            update_card_metrics(args.export, metrics)
        sys.stdout.write(_summary(record))
    return EXIT_OK


def register_evaluate(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model artifact on a labelled data set with PI-CAI's metrics",
        description="Run the engine on every case of a labelled data set, write PI-CAI detection maps, and "
        "compute with picai_eval the patient-level AUROC, lesion-level AP, ranking score and sensitivity at 0.5 "
        "and 1 false positive per patient, plus per-lesion-kind results. Writes OUT/metrics.json and ROC, FROC "
        "and PR plots.",
    )
    _add_data_arguments(parser, "valid")
    parser.add_argument(
        "--model", type=Path, help="model artifact folder (default: the packaged default model)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N cases")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_evaluate)


def _summary(record: dict[str, Any]) -> str:
    lines = [
        f"cases {record['num_cases']}, csPCa lesions {record['num_lesions']}",
        f"AUROC {record['auroc']:.4f}  AP {record['AP']:.4f}  ranking score {record['ranking_score']:.4f}",
        f"sensitivity at 0.5 FP/patient {record['sensitivity_at_0.5_fp']:.3f}, at 1 FP/patient "
        f"{record['sensitivity_at_1_fp']:.3f}",
    ]
    for kind, entry in record["per_kind"].items():
        rate = entry.get("detection_rate")
        lines.append(
            f"  {kind:12s} {entry['lesions']:4d} lesion(s)"
            + (f", detected {rate:.2f}" if rate is not None else "")
            + f", called csPCa {entry['called_cspca_rate']:.2f}"
        )
    return "\n".join(lines) + "\n"


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate`` and return the exit status."""
    from training.datasets.dataset import list_cases
    from training.evaluation.evaluate import evaluate_model

    if not args.data.is_dir():
        sys.stderr.write(f"lesion-ai evaluate: --data {args.data} is not a folder\n")
        return EXIT_USAGE
    if args.limit is not None and args.limit < 1:
        sys.stderr.write("lesion-ai evaluate: --limit must be >= 1\n")
        return EXIT_USAGE
    try:
        spec = _spec(args)
        ids = list_cases(spec)
        if args.limit is not None:
            ids = ids[: args.limit]
        bar = None
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="evaluate", unit="case", dynamic_ncols=True)

        def progress(done: int, total: int, case_id: str) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(case_id)

        record = evaluate_model(
            spec,
            args.model,
            args.out,
            device=args.device,
            threads=args.threads,
            case_ids=ids,
            progress=progress,
        )
        if bar is not None:
            bar.close()
    except (FileNotFoundError, ValueError, LesionAIError) as exc:
        sys.stderr.write(f"lesion-ai evaluate: {type(exc).__name__}: {exc}\n")
        return EXIT_FAILED
    sys.stdout.write(_summary(record))
    sys.stdout.write(f"wrote {args.out / 'metrics.json'}\n")
    return EXIT_OK
