"""`vqgen export-model`: a finished run as one folder ready for the Hub (two models in safetensors, a model
card, the sample grid), which loads to the run's own samples; unfinished or missing runs are one line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import REPO, TINY_RUN, vqgen
from vqgen.engine.checkpoint import saved_step
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import load_safetensors
from vqgen.engine.train_config import TrainConfig
from vqgen.pipeline.export_model import export_model
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


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    """A tiny run on the folder and its mirror images whose prior a time budget of 1 ns stops after one step."""
    out = tmp_path_factory.mktemp("budget") / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN, "--flip", "--prior-max-seconds", "1e-9") == 0
    return out


def card_of(run: Path, out: Path) -> str:
    assert vqgen("export-model", "--run", run, "--out", out) == 0
    return (out / "README.md").read_text()


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
    assert card.startswith("---\nlibrary_name: vqgen\nlicense: mit\n") and "- class-conditional\n---\n" in card
    assert (REPO / "LICENSE").read_text().startswith("MIT License")  # the license the card states
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


def test_the_card_states_the_steps_trained_not_those_configured(budget_run: Path, tmp_path: Path) -> None:
    card = card_of(budget_run, tmp_path / "model")
    assert (saved_step(budget_run / "vqvae"), saved_step(budget_run / "prior")) == (4, 1)
    assert "code grid | 4 steps, batch 8," in card
    assert "label dropout 0.1 | 1 step (time budget of 1e-09 s; 4 configured), batch 8," in card


def test_a_mirrored_run_counts_its_images_once(budget_run: Path, folder: Path, tmp_path: Path) -> None:
    card = card_of(budget_run, tmp_path / "model")
    assert (f"the image folder '{folder.name}': 48 images of 1x16x16 (channels x height x width), 2 classes, "
            "and their 48 horizontal mirror images." in card)


def test_the_usage_snippet_runs_on_the_exported_folder(run: Path, tmp_path: Path) -> None:
    """A two-class model: the card's code, pointed at the folder, samples what its comment says."""
    card = card_of(run, tmp_path / "model")
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("OWNER/NAME", str(tmp_path / "model"))
    scope: dict = {}
    exec(snippet, scope)
    assert scope["samples"].images.shape == (16, 1, 16, 16) and scope["samples"].labels.eq(0).all()
    assert "# 16 samples of class 0 (labels run 0 to 1); .images" in snippet


def test_only_an_unconditional_model_claims_the_unconditional_pipeline() -> None:
    """The Hub's image-generation tasks are text-to-image, image-to-image and unconditional-image-generation;
    a class-conditional model fits none, so its card names no pipeline_tag (its tags say class-conditional)."""
    spec = RunSpec(data="mnist", data_root=None, vqvae=VQVAEConfig.tiny(), vqvae_train=TrainConfig(),
                   prior=PriorConfig.tiny(), prior_train=TrainConfig())
    assert "pipeline_tag" not in front_matter(spec, conditional=True)
    assert "\npipeline_tag: unconditional-image-generation\n" in front_matter(spec, conditional=False)


def test_a_mistyped_run_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(VQGenError, match="TYPO is not a vqgen run directory") as caught:
        export_model(tmp_path / "TYPO", tmp_path / "model")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "TYPO").exists() and not (tmp_path / "model").exists()


def test_a_prior_with_attention_runs_end_to_end_and_its_card_says_so(folder: Path, tmp_path: Path) -> None:
    """`--prior-attention-every` from the command line reaches the prior, its config file, the card and the
    exported folder's sampler."""
    out = tmp_path / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN, "--prior-layers", "3",
                 "--prior-attention-every", "1", "--prior-attention-heads", "2") == 0
    prior = Generator.from_pretrained(out).prior
    assert prior.config.attention_after == (0, 1) and len(prior.attention) == 2
    card = card_of(out, tmp_path / "model")
    assert "3 layers of 8 channels, 2 causal attention layers (2 heads), " in card
    assert samples_of(Generator.from_pretrained(tmp_path / "model")).shape[0] == 4
