"""The `vqgen` command line: one subcommand per arrow of the data flow, plus `run` for all of them.

Errors the user can fix print one line (`vqgen: error: ...`) and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vqgen import __version__
from vqgen.engine.distributed import launched_as_main
from vqgen.engine.errors import VQGenError
from vqgen.engine.runtime import describe_machine
from vqgen.engine.tensorboard import TENSORBOARD_DIR, require_tensorboard
from vqgen.engine.units import describe
from vqgen.data.images import DATASETS, data_shape, open_dataset
from vqgen.engine.trainer import TrainConfig
from vqgen.pipeline.evaluate import MIN_IMAGES, N_PER_CLASS, EvalOptions, summary
from vqgen.pipeline.options import add_config_options, config_from_args
from vqgen.pipeline.presets import RUN_PRESETS
from vqgen.stage1_vqvae.config import PRESETS as VQVAE_PRESETS
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage2_prior.config import PRESETS as PRIOR_PRESETS
from vqgen.stage2_prior.completion import PROPOSALS_PER_COMPLETION
from vqgen.stage2_prior.config import PriorConfig

IMAGE_FIELDS = ("in_channels", "image_height", "image_width")
LATENT_FIELDS = ("codebook_size", "grid_height", "grid_width", "num_classes")
SHARED_TRAIN = ("seed", "device", "precision", "compile", "num_workers")
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
SET_BY_COMMAND = ("tensorboard",)  # a directory each command chooses; the user gives a bare --tensorboard
VQVAE_SUMMARY = ("psnr", "codes_used", "perplexity")
PRIOR_SUMMARY = ("bits_per_code", "unigram_bits_per_code")


class _PrintVersion(argparse.Action):
    """Like argparse's "version" action, without wrapping the line at the terminal's width."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"vqgen {__version__} ({describe_machine()})")
        parser.exit()


def _bounded(name: str, kind: Callable[[str], Any], low: float, rule: str, none: bool = False,
             at_least: bool = False) -> Callable[[str], Any]:
    """An argparse type: `kind` of the text, at least `low` (above it for floats, unless `at_least`), or
    None for 'none'/'all' where `none`; a bad value is one line naming the option and the rule."""
    def parse(text: str) -> Any:
        if none and text.lower() in ("none", "all"):
            return None
        try:
            value = kind(text)
        except ValueError:
            what = ("an integer" if kind is int else "a number") + (" or 'none'" if none else "")
            raise argparse.ArgumentTypeError(f"{name}={text!r} is not {what}") from None
        if not (value >= low if kind is int or at_least else value > low):
            raise argparse.ArgumentTypeError(f"{name}={value} is not allowed; must be {rule}")
        return value
    return parse


def _say(text: str, stream: Any = None) -> None:
    """Print once per command: by rank 0 under torchrun, whose other ranks did the same work."""
    if launched_as_main():
        print(text, file=stream or sys.stdout)


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
ALL_CODES = "all"  # `vqgen sample --top-k none`: every code, whatever top-k the prior's defaults hold


def _top_p(text: str) -> float | None:
    """--top-p in (0, 1]; 'none' (or 1) keeps every code."""
    if text.lower() in ("none", "all"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--top-p={text!r} is not a number or 'none'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--top-p={value} is not allowed; must be in (0, 1] (or none)")
    return value


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
                       metavar="S", help="guidance scales to score (default: 1, 1.5 and 2 for a prior trained "
                                         "with label dropout, else 1)")
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
    group.add_argument("--seed", type=int, default=0)


def _sampling_options(args: argparse.Namespace, generator: Any) -> Any:
    """The setting a sampling command draws with: the prior's defaults, each option given replaced."""
    top_k = generator.prior.config.codebook_size if args.top_k == ALL_CODES else args.top_k
    return generator.options(args.temperature, top_k, args.top_p, args.guidance)


def _add_train(parser: argparse.ArgumentParser, prefix: str = "", skip: Sequence[str] = ()) -> None:
    add_config_options(parser, TrainConfig, prefix=prefix, skip=(*skip, *SET_BY_COMMAND),
                       title=f"{prefix or ''}training options")


def _add_tensorboard(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument("--tensorboard", action="store_true",
                        help=f"also write TensorBoard event files under {where} "
                             "(needs pip install 'vqgen[tensorboard]')")


def _tensorboard_dir(args: argparse.Namespace, root: Path) -> str | None:
    """root/tensorboard with --tensorboard, checked now so a missing package stops the command before any work."""
    if not args.tensorboard:
        return None
    require_tensorboard()
    return str(root / TENSORBOARD_DIR)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqgen", description="VQ-VAE + gated PixelCNN prior: train, "
                                     "export latents, sample images.")
    parser.add_argument("--version", action=_PrintVersion, help="print vqgen's version and the machine, then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train-vqvae", help="train a VQ-VAE on images")
    _add_data(p)
    p.add_argument("--out", required=True, type=Path, help="VQ-VAE directory (config.json, model.pt, state.pt)")
    p.add_argument("--preset", default="small", choices=sorted(VQVAE_PRESETS), help="model preset (default: small)")
    p.add_argument("--eval-images", type=_positive("--eval-images"), default=2000, help="held-out images per eval")
    add_config_options(p, VQVAEConfig, skip=IMAGE_FIELDS, title="VQ-VAE options")
    _add_train(p)
    _add_tensorboard(p, "OUT/tensorboard")

    p = sub.add_parser("export", help="encode a split into a latent dataset")
    p.add_argument("--vqvae", required=True, type=Path, help="trained VQ-VAE directory")
    _add_data(p)
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--out", required=True, type=Path, help="latent dataset directory to create")
    p.add_argument("--batch-size", type=_positive("--batch-size"), default=256)
    p.add_argument("--num-workers", type=int, default=0, help="loader processes reading (decoding) images")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda[:N]")

    p = sub.add_parser("train-prior", help="train a gated PixelCNN prior on a latent dataset")
    p.add_argument("--latents", required=True, type=Path, help="training latent dataset")
    p.add_argument("--eval-latents", type=Path,
                   help="held-out latent dataset (default: the sibling 'test' directory, else --latents)")
    p.add_argument("--out", required=True, type=Path, help="prior directory")
    p.add_argument("--preset", default="small", choices=sorted(PRIOR_PRESETS), help="model preset (default: small)")
    p.add_argument("--eval-grids", type=_positive("--eval-grids"), default=2000, help="held-out grids per eval")
    add_config_options(p, PriorConfig, skip=LATENT_FIELDS, title="prior options")
    _add_train(p)
    _add_tensorboard(p, "OUT/tensorboard")

    p = sub.add_parser("sample", help="sample images from a trained prior and VQ-VAE")
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

    p = sub.add_parser("complete", help="complete a partly given image: keep part of it, sample the rest")
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

    p = sub.add_parser("eval", help="score a run's samples and reconstructions against real held-out images")
    p.add_argument("--run", "--run-dir", dest="run", required=True, type=Path,
                   help="run directory (the --out of `vqgen run`); under torchrun write --run-dir, as torchrun "
                        "reads --run as its own --run-path")
    _add_eval(p)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda[:N]")
    _add_tensorboard(p, "RUN/tensorboard (judge/, eval/)")

    p = sub.add_parser("run", help="train both stages, export, evaluate, sample and report, resuming where it stopped")
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
    return parser


def _train_vqvae(args: argparse.Namespace) -> None:
    from vqgen.stage1_vqvae.train import train_vqvae

    train_config = config_from_args(args, TrainConfig(), tensorboard=_tensorboard_dir(args, args.out))
    base = VQVAE_PRESETS[args.preset]()
    data, held_out = (open_dataset(args.data, split, args.data_root, args.download, size=args.image_size,
                                   stream=args.stream, index_dir=args.out) for split in ("train", "test"))
    info = data.info
    config = config_from_args(args, base, in_channels=info.channels, image_height=info.height,
                              image_width=info.width)
    result = train_vqvae(config, train_config, data, held_out, args.out, eval_images=args.eval_images)
    _say(f"VQ-VAE saved in {args.out}: {describe(result['evaluation'], VQVAE_SUMMARY, config.codebook_size)}")


def _export(args: argparse.Namespace) -> None:
    from vqgen.engine.distributed import process_device
    from vqgen.stage1_vqvae.export import export_latents
    from vqgen.stage1_vqvae.model import VQVAE

    ctx, device = process_device(args.device)
    model = VQVAE.from_pretrained(args.vqvae).to(device)
    data = open_dataset(args.data, args.split, args.data_root, args.download, size=args.image_size,
                        stream=args.stream, index_dir=args.vqvae)  # reuses the index training wrote there
    manifest = export_latents(model, data, args.out, vqvae_dir=args.vqvae, batch_size=args.batch_size, ctx=ctx,
                              num_workers=args.num_workers)
    if ctx.is_main:
        print(f"exported {manifest.count} code grids of {manifest.grid[0]}x{manifest.grid[1]} to {args.out}")


def _eval_latents(args: argparse.Namespace) -> Path:
    if args.eval_latents is not None:
        return args.eval_latents
    sibling = args.latents.parent / "test"
    if args.latents.name != "test" and sibling.is_dir():
        return sibling
    _say(f"no held-out latents given: evaluating on {args.latents} itself (pass --eval-latents)", sys.stderr)
    return args.latents


def _train_prior(args: argparse.Namespace) -> None:
    from vqgen.stage2_prior.train import train_prior

    train_config = config_from_args(args, TrainConfig(), tensorboard=_tensorboard_dir(args, args.out))
    config = config_from_args(args, PRIOR_PRESETS[args.preset]())
    result = train_prior(config, train_config, args.latents, _eval_latents(args), args.out,
                         eval_grids=args.eval_grids)
    _say(f"prior saved in {args.out}: {describe(result['evaluation'], PRIOR_SUMMARY)}")


def _sample(args: argparse.Namespace) -> None:
    from vqgen.engine.locks import directory_lock
    from vqgen.pipeline.generate import Generator, save_samples
    from vqgen.stage2_prior.sampling import check_request

    if not launched_as_main():  # under torchrun rank 0 samples alone: one process writes the output
        return
    generator = Generator.from_pretrained(args.vqvae, args.prior, device=args.device)
    labels = args.label
    if labels is None and generator.num_classes:
        labels = generator.spread_labels(args.n)
    options = _sampling_options(args, generator)
    check_request(generator.prior, args.n, labels, options, args.grid)  # before the output directory is made
    with directory_lock(args.out):
        samples = generator.sample_with(args.n, labels, options, args.seed, grid=args.grid)
        save_samples(samples, args.out, nrow=args.nrow)
    print(f"{args.n} samples written to {args.out} (grid.png, images/, codes.npy)")


def _complete(args: argparse.Namespace) -> None:
    from vqgen.pipeline.complete import complete_image

    if not launched_as_main():  # under torchrun rank 0 completes alone: one process writes the output
        return
    completed = complete_image(args.vqvae, args.prior, args.image, args.out, n=args.n, keep_top=args.keep_top,
                               mask=args.mask, label=args.label, seed=args.seed, proposals=args.proposals,
                               device=args.device, choose=lambda generator: _sampling_options(args, generator))
    result = completed.completion
    how = ("exact: the kept codes come first" if result.exact else
           f"{result.proposals} proposals resampled by weight, effective sample size {result.effective_sample_size:.1f}")
    print(f"{args.n} completions written to {args.out} (grid.png: original | masked | completions; {how})")


def _eval(args: argparse.Namespace) -> None:
    from vqgen.pipeline.evaluate import evaluate_run

    options = EvalOptions(n_per_class=args.n_per_class, temperatures=tuple(args.temperatures),
                          top_ks=args.top_ks and tuple(args.top_ks), top_ps=args.top_ps and tuple(args.top_ps),
                          guidances=args.guidances and tuple(args.guidances), seed=args.seed, device=args.device)
    report = evaluate_run(args.run, options, tensorboard=_tensorboard_dir(args, args.run))
    _say("\n".join(summary(report)) + f"\nwritten to {args.run / 'eval.json'}")


def _run(args: argparse.Namespace) -> None:
    from vqgen.pipeline.run import RunSpec, run

    shape = data_shape(args.data, args.data_root, args.download, args.image_size, index_dir=args.out)
    preset = RUN_PRESETS[args.preset](shape)  # sized for the data (pipeline/presets.py)
    shared = config_from_args(args, preset.vqvae_train, tensorboard=None)
    shared_values = {name: getattr(shared, name) for name in SHARED_TRAIN}
    spec = RunSpec(
        data=args.data, data_root=args.data_root, image_size=args.image_size,
        vqvae=config_from_args(args, preset.vqvae, prefix="vqvae-"),
        vqvae_train=config_from_args(args, preset.vqvae_train, prefix="vqvae-", **shared_values),
        prior=config_from_args(args, preset.prior, prefix="prior-"),
        prior_train=config_from_args(args, preset.prior_train, prefix="prior-", **shared_values),
        eval_images=preset.eval_images, samples=args.samples or 100, temperature=args.temperature,
        guidance=args.guidance)
    evaluate = preset.evaluate if args.eval is None else args.eval
    report = run(spec, args.out, download=args.download, evaluation=EvalOptions() if evaluate else None,
                 tensorboard=args.tensorboard, stream=args.stream)
    if report:
        if report.get("eval"):  # null when eval was skipped
            print("\n".join(summary(report["eval"])))
        print(_run_summary(args.out, report))


def _run_summary(out: Path, report: dict[str, Any]) -> str:
    """The closing line: each figure with its unit, codebook use as a count of K."""
    codebook_size = report["config"]["vqvae"]["codebook_size"]
    return (f"run finished in {out}: VQ-VAE {describe(report['vqvae']['eval'], VQVAE_SUMMARY, codebook_size)}; "
            f"prior {describe(report['prior']['eval'], PRIOR_SUMMARY)}; "
            f"{report['likelihood']['bits_per_dim']:.3f} bits/dim; samples in {out / 'samples' / 'grid.png'}")


COMMANDS = {"train-vqvae": _train_vqvae, "export": _export, "train-prior": _train_prior,
            "sample": _sample, "complete": _complete, "eval": _eval, "run": _run}


def _rank_to_say(err: VQGenError) -> int | None:
    """Which rank prints `err` (None: this one keeps quiet). Under torchrun an error every rank meets
    (bad input, before the ranks connect; one rank 0 broadcast; a stop all ranks agreed on) is said
    once, by rank 0; an error of one rank's own, after they connected, by that rank, with its number."""
    if launched_as_main():
        return 0
    return int(os.environ["RANK"]) if torch.distributed.is_initialized() and not err.shared else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vqgen` console script and `python -m vqgen`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except VQGenError as err:
        rank = _rank_to_say(err)
        if rank is not None:
            print(f"vqgen {args.command}{f' (rank {rank})' if rank else ''}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"vqgen {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
