"""Import PI-CAI U-Net fold checkpoints (``unet_F0.pt`` ... ``unet_F4.pt``) as a model artifact.

A published fold checkpoint is ``torch.save({'model_state_dict': state_dict})`` of picai_baseline's MONAI
``UNet``. It is read with ``torch.load(weights_only=True)`` only: PyTorch's restricted unpickler, which
rebuilds tensors and plain containers and refuses every other global (a class, a function, a lambda
through ``eval``), so nothing in the file can run code. A file that needs general unpickling is refused,
and so are truncated files, other top-level layouts, missing or unexpected tensors, tensors of the wrong
shape or type and non-finite values: the message names the fold and the tensor.

Each fold's tensors are renamed from MONAI's layout onto :class:`~lesion_engine.model.picai_unet.network.PicaiUNet`
(:func:`~lesion_engine.model.picai_unet.network.monai_key_map`) and the ensemble is written as a regular
artifact: ``model.safetensors`` (tensors ``fold<k>.<name>``) and ``model.json``
(:class:`~lesion_engine.model.picai_unet.card.DetectionModelCard`), plus a human-readable ``MODEL_CARD.md``. The
node itself never loads a pickle: it loads the artifact.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lesion_engine.errors import CheckpointImportError
from lesion_engine.model.artifact import file_sha256, write_atomic
from lesion_engine.model.model_card import CARD_FILE, INTENDED_USE, WEIGHTS_FILE
from lesion_engine.model.picai_unet.card import DETECTION_FORMAT_VERSION, DETECTION_KIND, DetectionModelCard
from lesion_engine.model.picai_unet.config import PicaiPipeline
from lesion_engine.model.picai_unet.network import PicaiUNetConfig, monai_key_map

logger = logging.getLogger(__name__)

__all__ = [
    "FOLD_FILE",
    "MAX_CHECKPOINT_BYTES",
    "PICAI_UNET_SOURCE",
    "PUBLISHED_CHECKPOINTS",
    "import_picai_unet",
    "read_fold_checkpoint",
]

FOLD_FILE = "unet_F{fold}.pt"
"""Name of a fold's checkpoint in the algorithm's ``weights/`` folder."""
MAX_CHECKPOINT_BYTES = 1 << 30
"""A fold checkpoint larger than this is refused (a published fold is about 127 MB)."""
DEFAULT_FOLDS = (0, 1, 2, 3, 4)

PICAI_UNET_SOURCE: dict[str, Any] = {
    "origin": "https://github.com/DIAGNijmegen/picai_unet_semi_supervised_gc_algorithm (weights/unet_F<k>.pt, git-lfs)",
    "algorithm": "PI-CAI baseline: U-Net, semi-supervised (picai_baseline, U-Net track)",
    "licence": "Apache-2.0 (the repository's LICENSE; copyright 2022 Diagnostic Image Analysis Group, Radboudumc)",
    "reference_pipeline": "process.py of the same repository (csPCaAlgorithm.predict)",
}
PICAI_UNET_TRAINING: dict[str, Any] = {
    "as_stated_by": "the PI-CAI organisers (picai_baseline README; Saha et al., Lancet Oncol 2024)",
    "data": (
        "PI-CAI Public Training and Development dataset: 1,500 bpMRI studies (T2W, ADC, HBV) from Radboud "
        "University Medical Center, University Medical Center Groningen and Ziekenhuis Groep Twente; "
        "semi-supervised: expert csPCa delineations where available, report-guided automatic annotations "
        "for the other positive cases; 5-fold cross-validation splits of picai_baseline"
    ),
    "not_measured_here": "accuracy on real patients: no real data is available to this project",
}
#: The published folds (git-lfs objects of the algorithm repository at commit 73b37f0): sha256 -> file name.
PUBLISHED_CHECKPOINTS: dict[str, str] = {
    "79d0f021304ffd6190614c494e68ef43df8245c3de04fe2fe3b3d0618bc49a4c": "unet_F0.pt",
    "7c94bde607f9a4b1bddba6401e704e2bb173b20454e45f1ebd20d2f4480091f5": "unet_F1.pt",
    "a5ed867d51eaa8aa93da64785cf696577d4e56e5e3985ca9e474258402e1ec1d": "unet_F2.pt",
    "96caa56f7ffa2cefb88005e8501164903a18168d6988b4ba692010537b41da26": "unet_F3.pt",
    "18e1dc6e6e6f8002f5273299e274985301c6f7ef830451b539afe4c0cba797f9": "unet_F4.pt",
}
PUBLISHED_RELEASE = "DIAGNijmegen/picai_unet_semi_supervised_gc_algorithm at commit 73b37f0"
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _refuse(fold: int, path: Path, message: str) -> CheckpointImportError:
    return CheckpointImportError(f"fold {fold} ({path.name}): {message}")


def _load(path: Path, fold: int) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a message naming the fold."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _refuse(fold, path, f"cannot be read: {exc.strerror or exc}") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise _refuse(fold, path, f"is {size} bytes, more than the {MAX_CHECKPOINT_BYTES} accepted")
    if size == 0:
        raise _refuse(fold, path, "is empty")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_LFS_POINTER))
    except OSError as exc:
        raise _refuse(fold, path, f"cannot be read: {exc.strerror or exc}") from None
    if head == _LFS_POINTER:
        raise _refuse(
            fold,
            path,
            "is a git-lfs pointer, not the weights: run `git lfs pull` in the algorithm repository",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        what = f"it holds {found.group(1)}" if found else "it holds objects other than tensors"
        raise _refuse(
            fold,
            path,
            f"refused: {what}, which only general unpickling could load, and general unpickling can run "
            "arbitrary code. Only checkpoints of plain tensors (torch.save of a state dict) are imported",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _refuse(
            fold, path, f"is truncated or not a torch checkpoint ({first}); fetch it again (git lfs pull)"
        ) from None


def read_fold_checkpoint(
    path: Path | str, fold: int, config: PicaiUNetConfig | None = None
) -> dict[str, torch.Tensor]:
    """One fold's tensors, renamed onto :class:`~lesion_engine.model.picai_unet.network.PicaiUNet`.

    Parameters
    ----------
    path : path
        The fold's checkpoint (``{'model_state_dict': ...}``; a bare state dict is accepted too).
    fold : int
        The fold number (for messages).
    config : PicaiUNetConfig, optional
        The expected architecture (picai_baseline's defaults when None).

    Returns
    -------
    dict of str to Tensor
        Float32 CPU tensors under our names.

    Raises
    ------
    CheckpointImportError
        Naming the fold and, where one is at fault, the tensor (MONAI's name).
    """
    source = Path(path)
    expected = monai_key_map(config)
    shapes = _expected_shapes(config)
    data = _load(source, fold)
    if isinstance(data, Mapping) and "model_state_dict" in data:
        state = data["model_state_dict"]
    elif isinstance(data, Mapping) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        state = data
    else:
        keys = sorted(map(str, data))[:8] if isinstance(data, Mapping) else type(data).__name__
        raise _refuse(
            fold, source, f"has no 'model_state_dict' (found {keys}): not a picai_baseline checkpoint"
        )
    if not isinstance(state, Mapping):
        raise _refuse(fold, source, f"'model_state_dict' is a {type(state).__name__}, not a state dict")
    theirs = set(map(str, state))
    missing = sorted(set(expected.values()) - theirs)
    extra = sorted(theirs - set(expected.values()))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {_some(missing)}")
        if extra:
            parts.append(f"unexpected tensors {_some(extra)}")
        raise _refuse(
            fold,
            source,
            f"is not the PI-CAI baseline U-Net (channels {list((config or PicaiUNetConfig()).channels)}, no "
            f"residual units): {'; '.join(parts)}",
        )
    out: dict[str, torch.Tensor] = {}
    for ours, name in expected.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            raise _refuse(fold, source, f"tensor {name} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != shapes[ours]:
            raise _refuse(
                fold,
                source,
                f"tensor {name} has shape {tuple(tensor.shape)}, the architecture needs {shapes[ours]}",
            )
        if tensor.dtype != torch.float32:
            raise _refuse(fold, source, f"tensor {name} is {tensor.dtype}, expected torch.float32")
        if not bool(torch.isfinite(tensor).all()):
            raise _refuse(fold, source, f"tensor {name} holds NaN or infinite values")
        out[ours] = tensor.detach().to("cpu").contiguous()
    return out


def _expected_shapes(config: PicaiUNetConfig | None) -> dict[str, tuple[int, ...]]:
    from lesion_engine.model.picai_unet.network import PicaiUNet

    with torch.device("meta"):
        model = PicaiUNet(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _some(items: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _wanted_folds(source: Path, folds: Sequence[int]) -> list[int]:
    """The folds to import, checked to be distinct numbers with a checkpoint each in ``source``.

    Parameters
    ----------
    source : Path
        The folder with ``unet_F<k>.pt``.
    folds : sequence of int
        The folds asked for.

    Returns
    -------
    list of int

    Raises
    ------
    CheckpointImportError
        ``source`` is not a folder, the folds are not distinct numbers 0..99, or a fold's file is missing.
    """
    if not source.is_dir():
        raise CheckpointImportError(f"{source} is not a folder (expected the folder holding unet_F0.pt ...)")
    wanted = list(folds)
    if not wanted or len(set(wanted)) != len(wanted) or any(not 0 <= f < 100 for f in wanted):
        raise CheckpointImportError(f"folds must be distinct numbers 0..99, got {wanted!r}")
    missing = [f for f in wanted if not (source / FOLD_FILE.format(fold=f)).is_file()]
    if missing:
        present = sorted(p.name for p in source.glob("*.pt"))
        raise CheckpointImportError(
            f"{source} lacks fold(s) {', '.join(map(str, missing))} "
            f"({', '.join(FOLD_FILE.format(fold=f) for f in missing)}; found: {', '.join(present) or 'no .pt file'}). "
            "Fetch all folds with `git lfs pull` in the algorithm repository, or name the folds to import"
        )
    return wanted


def _checkpoint_entry(path: Path, fold: int) -> dict[str, Any]:
    """The card's record of a fold's source checkpoint (a warning is logged when it is not a published one).

    Parameters
    ----------
    path : Path
        The fold's checkpoint.
    fold : int
        The fold number.

    Returns
    -------
    dict
        ``fold``, ``file``, ``sha256``, ``bytes`` and ``published`` (None when not a published checkpoint).
    """
    digest = file_sha256(path)
    published = PUBLISHED_CHECKPOINTS.get(digest)
    entry = {
        "fold": fold,
        "file": path.name,
        "sha256": digest,
        "bytes": path.stat().st_size,
        "published": f"{published} of {PUBLISHED_RELEASE}" if published else None,
    }
    if published is None:
        logger.warning(
            "fold %d (%s) is not one of the published checkpoints (sha256 %s)", fold, path.name, digest
        )
    return entry


def _read_folds(
    source: Path, wanted: Sequence[int], config: PicaiUNetConfig
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Every wanted fold's tensors (named ``fold<k>.<name>``) and the record of its checkpoint.

    Parameters
    ----------
    source : Path
        The folder with ``unet_F<k>.pt``.
    wanted : sequence of int
        The folds to read.
    config : PicaiUNetConfig
        The expected architecture.

    Returns
    -------
    tensors : dict of str to Tensor
    checkpoints : list of dict
        One :func:`_checkpoint_entry` per fold.

    Raises
    ------
    CheckpointImportError
        A fold is refused or does not fit.
    """
    tensors: dict[str, torch.Tensor] = {}
    checkpoints = []
    for fold in wanted:
        path = source / FOLD_FILE.format(fold=fold)
        for key, tensor in read_fold_checkpoint(path, fold, config).items():
            tensors[f"fold{fold}.{key}"] = tensor
        checkpoints.append(_checkpoint_entry(path, fold))
        logger.info("fold %d read from %s", fold, path.name)
    return tensors, checkpoints


def _card_data(
    *,
    name: str,
    version: str,
    created: datetime | None,
    config: PicaiUNetConfig,
    folds: list[int],
    pipeline: PicaiPipeline | None,
    checkpoints: list[dict[str, Any]],
) -> dict[str, Any]:
    """The content of the imported model's ``model.json``, with a placeholder ``weights_sha256``.

    Parameters
    ----------
    name, version : str
        The model's name and version.
    created : datetime or None
        Import time; now when None.
    config : PicaiUNetConfig
        The architecture.
    folds : list of int
        The folds imported.
    pipeline : PicaiPipeline or None
        The inference pipeline (the reference's when None).
    checkpoints : list of dict
        The record of each fold's source checkpoint.

    Returns
    -------
    dict
    """
    return {
        "format": "lesion-ai-model",
        "format_version": DETECTION_FORMAT_VERSION,
        "kind": DETECTION_KIND,
        "name": name,
        "version": version,
        "created": (created or datetime.now(UTC)).isoformat(timespec="seconds"),
        "architecture": {**config.to_dict(), "folds": folds},
        "pipeline": (pipeline or PicaiPipeline()).to_dict(),
        "label_map": {"cancer": "csPCa (ISUP >= 2): likelihood read from the detection map"},
        "source": {
            **PICAI_UNET_SOURCE,
            "checkpoints": checkpoints,
            "importer": "lesion-ai models import picai-unet",
        },
        "training": dict(PICAI_UNET_TRAINING),
        "metrics": {},
        "intended_use": INTENDED_USE,
        "weights_sha256": "0" * 64,
    }


def _write_artifact(
    folder: Path, tensors: dict[str, torch.Tensor], card_data: dict[str, Any]
) -> DetectionModelCard:
    """Validate the card, then write ``model.safetensors``, ``model.json`` and ``MODEL_CARD.md``.

    Parameters
    ----------
    folder : Path
        The artifact folder (exists).
    tensors : dict of str to Tensor
        The weights.
    card_data : dict
        The card's content; its ``weights_sha256`` is set to the written weights'.

    Returns
    -------
    DetectionModelCard
        The card written.
    """
    DetectionModelCard.from_dict(card_data, folder / CARD_FILE)  # validate before writing anything
    weights = folder / WEIGHTS_FILE
    write_atomic(weights, lambda p: save_file(tensors, str(p), metadata={"format": "lesion-ai-model"}))
    card_data["weights_sha256"] = file_sha256(weights)
    card = DetectionModelCard.from_dict(card_data, folder / CARD_FILE)
    write_atomic(folder / CARD_FILE, lambda p: p.write_text(json.dumps(card.to_dict(), indent=2) + "\n"))
    write_atomic(folder / "MODEL_CARD.md", lambda p: p.write_text(model_card_text(card)))
    return card


def import_picai_unet(
    weights_dir: Path | str,
    out: Path | str,
    *,
    name: str,
    version: str = "1",
    folds: Sequence[int] = DEFAULT_FOLDS,
    pipeline: PicaiPipeline | None = None,
    config: PicaiUNetConfig | None = None,
    created: datetime | None = None,
) -> DetectionModelCard:
    """Import the fold checkpoints of ``weights_dir`` as a detection-map model artifact in ``out``.

    Parameters
    ----------
    weights_dir : path
        The folder with ``unet_F<k>.pt`` (the algorithm repository's ``weights/``).
    out : path
        The artifact folder (created; an artifact in it is replaced).
    name, version : str
        The model's name and version.
    folds : sequence of int
        The folds to import (all five by default; each must be present).
    pipeline : PicaiPipeline, optional
        The inference pipeline (the reference's when None).
    config : PicaiUNetConfig, optional
        The architecture (picai_baseline's defaults when None).
    created : datetime, optional
        Import time; now when None.

    Returns
    -------
    DetectionModelCard
        The card written.

    Raises
    ------
    CheckpointImportError
        A fold is missing, refused or does not fit (the message names it and the tensor).
    """
    source = Path(weights_dir)
    wanted = _wanted_folds(source, folds)
    cfg = config or PicaiUNetConfig()
    tensors, checkpoints = _read_folds(source, wanted, cfg)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    card_data = _card_data(
        name=name,
        version=version,
        created=created,
        config=cfg,
        folds=wanted,
        pipeline=pipeline,
        checkpoints=checkpoints,
    )
    card = _write_artifact(folder, tensors, card_data)
    logger.info("PI-CAI U-Net %s %s (%d folds) written to %s", name, version, len(wanted), folder)
    return card


def model_card_text(card: DetectionModelCard) -> str:
    """The human-readable ``MODEL_CARD.md`` of an imported model."""
    source = card.source
    lines = [
        f"# {card.name} {card.version}: imported PI-CAI baseline U-Net (detection-map model)",
        "",
        f"Intended use: {card.intended_use}.",
        "",
        f"- Origin: {source.get('origin')}",
        f"- Licence of the weights: {source.get('licence')}",
        f"- Algorithm: {source.get('algorithm')}",
        f"- Training data (as its authors state it): {card.training.get('data')}",
        f"- Imported: {card.created}; folds {', '.join(map(str, card.architecture.folds))}",
        "",
        "| fold | file | sha256 (what it is) |",
        "| --- | --- | --- |",
    ]
    for item in source.get("checkpoints", []):
        published = item.get("published") or "not a published checkpoint"
        lines.append(f"| {item['fold']} | {item['file']} | `{item['sha256']}` ({published}) |")
    lines += ["", "## Pipeline (as the reference process.py)", ""]
    lines += [f"{i}. {step}" for i, step in enumerate(card.pipeline.to_dict()["steps"], start=1)]
    lines += [
        "",
        "Not measured here: this model's accuracy on real patients (no real data is available to this "
        "project); see the published PI-CAI figures.",
        "",
    ]
    return "\n".join(lines)
