"""The `vqgen` command line: one subcommand per arrow of the data flow, plus `run` for all of them
(their arguments: pipeline/arguments.py).

Errors the user can fix print one line (`vqgen: error: ...`) and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from vqgen.data.images import Mirrored, data_shape, open_dataset
from vqgen.engine.distributed import launched_as_main, leave_distributed
from vqgen.engine.configs import fields_where
from vqgen.engine.errors import UsageError, VQGenError
from vqgen.engine.tensorboard import TENSORBOARD_DIR, require_tensorboard
from vqgen.engine.train_config import TrainConfig
from vqgen.engine.units import describe
from vqgen.pipeline.arguments import build_parser
from vqgen.pipeline.evaluation.report import EvalReport
from vqgen.pipeline.evaluation.search import EvalOptions
from vqgen.pipeline.options import checked_overrides, config_from_args, flags_named, given
from vqgen.pipeline.presets import DECODER_TUNING, RUN_PRESETS, with_decoder_tuning
from vqgen.stage1_vqvae.config import PRESETS as VQVAE_PRESETS
from vqgen.stage2_prior.config import PRESETS as PRIOR_PRESETS
from vqgen.stage2_prior.sampling import SamplingOptions

VQVAE_SUMMARY = ("psnr", "codes_used", "perplexity")
PRIOR_SUMMARY = ("bits_per_code", "unigram_bits_per_code")


def _say(text: str, stream: Any = None) -> None:
    """Print once per command: by rank 0 under torchrun, whose other ranks did the same work."""
    if launched_as_main():
        print(text, file=stream or sys.stdout)


def _tensorboard_dir(args: argparse.Namespace, root: Path) -> str | None:
    """root/tensorboard with --tensorboard, checked now so a missing package stops the command before any work."""
    if not args.tensorboard:
        return None
    require_tensorboard()
    return str(root / TENSORBOARD_DIR)


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
                              num_workers=args.num_workers, precision=args.precision)  # None: as it trained
    if ctx.is_main:
        print(f"exported {manifest.count} code grids of {manifest.grid[0]}x{manifest.grid[1]} to {args.out}")


def _tune_decoder(args: argparse.Namespace) -> None:
    from vqgen.stage1_vqvae.decoder_tuning import tune_decoder

    train_config = config_from_args(args, DECODER_TUNING, tensorboard=_tensorboard_dir(args, args.out))
    images, held_out = (open_dataset(args.data, split, args.data_root, args.download, size=args.image_size,
                                     stream=args.stream, index_dir=args.vqvae) for split in ("train", "test"))
    result = tune_decoder(args.vqvae, args.latents, Mirrored(images) if args.flip else images, held_out, train_config,
                          args.out, eval_images=args.eval_images)
    _say(f"VQ-VAE with its decoder tuned saved in {args.out}: {describe(result['evaluation'], ('psnr',))}")


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
    overrides = checked_overrides(args, SamplingOptions)
    generator = Generator.from_pretrained(args.vqvae, args.prior, device=args.device)
    labels = args.label
    if labels is None and generator.num_classes:
        labels = generator.spread_labels(args.n)
    with flags_named(SamplingOptions):
        options = generator.options(**overrides)
        check_request(generator.prior, args.n, labels, options, args.grid)  # before the output directory is made
    with directory_lock(args.out):
        samples = generator.sample(args.n, labels, options, seed=args.seed, grid=args.grid)
        save_samples(samples, args.out, nrow=args.nrow)
    print(f"{args.n} samples at {options.describe()} written to {args.out} (grid.png, images/, codes.npy, "
          "sampling.json)")


def _complete(args: argparse.Namespace) -> None:
    from vqgen.pipeline.complete import complete_image

    if not launched_as_main():  # under torchrun rank 0 completes alone: one process writes the output
        return
    overrides = checked_overrides(args, SamplingOptions)
    with flags_named(SamplingOptions):
        completed = complete_image(args.vqvae, args.prior, args.image, args.out, n=args.n, keep_top=args.keep_top,
                                   mask=args.mask, label=args.label, seed=args.seed, proposals=args.proposals,
                                   device=args.device, **overrides)
    result = completed.completion
    how = ("exact: the kept codes come first" if result.exact else
           f"{result.proposals} proposals resampled by weight, effective sample size {result.effective_sample_size:.1f}")
    print(f"{args.n} completions at {completed.samples.options.describe()} written to {args.out} (grid.png: "
          f"original | masked | completions; {how})")


def _eval(args: argparse.Namespace) -> None:
    from vqgen.pipeline.evaluation.evaluate import evaluate_run
    from vqgen.pipeline.evaluation.standard_fid import describe, inception_weights, require_torch_fidelity, standard_fid

    options = config_from_args(args, EvalOptions())
    if args.fid and launched_as_main():  # the package and the weights, before minutes of work
        require_torch_fidelity()
        args.fid_weights = inception_weights(args.fid_weights)
    with flags_named(EvalOptions):  # a value the prior cannot take (a top-k above its K), named as a flag
        report = evaluate_run(args.run, options, tensorboard=_tensorboard_dir(args, args.run))
    _say("\n".join(report.summary()))
    if args.fid:
        # rank 0 alone samples and scores, for longer than any collective's timeout on a CPU: the other
        # ranks leave the process group now rather than wait for it in a barrier
        leave_distributed(finished=True)
        if launched_as_main():
            _say(describe(standard_fid(args.run, args.fid_samples, args.fid_weights, options.device, options.seed)))
    _say(f"written to {args.run / 'eval.json'}")


def _export_model(args: argparse.Namespace) -> None:
    from vqgen.pipeline.export_model import export_model

    if not launched_as_main():  # under torchrun rank 0 writes the folder alone
        return
    out = export_model(args.run, args.out)
    print(f"model folder written to {out} (vqvae/, prior/, README.md); load it with "
          f"vqgen.Generator.from_pretrained({str(out)!r}), or share it with `hf upload OWNER/NAME {out}`")


def _run(args: argparse.Namespace) -> None:
    from vqgen.pipeline.budget import steps_of
    from vqgen.pipeline.run import RunSpec, run

    shape = data_shape(args.data, args.data_root, args.download, args.image_size, index_dir=args.out)
    preset = with_decoder_tuning(RUN_PRESETS[args.preset](shape), shape, args.tune_decoder)  # sized for the data
    spec = RunSpec.from_preset(preset, args.data, args.data_root, args.image_size, minutes=args.minutes,
                               steps=steps_of(args.steps_of) if args.steps_of else None)
    # a flag of every stage sets it in each; one not given leaves each stage its preset's value (the color default
    # compiles its prior alone)
    shared = fields_where(TrainConfig, shared=True)
    shared_values = {name: value for name, value in checked_overrides(args, TrainConfig).items() if name in shared}
    with flags_named(SamplingOptions):
        spec = replace(
            spec, vqvae=config_from_args(args, spec.vqvae, prefix="vqvae-"),
            vqvae_train=config_from_args(args, spec.vqvae_train, prefix="vqvae-", **shared_values),
            prior=config_from_args(args, spec.prior, prefix="prior-"),
            prior_train=config_from_args(args, spec.prior_train, prefix="prior-", **shared_values),
            samples=args.samples or spec.samples, sampling=checked_overrides(args, SamplingOptions),
            flip=spec.flip if args.flip is None else args.flip,
            decoder_train=_decoder_train(args, spec.decoder_train, shared_values))
    evaluate = preset.evaluate if args.eval is None else args.eval
    report = run(spec, args.out, download=args.download, evaluation=EvalOptions() if evaluate else None,
                 tensorboard=args.tensorboard, stream=args.stream)
    if report:
        if report.get("eval"):  # null when eval was skipped
            print("\n".join(EvalReport.from_json(report["eval"]).summary()))
        print(_run_summary(args.out, report))


def _decoder_train(args: argparse.Namespace, tuning: TrainConfig | None,
                   shared: dict[str, Any]) -> TrainConfig | None:
    """The run's decoder tuning with its --decoder-* flags; those flags on a run that tunes none are refused."""
    if tuning is not None:
        return config_from_args(args, tuning, prefix="decoder-", **shared)
    if given(args, TrainConfig, prefix="decoder-"):
        raise UsageError("the --decoder-* options set how the decoder is tuned, which this run does not do; "
                         "add --tune-decoder")
    return None


def _run_summary(out: Path, report: dict[str, Any]) -> str:
    """The closing line: each figure with its unit, codebook use as a count of K."""
    codebook_size = report["config"]["vqvae"]["codebook_size"]
    tuned = f"decoder tuned: {describe(report['decoder']['eval'], ('psnr',))}; " if report.get("decoder") else ""
    return (f"run finished in {out}: VQ-VAE {describe(report['vqvae']['eval'], VQVAE_SUMMARY, codebook_size)}; {tuned}"
            f"prior {describe(report['prior']['eval'], PRIOR_SUMMARY)}; "
            f"{report['likelihood']['bits_per_dim']:.3f} bits/dim; samples in {out / 'samples' / 'grid.png'}")


COMMANDS = {"train-vqvae": _train_vqvae, "export": _export, "tune-decoder": _tune_decoder, "train-prior": _train_prior,
            "sample": _sample, "complete": _complete, "eval": _eval, "export-model": _export_model, "run": _run}


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
    finished = False
    try:
        COMMANDS[args.command](args)
        finished = True
    except VQGenError as err:
        rank = _rank_to_say(err)
        if rank is not None:
            print(f"vqgen {args.command}{f' (rank {rank})' if rank else ''}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"vqgen {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        leave_distributed(finished)
    return 0
