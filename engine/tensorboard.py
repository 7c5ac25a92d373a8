"""TensorBoard beside metrics.jsonl: every metrics record as scalars, evaluation figures as images.

The `tensorboard` package is an extra (`pip install 'vqgen[tensorboard]'`), so it is imported only
when asked for, and asking without it fails at once, before any training. Tags read
PREFIX/SPLIT/NAME (`vqvae/train/mse`, `prior/eval/bits_per_code`, `eval/real/frechet`), so each
stage's charts form one section and train and eval charts sit side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from vqgen.engine.errors import UsageError

TENSORBOARD_DIR = "tensorboard"  # beside a stage's files (OUT/tensorboard), or a run's, with a sub-run per stage
MISSING = "--tensorboard needs the tensorboard package: pip install 'vqgen[tensorboard]'"
NOT_SCALARS = ("step", "split")


class Sink:
    """Where a stage's scalars and figures go besides metrics.jsonl. This base class drops them: it
    stands in when TensorBoard is off and on every torchrun rank but 0."""

    def record(self, record: Mapping[str, Any]) -> None:
        """A metrics record {"step": S, "split": "train", name: value, ...}."""

    def image(self, tag: str, picture: Image.Image, step: int) -> None:
        """A figure (e.g. a PNG grid the stage also wrote to disk), as tag PREFIX/TAG."""

    def close(self) -> None:
        """Write out everything still buffered."""

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary_writer() -> Any:
    """torch.utils.tensorboard.SummaryWriter, or a UsageError naming the extra that provides it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError(MISSING) from None
    return SummaryWriter


def require_tensorboard() -> None:
    """Fail now, before any work, when TensorBoard is asked for but not installed."""
    _summary_writer()


class TensorBoardSink(Sink):
    """Event files in `log_dir`; numbers of a record become scalars, other values (labels, None) are skipped.

    `first_step` is the first step this process writes: events an earlier process wrote at or after it
    are hidden (SummaryWriter's purge_step), as metrics.jsonl drops its lines after a resumed checkpoint
    and eval.json is replaced by a new `vqgen eval`.
    """

    def __init__(self, log_dir: str | Path, prefix: str, first_step: int) -> None:
        writer = _summary_writer()
        self.prefix = prefix
        self.writer = writer(str(log_dir), purge_step=first_step, flush_secs=10)

    def record(self, record: Mapping[str, Any]) -> None:
        step, split = int(record["step"]), record.get("split", "")
        for name, value in record.items():
            if name not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar("/".join(p for p in (self.prefix, split, name) if p), value, step)

    def image(self, tag: str, picture: Image.Image, step: int) -> None:
        pixels = np.asarray(picture.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(f"{self.prefix}/{tag}", pixels, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def sub_run(root: str | Path | None, name: str) -> str | None:
    """The event directory of one stage of a run (`RUN/tensorboard/prior`), None when TensorBoard is off."""
    return None if root is None else str(Path(root) / name)


def open_sink(log_dir: str | Path | None, prefix: str, first_step: int) -> Sink:
    """A TensorBoard sink writing into `log_dir`, or one that drops everything when `log_dir` is None."""
    return Sink() if log_dir is None else TensorBoardSink(log_dir, prefix, first_step)
