"""What the README promises under torchrun, run as a user runs it: `torchrun --nproc_per_node 2 -m vqgen`
with gloo on CPU, every stage end to end, and an error on one rank ending the job with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqgen.engine.files import load_tensors

from helpers import REPO, TINY_PRIOR, TINY_RUN, TINY_VQVAE

TIMEOUT = 240  # a job whose ranks wait on each other forever fails here instead of hanging the suite


def failure(done: subprocess.CompletedProcess) -> str:
    """What a failed torchrun printed: its error lines from any rank (progress bars carry none), then its tail."""
    errors = [line for line in done.stderr.splitlines() if "rror" in line or "raceback" in line or "terminate" in line]
    return "\n".join(errors[:40]) + "\n...\n" + done.stderr[-1500:]


def torchrun(*args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vqgen", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=REPO)


def vqgen_frames(stderr: str) -> list[str]:
    """Traceback lines that point into vqgen (torchrun's own summary of a failed job points into torch)."""
    return [line for line in stderr.splitlines()
            if line.strip().startswith("File") and str(REPO) in line and "site-packages" not in line]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("torchrun") / "run"
    return out, torchrun("run", "--data", folder, "--out", out, *TINY_RUN, "--eval", "--tune-decoder",
                         "--decoder-steps", "4", "--decoder-batch-size", "8")


def test_vqgen_run_finishes_under_torchrun_with_every_file(job: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, done = job
    assert done.returncode == 0, failure(done)
    report = json.loads((out / "report.json").read_text())
    assert report["vqvae"]["setup"]["processes"] == report["prior"]["setup"]["processes"] == 2
    assert report["decoder"]["setup"]["processes"] == 2 and report["steps"]["decoder"] == 4
    assert report["eval"]["chosen"]["frechet"] >= 0 and report["eval"]["classification_accuracy_score"]
    for split in ("train", "test"):
        manifest = json.loads((out / "latents" / split / "manifest.json").read_text())
        assert np.load(out / "latents" / split / "codes.npy").shape == (manifest["count"], 4, 4)
    with Image.open(out / "samples" / "grid.png") as grid:
        assert grid.size[0] > 16
    assert (out / "judge" / "model.safetensors").exists() and (out / "prior" / "sampling.json").exists()
    assert done.stdout.count("run finished in") == 1  # rank 0 reports; rank 1 keeps quiet
    assert vqgen_frames(done.stderr) == []


def test_stage_commands_run_under_torchrun(job: tuple[Path, subprocess.CompletedProcess], folder: Path,
                                           tmp_path: Path) -> None:
    out, _ = job
    steps = [("train-vqvae", "--data", folder, "--out", tmp_path / "vqvae", *TINY_VQVAE),
             ("export", "--vqvae", tmp_path / "vqvae", "--data", folder, "--out", tmp_path / "latents" / "train",
              "--device", "cpu"),
             ("tune-decoder", "--vqvae", tmp_path / "vqvae", "--latents", tmp_path / "latents" / "train", "--data",
              folder, "--out", tmp_path / "decoder", "--steps", "2", "--batch-size", "8", "--device", "cpu"),
             ("train-prior", "--latents", tmp_path / "latents" / "train", "--eval-latents",
              tmp_path / "latents" / "train", "--out", tmp_path / "prior", *TINY_PRIOR),
             ("sample", "--vqvae", out / "vqvae", "--prior", out / "prior", "-n", "4", "--out", tmp_path / "samples",
              "--device", "cpu"),
             ("eval", "--run-dir", out, "--temperature", "1", "--guidance", "1", "--device", "cpu")]
    for args in steps:
        done = torchrun(*args)
        assert done.returncode == 0, (args[0], failure(done))
    assert np.load(tmp_path / "samples" / "codes.npy").shape == (4, 4, 4)
    assert json.loads((tmp_path / "latents" / "train" / "manifest.json").read_text())["count"] == 48


def test_an_error_every_rank_meets_ends_the_job_with_one_line(tmp_path: Path, folder: Path) -> None:
    """A test split too small to evaluate: every rank finds it before training, and rank 0 alone says it
    (an error of rank 0 alone reaching the others: tests/engine/test_distributed.py)."""
    small = tmp_path / "small"
    for path in folder.rglob("*.png"):  # the same train/, and 3 test images a class: too few to evaluate
        if path.parent.parent.name == "train" or int(path.stem) < 3:
            (small / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            (small / path.relative_to(folder)).write_bytes(path.read_bytes())
    done = torchrun("run", "--data", small, "--out", tmp_path / "run", *TINY_RUN, "--eval")
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("vqgen run")]
    assert said == [said[0]] and "test split is too small to evaluate" in said[0], done.stderr[-3000:]
    assert vqgen_frames(done.stderr) == []


def test_a_time_budget_stops_every_rank_at_the_same_step(job: tuple[Path, subprocess.CompletedProcess],
                                                         tmp_path: Path) -> None:
    """The ranks agree on the budget at log steps: all stop at the first log step past it, evaluate and
    save (a rank that stopped alone would leave the other waiting in a collective until the timeout)."""
    out, _ = job
    done = torchrun("train-prior", "--latents", out / "latents" / "train", "--eval-latents", out / "latents" / "test",
                    "--out", tmp_path / "prior", *TINY_PRIOR, "--steps", "1000", "--eval-every", "1000",
                    "--max-seconds", "0.001", "--log-every", "3")
    assert done.returncode == 0, failure(done)
    records = [json.loads(line) for line in (tmp_path / "prior" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "eval"] == [3]
    assert max(r["step"] for r in records) == 3


def test_a_run_sized_in_minutes_plans_once_and_every_rank_ends_its_cooldown_together(folder: Path,
                                                                                       tmp_path: Path) -> None:
    """Rank 0 plans the prior's seconds (budget.json) and both ranks train to it; the ranks agree on the steps
    the budget reaches, so the cool-down ends at the same step on both (the job would hang otherwise)."""
    capped = {i + k for i, a in enumerate(TINY_RUN) if a in ("--vqvae-steps", "--prior-steps") for k in (0, 1)}
    uncapped = [a for i, a in enumerate(TINY_RUN) if i not in capped]
    out = tmp_path / "run"
    done = torchrun("run", "--data", folder, "--out", out, *uncapped, "--minutes", "0.5", "--prior-schedule",
                    "cooldown", "--prior-log-every", "5")
    assert done.returncode == 0, failure(done)
    report = json.loads((out / "report.json").read_text())
    assert report["budget"]["prior_s"] > 0 and report["prior"]["setup"]["processes"] == 2
    state = load_tensors(out / "prior" / "state.pt")
    assert int(state["fixed_steps"]) == int(state["step"]) == report["steps"]["prior"] > 5
