"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint is two files in ``<run>/checkpoints/``:

* ``last.safetensors``: the model's state (``model/<name>``), the optimizer's per-parameter state
  (``optim/<param index>/<key>``, e.g. Adam's ``exp_avg``) and the torch random state (``rng/torch``);
* ``last.json``: progress (epoch, step within the epoch, global step), the optimizer's hyper-parameters
  (``param_groups``), the learning-rate scheduler's state, numpy random state, the training configuration,
  and the sha256 of the tensor file (checked on load, so a torn or mixed checkpoint is refused).

Both are written to temporary names and renamed, the tensors first, so a crash never leaves a checkpoint
whose JSON points at other tensors. Nothing is ever read with ``torch.load``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lesion_engine.model.artifact import file_sha256

logger = logging.getLogger(__name__)

__all__ = ["Checkpoint", "checkpoint_paths", "load_checkpoint", "save_checkpoint"]

FORMAT = "lesion-ai-training-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """Progress restored from a checkpoint.

    Attributes
    ----------
    epoch : int
        Epoch to continue (0-based).
    step_in_epoch : int
        Optimizer steps already done in that epoch.
    global_step : int
        Optimizer steps done in total.
    extra : dict
        The JSON record's ``extra`` (scheduler state, rng states, config, ...).
    """

    epoch: int
    step_in_epoch: int
    global_step: int
    extra: dict[str, Any]


def checkpoint_paths(folder: Path, name: str = "last") -> tuple[Path, Path]:
    """(tensor file, JSON file) of checkpoint ``name`` in ``folder``."""
    return folder / f"{name}.safetensors", folder / f"{name}.json"


def _replace_atomic(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    step_in_epoch: int,
    global_step: int,
    extra: dict[str, Any] | None = None,
    name: str = "last",
) -> Path:
    """Write a checkpoint (see the module docstring) and return its JSON file."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensors[f"model/{key}"] = value.detach().to("cpu").contiguous().clone()
    state = optimizer.state_dict()
    for param_id, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{param_id}/{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                tensors[f"optim/{param_id}/{key}"] = torch.tensor(value)
    tensors["rng/torch"] = torch.get_rng_state().clone()
    tensor_path, json_path = checkpoint_paths(folder, name)
    tmp_tensors = tensor_path.with_name(tensor_path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp_tensors), metadata={"format": FORMAT})
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": global_step,
        "param_groups": state["param_groups"],
        "tensors_sha256": file_sha256(tmp_tensors),
        "extra": extra or {},
    }
    tmp_json = json_path.with_name(json_path.name + f".tmp{os.getpid()}")
    tmp_json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _replace_atomic(tmp_tensors, tensor_path)
    _replace_atomic(tmp_json, json_path)
    logger.debug("checkpoint at step %d written to %s", global_step, json_path)
    return json_path


def load_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    name: str = "last",
    device: torch.device | str = "cpu",
) -> Checkpoint:
    """Restore a checkpoint into ``model`` (and ``optimizer``); return the progress.

    Raises
    ------
    FileNotFoundError
        When there is no checkpoint.
    ValueError
        When the files do not belong together, are of another format, or do not fit the model.
    """
    tensor_path, json_path = checkpoint_paths(folder, name)
    if not json_path.is_file() or not tensor_path.is_file():
        raise FileNotFoundError(f"no checkpoint '{name}' in {folder}")
    record = json.loads(json_path.read_text(encoding="utf-8"))
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{json_path} is not a {FORMAT} version {FORMAT_VERSION} file")
    if file_sha256(tensor_path) != record["tensors_sha256"]:
        raise ValueError(
            f"{tensor_path} does not match {json_path} (sha256 differs); the checkpoint is damaged"
        )
    tensors = load_file(str(tensor_path), device="cpu")
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        missing, unexpected = model.load_state_dict(model_state, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        raise ValueError(f"checkpoint {tensor_path} does not fit the model: {exc}") from exc
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {tensor_path} does not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]} (was it trained with another architecture?)"
        )
    if optimizer is not None:
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, param_id, name_ = key.split("/", 2)
                per_param.setdefault(int(param_id), {})[name_] = value.to(device)
        optimizer.load_state_dict({"state": per_param, "param_groups": record["param_groups"]})
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"].to(torch.uint8))
    return Checkpoint(
        epoch=int(record["epoch"]),
        step_in_epoch=int(record["step_in_epoch"]),
        global_step=int(record["global_step"]),
        extra=dict(record.get("extra", {})),
    )
