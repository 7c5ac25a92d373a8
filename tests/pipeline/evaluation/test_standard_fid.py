"""`vqgen eval --fid` offline: torch-fidelity runs the very code path of the standard FID with a small
fixed CNN registered in Inception's place (its weights are a download this machine may not make), and
our Frechet distance and precision/recall (pipeline/evaluation/fidelity.py) are held against
torch-fidelity's on the same features."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import TINY_RUN, vqgen
from vqgen.engine.errors import VQGenError
from vqgen.pipeline.evaluation.report import describe_setting
from vqgen.pipeline.evaluation.fidelity import frechet_distance, precision_recall
from vqgen.pipeline.generate import Generator
from vqgen.pipeline.spec import load_spec
from vqgen.pipeline.evaluation.standard_fid import (FEATURE_EXTRACTOR, Uint8Images, draw, inception_weights,
                                                    standard_fid)

torch_fidelity = pytest.importorskip("torch_fidelity", reason="the standard FID is optional: pip install 'vqgen[fid]'")
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric  # noqa: E402
from torch_fidelity.metric_prc import prc_features_to_metric  # noqa: E402
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY  # noqa: E402

SAMPLES = 40


class TinyFeatures(torch_fidelity.FeatureExtractorBase):
    """A fixed random CNN standing in for Inception: 16 features (FID, KID) and 10 logits (IS) of uint8 RGB."""

    def __init__(self, name: str, features_list: list[str], **kwargs: object) -> None:
        super().__init__(name, features_list)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv, self.head = nn.Conv2d(3, 16, 3, stride=2), nn.Linear(16, 10)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits_unbiased" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.conv(images.float() / 255).relu().mean((2, 3))  # (B, 16)
        named = {"features": features, "logits_unbiased": self.head(features)}
        return tuple(named[name] for name in self.features_list)


def fake_inception_weights(path: Path) -> Path:
    """A file of the shape inception_weights checks; TinyFeatures, registered in Inception's place, ignores it."""
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, path)
    return path


@pytest.fixture(scope="module")
def fid_run(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    """A tiny run, evaluated at one setting with --fid (TinyFeatures standing in for Inception)."""
    root = tmp_path_factory.mktemp("fid")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(FEATURE_EXTRACTORS_REGISTRY, FEATURE_EXTRACTOR, TinyFeatures)
        assert vqgen("run", "--data", folder, "--out", root / "run", *TINY_RUN) == 0
        assert vqgen("eval", "--run", root / "run", "--temperature", "1", "--top-k", "none", "--guidance", "1",
                     "--device", "cpu", "--fid", "--fid-samples", SAMPLES,
                     "--fid-weights", fake_inception_weights(root / "inception.pth")) == 0
    return root / "run"


def test_eval_fid_writes_the_figures_with_their_protocol(fid_run: Path) -> None:
    figures = json.loads((fid_run / "eval.json").read_text())["standard_fid"]
    train_images = 48  # the folder fixture's train split
    assert figures["feature_extractor"] == FEATURE_EXTRACTOR and figures["library"].startswith("torch-fidelity ")
    assert figures["samples"] == SAMPLES and figures["reference"] == f"train split, {train_images} images"
    assert figures["kid_subset_size"] == SAMPLES and figures["sampling"]["temperature"] == 1.0
    assert figures["fid"] > 0 and np.isfinite(figures["kid_mean"]) and figures["kid_std"] >= 0
    assert 1.0 <= figures["inception_score_mean"] <= 10.0  # between one class and all ten of TinyFeatures


def test_the_fid_written_is_our_frechet_distance_of_the_same_images(fid_run: Path) -> None:
    """The samples are drawn again with the same seed, the train split read again, and both embedded
    by the same CNN: our float64 Frechet distance agrees with the figure torch-fidelity wrote."""
    figures = json.loads((fid_run / "eval.json").read_text())["standard_fid"]
    generator = Generator.from_pretrained(fid_run / "vqvae", fid_run / "prior", device="cpu")
    samples = draw(generator, SAMPLES, figures["seed"], progress=False)
    train = load_spec(fid_run).open_split("train", index_dir=fid_run)
    embed = TinyFeatures("tiny", ["features"]).eval()
    with torch.no_grad():
        fake, real = (embed(torch.stack(Uint8Images(pixels, n).__getitems__(range(n))))[0].numpy()
                      for pixels, n in ((lambda rows: samples[rows], SAMPLES), (train.pixels, len(train))))
    assert frechet_distance(fake, real) == pytest.approx(figures["fid"], rel=1e-7)


def test_the_model_card_shows_the_eval_figures_and_the_standard_fid(fid_run: Path, tmp_path: Path) -> None:
    assert vqgen("export-model", "--run", fid_run, "--out", tmp_path / "model") == 0
    card = (tmp_path / "model" / "README.md").read_text()
    report = json.loads((fid_run / "eval.json").read_text())
    assert f"| real held-out (floor) | {report['real']['frechet']:.2f} | 1.0x |" in card
    assert f"| samples, {describe_setting(report['chosen'])} | {report['chosen']['frechet']:.2f} |" in card
    assert (f"Standard FID ({FEATURE_EXTRACTOR}, torch-fidelity {torch_fidelity.__version__}): "
            f"{report['standard_fid']['fid']:.2f} for {SAMPLES} samples against the train split, 48 images") in card
    sampling = (tmp_path / "model" / "prior" / "sampling.json", fid_run / "prior" / "sampling.json")
    assert sampling[0].read_text() == sampling[1].read_text()


def correlated_features(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    mixing = rng.standard_normal((32, 32)) / 6
    return rng.standard_normal((n, 32)) @ mixing + shift


def test_our_frechet_distance_and_precision_recall_agree_with_torch_fidelity() -> None:
    rng = np.random.default_rng(0)
    real, fake = correlated_features(rng, 600, 0.0), correlated_features(rng, 400, 0.3)
    theirs = fid_statistics_to_metric(*(fid_features_to_statistics(torch.from_numpy(x)) for x in (fake, real)),
                                      verbose=False)["frechet_inception_distance"]
    assert frechet_distance(fake, real) == pytest.approx(theirs, rel=1e-10)
    single = [x.astype(np.float32) for x in (fake, real)]  # as feature extractors give them
    theirs_single = fid_statistics_to_metric(*(fid_features_to_statistics(torch.from_numpy(x)) for x in single),
                                             verbose=False)["frechet_inception_distance"]
    assert frechet_distance(*single) == pytest.approx(theirs_single, rel=1e-7)
    prc = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    # shares of 400 and 600 points: equal to 1e-6 is equal counts (torch-fidelity averages in float32)
    assert precision_recall(real, fake) == pytest.approx((prc["precision"], prc["recall"]), abs=1e-6)


def test_without_torch_fidelity_fid_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    assert vqgen("eval", "--run", tmp_path, "--fid", "--device", "cpu") == 1
    assert capsys.readouterr().err.strip() == ("vqgen eval: error: --fid needs torch-fidelity, which is not "
                                               "installed: pip install 'vqgen[fid]'")


def test_a_failed_download_names_fid_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(url: str, destination: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(VQGenError, match="could not be downloaded from https://.*--fid-weights PATH") as caught:
        inception_weights()
    assert "\n" not in str(caught.value)


def test_weights_holding_code_or_other_tensors_are_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"fc.weight": Payload()}, tmp_path / "code.pth")
    with pytest.raises(VQGenError, match="refusing to unpickle"):
        inception_weights(tmp_path / "code.pth")
    assert not (tmp_path / "pwned").exists()
    torch.save({"fc.weight": torch.zeros(10, 16)}, tmp_path / "other.pth")
    with pytest.raises(VQGenError, match="is not torch-fidelity's Inception-v3 weights"):
        inception_weights(tmp_path / "other.pth")


def test_a_mistyped_run_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(VQGenError, match="TYPO is not a vqgen run directory") as caught:
        standard_fid(tmp_path / "TYPO", weights=fake_inception_weights(tmp_path / "inception.pth"), device="cpu")
    assert "\n" not in str(caught.value) and not (tmp_path / "TYPO").exists()
