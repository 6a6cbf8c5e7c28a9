"""Where the networks run: the torch device, and the process-wide CPU thread set-up.

Both are process-wide concerns (torch's thread pools are global), kept apart from the engine that uses
them so that benchmarks and workers can set them up before any model is loaded.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from lesion_engine.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["configure_cpu_threads", "resolve_device"]


@functools.cache
def configure_cpu_threads(threads: int | None = None) -> int:
    """Use the CPUs this process may run on for intra-op work and one inter-op thread (once per value).

    Parameters
    ----------
    threads : int, optional
        Intra-op threads; all CPUs of the process's affinity mask when None.

    Returns
    -------
    int
        The number of intra-op threads set.
    """
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
            threads = os.cpu_count() or 1
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started: keep what is there
        logger.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
    return threads


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``cuda`` when available (or asked for), else ``cpu``.

    Raises
    ------
    ConfigError
        When CUDA is asked for and not available, or the device is unknown.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but CUDA is not available here; use --device cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}: use 'cpu' or 'cuda'")
    return resolved
