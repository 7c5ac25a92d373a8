"""`vqgen eval`: how close a run's samples come to real held-out images, beside two floors.

Reconstruction PSNR and bits per code do not say whether samples look like the data, so a judge
(pipeline/judge.py) trained on the run's own train split embeds four sets of images, all scored
against one reference set of 2n real held-out images:
- real: n other real held-out images, the floor no model can beat at this n;
- reconstructions: the same n real images through the VQ-VAE, the floor of this decoder;
- samples: n class-conditional samples for each temperature / top-k asked for.
n = n_per_class x classes, the held-out images taken class by class (an unlabelled dataset counts
as 10 groups, so n stays large enough for 128-dimensional covariances).

The setting with the lowest sample Frechet distance is "chosen": saved beside the prior as its
sampling defaults (pipeline/generate.py, SamplingDefaults).

With TensorBoard, every set's scores become scalars eval/SET/NAME (SET: real, reconstructions,
samples-tT-topK, judge, chosen) and each setting's grid the image eval/samples-tT-topK/grid, all
at the prior's last step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from vqgen.data.images import BatchedImages
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import write_json
from vqgen.engine.grids import save_grid
from vqgen.engine.tensorboard import open_sink, sub_run
from vqgen.pipeline.fidelity import NEIGHBOURS, fidelity
from vqgen.pipeline.generate import Generator, SamplingDefaults
from vqgen.pipeline.judge import Judge, train_judge
from vqgen.pipeline.spec import load_spec
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import check_top_k

EVAL_FILE = "eval.json"
MIN_GROUPS = 10
GRID_PER_CLASS = 10


TOP_K_SHARES = (8, 4)  # default top-k: K/8 and K/4 of the prior's K codes, beside all of them


@dataclass(frozen=True)
class EvalOptions:
    """What eval scores: every temperature with every top-k (None: all codes). `top_ks=None` means all
    codes, K/8 and K/4: truncating the rarest codes removes most broken strokes at little cost in
    diversity, and as shares of K the same grid suits any codebook."""

    n_per_class: int = 50
    temperatures: tuple[float, ...] = (0.8, 0.9, 1.0, 1.1)
    top_ks: tuple[int | None, ...] | None = None
    seed: int = 0
    device: str = "auto"

    def settings(self, codebook_size: int) -> list[tuple[float, int | None]]:
        top_ks = self.top_ks or (None, *(max(1, codebook_size // share) for share in TOP_K_SHARES))
        for top_k in top_ks:
            check_top_k(top_k, codebook_size)
        return [(t, k) for t in self.temperatures for k in dict.fromkeys(top_ks)]


@dataclass(frozen=True)
class HeldOut:
    """Rows of the test split: `real` (n) and `reference` (2n), and the label of each real row."""

    real: torch.Tensor
    reference: torch.Tensor
    labels: torch.Tensor | None
    per_group: int


def _groups(data: BatchedImages, seed: int) -> list[torch.Tensor]:
    """Test rows by class; an unlabelled split is shuffled and cut into MIN_GROUPS groups."""
    if data.labels is not None:
        return [(data.labels == c).nonzero().flatten() for c in range(int(data.info.num_classes or 0))]
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return list(order.tensor_split(MIN_GROUPS))


def held_out(data: BatchedImages, n_per_class: int, seed: int) -> HeldOut:
    """n_per_class real and 2 x n_per_class reference rows from every group, fewer if a group is small."""
    groups = _groups(data, seed)
    per_group = min([n_per_class] + [len(rows) // 3 for rows in groups])
    if per_group < 1 or per_group * len(groups) <= NEIGHBOURS:
        smallest = min(len(rows) for rows in groups)
        raise VQGenError(f"the test split is too small to evaluate: its smallest class (or group) has {smallest} "
                         f"images, and eval needs 3 held-out images per sample and more than {NEIGHBOURS} "
                         "samples in all; add test images")
    real = torch.cat([rows[:per_group] for rows in groups])
    reference = torch.cat([rows[per_group:3 * per_group] for rows in groups])
    labels = data.labels[real] if data.labels is not None else None
    return HeldOut(real, reference, labels, per_group)


def _images(data: BatchedImages, rows: torch.Tensor) -> torch.Tensor:
    return data.__getitems__(rows.tolist())[0]  # (N, C, H, W)


def _score(judge: Judge, images: torch.Tensor, reference: torch.Tensor,
           labels: torch.Tensor | None) -> dict[str, float | None]:
    """Frechet distance, precision and recall against the reference features, and class accuracy."""
    features, predicted = judge.embed(images)
    score = fidelity(reference.numpy(), features.numpy())
    accuracy = None if labels is None else float((predicted == labels).double().mean())
    return {"frechet": score.frechet, "class_accuracy": accuracy, "precision": score.precision,
            "recall": score.recall}


@torch.no_grad()
def _reconstruct(generator: Generator, images: torch.Tensor) -> torch.Tensor:
    outputs = [generator.vqvae(chunk.to(generator.device)).reconstruction.float().clamp(0, 1).cpu()
               for chunk in images.split(256)]
    return torch.cat(outputs)


def _setting_name(temperature: float, top_k: int | None) -> str:
    """`samples-t0.9-topall`: the grid's file name (with .png) and its TensorBoard set."""
    return f"samples-t{temperature:g}-top{top_k or 'all'}"


def _show(report: dict[str, Any], grids: dict[str, Image.Image], log_dir: str | None, step: int) -> None:
    """eval.json's figures as TensorBoard scalars eval/SET/NAME, the sample grids as eval/SET/grid."""
    with open_sink(log_dir, "eval", step) as sink:
        sink.record({"step": step, "split": "judge", **report["judge"]})
        for name in ("real", "reconstructions"):
            sink.record({"step": step, "split": name, **report[name]})
        for s in report["samples"]:
            scores = {k: v for k, v in s.items() if k not in ("temperature", "top_k")}
            sink.record({"step": step, "split": _setting_name(s["temperature"], s["top_k"]), **scores})
        sink.record({"step": step, "split": "chosen", **report["chosen"]})
        for name, picture in grids.items():
            sink.image(f"{name}/grid", picture, step)


def evaluate_run(out: str | Path, options: EvalOptions = EvalOptions(), progress: bool = True,
                 data: tuple[BatchedImages, BatchedImages] | None = None,
                 tensorboard: str | Path | None = None) -> dict[str, Any]:
    """Score the run in `out`, write out/eval.json and the chosen sampling defaults; return the figures.

    `data` is the run's (train, test) images when the caller has them open already; `tensorboard`, the
    run's TensorBoard directory, gets the judge's training and these figures as sub-runs judge/, eval/.
    """
    out, start = Path(out), time.perf_counter()
    spec = load_spec(out)
    train, test = data or (spec.open_split("train", index_dir=out), spec.open_split("test", index_dir=out))
    # not from_pretrained: the prior's saved defaults must not stand in for the settings asked for
    generator = Generator(VQVAE.from_pretrained(out / "vqvae"), GatedPixelCNN.from_pretrained(out / "prior"),
                          device=options.device)
    settings = options.settings(generator.prior.config.codebook_size)  # checked before the judge trains
    judge, judge_accuracy = train_judge(train, test, out / "judge", options.device, progress,
                                        sub_run(tensorboard, "judge"))
    judge.to(generator.device)
    rows = held_out(test, options.n_per_class, options.seed)
    reference = judge.embed(_images(test, rows.reference))[0]
    real = _images(test, rows.real)
    conditional = generator.num_classes and rows.labels is not None
    sample_labels = rows.labels if conditional else None
    report: dict[str, Any] = {
        "judge": {"test_accuracy": judge_accuracy, "task": judge.config.task},
        "n": len(rows.real), "n_per_class": rows.per_group, "reference": len(rows.reference),
        "real": _score(judge, real, reference, rows.labels),
        "reconstructions": _score(judge, _reconstruct(generator, real), reference, rows.labels),
        "samples": [],
    }
    grids: dict[str, Image.Image] = {}
    for temperature, top_k in tqdm(settings, desc="eval samples", disable=not progress):
        samples = generator.sample(len(rows.real), labels=sample_labels, temperature=temperature, top_k=top_k,
                                   seed=options.seed, progress=False)
        scored = _score(judge, samples.images, reference, sample_labels)
        report["samples"].append({"temperature": temperature, "top_k": top_k, **scored})
        shown = samples.images.unflatten(0, (-1, rows.per_group))[:, :GRID_PER_CLASS].flatten(0, 1)
        name = _setting_name(temperature, top_k)
        grids[name] = save_grid(out / "eval" / f"{name}.png", shown, nrow=min(GRID_PER_CLASS, rows.per_group))
    best = min(report["samples"], key=lambda s: s["frechet"])
    report["chosen"] = {"temperature": best["temperature"], "top_k": best["top_k"]}
    report["seconds"] = time.perf_counter() - start
    write_json(out / EVAL_FILE, report)
    SamplingDefaults(best["temperature"], best["top_k"]).save(out / "prior")  # last: it marks eval as done
    _show(report, grids, sub_run(tensorboard, "eval"), spec.prior_train.steps)
    return report


def summary(report: dict[str, Any]) -> list[str]:
    """Lines a person reads: every figure beside the real floor, with its unit."""
    def line(name: str, s: dict[str, Any]) -> str:
        accuracy = "" if s["class_accuracy"] is None else f"class accuracy {s['class_accuracy']:.1%}, "
        return (f"{name:<28} Frechet {s['frechet']:8.2f} ({s['frechet'] / report['real']['frechet']:5.1f}x real), "
                f"{accuracy}precision {s['precision']:.2f}, recall {s['recall']:.2f}")

    lines = [f"judge: {report['judge']['task']}, test accuracy {report['judge']['test_accuracy']:.2%}; "
             f"n={report['n']} images per set vs {report['reference']} real reference images",
             line("real held-out (floor)", report["real"]), line("reconstructions", report["reconstructions"])]
    for s in report["samples"]:
        lines.append(line(f"samples T={s['temperature']:g} top-k={s['top_k'] or 'all'}", s))
    chosen = report["chosen"]
    lines.append(f"chosen: temperature {chosen['temperature']:g}, top-k {chosen['top_k'] or 'all'} "
                 "(saved as the prior's sampling defaults)")
    return lines
