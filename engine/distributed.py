"""The torchrun context and the few collectives vqgen uses; each is the identity in a plain process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from vqgen.engine.errors import VQGenError
from vqgen.engine.runtime import pick_device

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_as_main() -> bool:
    """Rank 0 of a torchrun job (or a plain process), known before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


# How long a rank waits in a collective: eval, sampling and the report run on rank 0 alone while the
# others wait, for minutes on a large run, longer than NCCL's default of 10 minutes.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


def init_distributed(device: torch.device) -> Dist:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def leave_distributed(finished: bool) -> None:
    """Leave the process group before the interpreter exits: torchrun's ranks end at nearly the same
    moment, and a gloo group torn down by interpreter exit while a peer is still closing its sockets
    can abort a rank ("terminate called without an active exception", SIGABRT) after all the work was
    done. A rank that `finished` its command waits for the others first, so that no rank leaves while
    another still talks to it; after an error it leaves at once (a peer may be gone already)."""
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def process_device(name: str) -> tuple[Dist, torch.device]:
    """This process's place in a torchrun job and the device it computes on: the device `name` picks
    ("auto", "cpu", "cuda:1", ...), or under torchrun on GPUs the GPU of the process's local rank."""
    device = pick_device(name)
    ctx = init_distributed(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    return ctx, device


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(obj: Any, ctx: Dist) -> Any:
    """Rank 0's value on every rank (used for errors and stop flags, so all ranks stop together)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class SharedError(VQGenError):
    """An error every rank of a torchrun job raises together (rank 0 says it for all of them)."""

    shared = True

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def on_main(ctx: Dist, work: Callable[[], T]) -> T:
    """`work()` on rank 0 alone, its result on every rank.

    Ranks that skip the work wait in the broadcast; an exception on rank 0 is broadcast in its
    place and raised on every rank, so the job stops at once with rank 0's message instead of
    leaving the other ranks waiting in their next collective.
    """
    if not ctx.enabled:
        return work()
    outcome: tuple[bool, Any] | None = None
    if ctx.is_main:
        try:
            outcome = (True, work())
        except BaseException as err:
            broadcast_object((False, (str(err), getattr(err, "exit_code", 1))), ctx)
            raise
    done, value = broadcast_object(outcome, ctx)
    if not done:
        message, exit_code = value
        raise SharedError(message, exit_code)
    return value


def rank_seed(seed: int, ctx: Dist, step: int) -> int:
    """The seed of a rank's random draws at one training step: distinct per rank (dropout masks, random
    targets), a pure function of (seed, rank, step) so that a resumed run draws what it would have."""
    return int(np.random.SeedSequence([seed, ctx.rank, step]).generate_state(1, np.uint64)[0])


# ---- collectives for code that runs inside a model (the quantizer), where no Dist is passed ------
def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place; returns it."""
    if in_process_group():
        dist.all_reduce(t)
    return t


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, d) per rank -> (world * N, d) in rank order (ranks hold equal batches)."""
    if not in_process_group():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def broadcast_(t: torch.Tensor) -> None:
    """Overwrite `t` with rank 0's copy."""
    if in_process_group():
        dist.broadcast(t, src=0)
