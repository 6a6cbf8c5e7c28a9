"""Losses of the joint model.

total = localization + ``zone_weight`` x zones + ``lambda_cls`` x classification, where

* localization = BCE (with logits) + soft Dice, both on the csPCa mask (soft Dice over the whole batch, so
  that crops without a lesion still push the map towards 0 without dividing by zero);
* zones = class-weighted cross-entropy of the zonal head (background, PZ, TZ), on items that have a zonal
  mask only;
* classification = BCE of the cancer logit (csPCa yes/no) + ``category_weight`` x cross-entropy of the
  suspicion category (unknown categories, ``-1``, are left out).

The classification terms are computed from :meth:`lesion_engine.model.networks.JointModel.forward`'s outputs, so
their gradients reach the localization network through the map unless the model detaches it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["LossConfig", "LossTerms", "classification_loss", "joint_loss", "localization_loss", "zone_loss"]


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms.

    Attributes
    ----------
    lambda_cls : float
        Weight of the classification loss (the paper's lambda).
    zone_weight : float
        Weight of the zonal cross-entropy (0: no zonal supervision).
    dice_weight : float
        Weight of the soft Dice term within the localization loss.
    category_weight : float
        Weight of the category cross-entropy within the classification loss.
    zone_class_weights : (float, float, float)
        Cross-entropy weights of background, PZ and TZ.
    """

    lambda_cls: float = 1.0
    zone_weight: float = 0.5
    dice_weight: float = 1.0
    category_weight: float = 0.5
    zone_class_weights: tuple[float, float, float] = (1.0, 2.0, 2.0)

    def __post_init__(self) -> None:
        for name in ("lambda_cls", "zone_weight", "dice_weight", "category_weight"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {value!r}")
        if len(self.zone_class_weights) != 3 or any(not w > 0 for w in self.zone_class_weights):
            raise ValueError(
                f"LossConfig.zone_class_weights must be three positive numbers, got {self.zone_class_weights!r}"
            )


@dataclass
class LossTerms:
    """The loss and its parts (the parts are detached, for logging)."""

    total: Tensor
    loc_bce: float
    loc_dice: float
    zone: float
    cls_bce: float
    cls_ce: float

    def as_dict(self) -> dict[str, float]:
        """Floats for logs."""
        return {
            "loss": float(self.total.detach()),
            "loc_bce": self.loc_bce,
            "loc_dice": self.loc_dice,
            "zone": self.zone,
            "cls_bce": self.cls_bce,
            "cls_ce": self.cls_ce,
        }


def localization_loss(loc_logits: Tensor, target: Tensor, eps: float = 1.0) -> tuple[Tensor, Tensor]:
    """BCE and soft Dice loss of (B, 1, Z, Y, X) logits against a (B, Z, Y, X) 0/1 mask."""
    logits = loc_logits[:, 0]
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    intersection = (prob * target).sum()
    dice = 1.0 - (2.0 * intersection + eps) / (prob.sum() + target.sum() + eps)
    return bce, dice


def zone_loss(
    zone_logits: Tensor, zones: Tensor, has_zones: Tensor, class_weights: tuple[float, ...]
) -> Tensor:
    """Class-weighted cross-entropy of (B, K, Z, Y, X) zonal logits on the items that have zones."""
    if not bool(has_zones.any()):
        return zone_logits.sum() * 0.0  # keeps the graph (and DDP's gradient bookkeeping) intact
    weight = torch.as_tensor(class_weights, dtype=zone_logits.dtype, device=zone_logits.device)
    keep = has_zones.to(zone_logits.device)
    return F.cross_entropy(zone_logits[keep], zones[keep], weight=weight)


def classification_loss(
    cancer_logits: Tensor, category_logits: Tensor, cancer_target: Tensor, category_target: Tensor
) -> tuple[Tensor, Tensor]:
    """BCE of the cancer logits (N,) and cross-entropy of the category logits (N, K); ``-1`` categories ignored."""
    if cancer_logits.numel() == 0:
        zero = cancer_logits.sum() * 0.0 + category_logits.sum() * 0.0
        return zero, zero
    bce = F.binary_cross_entropy_with_logits(cancer_logits, cancer_target)
    if bool((category_target >= 0).any()):
        ce = F.cross_entropy(category_logits, category_target, ignore_index=-1)
    else:
        ce = category_logits.sum() * 0.0
    return bce, ce


def joint_loss(
    loc_logits: Tensor,
    zone_logits: Tensor | None,
    cancer_logits: Tensor,
    category_logits: Tensor,
    *,
    cspca: Tensor,
    zones: Tensor,
    has_zones: Tensor,
    cancer_target: Tensor,
    category_target: Tensor,
    config: LossConfig,
    cls_scale: float = 1.0,
) -> LossTerms:
    """Total loss of one batch (see the module docstring).

    Parameters
    ----------
    loc_logits, zone_logits, cancer_logits, category_logits
        The model's outputs for the batch and its candidates.
    cspca, zones, has_zones
        Voxel targets: (B, Z, Y, X) float mask, (B, Z, Y, X) int64 classes, (B,) bool.
    cancer_target, category_target
        Candidate targets: (N,) float 0/1 and (N,) int64 category index (``-1``: unknown).
    config : LossConfig
        Weights.
    cls_scale : float
        Extra factor on the classification loss (0 during a localization-only warm-up).

    Returns
    -------
    LossTerms
    """
    bce, dice = localization_loss(loc_logits, cspca)
    total = bce + config.dice_weight * dice
    zone_value = 0.0
    if zone_logits is not None:
        z_loss = zone_loss(zone_logits, zones, has_zones, config.zone_class_weights)
        total = total + config.zone_weight * z_loss
        zone_value = float(z_loss.detach())
    c_bce, c_ce = classification_loss(cancer_logits, category_logits, cancer_target, category_target)
    total = total + cls_scale * config.lambda_cls * (c_bce + config.category_weight * c_ce)
    return LossTerms(
        total,
        float(bce.detach()),
        float(dice.detach()),
        zone_value,
        float(c_bce.detach()),
        float(c_ce.detach()),
    )
