"""Distributed training: a two-process gloo DDP step leaves identical parameters on both ranks."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lesion_engine.model.networks import ClassificationNetConfig, JointModel, LocalizationNetConfig
from training.datasets.candidate_sampling import SamplingConfig
from training.datasets.dataset import Batch
from training.fit.distributed import DistInfo, all_reduce_mean, any_rank, barrier, setup, teardown
from training.fit.losses import LossConfig
from training.fit.train import _sampler, train_step

WORLD = 2
SHAPE = (8, 32, 32)


def _batch(rank: int) -> Batch:
    """Different data on each rank: a bright csPCa blob at a rank-dependent place."""
    rng = np.random.default_rng(rank)
    images = rng.normal(0.0, 1.0, (2, 3, *SHAPE)).astype(np.float32)
    index = np.zeros((2, *SHAPE), np.int16)
    index[:, 3:6, 10 + rank * 4 : 16 + rank * 4, 12:18] = 1
    images[:, :, index[0] > 0] += 3.0
    lesions = [np.asarray([[4.0, 13.0 + rank * 4, 15.0, 1.0, 1.0, 2.0]]) for _ in range(2)]
    zones = np.zeros((2, *SHAPE), np.int64)
    zones[:, 2:7, 8:24, 8:24] = 1
    return Batch(
        images=torch.from_numpy(images),
        cspca=torch.from_numpy((index > 0).astype(np.float32)),
        zones=torch.from_numpy(zones),
        has_zones=torch.tensor([True, False]),
        lesion_index=index,
        lesions=lesions,
        case_ids=["a", "b"],
    )


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1",
         "MASTER_PORT": str(port)}
    )  # fmt: skip
    torch.set_num_threads(1)
    info = setup("cpu")
    try:
        torch.manual_seed(100 + rank)  # different initial weights: DDP must broadcast rank 0's
        joint = JointModel(
            LocalizationNetConfig(channels=(4, 8, 8, 8)), ClassificationNetConfig(channels=(4, 8))
        )
        model = torch.nn.parallel.DistributedDataParallel(joint)
        initial = torch.nn.utils.parameters_to_vector(joint.parameters()).detach().clone()
        optimizer = torch.optim.AdamW(joint.parameters(), lr=1e-2)
        values = train_step(
            model,
            joint,
            _batch(rank),
            optimizer,
            loss_config=LossConfig(),
            sampling=SamplingConfig(max_map_candidates=2),
            rng=np.random.default_rng([0, 0, rank]),
            joint_phase=True,
            device=torch.device("cpu"),
        )
        after = torch.nn.utils.parameters_to_vector(joint.parameters()).detach()
        gathered = [torch.zeros_like(after) for _ in range(WORLD)]
        dist.all_gather(gathered, after)
        gathered_initial = [torch.zeros_like(initial) for _ in range(WORLD)]
        dist.all_gather(gathered_initial, initial)
        mean_loss = all_reduce_mean({"loss": values["loss"]}, info)["loss"]
        stop_somewhere = any_rank(rank == 1, info)  # true on rank 1 only: every rank must learn it
        if info.is_main:
            record = {
                "world_size": info.world_size,
                "distributed": info.distributed,
                "max_difference_after": float((gathered[0] - gathered[1]).abs().max()),
                "max_difference_initial": float((gathered_initial[0] - gathered_initial[1]).abs().max()),
                "change": float((gathered[0] - gathered_initial[0]).abs().max()),
                "loss": values["loss"],
                "mean_loss": mean_loss,
                "map_candidates": values["map_candidates"],
                "any_rank": stop_somewhere,
            }
            Path(out).write_text(json.dumps(record))
        barrier(info)  # leave together: a rank that destroys the group while another still talks aborts
    finally:
        teardown(info)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_two_process_ddp_step_keeps_ranks_identical(tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, port, str(out))) for rank in range(WORLD)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * WORLD
    record = json.loads(out.read_text())
    assert record["world_size"] == WORLD and record["distributed"]
    assert record["max_difference_initial"] == 0.0  # DDP broadcast rank 0's weights at wrap time
    assert record["max_difference_after"] == 0.0  # averaged gradients: the same step on both ranks
    assert record["change"] > 0.0  # and the step did change the weights
    assert np.isfinite(record["loss"]) and np.isfinite(record["mean_loss"])
    assert record["any_rank"] is True


def test_distributed_sampler_splits_the_epoch() -> None:
    dataset = list(range(10))
    seen = []
    for rank in range(WORLD):
        info = DistInfo(rank, WORLD, rank, torch.device("cpu"), distributed=False)
        seen.append(list(_sampler(dataset, info, seed=0, epoch=3, skip=0)))  # type: ignore[arg-type]
    assert len(seen[0]) == len(seen[1]) == 5
    assert sorted(seen[0] + seen[1]) == dataset
    skipped = list(_sampler(dataset, DistInfo(0, WORLD, 0, torch.device("cpu"), False), 0, 3, 2))  # type: ignore[arg-type]
    assert skipped == seen[0][2:]


def test_setup_without_torchrun_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = setup("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    assert all_reduce_mean({"a": 1.5}, info) == {"a": 1.5}
    assert any_rank(True, info) and not any_rank(False, info)
    with pytest.raises(ValueError, match="device"):
        setup("tpu")
