"""training: synthetic data, datasets, the joint training loop, evaluation and export."""

from __future__ import annotations

import logging

# A library configures no log output (the application does).
logging.getLogger(__name__).addHandler(logging.NullHandler())
