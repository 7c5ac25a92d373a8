"""`vqgen eval` on tiny runs: the judge, the held-out sets, eval.json's shape, the chosen sampling
defaults and where they take effect."""

from __future__ import annotations

import dataclasses

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.data.builtin import make_builtin
from vqgen.engine.checkpoint import saved_step
from vqgen.engine.errors import VQGenError
from vqgen.pipeline.cli import main
from vqgen.data.images import DatasetInfo, ImageDataset
from vqgen.engine.errors import UsageError
from vqgen.pipeline.evaluation.evaluate import evaluate_run
from vqgen.pipeline.evaluation.held_out import held_out
from vqgen.pipeline.evaluation.scoring import Scores, setting_name
from vqgen.pipeline.evaluation.search import EvalOptions
from vqgen.pipeline.generate import SAMPLING_FILE, Generator, load_sampling, save_sampling
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.sampling import SamplingOptions
from vqgen.pipeline.evaluation.judge import FEATURES, JudgeConfig, quarter_turns, rotate, train_judge

TINY_RUN = ["--preset", "quick", "--device", "cpu", "--vqvae-steps", "4", "--vqvae-batch-size", "8",
            "--vqvae-hidden", "8", "--vqvae-res-hidden", "4", "--prior-steps", "4", "--prior-batch-size", "8",
            "--prior-channels", "8", "--prior-layers", "2", "--samples", "4"]
SCORE_KEYS = {"frechet", "class_accuracy", "precision", "recall"}
LOCK_AND_WAIT = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def vqgen(*args: str | Path) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    """A tiny run of the two-class folder, evaluated by `vqgen run --eval` at two temperatures."""
    out = tmp_path_factory.mktemp("evaluated") / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN, "--eval") == 0
    return out


GUIDINGS = [(1.0, "constant", 1.0)] + [(g, schedule, 1.0) for g in (1.5, 2.0, 3.0, 5.0) for schedule in ("constant", "linear")]
TRUNCATIONS = [(None, None), (8, None), (None, 0.9)]  # all codes, K/8, top-p 0.9


SETTINGS = tuple(f.name for f in dataclasses.fields(SamplingOptions))


def settings_of(entries: list[dict]) -> list[tuple]:
    return [tuple(s[k] for k in SETTINGS) for s in entries]


def guiding_of(entry: dict) -> tuple:
    return tuple(entry[k] for k in ("guidance", "guidance_schedule", "guidance_interval"))


def test_run_with_eval_writes_eval_json_of_the_documented_shape(evaluated: Path) -> None:
    report = json.loads((evaluated / "eval.json").read_text())
    assert {"judge", "real", "reconstructions", "selection", "chosen", "classification_accuracy_score"} <= set(report)
    assert 0.0 <= report["judge"]["test_accuracy"] <= 1.0
    assert {"frechet", "precision", "recall"} <= set(report["real"])
    assert SCORE_KEYS <= set(report["reconstructions"])
    assert json.loads((evaluated / "prior" / "config.json").read_text())["codebook_size"] == 64
    ladder, around = report["selection"][:9], report["selection"][9:]  # guidance first, then the rest at its best
    assert settings_of(ladder) == [(1.0, None, None, *g) for g in GUIDINGS]
    assert settings_of(around) == [(t, k, p, *guiding_of(min(ladder, key=lambda s: s["frechet"])))
                                   for t in (0.9, 1.0, 1.1) for k, p in TRUNCATIONS if (t, k, p) != (1.0, None, None)]
    assert {s["n"] for s in report["selection"]} == {report["n"]}  # too few samples to screen on a share
    for scores in [report["real"], report["reconstructions"], *report["selection"], report["chosen"]]:
        assert all(0.0 <= scores[k] <= 1.0 for k in ("class_accuracy", "precision", "recall"))
        assert scores["frechet"] >= -1e-6
    best = min(report["selection"], key=lambda s: s["frechet"])
    assert settings_of([report["chosen"]]) == settings_of([best]) and report["chosen"]["selection_frechet"] == best["frechet"]
    cas = report["classification_accuracy_score"]
    assert 0 <= cas["samples"] <= 1 and 0 <= cas["real"] <= 1 and cas["images"] == 48  # as many samples as real images: the whole train split
    assert json.loads((evaluated / "report.json").read_text())["eval"] == report


def test_the_chosen_setting_is_reported_on_a_fresh_draw_and_another_reference(evaluated: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Choosing the minimum of noisy scores biases it low: the figures reported come from other samples
    scored against other real images."""
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    seeds: list[int] = []
    real_sample = Generator.sample
    monkeypatch.setattr(Generator, "sample", lambda self, *a, seed=None, **k:
                        seeds.append(seed) or real_sample(self, *a, seed=seed, **k))
    report = evaluate_run(run, EvalOptions(temperatures=(1.0,), guidances=(1.0,), seed=7, device="cpu"),
                          progress=False).to_json()
    assert seeds == [7, 7, 7, 8, 9]  # three settings on one draw; the chosen one afresh; the rest of CAS's samples
    assert report["chosen"]["frechet"] != report["chosen"]["selection_frechet"]


def test_successive_halving_screens_the_search_on_a_share_and_tops_up_the_best_third(
        evaluated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each round scores the settings left on more samples (the earlier ones and a top-up of other seeds),
    keeps the lowest third, and the lowest at the full draw is chosen. A stand-in score (the mean pixel)
    lets the tiny run's 2 samples of each class stand for a round."""
    import vqgen.pipeline.evaluation.evaluate as evaluate
    import vqgen.pipeline.evaluation.scoring as scoring
    import vqgen.pipeline.evaluation.selection as selection

    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    drawn: dict[tuple, torch.Tensor] = {}
    def score(judge, images, reference, labels) -> Scores:  # noqa: ANN001
        return Scores(float(images.double().mean()), None, 0.0, 0.0)
    monkeypatch.setattr(selection, "SCREEN_IMAGES", 1)
    monkeypatch.setattr(selection, "score", score)
    monkeypatch.setattr(evaluate, "score", score)
    monkeypatch.setattr(scoring.Scorer, "grid", lambda self, images, path: drawn.setdefault(
        (path.name, len(images)), images))
    report = evaluate_run(run, EvalOptions(n_per_class=2, device="cpu"), progress=False).to_json()
    screen, final = report["selection"][:17], report["selection"][17:]  # 9 guidings, 8 more at the best
    assert [s["n"] for s in screen] == [2] * 17 and [s["n"] for s in final] == [4] * 6  # 1, then 2 of each class
    assert settings_of(screen[9:]) == [(t, k, p, *guiding_of(min(screen[:9], key=lambda s: s["frechet"])))
                                       for t in (0.9, 1.0, 1.1) for k, p in TRUNCATIONS if (t, k, p) != (1.0, None, None)]
    lowest = sorted(screen, key=lambda s: s["frechet"])[:6]
    assert set(settings_of(final)) == set(settings_of(lowest))
    assert settings_of([report["chosen"]]) == settings_of([min(final, key=lambda s: s["frechet"])])
    for (name, n), images in drawn.items():
        if n == 4 and name != "chosen.png":  # the screen's sample of each class comes first in its class
            torch.testing.assert_close(images.unflatten(0, (2, 2))[:, :1], drawn[name, 2].unflatten(0, (2, 1)),
                                       rtol=0, atol=0)


def test_the_floors_and_the_chosen_setting_are_scored_against_the_final_reference(
        evaluated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which reference each set meets: real, reconstructions and the chosen setting's fresh draw the final
    one; every setting of the selection draw the selection one, which played no part in the figures."""
    import vqgen.pipeline.evaluation.scoring as scoring

    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    scorers: list = []
    references: list[np.ndarray] = []
    real_init, real_fidelity = scoring.Scorer.__init__, scoring.fidelity
    monkeypatch.setattr(scoring.Scorer, "__init__", lambda self, *a: scorers.append(self) or real_init(self, *a))
    monkeypatch.setattr(scoring, "fidelity", lambda reference, features: references.append(reference)
                        or real_fidelity(reference, features))
    evaluate_run(run, EvalOptions(temperatures=(1.0,), guidances=(1.0,), device="cpu"), progress=False)
    (scorer,) = scorers
    final, selection = scorer.reference.numpy(), scorer.selection.numpy()
    assert not np.array_equal(final, selection)
    met = ["final" if np.array_equal(r, final) else "selection" if np.array_equal(r, selection) else "?"
           for r in references]
    assert met == ["final", "final", "selection", "selection", "selection", "final"]  # real, reconstructions,
    # the three settings of the selection draw, the chosen one afresh


def test_eval_holds_the_prior_directorys_lock_while_it_writes_sampling_json(evaluated: Path, tmp_path: Path) -> None:
    """A `train-prior --out RUN/prior` running beside eval must be refused, and the other way round."""
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    before = (run / "prior" / SAMPLING_FILE).read_text()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_AND_WAIT, str(run / "prior" / ".vqgen.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(VQGenError, match="is in use by another vqgen process"):
            evaluate_run(run, EvalOptions(temperatures=(2.0,), guidances=(1.0,), device="cpu"), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert (run / "prior" / SAMPLING_FILE).read_text() == before


def test_a_test_split_too_small_to_evaluate_is_refused_before_any_training(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    for split, count in (("train", 12), ("test", 2)):
        for name in ("bars", "squares"):
            (data / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((16, 16), 20 * i, np.uint8)).save(data / split / name / f"{i}.png")
    assert vqgen("run", "--data", data, "--out", tmp_path / "run", *TINY_RUN, "--eval") == 1
    assert "the test split is too small to evaluate" in capsys.readouterr().err
    assert not (tmp_path / "run" / "vqvae").exists()  # nothing trained


def test_chosen_setting_becomes_the_sampling_default(evaluated: Path, tmp_path: Path) -> None:
    chosen = json.loads((evaluated / "eval.json").read_text())["chosen"]
    assert load_sampling(evaluated / "prior") == SamplingOptions.from_record(chosen)
    generator = Generator.from_pretrained(evaluated / "vqvae", evaluated / "prior", device="cpu")
    implicit = generator.sample(6, labels=1, seed=3, progress=False).codes
    explicit = generator.sample(6, labels=1, temperature=chosen["temperature"], seed=3, progress=False).codes
    assert torch.equal(implicit, explicit)
    hot = generator.sample(6, labels=1, temperature=50.0, seed=3, progress=False).codes
    assert not torch.equal(implicit, hot)  # an explicit option still wins
    assert vqgen("sample", "--vqvae", evaluated / "vqvae", "--prior", evaluated / "prior", "-n", "6", "--label", "1",
                 "--seed", "3", "--device", "cpu", "--out", tmp_path / "s") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "codes.npy"), implicit.numpy())


def test_sample_options_replace_one_default_each_and_none_means_all_codes(evaluated: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    save_sampling(SamplingOptions(temperature=0.7, top_k=2, top_p=0.5, guidance=2.0), run / "prior")
    generator = Generator.from_pretrained(run / "vqvae", run / "prior", device="cpu")
    assert generator.options(temperature=1.3) == SamplingOptions(temperature=1.3, top_k=2, top_p=0.5, guidance=2.0)
    common = ["sample", "--vqvae", run / "vqvae", "--prior", run / "prior", "-n", "6", "--label", "1", "--seed", "3",
              "--device", "cpu"]
    assert vqgen(*common, "--top-k", "none", "--top-p", "none", "--out", tmp_path / "all") == 0
    everything = generator.sample(6, labels=1, top_k=64, top_p=1.0, seed=3, progress=False).codes
    np.testing.assert_array_equal(np.load(tmp_path / "all" / "codes.npy"), everything.numpy())
    truncated = generator.sample(6, labels=1, seed=3, progress=False).codes
    assert not torch.equal(everything, truncated)
    assert vqgen(*common, "--guidance-schedule", "linear", "--guidance-interval", "0.5", "--out", tmp_path / "ramp") == 0
    ramped = generator.sample(6, 1, SamplingOptions(temperature=0.7, top_k=2, top_p=0.5, guidance=2.0,
                                                    guidance_schedule="linear", guidance_interval=0.5),
                              seed=3, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "ramp" / "codes.npy"), ramped.codes.numpy())
    assert load_sampling(tmp_path / "ramp") == ramped.options  # what ran, written beside the samples


def test_sample_says_what_ran_and_guidance_zero_is_unconditional_whatever_the_saved_schedule(
        evaluated: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    save_sampling(SamplingOptions(guidance=5.0, guidance_schedule="linear", guidance_interval=0.5), run / "prior")
    common = ["sample", "--vqvae", run / "vqvae", "--prior", run / "prior", "-n", "4", "--label", "1", "--seed", "3",
              "--device", "cpu"]
    capsys.readouterr()
    assert vqgen(*common, "--guidance", "2", "--out", tmp_path / "two") == 0
    assert "samples at T=1 top-k=all top-p=all guidance=2 (linear) on the first 50% written" in capsys.readouterr().out
    assert load_sampling(tmp_path / "two").guidance_schedule == "linear"
    assert vqgen(*common, "--guidance", "0", "--out", tmp_path / "zero") == 0
    assert "guidance=0 (unconditional) written" in capsys.readouterr().out
    generator = Generator.from_pretrained(run / "vqvae", run / "prior", device="cpu")
    null = generator.sample(4, 1, SamplingOptions(guidance=0.0), seed=3, progress=False)  # the null class throughout
    np.testing.assert_array_equal(np.load(tmp_path / "zero" / "codes.npy"), null.codes.numpy())


def test_eval_command_rescores_with_the_settings_asked(evaluated: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    assert vqgen("eval", "--run", run, "--temperature", "0.5", "2", "--top-k", "none", "3", "--top-p", "0.8",
                 "--guidance", "1", "1.5", "--guidance-schedule", "constant", "linear", "--guidance-interval", "0.5",
                 "--device", "cpu") == 0
    report = json.loads((run / "eval.json").read_text())
    guidings = [(1.0, "constant", 1.0), (1.5, "constant", 0.5), (1.5, "linear", 0.5)]  # scale 1 has no schedule
    ladder, around = report["selection"][:3], report["selection"][3:]  # at the temperature nearest 1 (the first of a tie)
    assert settings_of(ladder) == [(0.5, None, 0.8, *g) for g in guidings]
    best = guiding_of(min(ladder, key=lambda s: s["frechet"]))
    assert settings_of(around) == [(t, k, 0.8, *best) for t in (0.5, 2.0) for k in (None, 3) if (t, k) != (0.5, None)]
    out = capsys.readouterr().out
    assert "real held-out (floor)" in out and "x real" in out and "chosen: T=" in out
    assert "classification accuracy score" in out
    assert (run / "eval" / "samples-t0.5-topkall-topp0.8-g1.5-linear-first0.5.png").exists()
    setting = SamplingOptions.from_record(dict(zip(SETTINGS, (2.0, 3, 0.8, *best))))
    assert (run / "eval" / f"{setting_name(setting)}.png").exists()
    assert (run / "eval" / "chosen.png").exists()
    assert load_sampling(run / "prior") == SamplingOptions.from_record(report["chosen"])


def test_eval_scores_what_it_is_asked_not_the_saved_default(evaluated: Path, tmp_path: Path) -> None:
    """A saved top-k must not stand in for the "all codes" a new eval asks for."""
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    options = EvalOptions(n_per_class=2, temperatures=(1.0,), top_ks=(None,), guidances=(1.0,), device="cpu")
    before = evaluate_run(run, options, progress=False).to_json()["selection"][0]
    save_sampling(SamplingOptions(top_k=1), run / "prior")
    after = evaluate_run(run, options, progress=False).to_json()["selection"][0]
    assert after == before and after["top_k"] is None


def test_bad_eval_options_are_named(evaluated: Path, capsys: pytest.CaptureFixture) -> None:
    assert vqgen("eval", "--run", evaluated, "--temperature", "0", "--device", "cpu") == 2
    assert "--temperature=0.0 is not allowed" in capsys.readouterr().err
    assert vqgen("eval", "--run", evaluated.parent / "nowhere", "--device", "cpu") == 1
    assert "is not a vqgen run directory" in capsys.readouterr().err
    assert not (evaluated.parent / "nowhere").exists()  # refused before its lock could create it


def test_a_top_k_beyond_the_codebook_is_refused_before_the_judge_trains(evaluated: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    shutil.rmtree(run / "judge")
    assert vqgen("eval", "--run", run, "--top-k", "65", "--device", "cpu") != 0
    assert "--top-k=65 is not allowed; must be in 1..64" in capsys.readouterr().err
    assert not (run / "judge").exists()


def test_a_later_eval_redraws_the_run_grid_at_its_choice(evaluated: Path, folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A run finished without eval, evaluated later by `vqgen run --eval`: its grid was drawn at the old defaults."""
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    (run / "prior" / SAMPLING_FILE).unlink()
    stamp = (run / "samples" / "grid.png").stat().st_mtime_ns
    capsys.readouterr()
    assert vqgen("run", "--data", folder, "--out", run, *TINY_RUN, "--eval") == 0
    assert (run / "prior" / SAMPLING_FILE).exists() and (run / "samples" / "grid.png").stat().st_mtime_ns != stamp
    printed = capsys.readouterr().out.strip().splitlines()  # the eval summary, then the closing line
    assert printed[-1].startswith("run finished in") and any("real held-out (floor)" in line for line in printed)
    assert any(line.startswith("chosen: T=") for line in printed)


def test_default_search_scales_top_k_with_the_codebook_and_guides_only_with_a_null_class() -> None:
    guided, plain = PriorConfig.small(codebook_size=512, num_classes=10), PriorConfig.small(codebook_size=512)
    as_tuples = lambda settings: [(s.temperature, s.top_k, s.top_p, s.guidance, s.guidance_schedule)  # noqa: E731
                                  for s in settings]
    ladder = EvalOptions().ladder(guided)
    assert as_tuples(ladder) == [(1.0, None, None, g, schedule) for g, schedule, _ in GUIDINGS]
    assert as_tuples(EvalOptions(temperatures=(1.0,)).around(guided, ladder[3])) == [
        (1.0, k, p, 2.0, "constant") for k, p in ((None, None), (64, None), (None, 0.9))]
    assert as_tuples(EvalOptions().ladder(plain)) == [(1.0, None, None, 1.0, "constant")]
    plain_options = EvalOptions(temperatures=(0.5,), top_ks=(3, None), top_ps=(0.8,))
    assert as_tuples(plain_options.around(plain, plain_options.ladder(plain)[0])) == [
        (0.5, 3, 0.8, 1.0, "constant"), (0.5, None, 0.8, 1.0, "constant")]
    assert EvalOptions(temperatures=(0.5, 0.9, 1.2)).ladder(plain)[0].temperature == 0.9
    scheduled = EvalOptions(guidances=(1.0, 2.0), guidance_intervals=(1.0, 0.5)).guidings(guided)
    assert scheduled == [(1.0, "constant", 1.0), (2.0, "constant", 1.0), (2.0, "constant", 0.5), (2.0, "linear", 1.0),
                         (2.0, "linear", 0.5)]
    with pytest.raises(UsageError, match="guidance=2 needs a prior trained with label dropout"):
        EvalOptions(guidances=(2.0,)).check(PriorConfig.small(num_classes=10, label_dropout=0.0))
    with pytest.raises(UsageError, match="top_k=600 is not allowed"):
        EvalOptions(top_ks=(600,)).check(guided)


def test_judge_is_trained_once_and_read_back(tmp_path: Path) -> None:
    train, test = make_builtin("train", count=300), make_builtin("test", count=60)
    judge, accuracy = train_judge(train, test, tmp_path / "judge", device="cpu", progress=False)
    assert saved_step(tmp_path / "judge") == 4 and 0.0 <= accuracy <= 1.0
    stamp = (tmp_path / "judge" / "model.safetensors").stat().st_mtime_ns
    again, same = train_judge(train, test, tmp_path / "judge", device="cpu", progress=False)
    assert same == accuracy and (tmp_path / "judge" / "model.safetensors").stat().st_mtime_ns == stamp
    features, predicted = again.embed(test.__getitems__(list(range(7)))[0])
    assert features.shape == (7, FEATURES) and features.dtype == torch.float64 and predicted.shape == (7,)


def test_unlabelled_data_gets_a_rotation_judge() -> None:
    info = make_builtin("test", count=1).info
    assert JudgeConfig.for_data(info, labelled=False).num_classes == 4
    wide = type(info)(info.name, info.split, 1, 8, 16, None, None)
    config = JudgeConfig.for_data(wide, labelled=False)
    assert config.num_classes == 2 and quarter_turns(config, torch.tensor([0, 1])).tolist() == [0, 2]
    image = torch.arange(4.0).view(1, 1, 2, 2)
    turned = rotate(image.repeat(3, 1, 1, 1), torch.tensor([0, 1, 2]))
    assert torch.equal(turned[0], image[0]) and torch.equal(turned[1, 0], torch.tensor([[1.0, 3.0], [0.0, 2.0]]))
    assert torch.equal(turned[2, 0], image[0, 0].flip(0, 1))


def test_held_out_sets_are_balanced_and_disjoint() -> None:
    test = make_builtin("test", count=400)
    rows = held_out(test, n_per_class=5, seed=0)
    assert len(rows.real) == 50 and len(rows.selection) == len(rows.reference) == 100
    assert not set(rows.selection.tolist()) & set(rows.reference.tolist())  # the two references are disjoint
    assert not set(rows.real.tolist()) & set(rows.reference.tolist())  # the floor is not scored against itself
    assert torch.bincount(rows.labels, minlength=10).tolist() == [5] * 10
    assert torch.bincount(test.labels[rows.reference], minlength=10).tolist() == [10] * 10
    small = held_out(test, n_per_class=1000, seed=0)  # shrinks to what the smallest class allows
    assert small.per_group == int(torch.bincount(test.labels).min()) // 4


@pytest.mark.parametrize("classes, per_class", [(2, 250), (10, 50), (40, 50)])
def test_default_n_is_at_least_500_for_any_number_of_classes(classes: int, per_class: int) -> None:
    """128-dimensional covariances need hundreds of images: a 2-class dataset gets 250 per class, not 50."""
    count = 4 * 300 * classes
    info = DatasetInfo("many", "test", 1, 4, 4, classes, tuple(map(str, range(classes))))
    data = ImageDataset(torch.zeros(count, 1, 4, 4, dtype=torch.uint8), torch.arange(count) % classes, info)
    rows = held_out(data, n_per_class=None, seed=0)
    assert rows.per_group == per_class and len(rows.real) == per_class * classes >= 500
    with pytest.raises(VQGenError, match="too small to evaluate"):
        held_out(make_builtin("test", count=20), n_per_class=50, seed=0)  # 2 per class: none to spare
