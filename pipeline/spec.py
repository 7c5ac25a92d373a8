"""RUN/run.json: everything that decides what a run computes, so one directory never mixes two runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vqgen.data.images import BatchedImages, data_shape, open_dataset
from vqgen.engine.configs import config_from_dict, fields_where
from vqgen.engine.errors import UsageError, VQGenError
from vqgen.engine.files import read_json, write_json
from vqgen.pipeline.presets import RUN_PRESETS, RunPreset
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.sampling import SamplingOptions

RUN_FILE = "run.json"
UNCAPPED = 10**9  # the steps of a stage sized in minutes


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
    sampling: dict[str, Any] = field(default_factory=dict)  # the sample grid's options that replace eval's choice
    flip: bool = False  # both stages train on the train split and its mirror images
    minutes: float | None = None  # the run's wall time, which sizes its stages (pipeline/budget.py); None: steps
    vqvae_share: float = 0.15  # of `minutes`, the VQ-VAE's training time
    decoder_train: TrainConfig | None = None  # the decoder tuned alone on the exported codes; None: not tuned
    decoder_share: float = 0.06  # of `minutes`, the decoder tuning's time

    def __post_init__(self) -> None:
        SamplingOptions(**self.sampling)  # unknown or bad options, named, before any work
        if self.minutes is not None and not self.minutes > 0:
            raise UsageError(f"--minutes {self.minutes:g} is not allowed; must be > 0")
        for name in ("vqvae_share", "decoder_share"):
            if not 0 < getattr(self, name) < 1:
                raise UsageError(f"{name}={getattr(self, name):g} is not allowed; must be in (0, 1)")

    @classmethod
    def from_preset(cls, preset: str | RunPreset = "default", data: str = "builtin", data_root: str | None = None,
                    image_size: int | None = None, download: bool = False, index_dir: Path | None = None,
                    minutes: float | None = None, steps: dict[str, int] | None = None) -> "RunSpec":
        """What `vqgen run --preset PRESET --data DATA` runs before its other flags: the preset (a name in
        RUN_PRESETS, or one sized already) sized for the data by pipeline/presets.py's rule, for `minutes`
        (default: the preset's own, if it states minutes; 0: its steps), or for the `steps` of each training stage
        (`--steps-of`: {"vqvae": n, "prior": m, and "decoder" when it was tuned: without, none is}, no time budget). Sized in minutes, the stages' steps
        are a cap no run reaches (a --steps flag given after sets one)."""
        if isinstance(preset, str):
            preset = RUN_PRESETS[preset](data_shape(data, data_root, download, image_size, index_dir=index_dir))
        trains = {"vqvae": preset.vqvae_train, "prior": preset.prior_train,
                  "decoder": None if steps and "decoder" not in steps else preset.decoder_train}
        minutes = None if steps or minutes == 0 else minutes or preset.minutes  # 0: the preset's steps
        for stage, train in trains.items():
            if train is None:
                continue
            if steps:
                trains[stage] = replace(train, steps=steps[stage], max_seconds=0.0)
            elif minutes:
                trains[stage] = replace(train, steps=UNCAPPED)
        return cls(data=data, data_root=data_root, image_size=image_size, vqvae=preset.vqvae,
                   vqvae_train=trains["vqvae"], prior=preset.prior, prior_train=trains["prior"],
                   eval_images=preset.eval_images, flip=preset.flip, minutes=minutes, vqvae_share=preset.vqvae_share,
                   decoder_train=trains["decoder"], decoder_share=preset.decoder_share)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def open_split(self, split: str, download: bool = False, stream: bool | None = None,
                   index_dir: Path | None = None) -> BatchedImages:
        """The run's images of `split`, the same way for every stage that reads them (`stream` and the
        folder index's cache directory change how a folder is read, never what it holds)."""
        return open_dataset(self.data, split, self.data_root, download, size=self.image_size, stream=stream,
                            index_dir=index_dir)

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str) -> "RunSpec":
        raw = dict(raw)
        old = {k: raw.pop(k) for k in ("temperature", "guidance") if k in raw}  # run.json before 0.6.0
        raw.setdefault("sampling", {k: v for k, v in old.items() if v is not None})
        try:
            return cls(**{**raw, "vqvae": config_from_dict(VQVAEConfig, raw["vqvae"], source),
                          "vqvae_train": config_from_dict(TrainConfig, raw["vqvae_train"], source),
                          "prior": config_from_dict(PriorConfig, raw["prior"], source),
                          "prior_train": config_from_dict(TrainConfig, raw["prior_train"], source),
                          "decoder_train": raw.get("decoder_train") and config_from_dict(TrainConfig,
                                                                                         raw["decoder_train"], source)})
        except (KeyError, TypeError) as err:
            raise VQGenError(f"{source} is not a vqgen run description ({err})") from None


def _binding(spec: RunSpec) -> dict[str, Any]:
    raw = spec.to_json()
    for train in ("vqvae_train", "prior_train", "decoder_train"):
        if raw[train] is not None:
            raw[train] = {k: v for k, v in raw[train].items() if k not in fields_where(TrainConfig, resume="runtime")}
    return raw


def claim_run_dir(out: Path, spec: RunSpec) -> None:
    """Refuse to mix two different runs in one directory; remember this one's spec."""
    path = out / RUN_FILE
    if path.exists():
        old, new = _binding(load_spec(out)), _binding(spec)
        if old != new:
            diff = [f"{k}" for k in new if old.get(k) != new[k]]
            raise VQGenError(f"{out} holds a run with other settings ({', '.join(diff)} differ); "
                             "re-run with the same options or choose a new --out")
    elif out.exists() and any(p.name in ("vqvae", "prior", "latents") for p in out.iterdir()):
        raise VQGenError(f"{out} holds files of an unknown run (no {RUN_FILE}); choose a new --out")
    write_json(path, spec.to_json())


def require_run_dir(out: str | Path) -> None:
    """Refuse a directory that holds no run, before anything (a lock file) is written into it."""
    if not (Path(out) / RUN_FILE).exists():
        raise VQGenError(f"{out} is not a vqgen run directory (no {RUN_FILE}); pass the --out of a `vqgen run`")


def load_spec(out: str | Path) -> RunSpec:
    """The spec of the run in `out`, for commands that work on a finished run (e.g. `vqgen eval`)."""
    require_run_dir(out)
    path = Path(out) / RUN_FILE
    return RunSpec.from_json(read_json(path, "run description"), str(path))
