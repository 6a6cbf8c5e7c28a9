"""Where and how the networks run: the torch device, the process-wide CPU thread set-up, and the CPU's
convolution kernel.

The first two are process-wide concerns (torch's thread pools are global), kept apart from the engine that
uses them so that benchmarks and workers can set them up before any model is loaded.

:func:`use_fast_cpu_convolutions`, for inference on the CPU:

* PyTorch runs a 3D convolution of one image with a 3 x 3 x 3 kernel through its own im2col kernel
  (``slow_conv3d``) unless N x C x D x H of the input exceeds 20480 (ATen's ``use_mkldnn`` heuristic), whatever
  its width. On 2 CPU cores that kernel computes the localization network's 64-channel level at about a fifth
  of oneDNN's speed (75 ms against 14 ms per convolution of 64 x 10 x 32 x 32). These convolutions call
  oneDNN directly; the values differ from ATen's kernel in float rounding only (about 1e-5 in the logits).
* A transposed convolution whose kernel equals its stride (no overlap) is one matrix product and a
  rearrangement of its result: 19 ms against ATen's 44 ms for the localization network's 32 -> 16 channel
  upsampling of 20 x 64 x 64, with the same values.

:func:`retain_freed_memory` (glibc): the networks allocate their activations afresh at each study, tens of
megabytes each. glibc returns such buffers to the system when they are freed (mmap, or a trim of the heap's
top), and the next study pays a page fault per 4 KB page to get them back: about 13 % of the engine's time
on the fixture (2 cores: 0.59-0.61 s against 0.67-0.73 s from loaded study to result; 58000-115000 page
faults per study against none once warm). Every buffer then comes from the heap (none is mapped on its
own), and up to 1 GB of free heap is kept for the next study instead of being returned: the process's
resident memory stays near its peak (836 MB against 795 MB after four studies of the fixture).

:func:`limit_blas_threads`: numpy's OpenBLAS runs a long vector product (the gland's z-score figures over
the T2W's 2.8 million voxels) on every CPU, and its threads then keep spinning for a while: the gland
network that follows ran 60-80 ms slower (0.30-0.33 s against 0.23-0.25 s on 2 cores). The engine's heavy
arithmetic is torch's; numpy's BLAS runs on one thread in the engine's process.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from typing import cast

import torch
from torch import nn

from lesion_engine.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "configure_cpu_threads",
    "limit_blas_threads",
    "resolve_device",
    "retain_freed_memory",
    "use_fast_cpu_convolutions",
]

#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Free memory at the top of the heap kept for later buffers rather than returned to the system.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
#: The environment variables with which a process's owner sets these itself (then left as they say).
_MALLOC_ENVIRONMENT = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_TOP_PAD_",
)


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


_ONEDNN = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]


def _cpu_inference(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """Float32 inference on the CPU (no autograd)."""
    return (
        input.device.type == "cpu"
        and input.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
    )


class _OneDNNConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` that runs through oneDNN for float32 inference on the CPU (the module docstring says
    why), and as ``nn.Conv3d`` otherwise (CUDA, autograd, other types or paddings)."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            _cpu_inference(input, weight)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and _ONEDNN
            and torch.backends.mkldnn.enabled
        ):
            out = torch.ops.aten.mkldnn_convolution(
                input.contiguous(), weight, bias, self.padding, self.stride, self.dilation, self.groups
            )
            return cast(torch.Tensor, out)
        return cast(torch.Tensor, super()._conv_forward(input, weight, bias))


class _MatmulConvTranspose3d(nn.ConvTranspose3d):
    """An ``nn.ConvTranspose3d`` whose kernel equals its stride, computed in CPU inference as one matrix
    product and a rearrangement (the module docstring says why); as ``nn.ConvTranspose3d`` otherwise."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or input.ndim != 5 or not _cpu_inference(input, self.weight):
            return super().forward(input, output_size)
        batch, channels, depth, height, width = input.shape
        _, out_channels, kd, kh, kw = self.weight.shape
        product = torch.matmul(self.weight.reshape(channels, -1).t(), input.reshape(batch, channels, -1))
        spread = product.view(batch, out_channels, kd, kh, kw, depth, height, width).permute(
            0, 1, 5, 2, 6, 3, 7, 4
        )
        out = spread.reshape(batch, out_channels, depth * kd, height * kh, width * kw)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1, 1)
        return out


def _matmul_transposable(module: nn.ConvTranspose3d) -> bool:
    """A transposed convolution without overlap, padding, dilation or groups."""
    return (
        tuple(module.kernel_size) == tuple(module.stride)
        and not any(module.padding if not isinstance(module.padding, str) else (1,))
        and not any(module.output_padding)
        and all(d == 1 for d in module.dilation)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def use_fast_cpu_convolutions(module: nn.Module) -> int:
    """Make the 3D convolutions of ``module`` run faster in CPU inference (in place; the module docstring says
    how): each plain ``nn.Conv3d`` through oneDNN, each ``nn.ConvTranspose3d`` without overlap as a matrix
    product.

    The parameters, their names and the module tree stay as they are; on CUDA, with autograd on, or where
    PyTorch has no oneDNN, the convolutions run as before.

    Parameters
    ----------
    module : torch.nn.Module
        The network (changed in place).

    Returns
    -------
    int
        The convolutions changed.
    """
    changed = 0
    for child in module.modules():
        if type(child) is nn.Conv3d:
            child.__class__ = _OneDNNConv3d
            changed += 1
        elif type(child) is nn.ConvTranspose3d and _matmul_transposable(child):
            child.__class__ = _MatmulConvTranspose3d
            changed += 1
    return changed


@functools.cache
def retain_freed_memory() -> bool:
    """Keep the memory of freed large buffers in this process for the next ones (glibc; once per process).

    The module docstring says why. Nothing is changed where the C library is not glibc, or where the
    process's environment sets glibc's malloc tunables itself (``MALLOC_MMAP_THRESHOLD_`` and the like).

    Returns
    -------
    bool
        Whether the setting was made.
    """
    if not sys.platform.startswith("linux"):
        return False
    given = [name for name in _MALLOC_ENVIRONMENT if name in os.environ]
    if given:
        logger.info("malloc tunables left as the environment sets them (%s)", ", ".join(given))
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, say): its allocator is left as it is
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    if done:
        logger.debug(
            "glibc keeps freed buffers: all from the heap, %d MB of free heap kept",
            TRIM_THRESHOLD_BYTES >> 20,
        )
    return done


@functools.cache
def limit_blas_threads() -> int:
    """Run numpy's BLAS (OpenBLAS, MKL, ...) on one thread in this process, once (the module docstring says
    why).

    Returns
    -------
    int
        The BLAS libraries limited (0 where numpy has none that threadpoolctl knows).
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    libraries = [info for info in threadpool_info() if info.get("user_api") == "blas"]
    if libraries:
        threadpool_limits(limits=1, user_api="blas")
        logger.debug(
            "numpy's BLAS on one thread: %s", ", ".join(str(i.get("internal_api")) for i in libraries)
        )
    return len(libraries)
