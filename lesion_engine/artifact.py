"""Model artifacts: a folder with the weights (``model.safetensors``) and the model card (``model.json``).

The card says everything needed to rebuild and run the model, and what it is::

    {
      "format": "lesion-ai-model",
      "format_version": 1,
      "name": "...", "version": "...", "created": "2026-01-01T00:00:00+00:00",
      "architecture": {"localization": {...}, "classification": {...}},
      "preprocessing": {...},            # PreprocessConfig.to_dict()
      "candidates": {...},               # CandidateConfig.to_dict()
      "label_map": {"cancer": "csPCa (ISUP >= 2)", "categories": [2, 3, 4, 5],
                    "zones": ["background", "peripheral zone", "transition zone"]},
      "training": {...},                 # free-form: data, commands, seeds
      "metrics": {...},                  # free-form
      "intended_use": "research and demonstration; not for diagnosis",
      "weights_sha256": "<sha256 of model.safetensors, hex>"
    }

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lesion_engine.candidates import CandidateConfig
from lesion_engine.errors import ModelArtifactError
from lesion_engine.model_input import PreprocessConfig
from lesion_engine.networks import ClassificationNetConfig, JointModel, LocalizationNetConfig

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
_ONLY_SAFETENSORS = (
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
_OPTIONAL = ("training", "metrics")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_pickle(path: Path) -> bool:
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
        for key in _REQUIRED:
            if key not in data:
                raise _fail(src, key, "missing")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise _fail(src, unknown[0], f"unknown field (known: {', '.join(_REQUIRED + _OPTIONAL)})")
        if data["format"] != FORMAT:
            raise _fail(src, "format", f"expected {FORMAT!r}, got {data['format']!r}")
        if type(data["format_version"]) is not int or data["format_version"] != FORMAT_VERSION:
            raise _fail(
                src,
                "format_version",
                f"this engine reads version {FORMAT_VERSION}, got {data['format_version']!r}; "
                "use a matching engine release or re-export the model",
            )
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
        label_map = _check_label_map(src, data["label_map"], classification, localization)
        for key in _OPTIONAL:
            if not isinstance(data.get(key, {}), dict):
                raise _fail(src, key, "must be an object")
        return cls(
            name=data["name"],
            version=data["version"],
            created=data["created"],
            localization=localization,
            classification=classification,
            preprocessing=preprocessing,
            candidates=candidates,
            label_map=label_map,
            weights_sha256=sha,
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            intended_use=data["intended_use"],
            format_version=int(data["format_version"]),
        )


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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, write: Any) -> None:
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
    labels = dict(label_map) if label_map is not None else dict(DEFAULT_LABEL_MAP)
    if label_map is None and model.loc.config.num_zones == 0:
        labels["zones"] = []
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
    try:
        text = json.dumps(card_data)
    except (TypeError, ValueError) as exc:
        raise ModelArtifactError(f"the training or metrics record is not JSON-ready: {exc}") from exc
    ModelCard.from_dict(json.loads(text), out / CARD_FILE)  # validate before writing anything
    tensors = {
        key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()
    }
    weights = out / WEIGHTS_FILE
    _write_atomic(weights, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    card_data["weights_sha256"] = file_sha256(weights)
    card = ModelCard.from_dict(card_data, out / CARD_FILE)
    _write_atomic(out / CARD_FILE, lambda p: p.write_text(json.dumps(card.to_dict(), indent=2) + "\n"))
    logger.info("model %s %s written to %s (sha256 %s)", name, version, out, card.weights_sha256)
    return out


def _resolve(path: Path | str) -> Path:
    """The artifact folder for a folder, its model.json or its model.safetensors; refuse anything else."""
    target = Path(path)
    if target.is_dir():
        if not (target / CARD_FILE).is_file():
            pickles = sorted(p.name for p in target.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if pickles:
                raise ModelArtifactError(
                    f"{target} holds {', '.join(pickles)} but no {CARD_FILE}: {_ONLY_SAFETENSORS}"
                )
            raise ModelArtifactError(
                f"{target} is not a model artifact: it has no {CARD_FILE} (an artifact is a folder with "
                f"{CARD_FILE} and {WEIGHTS_FILE})"
            )
        return target
    if not target.exists():
        raise ModelArtifactError(f"model artifact not found: {target}")
    if target.suffix.lower() in PICKLE_SUFFIXES or _looks_like_pickle(target):
        raise ModelArtifactError(f"{target} is a pickle or zip file: {_ONLY_SAFETENSORS}")
    if target.name in (CARD_FILE, WEIGHTS_FILE):
        return target.parent
    raise ModelArtifactError(
        f"{target} is not a model artifact: pass the artifact folder or its {CARD_FILE} "
        f"(an artifact is a folder with {CARD_FILE} and {WEIGHTS_FILE})"
    )


def read_card(path: Path | str) -> ModelCard:
    """Read and validate the model card of an artifact (the folder, or its ``model.json``)."""
    return _read_card(_resolve(path))


def _read_card(folder: Path) -> ModelCard:
    card_path = folder / CARD_FILE
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"cannot read the model card {card_path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelArtifactError(f"the model card {card_path} is not valid JSON: {exc}") from exc
    return ModelCard.from_dict(data, card_path)


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
    folder = _resolve(path)
    card = _read_card(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        others = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = f" (found {', '.join(others)}: {_ONLY_SAFETENSORS})" if others else ""
        raise ModelArtifactError(f"model weights not found: {weights}{hint}")
    if _looks_like_pickle(weights):
        raise ModelArtifactError(f"{weights} is a pickle or zip file, not safetensors: {_ONLY_SAFETENSORS}")
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
