"""The training loop both stages run: step, log, eval, atomic checkpoint, exact resume.

A stage supplies a `TrainTask` (engine/train_task.py: its model, data, loss and evaluation); everything
about devices, precision, torchrun, checkpoints, signals and non-finite losses is run from here, once.
What the loop calls lives beside it: the options (train_config.py), the saved state and the same-run
check (checkpoint.py), the metrics window (metrics_log.py) and the stop signals (signals.py).
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm import tqdm

from vqgen.engine.averaging import WeightAverage
from vqgen.engine.batches import ResumableBatches, make_loader
from vqgen.engine.checkpoint import (STATE_FILE, Pretrained, Progress, TrainingState, check_same_run, saved_step,
                                     start_run, unwrap)
from vqgen.engine.distributed import Dist, on_main, process_device, rank_seed
from vqgen.engine.efficiency import efficiency, matmul_flops_per_s, step_flops
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import remove_torn_writes
from vqgen.engine.grids import save_grid
from vqgen.engine.locks import directory_lock
from vqgen.engine.metrics_log import METRICS_FILE, MetricsLog, MetricsWindow
from vqgen.engine.runtime import autocast, first_call, resolve_precision
from vqgen.engine.signals import Interrupted, StopSignals
from vqgen.engine.tensorboard import Sink, open_sink
from vqgen.engine.train_config import TrainConfig
from vqgen.engine.train_task import DrawsFigures, Figure, StepResult, TrainTask
from vqgen.engine.units import describe


class NonFiniteLoss(VQGenError):
    """Found from losses all-reduced over the ranks, so every rank raises it."""

    shared = True


def _no_forward_buffer_sync() -> dict[str, bool]:
    """The quantizer all-reduces its EMA statistics inside forward, so every rank already holds the
    same buffers; DDP must not re-broadcast rank 0's at each forward. torch renamed the option
    (broadcast_buffers -> forward_sync_buffers); older releases know only the first name."""
    options = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in options else {"broadcast_buffers": False}


class Trainer:
    """Runs a TrainTask to `config.steps` (or its time budget), resuming from `out_dir` when a checkpoint is there.

    `alone`: train in this process only, even under torchrun (what rank 0 trains by itself, such as
    eval's classifiers), on this process's device.
    """

    def __init__(self, task: TrainTask, config: TrainConfig, out_dir: str | Path, progress: bool = True,
                 alone: bool = False) -> None:
        self.task, self.config, self.out_dir = task, config, Path(out_dir)
        self.ctx, self.device = process_device(config.device)
        if alone:
            self.ctx = Dist()
        self.progress = progress and self.ctx.is_main
        self.log = MetricsLog(self.out_dir / METRICS_FILE, enabled=self.ctx.is_main)
        self.sink = Sink()  # TensorBoard, opened in fit() once the resumed step is known
        self.model = task.model.to(self.device)
        self.precision = resolve_precision(config.precision, self.device)
        optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.lr)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        average = WeightAverage(self.model, config.ema) if config.ema else None
        self.state = TrainingState(unwrap(self.model), optimizer, scaler, average)  # what state.pt holds
        self.step = 0
        self.elapsed = 0.0
        self.fixed_steps: int | None = None  # the steps a time budget chose for a cooldown schedule

    def before_update(self) -> None:
        """Called at every step between the forward pass and the optimizer update; does nothing here.

        The hook for subclasses and tests: `self.step` is the step being taken, so raising
        KeyboardInterrupt when it is n kills the run as a second Ctrl-C would, mid-step, before step n
        changes any weights (tests/conftest.py's `ctrl_c_at`); a fake clock can advance here too."""

    # ---- checkpoints -------------------------------------------------------------------------
    def _as_run(self) -> TrainConfig:
        """The config as this machine runs it: precision "auto" resolved, so that a resume on hardware
        that would resolve it otherwise is refused, and "auto" equals what it resolves to."""
        return replace(self.config, precision=self.precision)

    def _resume(self) -> None:
        """Load state.pt when `out_dir` has one (refusing another run's), else start the run there."""
        model: Pretrained = self.state.model  # type: ignore[assignment]
        if self.ctx.is_main:
            remove_torn_writes(self.out_dir)
        if not (self.out_dir / STATE_FILE).exists():
            if self.ctx.is_main:
                start_run(self.out_dir, model, self._as_run())
            return
        check_same_run(self.out_dir, model, self._as_run())
        self.step, self.elapsed, fixed = self.state.load(self.out_dir)
        if fixed is not None:
            self._fix_steps(fixed)
        self.log.truncate_after(self.step)

    def _save(self) -> None:
        on_main(self.ctx, lambda: self.state.save(self.out_dir, Progress(self.step, self.elapsed, self.fixed_steps)))

    # ---- the loop ----------------------------------------------------------------------------
    def _wrap(self) -> nn.Module:
        """DDP whose gradients live in its all-reduce buckets (gradient_as_bucket_view).

        Gradients are created once, before wrapping, and zeroed in place after each step, so every
        backward pass accumulates straight into the bucket: no copy, and no layout of a fresh
        gradient (a conv backward may stride a size-1 dimension differently) that differs from it.
        """
        if not self.ctx.enabled:
            return self.model
        for p in self.model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=ids, gradient_as_bucket_view=True,
                                                   **_no_forward_buffer_sync())

    def _step(self, model: nn.Module, batch: Any) -> StepResult:
        with self._autocast():
            return self.task.step(model, batch, self.device)

    def _first_step(self, model: nn.Module, batch: Any) -> tuple[nn.Module, StepResult]:
        """Compile on request (`first_call`, which falls back to eager where compiling fails)."""
        return first_call(model, lambda m: self._step(m, batch), self.config.compile)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def _batches(self) -> Iterator[Any]:
        data = self.task.train_data()
        batches = ResumableBatches(len(data), self.config.batch_size, self.config.seed, self.step,  # type: ignore[arg-type]
                                   self.config.steps, self.ctx)
        return iter(make_loader(data, batches, self.config.num_workers, self.device.type == "cuda"))

    def _optimise(self, loss: torch.Tensor) -> None:
        optimizer, scaler, average = self.state.optimizer, self.state.scaler, self.state.average
        for group in optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step)
        optimizer.zero_grad(set_to_none=not self.ctx.enabled)  # DDP: keep the bucket views
        scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if average is not None:
            average.update(self.state.model)

    def fit(self) -> dict[str, Any]:
        """Train to config.steps, or until `max_seconds` of training, holding the lock of `out_dir`; return
        the last evaluation and throughput. The clock counts training steps only, as the metrics' rates
        do, and is saved with the checkpoint, so a resumed run spends what is left of the budget."""
        with directory_lock(self.out_dir, self.ctx):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        self._resume()
        stage = self.task.stage
        model = self._wrap()
        first = self.step + 1
        model.train()
        evaluation: dict[str, float] = {}
        window = MetricsWindow(self.device)
        signals = StopSignals()
        self.sink = open_sink(self.config.tensorboard if self.ctx.is_main else None, stage, self.step + 1)
        steps = None if self.config.max_seconds and self.fixed_steps is None else self.config.steps  # unknown yet
        bar = tqdm(total=steps, initial=self.step, disable=not self.progress, desc=f"train {stage}", dynamic_ncols=True)
        time_up = self._time_up(None)  # the budget a resumed run has already spent
        with signals.installed(), bar, self.sink:
            for batch in ([] if time_up else self._batches()):
                self.step += 1
                torch.manual_seed(rank_seed(self.config.seed, self.ctx, self.step))  # dropout, restarts, ...
                if self.step == first:
                    model, result = self._first_step(model, batch)
                else:
                    result = self._step(model, batch)
                self.before_update()
                self._optimise(result.loss)
                window.add(result, self.step)
                extra = self.task.after_step(self.step)
                if self.step == first:
                    self._log_setup(batch, first - 1, window)
                bar.update(1)
                stop, time_up = self._stop_requested(signals, window)
                self._plan_cooldown(window, bar)
                evaluation = self._after_step(model, window, bar, extra, stop, time_up) or evaluation
                if stop:
                    raise Interrupted(f"stopped by signal {signals.received} at step {self.step}; checkpoint "
                                      f"saved in {self.out_dir}, run the same command to resume",
                                      signals.received or signal.SIGTERM)
                if time_up or self.step >= self.config.steps:
                    break
        if self.step < self.config.steps and not time_up:
            raise VQGenError("training ended early: the data loader ran dry")
        if time_up and self.step < self.config.steps and self.config.schedule == "cosine":
            warnings.warn(f"the time budget (max_seconds={self.config.max_seconds:g}) stopped {stage} training at step "
                          f"{self.step} of {self.config.steps}, before its cosine schedule decayed (learning rate "
                          f"{self.config.lr_at(self.step):.3g} of {self.config.lr:g}); give it the steps the budget "
                          "reaches, or the constant schedule", stacklevel=2)
        return {"step": self.step, "seconds": self.elapsed, "evaluation": evaluation,
                f"{self.task.items_name}_per_s": self.step * self.config.batch_size / max(self.elapsed, 1e-9)}

    def _after_step(self, model: nn.Module, window: MetricsWindow, bar: tqdm, extra: dict[str, float],
                    stop: bool, time_up: bool) -> dict[str, float] | None:
        """Log, evaluate and checkpoint when their step comes; the evaluation when there was one."""
        last = self.step == self.config.steps or time_up
        evaluate = self.step % self.config.eval_every == 0 or last
        save = self.step % self.config.checkpoint_every == 0 or last or stop
        if self.step % self.config.log_every == 0 or evaluate or save:
            self._log_window(window, bar, extra)
        evaluation = self._evaluate(model) if evaluate else None
        if save:
            self._save()
        if evaluate or save:
            window.restart_clock()  # throughput counts training steps only
        return evaluation

    def _log_setup(self, batch: Any, step: int, window: MetricsWindow) -> None:
        """The setup record, once this process's first step is done: a step that initialises (k-means,
        compilation) is not one to count, so the FLOPs of a step are counted on the model after it. The
        count and the reference timing are setup, not training: their seconds leave the window's clock."""
        with window.paused():
            self.flops_per_step = self._count_flops(batch)
            self.matmul_rate = matmul_flops_per_s(self.precision, self.device)
            self.log.log(step=step, split="setup", device=str(self.device), precision=self.precision,
                         processes=self.ctx.world, flops_per_step=self.flops_per_step,
                         matmul_flops_per_s=self.matmul_rate)

    def _count_flops(self, batch: Any) -> int:
        """FLOPs of one training step of this process (its share of the global batch), on a copy of the model."""
        with self._autocast():
            return step_flops(self.model, lambda twin: self.task.step(twin, batch, self.device).loss)

    def _time_up(self, window: MetricsWindow | None) -> bool:
        """Whether the saved training seconds, plus those of the open window, reach `max_seconds` (never once
        the budget has fixed the steps: the cool-down it chose runs to its end)."""
        return 0 < self.config.max_seconds <= self._spent(window) and self.fixed_steps is None

    def _spent(self, window: MetricsWindow | None) -> float:
        """Training seconds so far: the saved ones, plus those of the open window."""
        return self.elapsed + (0.0 if window is None else window.seconds())

    def _plan_cooldown(self, window: MetricsWindow, bar: tqdm) -> None:
        """Under a time budget, a cooldown schedule's length is the steps the budget reaches at the rate so
        far; it is fixed once the step reached is that length's cool-down start, so the decay ends where the
        budget does, and until then the rate is constant whatever the length (TrainConfig.lr_at). Under
        torchrun the ranks agree on the lowest estimate at log steps."""
        config = self.config
        if config.schedule != "cooldown" or not config.max_seconds or self.fixed_steps is not None:
            return
        if self.ctx.enabled and self.step % config.log_every:
            return
        seconds = self._spent(window)
        reach = self.step + (config.max_seconds - seconds) * self.step / max(seconds, 1e-9)
        if self.ctx.enabled:
            shared = torch.tensor([reach], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MIN)
            reach = float(shared)
        steps = max(self.step, min(config.steps, round(reach)))
        if self.step >= config.cooldown_start(steps):
            self._fix_steps(steps)
            bar.total = steps
            bar.refresh()

    def _fix_steps(self, steps: int) -> None:
        self.fixed_steps = steps
        self.config = replace(self.config, steps=steps)

    def _stop_requested(self, signals: StopSignals, window: MetricsWindow) -> tuple[bool, bool]:
        """(a signal asked to stop, the time budget is spent); under torchrun every rank learns either
        from any rank at log steps, so all stop at the same step."""
        if not self.ctx.enabled:
            return signals.received is not None, self._time_up(window)
        if self.step % self.config.log_every:
            return False, False
        flags = torch.tensor([float(signals.received is not None), float(self._time_up(window))], device=self.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        signalled, time_up = flags.tolist()
        return bool(signalled), bool(time_up)

    def _log_window(self, window: MetricsWindow, bar: tqdm, extra: dict[str, float]) -> None:
        means, bad_step, seconds = window.flush(self.ctx)
        self.elapsed += seconds
        if bad_step is not None:
            last_good = saved_step(self.out_dir)
            raise NonFiniteLoss(f"loss became NaN or inf at step {bad_step}; no weights were written after "
                                f"step {last_good} (last good checkpoint in {self.out_dir}). Lower --lr, "
                                "set --grad-clip, or use --precision fp32")
        rate = window.count * self.config.batch_size / max(seconds, 1e-9)
        use = efficiency(self.flops_per_step, window.count, seconds, self.matmul_rate)
        record = {"step": self.step, "split": "train", **means, "lr": self.config.lr_at(self.step),
                  f"{self.task.items_name}_per_s": rate, **use, **extra}
        self._record(record)
        codebook_size = getattr(unwrap(self.model).config, "codebook_size", None)  # both stages, not the judge
        shown = sorted(means, key=lambda name: name != "loss")  # loss first, then the task's metrics
        bar.set_postfix_str(describe({**means, **use}, [*shown, "flops_share"], codebook_size), refresh=False)
        window.reset()

    def _record(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl line, mirrored as TensorBoard scalars when that is on."""
        self.log.log(**record)
        self.sink.record(record)

    def _draw(self, figures: dict[str, Figure]) -> None:
        for name, figure in figures.items():
            picture = save_grid(self.out_dir / f"{name}.png", figure.images, figure.nrow)
            self.sink.image(f"eval/{name}", picture, self.step)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        """Rank 0 evaluates the published weights in fp32, as they are exported and sampled, whatever
        precision training runs in."""
        def evaluate() -> dict[str, float]:
            published = self.state.published()
            published.eval()
            with torch.no_grad():
                result = self.task.evaluate(published, self.step, self.out_dir)
                figures = self.task.figures(published) if isinstance(self.task, DrawsFigures) else {}
            self._record({"step": self.step, "split": "eval", **result})
            self._draw(figures)
            return result
        result = on_main(self.ctx, evaluate)
        unwrap(model).train()
        return result
