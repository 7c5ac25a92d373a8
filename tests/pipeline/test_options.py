"""What a config field means sits on the field, and every command that takes a config's options takes
all of them, from the command line as from Python: one SamplingOptions from the flags to the sampler,
export at the precision the VQ-VAE trained with, and `eval --fid` that keeps no rank waiting."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import vqgen.pipeline.run as pipeline_run
import vqgen.stage1_vqvae.export as export
from vqgen.data.images import open_dataset
from vqgen.engine.configs import RESUME_RULES, fields_where
from vqgen.engine.train_config import TrainConfig
from vqgen.pipeline.arguments import build_parser
from vqgen.pipeline.evaluation.search import EvalOptions
from vqgen.pipeline.spec import RunSpec, _binding
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.sampling import SamplingOptions
from helpers import TINY_VQVAE, vqgen

RESUMED = (VQVAEConfig, PriorConfig, TrainConfig)  # saved with a run, compared when it resumes
CONFIGS = (*RESUMED, SamplingOptions, EvalOptions)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda cls: cls.__name__)
def test_every_field_says_what_it_means(cls: type) -> None:
    for field in dataclasses.fields(cls):
        assert len(field.metadata.get("help", "")) > 10, f"{cls.__name__}.{field.name} has no help"
        if cls in RESUMED:
            assert field.metadata["resume"] in RESUME_RULES, f"{cls.__name__}.{field.name} has no resume rule"


def flags_of(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, type(build_parser()._subparsers._group_actions[0])))
    return {flag for action in sub.choices[command]._actions for flag in action.option_strings}


def flag(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


@pytest.mark.parametrize("command", ["sample", "complete", "run", "eval"])
def test_every_command_that_samples_takes_every_sampling_option(command: str) -> None:
    assert {flag(f.name) for f in dataclasses.fields(SamplingOptions)} <= flags_of(command)


def test_each_command_offers_the_flags_its_configs_rules_give() -> None:
    data_fields = {*fields_where(VQVAEConfig, from_data=True), *fields_where(PriorConfig, from_data=True)}
    assert data_fields == {"in_channels", "image_height", "image_width", "codebook_size", "grid_height", "grid_width",
                           "num_classes"}
    run = flags_of("run")
    shared, own = fields_where(TrainConfig, shared=True, flag=True), fields_where(TrainConfig, shared=False, flag=True)
    assert {flag(name) for name in shared} <= run and not {flag(name) for name in own} & run
    for stage in ("vqvae-", "prior-"):
        assert {flag(name, stage) for name in own} <= run and not {flag(name, stage) for name in shared} & run
    assert {flag(f.name, "vqvae-") for f in dataclasses.fields(VQVAEConfig) if f.name not in data_fields} <= run
    assert not {flag(name) for name in fields_where(VQVAEConfig, from_data=True)} & flags_of("train-vqvae")
    assert not {flag(name) for name in fields_where(PriorConfig, from_data=True)} & flags_of("train-prior")
    assert "--tensorboard" in run and "--vqvae-tensorboard" not in run  # set by the command: a bare switch


def test_a_resumed_run_ignores_exactly_the_runtime_options() -> None:
    spec = RunSpec("builtin", None, VQVAEConfig.tiny(), TrainConfig(), PriorConfig.tiny(), TrainConfig())
    for name in (f.name for f in dataclasses.fields(TrainConfig)):
        value = {bool: True, int: 7, float: 0.5, str: "cpu"}.get(type(getattr(spec.prior_train, name)), "x")
        if name == "precision":
            value = "bf16"
        changed = dataclasses.replace(spec, prior_train=dataclasses.replace(spec.prior_train, **{name: value}))
        runtime = name in fields_where(TrainConfig, resume="runtime")
        assert (_binding(changed) == _binding(spec)) == runtime, name
    assert TrainConfig(schedule="cosine").binding() == (*fields_where(TrainConfig, resume="binding"), "steps")


def test_a_run_spec_of_an_older_version_keeps_its_sample_grid_options() -> None:
    raw = RunSpec("builtin", None, VQVAEConfig.tiny(), TrainConfig(), PriorConfig.tiny(), TrainConfig()).to_json()
    del raw["sampling"]
    spec = RunSpec.from_json({**raw, "temperature": 0.8, "guidance": None}, "run.json")
    assert spec.sampling == {"temperature": 0.8}


def test_python_callers_get_field_names_and_the_command_line_flags(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(Exception, match=r"^guidance_interval=2 is not allowed"):
        SamplingOptions(guidance_interval=2)
    with pytest.raises(Exception, match=r"^temperature=0 is not allowed"):
        EvalOptions(temperatures=(1.0, 0))
    assert vqgen("run", "--out", tmp_path / "r", "--guidance-interval", "2") == 2
    assert "--guidance-interval=2.0 is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _color_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize(("flags", "vqvae", "prior"), [((), False, True), (("--compile",), True, True),
                                                      (("--no-compile",), False, False)])
def test_a_flag_of_every_stage_sets_each_and_one_not_given_leaves_each_its_presets(
        flags: tuple[str, ...], vqvae: bool, prior: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs: list[RunSpec] = []
    monkeypatch.setattr(pipeline_run, "run", lambda spec, out, **kwargs: specs.append(spec))
    data = _color_folder(tmp_path / "images")
    assert vqgen("run", "--data", data, "--out", tmp_path / "r", "--device", "cpu", *flags) == 0
    spec = specs[0]  # the color default compiles its prior alone
    assert (spec.vqvae_train.compile, spec.prior_train.compile, spec.decoder_train.compile) == (vqvae, prior, vqvae)
    assert spec.vqvae_train.device == spec.prior_train.device == spec.decoder_train.device == "cpu"


@pytest.mark.parametrize("trained", ["fp32", "bf16"])
def test_export_encodes_at_the_precision_the_vqvae_trained_with_from_the_cli_and_python(
        trained: str, tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vqvae_dir = tmp_path / "vqvae"
    assert vqgen("train-vqvae", "--data", folder, "--out", vqvae_dir, *TINY_VQVAE, "--precision", trained) == 0
    used: list[str] = []
    real_autocast = export.autocast
    monkeypatch.setattr(export, "autocast", lambda precision, device: used.append(precision) or
                        real_autocast(precision, device))
    assert vqgen("export", "--vqvae", vqvae_dir, "--data", folder, "--out", tmp_path / "cli", "--device", "cpu") == 0
    model, data = VQVAE.from_pretrained(vqvae_dir), open_dataset(str(folder), "train")
    export.export_latents(model, data, tmp_path / "api", vqvae_dir=vqvae_dir, progress=False)
    export.export_latents(model, data, tmp_path / "folder", progress=False)  # a model folder that does not say
    assert set(used[:len(used) // 3 * 2]) == {trained} and set(used[len(used) // 3 * 2:]) == {"fp32"}


def test_eval_with_fid_leaves_the_process_group_before_rank_0_scores(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun the FID takes rank 0 alone longer than a collective may wait: every rank leaves the
    group first, so none sits in a barrier that times out and tears rank 0 down mid-FID."""
    import vqgen.pipeline.evaluation.evaluate as evaluate
    import vqgen.pipeline.evaluation.standard_fid as fid

    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    torch.distributed.init_process_group("gloo")
    grouped: list[bool] = []
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a, **k: grouped.append(torch.distributed.is_initialized())
                        or SimpleNamespace(summary=lambda: []))
    monkeypatch.setattr(fid, "require_torch_fidelity", lambda: None)
    monkeypatch.setattr(fid, "inception_weights", lambda path: path)
    monkeypatch.setattr(fid, "describe", lambda figures: "fid")
    monkeypatch.setattr(fid, "standard_fid", lambda *a, **k: grouped.append(torch.distributed.is_initialized()))
    try:
        assert vqgen("eval", "--run", tmp_path, "--fid", "--device", "cpu") == 0
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert grouped == [True, False]


def test_a_misspelt_sampling_option_from_python_is_named() -> None:
    from vqgen.engine.errors import UsageError
    from vqgen.pipeline.generate import Generator
    from vqgen.stage1_vqvae.model import VQVAE
    from vqgen.stage2_prior.model import GatedPixelCNN

    generator = Generator(VQVAE(VQVAEConfig.tiny()), GatedPixelCNN(PriorConfig.tiny(codebook_size=32)), "cpu")
    with pytest.raises(UsageError, match="not sampling options: temprature; the options are temperature, top_k"):
        generator.options(temprature=0.9)
    assert generator.options(temperature=0.9) == SamplingOptions(temperature=0.9)
