"""Command-line options generated from the config dataclasses, so each option is defined once.

Every generated flag defaults to None: a value the user did not give comes from the preset,
and a value the user gave always wins (STYLE.md: checkpoints never silently override flags).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Iterable, TypeVar

from vqgen.engine.configs import _is_optional, field_types, parse_field
from vqgen.engine.errors import UsageError

C = TypeVar("C")

HELP = {
    "hidden": "channels of the encoder/decoder convolutions",
    "res_hidden": "channels inside each residual block",
    "res_blocks": "residual blocks in the encoder and in the decoder",
    "downsamples": "stride-2 convolutions; the code grid is the image size / 2**downsamples",
    "code_dim": "D, the dimension of each code vector",
    "codebook_size": "K, the number of codes",
    "quantizer": "ema: codebook by exponential moving averages; straight_through: codebook loss",
    "beta": "commitment cost (eq. 3 of van den Oord et al. 2017)",
    "decay": "EMA decay of the codebook statistics",
    "kmeans_init": "initialise the codebook by k-means on the first batch",
    "restart_threshold": "restart codes whose EMA usage count falls below this (0: never)",
    "restart_every": "steps between dead-code restarts",
    "cosine": "l2-normalised codes and encoder outputs (cosine-similarity lookup)",
    "lookup_dim": "search codes in a projected space of this dimension (none: in D)",
    "steps": "optimizer steps",
    "max_seconds": "a time budget: stop after this many seconds of training steps, evaluate and save, even short of "
                   "--steps (0: none); a resume spends what is left",
    "batch_size": "global batch size (split across torchrun processes)",
    "lr": "Adam learning rate",
    "grad_clip": "clip the gradient norm to this (0: off)",
    "seed": "fixes data order, initialisation and sampling",
    "precision": "autocast precision (auto: bf16 where the CPU or GPU computes it natively, else fp32); "
                 "quantizer distances and EMA always stay fp32",
    "device": "auto (GPU when present), cpu or cuda[:N]",
    "compile": "torch.compile the model (falls back with a warning where unsupported)",
    "num_workers": "data-loader worker processes",
    "log_every": "steps between metrics.jsonl records",
    "eval_every": "steps between held-out evaluations",
    "checkpoint_every": "steps between checkpoints",
    "warmup": "steps of linear learning-rate warm-up (0: none)",
    "schedule": "learning rate after warm-up: constant, or cosine decay to 0 at the last step",
    "ema": "decay of an exponential moving average of the weights, used for eval and saved as the model's weights "
           "(0: off)",
    "channels": "channels of each PixelCNN stack",
    "layers": "gated layers",
    "first_kernel": "kernel size of the first (mask A) layer",
    "kernel": "kernel size of the other layers",
    "head_channels": "channels of the skip connections and the output head",
    "skips": "sum a skip connection from every gated layer into the head (off: the head reads the last layer)",
    "dropout": "dropout of the gated features in training (0: off)",
}


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_config_options(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                       skip: Iterable[str] = (), title: str | None = None) -> None:
    """One flag per dataclass field (`--prefix-field-name`), grouped under the config's name."""
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, tp in field_types(cls).items():
        if name in skip:
            continue
        _, inner = _is_optional(tp)
        text = f"{HELP.get(name, name.replace('_', ' '))} (preset default: {defaults[name]})"
        kwargs: dict[str, Any] = {"dest": prefix.replace("-", "_") + name, "default": None, "help": text}
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(inner) is typing.Literal:
            kwargs["choices"] = typing.get_args(inner)
        else:
            kwargs["metavar"] = {int: "N", float: "X", str: "S"}.get(inner, "V")
        group.add_argument(_flag(prefix, name), **kwargs)


def config_from_args(args: argparse.Namespace, base: C, prefix: str = "", **fixed: Any) -> C:
    """`base` with every flag the user gave (and `fixed` values) replaced; errors name the flag."""
    types_ = field_types(type(base))
    changes = dict(fixed)
    for name, tp in types_.items():
        value = getattr(args, prefix.replace("-", "_") + name, None)
        if value is not None and name not in fixed:
            changes[name] = parse_field(tp, value, _flag(prefix, name))
    try:
        return dataclasses.replace(base, **changes)  # type: ignore[type-var]
    except UsageError as err:
        raise UsageError(_name_flags(str(err), prefix, types_)) from None


def _name_flags(message: str, prefix: str, names: Iterable[str]) -> str:
    """'steps=0 is not allowed' -> '--vqvae-steps=0 is not allowed', naming the flag to change."""
    for name in names:
        if message.startswith(f"{name}="):
            return _flag(prefix, name) + message[len(name):]
    return message
