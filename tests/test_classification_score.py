"""The classification accuracy score tells samples that teach the classes from samples that do not: a
"generator" that returns real images of the labels asked for scores at the real ceiling, one whose
labels are shuffled against its images scores near chance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vqgen.pipeline.evaluation.classification_score as cas
from vqgen.data.builtin import make_builtin
from vqgen.data.images import ImageDataset
from vqgen.pipeline.generate import Samples
from vqgen.stage2_prior.sampling import SamplingOptions


class RealImages:
    """Stands in for a Generator: each 'sample' is a real image of the class asked for, or, with
    `shuffle`, of the class of another sample's label (the labels permuted over the images)."""

    num_classes = 10

    def __init__(self, pool: ImageDataset, shuffle: bool) -> None:
        self.pool, self.shuffle = pool, shuffle

    def sample_with(self, n: int, labels: torch.Tensor, options: SamplingOptions, seed: int | None = None,
                    progress: bool = True) -> Samples:
        generator = torch.Generator().manual_seed(seed or 0)
        rows = []
        shown = labels[torch.randperm(n, generator=generator)] if self.shuffle else labels
        for label in shown.tolist():
            of_class = (self.pool.labels == label).nonzero().flatten()
            rows.append(int(of_class[torch.randint(len(of_class), (1,), generator=generator)]))
        images, _ = self.pool.__getitems__(rows)
        return Samples(images, torch.zeros(n, 1, 1, dtype=torch.long), labels)


@pytest.fixture(scope="module")
def digits() -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    return make_builtin("train", count=600), make_builtin("train", seed=1, count=600), make_builtin("test", count=300)


@pytest.mark.parametrize("shuffle", [False, True])
def test_cas_reads_whether_samples_teach_their_classes(shuffle: bool, digits: tuple, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cas, "CAS_IMAGES", 400)
    monkeypatch.setattr(cas, "CAS_STEPS", 80)
    train, pool, test = digits
    score = cas.classification_accuracy_score(RealImages(pool, shuffle), SamplingOptions(), train, test,
                                              tmp_path / "cas", seed=0, device="cpu", progress=False)
    assert score["images"] == 400 and score["real"] > 0.8
    if shuffle:
        assert score["samples"] < 0.25, f"samples with shuffled labels scored {score['samples']:.1%}"
    else:
        assert score["samples"] > score["real"] - 0.1, f"real images as samples scored {score['samples']:.1%}"


def test_samples_drawn_already_count_towards_each_class(digits: tuple, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Eval's fresh draw is part of CAS's samples: only what each class lacks is drawn, in class order."""
    monkeypatch.setattr(cas, "CAS_IMAGES", 100)
    trained: dict[str, ImageDataset] = {}
    monkeypatch.setattr(cas, "fit_judge", lambda config, data, test, out, *a, **k:
                        trained.setdefault(out.name, data) and (None, 0.5))
    train, pool, test = digits
    generator, asked = RealImages(pool, shuffle=False), []
    real_sample_with = generator.sample_with
    generator.sample_with = lambda n, labels, *a, **k: asked.append(labels) or real_sample_with(n, labels, *a, **k)
    labels = torch.tensor([0, 0, 3, 3, 3])
    images = real_sample_with(5, labels, SamplingOptions(), seed=1).images
    score = cas.classification_accuracy_score(generator, SamplingOptions(), train, test, tmp_path / "cas", seed=0,
                                              device="cpu", progress=False, drawn=(images, labels))
    (extra,) = asked
    assert torch.equal(torch.bincount(extra, minlength=10), torch.tensor([8, 10, 10, 7] + [10] * 6))
    assert bool((extra[1:] >= extra[:-1]).all())
    samples = trained["samples"]
    assert score["images"] == len(samples) == 100 and torch.equal(torch.bincount(samples.labels), torch.full((10,), 10))
    assert torch.equal(samples.images[:5], images.mul(255).round().to(torch.uint8))  # the given ones first
