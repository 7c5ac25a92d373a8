"""`vqgen run`: train the VQ-VAE, export latents, train the prior, evaluate, sample, report.

Each stage is skipped when its output is complete and resumed when it is not, so running the
same command again after an interruption finishes the job without redoing any of it.

With TensorBoard, RUN/tensorboard holds one sub-run per stage that runs: vqvae/, prior/, judge/,
eval/ and samples/.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image

from vqgen.data.images import BatchedImages, Mirrored
from vqgen.data.latents import MANIFEST, read_manifest
from vqgen.engine.checkpoint import weights_path
from vqgen.engine.distributed import Dist, barrier, on_main, process_device
from vqgen.engine.locks import directory_lock
from vqgen.engine.files import read_json, write_json
from vqgen.engine.tensorboard import TENSORBOARD_DIR, open_sink, require_tensorboard, sub_run
from vqgen.engine.trainer import saved_step
from vqgen.pipeline.evaluation.evaluate import EvalOptions, check_evaluable, evaluate_run
from vqgen.pipeline.generate import SAMPLING_FILE, Generator, save_samples
from vqgen.pipeline.evaluation.judge import train_judge
from vqgen.pipeline.evaluation.likelihood import bits_per_dim
from vqgen.pipeline.report import write_report
from vqgen.pipeline.spec import RunSpec, claim_run_dir
from vqgen.stage1_vqvae.export import export_latents, file_sha256
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import SamplingOptions
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.train import train_prior

class Timings:
    """Wall seconds per stage, accumulated across interrupted and resumed invocations (written by rank 0)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        self.seconds: dict[str, float] = read_json(path) if path.exists() else {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if self.enabled:
                write_json(self.path, self.seconds)


def _export_current(target: Path, vqvae_sha: str) -> bool:
    return (target / MANIFEST).exists() and read_manifest(target).vqvae.get("sha256") == vqvae_sha


def export_split(vqvae_dir: Path, data: BatchedImages, target: Path, device: torch.device, ctx: Dist,
                 progress: bool, num_workers: int = 0) -> dict[str, float]:
    """Export one split unless a current export is there; re-export latents of an older VQ-VAE. The encoder
    runs at the precision the VQ-VAE trained with."""
    sha = file_sha256(weights_path(vqvae_dir))  # an older run's model.pt, until its VQ-VAE is saved again
    if _export_current(target, sha):
        return {}
    if ctx.is_main:
        shutil.rmtree(target, ignore_errors=True)
    barrier(ctx)
    model = VQVAE.from_pretrained(vqvae_dir).to(device)
    start = time.perf_counter()
    export_latents(model, data, target, vqvae_dir=vqvae_dir, ctx=ctx, progress=progress, num_workers=num_workers)
    seconds = time.perf_counter() - start
    return {"images": len(data), "seconds": seconds, "images_per_s": len(data) / max(seconds, 1e-9)}


def with_tensorboard(spec: RunSpec, root: Path | None) -> RunSpec:
    """`spec` whose two training stages write TensorBoard events into root/vqvae and root/prior;
    unchanged when `root` is None. Fails at once when the tensorboard package is missing."""
    if root is None:
        return spec
    require_tensorboard()
    return replace(spec, vqvae_train=replace(spec.vqvae_train, tensorboard=sub_run(root, "vqvae")),
                   prior_train=replace(spec.prior_train, tensorboard=sub_run(root, "prior")))


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
        return _run(spec, out, ctx, device, download, progress, evaluation, boards, stream)


def _run(spec: RunSpec, out: Path, ctx: Dist, device: torch.device, download: bool, progress: bool,
         evaluation: EvalOptions | None, boards: Path | None, stream: bool | None) -> dict[str, Any]:
    train_images, test_images = (spec.open_split(split, download, stream, index_dir=out) for split in ("train", "test"))
    info = train_images.info
    spec = replace(spec, vqvae=replace(spec.vqvae, in_channels=info.channels, image_height=info.height,
                                       image_width=info.width))
    _check_grid_options(spec, info.num_classes or 0)
    if evaluation is not None:
        check_evaluable(test_images, evaluation.n_per_class)
    trained = Mirrored(train_images) if spec.flip else train_images  # what both stages learn from
    on_main(ctx, lambda: claim_run_dir(out, spec))
    timings = Timings(out / "timings.json", enabled=ctx.is_main)
    if saved_step(out / "vqvae") < spec.vqvae_train.steps:
        with timings.stage("vqvae"):
            train_vqvae(spec.vqvae, spec.vqvae_train, trained, test_images, out / "vqvae",
                        eval_images=spec.eval_images, progress=progress)
    exports = {}
    for split, data in (("train", trained), ("test", test_images)):
        with timings.stage(f"export_{split}"):
            exports[split] = export_split(out / "vqvae", data, out / "latents" / split, device, ctx, progress,
                                          spec.vqvae_train.num_workers)
    if saved_step(out / "prior") < spec.prior_train.steps:
        with timings.stage("prior"):
            train_prior(spec.prior, spec.prior_train, out / "latents" / "train", out / "latents" / "test",
                        out / "prior", eval_grids=spec.eval_images, progress=progress)
    if evaluation is not None and not (out / "prior" / SAMPLING_FILE).exists():  # eval writes it last
        with timings.stage("judge"):  # every torchrun rank trains it (once); eval reads it back
            train_judge(train_images, test_images, out / "judge", spec.prior_train.device, progress,
                        sub_run(boards, "judge"), spec.vqvae_train.num_workers)
        with timings.stage("eval"):  # rank 0 scores
            evaluate_run(out, replace(evaluation, device=spec.prior_train.device, seed=spec.prior_train.seed),
                         progress, data=(train_images, test_images), tensorboard=boards)
        on_main(ctx, lambda: (out / "samples" / "grid.png").unlink(missing_ok=True))  # drawn at the old defaults

    def finish() -> dict[str, Any]:
        with timings.stage("sample"):
            sample_run(out, spec, progress, sub_run(boards, "samples"))
        with timings.stage("likelihood"):
            likelihood = bits_per_dim(VQVAE.from_pretrained(out / "vqvae").to(device),
                                      GatedPixelCNN.from_pretrained(out / "prior").to(device), train_images,
                                      test_images, spec.eval_images, spec.prior_train.seed)
        return write_report(out, spec.to_json(), timings.seconds, exports, likelihood)

    report = on_main(ctx, finish)
    return report if ctx.is_main else {}


def _check_grid_options(spec: RunSpec, classes: int) -> None:
    """The sample grid's options, checked against the prior this data will train before any training."""
    prior = replace(spec.prior, num_classes=classes, label_dropout=spec.prior.label_dropout if classes else 0.0)
    SamplingOptions(**spec.sampling).check(prior)


def sample_run(out: Path, spec: RunSpec, progress: bool, tensorboard: str | None = None) -> None:
    """The run's sample grid, a row per class when the data is labelled, at the prior's sampling defaults
    (those `vqgen eval` chose) with the options the run fixed replaced; shown in TensorBoard as samples/grid."""
    samples_dir = out / "samples"
    if (samples_dir / "grid.png").exists():  # written last
        return
    generator = Generator.from_pretrained(out / "vqvae", out / "prior", device=spec.prior_train.device)
    seed = spec.prior_train.seed
    if generator.num_classes:
        per_class = max(1, spec.samples // generator.num_classes)
        labels = generator.spread_labels(per_class * generator.num_classes)
        samples = generator.sample(len(labels), labels, seed=seed, progress=progress, **spec.sampling)
        save_samples(samples, samples_dir, nrow=per_class)
    else:
        samples = generator.sample(spec.samples, seed=seed, progress=progress, **spec.sampling)
        save_samples(samples, samples_dir, nrow=10)
    step = spec.prior_train.steps
    with open_sink(tensorboard, "samples", step) as sink, Image.open(samples_dir / "grid.png") as picture:
        sink.image("grid", picture, step)
