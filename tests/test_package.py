"""One import name, `vqgen`: the wheel installs nothing else at the top of site-packages, and outside
the repository the folder names (`data`, `pipeline`, ...) are not importable on their own."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

FOLDERS = ("data", "engine", "stage1_vqvae", "stage2_prior", "pipeline")


def test_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("vqgen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"vqgen", wheel.name.split("-py")[0] + ".dist-info"}
    for folder in FOLDERS:
        assert f"vqgen/{folder}/__init__.py" in names, folder
    assert "vqgen/engine/trainer.py" in names and "vqgen/stage2_prior/sampling.py" in names


def test_only_vqgen_imports_outside_the_repository(tmp_path: Path) -> None:
    probe = ("import importlib.util, vqgen\n"
             "assert vqgen.Generator.__module__ == 'vqgen.pipeline.generate'\n"
             f"print([n for n in {FOLDERS + ('bench',)!r} if importlib.util.find_spec(n) is not None])\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_api_loads_on_first_use(tmp_path: Path) -> None:
    """`import vqgen` (and a loader worker unpickling a dataset) imports no part until a name is used."""
    probe = ("import sys, vqgen\n"
             "assert not [m for m in sys.modules if m.startswith('vqgen.')], sorted(sys.modules)\n"
             "assert not [n for n in vqgen.__all__ if getattr(vqgen, n, None) is None]\n"
             "assert set(vqgen.__all__) <= set(dir(vqgen))\n"
             "assert vqgen.sample_codes.__module__ == 'vqgen.stage2_prior.sampling'\n"
             "try:\n    vqgen.nothing\nexcept AttributeError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "module 'vqgen' has no attribute 'nothing'"


def test_every_internal_import_goes_through_vqgen() -> None:
    """`data.x` beside `vqgen.data.x` would load one file as two modules (two copies of every error class)."""
    bare = tuple(f"{kind} {folder}" for folder in FOLDERS for kind in ("from", "import"))
    for path in REPO.glob("*/*.py"):
        if path.parts[-2] in (".venv", "build"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            assert not stripped.startswith(tuple(f"{b}." for b in bare) + tuple(f"{b} " for b in bare)), \
                f"{path.relative_to(REPO)}:{number}: {stripped}"


def test_stage_two_never_imports_stage_one() -> None:
    for path in (REPO / "stage2_prior").glob("*.py"):
        assert "stage1_vqvae" not in path.read_text(), path


def test_cli_help_lists_generated_options(capsys: pytest.CaptureFixture) -> None:
    from vqgen.pipeline.cli import main

    for command, options in (("train-vqvae", ["--codebook-size", "--quantizer", "--precision", "--steps"]),
                             ("train-prior", ["--layers", "--channels", "--lr"]),
                             ("run", ["--vqvae-codebook-size", "--prior-layers", "--prior-steps", "--seed"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(option in text for option in options), command


def test_version_names_the_machine(capsys: pytest.CaptureFixture) -> None:
    import torch

    import vqgen
    from vqgen.pipeline.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    line, rates = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"vqgen {vqgen.__version__} (torch {torch.__version__}") and "CPU " in line
    fp32, bf16 = (float(value) for value in re.findall(r"(?:fp32|bf16) (\d+) GFLOP/s", rates))
    assert fp32 > 0 and bf16 > 0 and "--precision auto is" in rates  # the rate a run logs, to scale docs/performance.md's times
