"""The training loop both stages run: step, log, eval, atomic checkpoint, exact resume.

A stage supplies a `TrainTask` (its model, data, loss and evaluation); everything about
devices, precision, torchrun, checkpoints, signals and non-finite losses lives here, once.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import signal
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm import tqdm

from vqgen.engine.averaging import WeightAverage
from vqgen.engine.batches import ResumableBatches, make_loader
from vqgen.engine.checkpoint import Pretrained, load_state_into, unwrap, write_config
from vqgen.engine.configs import config_from_dict, config_to_dict, fields_where, option, require
from vqgen.engine.distributed import Dist, on_main, process_device, rank_seed
from vqgen.engine.efficiency import efficiency, matmul_flops_per_s, step_flops
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import load_tensors, read_json, save_tensors, write_json
from vqgen.engine.grids import save_grid
from vqgen.engine.metrics_log import MetricsLog
from vqgen.engine.locks import directory_lock
from vqgen.engine.runtime import autocast, resolve_precision
from vqgen.engine.tensorboard import Sink, open_sink
from vqgen.engine.units import describe

STATE_FILE = "state.pt"
TRAIN_CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping for one training stage (Adam, as in both papers)."""

    steps: int = option(3000, "optimizer steps", resume="budget")
    max_seconds: float = option(0.0, "a time budget: stop after this many seconds of training steps, evaluate and "
                                     "save, even short of --steps (0: none); a resume spends what is left",
                                resume="budget")
    batch_size: int = option(64, "global batch size (split across torchrun processes)", resume="binding")
    lr: float = option(2e-4, "Adam learning rate", resume="binding")
    grad_clip: float = option(0.0, "clip the gradient norm to this (0: off)", resume="binding")
    seed: int = option(0, "fixes data order, initialisation and sampling", resume="binding", shared=True)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "fp32", "autocast precision (auto: bf16 where the CPU or GPU computes it natively, else fp32); quantizer "
                "distances and EMA always stay fp32", resume="binding", shared=True)
    device: str = option("auto", "auto (GPU when present), cpu or cuda[:N]", resume="runtime", shared=True)
    compile: bool = option(False, "torch.compile the model (falls back with a warning where unsupported)",
                           resume="runtime", shared=True)
    num_workers: int = option(0, "data-loader worker processes", resume="runtime", shared=True)
    log_every: int = option(25, "steps between metrics.jsonl records", resume="runtime")
    eval_every: int = option(500, "steps between held-out evaluations", resume="runtime")
    checkpoint_every: int = option(500, "steps between checkpoints", resume="runtime")
    warmup: int = option(0, "steps of linear learning-rate warm-up (0: none)", resume="binding")
    schedule: Literal["constant", "cosine"] = option(
        "constant", "learning rate after warm-up: constant, or cosine decay to 0 at the last step", resume="binding")
    ema: float = option(0.0, "decay of an exponential moving average of the weights, used for eval and saved as the "
                             "model's weights (0: off)", resume="binding")
    tensorboard: str | None = option(None, "directory for TensorBoard event files (None: off)", resume="runtime",
                                     flag=False)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            require(value >= 1, f"{name}={value} is not allowed; must be >= 1")
        require(self.lr > 0, f"lr={self.lr} is not allowed; must be > 0")
        require(self.max_seconds >= 0, f"max_seconds={self.max_seconds} is not allowed; must be >= 0 (0 = no limit)")
        require(self.warmup >= 0, f"warmup={self.warmup} is not allowed; must be >= 0 (0 = off)")
        require(0 <= self.ema < 1, f"ema={self.ema} is not allowed; must be in [0, 1) (0 = off)")
        require(self.grad_clip >= 0, f"grad_clip={self.grad_clip} is not allowed; must be >= 0 (0 = off)")
        require(self.num_workers >= 0, f"num_workers={self.num_workers} is not allowed; must be >= 0")
        require(self.seed >= 0, f"seed={self.seed} is not allowed; must be >= 0")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (1-based): linear warm-up over `warmup` steps, then
        constant or a cosine decay (Loshchilov & Hutter 2017) that nears 0 at the last step."""
        if step <= self.warmup:
            return self.lr * step / self.warmup
        if self.schedule == "constant":
            return self.lr
        progress = (step - 1 - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def binding(self) -> tuple[str, ...]:
        """Options a resumed run must share with the saved one; `steps` too once the schedule depends on it."""
        return fields_where(TrainConfig, resume="binding") + (("steps",) if self.schedule == "cosine" else ())


class StepResult(NamedTuple):
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


class Figure(NamedTuple):
    """An image grid an evaluation draws: saved as OUT/NAME.png and shown in TensorBoard."""

    images: torch.Tensor  # (B, C, H, W) in [0, 1]
    nrow: int


class TrainTask(Protocol):
    """What a stage gives the trainer."""

    model: nn.Module
    items_name: str

    def train_data(self) -> torch.utils.data.Dataset: ...

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> StepResult: ...

    def after_step(self, step: int) -> dict[str, float]: ...

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]: ...


@runtime_checkable
class DrawsFigures(Protocol):
    """A TrainTask whose evaluations also draw figures (the VQ-VAE's reconstructions), by name."""

    def figures(self, model: nn.Module) -> dict[str, Figure]: ...


class NonFiniteLoss(VQGenError):
    """Found from losses all-reduced over the ranks, so every rank raises it."""

    shared = True


class Interrupted(VQGenError):
    """Stopped by a signal after saving a checkpoint; exits 128 + the signal number, as shells expect.
    Under torchrun the ranks agree on the stop, so every rank raises it."""

    shared = True

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def saved_step(out_dir: str | Path) -> int:
    """The step of the last checkpoint in `out_dir`, 0 when there is none."""
    path = Path(out_dir) / STATE_FILE
    return int(load_tensors(path, what="training state")["step"]) if path.exists() else 0


def _no_forward_buffer_sync() -> dict[str, bool]:
    """The quantizer all-reduces its EMA statistics inside forward, so every rank already holds the
    same buffers; DDP must not re-broadcast rank 0's at each forward. torch renamed the option
    (broadcast_buffers -> forward_sync_buffers); older releases know only the first name."""
    options = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in options else {"broadcast_buffers": False}


class _StopSignals:
    """SIGTERM / Ctrl-C set a flag; the loop checkpoints, then stops (a second Ctrl-C stops at once)."""

    def __init__(self) -> None:
        self.received: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator["_StopSignals"]:
        try:
            previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread: leave signals alone
            yield self
            return
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


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
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.lr)
        self.precision = resolve_precision(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.average = WeightAverage(self.model, config.ema) if config.ema else None
        self.step = 0
        self.elapsed = 0.0

    # ---- checkpoints -------------------------------------------------------------------------
    def _as_run(self) -> TrainConfig:
        """The config as this machine runs it: precision "auto" resolved, so that a resume on hardware
        that would resolve it otherwise is refused, and "auto" equals what it resolves to."""
        return replace(self.config, precision=self.precision)

    def _check_same_run(self) -> None:
        model: Pretrained = unwrap(self.model)  # type: ignore[assignment]
        saved_model = type(model).load_config(self.out_dir)
        if saved_model != model.config:
            raise VQGenError(f"{self.out_dir} holds a run with another model config; resume it with the "
                             f"same options or choose a new --out (saved: {saved_model})")
        saved = config_from_dict(TrainConfig, read_json(self.out_dir / TRAIN_CONFIG_FILE, "training config"))
        current = self._as_run()
        changed = [f"{k}: {getattr(saved, k)} -> {getattr(current, k)}"
                   for k in current.binding() if getattr(saved, k) != getattr(current, k)]
        if changed:
            raise VQGenError(f"{self.out_dir} was trained with other options ({'; '.join(changed)}); "
                             "resume with the same options or choose a new --out")

    def _resume(self) -> None:
        if self.ctx.is_main:
            for leftover in self.out_dir.glob(".*.tmp"):  # from a process killed mid-write
                leftover.unlink(missing_ok=True)
        if not (self.out_dir / STATE_FILE).exists():
            if self.ctx.is_main:
                model: Pretrained = unwrap(self.model)  # type: ignore[assignment]
                write_config(self.out_dir, model.kind, model.config, model.version)
                write_json(self.out_dir / TRAIN_CONFIG_FILE, config_to_dict(self._as_run()))
            return
        self._check_same_run()
        state = load_tensors(self.out_dir / STATE_FILE, what="training state")
        load_state_into(unwrap(self.model), state["model"], str(self.out_dir / STATE_FILE))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            if self.average is not None:
                self.average.load_state_dict(state["average"])
        except (ValueError, RuntimeError, KeyError) as err:
            raise VQGenError(f"{self.out_dir / STATE_FILE} holds optimizer or weight-average state this model "
                             f"cannot take ({type(err).__name__}), as from an older vqgen; its weights load, "
                             "but training cannot resume there: train into a new --out") from None
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.log.truncate_after(self.step)

    def _published(self) -> nn.Module:
        """The weights evaluation and model.safetensors use: the weight average when there is one."""
        model = unwrap(self.model)
        return model if self.average is None else self.average.published(model)

    def _save(self) -> None:
        """state.pt first (all a resume needs), then model.safetensors + config.json for from_pretrained. Random
        draws need no saved state: each step reseeds (`rank_seed`)."""
        def save() -> None:
            model = unwrap(self.model)
            state = {"model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(), "step": self.step, "elapsed": self.elapsed}
            if self.average is not None:
                state["average"] = self.average.state_dict()
            save_tensors(self.out_dir / STATE_FILE, state)
            self._published().save_pretrained(self.out_dir)  # type: ignore[attr-defined]
        on_main(self.ctx, save)

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
        """Compile on request; torch.compile fails lazily, at the first call, so fall back there."""
        if self.config.compile:
            try:
                compiled = torch.compile(model)
                return compiled, self._step(compiled, batch)
            except Exception as err:  # noqa: BLE001 - any backend failure falls back to eager
                warnings.warn(f"torch.compile cannot work here ({type(err).__name__}: {err}); training without it")
        return model, self._step(model, batch)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def _batches(self) -> Iterator[Any]:
        data = self.task.train_data()
        batches = ResumableBatches(len(data), self.config.batch_size, self.config.seed, self.step,  # type: ignore[arg-type]
                                   self.config.steps, self.ctx)
        return iter(make_loader(data, batches, self.config.num_workers, self.device.type == "cuda"))

    def _optimise(self, loss: torch.Tensor) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=not self.ctx.enabled)  # DDP: keep the bucket views
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(unwrap(self.model))

    def fit(self) -> dict[str, Any]:
        """Train to config.steps, or until `max_seconds` of training, holding the lock of `out_dir`; return
        the last evaluation and throughput. The clock counts training steps only, as the metrics' rates
        do, and is saved with the checkpoint, so a resumed run spends what is left of the budget."""
        with directory_lock(self.out_dir, self.ctx):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        self._resume()
        kind: str = unwrap(self.model).kind  # type: ignore[assignment]
        model = self._wrap()
        first = self.step + 1
        model.train()
        evaluation: dict[str, float] = {}
        window = _Window(self.device)
        signals = _StopSignals()
        self.sink = open_sink(self.config.tensorboard if self.ctx.is_main else None, kind, self.step + 1)
        bar = tqdm(total=self.config.steps, initial=self.step, disable=not self.progress,
                   desc=f"train {kind}", dynamic_ncols=True)
        time_up = self._time_up(None)  # the budget a resumed run has already spent
        with signals.installed(), bar, self.sink:
            for batch in ([] if time_up else self._batches()):
                self.step += 1
                torch.manual_seed(rank_seed(self.config.seed, self.ctx, self.step))  # dropout, restarts, ...
                if self.step == first:
                    model, result = self._first_step(model, batch)
                else:
                    result = self._step(model, batch)
                self._optimise(result.loss)
                window.add(result, self.step)
                extra = self.task.after_step(self.step)
                if self.step == first:
                    self._log_setup(batch, first - 1, window)
                bar.update(1)
                stop, time_up = self._stop_requested(signals, window)
                evaluation = self._after_step(model, window, bar, extra, stop, time_up) or evaluation
                if stop:
                    raise Interrupted(f"stopped by signal {signals.received} at step {self.step}; checkpoint "
                                      f"saved in {self.out_dir}, run the same command to resume",
                                      signals.received or signal.SIGTERM)
                if time_up:
                    break
        if self.step < self.config.steps and not time_up:
            raise VQGenError("training ended early: the data loader ran dry")
        if time_up and self.step < self.config.steps and self.config.schedule == "cosine":
            warnings.warn(f"the time budget (max_seconds={self.config.max_seconds:g}) stopped {kind} training at step "
                          f"{self.step} of {self.config.steps}, before its cosine schedule decayed (learning rate "
                          f"{self.config.lr_at(self.step):.3g} of {self.config.lr:g}); give it the steps the budget "
                          "reaches, or the constant schedule", stacklevel=2)
        return {"step": self.step, "seconds": self.elapsed, "evaluation": evaluation,
                f"{self.task.items_name}_per_s": self.step * self.config.batch_size / max(self.elapsed, 1e-9)}

    def _after_step(self, model: nn.Module, window: "_Window", bar: tqdm, extra: dict[str, float],
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
            window.started = time.perf_counter()  # throughput counts training steps only
        return evaluation

    def _log_setup(self, batch: Any, step: int, window: "_Window") -> None:
        """The setup record, once this process's first step is done: a step that initialises (k-means,
        compilation) is not one to count, so the FLOPs of a step are counted on the model after it. The
        count and the reference timing are setup, not training: their seconds leave the window's clock."""
        start = time.perf_counter()
        self.flops_per_step = self._count_flops(batch)
        self.matmul_rate = matmul_flops_per_s(self.precision, self.device)
        self.log.log(step=step, split="setup", device=str(self.device), precision=self.precision,
                     processes=self.ctx.world, flops_per_step=self.flops_per_step,
                     matmul_flops_per_s=self.matmul_rate)
        window.started += time.perf_counter() - start

    def _count_flops(self, batch: Any) -> int:
        """FLOPs of one training step of this process (its share of the global batch), on a copy of the model."""
        with self._autocast():
            return step_flops(self.model, lambda twin: self.task.step(twin, batch, self.device).loss)

    def _time_up(self, window: "_Window | None") -> bool:
        """Whether the saved training seconds, plus those of the open window, reach `max_seconds`."""
        seconds = self.elapsed + (0.0 if window is None else time.perf_counter() - window.started)
        return self.config.max_seconds > 0 and seconds >= self.config.max_seconds

    def _stop_requested(self, signals: _StopSignals, window: "_Window") -> tuple[bool, bool]:
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

    def _log_window(self, window: "_Window", bar: tqdm, extra: dict[str, float]) -> None:
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
            published = self._published()
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


class _Window:
    """Sums of step metrics kept on the device, so the loop syncs with the host only at log steps."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.started = time.perf_counter()

    def add(self, result: StepResult, step: int) -> None:
        self.count += 1
        finite = torch.isfinite(result.loss.detach())
        self.bad = torch.where(finite | (self.bad >= 0), self.bad, torch.full_like(self.bad, step))
        for name, value in {"loss": result.loss, **result.metrics}.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def flush(self, ctx: Dist) -> tuple[dict[str, float], int | None, float]:
        """Means over the window (and over ranks, so a torchrun log equals a single-process one)."""
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in names] + [self.bad.float()])
        if ctx.enabled:
            bad = stacked[-1:].clone()
            torch.distributed.all_reduce(stacked)
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            stacked = torch.cat([stacked[:-1] / ctx.world, bad])
        values = stacked.tolist()
        means = {k: v / max(self.count, 1) for k, v in zip(names, values)}
        bad_step = int(values[-1])
        return means, (bad_step if bad_step >= 0 else None), time.perf_counter() - self.started
