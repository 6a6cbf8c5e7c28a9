"""Reproduce the shipped default model: ``make train-default`` (``python -m training.default_model``).

Steps, all deterministic by seed:

1. generate a synthetic training set and a held-out test set with :mod:`training.synth` (small profile, all
   four vendor conventions, classic and Enhanced objects mixed; the two sets use different seeds, so their
   phantoms differ);
2. train the joint model (classification gradients flow into the localization network through the map);
3. train the ablation on the same data and budget with ``--detach-map``;
4. evaluate both on the held-out set with picai_eval (:mod:`training.evaluation.evaluate`);
5. install the joint model's artifact into ``lesion_engine/data/models/default/`` with the held-out metrics
   and the ablation in its card, and write ``MODEL_CARD.md`` beside it.

Everything intermediate (data, cache, runs, evaluations) goes into ``--work`` (default ``var/train-default``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lesion_engine.logsetup import TIMESTAMPED_FORMAT, configure_cli_logging
from lesion_engine.model.artifact import read_card
from training.artifact.export import update_card_metrics
from training.artifact.markdown_card import write_model_card
from training.datasets.dataset import DataSpec
from training.datasets.synthetic_sets import generate_mixed
from training.evaluation.evaluate import evaluate_model, headline
from training.fit.train import TrainConfig, train

logger = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "main", "reproduce"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "lesion_engine" / "data" / "models" / "default"
DEFAULTS: dict[str, Any] = {
    "train_cases": 160,
    "test_cases": 60,
    "train_seed": 1,
    "test_seed": 2,
    "epochs": 10,
    "warmup_epochs": 1,
    "batch_size": 2,
    "lr": 2e-3,
    "lambda_cls": 1.0,
    "seed": 0,
    "time_limit_min": 28.0,
}
NAME = "lesion-ai-default"
VERSION = "1.0.0"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _train_config(args: argparse.Namespace, work: Path, detach: bool) -> TrainConfig:
    return TrainConfig(
        data=DataSpec(work / "data" / "train"),
        out_dir=work / "runs" / ("detached" if detach else "joint"),
        cache_dir=work / "cache",
        cache_workers=args.cache_workers,
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lambda_cls=args.lambda_cls,
        detach_map=detach,
        seed=args.seed,
        time_limit_s=args.time_limit_min * 60.0,
        threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
        name=NAME if not detach else f"{NAME}-detached-map",
        version=VERSION,
    )


def _train_command(config: TrainConfig, work: Path) -> str:
    parts = [
        "lesion-ai train",
        f"--data {_relative(config.data.root)}",
        f"--cache-dir {_relative(work / 'cache')}",
        f"--out {_relative(config.out_dir)}",
        f"--epochs {config.epochs}",
        f"--warmup-epochs {config.warmup_epochs}",
        f"--batch-size {config.batch_size}",
        f"--lr {config.lr:g}",
        f"--lambda {config.lambda_cls:g}",
        f"--seed {config.seed}",
        f"--time-limit-min {config.time_limit_s / 60.0 if config.time_limit_s else 0:g}",
        f"--name {config.name}",
        f"--model-version {config.version}",
    ]
    if config.detach_map:
        parts.append("--detach-map")
    return " ".join(parts)


def reproduce(args: argparse.Namespace) -> dict[str, Any]:
    """Run every step (see the module docstring) and return the summary written to ``<work>/summary.json``."""
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "settings": {k: getattr(args, k) for k in DEFAULTS},
        "machine": {
            "cpus": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    started = time.perf_counter()
    generate_mixed(work / "data" / "train", args.train_cases, args.train_seed)
    generate_mixed(work / "data" / "test", args.test_cases, args.test_seed)
    summary["generation_s"] = round(time.perf_counter() - started, 1)
    logger.info("data generated in %.0f s", summary["generation_s"])

    runs: dict[str, dict[str, Any]] = {}
    variants = [False] if args.skip_ablation else [False, True]
    for detach in variants:
        key = "detached_map" if detach else "joint"
        config = _train_config(args, work, detach)
        resume = args.resume and (config.out_dir / "checkpoints" / "last.json").is_file()
        if not resume and config.out_dir.exists():
            shutil.rmtree(config.out_dir)  # a fresh run: no logs or checkpoints of an earlier one
        begun = time.perf_counter()
        result = train(config, resume=resume, argv=shlex.split(_train_command(config, work)))
        seconds = time.perf_counter() - begun
        if result.artifact is None:
            raise RuntimeError("training did not export an artifact")
        evaluation = evaluate_model(DataSpec(work / "data" / "test"), result.artifact, work / "eval" / key)
        runs[key] = {
            "train_command": _train_command(config, work),
            "evaluate_command": (
                f"lesion-ai evaluate --data {_relative(work / 'data' / 'test')} "
                f"--model {_relative(result.artifact)} --out {_relative(work / 'eval' / key)}"
            ),
            "steps": result.global_step,
            "epochs_done": result.epochs_done,
            "train_seconds": round(result.seconds, 1),
            "train_and_cache_seconds": round(seconds, 1),
            "time_limit_hit": result.epochs_done < config.epochs,
            "held_out": headline(evaluation),
            "artifact": _relative(result.artifact),
        }
        logger.info("%s: %s", key, runs[key]["held_out"])
    summary["runs"] = runs
    install(args, work, runs)
    summary["model_dir"] = _relative(args.model_dir)
    summary["total_s"] = round(time.perf_counter() - started, 1)
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def install(args: argparse.Namespace, work: Path, runs: dict[str, dict[str, Any]]) -> Path:
    """Write the joint model into the model folder with its full record, and ``MODEL_CARD.md``."""
    joint = runs["joint"]
    training = {
        "data": {
            "kind": "synthetic phantoms only",
            "generator": "training.synth, profile small",
            "train": {"cases": args.train_cases, "seed": args.train_seed},
            "test": {"cases": args.test_cases, "seed": args.test_seed},
            "mix": "vendor cycles siemens, ge, philips, standard by case; classic and Enhanced MR alternate "
            "in blocks of four cases",
        },
        "commands": {
            "reproduce": "make train-default",
            "train": joint["train_command"],
            "evaluate": joint["evaluate_command"],
        },
        "train_seconds": joint["train_seconds"],
        "time_limit_hit": joint["time_limit_hit"],
    }
    metrics: dict[str, Any] = {"held_out": joint["held_out"]}
    if "detached_map" in runs:
        metrics["ablation_detach_map"] = {
            "held_out": runs["detached_map"]["held_out"],
            "train_seconds": runs["detached_map"]["train_seconds"],
            "train_command": runs["detached_map"]["train_command"],
        }
    out = update_card_metrics(
        work / "runs" / "joint" / "artifact", metrics, training=training, out=args.model_dir
    )
    figures = {
        "heldout_roc.png": work / "eval" / "joint" / "roc.png",
        "heldout_froc.png": work / "eval" / "joint" / "froc.png",
        "heldout_pr.png": work / "eval" / "joint" / "pr.png",
        "training_loss.png": work / "runs" / "joint" / "loss.png",
    }
    for name, source in figures.items():
        if source.is_file():
            shutil.copyfile(source, out / name)
        else:
            logger.warning("figure %s not found; the model card goes without it", source)
    write_model_card(out, runs, dict(read_card(out).training))
    for path in out.iterdir():
        path.chmod(0o644)  # readable by the service that runs the engine
    return out


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (defaults reproduce the shipped model)."""
    parser = argparse.ArgumentParser(
        prog="python -m training.default_model",
        description="Reproduce the default model: generate synthetic data, train the joint model and the "
        "--detach-map ablation, evaluate both on a held-out synthetic set, and install the artifact.",
    )
    parser.add_argument("--work", type=Path, default=Path("var/train-default"), help="working folder")
    parser.add_argument(
        "--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="where the artifact is installed"
    )
    parser.add_argument("--train-cases", type=int, default=DEFAULTS["train_cases"])
    parser.add_argument("--test-cases", type=int, default=DEFAULTS["test_cases"])
    parser.add_argument("--train-seed", type=int, default=DEFAULTS["train_seed"])
    parser.add_argument("--test-seed", type=int, default=DEFAULTS["test_seed"])
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--warmup-epochs", type=int, default=DEFAULTS["warmup_epochs"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--lambda", dest="lambda_cls", type=float, default=DEFAULTS["lambda_cls"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--time-limit-min", type=float, default=DEFAULTS["time_limit_min"])
    parser.add_argument("--threads", type=int, help="CPU threads of torch (default: all)")
    parser.add_argument("--cache-workers", type=int, default=2)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--skip-ablation", action="store_true", help="train and evaluate the joint model only"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue interrupted runs from their checkpoints (default: train from scratch)",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m training.default_model``."""
    configure_cli_logging(logging.INFO, fmt=TIMESTAMPED_FORMAT)
    args = build_parser().parse_args(argv)
    summary = reproduce(args)
    for key, run in summary["runs"].items():
        held = run["held_out"]
        sys.stdout.write(
            f"{key}: AUROC {held['auroc']:.4f}  AP {held['AP']:.4f}  ranking {held['ranking_score']:.4f}  "
            f"({run['steps']} steps, {run['train_seconds'] / 60:.1f} min)\n"
        )
    sys.stdout.write(
        f"installed {summary['model_dir']}; summary in {_relative(args.work / 'summary.json')}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
