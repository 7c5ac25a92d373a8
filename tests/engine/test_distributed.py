"""torchrun semantics on CPU: 2 gloo processes equal 1 process with the same global batch, for the
VQ-VAE, the export and the prior.

"Equal" within what float arithmetic allows. Two ranks sum each gradient and each EMA statistic in
another order than one process does; Adam divides by the root of tiny second moments, which turns
that noise into steps of up to the learning rate, and a near-tie in the nearest-code search can flip
one assignment. So weights are compared relative to how far training moved them: measured on this
test's config, reduction-order noise is below 0.3% of the update, while a rank reading the wrong
slice of the global batch, or EMA statistics left un-reduced, move tensors by 10-60% of it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqgen.data.builtin import make_builtin
from vqgen.engine.files import load_safetensors
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.distributed import Dist, init_distributed, on_main
from vqgen.engine.errors import VQGenError
from vqgen.engine.runtime import seed_everything
from vqgen.engine.train_config import TrainConfig
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.export import export_latents
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage1_vqvae.train import train_vqvae
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.train import train_prior

CONFIG = VQVAEConfig.tiny(kmeans_init=True, restart_every=2, restart_threshold=0.5)
TRAIN = TrainConfig(steps=4, batch_size=8, lr=1e-3, log_every=1, eval_every=4, checkpoint_every=2, device="cpu")
PRIOR = PriorConfig.tiny(layers=3)  # class-conditional (the latents are labelled); no dropout, so ranks draw nothing
PRIOR_TRAIN = TrainConfig(steps=4, batch_size=8, lr=3e-3, log_every=1, eval_every=4, checkpoint_every=2, device="cpu")
# Largest tolerated |two - one| / |one - initial| per tensor: 10x the noise, a tenth of a real bug.
DRIFT = 0.02


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stages(out: Path, ctx: Dist) -> None:
    """Train the VQ-VAE, export the train split, train the prior on it: what `vqgen run` chains."""
    train, held_out = make_builtin("train", seed=0, count=48), make_builtin("test", seed=0, count=8)
    train_vqvae(CONFIG, TRAIN, train, held_out, out / "vqvae", progress=False)
    export_latents(VQVAE.from_pretrained(out / "vqvae"), train, out / "latents", batch_size=5, ctx=ctx, progress=False)
    train_prior(PRIOR, PRIOR_TRAIN, out / "latents", out / "latents", out / "prior", progress=False)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), TQDM_DISABLE="1")
    torch.set_num_threads(1)
    try:
        _stages(Path(out), init_distributed(torch.device("cpu")))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    single = tmp_path_factory.mktemp("single")
    _stages(single, Dist())
    double = tmp_path_factory.mktemp("double")
    mp.start_processes(_worker, args=(2, _free_port(), str(double)), nprocs=2, start_method="spawn")
    return single, double


def initial_state(model: type, config: object) -> dict[str, torch.Tensor]:
    """The weights a stage's training starts from (it seeds, then builds the model)."""
    seed_everything(TRAIN.seed)
    return model(config).state_dict()


@pytest.mark.parametrize("stage, model, config", [("vqvae", VQVAE, CONFIG), ("prior", GatedPixelCNN, None)])
def test_two_processes_match_one_with_the_same_global_batch(runs: tuple[Path, Path], stage: str, model: type,
                                                            config: object) -> None:
    single, double = runs
    one, two = (model.from_pretrained(d / stage).state_dict() for d in (single, double))
    initial = initial_state(model, config or model.load_config(single / stage))
    assert one.keys() == two.keys() == initial.keys()
    for key in one:
        if not one[key].is_floating_point():
            assert torch.equal(two[key], one[key]), key
            continue
        moved = float((one[key] - initial[key]).norm())
        drift = float((two[key] - one[key]).norm())
        assert drift <= DRIFT * moved + 1e-6, f"{key}: 2 ranks differ from 1 by {drift:.3g}, training moved it {moved:.3g}"
    losses = [[r["loss"] for r in read_metrics(d / stage / "metrics.jsonl") if r["split"] == "train"]
              for d in (single, double)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-3)  # a wrong batch slice is off by ~4%


def test_checkpoint_is_saved_unwrapped(runs: tuple[Path, Path]) -> None:
    state = load_safetensors(runs[1] / "vqvae" / "model.safetensors")
    assert not any(k.startswith("module.") for k in state)


def test_sharded_export_equals_single_process_export(runs: tuple[Path, Path]) -> None:
    single, double = runs
    one = np.load(single / "latents" / "codes.npy", allow_pickle=False)
    two = np.load(double / "latents" / "codes.npy", allow_pickle=False)
    ref = VQVAE.from_pretrained(double / "vqvae")
    images, _ = make_builtin("train", seed=0, count=48).__getitems__(list(range(48)))
    np.testing.assert_array_equal(two, ref.encode(images).numpy())
    assert (one == two).mean() > 0.9  # weights agree to float tolerance, so nearly every code agrees


def _fail_on_rank_zero(rank: int, world: int, port: int, out: str) -> None:
    """Rank 0 fails inside on_main; every rank writes what it raised."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    ctx = init_distributed(torch.device("cpu"))

    def work() -> None:
        raise VQGenError("the test split is too small to evaluate")

    try:
        on_main(ctx, work)
        said = "nothing"
    except VQGenError as err:
        said = f"{type(err).__name__} shared={err.shared}: {err}"
    finally:
        dist.destroy_process_group()
    (Path(out) / f"rank{rank}.txt").write_text(said)


def test_an_error_of_rank_zero_alone_reaches_every_rank(tmp_path: Path) -> None:
    """Rank 0 works alone (eval's scoring, the report); its error must stop the other ranks with its
    message, not leave them waiting in their next collective, and be said once (shared)."""
    mp.start_processes(_fail_on_rank_zero, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    said = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert said[1].endswith("the test split is too small to evaluate") and "shared=True" in said[1]
    assert said[0].endswith("the test split is too small to evaluate")
