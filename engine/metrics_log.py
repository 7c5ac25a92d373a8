"""metrics.jsonl: one JSON object per line, each with its step, written only by rank 0; and the window of
training steps whose means make each train record.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch

from vqgen.engine.distributed import Dist
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import atomic_write
from vqgen.engine.train_task import StepResult

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Append-only JSON lines; `truncate_after(step)` drops lines a resumed run will write again."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def log(self, **record: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _plain(v) for k, v in record.items()})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError as err:
            raise VQGenError(f"cannot append to {self.path}: {err.strerror}") from err

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Keep records up to `step`, so a resumed run does not log the same steps twice."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.path, lambda tmp: tmp.write_text(text))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records; a torn last line from a killed process is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class WindowMeans(NamedTuple):
    """What a window of steps logs: its metrics' means, the first step whose loss was not finite (None
    when all were), and the training seconds it took."""

    means: dict[str, float]
    bad_step: int | None
    seconds: float


class MetricsWindow:
    """Sums of step metrics kept on the device, so the loop syncs with the host only at log steps; and
    the clock of the window's training seconds, which the throughput and the time budget count."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.started = time.perf_counter()

    def add(self, result: StepResult, step: int) -> None:
        self.count += 1
        finite = torch.isfinite(result.loss.detach())
        self.bad = torch.where(finite | (self.bad >= 0), self.bad, torch.full_like(self.bad, step))
        for name, value in {"loss": result.loss, **result.metrics}.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def seconds(self) -> float:
        """Training seconds since the clock started."""
        return time.perf_counter() - self.started

    def restart_clock(self) -> None:
        """Count from now: what ran since the last step (an evaluation, a checkpoint) was not training."""
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The seconds of the work inside (setup, such as counting FLOPs) leave the clock."""
        start = time.perf_counter()
        yield
        self.started += time.perf_counter() - start

    def flush(self, ctx: Dist) -> WindowMeans:
        """Means over the window (and over ranks, so a torchrun log equals a single-process one)."""
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in names] + [self.bad.float()])
        if ctx.enabled:
            bad = stacked[-1:].clone()
            torch.distributed.all_reduce(stacked)
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            stacked = torch.cat([stacked[:-1] / ctx.world, bad])
        values = stacked.tolist()
        means = {k: v / max(self.count, 1) for k, v in zip(names, values)}
        bad_step = int(values[-1])
        return WindowMeans(means, bad_step if bad_step >= 0 else None, self.seconds())
