"""Import the PI-CAI nnU-Net's fold checkpoints (nnU-Net v1 ``model_best.model`` + ``.pkl``, ``plans.pkl``).

The model folder is ``results/nnUNet/3d_fullres/Task2203_picai_baseline/<trainer>__nnUNetPlansv2.1/`` of
``picai_nnunet_semi_supervised_gc_algorithm``: ``plans.pkl`` and ``fold_<k>/<checkpoint>.model`` (``torch.save``
of the state dict, the optimizer's state and training curves) with ``fold_<k>/<checkpoint>.model.pkl`` (a plain
pickle: the trainer's name and arguments and the plans, which inference uses).

Nothing is read by general unpickling (:mod:`lesion_engine.model.picai_nnunet.unpickle`): the plain pickles by a
restricted unpickler that allows numpy arrays and scalars, ``numpy.dtype`` and ``OrderedDict`` only, the
checkpoints by ``torch.load(weights_only=True)`` with those numpy globals added. Each fold's network tensors
are checked against :class:`~lesion_engine.model.picai_nnunet.network.GenericUNet` built from its plans (names,
shapes, finite float32); all folds must have the same plans. The artifact is ``model.safetensors`` (tensors
``fold<k>.<name>``), ``model.json`` (:class:`~lesion_engine.model.picai_nnunet.card.NnunetModelCard`) and
``MODEL_CARD.md``. The node only ever loads the artifact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lesion_engine.errors import CheckpointImportError
from lesion_engine.model.artifact import file_sha256, write_atomic
from lesion_engine.model.model_card import CARD_FILE, INTENDED_USE, WEIGHTS_FILE
from lesion_engine.model.picai_nnunet.card import NnunetArchitecture, NnunetModelCard
from lesion_engine.model.picai_nnunet.config import NnunetPipeline
from lesion_engine.model.picai_nnunet.network import GenericUNet
from lesion_engine.model.picai_nnunet.plans import NnunetPlans, plans_from_pickles
from lesion_engine.model.picai_nnunet.unpickle import (
    MALFORMED_PICKLE_ERRORS,
    RefusedPickleError,
    load_restricted_pickle,
    load_torch_checkpoint,
)
from lesion_engine.model.picai_unet.card import DETECTION_FORMAT_VERSION, DETECTION_KIND

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "PICAI_NNUNET_SOURCE",
    "PUBLISHED_FILES",
    "import_picai_nnunet",
    "read_fold",
]

MAX_CHECKPOINT_BYTES = 2 << 30
"""A fold checkpoint larger than this is refused (a published one is 358,653,454 bytes)."""
DEFAULT_FOLDS = (0, 1, 2, 3, 4)
DEFAULT_CHECKPOINT = "model_best"
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_PUBLISHED_RELEASE = "DIAGNijmegen/picai_nnunet_semi_supervised_gc_algorithm at commit 6129f7e"
#: The published files (git-lfs objects of the algorithm repository): sha256 -> path under the model folder.
PUBLISHED_FILES: dict[str, str] = {
    "66ca93a14c4eebe98dfe72c4d8b7303a843b100f25fb6c5b1a18ef892c527db0": "fold_0/model_best.model",
    "0dfb583e815c32a92ff709e49983829c984e96450ba1468b396a2a12496871e1": "fold_0/model_best.model.pkl",
    "b76f3f1213bf1dc85b58257b641c58ae5d712d934f863349b92d03e1b148b7bc": "fold_1/model_best.model",
    "026f5c46a6247983465a42db48e9999f5611491264de6890fa96bf9ee42d75b5": "fold_1/model_best.model.pkl",
    "d680803471f151250cbb8aa6caa6794ea6bf80071cd0f4270ae54a6e55e35783": "fold_2/model_best.model",
    "e9a9ebe4b7e37762f40df3e569b77106ebbe565db18c43af9874fa59bf915a41": "fold_2/model_best.model.pkl",
    "beb7317306d1f8808b3e1a5a091f5798c44cdc3fff82c4269d4ad3ac4a6aa3da": "fold_3/model_best.model",
    "314446a8e50fedac0c44cd6dcc5808a00722d018b169be29999d9b4d9990a001": "fold_3/model_best.model.pkl",
    "deb6ea6870a4b8835be852cc56dbad3bead2417a3c2173a7fcdb0f136c5eadc9": "fold_4/model_best.model",
    "4e69e8e837ed84f08056b365a013b44192faaad80d163d697c7c830db90223f8": "fold_4/model_best.model.pkl",
    "2fe49c3272eb8cceef401b44f5c140a8f7b1d7e65d6b70393e2c867951d8669b": "plans.pkl",
}
PICAI_NNUNET_SOURCE: dict[str, Any] = {
    "origin": (
        "https://github.com/DIAGNijmegen/picai_nnunet_semi_supervised_gc_algorithm (results/nnUNet/3d_fullres/"
        "Task2203_picai_baseline/nnUNetTrainerV2_Loss_FL_and_CE_checkpoints__nnUNetPlansv2.1, git-lfs)"
    ),
    "algorithm": "PI-CAI baseline: nnU-Net, semi-supervised (picai_baseline, nnU-Net track; nnunet 1.7.0)",
    "licence": (
        "CC BY-NC-SA 4.0 (results/LICENSE of the repository): non-commercial use only; the inference code is "
        "Apache-2.0"
    ),
    "reference_pipeline": "process.py of the same repository (csPCaAlgorithm.process, nnUNet_predict)",
}
PICAI_NNUNET_TRAINING: dict[str, Any] = {
    "as_stated_by": "the PI-CAI organisers (the algorithm's README; picai_baseline)",
    "data": (
        "PI-CAI Public Training and Development dataset v2.0: 1,500 bpMRI studies, human-annotated or AI-derived "
        "ISUP >= 2 delineations (picai_labels); 5-fold cross-validation"
    ),
    "not_measured_here": "accuracy on real patients: no real data is available to this project",
}


_READ_ERRORS: tuple[type[BaseException], ...] = (*MALFORMED_PICKLE_ERRORS, OSError)


def _refuse(where: str, message: str) -> CheckpointImportError:
    return CheckpointImportError(f"{where}: {message}")


def _check_file(path: Path, where: str) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(len(_LFS_POINTER))
    except OSError as exc:
        raise _refuse(where, f"{path.name} cannot be read: {exc.strerror or exc}") from None
    if size == 0:
        raise _refuse(where, f"{path.name} is empty")
    if size > MAX_CHECKPOINT_BYTES:
        raise _refuse(where, f"{path.name} is {size} bytes, more than the {MAX_CHECKPOINT_BYTES} accepted")
    if head == _LFS_POINTER:
        raise _refuse(
            where, f"{path.name} is a git-lfs pointer, not the file: run `git lfs pull` in the repository"
        )


def _plain(path: Path, where: str) -> Any:
    _check_file(path, where)
    try:
        return load_restricted_pickle(path)
    except RefusedPickleError as exc:
        raise _refuse(where, f"{path.name} {exc}") from None
    except _READ_ERRORS as exc:
        raise _refuse(
            where, f"{path.name} is truncated or not a plain pickle ({type(exc).__name__}: {exc})"
        ) from None


def read_fold(
    folder: Path, fold: int, checkpoint: str = DEFAULT_CHECKPOINT
) -> tuple[NnunetPlans, dict[str, torch.Tensor]]:
    """One fold's plans (from ``<checkpoint>.model.pkl``) and network tensors (from ``<checkpoint>.model``).

    Raises
    ------
    CheckpointImportError
        Missing, truncated or refused files, unsupported plans, tensors that do not fit (naming the fold).
    """
    where = f"fold {fold}"
    fold_dir = folder / f"fold_{fold}"
    model = fold_dir / f"{checkpoint}.model"
    info_path = fold_dir / f"{checkpoint}.model.pkl"
    for path in (model, info_path):
        if not path.is_file():
            raise _refuse(where, f"{path.relative_to(folder)} is missing")
    try:
        plans = plans_from_pickles(_plain(info_path, where))
    except ValueError as exc:
        raise _refuse(where, f"{info_path.name}: {exc}") from None
    _check_file(model, where)
    try:
        data = load_torch_checkpoint(model)
    except RefusedPickleError as exc:
        raise _refuse(where, f"{model.name} {exc}") from None
    except _READ_ERRORS as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _refuse(where, f"{model.name} is truncated or not a torch checkpoint ({first})") from None
    state = data.get("state_dict") if isinstance(data, Mapping) else None
    if not isinstance(state, Mapping):
        raise _refuse(where, f"{model.name} has no 'state_dict' (not an nnU-Net v1 checkpoint)")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    expected = GenericUNet(plans).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise _refuse(
            where,
            f"{model.name} does not fit the network of its plans: "
            + "; ".join(
                [f"missing {', '.join(missing[:4])}"] * bool(missing)
                + [f"unexpected {', '.join(unexpected[:4])}"] * bool(unexpected)
            ),
        )
    tensors: dict[str, torch.Tensor] = {}
    for key, reference in expected.items():
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in (torch.float32, torch.float16):
            raise _refuse(where, f"tensor {key} is not a float32 tensor")
        if tuple(tensor.shape) != tuple(reference.shape):
            raise _refuse(
                where, f"tensor {key} has shape {list(tensor.shape)}, the plans give {list(reference.shape)}"
            )
        tensor = tensor.detach().to(torch.float32).contiguous()
        if not bool(torch.isfinite(tensor).all()):
            raise _refuse(where, f"tensor {key} has non-finite values")
        tensors[key] = tensor
    return plans, tensors


def _wanted_folds(folder: Path, folds: Sequence[int]) -> list[int]:
    """The folds to import, checked to be distinct numbers 0..99, from an existing model folder.

    Parameters
    ----------
    folder : Path
        The nnU-Net model folder.
    folds : sequence of int
        The folds asked for.

    Returns
    -------
    list of int

    Raises
    ------
    CheckpointImportError
        ``folder`` is not a folder, or the folds are not distinct numbers 0..99.
    """
    if not folder.is_dir():
        raise CheckpointImportError(
            f"{folder} is not a folder (expected the nnU-Net model folder with plans.pkl)"
        )
    wanted = list(folds)
    if not wanted or len(set(wanted)) != len(wanted) or any(not 0 <= f < 100 for f in wanted):
        raise CheckpointImportError(f"folds must be distinct numbers 0..99, got {wanted!r}")
    return wanted


def _read_plans_file(folder: Path) -> tuple[Path, Any]:
    """The model folder's ``plans.pkl``: its path and its (restricted-unpickled) content.

    Parameters
    ----------
    folder : Path
        The nnU-Net model folder.

    Returns
    -------
    path : Path
    content : object

    Raises
    ------
    CheckpointImportError
        The file is missing, unreadable or refused.
    """
    plans_path = folder / "plans.pkl"
    if not plans_path.is_file():
        raise CheckpointImportError(f"{folder} has no plans.pkl: not an nnU-Net v1 model folder")
    return plans_path, _plain(plans_path, "plans.pkl")


def _read_folds(
    folder: Path, wanted: list[int], checkpoint: str
) -> tuple[NnunetPlans, dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Every wanted fold's plans (the same for all), tensors (named ``fold<k>.<name>``) and source files.

    Parameters
    ----------
    folder : Path
        The nnU-Net model folder.
    wanted : list of int
        The folds to read (at least one).
    checkpoint : str
        The checkpoint's name.

    Returns
    -------
    plans : NnunetPlans
    tensors : dict of str to Tensor
    sources : list of dict
        The record of each fold's ``.model`` and ``.model.pkl`` (:func:`_source_entry`).

    Raises
    ------
    CheckpointImportError
        A fold is refused or does not fit, or its plans differ from the first fold's.
    """
    tensors: dict[str, torch.Tensor] = {}
    plans: NnunetPlans | None = None
    sources = []
    for fold in wanted:
        fold_plans, fold_tensors = read_fold(folder, fold, checkpoint)
        if plans is not None and fold_plans != plans:
            raise CheckpointImportError(f"fold {fold}: its plans differ from fold {wanted[0]}'s")
        plans = fold_plans
        for key, tensor in fold_tensors.items():
            tensors[f"fold{fold}.{key}"] = tensor
        for path in (
            folder / f"fold_{fold}" / f"{checkpoint}.model",
            folder / f"fold_{fold}" / f"{checkpoint}.model.pkl",
        ):
            sources.append(_source_entry(path, folder, fold))
        logger.info("fold %d read from %s", fold, folder / f"fold_{fold}")
    assert plans is not None
    return plans, tensors, sources


def _check_plans_file(plans_file: Any, plans: NnunetPlans) -> None:
    """Refuse a ``plans.pkl`` whose number of modalities is not the folds' (``nnUNet_predict`` reads it).

    Parameters
    ----------
    plans_file : object
        The unpickled ``plans.pkl``.
    plans : NnunetPlans
        The folds' plans.

    Raises
    ------
    CheckpointImportError
        The numbers differ (or ``plans.pkl`` is not a dictionary).
    """
    if not isinstance(plans_file, Mapping) or plans_file.get("num_modalities") != len(plans.modalities):
        found = plans_file.get("num_modalities") if isinstance(plans_file, Mapping) else None
        raise CheckpointImportError(
            f"plans.pkl gives {found!r} modalities, the folds' plans {len(plans.modalities)}"
        )


def _card_data(
    *,
    name: str,
    version: str,
    created: datetime | None,
    plans: NnunetPlans,
    folds: list[int],
    checkpoint: str,
    pipeline: NnunetPipeline | None,
    sources: list[dict[str, Any]],
    plans_entry: dict[str, Any],
) -> dict[str, Any]:
    """The content of the imported model's ``model.json``, with a placeholder ``weights_sha256``.

    Parameters
    ----------
    name, version : str
        The model's name and version.
    created : datetime or None
        Import time; now when None.
    plans : NnunetPlans
        The folds' plans.
    folds : list of int
        The folds imported.
    checkpoint : str
        The checkpoint's name.
    pipeline : NnunetPipeline or None
        The pipeline (the reference's when None).
    sources : list of dict
        The record of each fold's source files.
    plans_entry : dict
        The record of ``plans.pkl``.

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
        "architecture": NnunetArchitecture(plans=plans, folds=tuple(folds)).to_dict(),
        "pipeline": (pipeline or NnunetPipeline()).to_dict(),
        "label_map": {"cancer": "csPCa (ISUP >= 2) likelihood, localization only (no category, no zone)"},
        "source": {
            **PICAI_NNUNET_SOURCE,
            "checkpoint": checkpoint,
            "checkpoints": [entry for entry in sources if entry["file"].endswith(".model")],
            "pickles": [entry for entry in sources if entry["file"].endswith(".pkl")] + [plans_entry],
            "read_with": "restricted unpickler (numpy arrays and scalars, numpy.dtype, OrderedDict only); "
            "torch.load(weights_only=True) with those numpy globals",
        },
        "training": PICAI_NNUNET_TRAINING,
        "metrics": {},
        "intended_use": INTENDED_USE,
        "weights_sha256": "0" * 64,
    }


def _write_artifact(
    out_dir: Path, tensors: dict[str, torch.Tensor], card_data: dict[str, Any]
) -> NnunetModelCard:
    """Validate the card, then write ``model.safetensors``, ``model.json`` and ``MODEL_CARD.md``.

    Parameters
    ----------
    out_dir : Path
        The artifact folder (exists).
    tensors : dict of str to Tensor
        The weights.
    card_data : dict
        The card's content; its ``weights_sha256`` is set to the written weights'.

    Returns
    -------
    NnunetModelCard
        The card written.
    """
    # Validated before anything is written: a card refused after the weights were written would leave an
    # artifact already in the folder with weights its card does not name.
    NnunetModelCard.from_dict(card_data, out_dir / CARD_FILE)
    weights = out_dir / WEIGHTS_FILE
    write_atomic(weights, lambda p: save_file(tensors, str(p), metadata={"format": "lesion-ai-model"}))
    card_data["weights_sha256"] = file_sha256(weights)
    card = NnunetModelCard.from_dict(card_data, out_dir / CARD_FILE)
    write_atomic(out_dir / CARD_FILE, lambda p: p.write_text(json.dumps(card.to_dict(), indent=2) + "\n"))
    write_atomic(out_dir / "MODEL_CARD.md", lambda p: p.write_text(model_card_text(card)))
    return card


def import_picai_nnunet(
    model_dir: Path | str,
    out: Path | str,
    *,
    name: str,
    version: str = "1",
    folds: Sequence[int] = DEFAULT_FOLDS,
    checkpoint: str = DEFAULT_CHECKPOINT,
    pipeline: NnunetPipeline | None = None,
    created: datetime | None = None,
) -> NnunetModelCard:
    """Import an nnU-Net v1 model folder's folds as a detection-map model artifact in ``out``.

    Parameters
    ----------
    model_dir : path
        ``.../3d_fullres/Task2203_picai_baseline/<trainer>__nnUNetPlansv2.1`` (``plans.pkl``, ``fold_<k>/``).
    out : path
        The artifact folder (created; an artifact in it is replaced).
    name, version : str
        The model's name and version.
    folds : sequence of int
        The folds to import (all five by default).
    checkpoint : str
        The checkpoint's name (``model_best``, as ``process.py`` uses).
    pipeline : NnunetPipeline, optional
        The pipeline (the reference's when None).
    created : datetime, optional
        Import time; now when None.

    Raises
    ------
    CheckpointImportError
        Naming the fold and the file, tensor or setting.
    """
    folder = Path(model_dir)
    wanted = _wanted_folds(folder, folds)
    plans_path, plans_file = _read_plans_file(folder)
    plans, tensors, sources = _read_folds(folder, wanted, checkpoint)
    # nnUNet_predict reads only the number of modalities from plans.pkl (the folds' own plans do the rest).
    _check_plans_file(plans_file, plans)
    plans_entry = _source_entry(plans_path, folder, None)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    card_data = _card_data(
        name=name,
        version=version,
        created=created,
        plans=plans,
        folds=wanted,
        checkpoint=checkpoint,
        pipeline=pipeline,
        sources=sources,
        plans_entry=plans_entry,
    )
    card = _write_artifact(out_dir, tensors, card_data)
    logger.info("imported %d nnU-Net folds as %s %s into %s", len(wanted), name, version, out_dir)
    return card


def _source_entry(path: Path, folder: Path, fold: int | None) -> dict[str, Any]:
    digest = file_sha256(path)
    relative = path.relative_to(folder).as_posix()
    published = PUBLISHED_FILES.get(digest)
    if published is None:
        logger.warning("%s is not one of the published files (sha256 %s)", relative, digest)
    return {
        "fold": fold,
        "file": relative,
        "sha256": digest,
        "bytes": path.stat().st_size,
        "published": f"{published} of {_PUBLISHED_RELEASE}" if published else None,
    }


def model_card_text(card: NnunetModelCard) -> str:
    """The human-readable ``MODEL_CARD.md``."""
    plans = card.architecture.plans
    lines = [
        f"# {card.name} {card.version}",
        "",
        "Imported PI-CAI baseline nnU-Net ensemble (detection-map model: localization only).",
        "",
        f"- Origin: {card.source.get('origin')}",
        f"- Licence of the weights: {card.source.get('licence')}",
        f"- Folds: {', '.join(map(str, card.architecture.folds))} (checkpoint {card.source.get('checkpoint')})",
        f"- Trainer: {plans.trainer}; patch {list(plans.patch_size)}; spacing {list(plans.target_spacing)} mm; "
        f"modalities {', '.join(plans.modalities)}; normalisation {', '.join(plans.normalization_schemes)}",
        f"- Intended use: {card.intended_use}",
        f"- Training data (as the authors state it): {card.training.get('data')}",
        "- Accuracy on real patients: not measured here.",
        "",
        "## Pipeline",
        *[f"1. {step}" for step in card.pipeline.to_dict()["steps"]],
        "",
        "## Source files (sha256)",
        *[
            f"- {e['file']}: {e['sha256']}" + (" (published)" if e.get("published") else "")
            for e in card.source.get("checkpoints", [])
        ],
        "",
    ]
    return "\n".join(lines)
