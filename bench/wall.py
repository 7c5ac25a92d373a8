"""Each stage at equal wall time against a public peer: held-out figures after N minutes of each.

    python -m bench.wall --peer DIR --latents LATENTS [--minutes 2 5 10] [--contestants ...] [--quick]
    python -m bench.wall --peer DIR --stage vqvae --data mnist --data-root ROOT [--minutes 2 5 10]

DIR is a checkout of ritheshkumar95/pytorch-vqvae (see bench.peer). Each contestant trains in its own
process on one thread, two at a time (two one-thread jobs share a 2-core machine without thrashing;
bench.efficiency measures the rates alone). At each mark a contestant stops its clock, scores the
same held-out rows (drawn within each class by the seed, data/rows.py) and goes on; the clock counts
training steps only, as our trainer's does, and ours scores its weight average when the preset keeps
one (the model `vqgen run` would save). One JSON line per contestant and mark, then one per mark with
every contestant's figure side by side.

--stage prior (held-out bits per code, true labels) on LATENTS, a latent dataset pair as `vqgen run`
writes it (RUN/latents, holding train/ and test/), for instance real MNIST's codes from our VQ-VAE:
  peer          its GatedPixelCNN(K, 64, 15 layers), its loss, its loop (pixelcnn_prior.py: Adam 3e-4,
                batch 128, the train split in file order each epoch), fp32 as it runs
  ours          the default preset's prior and its training options (`vqgen run`), through our trainer
  ours_no_skips the same, the head reading the last layer alone (PriorConfig.skips off)
  ours_fp32     the default preset at --precision fp32, the peer's dtype
--stage vqvae (held-out reconstruction MSE on pixels in [0, 1]) on the images `vqgen run --data` reads:
  peer          its VectorQuantizedVAE(C, 256, K=512), its loss and loop (vqvae.py: MSE + codebook +
                commitment at beta 1, Adam 2e-4, batch 128, file order, images in [-1, 1]), fp32
  ours          the default preset's VQ-VAE and training options, through our trainer
  ours_fp32     the same at --precision fp32
  ours_paper    --preset paper's VQ-VAE and options (the peer's sizes: 256 wide, K 512; Adam 2e-4, batch 128)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .common import in_pairs
from .peer import load_peer, peer_commit, peer_prior_loss, peer_vqvae_loss
from vqgen.data.images import DataShape, open_dataset
from vqgen.data.latents import LatentDataset
from vqgen.data.rows import spread_rows
from vqgen.engine.runtime import resolve_precision
from vqgen.engine.train_config import TrainConfig
from vqgen.pipeline.presets import default, paper
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.train import eval_rows, train_prior

CONTESTANTS = {"prior": ("peer", "ours", "ours_no_skips", "ours_fp32"),
               "vqvae": ("peer", "ours", "ours_fp32", "ours_paper")}
FIGURE = {"prior": "bits_per_code", "vqvae": "mse"}
PEER_LR, PEER_BATCH, PEER_WIDTH, PEER_LAYERS = 3e-4, 128, 64, 15  # pixelcnn_prior.py's defaults
PEER_VQVAE_LR, PEER_HIDDEN, PEER_K = 2e-4, 256, 512  # vqvae.py's defaults (batch 128 too)
EVAL_BATCH = 256


def preset_for(latents: LatentDataset) -> Any:
    """The run preset `vqgen run` would choose for the images these codes came from."""
    m = latents.manifest
    channels, height, width = m.source.get("image_shape", (1, 28, 28))
    return default(DataShape(channels, height, width, m.count))


def ours_loop(train: TrainConfig, name: str, minutes: list[float], fit: Callable[[TrainConfig, str], dict[str, Any]],
              keep: Path | None = None, **extra: Any) -> Iterator[dict[str, Any]]:
    """Our trainer on a preset's options (fp32 for ours_fp32), resumed mark after mark under a growing
    time budget (TrainConfig.max_seconds); each mark's record carries the trainer's own evaluation. The
    run directory is temporary unless `keep` names one (a directory that must not exist yet)."""
    train = replace(train, steps=10**9, eval_every=10**9, precision="fp32" if name == "ours_fp32" else train.precision)
    with contextlib.nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory() as out:
        for mark in minutes:
            result = fit(replace(train, max_seconds=60 * mark), out)
            yield {"minutes": mark, "steps": result["step"], "seconds": round(result["seconds"], 1),
                   **result["evaluation"], "batch": train.batch_size,
                   "precision": resolve_precision(train.precision, torch.device("cpu")), **extra}


def run_ours(name: str, latents: Path, minutes: list[float], eval_grids: int) -> Iterator[dict[str, Any]]:
    preset = preset_for(LatentDataset(latents / "train"))
    prior = replace(preset.prior, skips=name != "ours_no_skips")
    return ours_loop(preset.prior_train, name, minutes, lambda train, out: train_prior(
        prior, train, latents / "train", latents / "test", out, eval_grids=eval_grids, progress=False),
        skips=prior.skips)


@torch.no_grad()
def peer_mean(model: torch.nn.Module, held: Any, rows: list[int],
              error: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
    """Mean over every element of the held-out `rows` of the summed `error(inputs, labels)`, in eval mode."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), EVAL_BATCH):
        inputs, labels = held.__getitems__(rows[start:start + EVAL_BATCH])
        total += float(error(inputs, labels))
        count += inputs.numel()
    model.train()
    return total / count


def peer_bits(model: torch.nn.Module, held: LatentDataset, rows: list[int]) -> float:
    """Held-out bits per code of the peer's prior, with the true labels."""
    def nats(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(codes.long(), labels.long()), codes.long(), reduction="sum")  # logits (B, K, H, W)
    return peer_mean(model, held, rows, nats) / math.log(2)


def peer_loop(model: torch.nn.Module, train: Any, loss_of: Callable[[tuple[torch.Tensor, ...]], torch.Tensor],
              lr: float, minutes: list[float], score: Callable[[], dict[str, float]]) -> Iterator[dict[str, Any]]:
    """The peer's training loops (vqvae.py, pixelcnn_prior.py): Adam, its DataLoader's file order with the
    last batch short, the loss read back each step as it logs it; the clock stopped while it is scored."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    seconds, steps, marks = 0.0, 0, list(minutes)
    while True:
        for first in range(0, len(train), PEER_BATCH):
            start = time.perf_counter()
            loss = loss_of(train.__getitems__(list(range(first, min(first + PEER_BATCH, len(train))))))
            optimizer.zero_grad()
            loss.backward()
            loss.item()
            optimizer.step()
            seconds += time.perf_counter() - start
            steps += 1
            if seconds >= 60 * marks[0]:
                yield {"minutes": marks.pop(0), "steps": steps, "seconds": round(seconds, 1), **score(),
                       "batch": PEER_BATCH, "precision": "fp32"}
                if not marks:
                    return


def run_peer(peer_dir: str, latents: Path, minutes: list[float], eval_grids: int) -> Iterator[dict[str, Any]]:
    """pixelcnn_prior.py's prior, loss and loop."""
    modules = load_peer(peer_dir)
    train, held = LatentDataset(latents / "train"), LatentDataset(latents / "test")
    m = train.manifest
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):  # its weights_init prints
        model = modules.GatedPixelCNN(m.codebook_size, PEER_WIDTH, PEER_LAYERS, n_classes=m.num_classes or 1)
    rows = eval_rows(held, eval_grids)

    def loss_of(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        codes, labels = batch[0].long(), batch[1].long()
        labels = labels if m.num_classes else torch.zeros_like(labels)
        return peer_prior_loss(model, (codes, labels))

    return peer_loop(model, train, loss_of, PEER_LR, minutes, lambda: {"bits_per_code": peer_bits(model, held, rows)})


def open_images(args: argparse.Namespace) -> tuple[Any, Any]:
    return tuple(open_dataset(args.data, split, args.data_root) for split in ("train", "test"))


def run_ours_vqvae(name: str, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    train_images, test_images = open_images(args)
    info = train_images.info
    preset = (paper if name == "ours_paper" else default)(DataShape(info.channels, info.height, info.width,
                                                                     len(train_images)))
    return ours_loop(preset.vqvae_train, name, args.minutes, lambda train, out: train_vqvae(
        preset.vqvae, train, train_images, test_images, out, eval_images=args.eval_images, progress=False))


def peer_mse(model: torch.nn.Module, held: Any, rows: list[int]) -> float:
    """Held-out MSE of the peer's reconstructions, mapped back from [-1, 1] to the pixels' [0, 1]."""
    def squared(images: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return F.mse_loss((model(images * 2 - 1)[0] + 1) / 2, images, reduction="sum")
    return peer_mean(model, held, rows, squared)


def run_peer_vqvae(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """vqvae.py's VQ-VAE, loss and loop, on images mapped to [-1, 1] as its transform does."""
    modules = load_peer(args.peer)
    train, held = open_images(args)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):
        model = modules.VectorQuantizedVAE(train.info.channels, PEER_HIDDEN, K=PEER_K)
    rows = spread_rows(held.labels, len(held), args.eval_images, 0)
    return peer_loop(model, train, lambda batch: peer_vqvae_loss(model, (batch[0] * 2 - 1,)), PEER_VQVAE_LR,
                     args.minutes, lambda: {"mse": peer_mse(model, held, rows)})


def child(args: argparse.Namespace) -> None:
    """One contestant in this process: one thread, a JSON line per mark on stdout."""
    torch.set_num_threads(1)
    if args.stage == "vqvae":
        runs = run_peer_vqvae(args) if args.child == "peer" else run_ours_vqvae(args.child, args)
    else:
        runs = (run_peer(args.peer, args.latents, args.minutes, args.eval_grids) if args.child == "peer"
                else run_ours(args.child, args.latents, args.minutes, args.eval_grids))
    for record in runs:
        print(json.dumps({"contestant": args.child, **record}), flush=True)


def launch(name: str, args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench.wall", "--child", name, "--stage", args.stage, "--data", args.data,
               "--eval-grids", str(args.eval_grids), "--eval-images", str(args.eval_images),
               "--minutes", *map(str, args.minutes)]
    for flag, value in (("--peer", args.peer), ("--latents", args.latents), ("--data-root", args.data_root)):
        if value:
            command += [flag, str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=tuple(CONTESTANTS), default="prior")
    parser.add_argument("--latents", type=Path, help="--stage prior: RUN/latents, holding train/ and test/")
    parser.add_argument("--data", default="mnist", help="--stage vqvae: the images, as `vqgen run --data` takes them")
    parser.add_argument("--data-root", help="--stage vqvae: where a torchvision dataset's files are")
    parser.add_argument("--peer", metavar="DIR", help="checkout of ritheshkumar95/pytorch-vqvae")
    parser.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10], help="marks, in training minutes")
    parser.add_argument("--contestants", nargs="+", help="some of the stage's contestants (default: all)")
    parser.add_argument("--eval-grids", type=int, default=2000, help="held-out grids scored at each mark")
    parser.add_argument("--eval-images", type=int, default=2000, help="held-out images scored at each mark")
    parser.add_argument("--quick", action="store_true", help="marks at 3 and 6 s, 200 rows (smoke test)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # the parent checked the inputs and passes the marks and row counts as flags
        return child(args)
    names = args.contestants or list(CONTESTANTS[args.stage])
    unknown = sorted(set(names) - set(CONTESTANTS[args.stage]))
    if unknown:
        parser.error(f"--contestants {unknown} are not in --stage {args.stage}: {', '.join(CONTESTANTS[args.stage])}")
    if args.stage == "prior":
        if args.latents is None:
            parser.error("--stage prior needs --latents RUN/latents")
        for split in ("train", "test"):
            LatentDataset(args.latents / split)  # a missing or foreign dataset fails here, in one line
    else:
        open_images(args)  # a missing dataset fails here, in one line
    if args.quick:
        args.minutes, args.eval_grids, args.eval_images = [0.05, 0.1], 200, 200
    if "peer" in names:
        load_peer(args.peer)
    figure = FIGURE[args.stage]
    shared = {"bench": "wall", "stage": args.stage, "threads_each": 1,
              **({"latents": str(args.latents), "eval_grids": args.eval_grids} if args.stage == "prior" else
                 {"data": args.data, "eval_images": args.eval_images})}
    if args.peer:
        shared.update(peer="ritheshkumar95/pytorch-vqvae", peer_commit=peer_commit(args.peer))
    in_pairs("wall", names, lambda name: launch(name, args), shared, "contestant", figure)

if __name__ == "__main__":
    main()
