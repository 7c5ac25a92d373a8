"""Device choice, seeding, and a description of the machine for every figure."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from vqgen.engine.errors import UsageError

T = TypeVar("T")


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes the GPU when there is one, so the same command uses it without a flag."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device={name} was asked for but no CUDA GPU is available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device={name!r} is not a device; use auto, cpu or cuda[:N]") from None


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: CUDA GPUs from Ampere on, CPUs with AVX512-BF16
    or AMX. Elsewhere bf16 is emulated and slower than fp32 (`torch.cuda.is_bf16_supported()` counts
    emulation as support, and asks about the current GPU rather than `device`)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to a resolved precision ("fp32": none)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def first_call(model: torch.nn.Module, call: Callable[[torch.nn.Module], T], compile: bool) -> tuple[torch.nn.Module, T]:
    """`call(model)` through torch.compile(model) when `compile`, else on `model`: the module later calls should
    use, and the first call's result. torch.compile fails lazily, at the first call, so a failure falls back to
    `model` there, with a warning. The trainer's first step and the run budget's timed step both go through here,
    so a budget plans the step that will run."""
    if compile:
        try:
            compiled = torch.compile(model)
            return compiled, call(compiled)
        except Exception as err:  # noqa: BLE001 - any backend failure falls back to eager
            warnings.warn(f"torch.compile cannot work here ({type(err).__name__}: {err}); training without it")
    return model, call(model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_model() -> str:
    """The CPU's marketing name where Linux or macOS tells it (platform.processor() is often empty)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
        if name:
            return name
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What a figure was measured on; every benchmark and report carries it."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def describe_machine() -> str:
    """One line for `vqgen --version` and CI logs: where a result came from."""
    m = machine()
    return (f"torch {m['torch']}, Python {m['python']}, CPU {m['cpu']} ({m['cores']} cores), "
            f"GPU {m['gpu'] or 'none'}")
