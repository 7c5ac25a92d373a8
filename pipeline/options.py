"""Command-line options generated from the config dataclasses, so each option is defined once.

A field's flag, help text and whether it has one at all come from the rules on the field
(engine/configs.py `option`). A generated flag the user leaves out is absent from the parsed
arguments: the value then comes from the preset (or, when sampling, from the prior's saved
defaults), and a value the user gave always wins, `none` included (STYLE.md: checkpoints never
silently override flags). Library errors name fields; `flags_named` turns them into the flags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import typing
from typing import Any, Iterable, Iterator, TypeVar

from vqgen.engine.configs import _is_optional, field_types, parse_field
from vqgen.engine.errors import UsageError

C = TypeVar("C")


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return prefix.replace("-", "_") + name


def _flag_name(field: dataclasses.Field) -> str:
    """The flag's own name: a search over a sampling option (EvalOptions.temperatures) takes the option's."""
    return field.metadata.get("scores") or field.name


def has_flag(field: dataclasses.Field) -> bool:
    return field.metadata.get("flag", True) and not field.metadata.get("from_data", False)


def add_config_options(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: Iterable[str] = (),
                       title: str | None = None, default_text: str = "preset default", defaults: Any = None) -> None:
    """One flag per field of `cls` that has one (`--prefix-field-name`), grouped under `title`; a tuple field
    takes one or more values. The help shows each field's default, or its value in `defaults` (an instance of
    `cls`) for a command whose values start there."""
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    types_ = field_types(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not has_flag(field):
            continue
        inner = _is_optional(types_[field.name])[1]
        kwargs: dict[str, Any] = {"dest": _dest(prefix, field.name), "default": argparse.SUPPRESS,
                                  "help": f"{field.metadata['help']} ({default_text}: "
                                          f"{_shown(getattr(defaults, field.name) if defaults else field.default)})"}
        if typing.get_origin(inner) is tuple:
            kwargs["nargs"], inner = "+", _is_optional(typing.get_args(inner)[0])[1]
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(inner) is typing.Literal:
            kwargs["choices"] = typing.get_args(inner)
        else:
            kwargs["metavar"] = {int: "N", float: "X", str: "S"}.get(inner, "V")
        group.add_argument(_flag(prefix, _flag_name(field)), **kwargs)


def _shown(default: Any) -> str:
    if isinstance(default, tuple):
        return " ".join(str(v) for v in default)
    return "none" if default is None else str(default)


def given(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` whose flags the user gave, parsed (None where they wrote 'none')."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {name: parse_field(tp, getattr(args, _dest(prefix, name)), _flag(prefix, _flag_name(fields[name])))
            for name, tp in field_types(cls).items() if hasattr(args, _dest(prefix, name))}


def checked_overrides(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` given on the command line, each checked now on the defaults of `cls` (before any
    model or file is read), to replace fields of a config known later (a prior's saved sampling defaults)."""
    with flags_named(cls, prefix):
        overrides = given(args, cls, prefix)
        dataclasses.replace(cls(), **overrides)
    return overrides


def config_from_args(args: argparse.Namespace, base: C, prefix: str = "", **fixed: Any) -> C:
    """`base` with every flag the user gave (and `fixed` values) replaced; errors name the flag."""
    with flags_named(type(base), prefix):
        return dataclasses.replace(base, **{**given(args, type(base), prefix), **fixed})  # type: ignore[type-var]


@contextlib.contextmanager
def flags_named(cls: type, prefix: str = "") -> Iterator[None]:
    """Turn a library error that names a field of `cls` ('steps=0 is not allowed') into one that names its
    flag ('--vqvae-steps=0 is not allowed'), for a command line user."""
    try:
        yield
    except UsageError as err:
        message = str(err)
        for field in dataclasses.fields(cls):
            for name in dict.fromkeys((field.name, _flag_name(field))):
                if message.startswith(f"{name}="):
                    raise UsageError(_flag(prefix, _flag_name(field)) + message[len(name):]) from None
        raise
