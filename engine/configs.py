"""Frozen config dataclasses <-> JSON, with one rule for parsing and checking field values, and the
rules each field carries.

The CLI (pipeline/options.py) and the checkpoint loader both go through `parse_field`, so a value
is judged the same way whether it comes from a flag or from a config.json. What a field means beyond
its type sits on the field itself (`option`): its help text, whether a resumed run must keep it, and
whether `vqgen run` shares it between its stages, fills it from the data, or sets it per command.
Every list of such fields (the flags a command offers, the options a resume compares) is derived
from there (`fields_where`), so adding a field is one edit.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from vqgen.engine.errors import UsageError, VQGenError

C = TypeVar("C")

# A field's `resume` rule. binding: a resumed stage or run must keep its value (it changes the numbers);
# budget: how long a stage trains, which a resumed stage may change (a resumed `vqgen run` may not: its
# stages are skipped by it); runtime: how the work runs, never what it computes.
RESUME_RULES = ("binding", "budget", "runtime")


def option(default: Any, help: str, resume: str | None = None, shared: bool = False, from_data: bool = False,
           flag: bool = True, scores: str | None = None) -> Any:
    """A config field with its rules: `help` for its flag; `resume` (RESUME_RULES; None where a config is
    never resumed); `shared`: one flag sets it for both stages of `vqgen run`; `from_data`: filled from
    the dataset, never a flag; `flag` False: set by the command, not by a flag of its own; `scores`: the
    sampling option whose values this field lists for a search (its flag takes that option's name)."""
    if resume is not None and resume not in RESUME_RULES:
        raise ValueError(f"resume={resume!r} is not one of {RESUME_RULES}")
    return dataclasses.field(default=default, metadata={"help": help, "resume": resume, "shared": shared,
                                                        "from_data": from_data, "flag": flag, "scores": scores})


def fields_where(cls: type, **wanted: Any) -> tuple[str, ...]:
    """Names of the fields of `cls` whose rules (`option`) have the values `wanted`, in field order."""
    return tuple(f.name for f in dataclasses.fields(cls)
                 if all(f.metadata.get(key) == value for key, value in wanted.items()))


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def parse_field(tp: Any, value: Any, name: str) -> Any:
    """Convert a JSON or command-line value to the field's type; raise UsageError naming the field."""
    optional, inner = _is_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise UsageError(f"{name}: a value is required")
    if typing.get_origin(inner) is tuple:  # tuple[X, ...]: a list of values, each parsed as an X
        values = value if isinstance(value, (list, tuple)) else [value]
        return tuple(parse_field(typing.get_args(inner)[0], v, name) for v in values)
    if typing.get_origin(inner) is typing.Literal:
        allowed = typing.get_args(inner)
        if value not in allowed:
            raise UsageError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UsageError(f"{name}={value!r} is not a boolean; use true or false")
    if inner in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            converted = inner(value)
            if inner is int and float(value) != converted:
                raise ValueError
            return converted
        except (TypeError, ValueError):
            raise UsageError(f"{name}={value!r} is not {'an integer' if inner is int else 'a number'}") from None
    if inner is str:
        return str(value)
    raise TypeError(f"unsupported config field type {tp} for {name}")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Rebuild a config, refusing unknown keys (a foreign or newer file) with their names."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise VQGenError(f"{source} has unknown keys {unknown} for {cls.__name__}; "
                         "it was written by another tool or a newer vqgen")
    try:
        return cls(**{k: parse_field(types_[k], v, k) for k, v in values.items()})
    except UsageError as err:
        raise VQGenError(f"{source}: {err}") from None
    except TypeError as err:
        raise VQGenError(f"{source} is incomplete for {cls.__name__}: {err}") from None


def require(condition: bool, message: str) -> None:
    """Config validation: one line naming the option, the value and what is allowed."""
    if not condition:
        raise UsageError(message)
