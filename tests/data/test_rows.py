"""Held-out rows are a random sample of each class, drawn by the seed, never the first rows of a file:
files are often ordered (MNIST's first test images are its easiest), so every figure computed on part
of a split would describe the start of the file rather than the split."""

from __future__ import annotations


import torch

from vqgen.data.images import DatasetInfo, ImageDataset
from vqgen.data.rows import spread_rows
from vqgen.pipeline.evaluation.held_out import held_out
from vqgen.pipeline.evaluation.likelihood import bits_per_dim
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import evaluate_vqvae
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN

CLASSES, PER_CLASS = 3, 200


def sorted_labels() -> torch.Tensor:
    return torch.arange(CLASSES).repeat_interleave(PER_CLASS)  # (600,): class 0's rows first, as in a folder


def ordered_images(count: int = 400) -> ImageDataset:
    """Ten classes sorted by label, each class's images getting brighter with their row: a file whose
    first rows of a class differ from the rest, as MNIST's test split does."""
    labels = torch.arange(10).repeat_interleave(count // 10)
    brightness = (torch.arange(count) % (count // 10)).float() / (count // 10)  # 0 -> 1 within each class
    pixels = (brightness[:, None, None, None] * 255 * torch.rand(count, 1, 8, 8)).to(torch.uint8)
    return ImageDataset(pixels, labels, DatasetInfo("ordered", "test", 1, 8, 8, 10, tuple(map(str, range(10)))))


def test_rows_are_drawn_at_random_within_each_class_and_taken_in_turn() -> None:
    labels = sorted_labels()
    rows = spread_rows(labels, len(labels), 60, seed=0)
    assert len(set(rows)) == 60 and labels[rows].tolist() == [0, 1, 2] * 20  # a row of each class in turn
    depth = torch.tensor(rows) % PER_CLASS  # (60,) position of each row within its class
    assert 60 < float(depth.float().mean()) < 140  # the first 20 rows of each class would average 9.5
    assert int(depth.max()) > 100
    assert spread_rows(labels.numpy(), len(labels), 60, seed=0) == rows  # latents keep their labels in numpy


def test_the_seed_chooses_the_rows_and_the_same_seed_the_same_rows() -> None:
    labels = sorted_labels()
    assert spread_rows(labels, len(labels), 30, seed=1) == spread_rows(labels, len(labels), 30, seed=1)
    assert set(spread_rows(labels, len(labels), 30, seed=1)) != set(spread_rows(labels, len(labels), 30, seed=2))
    assert sorted(spread_rows(labels, len(labels), 10_000, seed=1)) == list(range(len(labels)))  # all of them
    assert spread_rows(labels, len(labels), 0, seed=1) == []


def test_unlabelled_rows_are_a_random_sample() -> None:
    rows = spread_rows(None, 1000, 50, seed=0)
    assert len(set(rows)) == 50 and max(rows) > 500 and rows != sorted(rows)
    assert rows == spread_rows(None, 1000, 50, seed=0) and rows != spread_rows(None, 1000, 50, seed=1)


def test_eval_sets_are_random_within_each_class_and_follow_the_seed() -> None:
    data = ordered_images()
    rows = held_out(data, n_per_class=5, seed=0)
    depth = rows.real % 40  # position within the class; the first 5 of each would all be < 5
    assert int(depth.max()) >= 10 and torch.bincount(rows.labels, minlength=10).tolist() == [5] * 10
    again, other = held_out(data, n_per_class=5, seed=0), held_out(data, n_per_class=5, seed=1)
    assert torch.equal(again.real, rows.real) and torch.equal(again.reference, rows.reference)
    assert not torch.equal(other.real, rows.real) and not torch.equal(other.reference, rows.reference)
    unlabelled = ImageDataset(data.images, None, data.info)
    first, second = held_out(unlabelled, 5, seed=0), held_out(unlabelled, 5, seed=1)
    assert not torch.equal(first.real, second.real)


def test_reconstruction_and_likelihood_figures_read_the_seeds_rows() -> None:
    """An ordered file: the first rows are dark, so figures over them would differ from a random sample."""
    data = ordered_images()
    torch.manual_seed(0)
    vqvae = VQVAE(VQVAEConfig.tiny(image_height=8, image_width=8)).eval()
    prior = GatedPixelCNN(PriorConfig.tiny(codebook_size=vqvae.config.codebook_size, grid_height=2,
                                           grid_width=2, num_classes=10)).eval()
    cpu = torch.device("cpu")
    by_seed = [evaluate_vqvae(vqvae, data, cpu, limit=40, seed=s)["mse"] for s in (0, 0, 1)]
    assert by_seed[0] == by_seed[1] != by_seed[2]
    likelihood = [bits_per_dim(vqvae, prior, data, data, count=40, seed=s)["bits_per_dim"] for s in (0, 0, 1)]
    assert likelihood[0] == likelihood[1] != likelihood[2]
