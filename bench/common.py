"""What every benchmark prints beside its figures: the machine, so numbers are never quoted bare."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from data.runtime import machine


def emit(record: dict[str, Any]) -> None:
    """One JSON line per figure, machine attached."""
    print(json.dumps({**record, "machine": machine()}), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device) -> Iterator[dict[str, float]]:
    """Wall time of the block, with the device synchronised at both ends."""
    out: dict[str, float] = {}
    sync(device)
    start = time.perf_counter()
    yield out
    sync(device)
    out["seconds"] = time.perf_counter() - start
