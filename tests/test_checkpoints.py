"""Checkpoint directories: exact round trip, and clear refusals of corrupt, foreign or pickled files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from vqgen.engine.errors import VQGenError
from vqgen.engine.files import atomic_write, load_tensors
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    VQVAE(VQVAEConfig.tiny()).save_pretrained(tmp_path / "vqvae")
    return tmp_path / "vqvae"


def test_round_trip_gives_identical_outputs(saved: Path) -> None:
    images = torch.rand(2, 1, 28, 28)
    original = VQVAE.from_pretrained(saved)
    again = VQVAE.from_pretrained(saved)
    assert torch.equal(original(images).reconstruction, again(images).reconstruction)
    assert json.loads((saved / "config.json").read_text())["kind"] == "vqvae"


def test_truncated_weights_are_refused(saved: Path) -> None:
    data = (saved / "model.pt").read_bytes()
    (saved / "model.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(VQGenError, match="truncated or corrupt"):
        VQVAE.from_pretrained(saved)


def test_pickled_object_is_refused(saved: Path, tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"weights": Payload()}, saved / "model.pt")
    with pytest.raises(VQGenError, match="refusing to unpickle"):
        VQVAE.from_pretrained(saved)
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
