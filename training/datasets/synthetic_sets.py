"""Synthetic data sets that mix vendors and DICOM flavours, for training and held-out testing.

:func:`generate_mixed` writes cases with :func:`training.synth.generate_case`, cycling through all four
vendor conventions and alternating classic and Enhanced MR objects in blocks of four cases (so that every
vendor appears in both flavours), then writes the PI-CAI style ``marksheet.csv`` of the whole set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from training.synth import SynthConfig, generate_case
from training.synth.truth import write_marksheet

logger = logging.getLogger(__name__)

__all__ = ["case_config", "generate_mixed"]


def case_config(index: int, profile: str = "small") -> SynthConfig:
    """The generator configuration of case ``index``: vendor by ``index % 4``, Enhanced in every other block of 4."""
    return SynthConfig(vendor="mixed", enhanced=(index // 4) % 2 == 1, profile=profile)


def generate_mixed(
    out_dir: Path,
    cases: int,
    seed: int,
    *,
    profile: str = "small",
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Generate ``cases`` synthetic cases of mixed vendors and flavours into ``out_dir`` (reusing finished ones).

    A case folder that already holds a ``truth.json`` of the same seed, index and flavour is kept, so an
    interrupted generation resumes where it stopped.

    Returns
    -------
    list of Path
        The case folders, by index.
    """
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    out_dir.mkdir(parents=True, exist_ok=True)
    folders: list[Path] = []
    rows: list[dict[str, str]] = []
    for index in range(cases):
        config = case_config(index, profile)
        folder = _existing(out_dir, seed, index, config)
        if folder is None:
            folder = generate_case(out_dir, index, seed, config)
        folders.append(folder)
        record = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
        rows.append(record["marksheet"])
        if progress:
            progress(index + 1, cases)
    write_marksheet(out_dir / "marksheet.csv", rows)
    return folders


def _existing(out_dir: Path, seed: int, index: int, config: SynthConfig) -> Path | None:
    from training.synth.config import case_ids

    patient, study = case_ids(seed, index)
    folder = out_dir / f"{patient}_{study}"
    truth = folder / "truth.json"
    if not truth.is_file():
        return None
    try:
        record = json.loads(truth.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    same = (
        record.get("seed") == seed
        and record.get("case_index") == index
        and record.get("enhanced") == config.enhanced
        and record.get("profile") == config.profile
    )
    return folder if same else None
