"""A run sized in minutes (`vqgen run --minutes M`): the wall time is fixed, and the steps follow from it.

M is split over the stages as they come (docs/performance.md, "Runs sized in minutes"):
- the VQ-VAE trains for its preset's share of M (`RunPreset.vqvae_share`) on the trainer's clock, which
  counts training steps only and is saved with every checkpoint, so a resumed stage spends only what
  is left of its share; a tuned decoder likewise for its share (`RunPreset.decoder_share`);
- export and the judge take what they take: their work is fixed (every image; the judge's recipe);
- the prior, which the samples depend on most, gets the rest: M less what the run has spent, what the
  stages after it will take (`after_prior`) and its own held-out evaluations, which its clock leaves
  out (`_prior_rates`), all measured on this machine at its start. Its budget is written to
  RUN/budget.json then, so a resumed prior keeps the budget it started with.
A schedule that ends with its budget (TrainConfig.schedule "cooldown") decays where the stage's time
does. report.json records the steps each stage took (`steps`), and `vqgen run --steps-of RUN` trains
exactly those with no time budget, which repeats a run sized in minutes to the digit, on any machine
whose arithmetic is the same.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from vqgen.data.latents import LatentDataset
from vqgen.engine.checkpoint import STATE_FILE, saved_step
from vqgen.engine.distributed import on_main
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import load_tensors, read_json, write_json
from vqgen.engine.runtime import autocast, first_call, resolve_precision
from vqgen.pipeline.evaluation.classification_score import CAS_STEPS, cas_images
from vqgen.pipeline.evaluation.held_out import held_out
from vqgen.pipeline.evaluation.likelihood import bits_per_dim
from vqgen.pipeline.evaluation.selection import planned_samples, round_sizes
from vqgen.pipeline.generate import DECODER_FOLDER, Generator, run_vqvae
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.train import PriorTask, eval_rows, evaluate_prior, fit_to_latents
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import SamplingOptions

if TYPE_CHECKING:
    from vqgen.pipeline.run import Run

BUDGET_FILE = "budget.json"
MARGIN = 0.03          # of M held back for what the estimate leaves out (start-up, the trainer's setup
                       # and checkpoints, reading held-out images), set from the runs in docs/performance.md
PRIOR_AT_LEAST = 0.1   # of M: fewer minutes than leave the prior this are refused
PROBE_IMAGES = 64      # test images (grids) whose likelihood, judging (evaluation) is timed


def share_seconds(minutes: float, share: float) -> float:
    return 60 * minutes * share


def prior_budget(run: Run) -> dict[str, Any]:
    """RUN/budget.json, as `plan_prior` wrote it, on every torchrun rank."""
    return on_main(run.ctx, lambda: read_json(run.out / BUDGET_FILE, "run budget"))


def plan_prior(run: Run) -> None:
    """Fix the prior's training seconds in RUN/budget.json (rank 0, before the prior's first step), with what
    they were planned from; a resumed prior keeps them."""
    total, start = 60 * run.spec.minutes, time.perf_counter()
    torch.manual_seed(0)
    prior = GatedPixelCNN(fit_to_latents(run.spec.prior, LatentDataset(run.out / "latents" / "train")))
    after = after_prior(run, prior)
    evaluation, step = _prior_rates(run, prior)
    spent = sum(run.timings.seconds.values()) + time.perf_counter() - start  # the measurement is part of the minutes
    left = total * (1 - MARGIN) - spent - sum(after.values())
    seconds = left
    for _ in range(2):  # the held-out evaluations the steps of `seconds` reach, which its clock leaves out
        evaluations = (seconds / max(step, 1e-9) // run.spec.prior_train.eval_every + 1) * evaluation
        seconds = left - evaluations
    if seconds < PRIOR_AT_LEAST * total:
        raise VQGenError(f"--minutes {run.spec.minutes:g} leaves the prior {max(seconds, 0):.0f} s on this machine "
                         f"({spent:.0f} s spent, {sum(after.values()):.0f} s needed after it); give more minutes")
    write_json(run.out / BUDGET_FILE, {"minutes": run.spec.minutes, "spent_before_prior_s": spent,
                                       "after_prior_s": after, "prior_evaluations_s": evaluations,
                                       "prior_step_s": step, "prior_s": seconds})


def _prior_rates(run: Run, prior: GatedPixelCNN) -> tuple[float, float]:
    """(seconds of one held-out evaluation, of one training step) of a prior of the run's size, here: the
    evaluation timed on a slice of its rows, the step (after one untimed) on a batch of the train codes,
    compiled when the prior's training compiles (the compiled step is faster, so it reaches more evaluations;
    the trainer's own compilation then finds this one's in torch's cache)."""
    config = run.spec.prior_train
    train, held = (LatentDataset(run.out / "latents" / split) for split in ("train", "test"))
    device = next(prior.parameters()).device
    rows = eval_rows(held, run.spec.eval_images, config.seed)
    probe = rows[:PROBE_IMAGES]
    evaluation = _seconds(lambda: evaluate_prior(prior.eval(), held, device, probe)) * len(rows) / len(probe)
    task = PriorTask(prior.train(), train, held, len(probe), config.seed)
    batch = train.__getitems__(list(range(min(config.batch_size, len(train)))))
    optimizer = torch.optim.Adam(prior.parameters(), lr=config.lr)
    precision = resolve_precision(config.precision, device)

    def step(model: torch.nn.Module) -> None:
        with autocast(precision, device):
            loss = task.step(model, batch, device).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model, _ = first_call(prior, step, config.compile)
    return evaluation, _seconds(lambda: step(model))


def after_prior(run: Run, prior: GatedPixelCNN) -> dict[str, float]:
    """Seconds the stages after the prior will take here, each from a short measurement at the prior's start:
    a draw of sample grids, their judging and a few test images' likelihood on an untrained `prior` of the
    run's size (its cost is the trained one's), and the judge's own step rate and evaluation for the
    classification score's two classifiers."""
    generator = Generator(VQVAE.from_pretrained(run_vqvae(run.out)), prior, device=run.spec.prior_train.device)
    drawn, batch = run.spec.samples, run.spec.samples  # the sample grid
    if run.evaluation is not None:
        rows = held_out(run.test_images, run.evaluation.n_per_class, run.evaluation.seed)
        ladder = run.evaluation.ladder(prior.config)
        around = [s for s in run.evaluation.around(prior.config, ladder[0]) if s not in ladder]
        drawn += planned_samples(len(ladder), len(around), rows.per_group, rows.groups) * rows.groups
        if generator.num_classes:  # the classification score tops the fresh draw up to its training set
            drawn += max(0, cas_images(generator.num_classes) - rows.per_group * rows.groups)
        batch = round_sizes(rows.per_group, rows.groups)[0] * rows.groups  # the search's first draws
    guided = SamplingOptions(guidance=2.0) if prior.config.null_label is not None else SamplingOptions()
    labels = generator.spread_labels(batch) if generator.num_classes else None
    per_grid = _seconds(lambda: generator.sample(batch, labels, guided, seed=0, progress=False)) / batch
    scored = min(run.spec.eval_images, len(run.test_images))  # the likelihood stage's images
    probe = min(PROBE_IMAGES, scored)
    per_image = _seconds(lambda: bits_per_dim(generator.vqvae, prior, run.train_images, run.test_images, probe,
                                              run.spec.prior_train.seed)) / probe
    parts = {"sampling": drawn * per_grid, "likelihood": per_image * scored}
    if run.evaluation is not None and run.judge is not None:  # every sample judged, and 6n held-out images
        images = run.test_images.__getitems__(list(range(probe)))[0]
        judged = drawn + 6 * rows.per_group * rows.groups  # selection and final references, real, reconstructions
        parts["judging"] = _seconds(lambda: run.judge[0].embed(images)) / probe * judged
    if run.evaluation is not None and generator.num_classes:
        parts["classification_score"] = 2 * _judge_seconds(run, CAS_STEPS)
    return parts


def _judge_seconds(run: Run, steps: int) -> float:
    """A classifier of the judge's recipe trained for `steps` and scored on the test split, at the rate the run's
    judge trained (its state's training seconds per step) with its stage's other seconds (its evaluation)."""
    state = load_tensors(run.out / "judge" / STATE_FILE, what="judge state")
    per_step = float(state["elapsed"]) / max(1, int(state["step"]))
    other = max(0.0, run.timings.seconds.get("judge", 0.0) - float(state["elapsed"]))
    return steps * per_step + other


def _seconds(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def steps_taken(out: Path) -> dict[str, int]:
    """report.json's `steps`: what each training stage of the run in `out` took (the decoder's when it was tuned)."""
    stages = ("vqvae", "prior", DECODER_FOLDER) if (out / DECODER_FOLDER).is_dir() else ("vqvae", "prior")
    return {stage: saved_step(out / stage) for stage in stages}


def steps_of(source: str | Path) -> dict[str, int]:
    """The steps of a finished run, from its directory or its report.json (`vqgen run --steps-of`)."""
    path = Path(source)
    path = path / "report.json" if path.is_dir() else path
    report = read_json(path, "run report")
    steps = report.get("steps") if isinstance(report, dict) else None
    if not (isinstance(steps, dict) and all(isinstance(steps.get(k), int) and steps[k] > 0 for k in ("vqvae", "prior"))):
        raise VQGenError(f"{path} records no steps of a finished run (a report.json of vqgen 0.7 or later has them); "
                         "pass a finished run's directory")
    tuned = ("decoder",) if isinstance(steps.get("decoder"), int) and steps["decoder"] > 0 else ()
    return {k: steps[k] for k in ("vqvae", "prior", *tuned)}

