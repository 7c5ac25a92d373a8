"""What every benchmark prints beside its figures: the machine, so numbers are never quoted bare."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from vqgen.engine.runtime import machine


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


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every training benchmark shares."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--quick", action="store_true", help="small model, few steps (smoke test)")
    return parser


def reference_rate(model: nn.Module, batches: Iterator[tuple[torch.Tensor, ...]],
                   loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor], steps: int, batch: int,
                   device: torch.device, precision: str) -> float:
    """Items/s of the loop anyone writes first (Adam, zero_grad, backward, step, loss.item() each
    step), after two warm-up steps: the baseline our trainer must not fall behind."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    dtype = torch.bfloat16 if precision == "bf16" else None
    start = 0.0
    for step in range(steps + 2):
        if step == 2:
            sync(device)
            start = time.perf_counter()
        tensors = tuple(t.to(device) for t in next(batches))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model, tensors)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def trainer_rate(metrics_path: Any, key: str) -> float:
    """Items/s of our trainer from its metrics.jsonl, leaving out the first window (warm-up),
    as `reference_rate` leaves out its first two steps."""
    from vqgen.engine.metrics_log import read_metrics

    rates = [r[key] for r in read_metrics(metrics_path) if r.get("split") == "train"][1:]
    return len(rates) / sum(1 / rate for rate in rates)


def in_pairs(bench: str, names: list[str], launch: Callable[[str], subprocess.Popen], shared: dict[str, Any],
             who: str, figure: str) -> None:
    """Each of `names` in its own one-thread process (`launch(name)`), two at a time (two one-thread jobs share
    a 2-core machine without thrashing): their JSON lines, with `shared` added, as they come; then one line
    per mark (record["minutes"]) with every name's `figure` side by side and the lowest."""
    results: dict[float, dict[str, float]] = {}
    for pair in (names[i:i + 2] for i in range(0, len(names), 2)):
        processes = [launch(name) for name in pair]
        for process in processes:
            out, _ = process.communicate()
            if process.returncode:
                for other in processes:
                    other.kill()
                sys.exit(f"bench.{bench}: a {who} failed (exit {process.returncode}); its error is above")
            for line in out.splitlines():
                record = json.loads(line)
                emit({**shared, **record})
                results.setdefault(record["minutes"], {})[record[who]] = round(record[figure], 5)
    for mark, values in sorted(results.items()):
        emit({**shared, "minutes": mark, figure: values, "lowest": min(values, key=values.get)})
