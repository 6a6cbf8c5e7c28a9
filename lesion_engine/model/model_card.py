"""The model card (``model.json``) of a model artifact: its content, validation and where it is found.

An artifact is a folder with the weights (``model.safetensors``) and the model card (``model.json``).
The card says everything needed to rebuild and run the model, and what it is::

    {
      "format": "lesion-ai-model",
      "format_version": 1,
      "name": "...", "version": "...", "created": "2026-01-01T00:00:00+00:00",
      "architecture": {"localization": {...}, "classification": {...}},   # our U-Net, or with
                                         # "network": "picai-unet" the PI-CAI U-Net (LocalizationNetConfig)
      "preprocessing": {...},            # PreprocessConfig.to_dict(): the model grid, or "kind": "picai"
      "candidates": {...},               # CandidateConfig.to_dict()
      "label_map": {"cancer": "csPCa (ISUP >= 2)", "categories": [2, 3, 4, 5],
                    "zones": ["background", "peripheral zone", "transition zone"]},
      "training": {...},                 # free-form: data, commands, seeds
      "metrics": {...},                  # free-form
      "intended_use": "research and demonstration; not for diagnosis",
      "weights_sha256": "<sha256 of model.safetensors, hex>"
    }

This module imports neither torch nor numpy: the Orthanc plugin reads the card (:func:`model_identity`)
without loading the engine. Loading and saving the weights is :mod:`lesion_engine.model.artifact`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from lesion_engine.errors import ModelArtifactError
from lesion_engine.model.model_config import (
    CandidateConfig,
    ClassificationNetConfig,
    LocalizationNetConfig,
    PreprocessConfig,
)
from lesion_engine.model.picai_nnunet.card import NnunetModelCard, is_nnunet_card
from lesion_engine.model.picai_unet.card import DETECTION_KIND, DetectionModelCard

logger = logging.getLogger(__name__)

__all__ = [
    "CARD_FILE",
    "DEFAULT_LABEL_MAP",
    "FORMAT",
    "FORMAT_VERSION",
    "INTENDED_USE",
    "ONLY_SAFETENSORS",
    "PICKLE_SUFFIXES",
    "WEIGHTS_FILE",
    "AnyModelCard",
    "ModelCard",
    "artifact_folder",
    "default_artifact",
    "looks_like_pickle",
    "model_identity",
    "read_any_card",
    "read_card",
    "stored_card",
]

FORMAT = "lesion-ai-model"
FORMAT_VERSION = 1
CARD_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
INTENDED_USE = "research and demonstration; not for diagnosis"
DEFAULT_LABEL_MAP: dict[str, Any] = {
    "cancer": "csPCa (ISUP >= 2)",
    "categories": [2, 3, 4, 5],
    "zones": ["background", "peripheral zone", "transition zone"],
}
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".zip")
ONLY_SAFETENSORS = (
    "only safetensors model artifacts are accepted (a folder with model.json and model.safetensors, as "
    "written by the training export); pickle-based checkpoints can run arbitrary code when loaded and are "
    "refused. Export the model with the training package instead"
)
_REQUIRED = (
    "format",
    "format_version",
    "name",
    "version",
    "created",
    "architecture",
    "preprocessing",
    "candidates",
    "label_map",
    "intended_use",
    "weights_sha256",
)
_OBJECTS = ("training", "metrics")  # optional fields whose values are JSON objects
_OPTIONAL = (*_OBJECTS, "kind")
#: The kind of a jointly trained model (localization + classification networks): the default.
JOINT_KIND = "joint"


def looks_like_pickle(path: Path) -> bool:
    """Whether a file starts like a pickle (protocol >= 2) or a zip archive (torch.save's format)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _fail(source: Path, field_name: str, message: str) -> ModelArtifactError:
    return ModelArtifactError(f"invalid model card {source}: field '{field_name}': {message}")


@dataclass(frozen=True)
class ModelCard:
    """The validated content of ``model.json``.

    Attributes
    ----------
    name, version : str
        What the model is called and its version.
    created : str
        ISO 8601 time of export.
    localization, classification : network configurations
        Architecture of the two networks.
    preprocessing : PreprocessConfig
        How a study becomes the network input.
    candidates : CandidateConfig
        Candidate extraction settings.
    label_map : dict
        ``cancer`` (what the cancer output means), ``categories`` (suspicion category per classifier output)
        and ``zones`` (class names of the zonal head).
    training, metrics : dict
        Free-form records of how the model was trained and how it scored.
    intended_use : str
        What the model may be used for.
    weights_sha256 : str
        sha256 of ``model.safetensors``.
    format_version : int
        Version of the artifact format.
    """

    name: str
    version: str
    created: str
    localization: LocalizationNetConfig
    classification: ClassificationNetConfig
    preprocessing: PreprocessConfig
    candidates: CandidateConfig
    label_map: Mapping[str, Any]
    weights_sha256: str
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    intended_use: str = INTENDED_USE
    format_version: int = FORMAT_VERSION

    @property
    def categories(self) -> list[int]:
        """Suspicion category of each classifier category output."""
        return [int(c) for c in self.label_map["categories"]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``model.json``."""
        localization = self.localization.to_dict()
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "architecture": {"localization": localization, "classification": self.classification.to_dict()},
            "preprocessing": self.preprocessing.to_dict(),
            "candidates": self.candidates.to_dict(),
            "label_map": dict(self.label_map),
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "intended_use": self.intended_use,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_dict(cls, data: Any, source: Path | str = CARD_FILE) -> ModelCard:
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
        _check_kind(src, data)
        _check_fields(src, data)
        _check_format(src, data)
        sha = _check_identity(src, data)
        networks = _parse_networks(src, data)
        label_map = _check_label_map(src, data["label_map"], networks.classification, networks.localization)
        for key in _OBJECTS:
            if not isinstance(data.get(key, {}), dict):
                raise _fail(src, key, "must be an object")
        return cls(
            name=data["name"],
            version=data["version"],
            created=data["created"],
            localization=networks.localization,
            classification=networks.classification,
            preprocessing=networks.preprocessing,
            candidates=networks.candidates,
            label_map=label_map,
            weights_sha256=sha,
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            intended_use=data["intended_use"],
            format_version=int(data["format_version"]),
        )


def _check_kind(src: Path, data: dict[str, Any]) -> None:
    """Refuse a card whose ``kind`` is not a jointly trained model's.

    Parameters
    ----------
    src : Path
        The card file (for messages).
    data : dict
        The parsed card.

    Raises
    ------
    ModelArtifactError
        A detection-map model's card, or an unknown kind.
    """
    if data.get("kind", JOINT_KIND) == DETECTION_KIND:
        raise ModelArtifactError(
            f"{src} is a detection-map model (kind {DETECTION_KIND!r}, e.g. an imported PI-CAI U-Net): it "
            "has no classification network, so it cannot be used where a jointly trained model is needed "
            "(training export, resume); the engine and the node run it as it is"
        )
    if data.get("kind", JOINT_KIND) != JOINT_KIND:
        raise _fail(src, "kind", f"expected {JOINT_KIND!r} or {DETECTION_KIND!r}, got {data['kind']!r}")


def _check_fields(src: Path, data: dict[str, Any]) -> None:
    """Refuse a card that lacks a required field or has an unknown one.

    Parameters
    ----------
    src : Path
        The card file (for messages).
    data : dict
        The parsed card.

    Raises
    ------
    ModelArtifactError
        Naming the first missing or unknown field.
    """
    for key in _REQUIRED:
        if key not in data:
            raise _fail(src, key, "missing")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise _fail(src, unknown[0], f"unknown field (known: {', '.join(_REQUIRED + _OPTIONAL)})")


def _check_format(src: Path, data: dict[str, Any]) -> None:
    """Refuse a card of another format, or of another version of this format.

    Parameters
    ----------
    src : Path
        The card file (for messages).
    data : dict
        The parsed card.

    Raises
    ------
    ModelArtifactError
        Naming ``format`` or ``format_version``.
    """
    if data["format"] != FORMAT:
        raise _fail(src, "format", f"expected {FORMAT!r}, got {data['format']!r}")
    if type(data["format_version"]) is not int or data["format_version"] != FORMAT_VERSION:
        raise _fail(
            src,
            "format_version",
            f"this engine reads version {FORMAT_VERSION}, got {data['format_version']!r}; "
            "use a matching engine release or re-export the model",
        )


def _check_identity(src: Path, data: dict[str, Any]) -> str:
    """Check the texts that say what the model is, its export time and its weights' sha256.

    Parameters
    ----------
    src : Path
        The card file (for messages).
    data : dict
        The parsed card.

    Returns
    -------
    str
        ``weights_sha256``.

    Raises
    ------
    ModelArtifactError
        Naming the field that is wrong.
    """
    for key in ("name", "version", "created", "intended_use"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise _fail(src, key, f"must be a non-empty string, got {data[key]!r}")
    try:
        datetime.fromisoformat(data["created"])
    except ValueError:
        raise _fail(src, "created", f"not an ISO 8601 time: {data['created']!r}") from None
    sha = data["weights_sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _fail(src, "weights_sha256", f"must be 64 lower-case hex digits, got {sha!r}")
    return sha


@dataclass(frozen=True)
class _Networks:
    """The configurations a card gives for building and running the networks."""

    localization: LocalizationNetConfig
    classification: ClassificationNetConfig
    preprocessing: PreprocessConfig
    candidates: CandidateConfig


def _parse_networks(src: Path, data: dict[str, Any]) -> _Networks:
    """The card's architecture, preprocessing and candidate settings, checked against each other.

    Parameters
    ----------
    src : Path
        The card file (for messages).
    data : dict
        The parsed card.

    Returns
    -------
    _Networks

    Raises
    ------
    ModelArtifactError
        Naming the field that is missing, wrong, or does not fit the others.
    """
    architecture = data["architecture"]
    if not isinstance(architecture, dict):
        raise _fail(src, "architecture", "must be an object with 'localization' and 'classification'")
    localization = _parse(
        src, "architecture.localization", architecture.get("localization"), LocalizationNetConfig
    )
    classification = _parse(
        src, "architecture.classification", architecture.get("classification"), ClassificationNetConfig
    )
    preprocessing = _parse(src, "preprocessing", data["preprocessing"], PreprocessConfig)
    candidates = _parse(src, "candidates", data["candidates"], CandidateConfig)
    if classification.in_channels != localization.in_channels + 1:
        raise _fail(
            src,
            "architecture.classification.in_channels",
            f"must be the localization input channels + 1 (the map) = {localization.in_channels + 1}, "
            f"got {classification.in_channels}",
        )
    divisor = localization.divisor
    if any(s % d for s, d in zip(preprocessing.size_zyx, divisor, strict=True)):
        raise _fail(
            src,
            "preprocessing.size_zyx",
            f"{list(preprocessing.size_zyx)} must be a multiple of the network's divisor {list(divisor)}",
        )
    return _Networks(localization, classification, preprocessing, candidates)


def _parse(src: Path, name: str, value: Any, kind: Any) -> Any:
    if not isinstance(value, dict):
        raise _fail(src, name, f"must be an object, got {type(value).__name__}")
    try:
        return kind.from_dict(value)
    except KeyError as exc:
        raise _fail(src, f"{name}.{exc.args[0]}", "missing") from None
    except (TypeError, ValueError, IndexError) as exc:
        raise _fail(src, name, str(exc)) from None


def _check_label_map(
    src: Path, value: Any, classification: ClassificationNetConfig, localization: LocalizationNetConfig
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(src, "label_map", "must be an object")
    for key in ("cancer", "categories", "zones"):
        if key not in value:
            raise _fail(src, f"label_map.{key}", "missing")
    categories = value["categories"]
    if (
        not isinstance(categories, list)
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in categories)
        or len(set(categories)) != len(categories)
    ):
        raise _fail(src, "label_map.categories", f"must be a list of distinct integers, got {categories!r}")
    if len(categories) != classification.num_categories:
        raise _fail(
            src,
            "label_map.categories",
            f"{len(categories)} categories for a classifier with {classification.num_categories} outputs",
        )
    zones = value["zones"]
    if not isinstance(zones, list) or not all(isinstance(z, str) for z in zones):
        raise _fail(src, "label_map.zones", f"must be a list of strings, got {zones!r}")
    if localization.num_zones and len(zones) != localization.num_zones:
        raise _fail(
            src,
            "label_map.zones",
            f"{len(zones)} zone names for a zonal head with {localization.num_zones} classes",
        )
    return dict(value)


def artifact_folder(path: Path | str) -> Path:
    """The artifact folder for a folder, its ``model.json`` or its ``model.safetensors``.

    Raises
    ------
    ModelArtifactError
        The path does not exist, is a pickle or zip file (refused), or is not an artifact.
    """
    target = Path(path)
    if target.is_dir():
        if not (target / CARD_FILE).is_file():
            pickles = sorted(p.name for p in target.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if pickles:
                raise ModelArtifactError(
                    f"{target} holds {', '.join(pickles)} but no {CARD_FILE}: {ONLY_SAFETENSORS}"
                )
            raise ModelArtifactError(
                f"{target} is not a model artifact: it has no {CARD_FILE} (an artifact is a folder with "
                f"{CARD_FILE} and {WEIGHTS_FILE})"
            )
        return target
    if not target.exists():
        raise ModelArtifactError(f"model artifact not found: {target}")
    if target.suffix.lower() in PICKLE_SUFFIXES or looks_like_pickle(target):
        raise ModelArtifactError(f"{target} is a pickle or zip file: {ONLY_SAFETENSORS}")
    if target.name in (CARD_FILE, WEIGHTS_FILE):
        return target.parent
    raise ModelArtifactError(
        f"{target} is not a model artifact: pass the artifact folder or its {CARD_FILE} "
        f"(an artifact is a folder with {CARD_FILE} and {WEIGHTS_FILE})"
    )


AnyModelCard = ModelCard | DetectionModelCard | NnunetModelCard
"""The card of a jointly trained model or of a detection-map model (an imported PI-CAI U-Net or nnU-Net)."""

#: A model card larger than this is refused (a card is read per request and per job).
MAX_CARD_BYTES = 1 << 20
#: Longest text value of a card, and of its name and version (they appear in every job and result).
MAX_CARD_TEXT = 4096
MAX_NAME_TEXT = 128


def read_card(path: Path | str) -> ModelCard:
    """Read and validate the model card of a jointly trained model (the folder, or its ``model.json``).

    Raises
    ------
    ModelArtifactError
        The card is missing or invalid, or it is a detection-map model's (see :func:`read_any_card`).
    """
    folder = artifact_folder(path)
    return ModelCard.from_dict(_card_data(folder / CARD_FILE), folder / CARD_FILE)


def read_any_card(path: Path | str) -> AnyModelCard:
    """Read and validate the model card of any kind of model: a jointly trained model's
    (:class:`ModelCard`) or a detection-map model's
    (:class:`~lesion_engine.model.picai_unet.card.DetectionModelCard`, or
    :class:`~lesion_engine.model.picai_nnunet.card.NnunetModelCard` for an imported nnU-Net), as its ``kind`` and
    network say."""
    folder = artifact_folder(path)
    data = _card_data(folder / CARD_FILE)
    if is_nnunet_card(data):
        return NnunetModelCard.from_dict(data, folder / CARD_FILE)
    if isinstance(data, dict) and data.get("kind") == DETECTION_KIND:
        return DetectionModelCard.from_dict(data, folder / CARD_FILE)
    return ModelCard.from_dict(data, folder / CARD_FILE)


def _card_data(card_path: Path) -> Any:
    try:
        with card_path.open("rb") as handle:
            raw = handle.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise ModelArtifactError(f"cannot read the model card {card_path}: {exc}") from exc
    if len(raw) > MAX_CARD_BYTES:
        raise ModelArtifactError(f"the model card {card_path} is larger than {MAX_CARD_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelArtifactError(f"cannot read the model card {card_path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelArtifactError(f"the model card {card_path} is not valid JSON: {exc}") from exc
    _check_texts(card_path, data, "")
    return data


def _check_texts(card_path: Path, value: Any, where: str) -> None:
    """Every text of a card (keys too) is at most :data:`MAX_CARD_TEXT` characters without NUL; its name and
    version at most :data:`MAX_NAME_TEXT`."""
    if isinstance(value, str):
        limit = MAX_NAME_TEXT if where in ("name", "version") else MAX_CARD_TEXT
        if len(value) > limit or "\x00" in value:
            raise _fail(
                card_path, where or "(top)", f"text longer than {limit} characters, or with a NUL character"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_texts(card_path, key, where)
            _check_texts(card_path, item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_texts(card_path, item, f"{where}[{index}]")


def default_artifact() -> Path:
    """Folder of the engine's packaged default model (found without importing the engine)."""
    return Path(str(files("lesion_engine").joinpath("data/models/default")))


def stored_card(model: str | Path | None) -> dict[str, Any] | None:
    """The card of an artifact as stored (read, not validated; no torch): ``model`` is the artifact folder
    or its card file (None: the packaged default). None when it cannot be read (logged at debug level)."""
    folder = Path(model) if model else default_artifact()
    card = folder / CARD_FILE if folder.is_dir() else folder
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.debug("the model card %s cannot be read: %s", card, exc)
        return None
    return data if isinstance(data, dict) else None


def model_identity(model: str | None, processor: str | None = None, override: str | None = None) -> str:
    """Identity of the model a job will use, without loading it (no torch): part of each job's key.

    The card is read as it is, not validated: an artifact whose card cannot be read has the identity
    ``none``.

    Parameters
    ----------
    model : str or None
        Model artifact folder, or its card file (None: the packaged default).
    processor : str or None
        A non-default processor: its name is the identity.
    override : str or None
        An explicit identity (configuration ``ModelIdentity``).

    Returns
    -------
    str
        ``override`` when given; else ``processor:<processor>`` when a processor is named; else
        ``name:version:sha256-prefix`` (the first 16 hex digits of ``weights_sha256``) from the artifact's
        card, or ``none`` when no card can be read.
    """
    if override:
        return override
    if processor:
        return f"processor:{processor}"
    data = stored_card(model)
    if data is None:
        return "none"
    return f"{data.get('name', '?')}:{data.get('version', '?')}:{str(data.get('weights_sha256', ''))[:16]}"
