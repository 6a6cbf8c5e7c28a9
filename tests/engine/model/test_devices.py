"""The CPU's convolution kernel: the engine's networks call oneDNN where ATen would take its slow kernel."""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lesion_engine.model.devices import use_onednn_convolutions
from lesion_engine.model.networks import LocalizationNet


def _kernels(module: nn.Module, x: torch.Tensor) -> set[str]:
    """The ATen convolution kernels one forward pass of ``module`` runs."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)
    return {event.key for event in prof.key_averages() if "conv" in event.key}


def test_a_small_convolution_runs_through_onednn_with_the_same_values() -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(64, 64, 3, padding=1, bias=True).eval()
    x = torch.randn(1, 64, 10, 32, 32)  # N*C*D*H = 20480: ATen's heuristic takes its slow kernel
    assert "aten::slow_conv3d_forward" in _kernels(conv, x)
    with torch.inference_mode():
        before = conv(x)
    assert use_onednn_convolutions(conv) == 1
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
    convs = sum(type(m) is nn.Conv3d for m in net.modules())
    assert use_onednn_convolutions(net) == convs > 0
    assert use_onednn_convolutions(net) == 0, "a second call changes nothing more"
    assert list(net.state_dict()) == names
    with torch.inference_mode():
        after = net(x)
    assert float((after - before).abs().max()) < 1e-4


def test_training_still_runs_through_autograd() -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 3, padding=1)
    use_onednn_convolutions(conv)
    out = conv(torch.randn(1, 2, 4, 8, 8))
    assert out.requires_grad
    out.sum().backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0
