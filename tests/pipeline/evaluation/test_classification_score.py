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
from vqgen.engine.errors import UsageError
from vqgen.pipeline.evaluation.judge import Judge
from vqgen.pipeline.generate import Samples
from vqgen.stage2_prior.sampling import SamplingOptions


class RealImages:
    """Stands in for a Generator: each 'sample' is a real image of the class asked for, or, with
    `shuffle`, of the class of another sample's label (the labels permuted over the images). Like a
    Generator, it refuses to draw fewer than one image."""

    num_classes = 10

    def __init__(self, pool: ImageDataset, shuffle: bool) -> None:
        self.pool, self.shuffle = pool, shuffle

    def sample(self, n: int, labels: torch.Tensor, options: SamplingOptions | None = None, *,
               seed: int | None = None, progress: bool = True) -> Samples:
        if n < 1:
            raise UsageError(f"-n={n} is not allowed; must be >= 1")
        generator = torch.Generator().manual_seed(seed or 0)
        rows = []
        shown = labels[torch.randperm(n, generator=generator)] if self.shuffle else labels
        for label in shown.tolist():
            of_class = (self.pool.labels == label).nonzero().flatten()
            rows.append(int(of_class[torch.randint(len(of_class), (1,), generator=generator)]))
        images, _ = self.pool.__getitems__(rows)
        return Samples(images, torch.zeros(n, 1, 1, dtype=torch.long), labels)


class Asked(RealImages):
    """RealImages that keeps the labels of each request."""

    def __init__(self, pool: ImageDataset) -> None:
        super().__init__(pool, shuffle=False)
        self.asked: list[torch.Tensor] = []

    def sample(self, n: int, labels: torch.Tensor, *args, **kwargs) -> Samples:
        self.asked.append(labels)
        return super().sample(n, labels, *args, **kwargs)


@pytest.fixture(scope="module")
def digits() -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    return make_builtin("train", count=600), make_builtin("train", seed=1, count=600), make_builtin("test", count=300)


def _trained_sets(monkeypatch: pytest.MonkeyPatch) -> dict[str, ImageDataset]:
    """fit_judge replaced by one that keeps each classifier's training set (by directory name) instead."""
    trained: dict[str, ImageDataset] = {}
    monkeypatch.setattr(cas, "fit_judge", lambda config, data, test, out, *a, **k:
                        trained.setdefault(out.name, data) and (None, 0.5))
    return trained


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
    trained = _trained_sets(monkeypatch)
    train, pool, test = digits
    generator = Asked(pool)
    labels = torch.tensor([0, 0, 3, 3, 3])
    images = RealImages(pool, shuffle=False).sample(5, labels, SamplingOptions(), seed=1).images
    score = cas.classification_accuracy_score(generator, SamplingOptions(), train, test, tmp_path / "cas", seed=0,
                                              device="cpu", progress=False, drawn=(images, labels))
    (extra,) = generator.asked
    assert torch.equal(torch.bincount(extra, minlength=10), torch.tensor([8, 10, 10, 7] + [10] * 6))
    assert bool((extra[1:] >= extra[:-1]).all())
    samples = trained["samples"]
    assert score["images"] == len(samples) == 100 and torch.equal(torch.bincount(samples.labels), torch.full((10,), 10))
    assert torch.equal(samples.images[:5], images.mul(255).round().to(torch.uint8))  # the given ones first


@pytest.mark.parametrize("over", ["one class", "every class"])
def test_samples_and_real_images_match_when_the_draw_exceeds_a_share(over: str, digits: tuple, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh draw of more than a class's share (CAS_IMAGES / classes: eval's --n-per-class 300, or more
    than 40 classes at 50 each) gives only its first `share` images of that class, in their order, so the
    sample classifier trains on as many images of each class as the real one; a draw that fills every
    class asks the generator for nothing."""
    monkeypatch.setattr(cas, "CAS_IMAGES", 100)  # a share of 10 per class
    trained = _trained_sets(monkeypatch)
    train, pool, test = digits
    generator = Asked(pool)
    if over == "one class":  # 15 of class 0 and 3 of class 3, interleaved
        labels = torch.tensor([0, 3, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0])
    else:  # 12 of each class, the classes in turn
        labels = torch.arange(10).repeat(12)
    images = RealImages(pool, shuffle=False).sample(len(labels), labels, seed=1).images
    score = cas.classification_accuracy_score(generator, SamplingOptions(), train, test, tmp_path / "cas", seed=0,
                                              device="cpu", progress=False, drawn=(images, labels))
    samples, real = trained["samples"], trained["real"]
    assert score["images"] == len(samples) == len(real) == 100
    assert torch.equal(torch.bincount(samples.labels, minlength=10), torch.bincount(real.labels, minlength=10))
    assert torch.equal(torch.bincount(samples.labels, minlength=10), torch.full((10,), 10))
    seen = [int((labels[:i] == labels[i]).sum()) for i in range(len(labels))]
    kept = torch.tensor(seen) < 10  # the first 10 of each class
    assert torch.equal(samples.images[:int(kept.sum())], images[kept].mul(255).round().to(torch.uint8))
    if over == "every class":
        assert generator.asked == []
    else:
        (extra,) = generator.asked
        assert torch.equal(torch.bincount(extra, minlength=10), torch.tensor([0, 10, 10, 7] + [10] * 6))


def test_real_ceiling_is_trained_on_the_rows_of_this_call(digits: tuple, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """out_dir/real is kept only for the rows it was trained on: the same seed reads it back (or resumes
    it), another seed leaves the classifier a fresh training on that seed's rows leaves."""
    monkeypatch.setattr(cas, "CAS_IMAGES", 100)
    monkeypatch.setattr(cas, "CAS_STEPS", 4)
    train, pool, test = digits

    def score(out: Path, seed: int) -> None:
        cas.classification_accuracy_score(RealImages(pool, shuffle=False), SamplingOptions(), train, test, out,
                                          seed=seed, device="cpu", progress=False)

    score(tmp_path / "fresh", seed=1)
    score(tmp_path / "reused", seed=0)
    mark = tmp_path / "reused" / "real" / "mark"
    mark.touch()
    score(tmp_path / "reused", seed=0)
    assert mark.exists(), "the same rows trained the classifier anew"
    score(tmp_path / "reused", seed=1)
    assert not mark.exists(), "another seed's rows read back the first seed's classifier"
    fresh, reused = (Judge.from_pretrained(tmp_path / name / "real").state_dict() for name in ("fresh", "reused"))
    assert all(torch.equal(fresh[key], reused[key]) for key in fresh)
