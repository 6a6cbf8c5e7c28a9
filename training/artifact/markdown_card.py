"""``MODEL_CARD.md``: the human-readable card of a trained default model, written next to ``model.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lesion_engine.model.artifact import ModelCard, read_card

logger = logging.getLogger(__name__)

__all__ = ["write_model_card"]

_KIND_NAMES = {
    "cspca": "csPCa (ISUP >= 2)",
    "indolent": "indolent cancer (ISUP 1)",
    "bph": "BPH nodule",
    "prostatitis": "prostatitis",
    "none": "reported, no reference lesion",
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _metrics_row(name: str, held: dict[str, Any], minutes: float | None) -> str:
    cells = [
        name,
        _fmt(held["auroc"]),
        _fmt(held["AP"]),
        _fmt(held["ranking_score"]),
        _fmt(held["sensitivity_at_0.5_fp"]),
        _fmt(held["sensitivity_at_1_fp"]),
        _fmt(minutes, 1) if minutes is not None else "n/a",
    ]
    return "| " + " | ".join(cells) + " |"


def _kind_rows(per_kind: dict[str, Any]) -> list[str]:
    rows = []
    for kind, entry in per_kind.items():
        rate = entry.get("detection_rate")
        rows.append(
            f"| {_KIND_NAMES.get(kind, kind)} | {entry['lesions']} | {_fmt(rate, 2)} | "
            f"{_fmt(entry['called_cspca_rate'], 2)} | {_fmt(entry['mean_probability_when_detected'], 2)} |"
        )
    return rows


def _confusion_lines(confusion: dict[str, Any] | None) -> list[str]:
    if not confusion:
        return []
    columns = confusion["columns_predicted"]
    lines = [
        "Suspicion category of the reference lesions (rows; benign mimic 2, ISUP 1 -> 3, ISUP 2 -> 4, ISUP >= 3 -> 5) "
        "against the category of the lesion reported on them (columns):",
        "",
        "| reference \\ reported | " + " | ".join(columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name, row in zip(confusion["rows_true"], confusion["matrix"], strict=True):
        if any(row):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return [*lines, ""]


FIGURES: dict[str, str] = {
    "heldout_roc.png": "ROC (patient level, held-out set)",
    "heldout_froc.png": "FROC (lesion level, held-out set)",
    "heldout_pr.png": "precision-recall (lesion level, held-out set)",
    "training_loss.png": "loss curves of the joint training run",
}
"""Figure files installed beside the model (see ``training.default_model.install``) and their captions."""


def _figure_lines(folder: Path) -> list[str]:
    present = [(name, caption) for name, caption in FIGURES.items() if (folder / name).is_file()]
    if not present:
        return []
    return ["Figures (joint model):", "", *[f"- [{caption}]({name})" for name, caption in present], ""]


def _description_lines(card: ModelCard, training: dict[str, Any]) -> list[str]:
    """The card's title, its research-only warning and "What it is" (architecture and training scheme)."""
    loc = card.localization
    pre = card.preprocessing
    return [
        f"# Model card: {card.name} {card.version}",
        "",
        "**For research and demonstration only. Not for diagnosis, not a medical device.** This model has never "
        "seen a real patient's MR study: it was trained on synthetic phantoms only, and nothing here says how it "
        "behaves on real images (expect it to fail there). Do not use its output for any clinical decision.",
        "",
        "## What it is",
        "",
        "A jointly trained localization + classification network for biparametric prostate MR (T2W, ADC, "
        "high-b DWI):",
        "",
        f"- localization: 3D U-Net, channels {list(loc.channels)}, strides {[list(s) for s in loc.strides]}, "
        f"with a zonal head ({loc.num_zones} classes); its sigmoid output is the localization map;",
        f"- classification: 3D CNN on a {list(card.classification.patch_size)} voxel patch of the three image "
        "channels plus the localization map around each candidate; outputs the probability of csPCa "
        "(ISUP >= 2) and a suspicion category 2..5;",
        f"- training: loss = localization (BCE + soft Dice, plus zonal cross-entropy) + lambda x classification "
        f"(BCE + category cross-entropy), lambda = {training.get('lambda_cls')}, classification gradients "
        f"flowing into the localization network through the map; {training.get('warmup_epochs')} "
        "localization-only warm-up epoch(s), then joint training;",
        f"- model grid: {list(pre.size_zyx)} voxels of {list(pre.spacing_zyx)} mm (z, y, x), centred on the T2W; "
        f"weights: {card.weights_sha256[:16]}... (sha256 in model.json).",
        "",
    ]


def _training_data_lines(data: dict[str, Any]) -> list[str]:
    """The "Training data" section: the synthetic phantoms the model learnt from."""
    return [
        "## Training data",
        "",
        f"Synthetic phantoms only ({data.get('generator', 'training.synth')}): {data['train']['cases']} training "
        f"cases (seed "
        f"{data['train']['seed']}), DICOM studies written in the conventions of four vendors (Siemens, GE, Philips, "
        "standard), classic and Enhanced MR objects mixed; each phantom holds 0 to 3 lesions among csPCa, "
        "indolent cancer, BPH nodules and prostatitis (the benign mimics and indolent cancers are the "
        "classifier's hard negatives). The studies go through the engine's own DICOM input pipeline.",
        "",
    ]


def _results_lines(
    folder: Path, runs: dict[str, dict[str, Any]], held: dict[str, Any], data: dict[str, Any]
) -> list[str]:
    """The "Held-out results" section: metrics of the joint run (``held``) and its ablation, per kind, figures."""
    joint = runs["joint"]
    lines = [
        "## Held-out results",
        "",
        f"Evaluated with picai_eval on {held['num_cases']} held-out synthetic cases (seed {data['test']['seed']}, "
        f"same mix, different phantoms) holding {held['num_lesions']} csPCa lesions. A detection hits a lesion at "
        "IoU >= 0.10; AUROC is patient level (patient score = highest lesion probability), AP lesion level.",
        "",
        "| model | AUROC | AP | ranking score | sens. @ 0.5 FP/pt | sens. @ 1 FP/pt | training (min) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        _metrics_row("joint (this model)", held, joint["train_seconds"] / 60.0),
    ]
    if "detached_map" in runs:
        detached = runs["detached_map"]
        lines += [
            _metrics_row("ablation: --detach-map", detached["held_out"], detached["train_seconds"] / 60.0),
            "",
            "The ablation is trained on the same data, seeds and step budget, with `JointModel(detach_map=True)`: "
            "the classifier still reads the map, but its gradients stop there.",
        ]
    return [
        *lines,
        "",
        "Per lesion kind (joint model; detected = a reported lesion with IoU >= 0.10; called csPCa = detected "
        "with probability >= 0.5):",
        "",
        "| lesion kind | lesions | detected | called csPCa | mean probability when detected |",
        "| --- | --- | --- | --- | --- |",
        *_kind_rows(held.get("per_kind", {})),
        "",
        *_confusion_lines(held.get("category_confusion")),
        *_figure_lines(folder),
    ]


def _reproduce_lines(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The "Reproduce" section: the run's duration and the commands that made the model."""
    joint = runs["joint"]
    lines = [
        "## Reproduce",
        "",
        f"Training took {joint['train_seconds'] / 60:.1f} min for {joint['steps']} steps on the CPU of the build "
        "machine (2 cores)"
        + (" and stopped at the time limit." if joint.get("time_limit_hit") else ".")
        + " Everything is deterministic by seed; timings depend on the machine.",
        "",
        "```sh",
        "make train-default            # all of the below, then installs this folder",
        "# or step by step (after python -m training.default_model has generated the data):",
        joint["train_command"],
        joint["evaluate_command"],
    ]
    if "detached_map" in runs:
        lines.append(runs["detached_map"]["train_command"])
    return [*lines, "```", ""]


_PICAI_LINES: tuple[str, ...] = (
    "## Training on PI-CAI",
    "",
    "The PI-CAI public training set (1500 cases; images from zenodo, labels from the picai_labels "
    "repository, CC BY-NC 4.0) is read in its published layout: `IMAGES/<patient>/<patient>_<study>_"
    "{t2w,adc,hbv}.mha`, `picai_labels/csPCa_lesion_delineations/human_expert/resampled/`, "
    "`.../AI/Bosma22a/` (used where the expert label is missing), optional "
    "`anatomical_delineations/zonal_pz_tz/AI/<model>/`, `clinical_information/marksheet.csv`, and the "
    "picai_baseline 5-fold splits (`ds-config-{train,valid}-fold-K.json` or nnU-Net's `splits.json`):",
    "",
    "```sh",
    "lesion-ai train --data IMAGES --data-format picai --picai-labels picai_labels \\",
    "    --split SPLITS --fold 0 --out runs/picai-fold0 --epochs 100 --device cuda",
    "lesion-ai evaluate --data IMAGES --data-format picai --picai-labels picai_labels \\",
    "    --split SPLITS --fold 0 --subset valid --model runs/picai-fold0/artifact --out runs/picai-fold0/eval",
    "# several GPUs: torchrun --nproc-per-node 4 -m lesion_engine.cli train ...",
    "```",
    "",
    "PI-CAI delineates csPCa only: there are no benign-mimic masks, so the classifier's hard negatives come "
    "from the candidates of the current map. Check the label licences before shipping a model trained on them.",
    "",
)
"""The "Training on PI-CAI" section: the commands that train and evaluate on the PI-CAI public set."""

_LIMITATIONS_LINES: tuple[str, ...] = (
    "## Limitations",
    "",
    "- Synthetic phantoms are far simpler than real anatomy, pathology, artefacts and scanner variation.",
    "- The suspicion category is learned from a fixed mapping (benign mimic 2, ISUP 1 -> 3, ISUP 2 -> 4, "
    "ISUP >= 3 -> 5), not from radiologists' PI-RADS scores.",
    "- Metrics are on synthetic data from the same generator as the training data.",
    "",
)
"""The "Limitations" section."""


def write_model_card(folder: Path, runs: dict[str, dict[str, Any]], training: dict[str, Any]) -> Path:
    """Write ``MODEL_CARD.md`` into an installed artifact folder.

    Parameters
    ----------
    folder : Path
        The artifact folder (its ``model.json`` is read for architecture and settings).
    runs : dict
        ``joint`` (and ``detached_map``) run records of :func:`training.default_model.reproduce`.
    training : dict
        The card's training record (data, commands).
    """
    card = read_card(folder)
    held = runs["joint"]["held_out"]
    data = training["data"]
    lines = [
        *_description_lines(card, training),
        *_training_data_lines(data),
        *_results_lines(folder, runs, held, data),
        *_reproduce_lines(runs),
        *_PICAI_LINES,
        *_LIMITATIONS_LINES,
    ]
    path = folder / "MODEL_CARD.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    logger.info("model card written to %s", path)
    return path
