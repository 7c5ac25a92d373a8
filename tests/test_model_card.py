"""`vqgen export-model`: a finished run as one folder ready for the Hub (two models in safetensors, a model
card, the sample grid), which loads to the run's own samples; unfinished or missing runs are one line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from test_cli import TINY_RUN, vqgen
from vqgen.engine.files import load_safetensors
from vqgen.engine.trainer import TrainConfig
from vqgen.pipeline.generate import Generator
from vqgen.pipeline.model_card import front_matter
from vqgen.pipeline.spec import RunSpec
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage2_prior.config import PriorConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    """A tiny finished run of the two-class folder, not evaluated."""
    out = tmp_path_factory.mktemp("card") / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN) == 0
    return out


def samples_of(generator: Generator) -> torch.Tensor:
    return generator.sample(4, labels=torch.tensor([0, 0, 1, 1]), seed=3, progress=False).images


def test_export_writes_a_folder_ready_for_the_hub(run: Path, folder: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model"
    assert vqgen("export-model", "--run", run, "--out", out) == 0
    assert capsys.readouterr().out.startswith(f"model folder written to {out} (vqvae/, prior/, README.md)")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "README.md", "prior", "prior/config.json", "prior/model.safetensors", "samples.png",
        "vqvae", "vqvae/config.json", "vqvae/model.safetensors"]
    assert (out / "samples.png").read_bytes() == (run / "samples" / "grid.png").read_bytes()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vqgen\n") and "- class-conditional\n---\n" in card
    assert f"the image folder '{folder.name}': 48 images of 1x16x16" in card and str(folder) not in card
    assert "![samples](samples.png)" in card and "Samples were not scored" in card


def test_the_exported_folder_loads_to_the_runs_samples(run: Path, tmp_path: Path) -> None:
    assert vqgen("export-model", "--run", run, "--out", tmp_path / "model") == 0
    exported = Generator.from_pretrained(tmp_path / "model", device="cpu")
    original = Generator.from_pretrained(run / "vqvae", run / "prior", device="cpu")
    assert torch.equal(samples_of(exported), samples_of(original))


def test_an_old_run_is_exported_in_safetensors(run: Path, tmp_path: Path) -> None:
    """A run of vqgen 0.2 (model.pt weights) exports as today's: model.safetensors, the same samples."""
    old = Path(shutil.copytree(run, tmp_path / "old"))
    for stage in ("vqvae", "prior"):
        torch.save(load_safetensors(old / stage / "model.safetensors"), old / stage / "model.pt")
        (old / stage / "model.safetensors").unlink()
    assert vqgen("export-model", "--run", old, "--out", tmp_path / "model") == 0
    assert not list((tmp_path / "model").rglob("model.pt"))
    assert torch.equal(samples_of(Generator.from_pretrained(tmp_path / "model", device="cpu")),
                       samples_of(Generator.from_pretrained(run / "vqvae", run / "prior", device="cpu")))


@pytest.mark.parametrize("damage, message", [
    (lambda r: shutil.rmtree(r), "is not a vqgen run directory"),
    (lambda r: (r / "report.json").unlink(), r"is not finished \(no report.json\)"),
    (lambda r: (r / "prior" / "model.safetensors").unlink(), r"has no trained prior .* holds no weights"),
], ids=["no run", "unfinished", "no prior"])
def test_a_run_that_cannot_be_exported_is_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   damage, message: str) -> None:
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    damage(copy)
    assert vqgen("export-model", "--run", copy, "--out", tmp_path / "model") == 1
    err = capsys.readouterr().err
    assert err.startswith("vqgen export-model: error: ") and err.count("\n") == 1
    assert re.search(message, err) and not (tmp_path / "model").exists()


def test_an_existing_folder_is_not_overwritten(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "model").mkdir()
    assert vqgen("export-model", "--run", run, "--out", tmp_path / "model") == 1
    assert "already exists" in capsys.readouterr().err and not any((tmp_path / "model").iterdir())


def test_a_known_dataset_is_named_by_its_hub_id() -> None:
    spec = RunSpec(data="mnist", data_root="/home/someone/data", vqvae=VQVAEConfig.tiny(), vqvae_train=TrainConfig(),
                   prior=PriorConfig.tiny(), prior_train=TrainConfig())
    assert "datasets:\n- ylecun/mnist\n---" in front_matter(spec, conditional=True)
