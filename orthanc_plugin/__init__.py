"""orthanc_plugin: the Orthanc glue of the lesion AI node (plugin script, job queue, workers).

Log handlers are configured in one place, :mod:`orthanc_plugin.node.logsetup` (Orthanc's log inside Orthanc,
standard error in a worker); imported as a library, the package configures no log output.
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
