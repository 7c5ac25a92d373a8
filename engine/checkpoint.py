"""Model directories: config.json (config + kind + version) beside model.safetensors (the weights).

`from_pretrained(dir)` rebuilds a model from the directory alone, so nobody repeats model flags
at sampling time (STYLE.md, rule 2); `dir` may also be a Hugging Face Hub id (engine/hub.py).
Weights are safetensors, the field's format, which holds tensors only, so loading runs no code;
directories written before it hold model.pt (a state dict read with torch.load(weights_only=True))
and still load. A save writes model.safetensors, then removes such an old model.pt, so the
directory never offers two sets of weights (and the newer one is preferred in between).

A training run's directory also holds what a resume needs: state.pt (`TrainingState`) and
train_config.json, against which a resumed run is checked to be the same run (`check_same_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import nn

from vqgen.engine.averaging import WeightAverage
from vqgen.engine.configs import config_from_dict, config_to_dict
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import load_safetensors, load_tensors, read_json, save_safetensors, save_tensors, write_json
from vqgen.engine.hub import local_folder
from vqgen.engine.train_config import TrainConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "model.pt"  # written by vqgen before safetensors: torch.save of the state dict
STATE_FILE = "state.pt"
TRAIN_CONFIG_FILE = "train_config.json"

M = TypeVar("M", bound="Pretrained")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def read_config(directory: str | Path, kind: str, config_class: type, version: int = 1) -> Any:
    directory = Path(directory)
    if not directory.is_dir():
        raise VQGenError(f"{kind} directory not found: {directory}")
    raw = read_json(directory / CONFIG_FILE, what=f"{kind} config")
    if not isinstance(raw, dict) or raw.get("kind") != kind:
        found = raw.get("kind") if isinstance(raw, dict) else type(raw).__name__
        raise VQGenError(f"{directory} holds a {found!r} checkpoint, not a {kind!r} one; "
                         f"pass the {kind} directory instead")
    if raw.get("version") != version:
        raise VQGenError(f"{directory / CONFIG_FILE} has {kind} format version {raw.get('version')}, "
                         f"this vqgen reads version {version}")
    values = {k: v for k, v in raw.items() if k not in ("kind", "version")}
    return config_from_dict(config_class, values, source=str(directory / CONFIG_FILE))


def write_config(directory: str | Path, kind: str, config: Any, version: int = 1) -> None:
    write_json(Path(directory) / CONFIG_FILE, {"kind": kind, "version": version, **config_to_dict(config)})


def weights_path(directory: str | Path) -> Path:
    """The weights file of a model directory: model.safetensors, else an older run's model.pt (the name
    model.safetensors when neither is there, so a missing file is reported under today's name)."""
    directory = Path(directory)
    legacy = directory / LEGACY_WEIGHTS_FILE
    return legacy if legacy.exists() and not (directory / WEIGHTS_FILE).exists() else directory / WEIGHTS_FILE


def save_weights(directory: str | Path, state: dict[str, torch.Tensor]) -> None:
    """model.safetensors, atomically; then an older model.pt beside it goes (it no longer matches)."""
    directory = Path(directory)
    save_safetensors(directory / WEIGHTS_FILE, state)
    (directory / LEGACY_WEIGHTS_FILE).unlink(missing_ok=True)


def load_weights(directory: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """The state dict of a model directory, from whichever weights file `weights_path` finds."""
    path = weights_path(directory)
    return load_tensors(path, what) if path.name == LEGACY_WEIGHTS_FILE else load_safetensors(path, what)


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with a message that says the weights and the config disagree."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VQGenError(f"{source} is not a state dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise VQGenError(f"{source} does not match its config.json ({' '.join(first[1:3]).strip()})") from None


class Pretrained:
    """Mixin for models: `save_pretrained(dir)` and `from_pretrained(dir)` round-trip exactly.

    `from_pretrained` takes a local folder or a Hub id ("owner/name[@revision]", downloaded and cached by
    huggingface_hub), and `subfolder` for a repo of several models, such as one `vqgen export-model`
    writes (vqvae/ and prior/)."""

    kind: ClassVar[str]
    config_class: ClassVar[type]
    version: ClassVar[int] = 1
    config: Any

    def save_pretrained(self, directory: str | Path) -> None:
        save_weights(directory, unwrap(self).state_dict())
        write_config(directory, self.kind, self.config, self.version)

    @classmethod
    def load_config(cls, directory: str | Path) -> Any:
        return read_config(directory, cls.kind, cls.config_class, cls.version)

    @classmethod
    def from_pretrained(cls: type[M], source: str | Path, subfolder: str | None = None) -> M:
        directory = local_folder(source, subfolder)
        model = cls(cls.load_config(directory))
        load_state_into(model, load_weights(directory, what=f"{cls.kind} weights"), str(weights_path(directory)))
        return model.eval()


def saved_step(out_dir: str | Path) -> int:
    """The step of the last checkpoint in `out_dir`, 0 when there is none."""
    path = Path(out_dir) / STATE_FILE
    return int(load_tensors(path, what="training state")["step"]) if path.exists() else 0


def finished(out_dir: str | Path, config: TrainConfig) -> bool:
    """Whether the run in `out_dir` has trained all `config` asks: its steps, those its time budget fixed for a
    cooldown schedule, or its time budget."""
    path = Path(out_dir) / STATE_FILE
    if not path.exists():
        return False
    state = load_tensors(path, what="training state")
    fixed = state.get("fixed_steps")
    if fixed is not None:
        return int(state["step"]) >= int(fixed)
    return int(state["step"]) >= config.steps or 0 < config.max_seconds <= float(state["elapsed"])


def start_run(directory: Path, model: Pretrained, config: TrainConfig) -> None:
    """A new run's config.json and train_config.json: what a resume is checked against."""
    write_config(directory, model.kind, model.config, model.version)
    write_json(directory / TRAIN_CONFIG_FILE, config_to_dict(config))


def check_same_run(directory: Path, model: Pretrained, config: TrainConfig) -> None:
    """Refuse to resume the run in `directory` with another model config or other binding options
    (`TrainConfig.binding`): its saved state would continue a different computation."""
    saved_model = type(model).load_config(directory)
    if saved_model != model.config:
        raise VQGenError(f"{directory} holds a run with another model config; resume it with the "
                         f"same options or choose a new --out (saved: {saved_model})")
    saved = config_from_dict(TrainConfig, read_json(directory / TRAIN_CONFIG_FILE, "training config"))
    changed = [f"{k}: {getattr(saved, k)} -> {getattr(config, k)}"
               for k in config.binding() if getattr(saved, k) != getattr(config, k)]
    if changed:
        raise VQGenError(f"{directory} was trained with other options ({'; '.join(changed)}); "
                         "resume with the same options or choose a new --out")


class Progress(NamedTuple):
    """How far a saved run got: optimizer steps, the seconds its training steps took, and the steps a time
    budget fixed for a cooldown schedule once its cool-down began (None before, or without one)."""

    step: int
    elapsed: float
    fixed_steps: int | None = None


@dataclass(frozen=True)
class TrainingState:
    """What an exact resume restores from state.pt: the (unwrapped) model, the optimizer, the fp16 gradient
    scaler and the weight average, with the step and training seconds reached. Random draws need no saved
    state: each step reseeds (`rank_seed`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    average: WeightAverage | None

    def published(self) -> nn.Module:
        """The weights evaluation and model.safetensors use: the weight average when there is one."""
        return self.model if self.average is None else self.average.published(self.model)

    def save(self, directory: Path, progress: Progress) -> None:
        """state.pt first (all a resume needs), then model.safetensors + config.json for from_pretrained."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "step": progress.step, "elapsed": progress.elapsed}
        if progress.fixed_steps is not None:
            state["fixed_steps"] = progress.fixed_steps
        if self.average is not None:
            state["average"] = self.average.state_dict()
        save_tensors(directory / STATE_FILE, state)
        self.published().save_pretrained(directory)  # type: ignore[attr-defined]

    def load(self, directory: Path) -> Progress:
        """Restore everything from `directory`'s state.pt; how far that run got."""
        path = directory / STATE_FILE
        state = load_tensors(path, what="training state")
        load_state_into(self.model, state["model"], str(path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            if self.average is not None:
                self.average.load_state_dict(state["average"])
        except (ValueError, RuntimeError, KeyError) as err:
            raise VQGenError(f"{path} holds optimizer or weight-average state this model "
                             f"cannot take ({type(err).__name__}), as from an older vqgen; its weights load, "
                             "but training cannot resume there: train into a new --out") from None
        fixed = state.get("fixed_steps")
        return Progress(int(state["step"]), float(state["elapsed"]), None if fixed is None else int(fixed))
