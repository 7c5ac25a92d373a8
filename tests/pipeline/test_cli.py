"""The vqgen command line on tiny data: every subcommand, run/skip/resume, and clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqgen.pipeline.cli import main
from helpers import TINY_PRIOR, TINY_RUN, TINY_VQVAE, vqgen

def test_each_subcommand_end_to_end(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert vqgen("train-vqvae", "--data", folder, "--out", run / "vqvae", *TINY_VQVAE, "--tensorboard") == 0
    for split in ("train", "test"):
        assert vqgen("export", "--vqvae", run / "vqvae", "--data", folder, "--split", split,
                     "--out", run / "latents" / split, "--device", "cpu") == 0
    assert vqgen("train-prior", "--latents", run / "latents" / "train", "--out", run / "prior", *TINY_PRIOR,
                 "--tensorboard") == 0
    for stage in ("vqvae", "prior"):
        assert len(list((run / stage / "tensorboard").glob("events.out.tfevents.*"))) == 1, stage
    assert vqgen("sample", "--vqvae", run / "vqvae", "--prior", run / "prior", "-n", "6", "--label", "1",
                 "--top-k", "3", "--seed", "1", "--out", run / "samples", "--device", "cpu") == 0
    codes = np.load(run / "samples" / "codes.npy", allow_pickle=False)
    assert codes.shape == (6, 4, 4) and len(list((run / "samples" / "images").glob("*.png"))) == 6
    with Image.open(run / "samples" / "grid.png") as grid:
        assert grid.format == "PNG"
    out = capsys.readouterr().out
    assert re.search(r"VQ-VAE saved in .*: PSNR \d+\.\d dB, codes \d+/32 \(\d+%\), perplexity \d+\.\d of 32 codes", out)
    assert re.search(r"prior saved in .*: \d\.\d{3} bits/code, unigram \d\.\d{3} bits/code", out)
    assert re.search(r"6 samples at T=1 top-k=3 top-p=all guidance=1 written to", out)


def test_run_then_run_again_does_no_work(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"vqvae", "prior", "export", "timings_s", "config", "machine"} <= set(report)
    used = round(report["vqvae"]["eval"]["codes_used"] * 64)  # a share in report.json, a count of K=64 printed
    assert re.fullmatch(rf"run finished in {re.escape(str(out))}: VQ-VAE PSNR \d+\.\d dB, codes {used}/64 "
                        rf"\({round(100 * used / 64)}%\), perplexity \d+\.\d of 64 codes; prior \d\.\d{{3}} bits/code, "
                        rf"unigram \d\.\d{{3}} bits/code; \d+\.\d{{3}} bits/dim; "
                        rf"samples in {re.escape(str(out / 'samples' / 'grid.png'))}",
                        capsys.readouterr().out.strip())
    assert "bits_per_code" in report["prior"]["eval"] and "psnr" in report["vqvae"]["eval"]
    for name in ("curves.png", "samples/grid.png", "vqvae/reconstructions.png"):
        assert (out / name).exists(), name
    watched = [out / "vqvae" / "model.safetensors", out / "prior" / "model.safetensors",
               out / "latents" / "train" / "codes.npy", out / "samples" / "codes.npy"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN) == 0
    assert [p.stat().st_mtime_ns for p in watched] == before


def test_killed_run_resumes_to_the_same_result(tmp_path: Path, folder: Path, ctrl_c_at) -> None:
    assert vqgen("run", "--data", folder, "--out", tmp_path / "whole", *TINY_RUN) == 0
    with ctrl_c_at(3, model="GatedPixelCNN"):
        assert vqgen("run", "--data", folder, "--out", tmp_path / "parts", *TINY_RUN) == 130
    assert vqgen("run", "--data", folder, "--out", tmp_path / "parts", *TINY_RUN) == 0
    whole, parts = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("whole", "parts"))
    assert whole["prior"]["eval"] == parts["prior"]["eval"] and whole["vqvae"]["eval"] == parts["vqvae"]["eval"]
    np.testing.assert_array_equal(np.load(tmp_path / "whole" / "samples" / "codes.npy"),
                                  np.load(tmp_path / "parts" / "samples" / "codes.npy"))


def test_other_settings_in_a_used_run_are_refused(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert vqgen("run", "--data", folder, "--out", tmp_path / "r", *TINY_RUN) == 0
    assert vqgen("run", "--data", folder, "--out", tmp_path / "r", *TINY_RUN, "--vqvae-lr", "0.5") == 1
    err = capsys.readouterr().err
    assert "holds a run with other settings (vqvae_train differ)" in err and "Traceback" not in err


@pytest.mark.parametrize("args, code, message", [
    (["train-vqvae", "--data", "imagenet-21k", "--out", "x"], 2, "unknown dataset 'imagenet-21k'"),
    (["train-vqvae", "--data", "mnist", "--data-root", "/nonexistent", "--out", "x"], 1, "/nonexistent"),
    (["export", "--vqvae", "/no/such/vqvae", "--out", "x"], 1, "vqvae directory not found: /no/such/vqvae"),
    (["train-prior", "--latents", "/no/such/latents", "--out", "x"], 1, "latent dataset not found"),
    (["train-vqvae", "--out", "x", "--steps", "0"], 2, "--steps=0 is not allowed; must be >= 1"),
    (["train-vqvae", "--out", "x", "--codebook-size", "1"], 2, "--codebook-size=1 is not allowed"),
    (["train-vqvae", "--out", "x", "--downsamples", "3"], 2, "not divisible"),
    (["run", "--out", "x", "--vqvae-lr", "-1"], 2, "--vqvae-lr=-1.0 is not allowed; must be > 0"),
    (["run", "--out", "x", "--prior-layers", "zero"], 2, "--prior-layers='zero' is not an integer"),
])
def test_bad_input_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                        args: list[str], code: int, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() or code == 1


@pytest.mark.parametrize("args, message", [
    (["run", "--out", "x", "--preset", "huge"], "invalid choice: 'huge'"),
    (["run", "--out", "x", "--temperature", "0"], "--temperature=0.0 is not allowed; must be > 0"),
    (["sample", "--vqvae", "v", "--prior", "p", "--out", "x", "--temperature", "-1"],
     "--temperature=-1.0 is not allowed; must be > 0"),
    (["eval", "--run", "x", "--top-k", "0"], "--top-k=0 is not allowed; must be in 1..K"),
    (["complete", "--vqvae", "v", "--prior", "p", "--image", "i.png", "--keep-top", "2", "--out", "x", "--top-p", "2"],
     "--top-p=2.0 is not allowed; must be in (0, 1]"),
    (["sample", "--vqvae", "v", "--prior", "p", "--out", "x", "--top-k", "many"], "--top-k='many' is not an integer"),
    (["sample", "--vqvae", "v", "--prior", "p", "--out", "x", "--guidance-interval", "1.5"],
     "--guidance-interval=1.5 is not allowed; must be in (0, 1]"),
    (["eval", "--run", "x", "--guidance-schedule", "cosine"], "invalid choice: 'cosine'"),
])
def test_bad_values_name_the_option_before_anything_is_read(capsys: pytest.CaptureFixture, args: list[str],
                                                           message: str) -> None:
    """Parsed by argparse or checked by the config the flag belongs to: exit code 2 either way, one line
    naming the flag, before any model or run directory (none of these exist) is looked at."""
    try:
        code = main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_sampling_checks_pair_and_options(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert vqgen("run", "--data", folder, "--out", run, *TINY_RUN) == 0
    assert vqgen("train-vqvae", "--data", folder, "--out", tmp_path / "other", *TINY_VQVAE,
                 "--codebook-size", "16") == 0
    capsys.readouterr()
    base = ["sample", "--prior", run / "prior", "--out", tmp_path / "s", "--device", "cpu"]
    cases = [
        (["--vqvae", tmp_path / "other"], "K=64 codes but the VQ-VAE has K=16"),
        (["--vqvae", run / "vqvae", "--top-k", "65"], "--top-k=65 is not allowed; must be in 1..64"),
        (["--vqvae", run / "vqvae", "--label", "2"], "--label=2 is outside the prior's classes 0..1"),
        (["--vqvae", run / "prior"], "not a 'vqvae' one"),
    ]
    for extra, message in cases:
        assert vqgen(*base, *extra) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "s").exists()
