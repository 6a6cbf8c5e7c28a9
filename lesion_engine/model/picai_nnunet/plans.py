"""What an nnU-Net v1 model's plans say about inference, read from the (restricted-unpickled) plans.

nnU-Net v1 keeps its whole design in a plans dictionary (``plans.pkl``, and a copy inside each fold's
``<checkpoint>.model.pkl``, which is the one ``nnUNet_predict`` uses): the network's kernel and pooling sizes,
the patch size, the spacing the scans are resampled to, the intensity normalisation per modality and the
export's interpolation. :class:`NnunetPlans` holds exactly what inference reads from it, validated, as
JSON-ready data for the model card; :func:`plans_from_pickles` builds it from the unpickled files.

Supported is what ``nnUNetTrainerV2`` (and its loss variants, such as PI-CAI's
``nnUNetTrainerV2_Loss_FL_and_CE_checkpoints``) runs for a 3D configuration: ``GenericPreprocessor``,
normalisation schemes ``nonCT``, ``CT``, ``CT2`` and ``noNorm`` without the nonzero mask, one stage (or the
stage the trainer was built for). Anything else is refused with a message saying what.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["SUPPORTED_TRAINERS", "NnunetPlans", "plans_from_pickles"]

#: Trainer classes whose inference is ``nnUNetTrainerV2``'s (they differ from it in their loss only).
SUPPORTED_TRAINERS = (
    "nnUNetTrainerV2",
    "nnUNetTrainerV2_Loss_FL_and_CE_checkpoints",
    "nnUNetTrainerV2_Loss_FL_and_CE_checkpoints2",
    "nnUNetTrainerV2_Loss_FL_and_CE_checkpoints3",
    "nnUNetTrainerV2_Loss_CE_checkpoints",
    "nnUNetTrainerV2_Loss_CE_checkpoints2",
    "nnUNetTrainerV2_Loss_CE_checkpoints3",
    "nnUNetTrainerV2_focalLossAlpha75",
    "nnUNetTrainerV2_focalLossAlpha75_checkpoints",
)
_SCHEMES = ("nonCT", "CT", "CT2", "noNorm")
#: Types an intensity property may have had in the pickle.
SCALAR_TYPES = ("float16", "float32", "float64", "float")
_CT_KEYS = ("mean", "sd", "percentile_00_5", "percentile_99_5")
Triple = tuple[int, int, int]


def _int(name: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or type(value).__name__ == "bool_":
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _scalar_type(value: Any) -> str:
    """The :data:`SCALAR_TYPES` name of a pickled number's type."""
    name = type(value).__name__
    if name in SCALAR_TYPES[:3]:
        return name
    if isinstance(value, float | int) and not isinstance(value, bool):
        return "float"
    raise ValueError(f"an intensity property of type {name} is not supported ({', '.join(SCALAR_TYPES)})")


def _seq(name: str, value: Any) -> list[Any]:
    if isinstance(value, str | bytes) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence, got {type(value).__name__}")
    return list(value)


def _triple(name: str, value: Any, low: int = 1) -> Triple:
    items = _seq(name, value)
    if len(items) != 3:
        raise ValueError(f"{name} must have three entries (3D), got {len(items)}")
    a, b, c = (_int(name, v, low) for v in items)
    return (a, b, c)


def _per_modality(name: str, value: Any, count: int) -> list[Any]:
    """A per-modality entry: a mapping {0: ..., 1: ...} or a sequence."""
    if isinstance(value, Mapping):
        try:
            return [value[k] for k in range(count)]
        except KeyError as exc:
            raise ValueError(f"{name} has no entry for modality {exc.args[0]}") from None
    items = _seq(name, value)
    if len(items) != count:
        raise ValueError(f"{name} must have {count} entries, got {len(items)}")
    return items


@dataclass(frozen=True)
class NnunetPlans:
    """What inference reads from an nnU-Net v1 model's plans (one 3D stage).

    Attributes
    ----------
    trainer : str
        The trainer class the folds were trained with (one of :data:`SUPPORTED_TRAINERS`).
    modalities : tuple of str
        The input channels' names, in order (PI-CAI: T2W, the ADC labelled ``CT``, HBV).
    num_classes : int
        Network outputs (the plans' classes plus background).
    base_num_features, conv_per_stage : int
        Generic_UNet's features of the first stage (doubled per stage, at most 320) and convolutions per stage.
    pool_op_kernel_sizes, conv_kernel_sizes : tuple of (z, y, x)
        Pooling (stride) per downsampling and convolution kernel per stage (one more than pools).
    patch_size : (z, y, x)
        The sliding window.
    target_spacing : (z, y, x) mm
        The spacing the scans are resampled to (``current_spacing`` of the stage).
    transpose_forward, transpose_backward : (int, int, int)
        Axis order of the network's arrays.
    normalization_schemes : tuple of str
        Per modality: ``nonCT`` (z-score over the scan), ``CT`` (clip to the training percentiles, then the
        training mean and sd), ``CT2`` (clip, then z-score within the percentiles) or ``noNorm``.
    intensity_properties : tuple of dict or None
        Per modality, for ``CT`` and ``CT2``: ``mean``, ``sd``, ``percentile_00_5``, ``percentile_99_5``.
    intensity_types : tuple of dict or None
        The type each of those values had in the pickle (``float16``, ``float32``, ``float64`` or ``float``):
        NumPy's arithmetic with them depends on it (a numpy float64 scalar makes the clip and z-score run in
        float64, a Python float or a float32 scalar in float32), so inference rebuilds them as they were.
    force_separate_z : bool or None
        The export's ``force_separate_z`` (None: decided from the spacings).
    export_order, export_order_z : int
        The export's interpolation orders in-plane and along the separate axis.
    """

    trainer: str
    modalities: tuple[str, ...]
    num_classes: int
    base_num_features: int
    conv_per_stage: int
    pool_op_kernel_sizes: tuple[Triple, ...]
    conv_kernel_sizes: tuple[Triple, ...]
    patch_size: Triple
    target_spacing: tuple[float, float, float]
    transpose_forward: Triple
    transpose_backward: Triple
    normalization_schemes: tuple[str, ...]
    intensity_properties: tuple[dict[str, float] | None, ...]
    intensity_types: tuple[dict[str, str] | None, ...] = ()
    force_separate_z: bool | None = None
    export_order: int = 1
    export_order_z: int = 0

    def __post_init__(self) -> None:
        if self.trainer not in SUPPORTED_TRAINERS:
            raise ValueError(
                f"trainer {self.trainer!r} is not supported: only nnUNetTrainerV2 and its loss variants "
                f"({', '.join(SUPPORTED_TRAINERS)}) run the inference reproduced here"
            )
        count = len(self.modalities)
        if count < 1:
            raise ValueError("the plans name no modality")
        if self.num_classes < 2:
            raise ValueError(f"num_classes (with background) must be at least 2, got {self.num_classes}")
        if len(self.conv_kernel_sizes) != len(self.pool_op_kernel_sizes) + 1:
            raise ValueError(
                f"conv_kernel_sizes must have one entry more than pool_op_kernel_sizes, got "
                f"{len(self.conv_kernel_sizes)} and {len(self.pool_op_kernel_sizes)}"
            )
        if not self.pool_op_kernel_sizes:
            raise ValueError("the plans have no pooling")
        for kernel in self.conv_kernel_sizes:
            if any(k not in (1, 3) for k in kernel):
                raise ValueError(f"conv kernel sizes must be 1 or 3 (nnU-Net v1), got {list(kernel)}")
        divisor = [math.prod(p[axis] for p in self.pool_op_kernel_sizes) for axis in range(3)]
        if any(size % d for size, d in zip(self.patch_size, divisor, strict=True)):
            raise ValueError(f"patch_size {list(self.patch_size)} is not divisible by the pooling {divisor}")
        if any(s <= 0 for s in self.target_spacing):
            raise ValueError(f"target_spacing must be positive, got {list(self.target_spacing)}")
        for name in ("transpose_forward", "transpose_backward"):
            if sorted(getattr(self, name)) != [0, 1, 2]:
                raise ValueError(f"{name} must be a permutation of 0, 1, 2, got {list(getattr(self, name))}")
        if tuple(self.transpose_forward[i] for i in self.transpose_backward) != (0, 1, 2):
            raise ValueError("transpose_backward is not the inverse of transpose_forward")
        if not self.intensity_types:
            object.__setattr__(
                self,
                "intensity_types",
                tuple(None if p is None else dict.fromkeys(p, "float") for p in self.intensity_properties),
            )
        if (
            len(self.normalization_schemes) != count
            or len(self.intensity_properties) != count
            or len(self.intensity_types) != count
        ):
            raise ValueError(
                "normalization_schemes, intensity_properties and intensity_types need one entry per modality"
            )
        for index, types in enumerate(self.intensity_types):
            properties = self.intensity_properties[index]
            if (types is None) != (properties is None) or (
                types is not None
                and properties is not None
                and (set(types) != set(properties) or any(t not in SCALAR_TYPES for t in types.values()))
            ):
                raise ValueError(
                    f"intensity_types[{index}] must give one of {SCALAR_TYPES} for each intensity property"
                )
        for index, (scheme, properties) in enumerate(
            zip(self.normalization_schemes, self.intensity_properties, strict=True)
        ):
            if scheme not in _SCHEMES:
                raise ValueError(
                    f"normalisation scheme {scheme!r} of modality {index} is not one of {_SCHEMES}"
                )
            if scheme in ("CT", "CT2") and (
                properties is None or any(key not in properties for key in _CT_KEYS)
            ):
                raise ValueError(
                    f"modality {index} ({scheme}) needs the intensity properties {', '.join(_CT_KEYS)}"
                )
        if self.export_order not in range(6) or self.export_order_z not in range(6):
            raise ValueError("export interpolation orders must be 0 to 5")

    @property
    def features(self) -> tuple[int, ...]:
        """Generic_UNet's features per stage (context stages, then the bottleneck)."""
        out = []
        features = self.base_num_features
        for _ in range(len(self.pool_op_kernel_sizes) + 1):
            out.append(features)
            features = min(round(features * 2), 320)
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the keys of :meth:`from_dict`)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[item.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NnunetPlans:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            Unknown or missing keys, invalid values.
        """
        known = {item.name for item in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown nnU-Net plans keys: {', '.join(unknown)}")
        required = known - {"force_separate_z", "export_order", "export_order_z"}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"missing nnU-Net plans keys: {', '.join(missing)}")
        modalities = tuple(str(m) for m in _seq("modalities", data["modalities"]))
        properties: list[dict[str, float] | None] = []
        for index, entry in enumerate(_seq("intensity_properties", data["intensity_properties"])):
            if entry is None:
                properties.append(None)
            elif isinstance(entry, Mapping):
                properties.append(
                    {str(k): _real(f"intensity_properties[{index}].{k}", v) for k, v in entry.items()}
                )
            else:
                raise ValueError(f"intensity_properties[{index}] must be an object or null")
        types: list[dict[str, str] | None] = []
        for index, entry in enumerate(_seq("intensity_types", data.get("intensity_types", []))):
            if entry is None:
                types.append(None)
            elif isinstance(entry, Mapping):
                types.append({str(k): str(v) for k, v in entry.items()})
            else:
                raise ValueError(f"intensity_types[{index}] must be an object or null")
        force = data.get("force_separate_z")
        if force is not None and not isinstance(force, bool):
            raise ValueError(f"force_separate_z must be true, false or null, got {force!r}")
        spacing = [_real("target_spacing", v) for v in _seq("target_spacing", data["target_spacing"])]
        if len(spacing) != 3:
            raise ValueError("target_spacing must have three entries")
        trainer = data["trainer"]
        if not isinstance(trainer, str):
            raise ValueError(f"trainer must be a string, got {trainer!r}")
        return cls(
            trainer=trainer,
            modalities=modalities,
            num_classes=_int("num_classes", data["num_classes"], 2),
            base_num_features=_int("base_num_features", data["base_num_features"], 1),
            conv_per_stage=_int("conv_per_stage", data["conv_per_stage"], 1),
            pool_op_kernel_sizes=tuple(
                _triple("pool_op_kernel_sizes", p)
                for p in _seq("pool_op_kernel_sizes", data["pool_op_kernel_sizes"])
            ),
            conv_kernel_sizes=tuple(
                _triple("conv_kernel_sizes", k) for k in _seq("conv_kernel_sizes", data["conv_kernel_sizes"])
            ),
            patch_size=_triple("patch_size", data["patch_size"]),
            target_spacing=(spacing[0], spacing[1], spacing[2]),
            transpose_forward=_triple("transpose_forward", data["transpose_forward"], 0),
            transpose_backward=_triple("transpose_backward", data["transpose_backward"], 0),
            normalization_schemes=tuple(
                str(s) for s in _seq("normalization_schemes", data["normalization_schemes"])
            ),
            intensity_properties=tuple(properties),
            intensity_types=tuple(types),
            force_separate_z=force,
            export_order=_int("export_order", data.get("export_order", 1)),
            export_order_z=_int("export_order_z", data.get("export_order_z", 0)),
        )


def _stage(plans: Mapping[str, Any], init: Sequence[Any]) -> Mapping[str, Any]:
    stages = plans.get("plans_per_stage")
    if not isinstance(stages, Mapping) or not stages:
        raise ValueError("the plans have no plans_per_stage")
    stage = init[5] if len(init) > 5 else None
    if stage is None:
        if len(stages) != 1:
            raise ValueError(f"the plans have {len(stages)} stages and the trainer names none")
        stage = next(iter(stages))
    if stage not in stages:
        raise ValueError(f"the trainer's stage {stage!r} is not in the plans (stages: {sorted(stages)})")
    chosen = stages[stage]
    if not isinstance(chosen, Mapping):
        raise ValueError(f"plans_per_stage[{stage!r}] is not a dictionary")
    return chosen


def _model_pickle_parts(model_info: Any) -> tuple[Mapping[str, Any], Sequence[Any]]:
    """The ``plans`` and ``init`` of a fold's unpickled ``<checkpoint>.model.pkl`` (nnU-Net v1's layout).

    Parameters
    ----------
    model_info : object
        The unpickled model pickle.

    Returns
    -------
    plans : mapping
    init : sequence
        The trainer's arguments.

    Raises
    ------
    ValueError
        Not the layout of an nnU-Net v1 model pickle.
    """
    if not isinstance(model_info, Mapping) or not {"init", "name", "plans"} <= set(model_info):
        raise ValueError("not an nnU-Net v1 model pickle (a dictionary with 'init', 'name' and 'plans')")
    plans = model_info["plans"]
    if not isinstance(plans, Mapping):
        raise ValueError("the model pickle's 'plans' is not a dictionary")
    init = model_info["init"]
    if not isinstance(init, Sequence) or isinstance(init, str):
        raise ValueError("the model pickle's 'init' is not a sequence")
    return plans, init


def _check_plans_file(plans_file: Any, count: int) -> None:
    """Refuse a ``plans.pkl`` whose number of modalities is not the fold's.

    Parameters
    ----------
    plans_file : object
        The unpickled ``plans.pkl``.
    count : int
        The fold's number of modalities.

    Raises
    ------
    ValueError
        ``plans.pkl`` is not a dictionary, or the numbers differ.
    """
    if not isinstance(plans_file, Mapping):
        raise ValueError("plans.pkl is not a dictionary")
    if plans_file.get("num_modalities") != count:
        raise ValueError(
            f"plans.pkl has {plans_file.get('num_modalities')!r} modalities, the fold's plans {count}"
        )


def _check_preprocessor(plans: Mapping[str, Any], use_mask: Sequence[Any]) -> None:
    """Refuse a preprocessor other than ``GenericPreprocessor``, and normalisation within the nonzero mask.

    Parameters
    ----------
    plans : mapping
        The fold's plans.
    use_mask : sequence
        ``use_mask_for_norm`` per modality.

    Raises
    ------
    ValueError
        Naming what is not supported.
    """
    if plans.get("preprocessor_name", "GenericPreprocessor") != "GenericPreprocessor":
        raise ValueError(
            f"preprocessor {plans.get('preprocessor_name')!r} is not supported (GenericPreprocessor)"
        )
    if any(bool(flag) for flag in use_mask):
        raise ValueError(
            "normalisation within the nonzero mask (use_mask_for_norm) is not supported; PI-CAI's plans do not "
            "use it"
        )


def _intensity_records(
    schemes: Sequence[Any], intensity: Any
) -> tuple[list[dict[str, float] | None], list[dict[str, str] | None]]:
    """The intensity properties of each ``CT`` or ``CT2`` modality, and the type each value had in the pickle.

    Parameters
    ----------
    schemes : sequence
        The normalisation scheme of each modality.
    intensity : object
        The plans' ``dataset_properties.intensityproperties`` (None when absent).

    Returns
    -------
    properties : list of dict or None
        Per modality: :data:`_CT_KEYS` as floats for ``CT`` and ``CT2``, else None.
    types : list of dict or None
        Per modality: the :data:`SCALAR_TYPES` name of each of those values, else None.

    Raises
    ------
    ValueError
        A ``CT`` or ``CT2`` modality without (valid) intensity properties.
    KeyError
        A property is missing.
    """
    properties: list[dict[str, float] | None] = []
    types: list[dict[str, str] | None] = []
    for index, scheme in enumerate(schemes):
        if scheme in ("CT", "CT2"):
            if not isinstance(intensity, Mapping) or index not in intensity:
                raise ValueError(f"modality {index} ({scheme}) has no intensity properties in the plans")
            properties.append({key: _real(key, intensity[index][key]) for key in _CT_KEYS})
            types.append({key: _scalar_type(intensity[index][key]) for key in _CT_KEYS})
        else:
            properties.append(None)
            types.append(None)
    return properties, types


@dataclass(frozen=True)
class _Normalisation:
    """How the plans normalise each modality.

    Attributes
    ----------
    modalities : list of str
        The modalities' names.
    schemes : list
        The normalisation scheme of each modality (as in the plans).
    properties, types : list of dict or None
        As :func:`_intensity_records` gives them.
    """

    modalities: list[str]
    schemes: list[Any]
    properties: list[dict[str, float] | None]
    types: list[dict[str, str] | None]


def _normalisation(plans: Mapping[str, Any], count: int) -> _Normalisation:
    """The per-modality names and intensity normalisation of the plans, checked to be supported.

    Parameters
    ----------
    plans : mapping
        The fold's plans.
    count : int
        The number of modalities.

    Returns
    -------
    _Normalisation

    Raises
    ------
    ValueError
        An unsupported preprocessor or setting, or invalid per-modality entries.
    KeyError
        An entry the plans must have is missing.
    """
    use_mask = _per_modality("use_mask_for_norm", plans["use_mask_for_norm"], count)
    schemes = _per_modality("normalization_schemes", plans["normalization_schemes"], count)
    modalities_map = plans.get("modalities") or {k: str(k) for k in range(count)}
    modalities = [str(m) for m in _per_modality("modalities", modalities_map, count)]
    intensity = plans.get("dataset_properties", {}).get("intensityproperties")
    _check_preprocessor(plans, use_mask)
    properties, types = _intensity_records(schemes, intensity)
    return _Normalisation(modalities, schemes, properties, types)


def plans_from_pickles(model_info: Any, plans_file: Any | None = None) -> NnunetPlans:
    """:class:`NnunetPlans` from a fold's unpickled ``<checkpoint>.model.pkl`` (its ``plans``, ``name`` and
    ``init``), checked against the unpickled ``plans.pkl`` when given (``nnUNet_predict`` reads its
    ``num_modalities``).

    Raises
    ------
    ValueError
        A layout other than nnU-Net v1's, an unsupported trainer or setting (the message says which).
    """
    plans, init = _model_pickle_parts(model_info)
    count = _int("num_modalities", plans.get("num_modalities"), 1)
    if plans_file is not None:
        _check_plans_file(plans_file, count)
    stage = _stage(plans, init)
    try:
        norm = _normalisation(plans, count)
        export = plans.get("segmentation_export_params") or {}
        spacing = [_real("current_spacing", v) for v in _seq("current_spacing", stage["current_spacing"])]
        if len(spacing) != 3:
            raise ValueError("current_spacing must have three entries (3D)")
        transpose_forward = plans.get("transpose_forward") or [0, 1, 2]
        transpose_backward = plans.get("transpose_backward") or [0, 1, 2]
        return NnunetPlans(
            trainer=str(model_info["name"]),
            modalities=tuple(norm.modalities),
            num_classes=_int("num_classes", plans["num_classes"], 1) + 1,
            base_num_features=_int("base_num_features", plans["base_num_features"], 1),
            conv_per_stage=_int("conv_per_stage", plans.get("conv_per_stage", 2), 1),
            pool_op_kernel_sizes=tuple(
                _triple("pool_op_kernel_sizes", p)
                for p in _seq("pool_op_kernel_sizes", stage["pool_op_kernel_sizes"])
            ),
            conv_kernel_sizes=tuple(
                _triple("conv_kernel_sizes", k) for k in _seq("conv_kernel_sizes", stage["conv_kernel_sizes"])
            ),
            patch_size=_triple("patch_size", stage["patch_size"]),
            target_spacing=(spacing[0], spacing[1], spacing[2]),
            transpose_forward=_triple("transpose_forward", transpose_forward, 0),
            transpose_backward=_triple("transpose_backward", transpose_backward, 0),
            normalization_schemes=tuple(str(s) for s in norm.schemes),
            intensity_properties=tuple(norm.properties),
            intensity_types=tuple(norm.types),
            force_separate_z=export.get("force_separate_z"),
            export_order=_int("interpolation_order", export.get("interpolation_order", 1)),
            export_order_z=_int("interpolation_order_z", export.get("interpolation_order_z", 0)),
        )
    except KeyError as exc:
        raise ValueError(f"the plans have no {exc.args[0]!r}") from None
