"""Joint training of the localization and classification networks.

Per step (:func:`train_step`):

1. a batch of random, augmented crops of the cached cases (:class:`training.datasets.dataset.CropDataset`);
2. the ground-truth lesion centres of every kind and a few random background centres go through
   :meth:`JointModel.forward <lesion_engine.model.networks.JointModel.forward>` with the images, which localizes
   and classifies them from the images plus the localization map;
3. candidates of the current map (extracted from the detached map as at inference) are classified from the
   same map tensor with :meth:`JointModel.classify <lesion_engine.model.networks.JointModel.classify>`, so their
   gradients also reach the localization network through the map (the rule that labels them is in
   :mod:`training.datasets.candidate_sampling`);
4. loss = localization + zones + lambda x classification (:mod:`training.fit.losses`); during the first
   ``warmup_epochs`` the classification weight is 0 and the map yields no candidates (localization-only
   warm-up); the final model is always trained jointly. With ``detach_map`` the model is built with
   ``JointModel(detach_map=True)``: the ablation in which classification gradients stop at the map.

The learning rate is a function of the global step only (linear ramp, then cosine decay), and every random
choice derives from ``(seed, epoch, sample)`` or ``(seed, step, rank)``, so a resumed run continues exactly
where the checkpoint left it. Checkpoints hold no pickles (:mod:`training.fit.checkpoint`). The run's settings are a
:class:`~training.fit.train_config.TrainConfig` (importable from here too). With ``torchrun``
the model is wrapped in DistributedDataParallel, the data split by :class:`DistributedSampler`, and only
rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from lesion_engine.model.networks import JointModel, JointOutput, LocalizationNet
from training.datasets.augment import AugmentConfig
from training.datasets.candidate_sampling import (
    CandidateSet,
    SamplingConfig,
    concatenate,
    ground_truth_and_random,
    map_candidates,
)
from training.datasets.dataset import Batch, CropDataset, build_cache, cached_files, collate
from training.fit.checkpoint import load_checkpoint, save_checkpoint
from training.fit.distributed import DistInfo, all_reduce_mean, any_rank, barrier, setup, teardown
from training.fit.logs import CsvLog, plot_losses
from training.fit.losses import LossConfig, LossTerms, joint_loss
from training.fit.train_config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "build_model", "build_optimizer", "train", "train_step"]

LOSS_TERMS: tuple[str, ...] = ("loss", "loc_bce", "loc_dice", "zone", "cls_bce", "cls_ce")
STEP_FIELDS: tuple[str, ...] = ("step", "epoch", *LOSS_TERMS, "candidates", "map_candidates", "lr", "seconds")
EPOCH_FIELDS: tuple[str, ...] = ("epoch", "steps", *LOSS_TERMS, "seconds")


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    artifact: Path | None
    global_step: int
    epochs_done: int
    seconds: float
    last_losses: dict[str, float]


LESION_PRIOR = 0.01
"""Initial localization-map value: the lesion logit's bias starts at logit(0.01), as lesions are rare voxels."""


def build_model(config: TrainConfig) -> JointModel:
    """A freshly initialized joint model for ``config`` (weights from ``torch.manual_seed(config.seed)``).

    The lesion logit's bias starts at the prior :data:`LESION_PRIOR` instead of 0 (a map of 0.5 everywhere),
    which spares the first hundreds of steps of unlearning the background.

    With ``config.localization_from`` the localization network is the imported fold instead (frozen in
    frozen mode), and the classifier alone is freshly initialized.
    """
    torch.manual_seed(config.seed)
    model = JointModel(config.loc_config(), config.cls_config(), detach_map=config.detach_map)
    if config.localization_from is not None:
        config.localization_from.load_into(model)
        return model
    bias = model.loc.head.bias if isinstance(model.loc, LocalizationNet) else None
    if bias is not None:
        with torch.no_grad():
            bias[0] = math.log(LESION_PRIOR / (1.0 - LESION_PRIOR))
    return model


def build_optimizer(joint: JointModel, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters that learn: one group; with a fine-tuned imported localization network
    the classifier's group first, then the localization network's at ``lr_scale`` times the rate (the
    group's ``lr_scale``, applied by the schedule); a frozen one is left out."""
    start = config.localization_from
    if start is None:
        return torch.optim.AdamW(joint.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    groups: list[dict[str, Any]] = [{"params": list(joint.cls.parameters()), "lr_scale": 1.0}]
    if not start.frozen:
        groups.append({"params": list(joint.loc.parameters()), "lr_scale": start.lr_scale})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Learning rate at a global step: linear ramp over ``lr_ramp_steps``, then cosine to the floor."""
    if config.lr_ramp_steps and step < config.lr_ramp_steps:
        return config.lr * (step + 1) / config.lr_ramp_steps
    span = max(total - config.lr_ramp_steps, 1)
    progress = min(max(step - config.lr_ramp_steps, 0) / span, 1.0)
    floor = config.lr * config.min_lr_fraction
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of torch's generator for one step of one rank."""
    return int(np.random.default_rng([seed, step, rank, 1]).integers(2**62))


@dataclass(frozen=True)
class _Classified:
    """The candidates of a step and their classification logits.

    Attributes
    ----------
    candidates : CandidateSet
        Ground-truth and random centres, then those of the current map.
    cancer_logits : Tensor
        (N,) one per candidate, in the order of ``candidates``.
    category_logits : Tensor
        (N, K).
    from_map : int
        How many of the candidates come from the current map.
    """

    candidates: CandidateSet
    cancer_logits: torch.Tensor
    category_logits: torch.Tensor
    from_map: int


def _with_map_candidates(
    joint: JointModel,
    out: JointOutput,
    batch: Batch,
    images: torch.Tensor,
    first: CandidateSet,
    sampling: SamplingConfig,
    device: torch.device,
) -> _Classified:
    """Add the candidates of the current map to ``first``, classified from the same map tensor.

    Parameters
    ----------
    joint : JointModel
        The model (its ``detach_map`` says whether the classification gradients reach the map).
    out : JointOutput
        The forward pass over ``first``.
    batch : Batch
        The crops (on the CPU, for candidate labelling).
    images : Tensor
        The crops' images on ``device``.
    first : CandidateSet
        The ground-truth and random candidates of ``out``.
    sampling : SamplingConfig
        Candidate settings.
    device : torch.device
        Where the model is.
    """
    probability = out.localization_map.detach()[:, 0].float().cpu().numpy()
    from_map = map_candidates(probability, batch.lesions, batch.lesion_index, sampling)
    if not len(from_map):
        return _Classified(first, out.cancer_logits, out.category_logits, 0)
    seen = out.localization_map.detach() if joint.detach_map else out.localization_map
    more_cancer, more_category = joint.classify(
        images,
        seen,
        torch.from_numpy(from_map.centers).to(device),
        torch.from_numpy(from_map.batch_index).to(device),
    )
    return _Classified(
        concatenate(first, from_map),
        torch.cat([out.cancer_logits, more_cancer]),
        torch.cat([out.category_logits, more_category]),
        len(from_map),
    )


def _step_loss(
    out: JointOutput,
    on_device: Batch,
    classified: _Classified,
    loss_config: LossConfig,
    joint_phase: bool,
    device: torch.device,
) -> LossTerms:
    """The joint loss of a step (no classification term during the warm-up)."""
    return joint_loss(
        out.loc_logits,
        out.zone_logits,
        classified.cancer_logits,
        classified.category_logits,
        cspca=on_device.cspca,
        zones=on_device.zones,
        has_zones=on_device.has_zones,
        cancer_target=torch.from_numpy(classified.candidates.cancer).to(device),
        category_target=torch.from_numpy(classified.candidates.category).to(device),
        config=loss_config,
        cls_scale=1.0 if joint_phase else 0.0,
    )


def _apply_gradients(
    terms: LossTerms, joint: JointModel, optimizer: torch.optim.Optimizer, grad_clip: float
) -> None:
    """Back-propagate the loss and step the optimizer (FloatingPointError when the loss is not finite)."""
    if not torch.isfinite(terms.total):
        raise FloatingPointError(f"the loss is not finite ({terms.as_dict()}); lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()  # type: ignore[no-untyped-call]
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(joint.parameters(), grad_clip)
    optimizer.step()


def train_step(
    model: nn.Module,
    joint: JointModel,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    *,
    loss_config: LossConfig,
    sampling: SamplingConfig,
    rng: np.random.Generator,
    joint_phase: bool,
    device: torch.device,
    grad_clip: float = 0.0,
) -> dict[str, float]:
    """One optimizer step on a batch (see the module docstring); returns the loss terms and counts.

    Parameters
    ----------
    model : nn.Module
        ``joint`` itself or its DistributedDataParallel wrapper (whose forward runs the joint model).
    joint : JointModel
        The underlying model (used to classify the map candidates on the same map tensor).
    batch : Batch
        The crops.
    optimizer : torch.optim.Optimizer
        Its optimizer.
    loss_config, sampling
        Loss weights and candidate settings.
    rng : numpy.random.Generator
        Source of the random negatives.
    joint_phase : bool
        False during the localization-only warm-up.
    device : torch.device
        Where the model is.
    grad_clip : float
        Gradient-norm clip (0: none).
    """
    model.train()
    on_device = batch.to(device)
    images_np = batch.images.numpy()
    first = ground_truth_and_random(
        batch.lesions, batch.lesion_index, images_np, sampling.random_negatives, rng
    )
    centers = torch.from_numpy(first.centers).to(device)
    batch_index = torch.from_numpy(first.batch_index).to(device)
    out: JointOutput = model(on_device.images, centers, batch_index)
    classified = _Classified(first, out.cancer_logits, out.category_logits, 0)
    if joint_phase and sampling.max_map_candidates > 0:
        classified = _with_map_candidates(joint, out, batch, on_device.images, first, sampling, device)
    terms = _step_loss(out, on_device, classified, loss_config, joint_phase, device)
    _apply_gradients(terms, joint, optimizer, grad_clip)
    values = terms.as_dict()
    values["candidates"] = float(len(classified.candidates))
    values["map_candidates"] = float(classified.from_map)
    return values


class _SkipSampler(Sampler[int]):
    """The indices of a sampler, less the first ``skip`` (to resume in the middle of an epoch)."""

    def __init__(self, sampler: Sampler[Any], skip: int) -> None:
        self.sampler = sampler
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.sampler)[self.skip :])

    def __len__(self) -> int:
        return max(len(list(self.sampler)) - self.skip, 0)


def _sampler(dataset: CropDataset, info: DistInfo, seed: int, epoch: int, skip: int) -> Sampler[int]:
    base: DistributedSampler[dict[str, Any]] = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
    )
    base.set_epoch(epoch)
    return _SkipSampler(base, skip)


def _write_config(config: TrainConfig, info: DistInfo, argv: Sequence[str]) -> None:
    path = config.out_dir / "config.json"
    record: dict[str, Any] = {
        "config": config.to_dict(),
        "command": list(argv),
        "world_size": info.world_size,
        "device": str(info.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if path.is_file():
        previous_record = json.loads(path.read_text(encoding="utf-8"))
        previous = previous_record.get("config", {})
        for key in ("loc_channels", "cls_channels", "preprocess", "detach_map", "localization_from"):
            before, now = _resume_key(previous.get(key)), _resume_key(record["config"].get(key))
            if before != now:
                raise ValueError(
                    f"{config.out_dir} holds a run with another {key} ({before!r}); "
                    "resume with the same settings or use a new --out"
                )
        record["previous_commands"] = [
            *previous_record.get("previous_commands", []),
            previous_record.get("command"),
        ]
    config.out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _resume_key(value: Any) -> Any:
    """A setting as a resumed run must match it (an imported model by its identity, wherever it lies)."""
    if isinstance(value, dict) and "weights_sha256" in value:
        return {k: v for k, v in value.items() if k != "artifact"}
    return value


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    argv: Sequence[str] | None = None,
    export: Path | None = None,
    metrics: dict[str, Any] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Run (or resume) training; export the model artifact to ``<out_dir>/artifact`` (and ``export``).

    Parameters
    ----------
    config : TrainConfig
        The run.
    resume : bool
        Continue from ``<out_dir>/checkpoints/last`` (an error when there is none).
    argv : sequence of str, optional
        The command line, for the records; ``sys.argv`` when None.
    export : Path, optional
        A second artifact folder to write (e.g. a model store).
    metrics : dict, optional
        Metrics to write into the card (evaluation adds its own later).
    on_step : callable, optional
        Called on rank 0 with (global step, loss terms) after each step.

    Returns
    -------
    TrainResult
    """
    info = setup(config.device)
    threads = torch.get_num_threads()
    try:
        if info.device.type == "cpu" and config.threads:
            torch.set_num_threads(config.threads)
        return _train(
            config, info, resume, list(argv if argv is not None else sys.argv), export, metrics, on_step
        )
    finally:
        torch.set_num_threads(threads)
        teardown(info)


@dataclass(frozen=True)
class _Schedule:
    """How many optimizer steps a run takes.

    Attributes
    ----------
    steps_per_epoch : int
        Steps of one epoch on one rank.
    total_steps : int
        Steps of the whole run (``max_steps`` included).
    """

    steps_per_epoch: int
    total_steps: int


def _schedule(samples: int, config: TrainConfig, info: DistInfo) -> _Schedule:
    """The step counts of a run over ``samples`` crops per epoch, shared among the ranks."""
    per_rank = math.ceil(samples / info.world_size)
    steps_per_epoch = math.ceil(per_rank / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return _Schedule(steps_per_epoch, total_steps)


@dataclass(frozen=True)
class _Position:
    """Where a run stands.

    Attributes
    ----------
    epoch : int
        The current epoch.
    step_in_epoch : int
        Steps done in it.
    global_step : int
        Steps done in all.
    """

    epoch: int
    step_in_epoch: int
    global_step: int

    def stepped(self) -> _Position:
        """The position one optimizer step later."""
        return _Position(self.epoch, self.step_in_epoch + 1, self.global_step + 1)

    def next_epoch_if_done(self, steps_per_epoch: int) -> _Position:
        """The start of the next epoch when this one is complete, else this position."""
        if self.step_in_epoch >= steps_per_epoch:
            return _Position(self.epoch + 1, 0, self.global_step)
        return self


@dataclass(frozen=True)
class _Logs:
    """The CSV logs of rank 0: one row per step and one per finished epoch."""

    steps: CsvLog
    epochs: CsvLog


@dataclass(frozen=True)
class _Loop:
    """What the training loop works with, fixed for the run.

    Attributes
    ----------
    config : TrainConfig
        The run.
    info : DistInfo
        This process's place in the run.
    model : nn.Module
        ``joint``, or its DistributedDataParallel wrapper.
    joint : JointModel
        The model.
    optimizer : torch.optim.Optimizer
        Its optimizer.
    dataset : CropDataset
        The crops.
    schedule : _Schedule
        Step counts.
    checkpoints : Path
        The checkpoint folder.
    logs : _Logs or None
        The CSV logs (rank 0 only).
    progress : tqdm or None
        The progress bar (rank 0, when asked for).
    on_step : callable or None
        Called on rank 0 with (global step, loss terms) after each step.
    loss_config, sampling
        Loss weights and candidate settings.
    started : float
        ``time.perf_counter()`` when the loop started (for the time limit).
    """

    config: TrainConfig
    info: DistInfo
    model: nn.Module
    joint: JointModel
    optimizer: torch.optim.Optimizer
    dataset: CropDataset
    schedule: _Schedule
    checkpoints: Path
    logs: _Logs | None
    progress: Any
    on_step: Callable[[int, dict[str, float]], None] | None
    loss_config: LossConfig
    sampling: SamplingConfig
    started: float


def _training_data(config: TrainConfig, info: DistInfo) -> tuple[list[Path], CropDataset]:
    """The cached cases (the cache built in shards by all ranks) and the dataset of their crops."""
    files = build_cache(
        config.data,
        config.preprocess,
        config.cache_path,
        workers=config.cache_workers,
        shard=(info.rank, info.world_size),
    )
    barrier(info)
    if info.distributed:
        files = cached_files(config.data, config.preprocess, config.cache_path)
    if not files:
        raise ValueError(f"no usable case in {config.data.root}")
    dataset = CropDataset(
        files,
        config.crop_size,
        augment=AugmentConfig() if config.augment else None,
        seed=config.seed,
        samples_per_epoch=config.samples_per_epoch,
        foreground_prob=config.foreground_prob,
        preload=config.preload,
    )
    return files, dataset


def _parallel(joint: JointModel, info: DistInfo) -> nn.Module:
    """``joint``, wrapped in DistributedDataParallel when the run has several processes."""
    if not info.distributed:
        return joint
    return DistributedDataParallel(
        joint, device_ids=[info.device.index] if info.device.type == "cuda" else None
    )


def _resume_position(
    checkpoints: Path,
    joint: JointModel,
    optimizer: torch.optim.Optimizer,
    info: DistInfo,
    steps_per_epoch: int,
) -> _Position:
    """Load the last checkpoint into ``joint`` and ``optimizer``; the position to go on from."""
    state = load_checkpoint(checkpoints, joint, optimizer, device=info.device)
    position = _Position(state.epoch, state.step_in_epoch, state.global_step)
    position = position.next_epoch_if_done(steps_per_epoch)
    logger.info(
        "resuming at epoch %d, step %d (global step %d)",
        position.epoch,
        position.step_in_epoch,
        position.global_step,
    )
    return position


def _open_logs(config: TrainConfig, info: DistInfo, position: _Position) -> _Logs | None:
    """Rank 0's CSV logs, less the rows past ``position`` (left by a run that went on after its checkpoint)."""
    if not info.is_main:
        return None
    logs = _Logs(
        CsvLog(config.out_dir / "steps.csv", STEP_FIELDS), CsvLog(config.out_dir / "epochs.csv", EPOCH_FIELDS)
    )
    logs.steps.truncate("step", position.global_step)
    logs.epochs.truncate("epoch", position.epoch - 1)
    return logs


def _progress_bar(config: TrainConfig, info: DistInfo, schedule: _Schedule, global_step: int) -> Any:
    """A tqdm progress bar over the run's steps (rank 0, when asked for), or None."""
    if not (info.is_main and config.progress):
        return None
    from tqdm import tqdm

    return tqdm(
        total=schedule.total_steps, initial=global_step, desc="train", unit="step", dynamic_ncols=True
    )


def _checkpoint(loop: _Loop, position: _Position) -> None:
    """Save the model and optimizer at ``position`` (rank 0), then wait for every rank."""
    if loop.info.is_main:
        save_checkpoint(
            loop.checkpoints,
            loop.joint,
            loop.optimizer,
            epoch=position.epoch,
            step_in_epoch=position.step_in_epoch,
            global_step=position.global_step,
            extra={
                "steps_per_epoch": loop.schedule.steps_per_epoch,
                "total_steps": loop.schedule.total_steps,
            },
        )
    barrier(loop.info)


def _loader(loop: _Loop, position: _Position) -> DataLoader[dict[str, Any]]:
    """The batches of this rank for the epoch of ``position``, less those of its steps already done."""
    config = loop.config
    return DataLoader(
        loop.dataset,
        batch_size=config.batch_size,
        sampler=_sampler(
            loop.dataset, loop.info, config.seed, position.epoch, position.step_in_epoch * config.batch_size
        ),
        num_workers=config.workers,
        collate_fn=collate,
        pin_memory=loop.info.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed + position.epoch),  # leaves the global RNG alone
    )


def _set_learning_rate(loop: _Loop, global_step: int) -> None:
    """Set each parameter group's learning rate for a global step (times the group's ``lr_scale``)."""
    for group in loop.optimizer.param_groups:
        group["lr"] = lr_at(global_step, loop.schedule.total_steps, loop.config) * group.get("lr_scale", 1.0)


def _step(loop: _Loop, batch: Batch, position: _Position) -> tuple[_Position, dict[str, float]]:
    """One optimizer step at ``position``, reported; the position after it and its loss terms (mean of ranks)."""
    config, info = loop.config, loop.info
    joint_phase = position.epoch >= config.warmup_epochs
    _set_learning_rate(loop, position.global_step)
    step_started = time.perf_counter()
    torch.manual_seed(
        _step_seed(config.seed, position.global_step, info.rank)
    )  # dropout: same after a resume
    values = train_step(
        loop.model,
        loop.joint,
        batch,
        loop.optimizer,
        loss_config=loop.loss_config,
        sampling=loop.sampling,
        rng=np.random.default_rng([config.seed, position.global_step, info.rank]),
        joint_phase=joint_phase,
        device=info.device,
        grad_clip=config.grad_clip,
    )
    values = all_reduce_mean(values, info)
    position = position.stepped()
    _report_step(loop, position, values, joint_phase, time.perf_counter() - step_started)
    return position, values


def _report_step(
    loop: _Loop, position: _Position, values: dict[str, float], joint_phase: bool, seconds: float
) -> None:
    """Report a finished step: its row in ``steps.csv``, the progress bar, and ``on_step`` (rank 0)."""
    if loop.logs is not None:
        loop.logs.steps.append(
            {
                "step": position.global_step,
                "epoch": position.epoch,
                **{k: round(values[k], 6) for k in LOSS_TERMS},
                "candidates": int(values["candidates"]),
                "map_candidates": int(values["map_candidates"]),
                "lr": f"{loop.optimizer.param_groups[0]['lr']:.6g}",
                "seconds": round(seconds, 3),
            }
        )
    if loop.progress is not None:
        loop.progress.update(1)
        loop.progress.set_postfix(epoch=position.epoch, loss=f"{values['loss']:.3f}", joint=joint_phase)
    if loop.on_step is not None and loop.info.is_main:
        loop.on_step(position.global_step, values)


def _should_stop(loop: _Loop, position: _Position) -> bool:
    """Whether the run ends at ``position``: every step done, or past the time limit on any rank."""
    config = loop.config
    out_of_time = config.time_limit_s is not None and any_rank(
        time.perf_counter() - loop.started > config.time_limit_s, loop.info
    )
    return position.global_step >= loop.schedule.total_steps or out_of_time


def _run_epoch(
    loop: _Loop, position: _Position, last: dict[str, float]
) -> tuple[_Position, dict[str, float], bool]:
    """Train the epoch of ``position`` from its step there, then checkpoint.

    Returns
    -------
    (position, last, stop)
        The position after it (the next epoch's start when the epoch is complete), the loss terms of its last
        step (``last`` when it took none), and whether the run ends.
    """
    config, steps_per_epoch = loop.config, loop.schedule.steps_per_epoch
    loop.dataset.set_epoch(position.epoch)
    stop = False
    for batch in _loader(loop, position):
        position, last = _step(loop, batch, position)
        stop = _should_stop(loop, position)
        if (
            config.checkpoint_every_steps
            and position.global_step % config.checkpoint_every_steps == 0
            and not stop
        ):
            _checkpoint(loop, position)
        if stop:
            break
    if loop.logs is not None and position.step_in_epoch >= steps_per_epoch:
        _log_epoch(loop.logs.epochs, loop.logs.steps, position.epoch)
    _checkpoint(loop, position)
    return position.next_epoch_if_done(steps_per_epoch), last, stop


def _run_epochs(loop: _Loop, position: _Position) -> tuple[_Position, dict[str, float]]:
    """Train from ``position`` to the end of the run or the time limit; the final position and loss terms."""
    last: dict[str, float] = {}
    stop = position.global_step >= loop.schedule.total_steps
    while position.epoch < loop.config.epochs and not stop:
        position, last, stop = _run_epoch(loop, position, last)
    return position, last


def _export_artifacts(
    loop: _Loop,
    argv: list[str],
    position: _Position,
    seconds: float,
    cases: int,
    export: Path | None,
    metrics: dict[str, Any] | None,
) -> Path:
    """Plot the loss curves and export the model artifact (and its copy in ``export``); rank 0's work."""
    config = loop.config
    plot_losses(
        config.out_dir / "steps.csv",
        config.out_dir / "epochs.csv",
        config.out_dir / "loss.png",
        LOSS_TERMS,
    )
    from training.artifact.export import export_run

    record = training_record(config, loop.info, argv, position.global_step, position.epoch, seconds, cases)
    artifact = export_run(loop.joint, config, config.out_dir / "artifact", record, metrics or {})
    if export is not None:
        export_run(loop.joint, config, export, record, metrics or {})
    return artifact


def _train(
    config: TrainConfig,
    info: DistInfo,
    resume: bool,
    argv: list[str],
    export: Path | None,
    metrics: dict[str, Any] | None,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> TrainResult:
    """The body of :func:`train`, once the process group is set up."""
    if info.is_main:
        _write_config(config, info, argv)
    barrier(info)
    files, dataset = _training_data(config, info)
    schedule = _schedule(len(dataset), config, info)
    joint = build_model(config).to(info.device)
    model = _parallel(joint, info)
    optimizer = build_optimizer(joint, config)
    checkpoints = config.out_dir / "checkpoints"
    position = _Position(0, 0, 0)
    if resume:
        position = _resume_position(checkpoints, joint, optimizer, info, schedule.steps_per_epoch)
    logs = _open_logs(config, info, position)
    progress = _progress_bar(config, info, schedule, position.global_step)
    loop = _Loop(
        config=config,
        info=info,
        model=model,
        joint=joint,
        optimizer=optimizer,
        dataset=dataset,
        schedule=schedule,
        checkpoints=checkpoints,
        logs=logs,
        progress=progress,
        on_step=on_step,
        loss_config=config.loss_config(),
        sampling=config.sampling_config(),
        started=time.perf_counter(),
    )
    position, last = _run_epochs(loop, position)
    if progress is not None:
        progress.close()
    seconds = time.perf_counter() - loop.started
    artifact: Path | None = None
    if info.is_main:
        artifact = _export_artifacts(loop, argv, position, seconds, len(files), export, metrics)
    barrier(info)
    return TrainResult(config.out_dir, artifact, position.global_step, position.epoch, seconds, last)


def _log_epoch(epochs_log: CsvLog, steps_log: CsvLog, epoch: int) -> None:
    """Append the means of a finished epoch, from its rows in ``steps.csv`` (so a resume does not split it)."""
    rows = [r for r in steps_log.rows() if r.get("epoch") == str(epoch)]
    if not rows:
        return
    epochs_log.append(
        {
            "epoch": epoch,
            "steps": len(rows),
            **{k: round(float(np.mean([float(r[k]) for r in rows])), 6) for k in LOSS_TERMS},
            "seconds": round(sum(float(r["seconds"]) for r in rows), 2),
        }
    )


def training_record(
    config: TrainConfig,
    info: DistInfo,
    argv: Sequence[str],
    steps: int,
    epochs: int,
    seconds: float,
    cases: int,
) -> dict[str, Any]:
    """The ``training`` record of the model card."""
    cfg = config.to_dict()
    record: dict[str, Any] = {
        "data": config.data.to_dict(),
        "cases": cases,
        "command": " ".join(argv),
        "seed": config.seed,
        "lambda_cls": config.lambda_cls,
        "detach_map": config.detach_map,
        "warmup_epochs": config.warmup_epochs,
        "epochs": config.epochs,
        "steps": steps,
        "epochs_done": epochs,
        "batch_size": config.batch_size,
        "world_size": info.world_size,
        "device": str(info.device),
        "crop_size": list(config.crop_size),
        "lr": config.lr,
        "augment": AugmentConfig().to_dict() if config.augment else None,
        "sampling": {
            "random_negatives": config.random_negatives,
            "max_map_candidates": config.max_map_candidates,
        },
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "config": {k: cfg[k] for k in cfg if k not in ("data", "out_dir", "cache_dir", "progress")},
    }
    if config.localization_from is not None:
        record["localization_from"] = config.localization_from.record()
        for key in ("localization_from", "loc_channels", "zone_weight"):  # recorded above, or do not apply
            record["config"].pop(key, None)
    return record
