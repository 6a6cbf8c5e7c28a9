"""The CPU's convolution kernels: oneDNN where ATen would take its slow kernel, transposed convolutions without
overlap as a matrix product."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lesion_engine.model.devices import use_fast_cpu_convolutions
from lesion_engine.model.networks import LocalizationNet
from tests.paths import REPO


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


_FAULTS_OF_A_PASS = """
import resource, sys
import torch
from lesion_engine.model import devices
from lesion_engine.model.networks import LocalizationNet
net = LocalizationNet().eval()
devices.use_fast_cpu_convolutions(net)
done = devices.retain_freed_memory() if sys.argv[1] == "retain" else None
images = torch.zeros(1, 3, 20, 128, 128)  # the default model grid
faults = []
with torch.inference_mode():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(images)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(done, min(faults[3:]))
"""


def _faults_of_a_pass(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    """Page faults of the localization network's forward pass in a fresh process, once warm (the fewest of
    its fourth to sixth passes)."""
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_OF_A_PASS, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | (env or {}),
    ).stdout.split()
    return out[0], int(out[1])


def test_the_networks_keep_their_freed_activations_for_the_next_study() -> None:
    """By default glibc gives the activations' memory back after each pass, and the next pass faults it in
    again page by page (some 60000 pages, 240 MB, here); with the setting, a warm pass reuses it."""
    done, retained = _faults_of_a_pass("retain")
    _, default = _faults_of_a_pass("default")
    assert done == "True"
    assert default > 20000 and retained < 500, (default, retained)
    # an owner's own malloc tunables are left as they are
    assert _faults_of_a_pass("retain", {"MALLOC_TRIM_THRESHOLD_": "131072"})[0] == "False"


_BLAS_THREADS = """
import os
os.sched_setaffinity(0, range(os.cpu_count()))  # not the share of one test worker
from threadpoolctl import threadpool_info
from lesion_engine.model import devices
def blas_threads():
    return sorted({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})
before = blas_threads()
limited = devices.limit_blas_threads()
print(before, limited, blas_threads())
"""


def test_numpys_blas_runs_on_one_thread_in_the_engines_process() -> None:
    """Its threads spun after the gland's z-score figures and slowed the gland network that follows."""
    out = subprocess.run(
        [sys.executable, "-c", _BLAS_THREADS],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
        | {"OPENBLAS_NUM_THREADS": "2"},
    ).stdout.strip()
    assert out == f"[{min(2, os.cpu_count() or 1)}] 1 [1]", out
