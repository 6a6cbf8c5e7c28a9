"""The localization and classification networks, their configurations and the joint gradient path."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from lesion_engine.model.networks import (
    ClassificationNet,
    ClassificationNetConfig,
    JointModel,
    LocalizationNet,
    LocalizationNetConfig,
    extract_patches,
)

LOC = LocalizationNetConfig(channels=(4, 8), strides=((1, 2, 2),), num_zones=3)
CLS = ClassificationNetConfig(channels=(4, 8), patch_size=(2, 8, 8))


@pytest.mark.parametrize("num_zones", [0, 3])
def test_localization_output_shape(num_zones: int) -> None:
    config = LocalizationNetConfig(channels=(4, 8, 8), strides=((1, 2, 2), (2, 2, 2)), num_zones=num_zones)
    net = LocalizationNet(config)
    out = net(torch.randn(2, 3, 4, 16, 24))
    assert out.shape == (2, 1 + num_zones, 4, 16, 24)


def test_divisor_is_product_of_strides() -> None:
    config = LocalizationNetConfig(channels=(4, 8, 8, 8), strides=((1, 2, 2), (2, 2, 2), (1, 2, 2)))
    assert config.divisor == (2, 8, 8)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 2, 4, 16, 16), "expected images of shape"), ((1, 3, 4, 15, 16), "must be a multiple")],
)
def test_localization_rejects_bad_input(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalizationNet(LOC)(torch.randn(*shape))


def test_classification_output_shapes() -> None:
    net = ClassificationNet(CLS)
    cancer, category = net(torch.randn(5, 4, 2, 8, 8))
    assert cancer.shape == (5,)
    assert category.shape == (5, CLS.num_categories)
    with pytest.raises(ValueError, match="expected patches of shape"):
        net(torch.randn(5, 4, 2, 8, 9))


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        (LocalizationNetConfig, {"channels": ()}, "channels"),
        (LocalizationNetConfig, {"channels": (4, 0)}, "channels"),
        (LocalizationNetConfig, {"in_channels": 0}, "in_channels"),
        (LocalizationNetConfig, {"num_zones": 1}, "num_zones"),
        (LocalizationNetConfig, {"channels": (4, 8), "strides": ()}, "one stride per level"),
        (LocalizationNetConfig, {"channels": (4, 8), "strides": ((1, 2),)}, "stride"),
        (LocalizationNetConfig, {"channels": (4, 8), "strides": ((1, 0, 2),)}, "stride"),
        (ClassificationNetConfig, {"patch_size": (4, 8)}, "patch_size"),
        (ClassificationNetConfig, {"in_channels": 1}, "in_channels"),
        (ClassificationNetConfig, {"num_categories": 1}, "num_categories"),
        (ClassificationNetConfig, {"channels": (-1,)}, "channels"),
    ],
)
def test_config_validation(kind: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kind(**kwargs)


def test_joint_model_requires_matching_channels() -> None:
    with pytest.raises(ValueError, match="in_channels must be 4"):
        JointModel(LOC, ClassificationNetConfig(in_channels=5, channels=(4,), patch_size=(2, 8, 8)))


def test_classification_config_round_trip() -> None:
    assert ClassificationNetConfig.from_dict(CLS.to_dict()) == CLS


def test_localization_config_round_trip_without_zones() -> None:
    config = LocalizationNetConfig(channels=(4, 8), strides=((1, 2, 2),), num_zones=0)
    assert LocalizationNetConfig.from_dict(config.to_dict()) == config


def test_localization_config_round_trip_with_zones() -> None:
    assert LocalizationNetConfig.from_dict(LOC.to_dict()) == LOC


def test_extract_patches_shape_and_zero_padding() -> None:
    volume = torch.ones(2, 1, 4, 10, 10)
    centers = torch.tensor([[0, 0, 0], [2, 5, 5]])
    patches = extract_patches(volume, centers, torch.tensor([0, 1]), (2, 4, 4))
    assert patches.shape == (2, 1, 2, 4, 4)
    # At the corner, the half of the patch before the volume is padding.
    assert patches[0].sum() == 1 * 2 * 2
    assert patches[1].sum() == 2 * 4 * 4
    empty = extract_patches(
        volume, torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long), (2, 4, 4)
    )
    assert empty.shape == (0, 1, 2, 4, 4)


def test_extract_patches_validates_arguments() -> None:
    volume = torch.ones(1, 1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        extract_patches(volume, torch.zeros(2, 2), torch.zeros(2), (2, 4, 4))
    with pytest.raises(ValueError, match="one entry per centre"):
        extract_patches(volume, torch.zeros(2, 3), torch.zeros(3), (2, 4, 4))


def test_joint_forward_without_candidates() -> None:
    model = JointModel(LOC, CLS)
    out = model(
        torch.randn(1, 3, 2, 16, 16), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    )
    assert out.loc_logits.shape == (1, 1, 2, 16, 16)
    assert out.zone_logits is not None
    assert out.zone_logits.shape == (1, 3, 2, 16, 16)
    assert out.cancer_logits.shape == (0,)
    assert out.category_logits.shape == (0, CLS.num_categories)
    assert torch.allclose(out.localization_map, torch.sigmoid(out.loc_logits))


def _classification_step(
    detach_map: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], JointModel]:
    """One SGD step on the classification loss alone; loc and cls parameters before the step."""
    torch.manual_seed(0)
    model = JointModel(LOC, CLS, detach_map=detach_map).train()
    loc_before = {k: v.detach().clone() for k, v in model.loc.named_parameters()}
    cls_before = {k: v.detach().clone() for k, v in model.cls.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    images = torch.randn(2, 3, 2, 16, 16)
    centers = torch.tensor([[1, 8, 8], [0, 4, 12], [1, 10, 3]])
    batch_index = torch.tensor([0, 1, 1])
    out = model(images, centers, batch_index)
    loss = F.binary_cross_entropy_with_logits(out.cancer_logits, torch.tensor([1.0, 0.0, 1.0]))
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return loc_before, cls_before, model


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    return [k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())]


def test_classification_loss_trains_the_localization_network_through_the_map() -> None:
    loc_before, cls_before, model = _classification_step(detach_map=False)
    changed = _changed(loc_before, model.loc)
    # Every localization parameter lies on the path to the lesion logit, so every one moves.
    assert sorted(changed) == sorted(loc_before)
    assert _changed(cls_before, model.cls)


def test_detached_map_stops_classification_gradients() -> None:
    loc_before, cls_before, model = _classification_step(detach_map=True)
    assert _changed(loc_before, model.loc) == []
    assert _changed(cls_before, model.cls)
