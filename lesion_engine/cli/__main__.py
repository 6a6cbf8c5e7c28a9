"""``python -m lesion_engine.cli``: the ``lesion-ai`` command (as ``torchrun -m lesion_engine.cli train`` runs it)."""

from __future__ import annotations

import sys

from lesion_engine.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
