"""`vqgen eval`: how close a run's samples come to real held-out images, beside two floors.

Reconstruction PSNR and bits per code do not say whether samples look like the data, so a judge
(pipeline/evaluation/judge.py) trained on the run's own train split embeds sets of images, each
scored against real held-out images it does not contain:
- real: n real held-out images, the floor no model can beat at this n;
- reconstructions: the same n real images through the VQ-VAE, the floor of this decoder;
- the selection draw: class-conditional samples at the sampling settings asked for (temperature,
  top-k, top-p, guidance and its schedule), scored against a selection reference of 2n real images.
  The settings are searched a coordinate at a time, then by successive halving (Jamieson & Talwalkar
  2016, arXiv 1502.07943; `_select`): the guidance ladder (every scale and schedule) is drawn at n/4
  at the temperature nearest 1 with the first truncation, then every temperature and truncation at
  the ladder's best guidance; the best third of all of them is topped up to n/2, the best third of
  those to n, and the lowest Frechet distance at n wins. On CIFAR-10 the best guidance was the same
  at every temperature and truncation (README, "Color images"), so of the default 81-setting grid the
  search scores 17 at n/4, and costs what 7 full draws cost;
- the chosen setting, drawn afresh (another seed) and scored against a second reference of 2n other
  real images, beside the floors.
The minimum over many noisy scores is biased low (the seed-to-seed spread of a Frechet distance at
n = 500 is about 0.2x the floor), so the chosen setting is reported on samples and a reference that
played no part in choosing it. The real images may sit in the selection reference: they are only
scored against the second reference.

n = n_per_class x classes, the held-out images drawn at random within each class by the seed
(data/rows.py; an unlabelled dataset is shuffled into 10 groups); the default n_per_class keeps
n >= MIN_IMAGES, as 128-dimensional covariances from fewer images are biased. For a
class-conditional prior eval also reports the classification accuracy score
(pipeline/evaluation/classification_score.py) of the chosen setting, which guidance cannot inflate;
its classifier trains on the fresh draw and more samples of that setting.

The chosen setting is saved beside the prior as its sampling defaults (pipeline/generate.py). With
TensorBoard, every set's scores become scalars eval/SET/NAME and each setting's grid the image
eval/SET/grid, at the prior's last step.
"""

from __future__ import annotations

import math
import time
import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from tqdm import tqdm

from vqgen.data.images import BatchedImages
from vqgen.data.rows import shuffled_classes
from vqgen.engine.distributed import SharedError, on_main, process_device
from vqgen.engine.files import write_json
from vqgen.engine.grids import save_grid
from vqgen.engine.locks import directory_lock
from vqgen.engine.tensorboard import open_sink, sub_run
from vqgen.pipeline.evaluation.classification_score import classification_accuracy_score
from vqgen.pipeline.evaluation.fidelity import NEIGHBOURS, fidelity
from vqgen.pipeline.generate import Generator, save_sampling
from vqgen.pipeline.evaluation.judge import Judge, train_judge
from vqgen.pipeline.spec import load_spec, require_run_dir
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.engine.configs import config_to_dict, option, require
from vqgen.stage2_prior.sampling import GUIDANCE_SCHEDULES, GuidanceSchedule, SamplingOptions

EVAL_FILE = "eval.json"
MIN_GROUPS = 10
MIN_IMAGES = 500  # images per set the default n_per_class reaches when the test split holds them
N_PER_CLASS = 50
GRID_PER_CLASS = 10
TOP_K_SHARE = 8        # default truncations: all codes, top-k K/8, or top-p TOP_P
TOP_P = 0.9
GUIDANCE = (1.0, 1.5, 2.0, 3.0, 5.0)  # default scales for a prior with a null class (README, "Color images")
SETTING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingOptions))  # of a scored setting's record
SHARES = (4, 2, 1)  # successive halving: the rounds draw n/4, n/2 and n samples of each setting left
KEEP = 3            # each screening round keeps the best third
TOP_UP_SEED = 2     # round r >= 1 tops its settings up with samples of seed + TOP_UP_SEED + r
SCREEN_IMAGES = 100  # the fewest samples a screening round judges a setting by


@dataclass(frozen=True)
class EvalOptions:
    """What eval searches: temperatures, truncations and guidance (a scale, its schedule and interval).

    Truncations: with neither `top_ks` nor `top_ps` given, all codes, top-k K/8 (as a share of K the same
    grid suits any codebook) and top-p 0.9, three ways of cutting off the rare codes that make broken
    strokes at little cost in diversity; with either given, every top-k with every top-p (None: no
    truncation). `guidances=None` means GUIDANCE for a prior trained with a null class, else 1; every
    scale but 1 is tried at every schedule and interval. `n_per_class=None` means 50, or more where
    needed to reach MIN_IMAGES per set."""

    n_per_class: int | None = option(None, "held-out images and samples per class (none: 50, or more to reach "
                                           f"{MIN_IMAGES} in all)")
    temperatures: tuple[float, ...] = option((0.9, 1.0, 1.1), "sampling temperatures to score",
                                              scores="temperature")
    top_ks: tuple[int | None, ...] | None = option(None, "top-k values to score, none for all codes (none given: all "
                                                         "codes, top-k K/8 or top-p 0.9; given top-k and top-p "
                                                         "values are scored in every combination)",
                                                  scores="top_k")
    top_ps: tuple[float | None, ...] | None = option(None, "top-p (nucleus) values to score, none for all codes",
                                                     scores="top_p")
    guidances: tuple[float, ...] | None = option(None, "guidance scales to score (none: "
                                                       f"{', '.join(f'{g:g}' for g in GUIDANCE)} for a prior trained "
                                                       "with label dropout, else 1); searched first, at the "
                                                       "temperature nearest 1 and the first truncation", scores="guidance")
    guidance_schedules: tuple[GuidanceSchedule, ...] = option(GUIDANCE_SCHEDULES, "guidance schedules to score with "
                                                              "every scale but 1", scores="guidance_schedule")
    guidance_intervals: tuple[float, ...] = option((1.0,), "shares of the positions guided, from the first, to "
                                                           "score with every scale but 1", scores="guidance_interval")
    seed: int = option(0, "seed of the held-out rows, of the samples and of the classification score's rows")
    device: str = option("auto", "auto (GPU when present), cpu or cuda[:N]")

    def __post_init__(self) -> None:
        """Every value searched is checked as the sampling option it is, so an error names that option."""
        require(self.n_per_class is None or self.n_per_class >= 1,
                f"n_per_class={self.n_per_class} is not allowed; must be >= 1")
        for name, values in self.searched().items():
            for value in values:
                SamplingOptions(**{name: value})

    def searched(self) -> dict[str, tuple[Any, ...]]:
        """The sampling option each search field scores (EvalOptions.temperatures -> temperature), with its values."""
        return {f.metadata["scores"]: getattr(self, f.name) or () for f in dataclasses.fields(self)
                if f.metadata.get("scores")}

    def truncations(self, codebook_size: int) -> list[tuple[int | None, float | None]]:
        if self.top_ks is None and self.top_ps is None:
            return [(None, None), (max(1, codebook_size // TOP_K_SHARE), None), (None, TOP_P)]
        return [(k, p) for k in dict.fromkeys(self.top_ks or (None,)) for p in dict.fromkeys(self.top_ps or (None,))]

    def guidings(self, config: PriorConfig) -> list[tuple[float, str, float]]:
        """(scale, schedule, interval) of every guidance asked for; a scale of 0 or 1 is the same at any schedule."""
        guidances = self.guidances or (GUIDANCE if config.null_label is not None else (1.0,))
        return list(dict.fromkeys((g, "constant", 1.0) if g in (0, 1) else (g, schedule, interval)
                                  for g in guidances for schedule in self.guidance_schedules
                                  for interval in self.guidance_intervals))

    def ladder(self, config: PriorConfig) -> list[SamplingOptions]:
        """The search's first coordinate: every guidance at the temperature nearest 1 and the first truncation."""
        temperature = min(self.temperatures, key=lambda t: abs(math.log(t)))
        top_k, top_p = self.truncations(config.codebook_size)[0]
        return [SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance,
                                guidance_schedule=schedule, guidance_interval=interval)
                for guidance, schedule, interval in self.guidings(config)]

    def around(self, config: PriorConfig, guided: SamplingOptions) -> list[SamplingOptions]:
        """The second: every temperature with every truncation, at the guidance of `guided`."""
        return [replace(guided, temperature=t, top_k=top_k, top_p=top_p) for t in self.temperatures
                for top_k, top_p in self.truncations(config.codebook_size)]

    def check(self, config: PriorConfig) -> None:
        """Every combination the search may reach, checked against the prior (so a bad one stops eval before
        any work)."""
        for guided in self.ladder(config):
            for options in self.around(config, guided):
                options.check(config)


@dataclass(frozen=True)
class HeldOut:
    """Rows of the test split: `real` (n), the `selection` reference (2n) settings are chosen against,
    the `reference` (2n, disjoint from it) the chosen setting and the floors are scored against."""

    real: torch.Tensor
    selection: torch.Tensor
    reference: torch.Tensor
    labels: torch.Tensor | None
    per_group: int


def _groups(data: BatchedImages, seed: int) -> list[torch.Tensor]:
    """Test rows by class, each in an order drawn by `seed` (data/rows.py: files are often ordered, so
    the first rows of a class are not a sample of it); an unlabelled split is shuffled and cut into
    MIN_GROUPS groups."""
    classes = int(data.info.num_classes or 0) if data.labels is not None else None
    return shuffled_classes(data.labels, len(data), seed, MIN_GROUPS, classes)


def _per_group(sizes: list[int], n_per_class: int | None) -> int:
    """Held-out images per class (or group) of each set, for groups of these sizes. Every torchrun rank
    that asks gets the same answer, so a refusal is a SharedError: rank 0 says it for all of them."""
    wanted = n_per_class or max(N_PER_CLASS, math.ceil(MIN_IMAGES / len(sizes)))
    per_group = min([wanted] + [size // 4 for size in sizes])
    if per_group < 1 or per_group * len(sizes) <= NEIGHBOURS:
        raise SharedError(f"the test split is too small to evaluate: its smallest class (or group) has "
                          f"{min(sizes)} images, and eval needs 4 held-out images per sample and more than "
                          f"{NEIGHBOURS} samples in all; add test images, or run without eval (--no-eval)")
    return per_group


def check_evaluable(data: BatchedImages, n_per_class: int | None = None) -> None:
    """Refuse a test split too small to evaluate: `vqgen run` asks before any training and `vqgen eval`
    before its judge trains, so that they fail in seconds rather than after the training."""
    _per_group([len(rows) for rows in _groups(data, seed=0)], n_per_class)


def held_out(data: BatchedImages, n_per_class: int | None, seed: int) -> HeldOut:
    """From every group, rows drawn at random by `seed`: n_per_class real rows within 2 x n_per_class
    selection rows, and 2 x n_per_class reference rows; fewer per group when the smallest group is short."""
    groups = _groups(data, seed)
    per_group = _per_group([len(rows) for rows in groups], n_per_class)
    selection = torch.cat([rows[:2 * per_group] for rows in groups])
    real = torch.cat([rows[:per_group] for rows in groups])
    reference = torch.cat([rows[2 * per_group:4 * per_group] for rows in groups])
    labels = data.labels[real] if data.labels is not None else None
    return HeldOut(real, selection, reference, labels, per_group)


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


def setting_name(options: SamplingOptions) -> str:
    """`samples-t0.9-topkall-toppall-g1`: a grid's file name (with .png) and its TensorBoard set; a
    schedule other than constant and an interval below 1 add `-linear`, `-first0.5`."""
    schedule = "" if options.guidance_schedule == "constant" else f"-{options.guidance_schedule}"
    interval = "" if options.guidance_interval == 1 else f"-first{options.guidance_interval:g}"
    return (f"samples-t{options.temperature:g}-topk{options.top_k or 'all'}-topp{options.top_p or 'all'}"
            f"-g{options.guidance:g}{schedule}{interval}")


def _show(report: dict[str, Any], grids: Path, log_dir: str | None, step: int) -> None:
    """eval.json's figures as TensorBoard scalars eval/SET/NAME, the sample grids in `grids` as eval/SET/grid."""
    names = ["chosen"]
    with open_sink(log_dir, "eval", step) as sink:
        sink.record({"step": step, "split": "judge", **report["judge"]})
        for name in ("real", "reconstructions"):
            sink.record({"step": step, "split": name, **report[name]})
        last = {setting_name(SamplingOptions.from_record(s)): s for s in report["selection"]}
        for name, s in last.items():  # each setting at the largest draw it reached
            names.append(name)
            sink.record({"step": step, "split": name, **{k: v for k, v in s.items() if k not in SETTING_FIELDS}})
        sink.record({"step": step, "split": "chosen", **report["chosen"]})
        if report["classification_accuracy_score"]:
            sink.record({"step": step, "split": "classification_accuracy_score",
                         **report["classification_accuracy_score"]})
        for name in names:
            with Image.open(grids / f"{name}.png") as picture:
                sink.image(f"{name}/grid", picture, step)


class _Scorer:
    """Draws and scores sample sets of one run's held-out rows."""

    def __init__(self, generator: Generator, judge: Judge, rows: HeldOut, test: BatchedImages) -> None:
        self.generator, self.judge, self.rows = generator, judge, rows
        self.conditional = bool(generator.num_classes) and rows.labels is not None
        self.labels = rows.labels if self.conditional else None
        self.selection = judge.embed(_images(test, rows.selection))[0]
        self.reference = judge.embed(_images(test, rows.reference))[0]

    def labels_of(self, per_group: int) -> torch.Tensor | None:
        """The labels of `per_group` samples of each class, class by class (None: unconditional)."""
        if self.labels is None:
            return None
        return self.labels.unflatten(0, (-1, self.rows.per_group))[:, :per_group].flatten()

    def draw(self, options: SamplingOptions, seed: int, per_group: int | None = None) -> torch.Tensor:
        """`per_group` samples of each class (group; default: as many as real images), class by class."""
        per_group = per_group or self.rows.per_group
        count = per_group * (len(self.rows.real) // self.rows.per_group)
        return self.generator.sample(count, self.labels_of(per_group), options, seed=seed, progress=False).images

    def grid(self, images: torch.Tensor, path: Path) -> Image.Image:
        """Up to GRID_PER_CLASS images of each class (group), a row each."""
        per_group = len(images) * self.rows.per_group // len(self.rows.real)
        shown = images.unflatten(0, (-1, per_group))[:, :GRID_PER_CLASS].flatten(0, 1)
        return save_grid(path, shown, nrow=min(GRID_PER_CLASS, per_group))


def evaluate_run(out: str | Path, options: EvalOptions = EvalOptions(), progress: bool = True,
                 data: tuple[BatchedImages, BatchedImages] | None = None,
                 tensorboard: str | Path | None = None) -> dict[str, Any]:
    """Score the run in `out`, write out/eval.json and the chosen sampling defaults; return the figures.

    `data` is the run's (train, test) images when the caller has them open already; `tensorboard`, the
    run's TensorBoard directory, gets the judge's training and these figures as sub-runs judge/, eval/.
    Under torchrun every rank trains the judge, then rank 0 alone scores. It holds the run's lock and the
    prior directory's, whose sampling.json it writes, so a `train-prior --out RUN/prior` is refused.
    """
    out, start = Path(out), time.perf_counter()
    ctx, _ = process_device(options.device)
    require_run_dir(out)  # before the lock, which would create a directory where there is none
    with directory_lock(out, ctx):  # before any work: a run still being written is refused at once
        spec = load_spec(out)
        train, test = data or (spec.open_split("train", index_dir=out), spec.open_split("test", index_dir=out))
        # not from_pretrained: the prior's saved defaults must not stand in for the settings asked for
        generator = Generator(VQVAE.from_pretrained(out / "vqvae"), GatedPixelCNN.from_pretrained(out / "prior"),
                              device=options.device)
        options.check(generator.prior.config)  # before the judge trains
        check_evaluable(test, options.n_per_class)
        with directory_lock(out / "prior", ctx):  # sampling.json is written there
            judge, judge_accuracy = train_judge(train, test, out / "judge", options.device, progress,
                                                sub_run(tensorboard, "judge"))

            def score() -> dict[str, Any]:
                report = _score_run(out, options, generator, judge.to(generator.device), train, test,
                                    progress, {"test_accuracy": judge_accuracy, "task": judge.config.task})
                report["seconds"] = time.perf_counter() - start
                write_json(out / EVAL_FILE, report)
                save_sampling(SamplingOptions.from_record(report["chosen"]), out / "prior")  # last
                return report

            report = on_main(ctx, score)
    if ctx.is_main and tensorboard is not None:
        _show(report, out / "eval", sub_run(tensorboard, "eval"), spec.prior_train.steps)
    return report


def _score_run(out: Path, options: EvalOptions, generator: Generator, judge: Judge,
               train: BatchedImages, test: BatchedImages, progress: bool, judge_figures: dict[str, Any]) -> dict[str, Any]:
    rows = held_out(test, options.n_per_class, options.seed)
    scorer = _Scorer(generator, judge, rows, test)
    real = _images(test, rows.real)
    report: dict[str, Any] = {
        "judge": judge_figures, "n": len(rows.real), "n_per_class": rows.per_group, "reference": len(rows.reference),
        "real": _score(judge, real, scorer.reference, rows.labels),
        "reconstructions": _score(judge, _reconstruct(generator, real), scorer.reference, rows.labels),
        "selection": [],
    }
    config = generator.prior.config
    chosen, selection_frechet = _select(scorer, options.ladder(config), lambda best: options.around(config, best),
                                        judge, out, options.seed, progress, report["selection"])
    fresh = scorer.draw(chosen, options.seed + 1)
    report["chosen"] = {**config_to_dict(chosen), **_score(judge, fresh, scorer.reference, scorer.labels),
                        "selection_frechet": selection_frechet}
    scorer.grid(fresh, out / "eval" / "chosen.png")
    report["classification_accuracy_score"] = classification_accuracy_score(
        generator, chosen, train, test, out / "eval" / "cas", options.seed + 2, options.device,
        progress, drawn=(fresh, scorer.labels)) if scorer.conditional else None
    return report


def _select(scorer: _Scorer, ladder: list[SamplingOptions], around: Callable[[SamplingOptions], list[SamplingOptions]],
            judge: Judge, out: Path, seed: int, progress: bool, record: list[dict[str, Any]]) -> tuple[SamplingOptions, float]:
    """The setting of lowest Frechet distance against the selection reference (module docstring): the first
    round scores `ladder`, then `around` its best; each later round tops the settings left up to its size
    and scores them, and every round but the last keeps the best third. A screening round runs only while
    more than KEEP settings are left and it scores each by at least SCREEN_IMAGES samples; where none
    can, the first round is at the full size. Every score is appended to `record`; returns the winner and
    its Frechet distance at the full size."""
    per_group, groups = scorer.rows.per_group, len(scorer.rows.real) // scorer.rows.per_group
    drawn: dict[SamplingOptions, torch.Tensor] = {}  # (groups x per group, C, H, W), class by class
    frechet: dict[SamplingOptions, float] = {}
    bar = tqdm(desc="eval samples", unit="setting", disable=not progress)

    def score(settings: list[SamplingOptions], r: int, size: int) -> None:
        for setting in settings:
            have = len(drawn[setting]) // groups if setting in drawn else 0
            if have < size:
                extra = scorer.draw(setting, seed + TOP_UP_SEED + r if have else seed, size - have)
                drawn[setting] = extra if not have else torch.cat(
                    [drawn[setting].unflatten(0, (groups, -1)), extra.unflatten(0, (groups, -1))], 1).flatten(0, 1)
            images = drawn[setting].unflatten(0, (groups, -1))[:, :size].flatten(0, 1)
            scores = _score(judge, images, scorer.selection, scorer.labels_of(size))
            record.append({**config_to_dict(setting), **scores, "n": len(images)})
            frechet[setting] = scores["frechet"]
            scorer.grid(images, out / "eval" / f"{setting_name(setting)}.png")
            bar.update()

    def best_third(settings: list[SamplingOptions]) -> list[SamplingOptions]:
        return sorted(settings, key=frechet.__getitem__)[:math.ceil(len(settings) / KEEP)]

    shares = sorted({max(1, per_group // share) for share in SHARES})[:-1]
    sizes = [size for size in shares if size * groups >= SCREEN_IMAGES] + [per_group]
    score(ladder, 0, sizes[0])
    candidates = ladder + [s for s in around(min(ladder, key=frechet.__getitem__)) if s not in ladder]
    score(candidates[len(ladder):], 0, sizes[0])
    for r, size in enumerate(sizes[1:], 1):
        if len(candidates) > KEEP:
            candidates = best_third(candidates)
        elif size < per_group:
            continue
        score(candidates, r, size)
    bar.close()
    best = min(candidates, key=frechet.__getitem__)
    return best, frechet[best]


def describe_setting(record: dict[str, Any]) -> str:
    """The setting of an eval.json record in words (of a previous version, without schedules, as well)."""
    return SamplingOptions.from_record(record, EVAL_FILE).describe()


def summary(report: dict[str, Any]) -> list[str]:
    """Lines a person reads: every figure beside the real floor, with its unit."""
    def line(name: str, s: dict[str, Any], floor: float) -> str:
        accuracy = "" if s["class_accuracy"] is None else f"class accuracy {s['class_accuracy']:.1%}, "
        return (f"{name:<48} Frechet {s['frechet']:8.2f} ({s['frechet'] / floor:5.1f}x real), "
                f"{accuracy}precision {s['precision']:.2f}, recall {s['recall']:.2f}")

    floor = report["real"]["frechet"]
    lines = [f"judge: {report['judge']['task']}, test accuracy {report['judge']['test_accuracy']:.2%}; "
             f"n={report['n']} images per set, each scored against {report['reference']} real reference images"]
    if report["n"] < MIN_IMAGES:
        lines.append(f"warning: n={report['n']} is below {MIN_IMAGES}: the test split is small, so Frechet "
                     "distances are biased high and move more from seed to seed")
    lines += ["selection draw by successive halving (against its own reference; the lowest Frechet at the "
              "largest n is chosen):"]
    lines += [line(f"  n={s['n']:<4} {describe_setting(s)}", s, floor) for s in report["selection"]]
    chosen = report["chosen"]
    lines += ["fresh draw, against the other reference:", line("  real held-out (floor)", report["real"], floor),
              line("  reconstructions", report["reconstructions"], floor),
              line(f"  chosen {describe_setting(chosen)}", chosen, floor)]
    cas = report.get("classification_accuracy_score")
    if cas:
        lines.append(f"classification accuracy score: {cas['samples']:.1%} trained on {cas['images']} samples "
                     f"(on as many real images: {cas['real']:.1%})")
    lines.append(f"chosen: {describe_setting(chosen)} (saved as the prior's sampling defaults)")
    return lines
