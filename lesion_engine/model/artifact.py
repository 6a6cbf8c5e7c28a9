"""Model artifacts: a folder with the weights (``model.safetensors``) and the model card (``model.json``).

The card (its fields, validation and reading) is :mod:`lesion_engine.model.model_card`'s; its names are
importable from here too. This module writes an artifact and loads its weights into a
:class:`~lesion_engine.model.networks.JointModel`.

Only safetensors weights are accepted: pickle-based checkpoints (``.pt``, ``.pth``, ``.pkl``, ``.ckpt``, or any
pickle or zip file) can run code when loaded and are refused. The weights' sha256 is checked before they are
read, so a file changed or damaged after export is refused too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lesion_engine.errors import ModelArtifactError
from lesion_engine.model.model_card import (
    CARD_FILE,
    DEFAULT_LABEL_MAP,
    FORMAT,
    FORMAT_VERSION,
    INTENDED_USE,
    ONLY_SAFETENSORS,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    ModelCard,
    artifact_folder,
    looks_like_pickle,
    read_card,
)
from lesion_engine.model.model_config import CandidateConfig, PreprocessConfig
from lesion_engine.model.networks import JointModel

logger = logging.getLogger(__name__)

__all__ = [
    "CARD_FILE",
    "DEFAULT_LABEL_MAP",
    "FORMAT",
    "FORMAT_VERSION",
    "INTENDED_USE",
    "WEIGHTS_FILE",
    "ModelCard",
    "file_sha256",
    "load_artifact",
    "read_card",
    "save_artifact",
    "write_atomic",
]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(temporary path)`` in its folder, then rename it into place (readable
    by other users, as the umask allows); nothing is left behind when ``write`` fails."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp creates 0600; an artifact is meant to be read by other users (the node's service account).
        tmp_path.chmod(0o644 & ~_current_umask())
        tmp_path.replace(path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _card_label_map(model: JointModel, label_map: Mapping[str, Any] | None) -> dict[str, Any]:
    """The card's label map: as given, else :data:`DEFAULT_LABEL_MAP` (no zones without a zonal head).

    Parameters
    ----------
    model : JointModel
        The model.
    label_map : mapping or None
        The label map given.

    Returns
    -------
    dict
    """
    labels = dict(label_map) if label_map is not None else dict(DEFAULT_LABEL_MAP)
    if label_map is None and model.loc.config.num_zones == 0:
        labels["zones"] = []
    return labels


def _validate_card_data(card_data: Mapping[str, Any], card_path: Path) -> None:
    """Check that a card to be written is JSON-ready and valid, before anything is written.

    Parameters
    ----------
    card_data : mapping
        The card's content.
    card_path : Path
        Where it will be written (for messages).

    Raises
    ------
    ModelArtifactError
        A record is not JSON-ready, or the card is invalid (naming the field).
    """
    try:
        text = json.dumps(card_data)
    except (TypeError, ValueError) as exc:
        raise ModelArtifactError(f"the training or metrics record is not JSON-ready: {exc}") from exc
    ModelCard.from_dict(json.loads(text), card_path)


def _cpu_state(model: JointModel) -> dict[str, torch.Tensor]:
    """Copies of the model's tensors on the CPU, contiguous (the model is not changed).

    Parameters
    ----------
    model : JointModel
        The model.

    Returns
    -------
    dict of str to torch.Tensor
    """
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}


def save_artifact(
    model: JointModel,
    folder: Path | str,
    *,
    name: str,
    version: str,
    preprocessing: PreprocessConfig,
    candidates: CandidateConfig,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    label_map: Mapping[str, Any] | None = None,
    created: datetime | None = None,
) -> Path:
    """Write a model artifact: ``model.safetensors`` and ``model.json`` in ``folder``.

    Parameters
    ----------
    model : JointModel
        The model whose weights are saved (moved to the CPU copy-wise; the model itself is not changed).
    folder : path
        Created if missing; an existing artifact in it is replaced.
    name, version : str
        What the model is called and its version.
    preprocessing, candidates
        Settings the engine must use with this model.
    training, metrics : mapping, optional
        Free-form JSON-ready records (data, commands, seeds; evaluation figures).
    label_map : mapping, optional
        Defaults to :data:`DEFAULT_LABEL_MAP` (trimmed to the model's zonal head).
    created : datetime, optional
        Export time; now when None.

    Returns
    -------
    Path
        The artifact folder.

    Raises
    ------
    ModelArtifactError
        When the card would be invalid (the message names the field) or a record is not JSON-ready.
    """
    if not isinstance(model, JointModel):
        raise ModelArtifactError(f"save_artifact needs a JointModel, got {type(model).__name__}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    labels = _card_label_map(model, label_map)
    card_data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": (created or datetime.now(UTC)).isoformat(timespec="seconds"),
        "architecture": {
            "localization": model.loc.config.to_dict(),
            "classification": model.cls.config.to_dict(),
        },
        "preprocessing": preprocessing.to_dict(),
        "candidates": candidates.to_dict(),
        "label_map": labels,
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
        "intended_use": INTENDED_USE,
        "weights_sha256": "0" * 64,
    }
    _validate_card_data(card_data, out / CARD_FILE)  # before writing anything
    tensors = _cpu_state(model)
    weights = out / WEIGHTS_FILE
    write_atomic(weights, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    card_data["weights_sha256"] = file_sha256(weights)
    card = ModelCard.from_dict(card_data, out / CARD_FILE)
    write_atomic(out / CARD_FILE, lambda p: p.write_text(json.dumps(card.to_dict(), indent=2) + "\n"))
    logger.info("model %s %s written to %s (sha256 %s)", name, version, out, card.weights_sha256)
    return out


def load_artifact(path: Path | str) -> tuple[JointModel, ModelCard]:
    """Load a model artifact: check the card, the weights' sha256, then the weights themselves.

    Parameters
    ----------
    path : path
        The artifact folder or its ``model.json`` (its ``model.safetensors`` is accepted too).

    Returns
    -------
    (JointModel, ModelCard)
        The model on the CPU in eval mode, and its card.

    Raises
    ------
    ModelArtifactError
        Missing files, an invalid card (naming the field), weights changed or corrupted after export,
        pickle-based checkpoints, or tensors that do not fit the architecture (missing, unexpected or of
        the wrong shape).
    """
    folder = artifact_folder(path)
    card = read_card(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        others = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = f" (found {', '.join(others)}: {ONLY_SAFETENSORS})" if others else ""
        raise ModelArtifactError(f"model weights not found: {weights}{hint}")
    if looks_like_pickle(weights):
        raise ModelArtifactError(f"{weights} is a pickle or zip file, not safetensors: {ONLY_SAFETENSORS}")
    actual = file_sha256(weights)
    if actual != card.weights_sha256:
        raise ModelArtifactError(
            f"{weights} was changed or corrupted after export: its sha256 is {actual}, the model card "
            f"{folder / CARD_FILE} says {card.weights_sha256}. Restore the artifact from its source or re-export it"
        )
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelArtifactError(f"{weights} is not a readable safetensors file: {exc}") from exc
    model = JointModel(card.localization, card.classification)
    _check_tensors(weights, model, tensors)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    logger.info("loaded model %s %s from %s", card.name, card.version, folder)
    return model, card


def _check_tensors(weights: Path, model: JointModel, tensors: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{key} {tuple(tensors[key].shape)} (architecture: {tuple(value.shape)})"
        for key, value in expected.items()
        if key in tensors and tuple(tensors[key].shape) != tuple(value.shape)
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {_some(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {_some(extra)}")
    if wrong:
        problems.append(f"wrong shapes: {_some(wrong)}")
    for key, value in tensors.items():
        if key in expected and value.dtype != expected[key].dtype and not value.is_floating_point():
            problems.append(f"{key} has dtype {value.dtype}, expected {expected[key].dtype}")
    if problems:
        raise ModelArtifactError(
            f"the weights in {weights} do not fit the architecture in the model card: " + "; ".join(problems)
        )


def _some(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
