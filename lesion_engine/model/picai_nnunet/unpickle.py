"""Read nnU-Net v1 pickles without general unpickling: only a listed set of numpy and builtin types.

An nnU-Net v1 model folder holds three kinds of pickle: ``plans.pkl`` and ``<checkpoint>.model.pkl`` (plain
pickles of dictionaries with numpy arrays and scalars inside) and ``<checkpoint>.model`` (``torch.save`` of
the state dict, the optimizer's state and training curves with numpy scalars). General unpickling can run
any code a file names (``os.system``, ``eval``, a class's ``__reduce__``), so none of them is read that way:

* plain pickles go through :class:`RestrictedUnpickler`, whose ``find_class`` resolves only the globals of
  :data:`ALLOWED_GLOBALS` (numpy's array and scalar reconstruction, ``numpy.dtype``, ``numpy.ndarray``,
  ``collections.OrderedDict``, and what protocol 2 names for builtin values: ``_codecs.encode`` for latin-1
  only, ``bytes`` without a size, ``set``, ``frozenset``) and
  refuses every other global with an error naming it, before anything is called;
* torch checkpoints go through ``torch.load(weights_only=True)`` (PyTorch's restricted unpickler: tensors
  and plain containers) with only the numpy globals of :data:`TORCH_NUMPY_GLOBALS` added for the call.

A numpy array rebuilt this way can only hold what the same restricted stream gives it (an object array's
items are unpickled by the same rules). This module never imports a class a file names.
"""

from __future__ import annotations

import codecs
import collections
import io
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_GLOBALS",
    "MAX_PICKLE_BYTES",
    "TORCH_NUMPY_GLOBALS",
    "RefusedPickleError",
    "RestrictedUnpickler",
    "load_restricted_pickle",
    "load_torch_checkpoint",
    "loads_restricted",
]

MAX_PICKLE_BYTES = 64 << 20
"""A plain pickle (plans) larger than this is refused (the published ``plans.pkl`` is under 1 MB)."""

_numpy_core: Any = getattr(np, "_core", None) or np.core
_multiarray: Any = _numpy_core.multiarray


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for ``bytes`` (``encode(str, 'latin1')``), and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"refused: _codecs.encode with {type(text).__name__} and encoding {encoding!r} "
            "(only latin-1 text, as pickle protocol 2 writes bytes, is accepted)"
        )
    return codecs.encode(text, "latin1")


def _bytes(*args: object) -> bytes:
    """``bytes()`` as protocol 2 writes an empty ``bytes`` (``__builtin__.bytes()``); no size argument (which
    would allocate that many bytes)."""
    if args and not isinstance(args[0], bytes | bytearray | list | tuple):
        raise pickle.UnpicklingError(f"refused: bytes() of {type(args[0]).__name__}")
    return bytes(*args)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    # Protocol 5 rebuilds arrays from their buffer with numpy's ``_frombuffer`` (buffer, dtype, shape, order).
    ("numpy.core.numeric", "_frombuffer"): _numpy_core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_core.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    # Protocol 2 writes these by name (``__builtin__`` as Python 2 called ``builtins``).
    **{(module, "bytes"): _bytes for module in ("builtins", "__builtin__")},
    **{(module, "set"): set for module in ("builtins", "__builtin__")},
    **{(module, "frozenset"): frozenset for module in ("builtins", "__builtin__")},
}
"""The only globals a plain nnU-Net pickle may name: ``(module, name)`` -> the object used."""

TORCH_NUMPY_GLOBALS: list[Any] = [
    _multiarray._reconstruct,
    _multiarray.scalar,
    # The published checkpoints were written with numpy 1, which names these ``numpy.core.multiarray``.
    (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (_multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.ndarray,
    np.dtype,
    *sorted(
        {
            type(np.dtype(code))
            for code in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
        },
        key=lambda t: t.__name__,
    ),
]
"""The numpy globals added to ``torch.load(weights_only=True)`` for an nnU-Net checkpoint (its training
curves hold numpy scalars): array and scalar reconstruction, ``numpy.dtype`` and the numeric dtype classes
(``numpy.dtypes.Float64DType`` ...), whose state a pickled dtype sets."""


class RefusedPickleError(pickle.UnpicklingError):
    """A pickle names a global outside the allowed set (or is otherwise not a plain pickle of data)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses every other global.

    ``persistent_load`` is refused too (a plain pickle has no persistent ids).
    """

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise RefusedPickleError(
                f"refused global {module}.{name}: only numpy arrays and scalars, numpy.dtype, "
                "collections.OrderedDict and builtin containers are read from an nnU-Net pickle "
                "(general unpickling could run arbitrary code)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickleError(f"refused persistent id {str(pid)[:80]!r}: not a plain pickle of data")


def loads_restricted(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Raises
    ------
    RefusedPickleError
        A global outside :data:`ALLOWED_GLOBALS`, a persistent id.
    pickle.UnpicklingError, EOFError, ValueError, TypeError
        A truncated or malformed pickle.
    """
    return RestrictedUnpickler(io.BytesIO(data)).load()


def load_restricted_pickle(path: Path | str, max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """Read a plain pickle file (``plans.pkl``, ``*.model.pkl``) with :class:`RestrictedUnpickler`.

    Raises
    ------
    RefusedPickleError
        See :func:`loads_restricted`.
    ValueError
        The file is larger than ``max_bytes``.
    OSError
        The file cannot be read.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(
            f"{path.name} is {size} bytes, more than the {max_bytes} accepted for a plans pickle"
        )
    return loads_restricted(path.read_bytes())


_UNSUPPORTED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")


def load_torch_checkpoint(path: Path | str) -> Any:
    """``torch.load(path, weights_only=True)`` with only :data:`TORCH_NUMPY_GLOBALS` added.

    Raises
    ------
    RefusedPickleError
        The checkpoint names another global (the message names it).
    RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError
        A truncated file or not a torch checkpoint.
    """
    try:
        with torch.serialization.safe_globals(TORCH_NUMPY_GLOBALS):
            return torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        what = (
            f"global {found.group(1)}" if found else "objects other than tensors, numpy values and containers"
        )
        raise RefusedPickleError(
            f"refused {what}: only tensors, numpy arrays and scalars and builtin containers are read from an "
            "nnU-Net checkpoint (general unpickling could run arbitrary code)"
        ) from None


#: Errors a truncated or malformed pickle can raise while being read (besides :class:`RefusedPickleError`).
MALFORMED_PICKLE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    RuntimeError,
    zipfile.BadZipFile,
    MemoryError,
    OverflowError,
    UnicodeDecodeError,
)
