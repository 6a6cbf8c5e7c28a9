"""Where the tests find the checkout and their data, wherever a test module lies under ``tests/``."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
"""The tests' folder."""
REPO = TESTS.parent
"""The checkout."""
DATA = TESTS / "data"
"""The tests' data files."""
