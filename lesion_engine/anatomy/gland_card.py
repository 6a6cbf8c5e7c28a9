"""The card (JSON) of the whole-gland segmentation model: where the model comes from and how to feed it.

The gland model is not ours: it is the ONNX SegResNetDS of the ``lavlab-taps`` package (MIT), trained on
real T2-weighted MR by its authors. Its file stays in that installed package (it is not copied into this
repository); our card, ``lesion_engine/data/gland_model.json``, says its origin (package, version, URL), its
licence, its training data as its authors state it, its input conventions and the sha256 of the ONNX file,
which :func:`resolve_weights` checks before the file is used (a changed or different file is refused).

This module imports neither torch nor ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from lesion_engine.errors import ModelArtifactError

logger = logging.getLogger(__name__)

__all__ = [
    "GLAND_CARD_FORMAT",
    "GLAND_PRECISIONS",
    "GLAND_RUNTIMES",
    "GlandCard",
    "GlandModelError",
    "default_gland_card",
    "read_gland_card",
    "resolve_weights",
]

GLAND_CARD_FORMAT = "lesion-ai-gland-model"
#: What may run the gland network (``GlandSettings.runtime``, the node's ``GlandRuntime``).
GLAND_RUNTIMES = ("auto", "torch", "onnxruntime")
#: The arithmetic of the gland network in torch (``GlandSettings.precision``, the node's ``GlandPrecision``).
GLAND_PRECISIONS = ("auto", "float32", "bfloat16")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class GlandModelError(ModelArtifactError):
    """The gland model cannot be used: card invalid, package or file missing, sha256 mismatch, or the
    runtime (ONNX Runtime) missing or failing. The message says what is wrong and how to fix it."""


def default_gland_card() -> Path:
    """Where the packaged gland card lives."""
    return Path(str(files("lesion_engine") / "data" / "gland_model.json"))


def _text(data: Mapping[str, Any], key: str, source: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise GlandModelError(f"invalid gland card {source}: field '{key}' must be a non-empty string")
    return value


def _section(data: Mapping[str, Any], key: str, source: Path) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise GlandModelError(f"invalid gland card {source}: field '{key}' must be an object")
    return value


def _triple(data: Mapping[str, Any], key: str, source: Path, kind: type) -> tuple[Any, Any, Any]:
    value = data.get(key)
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
        or not all(float(v) > 0 for v in value)
    ):
        raise GlandModelError(
            f"invalid gland card {source}: field 'input.{key}' must be three positive {kind.__name__}s"
        )
    return (value[0], value[1], value[2])


@dataclass(frozen=True)
class GlandCard:
    """The validated content of a gland card.

    Attributes
    ----------
    name, version : str
        What the model is called and its version.
    origin : dict
        ``package``, ``version``, ``url`` (and more) of where the model comes from.
    licence : str
        The model's licence.
    training_data : str
        The training data, as the model's authors state it.
    weights_package : str or None
        The installed distribution that holds the ONNX file; None when ``weights_path`` is relative to the
        card's folder.
    weights_path : str
        The ONNX file's path inside that distribution (or beside the card).
    weights_sha256 : str
        sha256 of the ONNX file, hex.
    spacing_xyz_mm : (float, float, float)
        Voxel spacing of the model's input along its RAS axes.
    window_xyz : (int, int, int)
        The window the engine feeds the model first, in voxels (multiples of 8), at the centre of the T2W's
        field of view.
    recentre_window_xyz : (int, int, int)
        The window of the second run, centred on the gland found, when the gland touches the first
        window's side (at least ``window_xyz``; ``window_xyz`` when the card names none).
    blur_sigma_voxels : float
        Gaussian blur of the logits before thresholding (the authors' post-processing).
    threshold : float
        Foreground probability threshold.
    source : Path
        The card file.
    """

    name: str
    version: str
    origin: dict[str, Any]
    licence: str
    training_data: str
    weights_package: str | None
    weights_path: str
    weights_sha256: str
    spacing_xyz_mm: tuple[float, float, float]
    window_xyz: tuple[int, int, int]
    recentre_window_xyz: tuple[int, int, int]
    blur_sigma_voxels: float
    threshold: float
    source: Path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path) -> GlandCard:
        """Validate a card's JSON content.

        Raises
        ------
        GlandModelError
            Naming the card and the field that is wrong.
        """
        if data.get("format") != GLAND_CARD_FORMAT or data.get("format_version") != 1:
            raise GlandModelError(
                f"invalid gland card {source}: expected format '{GLAND_CARD_FORMAT}' version 1, "
                f"got {data.get('format')!r} version {data.get('format_version')!r}"
            )
        origin = _section(data, "origin", source)
        for key in ("package", "version", "url"):
            _text(origin, key, source)
        weights = _section(data, "weights", source)
        sha = _text(weights, "sha256", source)
        if not _SHA256.match(sha):
            raise GlandModelError(
                f"invalid gland card {source}: field 'weights.sha256' must be 64 hex digits"
            )
        package = weights.get("package")
        if package is not None and (not isinstance(package, str) or not package):
            raise GlandModelError(
                f"invalid gland card {source}: field 'weights.package' must be a name or null"
            )
        inputs = _section(data, "input", source)
        spacing = _triple(inputs, "spacing_xyz_mm", source, float)
        window = _triple(inputs, "window_xyz", source, int)
        recentre = (
            _triple(inputs, "recentre_window_xyz", source, int)
            if inputs.get("recentre_window_xyz") is not None
            else window
        )
        for key, size in (("window_xyz", window), ("recentre_window_xyz", recentre)):
            if any(w % 8 for w in size):
                raise GlandModelError(
                    f"invalid gland card {source}: field 'input.{key}' must be multiples of 8 (the network "
                    f"halves the grid three times), got {list(size)}"
                )
        if any(r < w for r, w in zip(recentre, window, strict=True)):
            raise GlandModelError(
                f"invalid gland card {source}: field 'input.recentre_window_xyz' {list(recentre)} must be at "
                f"least 'input.window_xyz' {list(window)} along each axis"
            )
        output = _section(data, "output", source)
        sigma = output.get("logit_blur_sigma_voxels")
        threshold = output.get("threshold")
        if not isinstance(sigma, int | float) or isinstance(sigma, bool) or sigma < 0:
            raise GlandModelError(
                f"invalid gland card {source}: field 'output.logit_blur_sigma_voxels' must be a number >= 0"
            )
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 < threshold < 1:
            raise GlandModelError(f"invalid gland card {source}: field 'output.threshold' must be in (0, 1)")
        return cls(
            name=_text(data, "name", source),
            version=_text(data, "version", source),
            origin=dict(origin),
            licence=_text(data, "licence", source),
            training_data=_text(data, "training_data", source),
            weights_package=package,
            weights_path=_text(weights, "path", source),
            weights_sha256=sha,
            spacing_xyz_mm=spacing,
            window_xyz=window,
            recentre_window_xyz=recentre,
            blur_sigma_voxels=float(sigma),
            threshold=float(threshold),
            source=source,
        )

    def to_dict(self) -> dict[str, str]:
        """``name``, ``version``, ``sha256`` and ``licence``: the gland model's identity in results and logs."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.weights_sha256,
            "licence": self.licence,
        }


def read_gland_card(path: Path | str | None = None) -> GlandCard:
    """Read and validate a gland card (the packaged one when ``path`` is None).

    Raises
    ------
    GlandModelError
        The card is missing, not JSON, or invalid (the message names the field).
    """
    source = Path(path) if path is not None else default_gland_card()
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GlandModelError(f"gland card not found: {source}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlandModelError(f"gland card {source} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise GlandModelError(f"invalid gland card {source}: the document must be a JSON object")
    return GlandCard.from_dict(data, source)


def resolve_weights(card: GlandCard) -> bytes:
    """The ONNX model's bytes, after checking their sha256 against the card.

    The file is found in the installed distribution the card names (without importing it), or beside the
    card when the card names no package.

    Raises
    ------
    GlandModelError
        The package or the file is missing (the message says how to install it), or the file's sha256
        differs from the card's.
    """
    if card.weights_package is None:
        path = card.source.parent / card.weights_path
    else:
        try:
            distribution = importlib.metadata.distribution(card.weights_package)
        except importlib.metadata.PackageNotFoundError as exc:
            raise GlandModelError(
                f"the gland model's package '{card.weights_package}' is not installed: install it with "
                f"`pip install {card.weights_package}=={card.origin['version']}` (it is a dependency of "
                "lesion-ai: `make setup` installs it)"
            ) from exc
        path = Path(str(distribution.locate_file(card.weights_path)))
        installed = distribution.version
        if installed != card.origin["version"]:
            logger.warning(
                "gland model package %s is version %s, the card %s describes %s",
                card.weights_package,
                installed,
                card.source,
                card.origin["version"],
            )
    if not path.is_file():
        raise GlandModelError(f"the gland model file {path} (named by {card.source}) is missing")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != card.weights_sha256:
        raise GlandModelError(
            f"the gland model file {path} has sha256 {actual}, but its card {card.source} says "
            f"{card.weights_sha256}: the file was changed or is another version. Reinstall "
            f"{card.weights_package or 'the model'} at the card's version, or update the card"
        )
    return data
