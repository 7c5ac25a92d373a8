"""`vqgen run`: train the VQ-VAE, export latents, train the prior, sample, report.

Each stage is skipped when its output is complete and resumed when it is not, so running the
same command again after an interruption finishes the job without redoing any of it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from vqgen.engine.checkpoint import WEIGHTS_FILE
from vqgen.engine.configs import config_from_dict
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import read_json, write_json
from vqgen.data.images import ImageDataset, open_dataset
from vqgen.data.latents import MANIFEST, read_manifest
from vqgen.engine.distributed import Dist, barrier, init_distributed, local_device
from vqgen.engine.runtime import pick_device
from vqgen.engine.trainer import TrainConfig, saved_step
from vqgen.pipeline.generate import Generator, save_samples
from vqgen.pipeline.report import write_report
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.export import export_latents, file_sha256
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.train import train_prior

RUN_FILE = "run.json"
# Options that may differ when a run is resumed: they change how it runs, not what it computes.
RUNTIME_OPTIONS = ("device", "compile", "num_workers", "log_every", "eval_every", "checkpoint_every")


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides what a run computes; saved as RUN/run.json."""

    data: str
    data_root: str | None
    vqvae: VQVAEConfig
    vqvae_train: TrainConfig
    prior: PriorConfig
    prior_train: TrainConfig
    image_size: int | None = None
    eval_images: int = 2000
    samples: int = 100
    temperature: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str) -> "RunSpec":
        try:
            return cls(**{**raw, "vqvae": config_from_dict(VQVAEConfig, raw["vqvae"], source),
                          "vqvae_train": config_from_dict(TrainConfig, raw["vqvae_train"], source),
                          "prior": config_from_dict(PriorConfig, raw["prior"], source),
                          "prior_train": config_from_dict(TrainConfig, raw["prior_train"], source)})
        except (KeyError, TypeError) as err:
            raise VQGenError(f"{source} is not a vqgen run description ({err})") from None


def _binding(spec: RunSpec) -> dict[str, Any]:
    raw = spec.to_json()
    for train in ("vqvae_train", "prior_train"):
        raw[train] = {k: v for k, v in raw[train].items() if k not in RUNTIME_OPTIONS}
    return raw


def claim_run_dir(out: Path, spec: RunSpec) -> None:
    """Refuse to mix two different runs in one directory; remember this one's spec."""
    path = out / RUN_FILE
    if path.exists():
        saved = RunSpec.from_json(read_json(path, "run description"), str(path))
        old, new = _binding(saved), _binding(spec)
        if old != new:
            diff = [f"{k}" for k in new if old.get(k) != new[k]]
            raise VQGenError(f"{out} holds a run with other settings ({', '.join(diff)} differ); "
                             "re-run with the same options or choose a new --out")
    elif out.exists() and any(p.name in ("vqvae", "prior", "latents") for p in out.iterdir()):
        raise VQGenError(f"{out} holds files of an unknown run (no {RUN_FILE}); choose a new --out")
    write_json(path, spec.to_json())


class Timings:
    """Wall seconds per stage, accumulated across interrupted and resumed invocations."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = read_json(path) if path.exists() else {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            write_json(self.path, self.seconds)


def _export_current(target: Path, vqvae_sha: str) -> bool:
    return (target / MANIFEST).exists() and read_manifest(target).vqvae.get("sha256") == vqvae_sha


def export_split(vqvae_dir: Path, data: ImageDataset, target: Path, device: torch.device, ctx: Dist,
                 progress: bool) -> dict[str, float]:
    """Export one split unless a current export is there; re-export latents of an older VQ-VAE."""
    sha = file_sha256(vqvae_dir / WEIGHTS_FILE)
    if _export_current(target, sha):
        return {}
    if ctx.is_main:
        shutil.rmtree(target, ignore_errors=True)
    barrier(ctx)
    model = VQVAE.from_pretrained(vqvae_dir).to(device)
    start = time.perf_counter()
    export_latents(model, data, target, vqvae_dir=vqvae_dir, ctx=ctx, progress=progress)
    seconds = time.perf_counter() - start
    return {"images": len(data), "seconds": seconds, "images_per_s": len(data) / max(seconds, 1e-9)}


def run(spec: RunSpec, out: str | Path, download: bool = False, progress: bool = True) -> dict[str, Any]:
    """The whole pipeline into `out`; returns the report."""
    out = Path(out)
    train_images = open_dataset(spec.data, "train", spec.data_root, download, size=spec.image_size)
    test_images = open_dataset(spec.data, "test", spec.data_root, download, size=spec.image_size)
    info = train_images.info
    spec = replace(spec, vqvae=replace(spec.vqvae, in_channels=info.channels, image_height=info.height,
                                       image_width=info.width))
    claim_run_dir(out, spec)
    timings = Timings(out / "timings.json")
    if saved_step(out / "vqvae") < spec.vqvae_train.steps:
        with timings.stage("vqvae"):
            train_vqvae(spec.vqvae, spec.vqvae_train, train_images, test_images, out / "vqvae",
                        eval_images=spec.eval_images, progress=progress)
    ctx = init_distributed(pick_device(spec.vqvae_train.device))
    device = local_device(pick_device(spec.vqvae_train.device), ctx)
    exports = {}
    for split, data in (("train", train_images), ("test", test_images)):
        with timings.stage(f"export_{split}"):
            exports[split] = export_split(out / "vqvae", data, out / "latents" / split, device, ctx, progress)
    if saved_step(out / "prior") < spec.prior_train.steps:
        with timings.stage("prior"):
            train_prior(spec.prior, spec.prior_train, out / "latents" / "train", out / "latents" / "test",
                        out / "prior", eval_grids=spec.eval_images, progress=progress)
    report: dict[str, Any] = {}
    if ctx.is_main:
        with timings.stage("sample"):
            sample_run(out, spec, progress)
        report = write_report(out, spec.to_json(), timings.seconds, exports)
    barrier(ctx)
    return report


def sample_run(out: Path, spec: RunSpec, progress: bool) -> None:
    """The run's sample grid: a row per class when the data is labelled."""
    samples_dir = out / "samples"
    if (samples_dir / "grid.png").exists() and (samples_dir / "codes.npy").exists():
        return
    generator = Generator(VQVAE.from_pretrained(out / "vqvae"), GatedPixelCNN.from_pretrained(out / "prior"),
                          device=spec.prior_train.device)
    seed = spec.prior_train.seed
    if generator.num_classes:
        per_class = max(1, spec.samples // generator.num_classes)
        labels = generator.spread_labels(per_class * generator.num_classes)
        samples = generator.sample(len(labels), labels=labels, temperature=spec.temperature, seed=seed,
                                   progress=progress)
        save_samples(samples, samples_dir, nrow=per_class)
    else:
        samples = generator.sample(spec.samples, temperature=spec.temperature, seed=seed, progress=progress)
        save_samples(samples, samples_dir, nrow=10)
