"""The CPU's convolution kernels: oneDNN where ATen would take its slow kernel, transposed convolutions without
overlap as a matrix product."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lesion_engine.model.devices import use_fast_cpu_convolutions
from lesion_engine.model.networks import LocalizationNet


def _kernels(module: nn.Module, x: torch.Tensor) -> set[str]:
    """The ATen convolution kernels one forward pass of ``module`` runs."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)
    return {event.key for event in prof.key_averages() if "conv" in event.key}


def test_a_small_convolution_runs_through_onednn_with_the_same_values() -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(64, 64, 3, padding=1, bias=True).eval()
    x = torch.randn(1, 64, 10, 32, 32)  # N*C*D*H = 20480: torch 2.13's heuristic takes its slow kernel
    with torch.inference_mode():
        before = conv(x)
    assert use_fast_cpu_convolutions(conv) == 1
    kernels = _kernels(conv, x)
    assert "aten::mkldnn_convolution" in kernels
    assert "aten::slow_conv3d_forward" not in kernels
    with torch.inference_mode():
        after = conv(x)
    assert float((after - before).abs().max()) < 1e-4


def test_the_network_keeps_its_parameters_and_its_outputs() -> None:
    torch.manual_seed(0)
    net = LocalizationNet().eval()
    names = list(net.state_dict())
    x = torch.randn(1, net.config.in_channels, 8, 32, 32)
    with torch.inference_mode():
        before = net(x)
    convs = sum(type(m) in (nn.Conv3d, nn.ConvTranspose3d) for m in net.modules())
    assert use_fast_cpu_convolutions(net) == convs > 0
    assert use_fast_cpu_convolutions(net) == 0, "a second call changes nothing more"
    assert list(net.state_dict()) == names
    with torch.inference_mode():
        after = net(x)
    assert float((after - before).abs().max()) < 1e-4


def test_training_still_runs_through_autograd() -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 3, padding=1)
    use_fast_cpu_convolutions(conv)
    out = conv(torch.randn(1, 2, 4, 8, 8))
    assert out.requires_grad
    out.sum().backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    ("stride", "bias"), [((1, 2, 2), True), ((2, 2, 2), False), ((2, 1, 3), True)], ids=["122", "222", "213"]
)
def test_a_transposed_convolution_without_overlap_is_a_matrix_product(
    stride: tuple[int, int, int], bias: bool
) -> None:
    torch.manual_seed(0)
    up = nn.ConvTranspose3d(8, 5, stride, stride=stride, bias=bias).eval()
    x = torch.randn(2, 8, 3, 5, 4)
    with torch.inference_mode():
        before = up(x)
    assert use_fast_cpu_convolutions(up) == 1
    kernels = _kernels(up, x)
    assert not any("conv" in k for k in kernels), kernels
    with torch.inference_mode():
        after = up(x)
    assert after.shape == before.shape
    assert float((after - before).abs().max()) < 1e-5


def test_overlapping_transposed_convolutions_are_left_to_aten() -> None:
    overlapping = nn.ConvTranspose3d(4, 4, 3, stride=2, padding=1, output_padding=1)
    assert use_fast_cpu_convolutions(overlapping) == 0
    assert type(overlapping) is nn.ConvTranspose3d
