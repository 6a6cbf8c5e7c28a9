"""The node's complete source as a gzip-compressed tar archive: the offer of the AGPL-3.0-or-later.

Served by ``GET /lesion-ai/source``: everything needed to build, install and run the node as it runs here
(the packages with the model artifacts they ship, configuration, set-up scripts, build files, tests), from
the installed tree. Caches and build outputs are left out.
"""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

from lesion_engine import __version__

logger = logging.getLogger(__name__)

__all__ = ["SOURCE_FILES", "SOURCE_FOLDERS", "source_archive"]

#: Files and folders of the source tree put into the archive (those present).
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "Makefile")
SOURCE_FOLDERS = (
    "lesion_engine",
    "orthanc_plugin",
    "training",
    "config",
    "scripts",
    "benchmarks",
    "tests",
    ".ci",
)
_SKIPPED = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


def source_archive(root: Path | None = None) -> bytes:
    """The source tree under ``root`` as ``.tar.gz`` bytes, every path under ``lesion-ai-VERSION/``.

    Parameters
    ----------
    root : Path, optional
        The source tree; by default the one this package was loaded from.
    """
    root = root if root is not None else Path(__file__).resolve().parent.parent.parent
    prefix = f"lesion-ai-{__version__}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in SOURCE_FILES:
            if (root / name).is_file():
                tar.add(root / name, arcname=f"{prefix}/{name}")
        for folder in SOURCE_FOLDERS:
            for path in sorted((root / folder).rglob("*")):
                relative = path.relative_to(root)
                if path.is_file() and not _SKIPPED.intersection(relative.parts) and path.suffix != ".pyc":
                    tar.add(path, arcname=f"{prefix}/{relative}")
    return buffer.getvalue()
