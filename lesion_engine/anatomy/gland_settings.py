"""How the engine uses the gland model as an anatomical gate: :class:`GlandSettings`, where each of its
defaults and bounds is written once.

The module imports nothing heavy (no numpy, SimpleITK or torch), so that the node's settings, read inside
Orthanc, take their defaults from :class:`GlandSettings` and check their values with its
:meth:`~GlandSettings.margin_problem` and :meth:`~GlandSettings.volume_problem`.
:mod:`lesion_engine.anatomy.gland` runs the gland model with these settings (and exports :class:`GlandSettings`
too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lesion_engine.anatomy.gland_card import GLAND_PRECISIONS, GLAND_RUNTIMES

__all__ = ["GLAND_PRECISIONS", "GLAND_RUNTIMES", "GlandSettings"]


@dataclass(frozen=True)
class GlandSettings:
    """How the engine uses the gland model as an anatomical gate.

    Attributes
    ----------
    enabled : bool
        Run the gland model and gate the lesions with it.
    margin_mm : float
        The gland is dilated by this margin: no lesion whose centre lies outside is reported, and the
        localization map is 0 outside (0 to :attr:`MAX_MARGIN_MM`).
    required : bool
        When True, a missing or failing gland model is an error; when False (default), the engine runs
        without the gate and says so in each result's warnings and in the log.
    card : Path or None
        A gland card; the packaged one when None.
    min_volume_ml, max_volume_ml : float
        A gland found outside this range is implausible (real prostates are roughly 10 to 300 ml): the gate
        does not use it and says so (with ``required``, the study fails). At most :attr:`MAX_VOLUME_ML`.
    runtime : {"auto", "torch", "onnxruntime"}
        What runs the gland network: ``auto`` and ``torch`` run it in torch with the networks, on the
        engine's device; ``onnxruntime`` on ONNX Runtime (the optional extra ``onnxruntime``; its CUDA
        provider where the engine runs on CUDA and the installed build has one).
    precision : {"auto", "float32", "bfloat16"}
        The arithmetic of the gland network in torch: ``float32`` as its authors run it; ``bfloat16``, its
        convolutions in bfloat16 (torch's autocast), about twice as fast on a CPU with bfloat16 instructions
        (AVX512-BF16 or AMX), the gland's mask within Dice 0.99 of float32's; ``auto`` (the default) takes
        ``bfloat16`` on such a CPU and ``float32`` elsewhere (on CUDA, and on other CPUs, where bfloat16 is
        emulated and slower). ONNX Runtime runs float32 only.
    """

    #: The widest margin around the gland that may be configured, mm.
    MAX_MARGIN_MM: ClassVar[float] = 50.0
    #: The largest plausible prostate that may be configured, ml.
    MAX_VOLUME_ML: ClassVar[float] = 5000.0

    enabled: bool = True
    margin_mm: float = 5.0
    required: bool = False
    card: Path | None = None
    min_volume_ml: float = 10.0
    max_volume_ml: float = 300.0
    runtime: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.runtime not in GLAND_RUNTIMES:
            raise ValueError(
                f"GlandSettings.runtime must be one of {', '.join(GLAND_RUNTIMES)}, got {self.runtime!r}"
            )
        problem = self.precision_problem(self.runtime, self.precision)
        if problem is not None:
            raise ValueError(f"GlandSettings.precision {problem}")
        problem = self.margin_problem(self.margin_mm)
        if problem is not None:
            raise ValueError(f"GlandSettings.margin_mm {problem}")
        problem = self.volume_problem(self.min_volume_ml, self.max_volume_ml)
        if problem is not None:
            raise ValueError(f"GlandSettings.min_volume_ml and max_volume_ml {problem}")

    @classmethod
    def margin_problem(cls, margin: object) -> str | None:
        """Why ``margin`` cannot be the gate's margin, or None when it can.

        Parameters
        ----------
        margin : object
            The value to check: it must be a number of mm from 0 to :attr:`MAX_MARGIN_MM`.

        Returns
        -------
        str or None
            The reason (``must be ..., got ...``), to follow the name of the setting in an error message.
        """
        if (
            isinstance(margin, bool)
            or not isinstance(margin, int | float)
            or not 0 <= margin <= cls.MAX_MARGIN_MM
        ):
            # The class attribute of a field with a plain default is that default.
            return (
                f"must be a number of mm from 0 to {cls.MAX_MARGIN_MM:g} ({cls.margin_mm:g} is usual), "
                f"got {margin!r}"
            )
        return None

    @staticmethod
    def precision_problem(runtime: object, precision: object) -> str | None:
        """Why ``precision`` cannot be the gland network's arithmetic in ``runtime``, or None when it can.

        Parameters
        ----------
        runtime : object
            The runtime (one of :data:`GLAND_RUNTIMES`; checked on its own elsewhere).
        precision : object
            The value to check: one of :data:`GLAND_PRECISIONS`, and not ``bfloat16`` with ONNX Runtime.

        Returns
        -------
        str or None
            The reason (``must be ..., got ...``), to follow the name of the setting in an error message.
        """
        if precision not in GLAND_PRECISIONS:
            return f"must be one of {', '.join(GLAND_PRECISIONS)}, got {precision!r}"
        if runtime == "onnxruntime" and precision == "bfloat16":
            return (
                "must be float32 or auto with the runtime onnxruntime (it runs the model in float32 only), got "
                "'bfloat16': set the runtime to torch or auto for bfloat16"
            )
        return None

    @classmethod
    def volume_problem(cls, low: object, high: object) -> str | None:
        """Why ``low`` and ``high`` cannot be the plausible prostate volumes, or None when they can.

        Parameters
        ----------
        low, high : object
            The smallest and largest plausible volume: numbers of ml with
            ``0 <= low < high <=`` :attr:`MAX_VOLUME_ML`.

        Returns
        -------
        str or None
            The reason (``must be ..., got ...``), to follow the names of the settings in an error message.
        """
        if (
            isinstance(low, bool)
            or isinstance(high, bool)
            or not isinstance(low, int | float)
            or not isinstance(high, int | float)
            or not 0 <= low < high <= cls.MAX_VOLUME_ML
        ):
            return (
                f"must be numbers of ml with 0 <= min < max <= {cls.MAX_VOLUME_ML:g} ({cls.min_volume_ml:g} "
                f"and {cls.max_volume_ml:g} are usual), got {low!r} and {high!r}"
            )
        return None
