"""`vqgen eval`: how close a run's samples come to real held-out images, beside two floors.

Reconstruction PSNR and bits per code do not say whether samples look like the data, so a judge
(judge.py) trained on the run's own train split embeds sets of images, each scored against real
held-out images it does not contain (held_out.py, scoring.py):
- real: n real held-out images, the floor no model can beat at this n;
- reconstructions: the same n real images through the VQ-VAE, the floor of this decoder;
- the selection draw: class-conditional samples at the settings searched (search.py), scored against
  a selection reference of 2n real images, one setting chosen by successive halving (selection.py);
- the chosen setting, drawn afresh and scored against a second reference of 2n other real images,
  beside the floors. The minimum over many noisy scores is biased low (the seed-to-seed spread of a
  Frechet distance at n = 500 is about 0.2x the floor), so the chosen setting is reported on samples
  and a reference that played no part in choosing it (seeds.py names every draw).
For a class-conditional prior eval also reports the classification accuracy score
(classification_score.py) of the chosen setting, which guidance cannot inflate.

The report (report.py) goes to RUN/eval.json, and the chosen setting beside the prior as its sampling
defaults (pipeline/generate.py). With TensorBoard, every set's scores become scalars eval/SET/NAME and
each setting's grid the image eval/SET/grid, at the prior's last step.
"""

from __future__ import annotations

import time
from pathlib import Path

from vqgen.data.images import BatchedImages
from vqgen.engine.checkpoint import saved_step
from vqgen.engine.distributed import on_main, process_device
from vqgen.engine.files import write_json
from vqgen.engine.locks import directory_lock
from vqgen.engine.tensorboard import sub_run
from vqgen.pipeline.evaluation.classification_score import classification_accuracy_score
from vqgen.pipeline.evaluation.held_out import check_evaluable, held_out, images_of
from vqgen.pipeline.evaluation.judge import Judge, train_judge
from vqgen.pipeline.evaluation.report import EVAL_FILE, EvalReport
from vqgen.pipeline.evaluation.scoring import Scored, Scorer, reconstruct, score
from vqgen.pipeline.evaluation.search import EvalOptions
from vqgen.pipeline.evaluation.seeds import Seeds
from vqgen.pipeline.evaluation.selection import select
from vqgen.pipeline.generate import Generator, run_vqvae, save_sampling
from vqgen.pipeline.spec import load_spec, require_run_dir
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.model import GatedPixelCNN


def evaluate_run(out: str | Path, options: EvalOptions = EvalOptions(), progress: bool = True,
                 data: tuple[BatchedImages, BatchedImages] | None = None, tensorboard: str | Path | None = None,
                 judge: tuple[Judge, float] | None = None) -> EvalReport:
    """Score the run in `out`, write out/eval.json and the chosen sampling defaults; return the report.

    `data` is the run's (train, test) images and `judge` its trained judge with its test accuracy, when
    the caller has them already; `tensorboard`, the run's TensorBoard directory, gets the judge's training
    and these figures as sub-runs judge/, eval/. Under torchrun every rank trains the judge, then rank 0
    alone scores. It holds the run's lock and the prior directory's, whose sampling.json it writes, so a
    `train-prior --out RUN/prior` is refused meanwhile.
    """
    out, start = Path(out), time.perf_counter()
    ctx, _ = process_device(options.device)
    require_run_dir(out)  # before the lock, which would create a directory where there is none
    with directory_lock(out, ctx):  # before any work: a run still being written is refused at once
        spec = load_spec(out)
        train, test = data or (spec.open_split("train", index_dir=out), spec.open_split("test", index_dir=out))
        # not from_pretrained: the prior's saved defaults must not stand in for the settings asked for
        generator = Generator(VQVAE.from_pretrained(run_vqvae(out)), GatedPixelCNN.from_pretrained(out / "prior"),
                              device=options.device)
        options.check(generator.prior.config)  # before the judge trains
        check_evaluable(test, options.n_per_class)
        with directory_lock(out / "prior", ctx):  # sampling.json is written there
            judge = judge or train_judge(train, test, out / "judge", options.device, progress,
                                         sub_run(tensorboard, "judge"))

            def score_and_save() -> EvalReport:
                report = _score_run(out, options, generator, judge, train, test, progress, start)
                write_json(out / EVAL_FILE, report.to_json())
                save_sampling(report.chosen.setting, out / "prior")  # last: the run's marker of a finished eval
                return report

            report = on_main(ctx, score_and_save)
    if ctx.is_main and tensorboard is not None:
        report.show(out / "eval", sub_run(tensorboard, "eval"), saved_step(out / "prior"))
    return report


def _score_run(out: Path, options: EvalOptions, generator: Generator, trained: tuple[Judge, float],
               train: BatchedImages, test: BatchedImages, progress: bool, start: float) -> EvalReport:
    judge, accuracy = trained[0].to(generator.device), trained[1]
    seeds = Seeds(options.seed)
    rows = held_out(test, options.n_per_class, seeds.rows)
    scorer = Scorer(generator, judge, rows, test)
    real = images_of(test, rows.real)
    floors = [score(judge, images, scorer.reference, rows.labels) for images in (real, reconstruct(generator, real))]
    config = generator.prior.config
    search = select(scorer, options.ladder(config), lambda best: options.around(config, best), judge, seeds,
                    out / "eval", progress)
    fresh = scorer.draw(search.chosen, seeds.fresh)
    chosen = Scored(search.chosen, score(judge, fresh, scorer.reference, scorer.labels), len(fresh))
    scorer.grid(fresh, out / "eval" / "chosen.png")
    cas = classification_accuracy_score(generator, search.chosen, train, test, out / "eval" / "cas",
                                        seeds.classification_score, options.device, progress,
                                        drawn=(fresh, scorer.labels)) if scorer.conditional else None
    return EvalReport(judge={"test_accuracy": accuracy, "task": judge.config.task}, n=len(rows.real),
                      n_per_class=rows.per_group, reference=len(rows.reference), real=floors[0],
                      reconstructions=floors[1], selection=search.scored, chosen=chosen,
                      selection_frechet=search.frechet, classification_accuracy_score=cas,
                      seconds=time.perf_counter() - start)
