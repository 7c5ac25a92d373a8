"""Faults: killed runs (SIGTERM and SIGKILL), killed exports, failing disks, in real subprocesses."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgen.engine.checkpoint import saved_step
from vqgen.engine.errors import VQGenError
from vqgen.engine.files import load_tensors, read_json
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE
from helpers import REPO



def train_args(folder: Path, out: Path) -> list[str]:
    return ["train-vqvae", "--data", str(folder), "--out", str(out), "--preset", "tiny", "--hidden", "32",
            "--steps", "300", "--batch-size", "16", "--log-every", "2", "--checkpoint-every", "7",
            "--eval-every", "1000", "--device", "cpu", "--kmeans-init", "--restart-every", "5"]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vqgen", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(args: list[str]) -> subprocess.CompletedProcess:
    process = start(args)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def wait_for_step(metrics: Path, step: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if any(r.get("step", 0) >= step for r in read_metrics(metrics)):
            return
        time.sleep(0.01)
    raise AssertionError(f"training never reached step {step}: {process.communicate()[1]}")


def assert_directory_is_whole(directory: Path) -> None:
    """Whatever a kill left behind loads cleanly: no half-written checkpoint."""
    assert read_json(directory / "config.json")["kind"] == "vqvae"
    state = load_tensors(directory / "state.pt")
    VQVAE.from_pretrained(directory)
    assert int(state["step"]) % 7 == 0 or int(state["step"]) > 0


@pytest.fixture(scope="module")
def uninterrupted(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("whole") / "vqvae"
    finish(train_args(folder, out))
    return VQVAE.from_pretrained(out).state_dict()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killed_training_resumes_to_the_same_weights(tmp_path: Path, folder: Path, sig: signal.Signals,
                                                     uninterrupted: dict[str, torch.Tensor]) -> None:
    out = tmp_path / "vqvae"
    process = start(train_args(folder, out))
    wait_for_step(out / "metrics.jsonl", random.Random(int(sig)).randint(10, 120), process)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert_directory_is_whole(out)
    if sig != signal.SIGKILL:
        assert process.returncode == 128 + sig, err
        assert "checkpoint saved" in err and "Traceback" not in err
        assert saved_step(out) == max(r["step"] for r in read_metrics(out / "metrics.jsonl"))
    finish(train_args(folder, out))
    resumed = VQVAE.from_pretrained(out).state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 300
    assert not list(out.glob(".*.tmp"))


def test_killed_export_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    args = ["export", "--vqvae", str(tmp_path / "vqvae"), "--data", "builtin", "--batch-size", "8",
            "--device", "cpu", "--out"]
    VQVAE(VQVAEConfig.tiny()).save_pretrained(tmp_path / "vqvae")
    process = start([*args, str(tmp_path / "latents")])
    deadline = time.time() + 120
    while not (tmp_path / ".latents.partial" / "codes.npy").exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (tmp_path / "latents").exists()
    finish([*args, str(tmp_path / "latents")])
    finish([*args, str(tmp_path / "clean")])
    np.testing.assert_array_equal(np.load(tmp_path / "latents" / "codes.npy"), np.load(tmp_path / "clean" / "codes.npy"))
    assert not (tmp_path / ".latents.partial").exists()


def test_unwritable_checkpoint_path_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqgen.engine import files
    from vqgen.data.builtin import make_builtin
    from vqgen.stage1_vqvae.train import train_vqvae

    train, held_out = make_builtin("train", seed=0, count=32), make_builtin("test", seed=0, count=8)
    config = TrainConfig(steps=6, batch_size=8, log_every=1, checkpoint_every=2, eval_every=100, device="cpu")
    out = tmp_path / "v"
    real = files.tempfile.mkstemp

    def disk_full_after_first_checkpoint(*args, **kwargs):
        if (out / "model.safetensors").exists() and str(out) in str(kwargs.get("dir", "")):
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", disk_full_after_first_checkpoint)
    with pytest.raises(VQGenError, match=f"cannot write {out}.*No space left on device"):
        train_vqvae(VQVAEConfig.tiny(), config, train, held_out, out, progress=False)
    assert saved_step(out) == 2
    VQVAE.from_pretrained(out)
