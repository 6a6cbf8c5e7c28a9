"""Training logs: one CSV row per step and per epoch, and a PNG of the loss curves.

``steps.csv`` and ``epochs.csv`` are appended to as training runs. On resume, rows past the checkpoint are
dropped first (:meth:`CsvLog.truncate`), so the logs of a resumed run read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.evaluation.plots import save_figure

logger = logging.getLogger(__name__)

__all__ = ["CsvLog", "plot_losses"]


class CsvLog:
    """An append-only CSV file with a fixed header.

    Parameters
    ----------
    path : Path
        The file; created with the header when missing.
    fields : sequence of str
        Column names.
    """

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path = path
        self.fields = list(fields)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(self.fields)

    def append(self, row: dict[str, float | int | str]) -> None:
        """Write one row (missing fields are left empty)."""
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, self.fields, extrasaction="ignore").writerow(row)

    def rows(self) -> list[dict[str, str]]:
        """All rows read back."""
        with self.path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def truncate(self, column: str, last: int) -> None:
        """Drop rows whose integer ``column`` is greater than ``last``."""
        kept = [r for r in self.rows() if r.get(column) not in (None, "") and int(float(r[column])) <= last]
        with self.path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if values.size < 2 or window < 2:
        return values
    window = min(window, values.size)
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_losses(steps_csv: Path, epochs_csv: Path, out: Path, terms: Sequence[str]) -> Path:
    """Plot the step losses (smoothed) and epoch means of ``terms`` into ``out`` (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step_rows = CsvLog(steps_csv, []).rows() if steps_csv.is_file() else []
    epoch_rows = CsvLog(epochs_csv, []).rows() if epochs_csv.is_file() else []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if step_rows:
        steps = np.asarray([float(r["step"]) for r in step_rows])
        window = max(1, len(step_rows) // 50)
        for term in terms:
            values = np.asarray([float(r[term]) if r.get(term) else np.nan for r in step_rows])
            if np.all(np.isnan(values)):
                continue
            axes[0].plot(steps, _moving_average(np.nan_to_num(values), window), label=term)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss (moving average)")
    axes[0].set_title("per step")
    axes[0].grid(alpha=0.3)
    if epoch_rows:
        epochs = np.asarray([float(r["epoch"]) for r in epoch_rows])
        for term in terms:
            values = np.asarray([float(r[term]) if r.get(term) else np.nan for r in epoch_rows])
            if not np.all(np.isnan(values)):
                axes[1].plot(epochs, values, marker="o", label=term)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("mean loss")
    axes[1].set_title("per epoch")
    axes[1].grid(alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out)
    return out
