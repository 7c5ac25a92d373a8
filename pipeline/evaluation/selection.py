"""Choosing a sampling setting by successive halving (Jamieson & Talwalkar 2016, arXiv 1502.07943).

Every setting of the search (pipeline/evaluation/search.py) is drawn at n/4 and scored against the
selection reference; the best third is topped up to n/2 with new samples, the best third of those to
n, and the lowest Frechet distance at n wins. Settings far from the data are told apart on a quarter of
the samples, and the final comparison is at n: the default search costs what 7 full draws cost. A
screening round needs more than KEEP settings left and SCREEN_IMAGES samples a setting; where no share
below n has them, the first round is at n.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
from tqdm import tqdm

from vqgen.pipeline.evaluation.judge import Judge
from vqgen.pipeline.evaluation.scoring import Scored, Scorer, score, setting_name
from vqgen.pipeline.evaluation.seeds import Seeds
from vqgen.stage2_prior.sampling import SamplingOptions

SHARES = (4, 2, 1)   # the rounds draw n/4, n/2 and n samples of each setting left
KEEP = 3             # each screening round keeps the best third
SCREEN_IMAGES = 100  # the fewest samples a screening round judges a setting by


def round_sizes(per_group: int, groups: int) -> list[int]:
    """Samples per class of each round: the shares of n that judge by enough samples, then n."""
    shares = sorted({max(1, per_group // share) for share in SHARES})[:-1]
    return [size for size in shares if size * groups >= SCREEN_IMAGES] + [per_group]


def later_rounds(sizes: list[int], settings: int) -> Iterator[tuple[int, int, int]]:
    """(round, samples per class, settings kept) of each round after the first, for `settings` scored in it:
    the best third while more than KEEP are left; a round below n with no more to drop is skipped."""
    for round_, size in enumerate(sizes[1:], 1):
        if settings > KEEP:
            settings = math.ceil(settings / KEEP)
        elif size < sizes[-1]:
            continue
        yield round_, size, settings


def planned_samples(ladder: int, around: int, per_group: int, groups: int) -> int:
    """Samples per class the search draws for `ladder` settings and `around` more (new ones, topped up
    later), the chosen setting's fresh draw included: what a run sized in minutes plans eval's time by."""
    sizes = round_sizes(per_group, groups)
    drawn, previous, settings = (ladder + around) * sizes[0], sizes[0], ladder + around
    for _, size, kept in later_rounds(sizes, settings):
        drawn, previous = drawn + kept * (size - previous), size
    return drawn + per_group


class Selection(NamedTuple):
    chosen: SamplingOptions
    frechet: float        # the chosen setting's at n, against the selection reference
    scored: list[Scored]  # every score of the search, in order


class SuccessiveHalving:
    """The search's state: each setting's samples so far (class by class) and its latest Frechet distance."""

    def __init__(self, scorer: Scorer, judge: Judge, seeds: Seeds, grids: Path, progress: bool) -> None:
        self.scorer, self.judge, self.seeds, self.grids = scorer, judge, seeds, grids
        self.drawn: dict[SamplingOptions, torch.Tensor] = {}  # (groups x per group, C, H, W)
        self.frechet: dict[SamplingOptions, float] = {}
        self.scored: list[Scored] = []
        self.bar = tqdm(desc="eval samples", unit="setting", disable=not progress)

    def run(self, ladder: list[SamplingOptions],
            around: Callable[[SamplingOptions], list[SamplingOptions]]) -> Selection:
        """Round 0 scores `ladder`, then `around` its best; each later round keeps the best third while more
        than KEEP settings are left, tops them up to its size and scores them."""
        sizes = round_sizes(self.scorer.rows.per_group, self.scorer.rows.groups)
        self._round(ladder, 0, sizes[0])
        candidates = ladder + [s for s in around(self._best(ladder)) if s not in ladder]
        self._round(candidates[len(ladder):], 0, sizes[0])
        for round_, size, kept in later_rounds(sizes, len(candidates)):
            candidates = sorted(candidates, key=self.frechet.__getitem__)[:kept]
            self._round(candidates, round_, size)
        self.bar.close()
        chosen = self._best(candidates)
        return Selection(chosen, self.frechet[chosen], self.scored)

    def _best(self, settings: list[SamplingOptions]) -> SamplingOptions:
        return min(settings, key=self.frechet.__getitem__)

    def _round(self, settings: list[SamplingOptions], round_: int, size: int) -> None:
        for setting in settings:
            images = self._samples(setting, round_, size)
            scores = score(self.judge, images, self.scorer.selection, self.scorer.labels_of(size))
            self.scored.append(Scored(setting, scores, len(images)))
            self.frechet[setting] = scores.frechet
            self.scorer.grid(images, self.grids / f"{setting_name(setting)}.png")
            self.bar.update()

    def _samples(self, setting: SamplingOptions, round_: int, size: int) -> torch.Tensor:
        """`size` samples of each class of `setting`: those drawn before, topped up with new ones."""
        groups = self.scorer.rows.groups
        have = len(self.drawn[setting]) // groups if setting in self.drawn else 0
        if have < size:
            seed = self.seeds.top_up(round_) if have else self.seeds.first_draw
            extra = self.scorer.draw(setting, seed, size - have)
            self.drawn[setting] = extra if not have else torch.cat(
                [self.drawn[setting].unflatten(0, (groups, -1)), extra.unflatten(0, (groups, -1))], 1).flatten(0, 1)
        return self.drawn[setting].unflatten(0, (groups, -1))[:, :size].flatten(0, 1)


def select(scorer: Scorer, ladder: list[SamplingOptions], around: Callable[[SamplingOptions], list[SamplingOptions]],
           judge: Judge, seeds: Seeds, grids: Path, progress: bool = True) -> Selection:
    """The setting of lowest Frechet distance against the selection reference (module docstring); each
    setting's grid of its latest draw goes to grids/NAME.png."""
    return SuccessiveHalving(scorer, judge, seeds, grids, progress).run(ladder, around)
