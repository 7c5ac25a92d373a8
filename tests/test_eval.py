"""`vqgen eval` on tiny runs: the judge, the held-out sets, eval.json's shape, the chosen sampling
defaults and where they take effect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgen.data.builtin import make_builtin
from vqgen.engine.errors import VQGenError
from vqgen.engine.trainer import saved_step
from vqgen.pipeline.cli import main
from vqgen.pipeline.evaluate import EvalOptions, evaluate_run, held_out
from vqgen.pipeline.generate import SAMPLING_FILE, Generator, SamplingDefaults
from vqgen.pipeline.judge import FEATURES, JudgeConfig, quarter_turns, rotate, train_judge

TINY_RUN = ["--preset", "quick", "--device", "cpu", "--vqvae-steps", "4", "--vqvae-batch-size", "8",
            "--vqvae-hidden", "8", "--vqvae-res-hidden", "4", "--prior-steps", "4", "--prior-batch-size", "8",
            "--prior-channels", "8", "--prior-layers", "2", "--samples", "4"]
SCORE_KEYS = {"frechet", "class_accuracy", "precision", "recall"}


def vqgen(*args: str | Path) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    """A tiny run of the two-class folder, evaluated by `vqgen run --eval` at two temperatures."""
    out = tmp_path_factory.mktemp("evaluated") / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN, "--eval") == 0
    return out


def test_run_with_eval_writes_eval_json_of_the_documented_shape(evaluated: Path) -> None:
    report = json.loads((evaluated / "eval.json").read_text())
    assert {"judge", "real", "reconstructions", "samples", "chosen"} <= set(report)
    assert 0.0 <= report["judge"]["test_accuracy"] <= 1.0
    assert {"frechet", "precision", "recall"} <= set(report["real"])
    assert SCORE_KEYS <= set(report["reconstructions"])
    assert json.loads((evaluated / "prior" / "config.json").read_text())["codebook_size"] == 64
    assert [(s["temperature"], s["top_k"]) for s in report["samples"]] == \
        [(t, k) for t in (0.8, 0.9, 1.0, 1.1) for k in (None, 8, 16)]  # all codes, K/8, K/4
    for scores in [report["real"], report["reconstructions"], *report["samples"]]:
        assert all(0.0 <= scores[k] <= 1.0 for k in ("class_accuracy", "precision", "recall"))
        assert scores["frechet"] >= -1e-6
    best = min(report["samples"], key=lambda s: s["frechet"])
    assert report["chosen"] == {"temperature": best["temperature"], "top_k": best["top_k"]}
    assert json.loads((evaluated / "report.json").read_text())["eval"] == report


def test_report_shows_the_prior_that_was_trained(evaluated: Path) -> None:
    prior = json.loads((evaluated / "report.json").read_text())["config"]["prior"]
    assert prior["num_classes"] == 2 and prior["grid_height"] == 4
    assert prior["codebook_size"] == json.loads((evaluated / "prior" / "config.json").read_text())["codebook_size"]


def test_chosen_setting_becomes_the_sampling_default(evaluated: Path, tmp_path: Path) -> None:
    chosen = json.loads((evaluated / "eval.json").read_text())["chosen"]
    assert SamplingDefaults.load(evaluated / "prior") == SamplingDefaults(chosen["temperature"], chosen["top_k"])
    generator = Generator.from_pretrained(evaluated / "vqvae", evaluated / "prior", device="cpu")
    implicit = generator.sample(6, labels=1, seed=3, progress=False).codes
    explicit = generator.sample(6, labels=1, temperature=chosen["temperature"], seed=3, progress=False).codes
    assert torch.equal(implicit, explicit)
    hot = generator.sample(6, labels=1, temperature=50.0, seed=3, progress=False).codes
    assert not torch.equal(implicit, hot)  # an explicit option still wins
    assert vqgen("sample", "--vqvae", evaluated / "vqvae", "--prior", evaluated / "prior", "-n", "6", "--label", "1",
                 "--seed", "3", "--device", "cpu", "--out", tmp_path / "s") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "codes.npy"), implicit.numpy())


def test_eval_command_rescores_with_the_settings_asked(evaluated: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    assert vqgen("eval", "--run", run, "--temperature", "0.5", "2", "--top-k", "none", "3", "--device", "cpu") == 0
    report = json.loads((run / "eval.json").read_text())
    assert [(s["temperature"], s["top_k"]) for s in report["samples"]] == [(0.5, None), (0.5, 3), (2.0, None), (2.0, 3)]
    out = capsys.readouterr().out
    assert "real held-out (floor)" in out and "x real" in out and "chosen: temperature" in out
    assert (run / "eval" / "samples-t2-top3.png").exists()
    assert SamplingDefaults.load(run / "prior") == SamplingDefaults(**report["chosen"])


def test_eval_scores_what_it_is_asked_not_the_saved_default(evaluated: Path, tmp_path: Path) -> None:
    """A saved top-k must not stand in for the "all codes" a new eval asks for."""
    run = Path(shutil.copytree(evaluated, tmp_path / "run"))
    options = EvalOptions(n_per_class=2, temperatures=(1.0,), device="cpu")
    before = evaluate_run(run, options, progress=False)["samples"][0]
    SamplingDefaults(1.0, 1).save(run / "prior")
    after = evaluate_run(run, options, progress=False)["samples"][0]
    assert after == before and after["top_k"] is None


def test_bad_eval_options_are_named(evaluated: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        vqgen("eval", "--run", evaluated, "--temperature", "0", "--device", "cpu")
    assert exit_info.value.code == 2 and "--temperature=0.0 is not allowed" in capsys.readouterr().err
    assert vqgen("eval", "--run", evaluated.parent / "nowhere", "--device", "cpu") == 1
    assert "is not a vqgen run directory" in capsys.readouterr().err


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
    assert printed[-1].startswith("run finished in") and any(line.startswith("real held-out (floor)") for line in printed)
    assert any(line.startswith("chosen: temperature") for line in printed)


def test_default_settings_scale_top_k_with_the_codebook() -> None:
    assert EvalOptions(temperatures=(1.0,)).settings(512) == [(1.0, None), (1.0, 64), (1.0, 128)]
    assert EvalOptions(temperatures=(1.0,)).settings(4) == [(1.0, None), (1.0, 1)]  # K/8 = K/4 = 1: once
    assert EvalOptions(temperatures=(0.5, 2.0), top_ks=(3,)).settings(512) == [(0.5, 3), (2.0, 3)]


def test_judge_is_trained_once_and_read_back(tmp_path: Path) -> None:
    train, test = make_builtin("train", count=300), make_builtin("test", count=60)
    judge, accuracy = train_judge(train, test, tmp_path / "judge", device="cpu", progress=False)
    assert saved_step(tmp_path / "judge") == 4 and 0.0 <= accuracy <= 1.0
    stamp = (tmp_path / "judge" / "model.pt").stat().st_mtime_ns
    again, same = train_judge(train, test, tmp_path / "judge", device="cpu", progress=False)
    assert same == accuracy and (tmp_path / "judge" / "model.pt").stat().st_mtime_ns == stamp
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
    assert len(rows.real) == 50 and len(rows.reference) == 100
    assert not set(rows.real.tolist()) & set(rows.reference.tolist())
    assert torch.bincount(rows.labels, minlength=10).tolist() == [5] * 10
    assert torch.bincount(test.labels[rows.reference], minlength=10).tolist() == [10] * 10
    small = held_out(test, n_per_class=1000, seed=0)  # shrinks to what the smallest class allows
    assert small.per_group == int(torch.bincount(test.labels).min()) // 3
    with pytest.raises(VQGenError, match="too small to evaluate"):
        held_out(make_builtin("test", count=20), n_per_class=50, seed=0)  # 2 per class: none to spare
