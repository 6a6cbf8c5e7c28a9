"""The model card of an imported PI-CAI nnU-Net ensemble (a detection-map model).

Like the U-Net's (:mod:`lesion_engine.model.picai_unet.card`), in the artifact's ``model.json`` beside
``model.safetensors`` (tensors ``fold<k>.<name>``), with the network named ``picai-nnunet``::

    {
      "format": "lesion-ai-model", "format_version": 2, "kind": "detection-map",
      "name": "...", "version": "...", "created": "...",
      "architecture": {"network": "picai-nnunet", "folds": [0, 1, 2, 3, 4], "plans": {...}},   # NnunetPlans
      "pipeline": {...},                                                                          # NnunetPipeline
      "label_map": {"cancer": "..."}, "source": {..., "checkpoints": [...]}, "training": {...},
      "intended_use": "...", "weights_sha256": "..."
    }
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
from lesion_engine.model.picai_nnunet.config import NnunetPipeline
from lesion_engine.model.picai_nnunet.plans import NnunetPlans
from lesion_engine.model.picai_unet.card import DETECTION_FORMAT_VERSION, DETECTION_KIND, MAX_TEXT

logger = logging.getLogger(__name__)

__all__ = ["NNUNET_NETWORK", "NnunetArchitecture", "NnunetModelCard", "is_nnunet_card"]

NNUNET_NETWORK = "picai-nnunet"
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


def _fail(source: Path, name: str, message: str) -> ModelArtifactError:
    return ModelArtifactError(f"invalid model card {source}: field '{name}': {message}")


def _object(src: Path, name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(src, name, f"must be an object, got {type(value).__name__}")
    return value


def is_nnunet_card(data: Any) -> bool:
    """Whether a parsed ``model.json`` is an imported nnU-Net's (kind ``detection-map``, network
    ``picai-nnunet``): what :func:`lesion_engine.model.model_card.read_any_card` would dispatch on."""
    return (
        isinstance(data, dict)
        and data.get("kind") == DETECTION_KIND
        and isinstance(data.get("architecture"), dict)
        and data["architecture"].get("network") == NNUNET_NETWORK
    )


@dataclass(frozen=True)
class NnunetArchitecture:
    """``architecture`` of the card: the plans (the network and its pre- and postprocessing) and the folds."""

    plans: NnunetPlans
    folds: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"network": NNUNET_NETWORK, "folds": list(self.folds), "plans": self.plans.to_dict()}


@dataclass(frozen=True)
class NnunetModelCard:
    """The validated ``model.json`` of an imported nnU-Net ensemble (fields as
    :class:`~lesion_engine.model.picai_unet.card.DetectionModelCard`'s; ``architecture`` holds the plans)."""

    name: str
    version: str
    created: str
    architecture: NnunetArchitecture
    pipeline: NnunetPipeline
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
    def from_dict(cls, data: Any, source: Path | str = "model.json") -> NnunetModelCard:
        """Validate a parsed ``model.json``.

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
                src, "format_version", f"expected {DETECTION_FORMAT_VERSION}, got {data['format_version']!r}"
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
            pipeline = NnunetPipeline.from_dict(_object(src, "pipeline", data["pipeline"]))
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


def _architecture(src: Path, value: Any) -> NnunetArchitecture:
    data = _object(src, "architecture", value)
    unknown = sorted(set(data) - {"network", "folds", "plans"})
    if unknown:
        raise _fail(src, f"architecture.{unknown[0]}", "unknown field (known: network, folds, plans)")
    if data.get("network") != NNUNET_NETWORK:
        raise _fail(src, "architecture.network", f"expected {NNUNET_NETWORK!r}, got {data.get('network')!r}")
    folds = data.get("folds")
    if (
        not isinstance(folds, list)
        or not folds
        or not all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < 100 for f in folds)
        or len(set(folds)) != len(folds)
    ):
        raise _fail(
            src, "architecture.folds", f"must be a non-empty list of distinct fold numbers, got {folds!r}"
        )
    try:
        plans = NnunetPlans.from_dict(_object(src, "architecture.plans", data.get("plans")))
    except (TypeError, ValueError) as exc:
        raise _fail(src, "architecture.plans", str(exc)) from None
    return NnunetArchitecture(plans=plans, folds=tuple(folds))


def _check_checkpoints(src: Path, source: Mapping[str, Any], folds: tuple[int, ...]) -> None:
    checkpoints = source.get("checkpoints")
    if not isinstance(checkpoints, list):
        raise _fail(src, "source.checkpoints", "must list the source checkpoint of each fold")
    seen = []
    for item in checkpoints:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("sha256"), str)
            or not _SHA256.fullmatch(item["sha256"])
        ):
            raise _fail(
                src, "source.checkpoints", "each entry needs 'fold', 'file' and a 64-hex-digit 'sha256'"
            )
        seen.append(item.get("fold"))
    if sorted(seen, key=str) != sorted(folds, key=str):
        raise _fail(
            src, "source.checkpoints", f"folds {seen!r} do not match architecture.folds {list(folds)!r}"
        )
