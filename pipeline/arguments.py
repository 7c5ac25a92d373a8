"""The `vqgen` command line's arguments: one function per subcommand, the value types and their rules.

Model, training, sampling and evaluation options are generated from their config dataclasses
(pipeline/options.py), so each is defined once, with its help on the field; every bad value is one
line naming the option and the rule.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

from vqgen import __version__
from vqgen.data.images import DATASETS
from vqgen.engine.efficiency import describe_reference_rates
from vqgen.engine.runtime import describe_machine
from vqgen.engine.configs import fields_where
from vqgen.engine.train_config import TrainConfig
from vqgen.pipeline.evaluation.search import EvalOptions
from vqgen.pipeline.options import add_config_options
from vqgen.pipeline.presets import DECODER_TUNING, RUN_PRESETS
from vqgen.pipeline.evaluation.standard_fid import FID_SAMPLES
from vqgen.stage1_vqvae.config import PRESETS as VQVAE_PRESETS
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage2_prior.completion import PROPOSALS_PER_COMPLETION
from vqgen.stage2_prior.config import PRESETS as PRIOR_PRESETS
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.sampling import SamplingOptions

class _PrintVersion(argparse.Action):
    """Like argparse's "version" action, without wrapping the line at the terminal's width."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"vqgen {__version__} ({describe_machine()})")
        print(describe_reference_rates())
        parser.exit()


def _positive(name: str) -> Callable[[str], int]:
    """An argparse type: an integer >= 1; a bad value is one line naming the option (argparse's exit code 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name}={value} is not allowed; must be >= 1")
        return value
    return parse


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


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    """Options of one sampling setting, from SamplingOptions; each one left out keeps the prior's default."""
    add_config_options(parser, SamplingOptions, title="sampling (each option left out keeps the prior's default, "
                       "chosen by `vqgen eval`)", default_text="without one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")


def _add_train(parser: argparse.ArgumentParser, prefix: str = "", skip: Sequence[str] = (),
               defaults: TrainConfig | None = None, default_text: str = "preset default") -> None:
    add_config_options(parser, TrainConfig, prefix=prefix, skip=skip, title=f"{prefix or ''}training options",
                       defaults=defaults, default_text=default_text)


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
    add_config_options(p, VQVAEConfig, title="VQ-VAE options")
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
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="the encoder's autocast (default: the precision the VQ-VAE trained with, fp32 for a model "
                        "folder that does not say; auto: bf16 where the CPU or GPU computes it natively); the "
                        "quantizer's distances stay fp32")



def _tune_decoder_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vqvae", required=True, type=Path, help="trained VQ-VAE directory")
    p.add_argument("--latents", required=True, type=Path,
                   help="the train split's latent dataset, exported by this VQ-VAE (`vqgen export`)")
    _add_data(p)
    p.add_argument("--flip", action="store_true",
                   help="the latents hold the split's mirror images too, as `vqgen run --flip` exports them")
    p.add_argument("--out", required=True, type=Path,
                   help="directory of the tuned VQ-VAE (config.json, model.safetensors, state.pt), to sample with")
    p.add_argument("--eval-images", type=_positive("--eval-images"), default=2000, help="held-out images per eval")
    _add_train(p, defaults=DECODER_TUNING, default_text="default")
    _add_tensorboard(p, "OUT/tensorboard")


def _train_prior_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latents", required=True, type=Path, help="training latent dataset")
    p.add_argument("--eval-latents", type=Path,
                   help="held-out latent dataset (default: the sibling 'test' directory, else --latents)")
    p.add_argument("--out", required=True, type=Path, help="prior directory")
    p.add_argument("--preset", default="small", choices=sorted(PRIOR_PRESETS), help="model preset (default: small)")
    p.add_argument("--eval-grids", type=_positive("--eval-grids"), default=2000, help="held-out grids per eval")
    add_config_options(p, PriorConfig, title="prior options")
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
    add_config_options(p, EvalOptions, title="evaluation (eval searches guidance first, at the temperature nearest "
                       "1 and the first truncation, then every temperature and truncation at the best guidance)",
                       default_text="default")
    _add_standard_fid(p)
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
                   help="quick (a smoke run, without eval), default (minutes on a 2-core CPU: docs/performance.md), paper (GPU sizes); "
                        "each sized for the data (image channels and size, number of images)")
    sized = p.add_mutually_exclusive_group()
    sized.add_argument("--minutes", type=float, metavar="M",
                       help="size the run in wall time rather than steps: the VQ-VAE (and a tuned decoder) trains for the "
                            "preset's share of M, "
                            "the prior for what the stages after it leave, measured on this machine; each stage's "
                            "--steps is then a cap (default: the preset's steps; 0: the same)")
    sized.add_argument("--steps-of", type=Path, metavar="RUN",
                       help="train each stage exactly the steps the finished run RUN took (its report.json), with no "
                            "time budget: a run sized by --minutes, repeated to the digit here or on another machine")
    p.add_argument("--samples", type=_positive("--samples"), help="images to sample (a row per class)")
    add_config_options(p, SamplingOptions, title="the run's sample grid (each option left out is the one eval "
                       "chooses, or without eval)", default_text="without eval")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="train both stages on the train split and its horizontal mirror images, which doubles "
                        "the prior's grids (default: the preset's: on for color images in --preset default, off in quick "
                        "and paper and for grayscale images)")
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=None,
                   help="run `vqgen eval` after training (default: on, except for --preset quick)")
    _add_tensorboard(p, "RUN/tensorboard, a sub-run per stage (vqvae/, decoder/, prior/, judge/, eval/, samples/)")
    shared = fields_where(TrainConfig, shared=True)
    add_config_options(p, TrainConfig, skip=fields_where(TrainConfig, shared=False), default_text="library default",
                       title="options of every training stage (given, they set every stage; not given, each stage "
                             "keeps its preset's value)")
    add_config_options(p, VQVAEConfig, prefix="vqvae-", title="VQ-VAE options")
    _add_train(p, prefix="vqvae-", skip=shared)
    add_config_options(p, PriorConfig, prefix="prior-", title="prior options")
    _add_train(p, prefix="prior-", skip=shared)
    p.add_argument("--tune-decoder", action=argparse.BooleanOptionalAction, default=None,
                   help="after export, tune the VQ-VAE's decoder alone on the exported codes (encoder and codebook "
                        "frozen: the codes stay), into RUN/decoder, which samples are then decoded with (default: "
                        "the preset's: on in --preset default, off in quick and paper); the --decoder-* options set its "
                        "training, from `vqgen tune-decoder`'s defaults where the preset has none")
    _add_train(p, prefix="decoder-", skip=shared, defaults=DECODER_TUNING)


COMMAND_ARGUMENTS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "train-vqvae": ("train a VQ-VAE on images", _train_vqvae_arguments),
    "export": ("encode a split into a latent dataset", _export_arguments),
    "tune-decoder": ("tune a trained VQ-VAE's decoder alone on its exported codes", _tune_decoder_arguments),
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
