"""An exact reference for the gland model's ONNX graph: its nodes evaluated one by one, in float64, per the ONNX
operator definitions (only the ten operators that graph has).

ONNX Runtime computes in float32, and its InstanceNormalization over a group norm's large flattened groups
loses precision (measured on the fixture: 1.6e-4 relative error after the first norm, where float32 torch
has 4e-7). This evaluator says which of two float32 runtimes is near the graph's exact value. It shares no
code with :mod:`lesion_engine.anatomy.gland_network`: it reads the graph, not a module tree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from onnx import helper, numpy_helper
from torch.nn import functional


def evaluate_float64(model: Any, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The graph's single output for ``batch`` (fed to its single input), computed in float64."""
    graph = model.graph
    values: dict[str, torch.Tensor] = {}
    for item in graph.initializer:
        tensor = torch.from_numpy(numpy_helper.to_array(item).copy())
        values[item.name] = tensor.double() if tensor.is_floating_point() else tensor
    values[graph.input[0].name] = torch.from_numpy(batch).double()
    with torch.inference_mode():
        for node in graph.node:
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            inputs = [values[name] for name in node.input if name]
            values[node.output[0]] = _apply(node.op_type, inputs, attributes)
    return values[graph.output[0].name].numpy()


def _apply(op: str, inputs: list[torch.Tensor], attributes: dict[str, Any]) -> torch.Tensor:
    if op == "Constant":
        tensor = torch.from_numpy(numpy_helper.to_array(attributes["value"]).copy())
        return tensor.double() if tensor.is_floating_point() else tensor
    if op in ("Conv", "ConvTranspose"):
        if attributes.get("group", 1) != 1 or any(d != 1 for d in attributes.get("dilations", [1, 1, 1])):
            raise ValueError(f"{op} with groups or dilations is not in the gland model")
        pads = attributes["pads"]
        if pads[:3] != pads[3:]:
            raise ValueError(f"{op} with asymmetric pads is not in the gland model")
        bias = inputs[2] if len(inputs) > 2 else None
        if op == "Conv":
            return functional.conv3d(
                inputs[0], inputs[1], bias, stride=attributes["strides"], padding=pads[:3]
            )
        return functional.conv_transpose3d(
            inputs[0],
            inputs[1],
            bias,
            stride=attributes["strides"],
            padding=pads[:3],
            output_padding=attributes.get("output_padding", [0, 0, 0]),
        )
    if op == "Reshape":
        shape = [int(s) if int(s) != 0 else inputs[0].shape[k] for k, s in enumerate(inputs[1].tolist())]
        return inputs[0].reshape(shape)
    if op == "Shape":
        return torch.tensor(list(inputs[0].shape), dtype=torch.int64)
    if op == "InstanceNormalization":
        return functional.instance_norm(
            inputs[0], weight=inputs[1], bias=inputs[2], eps=attributes["epsilon"]
        )
    if op == "Mul":
        return inputs[0] * inputs[1]
    if op == "Add":
        return inputs[0] + inputs[1]
    if op == "Softplus":
        return torch.log1p(torch.exp(inputs[0]))
    if op == "Tanh":
        return torch.tanh(inputs[0])
    raise ValueError(f"operator {op} is not in the gland model")
