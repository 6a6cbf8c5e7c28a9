"""The gland model's network in torch: a SegResNetDS (MONAI's layout and parameter names) read from the ONNX file.

The TAPS gland model is published as an ONNX export of MONAI's ``SegResNetDS`` (``init_filters`` 32,
``blocks_down`` (1, 2, 2, 4), one block per decoder level, group norm of 8 groups, Mish, transposed-convolution
upsampling, one output channel). :class:`GlandSegResNet` is that network written out here, with the same
module tree and parameter names as MONAI's, so that MONAI's own class (a test dependency, not a run-time one)
can load the same state dict and serve as a second oracle beside ONNX Runtime.

:func:`state_dict_from_onnx` reads the weights from the ONNX graph: convolution weights by their initializer
names (the export keeps them), and each group norm's scale and shift (the export writes ``Reshape ->
InstanceNormalization -> Reshape -> Mul -> Add`` with anonymous initializers) by following the graph from the
norm to the convolution it feeds (``...conv1.weight`` is fed by ``...norm1``). Anything else in the graph (an
operator, a group count, an epsilon, a shape we do not expect) is refused with a message that names it: the
file is then not the network written here.

This module imports torch and onnx (not ONNX Runtime).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional

logger = logging.getLogger(__name__)

__all__ = ["GlandNetworkError", "GlandSegResNet", "mish", "network_from_onnx", "state_dict_from_onnx"]

#: The operators of an exported SegResNetDS with group norm and Mish (and nothing else).
_EXPECTED_OPS = frozenset(
    {
        "Add",
        "Constant",
        "Conv",
        "ConvTranspose",
        "InstanceNormalization",
        "Mul",
        "Reshape",
        "Shape",
        "Softplus",
        "Tanh",
    }
)
_NORM_EPS = 1e-5
_ENCODER_BLOCK = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.conv1\.weight$")
_DECODER_BLOCK = re.compile(r"^up_layers\.(\d+)\.blocks\.(\d+)\.conv1\.weight$")


class GlandNetworkError(ValueError):
    """The ONNX graph is not the SegResNetDS that :class:`GlandSegResNet` writes out (the message says what
    differs)."""


def mish(x: torch.Tensor) -> torch.Tensor:
    """Mish, ``x * tanh(softplus(x))``; on the CPU in inference written as ``x - 2x / ((e + 1)^2 + 1)``,
    ``e = exp(x)``.

    ATen's CPU kernel evaluates an exponential, a logarithm and a hyperbolic tangent per value: 18 ms for the
    network's largest activation (32 x 80 x 72 x 24) on 2 cores, against 4 ms for this form (one exponential
    and five passes over one buffer), which is within 2e-6 of Mish from -100 to 100 (``(e + 1)^2`` overflows to
    ``inf`` above 44, where the form gives ``x``, as Mish does in float32). Elsewhere (CUDA, autograd) ATen's
    kernel runs.
    """
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return functional.mish(x)
    inverse = torch.exp(x)
    inverse.add_(1.0).square_().add_(1.0).reciprocal_()
    return torch.addcmul(x, x, inverse, value=-2.0, out=inverse)


class _Block(nn.Module):
    """MONAI's ``SegResBlock``: norm, Mish, 3x3x3 conv, twice, plus the identity."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=_NORM_EPS)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, channels, eps=_NORM_EPS)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv1(mish(self.norm1(x)))
        y = self.conv2(mish(self.norm2(y)))
        return y + x


class _Upsample(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose3d(
            channels_in, channels_out, 3, stride=2, padding=1, output_padding=1, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.deconv(x)
        return out


class _DownLevel(nn.Module):
    """One encoder level: its blocks, then (but at the deepest level) a strided convolution."""

    def __init__(self, channels: int, count: int, groups: int, *, deepest: bool) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_Block(channels, groups) for _ in range(count)])
        self.downsample = (
            None if deepest else nn.Conv3d(channels, channels * 2, 3, stride=2, padding=1, bias=False)
        )


class _UpLevel(nn.Module):
    """One decoder level: upsampling, the skip added, its blocks, and (at the last level) the head."""

    def __init__(self, channels: int, count: int, groups: int, out_channels: int | None) -> None:
        super().__init__()
        self.upsample = _Upsample(channels * 2, channels)
        self.blocks = nn.Sequential(*[_Block(channels, groups) for _ in range(count)])
        self.head = None if out_channels is None else nn.Conv3d(channels, out_channels, 1, bias=True)


class _Encoder(nn.Module):
    def __init__(self, in_channels: int, init_filters: int, blocks_down: Sequence[int], groups: int) -> None:
        super().__init__()
        self.conv_init = nn.Conv3d(in_channels, init_filters, 3, padding=1, bias=False)
        self.layers = nn.ModuleList(
            _DownLevel(init_filters * 2**level, count, groups, deepest=level == len(blocks_down) - 1)
            for level, count in enumerate(blocks_down)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        x = self.conv_init(x)
        for level in self.layers:
            layer = cast(_DownLevel, level)
            x = layer.blocks(x)
            outputs.append(x)
            if layer.downsample is not None:
                x = layer.downsample(x)
        return outputs


class GlandSegResNet(nn.Module):
    """MONAI's ``SegResNetDS`` (isotropic kernels, transposed-convolution upsampling, group norm, Mish, one
    output at full resolution), with MONAI's parameter names.

    Parameters
    ----------
    in_channels, out_channels : int
        Input and output channels.
    init_filters : int
        Channels of the first level (doubled at each level down).
    blocks_down : sequence of int
        Residual blocks per encoder level.
    blocks_up : sequence of int
        Residual blocks per decoder level (``len(blocks_down) - 1`` levels).
    groups : int
        Groups of each group norm.

    Notes
    -----
    Each spatial dimension of the input must be divisible by ``2 ** (len(blocks_down) - 1)``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        init_filters: int = 32,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        groups: int = 8,
    ) -> None:
        super().__init__()
        if len(blocks_up) != len(blocks_down) - 1 or min([*blocks_down, *blocks_up], default=0) < 1:
            raise ValueError(
                f"GlandSegResNet needs one decoder level fewer than encoder levels and at least one block per "
                f"level, got blocks_down={tuple(blocks_down)} and blocks_up={tuple(blocks_up)}"
            )
        self.factor = 2 ** (len(blocks_down) - 1)
        self.encoder = _Encoder(in_channels, init_filters, blocks_down, groups)
        self.up_layers = nn.ModuleList(
            _UpLevel(
                init_filters * 2 ** (len(blocks_down) - 2 - index),
                count,
                groups,
                out_channels if index == len(blocks_up) - 1 else None,
            )
            for index, count in enumerate(blocks_up)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(size % self.factor for size in x.shape[2:]):
            raise ValueError(
                f"GlandSegResNet needs spatial sizes divisible by {self.factor}, got {tuple(x.shape[2:])}"
            )
        skips = self.encoder(x)
        x = skips.pop()
        for level in self.up_layers:
            layer = cast(_UpLevel, level)
            x = layer.blocks(layer.upsample(x) + skips.pop())
        out: torch.Tensor = cast(nn.Module, cast(_UpLevel, self.up_layers[-1]).head)(x)
        return out


def _consumers(graph: Any) -> dict[str, list[Any]]:
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _only(nodes: list[Any], op_type: str, after: str) -> Any:
    if len(nodes) != 1 or nodes[0].op_type != op_type:
        found = ", ".join(node.op_type for node in nodes) or "nothing"
        raise GlandNetworkError(
            f"after {after} the graph has {found}, not one {op_type} (a group norm as exported)"
        )
    return nodes[0]


@dataclass(frozen=True)
class _GraphTables:
    """Look-up tables of an ONNX graph.

    Attributes
    ----------
    nodes : sequence
        The graph's nodes, in graph order.
    initializers : dict of str to ndarray
        The initializers by name.
    constants : dict of str to ndarray
        The values of the ``Constant`` nodes by output name.
    consumers : dict of str to list
        The nodes that read each value.
    """

    nodes: Sequence[Any]
    initializers: dict[str, np.ndarray[Any, Any]]
    constants: dict[str, np.ndarray[Any, Any]]
    consumers: dict[str, list[Any]]


def _check_operators(graph: Any) -> None:
    """Refuse a graph with an operator that an exported SegResNetDS has not.

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph.

    Raises
    ------
    GlandNetworkError
        Naming the unexpected operators.
    """
    unexpected = sorted({node.op_type for node in graph.node} - _EXPECTED_OPS)
    if unexpected:
        raise GlandNetworkError(
            f"the graph has operators an exported SegResNetDS has not: {', '.join(unexpected)}"
        )


def _graph_tables(graph: Any) -> _GraphTables:
    """The initializers, constants and consumers of an ONNX graph.

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph.

    Returns
    -------
    _GraphTables
    """
    from onnx import numpy_helper

    initializers = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    constants = {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t)
        for node in graph.node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
    }
    return _GraphTables(graph.node, initializers, constants, _consumers(graph))


def _conv_weights(tables: _GraphTables) -> dict[str, np.ndarray[Any, Any]]:
    """The weights (and biases) of every convolution, by their initializer names, in graph order.

    Parameters
    ----------
    tables : _GraphTables
        The graph's look-up tables.

    Returns
    -------
    dict of str to ndarray

    Raises
    ------
    GlandNetworkError
        A convolution's weight is not a constant.
    """
    weights: dict[str, np.ndarray[Any, Any]] = {}
    for node in tables.nodes:
        if node.op_type in ("Conv", "ConvTranspose"):
            for name in node.input[1:]:
                if name not in tables.initializers:
                    raise GlandNetworkError(
                        f"the weight {name!r} of {node.op_type} {node.name!r} is not a constant"
                    )
                weights[name] = tables.initializers[name]
    return weights


def _check_group_norm(node: Any, tables: _GraphTables) -> None:
    """Refuse an ``InstanceNormalization`` that is not the core of an exported 8-group norm, epsilon 1e-5.

    Parameters
    ----------
    node : onnx.NodeProto
        The ``InstanceNormalization`` node.
    tables : _GraphTables
        The graph's look-up tables.

    Raises
    ------
    GlandNetworkError
        Naming the normalisation.
    """
    from onnx import helper

    epsilon = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
    reshape_in = next((n for n in tables.nodes if node.input[0] in n.output), None)
    if reshape_in is None or reshape_in.op_type != "Reshape" or reshape_in.input[1] not in tables.constants:
        raise GlandNetworkError(f"the normalisation {node.name!r} is not a group norm as exported")
    groups = int(tables.constants[reshape_in.input[1]][1])
    scale, shift = (tables.constants.get(name, tables.initializers.get(name)) for name in node.input[1:3])
    if (
        groups != 8
        or abs(float(epsilon) - _NORM_EPS) > 1e-9
        or scale is None
        or shift is None
        or not np.all(scale == 1.0)
        or not np.all(shift == 0.0)
    ):
        raise GlandNetworkError(
            f"the normalisation {node.name!r} is not an 8-group norm with epsilon 1e-5 as exported "
            f"(groups {groups}, epsilon {epsilon})"
        )


def _group_norm_affine(
    node: Any, tables: _GraphTables
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], str]:
    """A group norm's scale and shift: the ``Reshape -> Mul -> Add`` that follows its normalisation.

    Parameters
    ----------
    node : onnx.NodeProto
        The ``InstanceNormalization`` node.
    tables : _GraphTables
        The graph's look-up tables.

    Returns
    -------
    weight, bias : ndarray
        The scale and shift (as stored).
    output : str
        The name of the group norm's output (the ``Add``'s).

    Raises
    ------
    GlandNetworkError
        The graph after the normalisation is not as exported, or the scale or shift is not a constant.
    """
    reshape_out = _only(tables.consumers.get(node.output[0], []), "Reshape", node.name)
    mul = _only(tables.consumers.get(reshape_out.output[0], []), "Mul", reshape_out.name)
    add = _only(tables.consumers.get(mul.output[0], []), "Add", mul.name)
    weight = next((tables.initializers[n] for n in mul.input if n in tables.initializers), None)
    bias = next((tables.initializers[n] for n in add.input if n in tables.initializers), None)
    if weight is None or bias is None:
        raise GlandNetworkError(f"the group norm {node.name!r} has no constant scale and shift")
    return weight, bias, str(add.output[0])


def _norm_prefix(norm_name: str, target: str) -> str:
    """MONAI's name of a group norm (``...norm1``) from the convolution weight it feeds (``...conv1.weight``).

    Parameters
    ----------
    norm_name : str
        The normalisation node's name (for messages).
    target : str
        The weight name of the convolution the norm feeds.

    Returns
    -------
    str

    Raises
    ------
    GlandNetworkError
        ``target`` is not a block's convolution.
    """
    match = re.match(r"^(.*)\.conv([12])\.weight$", target)
    if match is None:
        raise GlandNetworkError(f"the group norm {norm_name!r} feeds {target!r}, not a block's convolution")
    return f"{match.group(1)}.norm{match.group(2)}"


def state_dict_from_onnx(model: Any) -> dict[str, torch.Tensor]:
    """The parameters of an exported SegResNetDS, with MONAI's names, read from its ONNX graph.

    Parameters
    ----------
    model : onnx.ModelProto
        The loaded ONNX model (not changed).

    Returns
    -------
    dict of str to torch.Tensor
        float32 tensors.

    Raises
    ------
    GlandNetworkError
        When the graph holds an operator, a normalisation or a tensor that the exported SegResNetDS does not.
    """
    graph = model.graph
    _check_operators(graph)
    tables = _graph_tables(graph)
    state = _conv_weights(tables)
    for node in graph.node:
        if node.op_type != "InstanceNormalization":
            continue
        _check_group_norm(node, tables)
        weight, bias, output = _group_norm_affine(node, tables)
        prefix = _norm_prefix(node.name, _conv_fed_by(output, tables.consumers))
        state[f"{prefix}.weight"] = weight.reshape(-1)
        state[f"{prefix}.bias"] = bias.reshape(-1)
    return {
        name: torch.from_numpy(np.array(value, dtype=np.float32, copy=True)) for name, value in state.items()
    }


def _conv_fed_by(name: str, consumers: Mapping[str, list[Any]]) -> str:
    """The weight name of the first convolution reached from ``name`` through the activation."""
    frontier = [name]
    for _ in range(8):
        following = [node for value in frontier for node in consumers.get(value, [])]
        for node in following:
            if node.op_type == "Conv":
                return str(node.input[1])
        frontier = [out for node in following for out in node.output]
    raise GlandNetworkError(f"no convolution follows {name!r} within the activation")


def _architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """GlandSegResNet's arguments read from the parameter names and shapes."""
    if "encoder.conv_init.weight" not in state:
        raise GlandNetworkError(
            "the graph has no 'encoder.conv_init.weight': it is not an exported SegResNetDS"
        )
    down: dict[int, int] = {}
    up: dict[int, int] = {}
    for name in state:
        for pattern, counts in ((_ENCODER_BLOCK, down), (_DECODER_BLOCK, up)):
            found = pattern.match(name)
            if found:
                level, block = int(found.group(1)), int(found.group(2))
                counts[level] = max(counts.get(level, 0), block + 1)
    init = state["encoder.conv_init.weight"]
    heads = [name for name in state if name.endswith(".head.weight")]
    if not heads:
        raise GlandNetworkError("the graph has no output head ('up_layers.N.head.weight')")
    return {
        "in_channels": int(init.shape[1]),
        "out_channels": int(state[heads[-1]].shape[0]),
        "init_filters": int(init.shape[0]),
        "blocks_down": tuple(down[level] for level in sorted(down)),
        "blocks_up": tuple(up[level] for level in sorted(up)),
        "groups": 8,
    }


def network_from_onnx(model_bytes: bytes) -> GlandSegResNet:
    """The network of an ONNX export of SegResNetDS, with its weights, in eval mode.

    Raises
    ------
    GlandNetworkError
        When the bytes are not an ONNX model, or not the SegResNetDS written here (every parameter must be
        matched, none left over).
    """
    import onnx

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # onnx raises DecodeError and others for bytes that are no model
        raise GlandNetworkError(f"not an ONNX model: {exc}") from exc
    state = state_dict_from_onnx(model)
    arguments = _architecture(state)
    try:
        network = GlandSegResNet(**arguments)
        network.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise GlandNetworkError(f"the ONNX weights do not fit a SegResNetDS with {arguments}: {exc}") from exc
    logger.debug("gland network read from ONNX: %s", arguments)
    return network.eval()
