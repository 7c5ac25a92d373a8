"""Horizontal-flip augmentation as a dataset: the split and its mirror images, for both stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vqgen.data.builtin import make_builtin
from vqgen.data.images import Mirrored
from helpers import TINY_RUN, vqgen


def test_mirrored_holds_every_image_and_its_mirror_with_the_same_label() -> None:
    data = make_builtin("test", count=6)
    mirrored = Mirrored(data)
    assert len(mirrored) == 12 and mirrored.info == data.info
    images, labels = mirrored.__getitems__([0, 7, 6, 5, 11])
    originals, original_labels = data.__getitems__([0, 1, 0, 5, 5])
    assert torch.equal(images[0], originals[0]) and torch.equal(images[3], originals[3])
    assert torch.equal(images[1], originals[1].flip(2)) and torch.equal(images[2], originals[2].flip(2))
    assert torch.equal(images[4], originals[4].flip(2))
    assert torch.equal(labels, original_labels)


def test_a_flipped_run_exports_twice_the_train_grids(tmp_path: Path, folder: Path) -> None:
    out = tmp_path / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN, "--flip") == 0
    train = json.loads((out / "latents" / "train" / "manifest.json").read_text())
    test = json.loads((out / "latents" / "test" / "manifest.json").read_text())
    assert train["count"] == 2 * 48 and test["count"] == 16  # the held-out split is never mirrored
    labels = np.load(out / "latents" / "train" / "labels.npy")
    assert (labels[:48] == labels[48:]).all()
    assert json.loads((out / "run.json").read_text())["flip"] is True
