"""Model directories: config.json (config + kind + version) beside model.safetensors (the weights).

`from_pretrained(dir)` rebuilds a model from the directory alone, so nobody repeats model flags
at sampling time (STYLE.md, rule 2); `dir` may also be a Hugging Face Hub id (engine/hub.py).
Weights are safetensors, the field's format, which holds tensors only, so loading runs no code;
directories written before it hold model.pt (a state dict read with torch.load(weights_only=True))
and still load. A save writes model.safetensors, then removes such an old model.pt, so the
directory never offers two sets of weights (and the newer one is preferred in between).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from vqgen.engine.configs import config_from_dict, config_to_dict
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import load_safetensors, load_tensors, read_json, save_safetensors, write_json
from vqgen.engine.hub import local_folder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "model.pt"  # written by vqgen before safetensors: torch.save of the state dict

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
