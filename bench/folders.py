"""Image folders: decoded into memory before step one vs streamed per batch, with 0 and 2 loader workers.

    python -m bench.folders [--dir DIR] [--images 20000] [--steps 40] [--batch 32] [--quick]

Writes a folder of 128x128 RGB JPEGs in 10 class subfolders (the hashed 10% test split) into a
temporary directory, or into --dir, where it is kept and reused by later runs. Then each case
(in memory / streamed x 0 / 2 workers) runs in a process of its own, so its memory is its own,
and prints one JSON line:

- open_s: `open_dataset` of train and test, the header index built cold into a fresh run
  directory (plus, in memory, the decode of every image on one core);
- reopen_s (streamed): the same again, the cached index reused;
- first_step_s: from before `open_dataset` to the end of the first training step (model built,
  loader workers started, first batch decoded, forward, backward, update);
- loader_images_per_s: the training loader alone (same sampler, batch and workers, no model),
  after its first batch;
- train_images_per_s: our Trainer on a tiny VQ-VAE (128x128 -> 16x16 codes), steps 4 to the last;
- peak_tree_pss_mib: the largest sum, sampled every 50 ms, of the proportional set size (Pss,
  /proc/PID/smaps_rollup) of the case's process and all its descendants (the loader's workers).
  Pss divides pages shared by a process and its forked workers among them, so the sum is what the
  tree really holds; peak_tree_rss_mib (VmRSS summed) counts shared pages, torch's libraries among
  them, once per process. On a GPU, gpu_peak_mib is torch.cuda.max_memory_allocated.
Files are read from the page cache (just written or read), so a cold disk is not measured. Linux only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .common import bench_parser, emit
from .memory import peak_mib, reset_peak
from vqgen.data.images import BatchedImages, open_dataset
from vqgen.engine.batches import ResumableBatches, make_loader
from vqgen.engine.distributed import Dist
from vqgen.engine.runtime import pick_device, seed_everything
from vqgen.engine.train_config import TrainConfig
from vqgen.engine.trainer import Trainer
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import VQVAETask

SIZE, CLASSES = 128, 10
MARKER = ".bench-folder.json"  # hidden, so the folder rules skip it
CASES = [(False, 0), (False, 2), (True, 0), (True, 2)]  # (stream, workers)


# ---- the folder ----------------------------------------------------------------------------------

def _write_image(job: tuple[Path, int]) -> None:
    """Smooth random colours (a JPEG of noise would be unusually large and slow to decode)."""
    path, seed = job
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)  # (8, 8, 3)
    Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC).save(path, quality=90)


def make_folder(root: Path, count: int) -> None:
    """`count` JPEGs in class folders, written by a pool of processes; kept when already there."""
    spec = {"images": count, "size": SIZE, "classes": CLASSES}
    if (root / MARKER).is_file() and json.loads((root / MARKER).read_text()) == spec:
        return
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            sys.exit(f"--dir {root} holds other files; pass an empty or new folder")
        shutil.rmtree(root)  # an earlier benchmark folder of another size
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    jobs = [(root / f"class{i % CLASSES}" / f"{i:06d}.jpg", i) for i in range(count)]
    with multiprocessing.Pool() as pool:
        pool.map(_write_image, jobs, chunksize=256)
    (root / MARKER).write_text(json.dumps(spec))


# ---- memory of a process tree ----------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after "(comm) state"
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def _descendants(pid: int) -> Iterator[int]:
    tree, todo = _children(), [pid]
    while todo:
        current = todo.pop()
        yield current
        todo.extend(tree.get(current, []))


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field)), 0)
    except OSError:
        return 0


class TreeMemory:
    """Peak summed Pss and RSS (MiB) of this process and its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.pss, self.rss = interval, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = list(_descendants(os.getpid()))
        self.pss = max(self.pss, sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) / 1024)
        self.rss = max(self.rss, sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids) / 1024)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ---- one case ----------------------------------------------------------------------------------------

class _TimedTask(VQVAETask):
    """Stage one's task, noting when each step (forward, backward, update) has finished."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.done: list[float] = []

    def after_step(self, step: int) -> dict[str, float]:
        self.done.append(time.perf_counter())
        return super().after_step(step)


def _open(folder: Path, stream: bool, index_dir: Path) -> tuple[BatchedImages, BatchedImages]:
    return (open_dataset(str(folder), "train", stream=stream, index_dir=index_dir),
            open_dataset(str(folder), "test", stream=stream, index_dir=index_dir))


def _loader_rate(data: BatchedImages, batch: int, steps: int, workers: int) -> float:
    """Images/s of the training loader alone, from its first batch to its last."""
    loader = make_loader(data, ResumableBatches(len(data), batch, 0, 0, steps + 1, Dist()), workers, False)
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in batches)
    return count / (time.perf_counter() - start)


def run_case(folder: Path, stream: bool, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device("auto")
    reset_peak(device)
    with tempfile.TemporaryDirectory() as run, TreeMemory() as memory:
        start = time.perf_counter()
        train, test = _open(folder, stream, Path(run))
        open_s = time.perf_counter() - start
        seed_everything(0)
        config = VQVAEConfig.tiny(in_channels=3, image_height=SIZE, image_width=SIZE, downsamples=3)
        task = _TimedTask(VQVAE(config), train, test, 64)
        settings = TrainConfig(steps=args.steps, batch_size=args.batch, precision=args.precision, device=str(device),
                               num_workers=workers, log_every=10**9, eval_every=10**9, checkpoint_every=10**9)
        Trainer(task, settings, Path(run) / "vqvae", progress=False).fit()
        loader_rate = _loader_rate(train, args.batch, args.steps, workers)
        reopened = time.perf_counter()
        if stream:  # the index cached in the run directory by the first open
            _open(folder, stream, Path(run))
        reopen_s = time.perf_counter() - reopened
    timed = task.done[2:]  # ends of steps 3..N: steps 4..N are timed
    return {"bench": "folder_loading", "images": len(train) + len(test), "image": [3, SIZE, SIZE],
            "stream": stream, "workers": workers, "batch": args.batch, "steps": args.steps,
            "open_s": round(open_s, 2), "reopen_s": round(reopen_s, 3) if stream else None,
            "first_step_s": round(task.done[0] - start, 2), "loader_images_per_s": round(loader_rate, 1),
            "train_images_per_s": round((len(timed) - 1) * args.batch / (timed[-1] - timed[0]), 1),
            "peak_tree_pss_mib": round(memory.pss), "peak_tree_rss_mib": round(memory.rss),
            "gpu_peak_mib": round(peak_mib(device), 1) if device.type == "cuda" else None}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--dir", type=Path, help="keep the generated folder here and reuse it on later runs")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # "stream,workers": one case, in this process
    parser.set_defaults(steps=40)
    args = parser.parse_args()
    if args.quick:
        args.images, args.steps = min(args.images, 2000), min(args.steps, 6)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.dir or Path(scratch) / "images"
        if args.case:
            stream, workers = args.case.split(",")
            emit(run_case(folder, stream == "1", int(workers), args))
            return
        make_folder(folder, args.images)
        common = ["--dir", str(folder), "--images", str(args.images), "--steps", str(args.steps),
                  "--batch", str(args.batch), "--precision", args.precision]
        quiet = {**os.environ, "TQDM_DISABLE": "1"}  # JSON lines only, no loading bars between them
        for stream, workers in CASES:
            subprocess.run([sys.executable, "-m", "bench.folders", *common, "--case", f"{int(stream)},{workers}"],
                           check=True, env=quiet)


if __name__ == "__main__":
    main()
