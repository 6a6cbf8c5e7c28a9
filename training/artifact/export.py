"""Export a trained model as an engine artifact, and record evaluation metrics in its card.

The artifact is written by :func:`lesion_engine.model.artifact.save_artifact` (``model.safetensors`` plus the
``model.json`` card with the weights' sha256). The card's ``training`` record says what data, command,
seeds, lambda and detach flag produced the weights; ``metrics`` holds evaluation results when known.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lesion_engine.model.artifact import load_artifact, save_artifact
from lesion_engine.model.networks import JointModel

logger = logging.getLogger(__name__)

__all__ = ["export_run", "update_card_metrics"]


def export_run(
    model: JointModel,
    config: Any,
    folder: Path,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> Path:
    """Write ``model`` as an artifact into ``folder``.

    Parameters
    ----------
    model : JointModel
        The trained model (its ``detach_map`` flag is a training setting only; the engine does not use it).
    config : TrainConfig
        The run's configuration (name, version, preprocessing, candidate settings).
    folder : Path
        The artifact folder.
    training, metrics : mapping
        The card's records.

    Returns
    -------
    Path
        The artifact folder.
    """
    out = save_artifact(
        model,
        folder,
        name=config.name,
        version=config.version,
        preprocessing=config.preprocess,
        candidates=config.candidates,
        training=dict(training),
        metrics=dict(metrics),
    )
    logger.info("artifact written to %s", out)
    return out


def update_card_metrics(
    folder: Path,
    metrics: Mapping[str, Any],
    *,
    training: Mapping[str, Any] | None = None,
    out: Path | None = None,
) -> Path:
    """Rewrite an artifact with ``metrics`` (and optionally extra ``training`` entries) in its card.

    The weights are loaded (checking their sha256) and saved again through
    :func:`~lesion_engine.model.artifact.save_artifact`, so the card stays valid and its checksum right. The
    result goes to ``out`` when given (``folder`` is then left as it is), else back into ``folder``.
    """
    model, card = load_artifact(folder)
    merged_training = dict(card.training)
    if training:
        merged_training.update(training)
    return save_artifact(
        model,
        out if out is not None else folder,
        name=card.name,
        version=card.version,
        preprocessing=card.preprocessing,
        candidates=card.candidates,
        training=merged_training,
        metrics=dict(metrics),
        label_map=dict(card.label_map),
    )
