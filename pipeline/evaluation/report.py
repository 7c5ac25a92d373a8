"""RUN/eval.json as a typed report: what `vqgen eval` measured, its JSON form and the lines it prints.

The JSON form is the file format (docs/formats.md): every set's scores flat beside the setting that drew
it, so a reader needs no vqgen to use it. `from_json` reads the files of earlier versions too (without
guidance schedules, or with `standard_fid` merged in by `vqgen eval --fid`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vqgen.engine.configs import config_to_dict
from vqgen.engine.tensorboard import open_sink
from vqgen.pipeline.evaluation.held_out import MIN_IMAGES
from vqgen.pipeline.evaluation.scoring import Scored, Scores, setting_name
from vqgen.stage2_prior.sampling import SamplingOptions

EVAL_FILE = "eval.json"
SCORE_FIELDS = tuple(Scores.__dataclass_fields__)


def _scores(record: dict[str, Any]) -> Scores:
    return Scores(**{name: record[name] for name in SCORE_FIELDS})


def scored_to_json(scored: Scored) -> dict[str, Any]:
    return {**config_to_dict(scored.setting), **asdict(scored.scores), "n": scored.n}


def scored_from_json(record: dict[str, Any]) -> Scored:
    return Scored(SamplingOptions.from_record(record, EVAL_FILE), _scores(record), record["n"])


@dataclass(frozen=True)
class EvalReport:
    """`real` and `reconstructions` are the floors; `selection` every score of the search (against the
    selection reference); `chosen` the chosen setting drawn afresh (against the final reference) and
    `selection_frechet` its Frechet distance in the search; `judge` its test accuracy and task."""

    judge: dict[str, Any]
    n: int
    n_per_class: int
    reference: int
    real: Scores
    reconstructions: Scores
    selection: list[Scored]
    chosen: Scored
    selection_frechet: float
    classification_accuracy_score: dict[str, Any] | None
    seconds: float
    standard_fid: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        chosen = scored_to_json(self.chosen)
        del chosen["n"]  # the fresh draw is of n, as every set of the report
        raw = {"judge": self.judge, "n": self.n, "n_per_class": self.n_per_class, "reference": self.reference,
               "real": asdict(self.real), "reconstructions": asdict(self.reconstructions),
               "selection": [scored_to_json(s) for s in self.selection],
               "chosen": {**chosen, "selection_frechet": self.selection_frechet},
               "classification_accuracy_score": self.classification_accuracy_score, "seconds": self.seconds}
        return raw if self.standard_fid is None else {**raw, "standard_fid": self.standard_fid}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "EvalReport":
        chosen = raw["chosen"]
        return cls(raw["judge"], raw["n"], raw["n_per_class"], raw["reference"], _scores(raw["real"]),
                   _scores(raw["reconstructions"]), [scored_from_json(s) for s in raw["selection"]],
                   Scored(SamplingOptions.from_record(chosen, EVAL_FILE), _scores(chosen), raw["n"]),
                   chosen["selection_frechet"], raw.get("classification_accuracy_score"), raw.get("seconds", 0.0),
                   raw.get("standard_fid"))

    def summary(self) -> list[str]:
        """Lines a person reads: every figure beside the real floor, with its unit."""
        floor = self.real.frechet

        def line(name: str, s: Scores) -> str:
            accuracy = "" if s.class_accuracy is None else f"class accuracy {s.class_accuracy:.1%}, "
            return (f"{name:<48} Frechet {s.frechet:8.2f} ({s.frechet / floor:5.1f}x real), "
                    f"{accuracy}precision {s.precision:.2f}, recall {s.recall:.2f}")

        lines = [f"judge: {self.judge['task']}, test accuracy {self.judge['test_accuracy']:.2%}; n={self.n} images "
                 f"per set, each scored against {self.reference} real reference images"]
        if self.n < MIN_IMAGES:
            lines.append(f"warning: n={self.n} is below {MIN_IMAGES}: the test split is small, so Frechet "
                         "distances are biased high and move more from seed to seed")
        lines += ["selection draw by successive halving (against its own reference; the lowest Frechet at the "
                  "largest n is chosen):"]
        lines += [line(f"  n={s.n:<4} {s.setting.describe()}", s.scores) for s in self.selection]
        lines += ["fresh draw, against the other reference:", line("  real held-out (floor)", self.real),
                  line("  reconstructions", self.reconstructions),
                  line(f"  chosen {self.chosen.setting.describe()}", self.chosen.scores)]
        cas = self.classification_accuracy_score
        if cas:
            lines.append(f"classification accuracy score: {cas['samples']:.1%} trained on {cas['images']} samples "
                         f"(on as many real images: {cas['real']:.1%})")
        lines.append(f"chosen: {self.chosen.setting.describe()} (saved as the prior's sampling defaults)")
        return lines

    def show(self, grids: Path, log_dir: str | None, step: int) -> None:
        """The figures as TensorBoard scalars eval/SET/NAME, and the sample grids in `grids` as eval/SET/grid:
        each setting at the largest draw it reached."""
        last = {setting_name(s.setting): s for s in self.selection}
        with open_sink(log_dir, "eval", step) as sink:
            sink.record({"step": step, "split": "judge", **self.judge})
            for name, scores in (("real", self.real), ("reconstructions", self.reconstructions)):
                sink.record({"step": step, "split": name, **asdict(scores)})
            for name, s in last.items():
                sink.record({"step": step, "split": name, **asdict(s.scores), "n": s.n})
            sink.record({"step": step, "split": "chosen", **self.to_json()["chosen"]})
            if self.classification_accuracy_score:
                sink.record({"step": step, "split": "classification_accuracy_score",
                             **self.classification_accuracy_score})
            for name in ["chosen", *last]:
                with Image.open(grids / f"{name}.png") as picture:
                    sink.image(f"{name}/grid", picture, step)


def describe_setting(record: dict[str, Any]) -> str:
    """The setting of an eval.json record in words (of a previous version, without schedules, as well)."""
    return SamplingOptions.from_record(record, EVAL_FILE).describe()
