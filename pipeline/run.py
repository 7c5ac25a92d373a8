"""`vqgen run`: train the VQ-VAE, export latents, train the prior, evaluate, sample, report.

A run is a loop over its stages (`STAGES`). Each stage is a small record: its name (its key in
RUN/timings.json), `done` (whether the file it writes last is there: docs/formats.md names each
stage's marker) and `run`. A stage whose output is complete is skipped, one that was interrupted
resumes, so running the same command again after an interruption finishes the job without redoing
any of it. Under torchrun every rank runs every stage, but for those marked `main_only`, which rank
0 runs alone while the others wait.

With TensorBoard, RUN/tensorboard holds one sub-run per stage that runs: vqvae/, decoder/ (when the run
tunes it), prior/, judge/, eval/ and samples/.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image

from vqgen.data.images import BatchedImages, Mirrored
from vqgen.data.latents import MANIFEST, read_manifest
from vqgen.engine.checkpoint import finished, saved_step, weights_path
from vqgen.engine.distributed import Dist, barrier, on_main, process_device
from vqgen.engine.files import read_json, write_json
from vqgen.engine.locks import directory_lock
from vqgen.engine.tensorboard import TENSORBOARD_DIR, open_sink, require_tensorboard, sub_run
from vqgen.engine.train_config import TrainConfig
from vqgen.pipeline.budget import BUDGET_FILE, plan_prior, prior_budget, share_seconds, steps_taken
from vqgen.pipeline.evaluation.evaluate import evaluate_run
from vqgen.pipeline.evaluation.held_out import check_evaluable
from vqgen.pipeline.evaluation.judge import Judge, train_judge
from vqgen.pipeline.evaluation.likelihood import bits_per_dim
from vqgen.pipeline.evaluation.search import EvalOptions
from vqgen.pipeline.generate import DECODER_FOLDER, SAMPLING_FILE, Generator, run_vqvae, save_samples
from vqgen.pipeline.report import write_report
from vqgen.pipeline.spec import RunSpec, claim_run_dir
from vqgen.stage1_vqvae.decoder_tuning import tune_decoder
from vqgen.stage1_vqvae.export import export_latents, file_sha256
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import SamplingOptions
from vqgen.stage2_prior.train import train_prior

SAMPLE_GRID = Path("samples") / "grid.png"  # written last by the sample stage


class Timings:
    """Wall seconds per stage, accumulated across interrupted and resumed invocations (written by rank 0;
    nowhere when `path` is None)."""

    def __init__(self, path: Path | None, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled and path is not None
        self.seconds: dict[str, float] = read_json(path) if path is not None and path.exists() else {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self.enabled:
            write_json(self.path, self.seconds)


@dataclass
class Run:
    """What the stages of one invocation share: the spec, the directory, this process's place, the data,
    and what earlier stages hand on (the judge, the export and likelihood figures for the report)."""

    spec: RunSpec
    out: Path
    ctx: Dist
    device: torch.device
    train_images: BatchedImages
    test_images: BatchedImages
    progress: bool = True
    evaluation: EvalOptions | None = None
    boards: Path | None = None
    exports: dict[str, dict[str, float]] = field(default_factory=lambda: {"train": {}, "test": {}})
    judge: tuple[Judge, float] | None = None
    likelihood: dict[str, Any] = field(default_factory=dict)
    timings: Timings = field(default_factory=lambda: Timings(None))

    def __post_init__(self) -> None:
        """What both stages learn from: the train split, and its mirror images with `flip`."""
        self.trained = Mirrored(self.train_images) if self.spec.flip else self.train_images

    def vqvae_train(self) -> TrainConfig:
        """The VQ-VAE's options as this run trains them: under --minutes, its share of them as a time budget."""
        return self._in_minutes(self.spec.vqvae_train, self.spec.vqvae_share)

    def decoder_train(self) -> TrainConfig | None:
        """The decoder tuning's options as this run trains them (None: not tuned): under --minutes, its share of them."""
        return self.spec.decoder_train and self._in_minutes(self.spec.decoder_train, self.spec.decoder_share)

    def _in_minutes(self, train: TrainConfig, share: float) -> TrainConfig:
        """`train` with, under --minutes, `share` of them as its time budget."""
        if self.spec.minutes is None:
            return train
        return replace(train, max_seconds=share_seconds(self.spec.minutes, share))

    def prior_train(self) -> TrainConfig:
        """The prior's options as this run trains them: under --minutes, what is left of them (pipeline/budget.py)."""
        if self.spec.minutes is None:
            return self.spec.prior_train
        return replace(self.spec.prior_train, max_seconds=prior_budget(self)["prior_s"])


@dataclass(frozen=True)
class Stage:
    name: str
    done: Callable[[Run], bool]
    run: Callable[[Run], None]
    main_only: bool = False


def _export_current(target: Path, vqvae_sha: str) -> bool:
    return (target / MANIFEST).exists() and read_manifest(target).vqvae.get("sha256") == vqvae_sha


def _exported(split: str) -> Callable[[Run], bool]:
    """An export is current when its manifest names the sha of the VQ-VAE's weights (an older run's
    model.pt, until its VQ-VAE is saved again): latents of an older VQ-VAE are exported again."""
    return lambda run: _export_current(run.out / "latents" / split, file_sha256(weights_path(run.out / "vqvae")))


def _export(split: str) -> Callable[[Run], None]:
    def export(run: Run) -> None:
        target = run.out / "latents" / split
        if run.ctx.is_main:
            shutil.rmtree(target, ignore_errors=True)
        barrier(run.ctx)
        model = VQVAE.from_pretrained(run.out / "vqvae").to(run.device)
        data = run.trained if split == "train" else run.test_images
        start = time.perf_counter()
        export_latents(model, data, target, vqvae_dir=run.out / "vqvae", ctx=run.ctx, progress=run.progress,
                       num_workers=run.spec.vqvae_train.num_workers)  # at the precision the VQ-VAE trained with
        seconds = time.perf_counter() - start
        run.exports[split] = {"images": len(data), "seconds": seconds, "images_per_s": len(data) / max(seconds, 1e-9)}
    return export


def _train_vqvae(run: Run) -> None:
    train_vqvae(run.spec.vqvae, run.vqvae_train(), run.trained, run.test_images, run.out / "vqvae",
                eval_images=run.spec.eval_images, progress=run.progress)


def _decoder_tuned(run: Run) -> bool:
    train = run.decoder_train()
    return train is None or finished(run.out / DECODER_FOLDER, train)


def _tune_decoder(run: Run) -> None:
    """The decoder tuned on the train split's exported codes, into RUN/decoder, which sampling then decodes with."""
    tune_decoder(run.out / "vqvae", run.out / "latents" / "train", run.trained, run.test_images,
                 run.decoder_train(), run.out / DECODER_FOLDER, eval_images=run.spec.eval_images,
                 progress=run.progress)


def _train_prior(run: Run) -> None:
    train_prior(run.spec.prior, run.prior_train(), run.out / "latents" / "train", run.out / "latents" / "test",
                run.out / "prior", eval_grids=run.spec.eval_images, progress=run.progress)


def _evaluated(run: Run) -> bool:
    """Eval writes the prior's sampling.json last; without eval there is nothing to do."""
    return run.evaluation is None or (run.out / "prior" / SAMPLING_FILE).exists()


def _train_judge(run: Run) -> None:
    """Every torchrun rank trains the judge (once: a trained judge is read back); eval then scores with it."""
    run.judge = train_judge(run.train_images, run.test_images, run.out / "judge", run.spec.prior_train.device,
                            run.progress, sub_run(run.boards, "judge"), run.spec.vqvae_train.num_workers)


def _evaluate(run: Run) -> None:
    """`vqgen eval` with the run's seed and device; the sample grid, drawn at the old defaults, goes."""
    options = replace(run.evaluation, device=run.spec.prior_train.device, seed=run.spec.prior_train.seed)
    evaluate_run(run.out, options, run.progress, data=(run.train_images, run.test_images), tensorboard=run.boards,
                 judge=run.judge)
    on_main(run.ctx, lambda: (run.out / SAMPLE_GRID).unlink(missing_ok=True))


def _sample(run: Run) -> None:
    sample_run(run.out, run.spec, run.progress, sub_run(run.boards, "samples"))


def _likelihood(run: Run) -> None:
    device, spec = run.device, run.spec
    run.likelihood = bits_per_dim(VQVAE.from_pretrained(run_vqvae(run.out)).to(device),
                                  GatedPixelCNN.from_pretrained(run.out / "prior").to(device), run.train_images,
                                  run.test_images, spec.eval_images, spec.prior_train.seed)


STAGES = (  # the judge before the prior: a run sized in minutes plans the prior's time by the judge's
    Stage("vqvae", lambda run: finished(run.out / "vqvae", run.vqvae_train()), _train_vqvae),
    Stage("export_train", _exported("train"), _export("train")),
    Stage("export_test", _exported("test"), _export("test")),
    Stage("decoder", _decoder_tuned, _tune_decoder),
    Stage("judge", _evaluated, _train_judge),
    Stage("budget", lambda run: run.spec.minutes is None or (run.out / BUDGET_FILE).exists(), plan_prior,
          main_only=True),
    Stage("prior", lambda run: finished(run.out / "prior", run.prior_train()), _train_prior),
    Stage("eval", _evaluated, _evaluate),
    Stage("sample", lambda run: (run.out / SAMPLE_GRID).exists(), _sample, main_only=True),
    Stage("likelihood", lambda run: False, _likelihood, main_only=True),  # the report's figure, each invocation
)


def with_tensorboard(spec: RunSpec, root: Path | None) -> RunSpec:
    """`spec` whose training stages write TensorBoard events into root/vqvae, root/prior (and root/decoder);
    unchanged when `root` is None. Fails at once when the tensorboard package is missing."""
    if root is None:
        return spec
    require_tensorboard()
    return replace(spec, vqvae_train=replace(spec.vqvae_train, tensorboard=sub_run(root, "vqvae")),
                   prior_train=replace(spec.prior_train, tensorboard=sub_run(root, "prior")),
                   decoder_train=spec.decoder_train and replace(spec.decoder_train,
                                                                tensorboard=sub_run(root, DECODER_FOLDER)))


def run(spec: RunSpec, out: str | Path, download: bool = False, progress: bool = True,
        evaluation: EvalOptions | None = EvalOptions(), tensorboard: bool = False,
        stream: bool | None = None) -> dict[str, Any]:
    """The whole pipeline into `out`, holding its lock; returns the report (on rank 0 under torchrun, {}
    on the other ranks). `evaluation=None` skips `vqgen eval`; `tensorboard` writes event files under
    out/tensorboard, a sub-run per stage; `stream` decodes a folder per batch (True), all into memory
    first (False), or by its size (None)."""
    out = Path(out)
    boards = out / TENSORBOARD_DIR if tensorboard else None
    spec = with_tensorboard(spec, boards)  # fails at once without the package
    ctx, device = process_device(spec.vqvae_train.device)
    with directory_lock(out, ctx):
        started = time.perf_counter()
        state = _start(spec, out, ctx, device, download, progress, evaluation, boards, stream)
        state.timings.add("setup", time.perf_counter() - started)  # data opened, spec checked: part of the minutes
        for stage in STAGES:
            _run_stage(stage, state)
        budget = read_json(out / BUDGET_FILE) if (out / BUDGET_FILE).exists() else None
        report = on_main(ctx, lambda: write_report(out, state.spec.to_json(), state.timings.seconds, state.exports,
                                                   state.likelihood, steps_taken(out), budget))
    return report if ctx.is_main else {}


def _run_stage(stage: Stage, state: Run) -> None:
    """Run `stage` unless its marker is there; a main_only stage's check and work on rank 0 alone (what it
    hands on, such as the likelihood, only rank 0's report reads)."""
    def work() -> None:
        if not stage.done(state):
            with state.timings.stage(stage.name):
                stage.run(state)
    if stage.main_only:
        on_main(state.ctx, work)
    else:
        work()


def _start(spec: RunSpec, out: Path, ctx: Dist, device: torch.device, download: bool, progress: bool,
           evaluation: EvalOptions | None, boards: Path | None, stream: bool | None) -> Run:
    """The data, opened once for every stage; everything that can be wrong with the request, refused before
    any training; the run directory claimed for this spec."""
    train_images, test_images = (spec.open_split(split, download, stream, index_dir=out) for split in ("train", "test"))
    info = train_images.info
    spec = replace(spec, vqvae=replace(spec.vqvae, in_channels=info.channels, image_height=info.height,
                                       image_width=info.width))
    _check_grid_options(spec, info.num_classes or 0)
    if evaluation is not None:
        check_evaluable(test_images, evaluation.n_per_class)
    on_main(ctx, lambda: claim_run_dir(out, spec))
    return Run(spec, out, ctx, device, train_images, test_images, progress, evaluation, boards,
               timings=Timings(out / "timings.json", enabled=ctx.is_main))


def _check_grid_options(spec: RunSpec, classes: int) -> None:
    """The sample grid's options, checked against the prior this data will train before any training."""
    prior = replace(spec.prior, num_classes=classes, label_dropout=spec.prior.label_dropout if classes else 0.0)
    SamplingOptions(**spec.sampling).check(prior)


def sample_run(out: Path, spec: RunSpec, progress: bool, tensorboard: str | None = None) -> None:
    """The run's sample grid, a row per class when the data is labelled, at the prior's sampling defaults
    (those `vqgen eval` chose) with the options the run fixed replaced; shown in TensorBoard as samples/grid."""
    samples_dir = out / "samples"
    generator = Generator.from_pretrained(run_vqvae(out), out / "prior", device=spec.prior_train.device)
    seed = spec.prior_train.seed
    if generator.num_classes:
        per_class = max(1, spec.samples // generator.num_classes)
        labels = generator.spread_labels(per_class * generator.num_classes)
        samples = generator.sample(len(labels), labels, seed=seed, progress=progress, **spec.sampling)
        save_samples(samples, samples_dir, nrow=per_class)
    else:
        samples = generator.sample(spec.samples, seed=seed, progress=progress, **spec.sampling)
        save_samples(samples, samples_dir, nrow=10)
    step = saved_step(out / "prior")
    with open_sink(tensorboard, "samples", step) as sink, Image.open(samples_dir / "grid.png") as picture:
        sink.image("grid", picture, step)
