"""Every random draw of one `vqgen eval`, named: all come from its --seed, none shares another's stream.

The held-out rows and each setting's first draw use the seed itself; the chosen setting's fresh draw,
which reports it, must not reuse the samples that chose it, nor may the classification score's extra
samples; and a top-up of a screened setting must add new samples, not repeat the first ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Seeds:
    seed: int

    @property
    def rows(self) -> int:
        """The held-out rows (pipeline/evaluation/held_out.py)."""
        return self.seed

    @property
    def first_draw(self) -> int:
        """Each setting's samples in the search's first round."""
        return self.seed

    def top_up(self, round_: int) -> int:
        """The samples that top a setting up in round `round_` >= 1 of the successive halving."""
        return self.seed + 2 + round_

    @property
    def fresh(self) -> int:
        """The chosen setting drawn afresh, the figure eval reports."""
        return self.seed + 1

    @property
    def classification_score(self) -> int:
        """The classification score's real train rows, and the samples it draws beyond the fresh draw."""
        return self.seed + 2
