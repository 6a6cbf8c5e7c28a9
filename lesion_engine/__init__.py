"""lesion_engine: prostate bpMRI lesion localization and classification, as a library.

The engine knows nothing of Orthanc or of training. It turns a DICOM study into co-registered volumes,
runs the jointly trained networks and writes DICOM results.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

# A library configures no log output (the application does); without this, records would go to
# logging's last-resort handler when nothing is configured.
logging.getLogger(__name__).addHandler(logging.NullHandler())

try:
    __version__ = version("lesion-ai")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
