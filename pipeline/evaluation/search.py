"""What `vqgen eval` searches: sampling settings (temperature, truncation, guidance and its schedule).

The settings are searched a coordinate at a time: the guidance ladder (every scale, schedule and
interval) at the temperature nearest 1 with the first truncation, then every temperature and
truncation at the ladder's best guidance (pipeline/evaluation/selection.py screens them). The best
guidance was the same at every temperature and truncation on CIFAR-10 (docs/experiments.md, "Eval's
search"), so of the default 81-setting grid the search scores 17.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Any

from vqgen.engine.configs import option, require
from vqgen.pipeline.evaluation.held_out import MIN_IMAGES
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.sampling import GUIDANCE_SCHEDULES, GuidanceSchedule, SamplingOptions

TOP_K_SHARE = 8        # default truncations: all codes, top-k K/8, or top-p TOP_P
TOP_P = 0.9
GUIDANCE = (1.0, 1.5, 2.0, 3.0, 5.0)  # default scales for a prior with a null class (docs/experiments.md, "Guidance")


@dataclass(frozen=True)
class EvalOptions:
    """What eval searches: temperatures, truncations and guidance (a scale, its schedule and interval).

    Truncations: with neither `top_ks` nor `top_ps` given, all codes, top-k K/8 (as a share of K the same
    grid suits any codebook) and top-p 0.9, three ways of cutting off the rare codes that make broken
    strokes at little cost in diversity; with either given, every top-k with every top-p (None: no
    truncation). `guidances=None` means GUIDANCE for a prior trained with a null class, else 1; every
    scale but 1 is tried at every schedule and interval. `n_per_class=None` means 50, or more where
    needed to reach MIN_IMAGES per set."""

    n_per_class: int | None = option(None, "held-out images and samples per class (none: 50, or more to reach "
                                           f"{MIN_IMAGES} in all)")
    temperatures: tuple[float, ...] = option((0.9, 1.0, 1.1), "sampling temperatures to score",
                                              scores="temperature")
    top_ks: tuple[int | None, ...] | None = option(None, "top-k values to score, none for all codes (none given: all "
                                                         "codes, top-k K/8 or top-p 0.9; given top-k and top-p "
                                                         "values are scored in every combination)",
                                                  scores="top_k")
    top_ps: tuple[float | None, ...] | None = option(None, "top-p (nucleus) values to score, none for all codes",
                                                     scores="top_p")
    guidances: tuple[float, ...] | None = option(None, "guidance scales to score (none: "
                                                       f"{', '.join(f'{g:g}' for g in GUIDANCE)} for a prior trained "
                                                       "with label dropout, else 1); searched first, at the "
                                                       "temperature nearest 1 and the first truncation", scores="guidance")
    guidance_schedules: tuple[GuidanceSchedule, ...] = option(GUIDANCE_SCHEDULES, "guidance schedules to score with "
                                                              "every scale but 1", scores="guidance_schedule")
    guidance_intervals: tuple[float, ...] = option((1.0,), "shares of the positions guided, from the first, to "
                                                           "score with every scale but 1", scores="guidance_interval")
    seed: int = option(0, "seed of the held-out rows, of the samples and of the classification score's rows")
    device: str = option("auto", "auto (GPU when present), cpu or cuda[:N]")

    def __post_init__(self) -> None:
        """Every value searched is checked as the sampling option it is, so an error names that option."""
        require(self.n_per_class is None or self.n_per_class >= 1,
                f"n_per_class={self.n_per_class} is not allowed; must be >= 1")
        for name, values in self.searched().items():
            for value in values:
                SamplingOptions(**{name: value})

    def searched(self) -> dict[str, tuple[Any, ...]]:
        """The sampling option each search field scores (EvalOptions.temperatures -> temperature), with its values."""
        return {f.metadata["scores"]: getattr(self, f.name) or () for f in dataclasses.fields(self)
                if f.metadata.get("scores")}

    def truncations(self, codebook_size: int) -> list[tuple[int | None, float | None]]:
        if self.top_ks is None and self.top_ps is None:
            return [(None, None), (max(1, codebook_size // TOP_K_SHARE), None), (None, TOP_P)]
        return [(k, p) for k in dict.fromkeys(self.top_ks or (None,)) for p in dict.fromkeys(self.top_ps or (None,))]

    def guidings(self, config: PriorConfig) -> list[tuple[float, str, float]]:
        """(scale, schedule, interval) of every guidance asked for; a scale of 0 or 1 is the same at any schedule."""
        guidances = self.guidances or (GUIDANCE if config.null_label is not None else (1.0,))
        return list(dict.fromkeys((g, "constant", 1.0) if g in (0, 1) else (g, schedule, interval)
                                  for g in guidances for schedule in self.guidance_schedules
                                  for interval in self.guidance_intervals))

    def ladder(self, config: PriorConfig) -> list[SamplingOptions]:
        """The search's first coordinate: every guidance at the temperature nearest 1 and the first truncation."""
        temperature = min(self.temperatures, key=lambda t: abs(math.log(t)))
        top_k, top_p = self.truncations(config.codebook_size)[0]
        return [SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance,
                                guidance_schedule=schedule, guidance_interval=interval)
                for guidance, schedule, interval in self.guidings(config)]

    def around(self, config: PriorConfig, guided: SamplingOptions) -> list[SamplingOptions]:
        """The second: every temperature with every truncation, at the guidance of `guided`."""
        return [replace(guided, temperature=t, top_k=top_k, top_p=top_p) for t in self.temperatures
                for top_k, top_p in self.truncations(config.codebook_size)]

    def check(self, config: PriorConfig) -> None:
        """Every combination the search may reach, checked against the prior (so a bad one stops eval before
        any work)."""
        for guided in self.ladder(config):
            for options in self.around(config, guided):
                options.check(config)
