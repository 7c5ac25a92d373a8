"""The decoder stage from the command line: `vqgen tune-decoder` on a run's export, and `vqgen run --tune-decoder`,
whose samples, eval and exported model then decode through RUN/decoder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgen.engine.files import load_safetensors
from vqgen.pipeline.generate import Generator, run_vqvae
from vqgen.stage1_vqvae.model import VQVAE

from helpers import TINY_RUN, TINY_VQVAE, vqgen

TUNING = ["--decoder-steps", "6", "--decoder-batch-size", "8", "--decoder-checkpoint-every", "3"]


def test_tune_decoder_end_to_end(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert vqgen("train-vqvae", "--data", folder, "--out", run / "vqvae", *TINY_VQVAE) == 0
    assert vqgen("export", "--vqvae", run / "vqvae", "--data", folder, "--out", run / "latents", "--device", "cpu") == 0
    args = ["--vqvae", run / "vqvae", "--latents", run / "latents", "--data", folder, "--steps", "5", "--batch-size",
            "8", "--eval-every", "5", "--device", "cpu"]
    assert vqgen("tune-decoder", *args, "--out", run / "decoder", "--tensorboard") == 0
    assert re.search(r"VQ-VAE with its decoder tuned saved in .*decoder: PSNR \d+\.\d dB", capsys.readouterr().out)
    train_config = json.loads((run / "decoder" / "train_config.json").read_text())
    assert (train_config["steps"], train_config["schedule"], train_config["lr"]) == (5, "cooldown", 1e-3)
    assert len(list((run / "decoder" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert vqgen("tune-decoder", *args, "--flip", "--out", run / "flipped") == 1
    assert "holds 48 code grids but the images are 96" in capsys.readouterr().err
    assert not (run / "flipped").exists()


def test_a_run_tunes_its_decoder_and_samples_through_it(tmp_path: Path, folder: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert vqgen("run", "--data", folder, "--out", out, *TINY_RUN, "--tune-decoder", *TUNING, "--decoder-lr", "3e-3",
                 "--flip") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"]["decoder"] == 6 and report["decoder"]["eval"]["step"] == 6
    assert report["config"]["decoder_train"]["lr"] == 3e-3 and "decoder" in report["timings_s"]
    assert run_vqvae(out) == out / "decoder"
    assert torch.equal(Generator.from_pretrained(out, device="cpu").vqvae.decoder.net[-1].weight,
                       VQVAE.from_pretrained(out / "decoder").decoder.net[-1].weight)  # a run directory loads it too
    tuned, first = (load_safetensors(out / d / "model.safetensors") for d in ("decoder", "vqvae"))
    assert any(not torch.equal(tuned[k], first[k]) for k in tuned if k.startswith("decoder."))
    codes = torch.from_numpy(np.load(out / "samples" / "codes.npy").astype(np.int64))
    shown = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("L"))).float() / 255
                         for p in sorted((out / "samples" / "images").glob("*.png"))])[:, None]
    for model, decoded_by in ((VQVAE.from_pretrained(out / "decoder"), True), (VQVAE.from_pretrained(out / "vqvae"), False)):
        with torch.no_grad():
            decoded = model.decode(codes).clamp(0, 1)
        assert ((decoded - shown).abs().max() <= 1 / 255) == decoded_by  # the PNGs hold the tuned decoder's images
    assert vqgen("export-model", "--run", out, "--out", tmp_path / "model") == 0
    exported = load_safetensors(tmp_path / "model" / "vqvae" / "model.safetensors")
    card = (tmp_path / "model" / "README.md").read_text()
    assert "| VQ-VAE decoder, tuned alone on the exported codes (encoder and codebook frozen) | as above | 6 steps, " \
           "batch 8, lr 0.003 |" in card
    assert all(torch.equal(exported[k], tuned[k]) for k in tuned)
    again = tmp_path / "again"
    assert vqgen("run", "--data", folder, "--out", again, "--steps-of", out, *TINY_RUN, "--tune-decoder",
                 "--decoder-batch-size", "8", "--decoder-checkpoint-every", "3", "--decoder-lr", "3e-3", "--flip") == 0
    assert json.loads((again / "report.json").read_text())["steps"] == report["steps"]
    repeated = load_safetensors(again / "decoder" / "model.safetensors")
    assert all(torch.equal(repeated[k], tuned[k]) for k in tuned)


def test_decoder_options_without_tuning_are_refused(tmp_path: Path, folder: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert vqgen("run", "--data", folder, "--out", tmp_path / "run", *TINY_RUN, "--decoder-steps", "3") == 2
    assert "add --tune-decoder" in capsys.readouterr().err
    assert not (tmp_path / "run" / "vqvae").exists()  # refused before any training
