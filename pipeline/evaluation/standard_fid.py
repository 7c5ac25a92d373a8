"""The standard FID of a run, comparable with papers' figures: `vqgen eval --fid`.

Our own Frechet distance (pipeline/evaluation/fidelity.py) is measured on the run's judge, which
suits ranking sampling settings of one run but is no figure to put beside another paper's. This
module computes the protocol papers use (Heusel et al. 2017, "GANs Trained by a Two Time-Scale
Update Rule Converge to a Local Nash Equilibrium", arXiv 1706.08500): the 2048-d pool features of the TensorFlow
Inception-v3 graph of the original FID code, of N generated images (10,000 by default, spread evenly
over the classes) against every image of the train split; and, from the same features, KID
(Binkowski et al. 2018, arXiv 1801.01401, subsets of 1,000) and the Inception Score (Salimans et al.
2016, arXiv 1606.03498, 10 splits) of the samples.

It uses torch-fidelity (an optional extra, `pip install 'vqgen[fid]'`) rather than torchmetrics:
torch-fidelity's "inception-v3-compat" extractor carries the TF graph's weights and its TF1 bilinear
resize, built to reproduce the reference TF code's values (torchmetrics' FID wraps the same port),
it computes FID, KID and IS from one feature pass, it takes in-memory datasets of uint8 images, and
it lets a small feature extractor be registered in Inception's place, which is how the code path is
tested offline. Images go in as uint8 RGB, as a PNG holds them (gray images repeated
over three channels, the usual practice for MNIST).

The Inception weights (about 90 MB) are downloaded on first use into torch's hub cache, where
torch-fidelity looks for them, or read from a file given (--fid-weights). torch-fidelity unpickles
that file; it is opened here first with weights_only=True, so a file holding anything but tensors
is refused before then.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from vqgen.engine.errors import VQGenError
from vqgen.engine.files import load_tensors, read_json, write_json
from vqgen.engine.locks import directory_lock
from vqgen.engine.runtime import pick_device
from vqgen.pipeline.evaluation.report import EVAL_FILE
from vqgen.pipeline.generate import PRIOR_FOLDER, Generator, run_vqvae
from vqgen.pipeline.spec import load_spec, require_run_dir

FID_SAMPLES = 10_000  # the N of most papers' CIFAR-10 and ImageNet FIDs (some use 50,000)
FEATURE_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's port of the TF FID graph
KID_SUBSET = 1_000    # torch-fidelity's default, that of Binkowski et al. 2018
SAMPLE_BATCH = 500    # samples drawn per call: bounds the sampler's memory whatever N is
FID_EXTRA = "pip install 'vqgen[fid]'"
INCEPTION_FC = (1008, 2048)  # the TF graph's classifier, which torch-fidelity's Inception port keeps


def require_torch_fidelity() -> Any:
    """The torch_fidelity module, or one line saying how to install it."""
    try:
        import torch_fidelity
    except ImportError:
        raise VQGenError(f"--fid needs torch-fidelity, which is not installed: {FID_EXTRA}") from None
    return torch_fidelity


def inception_weights(path: Path | None = None) -> Path:
    """A checked local file of torch-fidelity's Inception weights: `path`, else torch-fidelity's own
    download into torch's hub cache, fetched now if it is not there; a failed download is one line."""
    if path is None:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        path = Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
        if not path.exists():
            _download(URL_INCEPTION_V3, path)
    state = load_tensors(path, what="Inception weights")  # weights_only: refuses pickled code
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if not isinstance(fc, torch.Tensor) or tuple(fc.shape) != INCEPTION_FC:
        raise VQGenError(f"{path} is not torch-fidelity's Inception-v3 weights (no fc.weight of shape "
                         f"{INCEPTION_FC[0]}x{INCEPTION_FC[1]}); pass weights-inception-2015-12-05-6726825d.pth")
    return path


def _download(url: str, path: Path) -> None:
    """torch.hub's download (to a temporary file, moved into place when complete)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path))
    except OSError as err:  # URLError and HTTPError are OSErrors
        raise VQGenError(f"the Inception weights for --fid could not be downloaded from {url} "
                         f"({type(err).__name__}: {err}); download that file where you can and pass it as "
                         "--fid-weights PATH") from None


class Uint8Images(Dataset):
    """`count` uint8 RGB images (3, H, W) read through `pixels(indices) -> uint8 (B, C, H, W)`, batch by
    batch (the loader calls `__getitems__`), the input torch-fidelity takes."""

    def __init__(self, pixels: Callable[[Sequence[int]], torch.Tensor], count: int) -> None:
        self.pixels, self.count = pixels, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        batch = self.pixels(list(indices))  # (B, C, H, W) uint8
        return list(batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch)  # gray -> RGB


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> uint8, rounded as the sample PNGs are (engine/grids.py)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def draw(generator: Generator, n: int, seed: int, progress: bool = True) -> torch.Tensor:
    """n samples as uint8 (n, C, H, W) at the prior's sampling defaults, spread evenly over the classes
    (sorted runs of equal length) when the prior is conditional, SAMPLE_BATCH at a time."""
    labels = generator.spread_labels(n) if generator.num_classes else None
    chunks = []
    for index, start in enumerate(tqdm(range(0, n, SAMPLE_BATCH), desc="FID samples", disable=not progress)):
        rows = slice(start, min(start + SAMPLE_BATCH, n))
        batch_labels = None if labels is None else labels[rows]
        images = generator.sample(rows.stop - rows.start, labels=batch_labels, seed=seed + index, progress=False)
        chunks.append(to_uint8(images.images))
    return torch.cat(chunks)


def fidelity_metrics(samples: Dataset, reference: Dataset, device: torch.device, weights: Path | None,
                     feature_extractor: str = FEATURE_EXTRACTOR, progress: bool = True) -> dict[str, float]:
    """torch-fidelity's FID and KID of `samples` against `reference` and the samples' Inception Score,
    on one feature pass of each set; `feature_extractor` is a name in torch-fidelity's registry."""
    torch_fidelity = require_torch_fidelity()
    try:
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            return torch_fidelity.calculate_metrics(
                input1=samples, input2=reference, fid=True, kid=True, isc=True, cuda=device.type == "cuda",
                feature_extractor=feature_extractor, feature_extractor_weights_path=weights and str(weights),
                kid_subset_size=min(KID_SUBSET, len(samples), len(reference)), save_cpu_ram=True, cache=False,
                verbose=progress)
    except ValueError as err:  # torch-fidelity's checks of its inputs and options
        raise VQGenError(f"torch-fidelity refused the standard FID's inputs: {err}") from None


def standard_fid(run: str | Path, samples: int = FID_SAMPLES, weights: Path | None = None, device: str = "auto",
                 seed: int = 0, progress: bool = True, feature_extractor: str = FEATURE_EXTRACTOR) -> dict[str, Any]:
    """Score `samples` samples of the run against its train split; merge the figures, with the protocol
    named, into RUN/eval.json as "standard_fid" (holding the run's lock) and return them. A path that holds
    no run is refused first: before a download of the weights, and before the lock, whose file would create it."""
    run = Path(run)
    require_run_dir(run)
    torch_fidelity = require_torch_fidelity()
    if feature_extractor == FEATURE_EXTRACTOR:
        weights = inception_weights(weights)  # before any sampling: a failed download stops it at once
    with directory_lock(run):
        report = read_json(run / EVAL_FILE, "eval figures (run `vqgen eval` first)")
        train = load_spec(run).open_split("train", index_dir=run)
        generator = Generator.from_pretrained(run_vqvae(run), run / PRIOR_FOLDER, device=device)
        start = time.perf_counter()
        images = draw(generator, samples, seed, progress)
        sampled = time.perf_counter()
        metrics = fidelity_metrics(Uint8Images(lambda rows: images[rows], len(images)),
                                   Uint8Images(train.pixels, len(train)), pick_device(device), weights,
                                   feature_extractor, progress)
        figures = {
            "feature_extractor": feature_extractor, "library": f"torch-fidelity {torch_fidelity.__version__}",
            "samples": samples, "sampling": asdict(generator.defaults), "seed": seed,
            "reference": f"train split, {len(train)} images", "fid": metrics["frechet_inception_distance"],
            "kid_mean": metrics["kernel_inception_distance_mean"], "kid_std": metrics["kernel_inception_distance_std"],
            "kid_subset_size": min(KID_SUBSET, samples, len(train)),
            "inception_score_mean": metrics["inception_score_mean"],
            "inception_score_std": metrics["inception_score_std"],
            "sampling_seconds": sampled - start, "scoring_seconds": time.perf_counter() - sampled,
        }
        write_json(run / EVAL_FILE, {**report, "standard_fid": figures})
    return figures


def describe(figures: dict[str, Any]) -> str:
    """One line: the figures and the protocol they follow."""
    return (f"standard FID ({figures['feature_extractor']}, {figures['samples']} samples against the "
            f"{figures['reference']}): FID {figures['fid']:.2f}, KID {figures['kid_mean']:.4f} "
            f"+- {figures['kid_std']:.4f}, Inception Score {figures['inception_score_mean']:.2f} "
            f"+- {figures['inception_score_std']:.2f}")
