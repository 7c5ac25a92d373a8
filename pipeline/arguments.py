"""The `vqgen` command line's arguments: one function per subcommand, the value types and their rules.

Model and training options are generated from the config dataclasses (pipeline/options.py); every
bad value is one line naming the option and the rule (argparse's exit code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from vqgen import __version__
from vqgen.data.images import DATASETS
from vqgen.engine.efficiency import describe_reference_rates
from vqgen.engine.runtime import describe_machine
from vqgen.engine.trainer import TrainConfig
from vqgen.pipeline.evaluation.evaluate import GUIDANCE, MIN_IMAGES, N_PER_CLASS, EvalOptions
from vqgen.pipeline.options import add_config_options
from vqgen.pipeline.presets import RUN_PRESETS
from vqgen.pipeline.evaluation.standard_fid import FID_SAMPLES
from vqgen.stage1_vqvae.config import PRESETS as VQVAE_PRESETS
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage2_prior.completion import PROPOSALS_PER_COMPLETION
from vqgen.stage2_prior.config import PRESETS as PRIOR_PRESETS
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.sampling import GUIDANCE_SCHEDULES

IMAGE_FIELDS = ("in_channels", "image_height", "image_width")
LATENT_FIELDS = ("codebook_size", "grid_height", "grid_width", "num_classes")
SHARED_TRAIN = ("seed", "device", "precision", "compile", "num_workers")
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
SET_BY_COMMAND = ("tensorboard",)  # a directory each command chooses; the user gives a bare --tensorboard
ALL_CODES = "all"  # `vqgen sample --top-k none`: every code, whatever top-k the prior's defaults hold


class _PrintVersion(argparse.Action):
    """Like argparse's "version" action, without wrapping the line at the terminal's width."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"vqgen {__version__} ({describe_machine()})")
        print(describe_reference_rates())
        parser.exit()


def _bounded(name: str, kind: Callable[[str], Any], low: float, rule: str, none: bool = False,
             at_least: bool = False, high: float = float("inf")) -> Callable[[str], Any]:
    """An argparse type: `kind` of the text, at least `low` (above it for floats, unless `at_least`) and at
    most `high`, or None for 'none'/'all' where `none`; a bad value is one line naming the option and the rule."""
    def parse(text: str) -> Any:
        if none and text.lower() in ("none", "all"):
            return None
        try:
            value = kind(text)
        except ValueError:
            what = ("an integer" if kind is int else "a number") + (" or 'none'" if none else "")
            raise argparse.ArgumentTypeError(f"{name}={text!r} is not {what}") from None
        if not (value >= low if kind is int or at_least else value > low) or value > high:
            raise argparse.ArgumentTypeError(f"{name}={value} is not allowed; must be {rule}")
        return value
    return parse


def _positive(name: str) -> Callable[[str], int]:
    return _bounded(name, int, 1, ">= 1")


def _add_data(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="builtin",
                       help=f"dataset: {', '.join(DATASETS)}, or a folder of images (default: builtin)")
    group.add_argument("--data-root", help="where torchvision datasets live (e.g. ../shared/data for MNIST)")
    group.add_argument("--download", action="store_true", help="download a torchvision dataset if missing")
    group.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                       help="decode a folder of images per batch, in the loader's workers (--no-stream: all "
                            "into memory first; default: stream when a split's pixels exceed 1 GiB)")
    group.add_argument("--image-size", type=_positive("--image-size"),
                       help="resize and centre-crop a folder's images to this square size")


_temperature = _bounded("--temperature", float, 0.0, "> 0")
_top_k = _bounded("--top-k", int, 1, ">= 1 (or none)", none=True)
_guidance = _bounded("--guidance", float, 0.0, ">= 0 (1: plain conditional, 0: unconditional)", at_least=True)
_top_p = _bounded("--top-p", float, 0.0, "in (0, 1] (or none)", none=True, high=1.0)
_interval = _bounded("--guidance-interval", float, 0.0, "in (0, 1] (1: every position guided)", high=1.0)


def _grid(text: str) -> tuple[int, int]:
    """--grid HxW (e.g. 14x14), the code grid to sample."""
    parts = text.lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid={text!r} is not HxW, e.g. 14x14") from None
    if min(height, width) < 1:
        raise argparse.ArgumentTypeError(f"--grid={text} is not allowed; H and W must be >= 1")
    return height, width


def _add_eval(parser: argparse.ArgumentParser) -> None:
    defaults = EvalOptions()
    group = parser.add_argument_group("evaluation")
    group.add_argument("--n-per-class", type=_positive("--n-per-class"), default=defaults.n_per_class,
                       help=f"held-out images and samples per class (default: {N_PER_CLASS}, or more to reach "
                            f"{MIN_IMAGES} in all)")
    group.add_argument("--temperature", dest="temperatures", type=_temperature, nargs="+", default=defaults.temperatures,
                       metavar="T", help="sampling temperatures to score (default: "
                       f"{' '.join(map(str, defaults.temperatures))})")
    group.add_argument("--top-k", dest="top_ks", type=_top_k, nargs="+", default=defaults.top_ks, metavar="K",
                       help="top-k values to score, 'none' for all codes (default: all codes, top-k K/8 or "
                            "top-p 0.9; given top-k and top-p values are scored in every combination)")
    group.add_argument("--top-p", dest="top_ps", type=_top_p, nargs="+", default=defaults.top_ps, metavar="P",
                       help="top-p (nucleus) values to score, 'none' for all codes")
    group.add_argument("--guidance", dest="guidances", type=_guidance, nargs="+", default=defaults.guidances,
                       metavar="S", help="guidance scales to score (default: "
                       f"{', '.join(f'{g:g}' for g in GUIDANCE)} for a prior trained with label dropout, else 1); "
                       "eval searches guidance first, at the temperature nearest 1 and the first truncation, "
                       "then every temperature and truncation at the best guidance")
    group.add_argument("--guidance-schedule", dest="guidance_schedules", choices=GUIDANCE_SCHEDULES, nargs="+",
                       default=defaults.guidance_schedules, metavar="NAME",
                       help="guidance schedules to score with every scale but 1: constant, linear (1 at the "
                            f"first position to the scale at the last) (default: {' '.join(defaults.guidance_schedules)})")
    group.add_argument("--guidance-interval", dest="guidance_intervals", type=_interval, nargs="+",
                       default=defaults.guidance_intervals, metavar="F",
                       help="shares of the positions guided, from the first, to score with every scale but 1 "
                            f"(default: {' '.join(map(str, defaults.guidance_intervals))})")
    group.add_argument("--seed", type=int, default=defaults.seed, help="seed of the samples (and of the held-out choice when unlabelled)")


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    """Options of one sampling setting; each one left out keeps the prior's default (chosen by `vqgen eval`)."""
    group = parser.add_argument_group("sampling (each option left out keeps the prior's default, chosen by "
                                      "`vqgen eval`; without one: temperature 1, all codes, guidance 1)")
    group.add_argument("--temperature", type=_temperature, help="softmax temperature (> 0)")
    group.add_argument("--top-k", type=lambda text: ALL_CODES if text.lower() in ("none", "all") else _top_k(text),
                       help="sample among the k most likely codes only ('none': all codes)")
    group.add_argument("--top-p", type=lambda text: _top_p(text) or 1.0,
                       help="sample among the fewest most likely codes holding this share of the probability "
                            "(nucleus sampling; 'none' or 1: all codes)")
    group.add_argument("--guidance", type=_guidance,
                       help="classifier-free guidance scale (1: the conditional prior as trained, 0: unconditional, "
                            "above 1: closer to the class; needs a prior trained with label dropout)")
    group.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULES,
                       help="constant: the scale at every position; linear: ramped from 1 at the first position "
                            "to the scale at the last, in raster order")
    group.add_argument("--guidance-interval", type=_interval,
                       help="share of the positions guided, from the first in raster order (0 < F <= 1; the "
                            "rest are drawn at scale 1)")
    group.add_argument("--seed", type=int, default=0)


def _add_train(parser: argparse.ArgumentParser, prefix: str = "", skip: Sequence[str] = ()) -> None:
    add_config_options(parser, TrainConfig, prefix=prefix, skip=(*skip, *SET_BY_COMMAND),
                       title=f"{prefix or ''}training options")


def _add_tensorboard(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument("--tensorboard", action="store_true",
                        help=f"also write TensorBoard event files under {where} "
                             "(needs pip install 'vqgen[tensorboard]')")


def _train_vqvae_arguments(p: argparse.ArgumentParser) -> None:
    _add_data(p)
    p.add_argument("--out", required=True, type=Path,
                   help="VQ-VAE directory (config.json, model.safetensors, state.pt)")
    p.add_argument("--preset", default="small", choices=sorted(VQVAE_PRESETS), help="model preset (default: small)")
    p.add_argument("--eval-images", type=_positive("--eval-images"), default=2000, help="held-out images per eval")
    add_config_options(p, VQVAEConfig, skip=IMAGE_FIELDS, title="VQ-VAE options")
    _add_train(p)
    _add_tensorboard(p, "OUT/tensorboard")



def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vqvae", required=True, type=Path, help="trained VQ-VAE directory")
    _add_data(p)
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--out", required=True, type=Path, help="latent dataset directory to create")
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=256)
    p.add_argument("--num-workers", type=int, default=0, help="loader processes reading (decoding) images")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda[:N]")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the encoder's autocast (auto: bf16 where the CPU or GPU computes it natively, as the "
                        "VQ-VAE trained; the quantizer's distances stay fp32)")



def _train_prior_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latents", required=True, type=Path, help="training latent dataset")
    p.add_argument("--eval-latents", type=Path,
                   help="held-out latent dataset (default: the sibling 'test' directory, else --latents)")
    p.add_argument("--out", required=True, type=Path, help="prior directory")
    p.add_argument("--preset", default="small", choices=sorted(PRIOR_PRESETS), help="model preset (default: small)")
    p.add_argument("--eval-grids", type=_positive("--eval-grids"), default=2000, help="held-out grids per eval")
    add_config_options(p, PriorConfig, skip=LATENT_FIELDS, title="prior options")
    _add_train(p)
    _add_tensorboard(p, "OUT/tensorboard")



def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vqvae", required=True, type=Path)
    p.add_argument("--prior", required=True, type=Path)
    p.add_argument("-n", type=_positive("-n"), default=64, help="number of images (default 64)")
    p.add_argument("--label", type=int, help="class to sample (default: spread over all classes)")
    p.add_argument("--grid", type=_grid, help="code grid HxW to sample (default: the training grid); "
                                              "a larger grid decodes to a larger image")
    _add_sampling(p)
    p.add_argument("--nrow", type=_positive("--nrow"), default=8, help="images per grid row")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, type=Path, help="directory for grid.png, images/, codes.npy")



def _complete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vqvae", required=True, type=Path)
    p.add_argument("--prior", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path, help="the image to complete (the VQ-VAE's size)")
    kept = p.add_mutually_exclusive_group(required=True)
    kept.add_argument("--keep-top", type=_positive("--keep-top"), metavar="ROWS",
                      help="keep the top ROWS pixel rows and generate the rest (exact conditional sampling)")
    kept.add_argument("--mask", type=Path, help="a PNG of the image's size, white where pixels are to be generated")
    p.add_argument("--label", type=int, help="class to complete as (a class-conditional prior needs one)")
    p.add_argument("-n", type=_positive("-n"), default=8, help="number of completions (default 8)")
    p.add_argument("--proposals", type=_positive("--proposals"),
                   help="proposals drawn for a mask other than a kept top band, resampled by weight "
                        f"(default: {PROPOSALS_PER_COMPLETION} per completion)")
    _add_sampling(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, type=Path, help="directory for grid.png, images/, codes.npy")



def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", "--run-dir", dest="run", required=True, type=Path,
                   help="run directory (the --out of `vqgen run`); under torchrun write --run-dir, as torchrun "
                        "reads --run as its own --run-path")
    _add_eval(p)
    _add_standard_fid(p)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda[:N]")
    _add_tensorboard(p, "RUN/tensorboard (judge/, eval/)")


def _add_standard_fid(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("standard FID (needs pip install 'vqgen[fid]')")
    group.add_argument("--fid", action="store_true",
                       help="also compute the Inception-v3 FID, KID and Inception Score of --fid-samples samples "
                            "against the train split, as papers report them (torch-fidelity), into eval.json's "
                            "standard_fid")
    group.add_argument("--fid-samples", type=_positive("--fid-samples"), default=FID_SAMPLES, metavar="N",
                       help=f"samples, spread over the classes (default: {FID_SAMPLES:,}, as papers use)")
    group.add_argument("--fid-weights", type=Path, metavar="PATH",
                       help="a local copy of torch-fidelity's Inception weights (weights-inception-2015-12-05-"
                            "6726825d.pth), for a machine that cannot download them")


def _export_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", "--run-dir", dest="run", required=True, type=Path, help="a finished run directory")
    p.add_argument("--out", required=True, type=Path,
                   help="folder to create: vqvae/, prior/, README.md (the model card), samples.png; upload it with "
                        "`hf upload OWNER/NAME OUT`")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    _add_data(p)
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--preset", default="default", choices=sorted(RUN_PRESETS),
                   help="quick (~2 min smoke run), default (minutes on a 2-core CPU), paper (GPU sizes); "
                        "each sized for the data (image channels and size, number of images)")
    p.add_argument("--samples", type=_positive("--samples"), help="images to sample (a row per class)")
    p.add_argument("--temperature", type=_temperature,
                   help="temperature of the run's sample grid (> 0; default: the one eval chooses, else 1); the "
                        "grid's other options stay as eval chose them")
    p.add_argument("--guidance", type=_guidance,
                   help="guidance scale of the run's sample grid (default: the one eval chooses, else 1); the "
                        "grid's other options stay as eval chose them")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="train both stages on the train split and its horizontal mirror images, which doubles "
                        "the prior's grids (default: the preset's: on for color images in --preset default, off in quick "
                        "and paper and for grayscale images)")
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=None,
                   help="run `vqgen eval` after training (default: on, except for --preset quick)")
    _add_tensorboard(p, "RUN/tensorboard, a sub-run per stage (vqvae/, prior/, judge/, eval/, samples/)")
    add_config_options(p, TrainConfig, skip=[f for f in TRAIN_FIELDS if f not in SHARED_TRAIN],
                       title="options of both stages")
    add_config_options(p, VQVAEConfig, prefix="vqvae-", skip=IMAGE_FIELDS,
                       title="VQ-VAE options")
    _add_train(p, prefix="vqvae-", skip=SHARED_TRAIN)
    add_config_options(p, PriorConfig, prefix="prior-", skip=LATENT_FIELDS,
                       title="prior options")
    _add_train(p, prefix="prior-", skip=SHARED_TRAIN)


COMMAND_ARGUMENTS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "train-vqvae": ("train a VQ-VAE on images", _train_vqvae_arguments),
    "export": ("encode a split into a latent dataset", _export_arguments),
    "train-prior": ("train a gated PixelCNN prior on a latent dataset", _train_prior_arguments),
    "sample": ("sample images from a trained prior and VQ-VAE", _sample_arguments),
    "complete": ("complete a partly given image: keep part of it, sample the rest", _complete_arguments),
    "eval": ("score a run's samples and reconstructions against real held-out images", _eval_arguments),
    "export-model": ("write a run's two models and a model card into a folder, ready to share on the Hub",
                     _export_model_arguments),
    "run": ("train both stages, export, evaluate, sample and report, resuming where it stopped", _run_arguments),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgen", description="VQ-VAE + gated PixelCNN prior: train, "
                                     "export latents, sample images.")
    parser.add_argument("--version", action=_PrintVersion, help="print vqgen's version and the machine, then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary_line, add_arguments) in COMMAND_ARGUMENTS.items():
        add_arguments(sub.add_parser(name, help=summary_line))
    return parser
