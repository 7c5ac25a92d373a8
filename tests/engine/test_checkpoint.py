"""Checkpoint directories: exact round trip in safetensors, old model.pt directories, and clear refusals of
corrupt, foreign or pickled files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from vqgen.engine.checkpoint import Pretrained, weights_path, write_config
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import atomic_write, load_safetensors, load_tensors, save_safetensors
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.export import file_sha256
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    VQVAE(VQVAEConfig.tiny()).save_pretrained(tmp_path / "vqvae")
    return tmp_path / "vqvae"


def save_as_vqgen_0_2(model: Pretrained, directory: Path) -> None:
    """A checkpoint as vqgen 0.2 (main before safetensors) wrote it: torch.save of the state dict as model.pt,
    then config.json."""
    directory.mkdir(parents=True)
    torch.save(model.state_dict(), directory / "model.pt")
    write_config(directory, model.kind, model.config, model.version)


def test_round_trip_gives_identical_outputs(saved: Path) -> None:
    images = torch.rand(2, 1, 28, 28)
    original = VQVAE.from_pretrained(saved)
    again = VQVAE.from_pretrained(saved)
    assert torch.equal(original(images).reconstruction, again(images).reconstruction)
    assert json.loads((saved / "config.json").read_text())["kind"] == "vqvae"
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("model, inputs", [
    (VQVAE(VQVAEConfig.tiny()), (torch.rand(2, 1, 28, 28),)),
    (GatedPixelCNN(PriorConfig.tiny(num_classes=3)), (torch.randint(0, 16, (2, 7, 7)), torch.tensor([0, 2]))),
], ids=["vqvae", "prior"])
def test_a_model_pt_directory_of_vqgen_0_2_loads_to_the_same_outputs(tmp_path: Path, model: Pretrained,
                                                                   inputs: tuple) -> None:
    model = model.eval()
    save_as_vqgen_0_2(model, tmp_path / "old")
    loaded = type(model).from_pretrained(tmp_path / "old")
    with torch.no_grad():
        expected, got = model(*inputs), loaded(*inputs)
    expected, got = (getattr(x, "reconstruction", x) for x in (expected, got))
    assert torch.equal(expected, got)
    assert weights_path(tmp_path / "old") == tmp_path / "old" / "model.pt"


def test_saving_into_an_old_directory_leaves_one_weights_file(tmp_path: Path) -> None:
    """A resumed old run saves model.safetensors; its stale model.pt goes, so no reader meets two."""
    save_as_vqgen_0_2(VQVAE(VQVAEConfig.tiny()), tmp_path / "vqvae")
    newer = VQVAE(VQVAEConfig.tiny())
    torch.nn.init.constant_(newer.decoder.net[-1].bias, 0.25)  # weights the old file does not hold
    newer.save_pretrained(tmp_path / "vqvae")
    assert sorted(p.name for p in (tmp_path / "vqvae").iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(VQVAE.from_pretrained(tmp_path / "vqvae").decoder.net[-1].bias, newer.decoder.net[-1].bias)


def test_safetensors_is_preferred_over_an_old_model_pt(saved: Path) -> None:
    torch.save({"junk": torch.ones(1)}, saved / "model.pt")  # a leftover that must never be read
    assert weights_path(saved) == saved / "model.safetensors"
    VQVAE.from_pretrained(saved)


def test_truncated_weights_are_refused_in_one_line(saved: Path) -> None:
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(VQGenError, match="not a readable safetensors file.*truncated, corrupt") as caught:
        VQVAE.from_pretrained(saved)
    assert "\n" not in str(caught.value)


def test_a_pickle_named_model_safetensors_is_refused(saved: Path) -> None:
    torch.save(VQVAE(VQVAEConfig.tiny()).state_dict(), saved / "model.safetensors")
    with pytest.raises(VQGenError, match="not a readable safetensors file"):
        VQVAE.from_pretrained(saved)


def test_foreign_safetensors_weights_are_refused(saved: Path) -> None:
    save_safetensors(saved / "model.safetensors", {"text_model.embeddings.weight": torch.zeros(4, 2)})
    with pytest.raises(VQGenError, match="model.safetensors does not match its config.json") as caught:
        VQVAE.from_pretrained(saved)
    assert "\n" not in str(caught.value)


def test_truncated_old_weights_are_refused(tmp_path: Path) -> None:
    save_as_vqgen_0_2(VQVAE(VQVAEConfig.tiny()), tmp_path / "old")
    data = (tmp_path / "old" / "model.pt").read_bytes()
    (tmp_path / "old" / "model.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(VQGenError, match="truncated or corrupt"):
        VQVAE.from_pretrained(tmp_path / "old")


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    save_as_vqgen_0_2(VQVAE(VQVAEConfig.tiny()), tmp_path / "old")
    torch.save({"weights": Payload()}, tmp_path / "old" / "model.pt")
    with pytest.raises(VQGenError, match="refusing to unpickle"):
        VQVAE.from_pretrained(tmp_path / "old")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda c: {**c, "kind": "prior"}, "holds a 'prior' checkpoint, not a 'vqvae' one"),
    (lambda c: {**c, "colour": "blue"}, "unknown keys \\['colour'\\]"),
    (lambda c: {**c, "version": 7}, "version 7"),
    (lambda c: {**c, "hidden": "wide"}, "hidden='wide' is not an integer"),
])
def test_foreign_or_damaged_config_is_refused(saved: Path, edit, message: str) -> None:
    path = saved / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(VQGenError, match=message):
        VQVAE.from_pretrained(saved)


def test_weights_that_disagree_with_config_are_refused(saved: Path) -> None:
    path = saved / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hidden": 24}))
    with pytest.raises(VQGenError, match="does not match its config.json"):
        VQVAE.from_pretrained(saved)


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(VQGenError, match="vqvae directory not found"):
        VQVAE.from_pretrained(tmp_path / "nowhere")


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "f.pt"
    torch.save({"x": torch.ones(2)}, target)

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(VQGenError, match="No space left on device.*previous version"):
        atomic_write(target, failing)
    assert torch.equal(load_tensors(target)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"]


def test_an_old_run_resumed_reexports_nothing(tmp_path: Path, folder: Path) -> None:
    """A finished run of vqgen 0.2 (model.pt weights, latents stamped with model.pt's sha256) run again:
    its latents are current, so nothing is exported or trained, and its weights stay as they are."""
    from helpers import TINY_RUN, vqgen

    out = tmp_path / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN) == 0
    for stage in ("vqvae", "prior"):
        state = load_safetensors(out / stage / "model.safetensors")
        (out / stage / "model.safetensors").unlink()
        torch.save(state, out / stage / "model.pt")
    for split in ("train", "test"):
        manifest = out / "latents" / split / "manifest.json"
        raw = json.loads(manifest.read_text())
        stamp = {**raw["vqvae"], "sha256": file_sha256(out / "vqvae" / "model.pt")}
        manifest.write_text(json.dumps({**raw, "vqvae": stamp}))
    watched = [out / "latents" / split / "codes.npy" for split in ("train", "test")] + [out / "vqvae" / "model.pt"]
    before = [p.stat().st_mtime_ns for p in watched]
    (out / "samples" / "grid.png").unlink()  # sampled again, from the old weights
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN) == 0
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert not (out / "vqvae" / "model.safetensors").exists() and (out / "samples" / "grid.png").exists()
