"""Model directories: config.json (config + kind + version) beside model.pt (state dict only).

`from_pretrained(dir)` rebuilds a model from the directory alone, so nobody repeats model flags
at sampling time (STYLE.md, rule 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from vqgen.engine.configs import config_from_dict, config_to_dict
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import load_tensors, read_json, save_tensors, write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"

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
    """Mixin for models: `save_pretrained(dir)` and `from_pretrained(dir)` round-trip exactly."""

    kind: ClassVar[str]
    config_class: ClassVar[type]
    version: ClassVar[int] = 1
    config: Any

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        save_tensors(directory / WEIGHTS_FILE, unwrap(self).state_dict())
        write_config(directory, self.kind, self.config, self.version)

    @classmethod
    def load_config(cls, directory: str | Path) -> Any:
        return read_config(directory, cls.kind, cls.config_class, cls.version)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path) -> M:
        directory = Path(directory)
        model = cls(cls.load_config(directory))
        state = load_tensors(directory / WEIGHTS_FILE, what=f"{cls.kind} weights")
        load_state_into(model, state, str(directory / WEIGHTS_FILE))
        return model.eval()
