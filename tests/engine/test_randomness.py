"""Random draws inside a training step: distinct per torchrun rank, rank 0's equal to a single process's,
and a resumed run's equal to an uninterrupted run's, because each step reseeds from (seed, rank, step).

A toy TrainTask records what `torch.rand` returns inside each `step`, the way dropout masks, label
dropout and random rotation targets draw.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from vqgen.engine.checkpoint import Pretrained, saved_step
from vqgen.engine.distributed import Dist, rank_seed
from vqgen.engine.train_config import TrainConfig
from vqgen.engine.train_task import StepResult
from vqgen.engine.trainer import Trainer

SEED = 7
TRAIN = TrainConfig(steps=6, batch_size=4, lr=1e-2, seed=SEED, log_every=1, eval_every=100, checkpoint_every=2,
                    device="cpu")
DRAWS = 5  # numbers drawn per step


@dataclass(frozen=True)
class ToyConfig:
    width: int = 3


class Toy(nn.Module, Pretrained):
    """A linear map, just enough for the trainer to optimise and save."""

    kind = "toy"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.linspace(-1, 1, config.width))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return rows @ self.weight  # (B,)


class Rows(Dataset):
    def __init__(self, count: int) -> None:
        self.rows = torch.arange(count * 3, dtype=torch.float32).reshape(count, 3) / count  # (N, 3)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows[indices], torch.tensor(indices)


class DrawingTask:
    """Records, per step, the numbers torch.rand draws inside `step` and the rows of the batch."""

    stage = "toy"
    items_name = "rows"

    def __init__(self) -> None:
        self.model = Toy(ToyConfig())
        self.data = Rows(16)
        self.pending: dict[str, list] = {}
        self.draws: dict[int, dict[str, list]] = {}

    def train_data(self) -> Dataset:
        return self.data

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult:
        rows, indices = batch
        noise = torch.rand(DRAWS)
        self.pending = {"draws": noise.tolist(), "rows": indices.tolist()}
        loss = (model(rows.to(device)) - noise[:len(rows)]).pow(2).mean()
        return StepResult(loss, {})

    def after_step(self, step: int) -> dict[str, float]:
        self.draws[step] = self.pending
        return {}

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        return {}


def train(out: Path, config: TrainConfig = TRAIN) -> DrawingTask:
    task = DrawingTask()
    Trainer(task, config, out, progress=False).fit()
    return task


def expected_draws(rank: int, step: int) -> list[float]:
    """What the documented rule says a rank draws first at a step: torch seeded with rank_seed."""
    generator = torch.Generator().manual_seed(rank_seed(SEED, Dist(rank=rank, world=2), step))
    return torch.rand(DRAWS, generator=generator).tolist()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), TQDM_DISABLE="1")
    torch.set_num_threads(1)
    try:
        task = train(Path(out) / "toy")
        (Path(out) / f"draws-{rank}.json").write_text(json.dumps(task.draws))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def draws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, dict[str, list]]]:
    """Per-step records of a single process and of each of 2 gloo ranks, same seed and global batch."""
    single = train(tmp_path_factory.mktemp("single") / "toy").draws
    double = tmp_path_factory.mktemp("double")
    mp.start_processes(_worker, args=(2, _free_port(), str(double)), nprocs=2, start_method="spawn")
    ranks = [{int(k): v for k, v in json.loads((double / f"draws-{r}.json").read_text()).items()} for r in (0, 1)]
    return {"single": single, "rank0": ranks[0], "rank1": ranks[1]}


def test_ranks_draw_differently_and_rank_0_draws_what_one_process_draws(draws: dict) -> None:
    steps = list(range(1, TRAIN.steps + 1))
    assert sorted(draws["single"]) == sorted(draws["rank0"]) == sorted(draws["rank1"]) == steps
    for step in steps:
        single, rank0, rank1 = (draws[k][step] for k in ("single", "rank0", "rank1"))
        assert rank0["draws"] == single["draws"], step
        assert all(a != b for a, b in zip(rank0["draws"], rank1["draws"])), step
        assert rank0["draws"] == expected_draws(0, step), step
        assert rank1["draws"] == expected_draws(1, step), step
        assert rank0["rows"] + rank1["rows"] == single["rows"], step  # data order is the single process's


def test_resumed_run_draws_what_an_uninterrupted_run_draws(tmp_path: Path, ctrl_c_at) -> None:
    whole = train(tmp_path / "whole").draws
    interrupted = DrawingTask()
    with ctrl_c_at(5), pytest.raises(KeyboardInterrupt):
        Trainer(interrupted, TRAIN, tmp_path / "parts", progress=False).fit()
    assert saved_step(tmp_path / "parts") == 4 and sorted(interrupted.draws) == [1, 2, 3, 4]
    assert interrupted.pending == whole[5]  # the step the interruption cut short
    torch.rand(100)  # a resumed process starts from another global RNG state
    resumed = train(tmp_path / "parts").draws
    assert sorted(resumed) == [5, 6]
    assert {**interrupted.draws, **resumed} == whole
    assert len({tuple(whole[s]["draws"]) for s in whole}) == len(whole)  # every step draws anew


def test_rank_seed_is_a_pure_function_of_seed_rank_and_step() -> None:
    seeds = {(rank, step): rank_seed(SEED, Dist(rank=rank, world=4), step) for rank in range(4) for step in range(60)}
    assert len(set(seeds.values())) == len(seeds)  # distinct across ranks and steps
    assert all(seeds[r, s] == rank_seed(SEED, Dist(rank=r, world=4), s) for r, s in seeds)  # deterministic
    assert all(rank_seed(SEED, Dist(rank=r, world=w), 3) == seeds[r, 3] for r in range(4) for w in (r + 1, 8))
    assert rank_seed(SEED + 1, Dist(), 3) != seeds[0, 3]  # and the run's seed matters
    assert all(isinstance(v, int) and 0 <= v < 2**64 for v in seeds.values())  # a valid torch.manual_seed
