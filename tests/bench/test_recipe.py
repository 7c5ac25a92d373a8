"""bench.recipe end to end on tiny latents: each variant's marks, a budget-ended schedule at its last mark only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO, structured_latents
from vqgen.stage2_prior.model import GatedPixelCNN


def test_variants_at_equal_time_report_each_mark_side_by_side(tmp_path: Path) -> None:
    for split, seed in (("train", 0), ("test", 1)):
        structured_latents(tmp_path / "latents" / split, 96, seed)
    done = subprocess.run([sys.executable, "-m", "bench.recipe", "--latents", tmp_path / "latents", "--variant",
                           "preset:", "--variant", "cool:schedule=cooldown,ema=0,layers=3", "--minutes", "0.01",
                           "0.03", "--eval-grids", "8", "--keep", tmp_path / "priors"], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert GatedPixelCNN.load_config(tmp_path / "priors" / "cool").layers == 3  # kept for `vqgen eval`
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    marks = {(r["variant"], r["minutes"]) for r in lines if "variant" in r}
    assert marks == {("preset", 0.01), ("preset", 0.03), ("cool", 0.03)}
    cool = next(r for r in lines if r.get("variant") == "cool")
    assert (cool["layers"], cool["schedule"], cool["ema"]) == (3, "cooldown", 0.0)
    side_by_side = {r["minutes"]: r["bits_per_code"] for r in lines if "lowest" in r}
    assert side_by_side[0.03].keys() == {"preset", "cool"} and side_by_side[0.01].keys() == {"preset"}


def test_a_field_neither_config_has_is_refused_before_any_training(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.recipe", "--latents", tmp_path, "--variant", "x:width=3"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode != 0 and "'width=3' in --variant 'x:width=3' is not FIELD=VALUE" in done.stderr


def test_a_value_a_config_refuses_is_one_line(tmp_path: Path) -> None:
    for split, seed in (("train", 0), ("test", 1)):
        structured_latents(tmp_path / split, 16, seed)
    done = subprocess.run([sys.executable, "-m", "bench.recipe", "--latents", tmp_path, "--variant", "x:cooldown=2"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode != 0 and done.stderr.strip() == ("bench.recipe: cooldown=2.0 is not allowed; must be "
                                                            "in (0, 1)")


def test_a_kept_prior_is_never_overwritten(tmp_path: Path) -> None:
    for split, seed in (("train", 0), ("test", 1)):
        structured_latents(tmp_path / split, 16, seed)
    (tmp_path / "priors" / "preset").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "bench.recipe", "--latents", tmp_path, "--variant", "preset",
                           "--keep", tmp_path / "priors"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode != 0 and "priors/preset exists; give --keep a new folder" in done.stderr


def test_two_variants_of_one_name_are_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.recipe", "--latents", tmp_path, "--variant", "a:lr=1e-3",
                           "--variant", "a:lr=2e-3"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode != 0 and "two variants share a NAME" in done.stderr
