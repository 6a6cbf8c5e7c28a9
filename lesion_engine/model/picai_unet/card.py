"""The model card of a detection-map model (an imported PI-CAI U-Net ensemble).

A detection-map model is localization only: the lesion likelihood is read from the ensemble's map, as
PI-CAI does; it has no classification network, no suspicion category and no zonal head. Its card, in the
artifact's ``model.json`` beside ``model.safetensors`` (the folds' tensors, named ``fold<k>.<tensor>``)::

    {
      "format": "lesion-ai-model", "format_version": 2, "kind": "detection-map",
      "name": "...", "version": "...", "created": "2026-01-01T00:00:00+00:00",
      "architecture": {"network": "picai-unet", "folds": [0, 1, 2, 3, 4], ...},   # PicaiUNetConfig
      "pipeline": {...},                                                            # PicaiPipeline
      "label_map": {"cancer": "csPCa (ISUP >= 2)"},
      "source": {"origin": "...", "licence": "...", "checkpoints": [{"fold": 0, "file": "unet_F0.pt",
                 "sha256": "...", "bytes": 127230211}, ...], ...},
      "training": {...}, "metrics": {...},     # as the authors state them
      "intended_use": "...", "weights_sha256": "<sha256 of model.safetensors>"
    }

This module imports neither torch nor numpy (the Orthanc plugin reads model cards).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lesion_engine.errors import ModelArtifactError
from lesion_engine.model.picai_unet.config import PicaiPipeline

logger = logging.getLogger(__name__)

__all__ = ["DETECTION_FORMAT_VERSION", "DETECTION_KIND", "DetectionModelCard", "PicaiArchitecture"]

DETECTION_KIND = "detection-map"
DETECTION_FORMAT_VERSION = 2
_FORMAT = "lesion-ai-model"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REQUIRED = (
    "format",
    "format_version",
    "kind",
    "name",
    "version",
    "created",
    "architecture",
    "pipeline",
    "label_map",
    "source",
    "intended_use",
    "weights_sha256",
)
_OPTIONAL = ("training", "metrics")
#: Longest text field of a card (a card is read per request and per job: keep it small).
MAX_TEXT = 2000


def _fail(source: Path, name: str, message: str) -> ModelArtifactError:
    return ModelArtifactError(f"invalid model card {source}: field '{name}': {message}")


@dataclass(frozen=True)
class PicaiArchitecture:
    """The folds of the ensemble and the architecture of each (``architecture`` of the card).

    Attributes
    ----------
    unet : PicaiUNetConfig-like dict
        The U-Net's arguments (validated by :class:`lesion_engine.model.picai_unet.network.PicaiUNetConfig`
        when the weights are loaded).
    folds : tuple of int
        The fold numbers held (``fold<k>.`` tensors in the weights).
    """

    unet: Mapping[str, Any]
    folds: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**dict(self.unet), "folds": list(self.folds)}


@dataclass(frozen=True)
class DetectionModelCard:
    """The validated ``model.json`` of a detection-map model.

    Attributes
    ----------
    name, version, created : str
        What the model is called, its version, the ISO 8601 time of import.
    architecture : PicaiArchitecture
        The U-Net's arguments and the folds.
    pipeline : PicaiPipeline
        The inference pipeline, step by step.
    label_map : dict
        ``cancer``: what the likelihood means.
    source : dict
        Where the weights came from: origin, licence, the source checkpoints with their sha256.
    training, metrics : dict
        As the authors state them (free-form).
    intended_use : str
        What the model may be used for.
    weights_sha256 : str
        sha256 of ``model.safetensors``.
    """

    name: str
    version: str
    created: str
    architecture: PicaiArchitecture
    pipeline: PicaiPipeline
    label_map: Mapping[str, Any]
    source: Mapping[str, Any]
    intended_use: str
    weights_sha256: str
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    kind: str = DETECTION_KIND
    format_version: int = DETECTION_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``model.json``."""
        return {
            "format": _FORMAT,
            "format_version": self.format_version,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "architecture": self.architecture.to_dict(),
            "pipeline": self.pipeline.to_dict(),
            "label_map": dict(self.label_map),
            "source": dict(self.source),
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "intended_use": self.intended_use,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_dict(cls, data: Any, source: Path | str = "model.json") -> DetectionModelCard:
        """Validate a parsed ``model.json`` of kind ``detection-map``.

        Raises
        ------
        ModelArtifactError
            Naming the file and the field that is missing or wrong.
        """
        src = Path(source)
        if not isinstance(data, dict):
            raise ModelArtifactError(
                f"invalid model card {src}: expected a JSON object, got {type(data).__name__}"
            )
        for key in _REQUIRED:
            if key not in data:
                raise _fail(src, key, "missing")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise _fail(src, unknown[0], f"unknown field (known: {', '.join(_REQUIRED + _OPTIONAL)})")
        if data["format"] != _FORMAT:
            raise _fail(src, "format", f"expected {_FORMAT!r}, got {data['format']!r}")
        if data["kind"] != DETECTION_KIND:
            raise _fail(src, "kind", f"expected {DETECTION_KIND!r}, got {data['kind']!r}")
        if type(data["format_version"]) is not int or data["format_version"] != DETECTION_FORMAT_VERSION:
            raise _fail(
                src,
                "format_version",
                f"a detection-map card is version {DETECTION_FORMAT_VERSION}, got {data['format_version']!r}",
            )
        for key in ("name", "version", "created", "intended_use"):
            value = data[key]
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT or "\x00" in value:
                raise _fail(src, key, f"must be a non-empty string of at most {MAX_TEXT} characters")
        try:
            datetime.fromisoformat(data["created"])
        except ValueError:
            raise _fail(src, "created", f"not an ISO 8601 time: {data['created'][:40]!r}") from None
        sha = data["weights_sha256"]
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise _fail(src, "weights_sha256", "must be 64 lower-case hex digits")
        architecture = _architecture(src, data["architecture"])
        try:
            pipeline = PicaiPipeline.from_dict(_object(src, "pipeline", data["pipeline"]))
        except (TypeError, ValueError, IndexError) as exc:
            raise _fail(src, "pipeline", str(exc)) from None
        label_map = _object(src, "label_map", data["label_map"])
        if not isinstance(label_map.get("cancer"), str):
            raise _fail(src, "label_map.cancer", "must be a string saying what the likelihood means")
        source_data = _object(src, "source", data["source"])
        _check_checkpoints(src, source_data, architecture.folds)
        for key in _OPTIONAL:
            _object(src, key, data.get(key, {}))
        return cls(
            name=data["name"],
            version=data["version"],
            created=data["created"],
            architecture=architecture,
            pipeline=pipeline,
            label_map=dict(label_map),
            source=dict(source_data),
            intended_use=data["intended_use"],
            weights_sha256=sha,
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
        )


def _object(src: Path, name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(src, name, f"must be an object, got {type(value).__name__}")
    return value


def _architecture(src: Path, value: Any) -> PicaiArchitecture:
    data = dict(_object(src, "architecture", value))
    folds = data.pop("folds", None)
    if (
        not isinstance(folds, list)
        or not folds
        or not all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < 100 for f in folds)
        or len(set(folds)) != len(folds)
    ):
        raise _fail(
            src, "architecture.folds", f"must be a non-empty list of distinct fold numbers, got {folds!r}"
        )
    if data.get("network") != "picai-unet":
        raise _fail(src, "architecture.network", f"expected 'picai-unet', got {data.get('network')!r}")
    return PicaiArchitecture(unet=data, folds=tuple(folds))


def _check_checkpoints(src: Path, source: Mapping[str, Any], folds: tuple[int, ...]) -> None:
    checkpoints = source.get("checkpoints")
    if not isinstance(checkpoints, list):
        raise _fail(src, "source.checkpoints", "must list the source checkpoint of each fold")
    seen = []
    for item in checkpoints:
        if not isinstance(item, dict) or not isinstance(item.get("sha256"), str):
            raise _fail(src, "source.checkpoints", "each entry needs 'fold', 'file' and 'sha256'")
        if not _SHA256.fullmatch(item["sha256"]):
            raise _fail(
                src, "source.checkpoints", f"sha256 of fold {item.get('fold')!r} is not 64 hex digits"
            )
        seen.append(item.get("fold"))
    if sorted(seen, key=str) != sorted(folds, key=str):
        raise _fail(
            src, "source.checkpoints", f"folds {seen!r} do not match architecture.folds {list(folds)!r}"
        )
