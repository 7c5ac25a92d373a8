"""Models by Hugging Face Hub id, offline: a folder laid out as huggingface_hub's cache of a downloaded repo
is read by the real `snapshot_download` in offline mode, so everything but the network call runs; and
the one-line errors of a missing package, a repo not there, and a local path that wins."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from vqgen.engine.errors import VQGenError
from vqgen.engine.hub import is_hub_id
from vqgen.pipeline.generate import Generator, save_sampling
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import SamplingOptions

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "someone/vqgen-tiny"


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """A folder as `vqgen export-model` writes it: vqvae/, prior/ with its sampling defaults."""
    folder = tmp_path / "exported"
    VQVAE(VQVAEConfig.tiny(codebook_size=16)).save_pretrained(folder / "vqvae")
    GatedPixelCNN(PriorConfig.tiny(num_classes=3)).save_pretrained(folder / "prior")
    save_sampling(SamplingOptions(temperature=0.8), folder / "prior")
    return folder


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub in offline mode (every request refused) with its cache in tmp_path/hub."""
    constants = pytest.importorskip("huggingface_hub.constants", reason="Hub ids need the optional "
                                    "huggingface_hub: pip install 'vqgen[hub]'")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def cache_repo(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> Path:
    """`folder` where huggingface_hub keeps a downloaded repo: models--OWNER--NAME/snapshots/COMMIT, with
    refs/REVISION naming the commit."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = Path(shutil.copytree(folder, storage / "snapshots" / COMMIT))
    (storage / "refs").mkdir()
    (storage / "refs" / revision).write_text(COMMIT)
    return snapshot


def test_a_model_loads_by_hub_id_as_from_its_folder(exported: Path, offline_hub: Path) -> None:
    cache_repo(offline_hub, REPO, exported)
    images = torch.rand(2, 1, 28, 28)
    local, by_id = VQVAE.from_pretrained(exported / "vqvae"), VQVAE.from_pretrained(REPO, subfolder="vqvae")
    assert torch.equal(local(images).reconstruction, by_id(images).reconstruction)


def test_a_generator_loads_from_one_repo_of_both_models(exported: Path, offline_hub: Path) -> None:
    snapshot = cache_repo(offline_hub, REPO, exported, revision="v1")
    by_id = Generator.from_pretrained(f"{REPO}@v1", device="cpu")
    local = Generator.from_pretrained(exported / "vqvae", exported / "prior", device="cpu")
    assert by_id.defaults == local.defaults == SamplingOptions(temperature=0.8)
    assert torch.equal(by_id.sample(3, labels=1, seed=5, progress=False).images,
                       local.sample(3, labels=1, seed=5, progress=False).images)
    assert torch.equal(Generator.from_pretrained(snapshot, device="cpu").sample(3, labels=1, seed=5,
                                                                                progress=False).images,
                       local.sample(3, labels=1, seed=5, progress=False).images)


def test_a_repo_that_is_not_there_is_one_line(offline_hub: Path) -> None:
    with pytest.raises(VQGenError, match=f"{REPO} is not a local folder, and downloading it from the Hugging Face "
                                         "Hub failed") as caught:
        Generator.from_pretrained(REPO, device="cpu")
    assert "\n" not in str(caught.value)


def test_without_huggingface_hub_a_hub_id_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(VQGenError, match=r"someone/model is not a local folder; .*pip install 'vqgen\[hub\]'"):
        VQVAE.from_pretrained("someone/model")


def test_an_existing_local_path_is_never_looked_up(exported: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # any Hub look-up would fail
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("exported/vqvae")
    VQVAE.from_pretrained("exported/vqvae")


@pytest.mark.parametrize("source, expected", [
    ("owner/name", True), ("owner/name@v1.0", True), ("owner/name@refs/pr/1", True),
    ("owner/name/vqvae", False), ("name", False), ("/abs/owner", False), ("./owner/name", False),
])
def test_what_reads_as_a_hub_id(source: str, expected: bool) -> None:
    assert is_hub_id(source) == expected


def test_a_local_folder_without_a_model_sub_folder_is_one_line_not_a_hub_lookup(
        exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what the caller typed may name a Hub repo: "mymodel/prior" derived from a local mymodel/ is a
    missing sub-folder, never a download (nor advice to install the Hub extra)."""
    import vqgen.engine.hub as hub

    monkeypatch.setattr(hub, "download", lambda hub_id: pytest.fail(f"looked up {hub_id} on the Hub"))
    for missing in ("prior", "vqvae"):
        folder = Path(shutil.copytree(exported, tmp_path / f"without-{missing}"))
        shutil.rmtree(folder / missing)
        monkeypatch.chdir(tmp_path)  # a relative path, as a user types it, shaped like a Hub id
        with pytest.raises(VQGenError) as error:
            Generator.from_pretrained(f"without-{missing}")
        message = str(error.value)
        assert f"holds no {missing}/ folder" in message and "pip install" not in message and "\n" not in message
