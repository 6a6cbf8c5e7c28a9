"""ROC, FROC and precision-recall plots of a picai_eval result (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["plot_curves", "save_figure"]


def plot_curves(metrics: Any, out_dir: Path, title: str = "") -> dict[str, Path]:
    """Write ``roc.png`` (patient level), ``froc.png`` and ``pr.png`` (lesion level) into ``out_dir``.

    Parameters
    ----------
    metrics : picai_eval.Metrics
        The evaluation result.
    out_dir : Path
        Where the PNG files go.
    title : str
        Prefix of the plot titles.

    Returns
    -------
    dict of str to Path
        ``roc``, ``froc`` and ``pr`` files.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{title}: " if title else ""
    paths = {"roc": out_dir / "roc.png", "froc": out_dir / "froc.png", "pr": out_dir / "pr.png"}

    fig, ax = plt.subplots(figsize=(5, 5))
    try:
        ax.plot(metrics.case_FPR, metrics.case_TPR, label=f"AUROC = {metrics.auroc:.3f}")
    except ValueError as exc:  # a single class: no ROC
        ax.text(0.5, 0.5, f"no ROC: {exc}", ha="center", wrap=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("1 - specificity (patient level)")
    ax.set_ylabel("sensitivity (patient level)")
    ax.set_title(f"{prefix}ROC")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    save_figure(fig, paths["roc"])

    fig, ax = plt.subplots(figsize=(5, 5))
    fpr = np.asarray(metrics.lesion_FPR, dtype=float)
    tpr = np.asarray(metrics.lesion_TPR, dtype=float)
    finite = np.isfinite(fpr) & (fpr > 0)
    if finite.any():
        ax.plot(fpr[finite], tpr[finite], label="lesion sensitivity")
    for fp in (0.5, 1.0):
        ax.axvline(fp, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(0.01, max(5.0, float(fpr[finite].max()) if finite.any() else 5.0))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per patient")
    ax.set_ylabel("sensitivity (lesion level)")
    ax.set_title(f"{prefix}FROC")
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, paths["froc"])

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(metrics.recall, metrics.precision, label=f"AP = {metrics.AP:.3f}")
    ax.set_xlabel("recall (lesion level)")
    ax.set_ylabel("precision (lesion level)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{prefix}precision-recall")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    save_figure(fig, paths["pr"])
    return paths


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write as PNG (100 dpi) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
