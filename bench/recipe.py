"""The prior's recipe at equal wall time: variants of the default preset's prior on cached latents.

    python -m bench.recipe --latents RUN/latents --variant NAME:FIELD=VALUE,... [--variant ...] [--minutes 5 10 16]

Each variant is the prior `vqgen run` trains on these codes (pipeline/presets.py sized for the images
they came from) with some fields of its PriorConfig or TrainConfig replaced, for instance
`wide:channels=96,layers=8` or `cool:schedule=cooldown,ema=0`; `preset` alone is the preset as it is.
As in bench.wall, each variant trains in its own process on one thread, two at a time, under a growing
time budget that counts training steps only, and at each mark scores held-out bits per code (true
labels) on the same rows. A variant whose schedule ends with its budget (cooldown) is scored at the
last mark only: its earlier marks would need a run of their own each. One JSON line per variant and
mark, then one per mark with every variant's figure side by side. `--keep DIR` keeps each variant's
prior in DIR/NAME, to score its samples with `vqgen eval`. docs/experiments.md holds the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

from .common import in_pairs
from .wall import ours_loop, preset_for
from vqgen.data.latents import LatentDataset
from vqgen.engine.configs import parse_field
from vqgen.engine.errors import VQGenError
from vqgen.engine.train_config import TrainConfig
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.train import train_prior


def parse_variant(text: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """'NAME:field=value,...' -> (NAME, {"prior": {...}, "train": {...}}), each value parsed as its field's type."""
    name, _, body = text.partition(":")
    changes: dict[str, dict[str, Any]] = {"prior": {}, "train": {}}
    fields = {"prior": typing.get_type_hints(PriorConfig), "train": typing.get_type_hints(TrainConfig)}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        owner = next((part for part, known in fields.items() if key in known), None)
        if not sep or owner is None:
            raise SystemExit(f"bench.recipe: {item!r} in --variant {text!r} is not FIELD=VALUE of PriorConfig or "
                             "TrainConfig")
        changes[owner][key] = parse_field(fields[owner][key], value, key)
    return name, changes


def variant_configs(latents: Path, changes: dict[str, dict[str, Any]]) -> tuple[PriorConfig, TrainConfig]:
    preset = preset_for(LatentDataset(latents / "train"))
    return replace(preset.prior, **changes["prior"]), replace(preset.prior_train, **changes["train"])


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    name, changes = parse_variant(args.child)
    prior, train = variant_configs(args.latents, changes)
    marks = args.minutes[-1:] if train.schedule == "cooldown" else args.minutes
    keep = args.keep / name if args.keep else None
    for record in ours_loop(train, name, marks, lambda config, out: train_prior(
            prior, config, args.latents / "train", args.latents / "test", out, eval_grids=args.eval_grids,
            progress=False), keep=keep):
        print(json.dumps({"variant": name, **changes["prior"], **changes["train"], **record,
                          "channels": prior.channels, "layers": prior.layers, "lr": train.lr,
                          "schedule": train.schedule, "ema": train.ema}), flush=True)


def launch(text: str, args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench.recipe", "--child", text, "--latents", str(args.latents),
               "--eval-grids", str(args.eval_grids), "--minutes", *map(str, args.minutes),
               *(["--keep", str(args.keep)] if args.keep else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=Path, required=True, help="RUN/latents, holding train/ and test/")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                        help="a variant of the preset's prior (repeat; run two at a time, in the order given)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 16], help="marks, in training minutes")
    parser.add_argument("--eval-grids", type=int, default=2000, help="held-out grids scored at each mark")
    parser.add_argument("--keep", type=Path, help="keep each variant's prior in KEEP/NAME (for `vqgen eval`); "
                                                   "by default they are deleted")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not args.variant:
        parser.error("give at least one --variant (preset: the preset as it is)")
    names = [text.partition(":")[0] for text in args.variant]
    if len(set(names)) < len(names):
        sys.exit("bench.recipe: two variants share a NAME; give each its own (their figures and --keep folders "
                 "are keyed by it)")
    try:  # a bad field or value, a missing dataset or a value a config refuses fails here, in one line
        for changes in [parse_variant(text)[1] for text in args.variant]:
            variant_configs(args.latents, changes)
    except VQGenError as err:
        sys.exit(f"bench.recipe: {err}")
    taken = [name for name in names if args.keep and (args.keep / name).exists()]
    if taken:
        sys.exit(f"bench.recipe: {args.keep / taken[0]} exists; give --keep a new folder or remove it")
    shared = {"bench": "recipe", "latents": str(args.latents), "eval_grids": args.eval_grids, "threads_each": 1}
    in_pairs("recipe", args.variant, lambda text: launch(text, args), shared, "variant", "bits_per_code")

if __name__ == "__main__":
    main()
