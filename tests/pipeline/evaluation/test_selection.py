"""Eval's search by successive halving (pipeline/evaluation/selection.py, Jamieson & Talwalkar
2016) against the rounds written out by hand, and the held-out rows it is judged on (`held_out`).

A stand-in scorer draws samples that each name their setting, seed, class and place in their draw, so a
test can see which samples every score was given; a stand-in score reads each setting's Frechet distance
at each size from a table, so which settings each round keeps and which wins is known in advance.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import torch

import vqgen.pipeline.evaluation.held_out as held_out_module
import vqgen.pipeline.evaluation.selection as selection
from vqgen.data.images import DatasetInfo, ImageDataset
from vqgen.pipeline.evaluation.held_out import HeldOut, held_out
from vqgen.pipeline.evaluation.scoring import Scores, setting_name
from vqgen.pipeline.evaluation.seeds import Seeds
from vqgen.pipeline.evaluation.selection import KEEP
from vqgen.stage2_prior.sampling import SamplingOptions

SEED = 11
CLASSES = torch.tensor([2, 0, 1])  # the class of each group of samples, in the order they are drawn
LADDER = [SamplingOptions(guidance=g) for g in (1.0, 1.5, 2.0, 3.0, 5.0)]
SALT = 3  # a table whose every round ranks the settings left otherwise than the round before


def around(best: SamplingOptions) -> list[SamplingOptions]:
    """Every temperature with every top-k at the guidance of `best`, which is one of them."""
    return [replace(best, temperature=t, top_k=k) for t in (0.9, 1.0, 1.1) for k in (None, 4, 8)]


def frechet_of(setting: SamplingOptions, per_group: int) -> float:
    """The table's Frechet distance of `setting` scored on `per_group` samples of each class: drawn anew
    for each size (so each round ranks the settings afresh), the same in every process."""
    digest = hashlib.sha256(f"{setting!r} {per_group} {SALT}".encode()).digest()
    return int.from_bytes(digest[:6], "big") / 2**48


class Draw(NamedTuple):
    setting: SamplingOptions
    seed: int
    per_group: int


class Scored(NamedTuple):
    setting: SamplingOptions
    samples: list[list[tuple[int, int]]]  # per group, in order: (seed, place in its draw) of each sample
    labels: list[int]
    groups_seen: list[int]


class FakeScorer:
    """`_Scorer`'s seam: `rows`, `selection`, `labels_of`, `draw`, `grid`. A sample is a (4, 1, 1) image
    holding its setting's id, its seed, its group and its place within its group in the draw."""

    def __init__(self, per_group: int) -> None:
        groups = len(CLASSES)
        labels = CLASSES.repeat_interleave(per_group)  # class by class, as held_out gives them
        n = groups * per_group
        self.rows = HeldOut(torch.arange(n), torch.arange(2 * n), torch.arange(2 * n, 4 * n), labels, per_group)
        self.selection = torch.zeros(2 * n, 8)  # the selection reference's features
        self.ids: dict[SamplingOptions, int] = {}
        self.draws: list[Draw] = []
        self.grids: list[str] = []

    def labels_of(self, per_group: int) -> torch.Tensor:
        return CLASSES.repeat_interleave(per_group)

    def draw(self, options: SamplingOptions, seed: int, per_group: int) -> torch.Tensor:
        self.draws.append(Draw(options, seed, per_group))
        group = torch.arange(len(CLASSES)).repeat_interleave(per_group)  # (G * per_group,), class by class
        place = torch.arange(per_group).repeat(len(CLASSES))
        setting = torch.full_like(group, self.ids.setdefault(options, len(self.ids)))
        return torch.stack([setting, torch.full_like(group, seed), group, place], 1).double()[..., None, None]

    def grid(self, images: torch.Tensor, path: Path) -> None:
        self.grids.append(path.name)

    def decode(self, images: torch.Tensor, labels: torch.Tensor) -> Scored:
        ids = {int(i) for i in images[:, 0].flatten()}
        assert len(ids) == 1, "a score was given the samples of several settings"
        setting = {i: s for s, i in self.ids.items()}[ids.pop()]
        values = images.flatten(1).long()  # (N, 4)
        by_group = values.unflatten(0, (len(CLASSES), -1))  # (G, per_group, 4)
        samples = [[(int(seed), int(place)) for _, seed, _, place in group] for group in by_group]
        return Scored(setting, samples, labels.tolist(), values[:, 2].tolist())


class Outcome(NamedTuple):
    winner: SamplingOptions
    frechet: float
    scorer: FakeScorer
    scored: list[Scored]                # every score, in order
    record: list[Any]                   # what the search recorded (scoring.Scored)
    asked: list[SamplingOptions]        # the settings `around` was asked about


Search = Callable[..., Outcome]


@pytest.fixture
def search(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Search:
    """search(per_group, ladder, around=around): `select` run on the stand-in scorer and score."""
    judge = object()

    def run(per_group: int, ladder: list[SamplingOptions],
            around: Callable[[SamplingOptions], list[SamplingOptions]] = around) -> Outcome:
        scorer, scored, asked = FakeScorer(per_group), [], []

        def score(judge_given: object, images: torch.Tensor, reference: torch.Tensor,
                  labels: torch.Tensor) -> dict[str, float | None]:
            assert judge_given is judge and reference is scorer.selection  # the selection reference only
            scored.append(scorer.decode(images, labels))
            return Scores(frechet_of(scored[-1].setting, len(images) // len(CLASSES)), None, 0.5, 0.5)

        monkeypatch.setattr(selection, "score", score)
        winner, frechet, record = selection.select(scorer, ladder, lambda best: asked.append(best) or around(best),
                                                   judge, Seeds(SEED), tmp_path, progress=False)
        return Outcome(winner, frechet, scorer, scored, record, asked)
    return run


def lowest(settings: list[SamplingOptions], per_group: int, share: float = 1) -> list[SamplingOptions]:
    """The `share` of `settings` with the lowest Frechet distance at `per_group` (at least one)."""
    ranked = sorted(settings, key=lambda s: frechet_of(s, per_group))
    return ranked[:math.ceil(len(settings) * share)]


def check_samples(scorer: FakeScorer, scored: list[Scored]) -> None:
    """Every score saw, in each class, the samples of the setting's earlier draws followed by new ones of
    a draw with another seed (never a sample twice), with each sample's own class as its label."""
    for s in scored:
        per_group = len(s.samples[0])
        assert s.groups_seen == [g for g in range(len(CLASSES)) for _ in range(per_group)]
        assert s.labels == CLASSES.repeat_interleave(per_group).tolist()
        draws = [d for d in scorer.draws if d.setting == s.setting]
        assert len({d.seed for d in draws}) == len(draws), "a top-up drew with a seed already used"
        made = [(d.seed, place) for d in draws for place in range(d.per_group)]  # in the order drawn
        for group in s.samples:
            assert group == made[:per_group]


def test_three_rounds_keep_the_best_third_topped_up_with_new_samples_and_the_lowest_at_n_wins(
        search: Search, monkeypatch: pytest.MonkeyPatch) -> None:
    """13 settings (5 guidings, then 8 more around the best) at n/4; the best 5 by that score topped up
    to n/2; the best 2 by the n/2 score topped up to n; the lowest at n wins."""
    monkeypatch.setattr(selection, "SCREEN_IMAGES", 6)  # 3 classes x n/4 = 6 samples: enough to screen by
    winner, frechet, scorer, scored, record, asked = search(8, LADDER)
    guided = lowest(LADDER, 2)[0]  # the ladder's best at n/4
    assert asked == [guided] and guided != LADDER[0]
    candidates = LADDER + [s for s in around(guided) if s != guided]
    halved = lowest(candidates, 2, 1 / 3)
    final = lowest(halved, 4, 1 / 3)
    assert (len(candidates), len(halved), len(final)) == (13, 5, 2)
    # the table ranks each round afresh: keeping by an earlier round's score would keep other settings
    assert set(final) != set(lowest(halved, 2, 1 / 3)) and lowest(final, 8)[0] != lowest(final, 4)[0]
    assert lowest(final, 8)[0] not in (lowest(candidates, 8)[0], lowest(candidates, 2)[0])
    assert winner == lowest(final, 8)[0] and frechet == frechet_of(winner, 8)

    rounds = [(s.setting, len(s.samples[0])) for s in scored]
    assert rounds[:len(LADDER)] == [(s, 2) for s in LADDER]  # the ladder first: around() needs its best
    assert Counter(rounds) == Counter([(s, 2) for s in candidates] + [(s, 4) for s in halved]
                                      + [(s, 8) for s in final])
    assert [size for _, size in rounds] == sorted(size for _, size in rounds)  # a round at a time
    assert Counter(scorer.draws) == Counter([Draw(s, SEED, 2) for s in candidates]
                                            + [Draw(s, SEED + 3, 2) for s in halved]
                                            + [Draw(s, SEED + 4, 4) for s in final])
    check_samples(scorer, scored)
    assert [(r.setting, r.n, r.scores.frechet) for r in record] == [
        (s.setting, 3 * len(s.samples[0]), frechet_of(s.setting, len(s.samples[0]))) for s in scored]
    assert scorer.grids == [f"{setting_name(setting)}.png" for setting, _ in rounds]


@pytest.mark.parametrize("per_group, screen, sizes", [
    (8, 100, (8,)),      # 3 classes x 4 = 12 samples < 100: no round can screen, all at the full size
    (8, 12, (4, 8)),     # n/4 (6 samples) too few to judge by, n/2 (12) enough
    (12, 9, (3, 6, 12)),  # n = 36: n/4 = 9 samples
    (10, 6, (2, 5, 10)),  # n/4 and n/2 round down: top-ups of 3 and 5 per class
])
def test_the_rounds_sizes_follow_the_shares_while_they_judge_by_enough_samples(
        search: Search, monkeypatch: pytest.MonkeyPatch, per_group: int, screen: int, sizes: tuple[int, ...]) -> None:
    monkeypatch.setattr(selection, "SCREEN_IMAGES", screen)
    winner, frechet, scorer, scored, record, asked = search(per_group, LADDER)
    guided = lowest(LADDER, sizes[0])[0]
    left = LADDER + [s for s in around(guided) if s != guided]
    expected = [(s, sizes[0]) for s in left]
    for size, previous in zip(sizes[1:], sizes):
        left = lowest(left, previous, 1 / 3)
        expected += [(s, size) for s in left]
    rounds = [(s.setting, len(s.samples[0])) for s in scored]
    assert Counter(rounds) == Counter(expected)
    assert [size for _, size in rounds] == sorted(size for _, size in rounds)  # a round at a time
    assert winner == lowest(left, per_group)[0] and frechet == frechet_of(winner, per_group)
    tops = [d.per_group for d in scorer.draws if d.seed != SEED]
    assert set(tops) == {b - a for a, b in zip(sizes, sizes[1:])}
    check_samples(scorer, scored)


def test_with_no_more_than_keep_settings_the_screen_goes_straight_to_the_full_size(
        search: Search, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three settings are too few to halve: scored at n/4, then all three topped up to n (round 2's seed)."""
    monkeypatch.setattr(selection, "SCREEN_IMAGES", 1)
    ladder = [SamplingOptions(guidance=1.0)]
    few = lambda best: [replace(best, temperature=t) for t in (0.9, 1.0, 1.1)]  # noqa: E731
    winner, frechet, scorer, scored, record, asked = search(8, ladder, few)
    settings = few(ladder[0])
    assert len(settings) == KEEP
    rounds = [(s.setting, len(s.samples[0])) for s in scored]
    assert rounds[:3] == [(ladder[0], 2), (settings[0], 2), (settings[2], 2)]
    assert Counter(rounds[3:]) == Counter((s, 8) for s in settings)
    assert Counter(scorer.draws) == Counter([Draw(s, SEED, 2) for s in settings]
                                            + [Draw(s, SEED + 4, 6) for s in settings])
    assert winner == lowest(settings, 8)[0] and frechet == frechet_of(winner, 8)
    check_samples(scorer, scored)


def labelled(sizes: list[int]) -> ImageDataset:
    """Classes of the given sizes, rows sorted by class as in a folder."""
    labels = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    info = DatasetInfo("sized", "test", 1, 2, 2, len(sizes), tuple(map(str, range(len(sizes)))))
    return ImageDataset(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels, info)


@pytest.mark.parametrize("sizes, n_per_class, per_group", [
    ([4] * 10, 50, 1),              # the smallest: 4 images a class, one of each per set
    ([5, 9, 4, 7] * 3, 50, 1),      # uneven: the smallest class sets the share
    ([40, 33, 80], 3, 3),           # n_per_class below what the classes allow
    ([40, 33, 80], None, 8),        # the default, capped by the class of 33
    ([400] * 2, None, 100),
])
@pytest.mark.parametrize("seed", [0, 1, 5])
def test_held_out_references_are_disjoint_balanced_and_hold_the_real_images_in_the_selection(
        sizes: list[int], n_per_class: int | None, per_group: int, seed: int) -> None:
    data = labelled(sizes)
    rows = held_out(data, n_per_class, seed)
    real, selection, reference = (set(r.tolist()) for r in (rows.real, rows.selection, rows.reference))
    assert rows.per_group == per_group
    assert len(real) == len(rows.real) and len(selection) == len(rows.selection)  # no row twice
    assert len(reference) == len(rows.reference)
    assert not selection & reference and real <= selection
    classes = len(sizes)
    for name, share in (("real", 1), ("selection", 2), ("reference", 2)):
        counts = torch.bincount(data.labels[getattr(rows, name)], minlength=classes).tolist()
        assert counts == [share * per_group] * classes, name
    assert torch.equal(rows.labels, data.labels[rows.real])


@pytest.mark.parametrize("seed", [0, 3])
def test_held_out_rows_of_an_unlabelled_split_are_disjoint_and_cut_into_equal_groups(seed: int) -> None:
    data = labelled([47])
    data = ImageDataset(data.images, None, data.info)
    rows = held_out(data, None, seed)
    real, selection, reference = (set(r.tolist()) for r in (rows.real, rows.selection, rows.reference))
    assert rows.per_group == 47 // held_out_module.MIN_GROUPS // 4 and rows.labels is None
    assert len(rows.real) == rows.per_group * held_out_module.MIN_GROUPS == len(real)
    assert len(selection) == len(reference) == 2 * len(real)
    assert not selection & reference and real <= selection


def test_every_draw_of_an_eval_has_a_seed_of_its_own() -> None:
    """The fresh draw that reports the chosen setting, the classification score's samples and every
    round's top-up each draw with a seed no other draw of the same eval uses."""
    seeds = Seeds(SEED)
    draws = [seeds.first_draw, seeds.fresh, seeds.classification_score] + [seeds.top_up(r) for r in (1, 2, 3)]
    assert len(set(draws)) == len(draws) and seeds.first_draw == seeds.rows == SEED


@pytest.mark.parametrize("per_group, screen", [(8, 100), (8, 12), (12, 9), (10, 6), (8, 6)])
def test_the_planned_samples_are_those_the_search_draws(search: Search, monkeypatch: pytest.MonkeyPatch,
                                                        per_group: int, screen: int) -> None:
    """What a run sized in minutes plans eval's time by (pipeline/budget.py): every sample the search draws,
    and the chosen setting's fresh draw of n."""
    monkeypatch.setattr(selection, "SCREEN_IMAGES", screen)
    scorer = search(per_group, LADDER).scorer
    new_around = len(around(LADDER[0])) - 1  # around() holds the ladder's best
    drawn = sum(d.per_group for d in scorer.draws)
    assert selection.planned_samples(len(LADDER), new_around, per_group, len(CLASSES)) == drawn + per_group
