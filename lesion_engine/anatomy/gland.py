"""Whole-gland segmentation of the T2W volume with the TAPS ONNX model (see :mod:`lesion_engine.anatomy.gland_card`).

Run fast, in one window: the T2W is resampled (linear) onto one window of the card's size (``window_xyz``,
80 x 72 x 24 voxels of 0.8 x 0.8 x 3 mm: 64 x 58 x 72 mm, right-left x anterior-posterior x
superior-inferior) in RAS orientation, keeping the image's own obliquity, centred on the centre of the T2W's
field of view (the prostate's place in a prostate MR). Intensities are z-scored over the non-zero voxels of
the whole T2W, as the authors' pipeline does. When the gland found touches the window's side, the model runs
once more on a larger window (``recentre_window_xyz``, 96 x 96 x 24: 77 x 77 x 72 mm) centred on it. The
logits are blurred (the authors' sigma), resampled onto the T2W grid (only in the T2W's box around the
window) and thresholded; the largest connected component is the gland. On the fixture the first window
agrees with the PI-CAI gland mask as well as the larger one (Dice 0.83 against 0.85) at about 60 % of its
time (``make bench`` key ``gland``).

Two runtimes run the same network from the same ONNX file (its sha256 checked first), chosen by
``GlandSettings.runtime`` (:mod:`lesion_engine.anatomy.gland_settings`):

* ``torch`` (:mod:`lesion_engine.anatomy.gland_network`): the weights are read from the ONNX graph into a SegResNetDS
  written in torch, and run on the engine's device with the networks (CUDA where the engine runs on CUDA);
* ``onnxruntime``: the graph is prepared in memory (:mod:`lesion_engine.anatomy.gland_graph`: spatial dimensions made
  free, Mish written with one exponential) and run by ONNX Runtime with the engine's CPU threads.

``auto`` (the default) takes torch, on a CPU too, where it is the faster of the two (the whole gland step on
the fixture, 2 cores: 0.66-0.78 s against 0.89-0.90 s; ``make bench`` key ``gland``, ``runtimes``): ONNX
Runtime is then not needed at run time (it is an optional extra, and the tests' oracle). Either is loaded once per model and
device (and thread count, for ONNX Runtime) in a process and shared by the engines that load it.

In torch the network runs in float32, or with its convolutions in bfloat16 (``GlandSettings.precision``;
:func:`resolve_precision`): ``auto`` takes bfloat16 on a CPU with bfloat16 instructions, where it halves the
network's time (on the fixture, 2 cores: 0.24 s -> 0.12 s), with masks within Dice 0.99 of float32's on the
fixture's four T2-weighted series and perturbed copies of them (``tests/engine/anatomy/test_gland_precision.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from lesion_engine.anatomy.gland_card import (
    GLAND_PRECISIONS,
    GLAND_RUNTIMES,
    GlandCard,
    GlandModelError,
    read_gland_card,
    resolve_weights,
)
from lesion_engine.anatomy.gland_graph import prepare_graph
from lesion_engine.anatomy.gland_settings import GlandSettings
from lesion_engine.intake.volumes import box_grid, index_box

logger = logging.getLogger(__name__)

__all__ = [
    "GLAND_PRECISIONS",
    "GLAND_RUNTIMES",
    "GlandModel",
    "GlandSegmentation",
    "GlandSettings",
    "load_gland_model",
    "mask_box",
    "native_bfloat16_cpu",
    "resolve_precision",
]

_RAS_IN_LPS = (-1.0, -1.0, 1.0)  # R = -x, A = -y, S = +z in DICOM patient coordinates


@dataclass(frozen=True)
class GlandSegmentation:
    """The gland found on one T2W volume.

    Attributes
    ----------
    mask : ndarray of bool
        (Z, Y, X) on the T2W grid.
    volume_ml : float
        The mask's volume.
    seconds : float
        Time taken.
    passes : int
        Model runs (1, or 2 when the window was re-centred).
    """

    mask: NDArray[np.bool_]
    volume_ml: float
    seconds: float
    passes: int


_RUNNERS: dict[tuple[str, str, str, int, str], Any] = {}
_RUNNERS_LOCK = threading.Lock()


class _OrtRunner:
    """The model in ONNX Runtime.

    Session options: ``threads`` intra-op threads and one inter-op thread, sequential execution, every
    graph optimisation, and no spinning of idle pool threads (they would take CPU from the networks that
    run next, and from other workers on the same machine). The graph is prepared by
    :func:`lesion_engine.anatomy.gland_graph.prepare_graph`.
    """

    def __init__(self, card: GlandCard, model_bytes: bytes, *, use_cuda: bool, threads: int) -> None:
        try:
            import onnx  # noqa: F401 - needed by lesion_engine.anatomy.gland_graph
            import onnxruntime as ort  # type: ignore[import-untyped]
        except ImportError as exc:
            raise GlandModelError(
                f"ONNX Runtime is needed for the gland model's runtime 'onnxruntime' ({exc}): install "
                "lesion-ai's extra `onnxruntime` (`pip install 'lesion-ai[onnxruntime]'`), or set the "
                "runtime to 'torch' (GlandRuntime)"
            ) from exc
        providers = ["CPUExecutionProvider"]
        if use_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            graph = prepare_graph(model_bytes)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(graph, sess_options=options, providers=providers)
        except Exception as exc:
            raise GlandModelError(
                f"the gland model {card.name} could not be loaded in ONNX Runtime: {exc}"
            ) from exc
        self.input = self.session.get_inputs()[0].name
        self.providers: list[str] = list(self.session.get_providers())

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(self.session.run(None, {self.input: batch})[0], dtype=np.float32)


class _TorchRunner:
    """The model in torch (:mod:`lesion_engine.anatomy.gland_network`), on ``device``, in ``precision``
    (``float32``, or ``bfloat16``: torch's autocast, the logits returned in float32)."""

    def __init__(self, card: GlandCard, model_bytes: bytes, *, device: str, precision: str) -> None:
        try:
            import torch

            from lesion_engine.anatomy.gland_network import GlandNetworkError, network_from_onnx
        except ImportError as exc:
            raise GlandModelError(
                f"torch and onnx are needed for the gland model's runtime 'torch' ({exc}): install "
                "lesion-ai's dependencies (`make setup`)"
            ) from exc
        try:
            self.network = network_from_onnx(model_bytes).to(device)
        except GlandNetworkError as exc:
            raise GlandModelError(f"the gland model {card.name} could not be read into torch: {exc}") from exc
        self.device = torch.device(device)
        self.bfloat16 = precision == "bfloat16"
        self.providers = [f"torch {self.device.type} {precision}"]

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bfloat16),
        ):
            out = self.network(torch.from_numpy(batch).to(self.device))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)


def native_bfloat16_cpu() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX) that torch's CPU kernels use."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, runtime: str, *, use_cuda: bool) -> str:
    """The gland network's arithmetic, ``float32`` or ``bfloat16``, that ``precision`` asks for.

    Parameters
    ----------
    precision : {"auto", "float32", "bfloat16"}
        As ``GlandSettings.precision``: ``auto`` is ``bfloat16`` for torch on a CPU with bfloat16
        instructions (:func:`native_bfloat16_cpu`), ``float32`` elsewhere.
    runtime : {"auto", "torch", "onnxruntime"}
        As ``GlandSettings.runtime`` (ONNX Runtime: always ``float32``).
    use_cuda : bool
        Whether the model runs on CUDA (``auto``: ``float32``, not measured there in bfloat16).

    Raises
    ------
    ValueError
        When ``precision`` is not one of :data:`GLAND_PRECISIONS`, or is ``bfloat16`` with ONNX Runtime.
    """
    problem = GlandSettings.precision_problem(runtime, precision)
    if problem is not None:
        raise ValueError(f"the gland precision {problem}")
    if precision != "auto":
        return precision
    if runtime == "onnxruntime" or use_cuda or not native_bfloat16_cpu():
        return "float32"
    return "bfloat16"


def _runner(
    card: GlandCard, model_bytes: bytes, runtime: str, precision: str, *, use_cuda: bool, threads: int
) -> _OrtRunner | _TorchRunner:
    """The runner of the model, built once per (model sha256, runtime, device, threads, precision) in this
    process; ``precision`` is resolved (``float32`` or ``bfloat16``)."""
    if runtime == "auto":
        runtime = "torch"
    device = "cuda" if use_cuda else "cpu"
    key = (
        hashlib.sha256(model_bytes).hexdigest(),
        runtime,
        device,
        threads if runtime == "onnxruntime" else 0,
        precision,
    )
    with _RUNNERS_LOCK:
        cached = _RUNNERS.get(key)
        if cached is None:
            if runtime == "torch":
                cached = _TorchRunner(card, model_bytes, device=device, precision=precision)
            else:
                cached = _OrtRunner(card, model_bytes, use_cuda=use_cuda, threads=threads)
            _RUNNERS[key] = cached
        runner: _OrtRunner | _TorchRunner = cached
        return runner


def _ras_direction(t2w: sitk.Image) -> NDArray[np.float64]:
    """The T2W's direction with its axes permuted and flipped to point to R, A and S."""
    direction = np.asarray(t2w.GetDirection(), dtype=np.float64).reshape(3, 3)
    out = np.zeros((3, 3))
    used: set[int] = set()
    for axis, sign in enumerate(_RAS_IN_LPS):
        column = max((c for c in range(3) if c not in used), key=lambda c: abs(direction[axis, c]))
        used.add(column)
        vector = direction[:, column]
        out[:, axis] = vector if np.sign(vector[axis]) == sign else -vector
    return out


class GlandModel:
    """The gland model, loaded in torch or ONNX Runtime.

    Parameters
    ----------
    card : GlandCard
        The model's card.
    model_bytes : bytes
        The ONNX file's content (checked against the card).
    use_cuda : bool
        Run on CUDA (torch's, or ONNX Runtime's CUDA provider when it has one).
    threads : int, optional
        CPU threads of ONNX Runtime; all CPUs this process may use when None (torch uses its own setting,
        :func:`lesion_engine.model.devices.configure_cpu_threads`).
    runtime : {"auto", "torch", "onnxruntime"}
        As ``GlandSettings.runtime``.
    precision : {"auto", "float32", "bfloat16"}
        As ``GlandSettings.precision`` (:func:`resolve_precision`).

    Attributes
    ----------
    runtime : {"torch", "onnxruntime"}
        What runs the network.
    precision : {"float32", "bfloat16"}
        Its arithmetic.
    """

    def __init__(
        self,
        card: GlandCard,
        model_bytes: bytes,
        *,
        use_cuda: bool = False,
        threads: int | None = None,
        runtime: str = "auto",
        precision: str = "auto",
    ) -> None:
        if runtime not in GLAND_RUNTIMES:
            raise ValueError(f"the gland runtime must be one of {', '.join(GLAND_RUNTIMES)}, got {runtime!r}")
        self.card = card
        self.threads = threads or len(os.sched_getaffinity(0))
        self.precision = resolve_precision(precision, runtime, use_cuda=use_cuda)
        self._runner = _runner(
            card, model_bytes, runtime, self.precision, use_cuda=use_cuda, threads=self.threads
        )
        self.runtime = "torch" if isinstance(self._runner, _TorchRunner) else "onnxruntime"
        self.providers: list[str] = list(self._runner.providers)
        logger.info("gland model %s %s loaded (%s)", card.name, card.version, ", ".join(self.providers))

    def network_logits(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """The network's raw logits for a (N, 1, X, Y, Z) float32 batch (each size a multiple of 8)."""
        return self._runner(np.ascontiguousarray(batch, dtype=np.float32))

    def _window(
        self, t2w: sitk.Image, centre: NDArray[np.float64], size_xyz: tuple[int, int, int]
    ) -> sitk.Image:
        spacing = np.asarray(self.card.spacing_xyz_mm, dtype=np.float64)
        size = np.asarray(size_xyz)
        direction = _ras_direction(t2w)
        origin = centre - direction @ (spacing * (size - 1) / 2.0)
        window = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
        window.SetSpacing([float(s) for s in spacing])
        window.SetDirection([float(v) for v in direction.ravel()])
        window.SetOrigin([float(v) for v in origin])
        return window

    def _logits(self, t2w: sitk.Image, window: sitk.Image, mean: float, std: float) -> sitk.Image:
        """The blurred logits of the model on ``window`` (float32 throughout)."""
        values = sitk.GetArrayFromImage(
            sitk.Resample(t2w, window, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        )
        inside = values != 0
        values -= np.float32(mean)
        values /= np.float32(std)
        values[~inside] = 0.0
        batch = np.ascontiguousarray(values.transpose(2, 1, 0))[None, None]
        logits = self.network_logits(batch)[0, 0]
        if self.card.blur_sigma_voxels > 0:
            logits = ndimage.gaussian_filter(logits, self.card.blur_sigma_voxels, mode="nearest")
        image = sitk.GetImageFromArray(np.ascontiguousarray(logits.transpose(2, 1, 0)))
        image.CopyInformation(window)
        return image

    def warm_up(self) -> float:
        """Run the model once on an empty first window, so that the first study does not pay the runtime's
        one-off allocations; returns the seconds taken."""
        start = time.perf_counter()
        self.network_logits(np.zeros((1, 1, *self.card.window_xyz), dtype=np.float32))
        return time.perf_counter() - start

    def segment(self, t2w: sitk.Image) -> GlandSegmentation:
        """Segment the gland of a T2W volume.

        Parameters
        ----------
        t2w : SimpleITK.Image
            The T2W volume (3D, scalar).

        Returns
        -------
        GlandSegmentation
            Its mask is empty when the model found no gland.

        Raises
        ------
        ValueError
            When ``t2w`` is not a 3D scalar volume.
        GlandModelError
            When the T2W volume is all zeros.
        """
        if t2w.GetDimension() != 3 or t2w.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("GlandModel.segment needs a 3D scalar T2W volume")
        start = time.perf_counter()
        native = sitk.GetArrayViewFromImage(t2w)
        foreground = native[native != 0]
        if foreground.size == 0:
            raise GlandModelError("the T2W volume is all zeros: there is no gland to find")
        values = foreground.astype(np.float64)
        mean = float(values.mean())
        std = float(np.sqrt(max(float(np.dot(values, values)) / values.size - mean * mean, 0.0))) or 1.0
        centre = np.asarray(
            t2w.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in t2w.GetSize()])
        )
        cut = float(np.log(self.card.threshold / (1.0 - self.card.threshold)))
        size = self.card.window_xyz
        passes = 0
        while True:
            window = self._window(t2w, centre, size)
            logits = self._logits(t2w, window, mean, std)
            passes += 1
            inside = sitk.GetArrayViewFromImage(logits) > cut
            found = np.argwhere(inside)
            touches = found.size > 0 and (
                found[:, 1:].min() == 0
                or (found[:, 1:].max(axis=0) >= np.asarray(inside.shape[1:]) - 1).any()
            )
            if passes >= 2 or not touches:
                break
            centroid = found.mean(axis=0)[::-1]
            centre = np.asarray(logits.TransformContinuousIndexToPhysicalPoint([float(v) for v in centroid]))
            size = self.card.recentre_window_xyz
            logger.info("gland touches the window's side: window re-centred on it (%s voxels)", size)
        mask = self._on_t2w(logits, t2w, cut)
        box = mask_box(mask)
        if box is not None:
            labels, count = ndimage.label(mask[box])
            if count > 1:
                mask[box] = labels == int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
        voxel_ml = float(np.prod(t2w.GetSpacing())) / 1000.0
        seconds = time.perf_counter() - start
        return GlandSegmentation(mask, float(mask.sum()) * voxel_ml, seconds, passes)

    @staticmethod
    def _on_t2w(logits: sitk.Image, t2w: sitk.Image, cut: float) -> NDArray[np.bool_]:
        """The thresholded logits on the T2W grid, (Z, Y, X); resampled only in the T2W's box around the
        window (the rest of the T2W is outside the gland)."""
        low, high = index_box(t2w, logits, margin=1)
        mask = np.zeros(t2w.GetSize()[::-1], dtype=bool)
        if np.any(high <= low):
            return mask
        box = box_grid(t2w, low, high)
        on_box = sitk.Resample(logits, box, sitk.Transform(), sitk.sitkLinear, -100.0, sitk.sitkFloat32)
        mask[low[2] : high[2], low[1] : high[1], low[0] : high[0]] = sitk.GetArrayViewFromImage(on_box) > cut
        return mask


def mask_box(mask: NDArray[np.bool_]) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) holding every True voxel of ``mask``; None when there is none."""
    if not mask.any():
        return None
    axes = range(mask.ndim)
    found = [np.flatnonzero(mask.any(axis=tuple(a for a in axes if a != axis))) for axis in axes]
    return tuple(slice(int(f[0]), int(f[-1]) + 1) for f in found)


def load_gland_model(
    settings: GlandSettings, *, use_cuda: bool = False, threads: int | None = None
) -> tuple[GlandModel | None, str | None]:
    """Load the gland model the settings ask for.

    Returns
    -------
    (GlandModel or None, str or None)
        The model, or None and the warning to report when it cannot be loaded (and is not required);
        (None, None) when the gate is disabled.

    Raises
    ------
    GlandModelError
        When the model cannot be loaded and ``settings.required`` is True.
    """
    if not settings.enabled:
        return None, None
    try:
        card = read_gland_card(settings.card)
        model = GlandModel(
            card,
            resolve_weights(card),
            use_cuda=use_cuda,
            threads=threads,
            runtime=settings.runtime,
            precision=settings.precision,
        )
        return model, None
    except GlandModelError as exc:
        if settings.required:
            raise
        warning = f"the gland model is not available, lesions are not gated by the prostate gland: {exc}"
        logger.warning("%s", warning)
        return None, warning
