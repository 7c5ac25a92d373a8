"""metrics.jsonl: one JSON object per line, each with its step, written only by rank 0."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vqgen.engine.errors import VQGenError
from vqgen.engine.files import atomic_write


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
