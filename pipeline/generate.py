"""Sampling new images: prior -> code grids -> VQ-VAE decoder. The only place the stages meet."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from vqgen.engine.configs import config_from_dict, config_to_dict
from vqgen.engine.errors import UsageError, VQGenError
from vqgen.engine.files import read_json, save_array, write_json
from vqgen.engine.grids import save_grid
from vqgen.engine.checkpoint import weights_path
from vqgen.engine.hub import local_folder
from vqgen.engine.runtime import pick_device
from vqgen.stage1_vqvae.model import VQVAE
from vqgen.stage2_prior.completion import Completion
from vqgen.stage2_prior.completion import complete as complete_codes
from vqgen.stage2_prior.model import GatedPixelCNN
from vqgen.stage2_prior.sampling import SamplingOptions
from vqgen.stage2_prior.sampling import sample as sample_codes


SAMPLING_FILE = "sampling.json"
VQVAE_FOLDER, PRIOR_FOLDER = "vqvae", "prior"  # the two models of a run directory or an exported model folder
DECODER_FOLDER = "decoder"  # a run's VQ-VAE with its decoder tuned (stage1_vqvae/decoder_tuning.py)


def run_vqvae(run: Path) -> Path:
    """The VQ-VAE a run directory decodes samples with: RUN/decoder when the run tuned its decoder, else RUN/vqvae."""
    tuned = run / DECODER_FOLDER
    return tuned if weights_path(tuned).exists() else run / VQVAE_FOLDER


def save_sampling(options: SamplingOptions, directory: str | Path) -> None:
    """DIR/sampling.json: beside a prior, its sampling defaults as `vqgen eval` chose them; beside samples,
    the setting they were drawn with."""
    write_json(Path(directory) / SAMPLING_FILE, config_to_dict(options))


def load_sampling(prior_dir: str | Path) -> SamplingOptions:
    """The options a prior samples with unless told otherwise: its sampling.json, else temperature 1
    with all codes and no guidance."""
    path = Path(prior_dir) / SAMPLING_FILE
    return config_from_dict(SamplingOptions, read_json(path, "sampling defaults"), str(path)) if path.exists() \
        else SamplingOptions()


class Samples(NamedTuple):
    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    codes: torch.Tensor   # (N, h, w) int64
    labels: torch.Tensor | None  # (N,)
    options: SamplingOptions | None = None  # the setting they were drawn with


class Completed(NamedTuple):
    samples: Samples        # the n completions
    masked: torch.Tensor    # (C, H, W) the image with the generated part gray
    grid: tuple[int, int]   # the code grid
    completion: Completion  # effective sample size, proposals, exactness


def check_pair(vqvae: VQVAE, prior: GatedPixelCNN) -> None:
    """A prior only makes sense over the codebook and grid of the VQ-VAE that made its latents."""
    v, p = vqvae.config, prior.config
    if v.codebook_size != p.codebook_size:
        raise VQGenError(f"the prior was trained on K={p.codebook_size} codes but the VQ-VAE has "
                         f"K={v.codebook_size}; pass the VQ-VAE whose latents trained this prior")
    if v.grid != (p.grid_height, p.grid_width):
        raise VQGenError(f"the prior samples {p.grid_height}x{p.grid_width} grids but the VQ-VAE decodes "
                         f"{v.grid[0]}x{v.grid[1]}; pass the VQ-VAE whose latents trained this prior")


class Generator:
    """`Generator.from_pretrained(vqvae_dir, prior_dir).sample(16, labels=3)` -> Samples."""

    def __init__(self, vqvae: VQVAE, prior: GatedPixelCNN, device: str = "auto",
                 defaults: SamplingOptions = SamplingOptions()) -> None:
        check_pair(vqvae, prior)
        self.device = pick_device(device)
        self.vqvae, self.prior = vqvae.to(self.device).eval(), prior.to(self.device).eval()
        self.defaults = defaults

    @classmethod
    def from_pretrained(cls, vqvae_dir: str | Path, prior_dir: str | Path | None = None,
                        device: str = "auto") -> "Generator":
        """Both models, and the prior's saved sampling defaults (sampling.json) when it has them.

        Each directory may be a local folder or a Hugging Face Hub id ("owner/name[@revision]"). With
        `prior_dir` None, `vqvae_dir` is one folder or repo holding both, as `vqgen export-model` writes
        it: `Generator.from_pretrained("owner/vqgen-mnist")` reads its vqvae/ and prior/ (a run directory's
        decoder/ instead of vqvae/ when the run tuned its decoder, `run_vqvae`)."""
        if prior_dir is None:  # only what the caller typed may be a Hub id; the sub-folders must exist
            root = local_folder(vqvae_dir)
            for sub in (VQVAE_FOLDER, PRIOR_FOLDER):
                if not (root / sub).is_dir():
                    raise VQGenError(f"{vqvae_dir} holds no {sub}/ folder; pass a folder or Hub repo holding vqvae/ "
                                     "and prior/ (as `vqgen export-model` writes it), or both folders: "
                                     "Generator.from_pretrained(VQVAE_DIR, PRIOR_DIR)")
            vqvae_dir, prior_dir = run_vqvae(root), root / PRIOR_FOLDER
        prior_dir = local_folder(prior_dir)
        return cls(VQVAE.from_pretrained(vqvae_dir), GatedPixelCNN.from_pretrained(prior_dir), device,
                   load_sampling(prior_dir))

    @property
    def num_classes(self) -> int:
        return self.prior.config.num_classes

    def spread_labels(self, n: int) -> torch.Tensor:
        """n labels in sorted runs of equal length (0, 0, ..., 1, 1, ...), so grid rows show classes."""
        if not self.num_classes:
            raise UsageError("the prior is unconditional; it has no classes to sample by")
        return torch.arange(n) * self.num_classes // n

    def options(self, options: SamplingOptions | None = None, **overrides: Any) -> SamplingOptions:
        """The setting a call samples with: `options` (None: the prior's saved defaults) with each field in
        `overrides` replaced (`top_k=None` keeps every code, as `top_p=None` does)."""
        base = self.defaults if options is None else options
        names = [f.name for f in fields(SamplingOptions)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise UsageError(f"not sampling options: {', '.join(unknown)}; the options are {', '.join(names)}")
        return replace(base, **overrides)

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        return generator

    @torch.no_grad()
    def sample(self, n: int, labels: int | torch.Tensor | None = None, options: SamplingOptions | None = None, *,
               seed: int | None = None, progress: bool = True, grid: tuple[int, int] | None = None,
               **overrides: Any) -> Samples:
        """n images drawn with `self.options(options, **overrides)`: `sample(16, 3, temperature=0.9)` keeps the
        prior's other defaults, `sample(16, 3, SamplingOptions())` draws with exactly those options. `grid`
        (h, w) samples a code grid of another size than the training grid, decoded to an image of h and w
        times the VQ-VAE's factor."""
        options = self.options(options, **overrides)
        codes = sample_codes(self.prior, n, labels=labels, options=options, generator=self._generator(seed),
                             progress=progress, grid=grid)  # checks n, labels and options
        return self._samples(codes, labels, options)

    def code_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(H, W) pixel mask, True where pixels are to be generated -> (h, w) codes to generate: every code
        whose cell of f x f pixels (f: the VQ-VAE's downsampling factor) overlaps a masked pixel."""
        config = self.vqvae.config
        if tuple(mask.shape) != (config.image_height, config.image_width):
            raise UsageError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the images are "
                             f"{config.image_width}x{config.image_height} (width x height); draw it at the image's size")
        factor = config.downsample_factor
        return F.max_pool2d(mask.float()[None, None], factor)[0, 0].bool()  # (h, w)

    @torch.no_grad()
    def complete(self, image: torch.Tensor, mask: torch.Tensor, n: int, label: int | None = None,
                 options: SamplingOptions | None = None, *, seed: int | None = None, proposals: int | None = None,
                 progress: bool = True, **overrides: Any) -> Completed:
        """n completions of `image` (C, H, W) in [0, 1] where `mask` (H, W) is True: the image is encoded,
        the codes whose cells overlap the mask are sampled given the others (stage2_prior/completion.py),
        and the grids decoded. The options as in `sample`."""
        config = self.vqvae.config
        config.check_images(*image.shape)
        options = self.options(options, **overrides)
        unknown = self.code_mask(mask.bool())
        if unknown.all():
            factor = config.downsample_factor
            raise UsageError(f"the mask leaves no code known: every {factor}x{factor} cell of the image overlaps it; "
                             f"keep at least one whole cell (e.g. --keep-top {factor} or more)")
        codes = self.vqvae.encode(image[None].to(self.device))[0]  # (h, w)
        result = complete_codes(self.prior, codes, unknown.to(self.device), n, label, options, self._generator(seed),
                                proposals, progress)
        masked = image.clone()
        masked[:, mask.bool()] = 0.5  # gray where the completions generate
        labels = None if label is None else torch.full((n,), label)
        return Completed(self._samples(result.codes, labels, options), masked.cpu(), config.grid, result)

    def _samples(self, codes: torch.Tensor, labels: int | torch.Tensor | None, options: SamplingOptions) -> Samples:
        images = self.vqvae.decode(codes).float().clamp(0, 1)
        n = len(codes)
        label_tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.long).cpu().expand(n).clone()
        return Samples(images.cpu(), codes.cpu(), label_tensor, options)


def save_samples(samples: Samples, out_dir: str | Path, nrow: int = 8, shown: torch.Tensor | None = None) -> None:
    """One PNG per image, codes.npy (+ labels.npy), sampling.json (the setting drawn with), and grid.png last
    (of `shown`, default the samples): its presence means the rest is there."""
    out = Path(out_dir)
    if samples.options is not None:
        save_sampling(samples.options, out)
    for i, image in enumerate(samples.images):
        save_grid(out / "images" / f"{i:04d}.png", image[None], nrow=1)
    save_array(out / "codes.npy", samples.codes.numpy())
    if samples.labels is not None:
        save_array(out / "labels.npy", samples.labels.numpy())
    save_grid(out / "grid.png", samples.images if shown is None else shown, nrow=nrow)
