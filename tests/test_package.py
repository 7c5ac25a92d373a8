"""Our top-level packages are the ones Python imports, not same-named packages from elsewhere."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["data", "stage1_vqvae", "stage2_prior", "pipeline"])
def test_import_gives_ours(name: str) -> None:
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == REPO / name


def test_stage_two_never_imports_stage_one() -> None:
    for path in (REPO / "stage2_prior").glob("*.py"):
        assert "stage1_vqvae" not in path.read_text(), path


def test_cli_help_lists_generated_options(capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    for command, options in (("train-vqvae", ["--codebook-size", "--quantizer", "--precision", "--steps"]),
                             ("train-prior", ["--layers", "--channels", "--lr"]),
                             ("run", ["--vqvae-codebook-size", "--prior-layers", "--prior-steps", "--seed"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(option in text for option in options), command
