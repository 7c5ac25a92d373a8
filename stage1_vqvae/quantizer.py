"""Vector quantizers of the VQ-VAE (van den Oord et al. 2017) behind one interface.

`StraightThroughQuantizer` learns its codebook by the codebook loss (eq. 3); `EMAQuantizer`
by exponential moving averages (appendix A.1). Both share the nearest-code search, optional
cosine lookup and low-dimensional lookup space (Yu et al. 2021, ViT-VQGAN), k-means
initialisation and dead-code restarts. Distances, statistics and losses are computed in
float32 even under autocast, and reduced across torchrun ranks so every rank holds the same codebook.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqgen.engine.configs import require
from vqgen.engine.distributed import all_reduce_sum, broadcast_, gather_rows


@dataclass(frozen=True)
class QuantizerConfig:
    codebook_size: int
    dim: int
    kind: Literal["ema", "straight_through"] = "ema"
    beta: float = 0.25
    decay: float = 0.99
    eps: float = 1e-5
    kmeans_init: bool = False
    kmeans_iters: int = 10
    restart_threshold: float = 0.0
    cosine: bool = False
    lookup_dim: int | None = None

    def __post_init__(self) -> None:
        require(self.codebook_size >= 2, f"codebook_size={self.codebook_size} is not allowed; must be >= 2")
        require(self.dim >= 1, f"code_dim={self.dim} is not allowed; must be >= 1")
        require(self.beta >= 0, f"beta={self.beta} is not allowed; must be >= 0")
        require(0 < self.decay < 1, f"decay={self.decay} is not allowed; must be in (0, 1)")
        require(self.eps > 0, f"eps={self.eps} is not allowed; must be > 0")
        require(self.kmeans_iters >= 1, f"kmeans_iters={self.kmeans_iters} is not allowed; must be >= 1")
        require(self.restart_threshold >= 0,
                f"restart_threshold={self.restart_threshold} is not allowed; must be >= 0 (0 = off)")
        require(self.lookup_dim is None or self.lookup_dim >= 1,
                f"lookup_dim={self.lookup_dim} is not allowed; must be >= 1 or none")

    @property
    def space(self) -> int:
        """Dimension in which codes are searched: lookup_dim when set, else D."""
        return self.lookup_dim or self.dim


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor        # (B, D, H, W), gradients pass straight through to the encoder
    indices: torch.Tensor          # (B, H, W) int64
    loss: torch.Tensor             # what the trainer adds to the reconstruction loss
    codebook_loss: torch.Tensor    # ||sg[z] - e||^2 (zero for EMA, whose codebook is not learned by gradient)
    commitment_loss: torch.Tensor  # ||z - sg[e]||^2, unscaled
    perplexity: torch.Tensor       # exp(entropy of this batch's code usage)
    usage: torch.Tensor            # share of the K codes used at least once in this batch


# ---- search ------------------------------------------------------------------------------------
def nearest(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_k ||x - e_k||^2 as ||x||^2 - 2 x e^T + ||e||^2: one (N, K) matmul, never (N, K, D)."""
    distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t()
                 + codebook.pow(2).sum(1)[None])  # (N, K)
    return distances.argmin(1)


def kmeans_plus_plus(data: torch.Tensor, k: int) -> torch.Tensor:
    """Seeds far apart: each next centre drawn with probability ~ squared distance (Arthur & Vassilvitskii 2007)."""
    centres = data[torch.randint(0, data.shape[0], (1,), device=data.device)]  # (1, d)
    closest = (data - centres).pow(2).sum(1)  # (N,)
    for _ in range(k - 1):
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        new = data[torch.multinomial(weights, 1)]  # (1, d)
        centres = torch.cat([centres, new])
        closest = torch.minimum(closest, (data - new).pow(2).sum(1))
    return centres


def kmeans(data: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Lloyd's algorithm from k-means++ seeds; an empty cluster keeps its centre."""
    centres = kmeans_plus_plus(data, k)  # (K, d)
    for _ in range(iters):
        assign = nearest(data, centres)  # (N,)
        counts = torch.bincount(assign, minlength=k).float()  # (K,)
        sums = torch.zeros_like(centres).index_add_(0, assign, data)  # (K, d)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


def usage_stats(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, share of codes used) from code counts (K,)."""
    probs = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
    return perplexity, (counts > 0).float().mean()


class Quantizer(nn.Module, metaclass=abc.ABCMeta):
    """Shared machinery; subclasses say how the codebook learns (`_codebook_terms`, `_update`)."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        self.config = config
        space = config.space
        self.in_proj = nn.Linear(config.dim, space) if config.lookup_dim else nn.Identity()
        self.out_proj = nn.Linear(space, config.dim) if config.lookup_dim else nn.Identity()
        self.register_buffer("initialized", torch.tensor(not config.kmeans_init))
        self.register_buffer("usage_ema", torch.zeros(config.codebook_size))
        self._ready: bool | None = None
        self._recent: torch.Tensor | None = None

    # subclasses hold the codebook as a parameter or as a buffer
    codebook: torch.Tensor

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = None  # re-read `initialized` after loading

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.config.cosine else x

    def _codes(self) -> torch.Tensor:
        return self._normalise(self.codebook.float())  # (K, d)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            flat = rearrange(z.float(), "b d h w -> (b h w) d")
            flat = self._normalise(self.in_proj(flat))  # (N, d) in lookup space
            if self.training:
                self._maybe_kmeans(flat.detach())
                self._recent = flat.detach()
            indices = nearest(flat.detach(), self._codes().detach())  # (N,)
            counts = torch.bincount(indices, minlength=self.config.codebook_size).float()  # (K,)
            if self.training:  # ranks train in lockstep; in eval (rank-0 evaluation, export) they do not
                counts = all_reduce_sum(counts)
            if self.training:
                self._update(flat.detach(), indices, counts)
            codes = self._codes()[indices]  # (N, d)
            commitment = F.mse_loss(flat, codes.detach())
            codebook_loss = self._codebook_loss(flat, codes)
            loss = codebook_loss + self.config.beta * commitment
            quantized = flat + (codes - flat).detach()  # straight-through estimator
            quantized = rearrange(self.out_proj(quantized), "(b h w) d -> b d h w", b=b, h=h, w=w)
            perplexity, usage = usage_stats(counts)
        return QuantizerOutput(quantized.to(z.dtype), rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w),
                               loss, codebook_loss, commitment, perplexity, usage)

    @abc.abstractmethod
    def _codebook_loss(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The term that trains the codebook by gradient (zero when it learns otherwise)."""

    @abc.abstractmethod
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """Training-mode bookkeeping after each search: usage EMA, and for EMA the codebook itself."""

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """codes (B, H, W) -> what the decoder receives (B, D, H, W)."""
        vectors = self.out_proj(self._codes()[indices])  # (B, H, W, D)
        return rearrange(vectors, "b h w d -> b d h w")

    def codebook_vectors(self) -> torch.Tensor:
        """(K, D) float32: each code as the decoder sees it, exported as codebook.npy."""
        return self.out_proj(self._codes()).detach().float()

    @torch.no_grad()
    def _maybe_kmeans(self, flat: torch.Tensor) -> None:
        if self._ready is None:
            self._ready = bool(self.initialized)
        if self._ready:
            return
        data = gather_rows(flat)
        centres = kmeans(data, self.config.codebook_size, self.config.kmeans_iters)
        broadcast_(centres)
        self._set_codes(torch.arange(self.config.codebook_size, device=flat.device), centres)
        self.initialized.fill_(True)
        self._ready = True

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Move codes whose usage EMA fell below the threshold onto recent encoder outputs."""
        if self._recent is None or self.config.restart_threshold <= 0:
            return 0
        dead = (self._usage() < self.config.restart_threshold).nonzero().flatten()  # (M,)
        if dead.numel() == 0:
            return 0
        candidates = gather_rows(self._recent)  # (N, d)
        picks = candidates[torch.randint(0, candidates.shape[0], (dead.numel(),), device=candidates.device)]
        broadcast_(picks)
        self._set_codes(dead, picks)
        return int(dead.numel())

    def _usage(self) -> torch.Tensor:
        """(K,) recent uses of each code per step, as the restarts judge them."""
        return self.usage_ema

    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        self.codebook.data[which] = vectors.to(self.codebook.dtype)
        self.usage_ema[which] = max(self.config.restart_threshold, 1.0)


LONG_TRAINED = 10**6  # updates after which 1 - decay**updates is 1 to float precision


class StraightThroughQuantizer(Quantizer):
    """Codebook learned by gradient of ||sg[z] - e||^2 (eq. 3); the encoder commits with beta.

    Its usage average starts at zero, so it is read debiased, as Adam debiases its moments (Kingma &
    Ba 2015): divided by 1 - decay**updates. Read raw, codes in use would look dead at the first restarts.
    """

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__(config)
        k = config.codebook_size
        self.codebook = nn.Parameter(torch.empty(k, config.space).uniform_(-1 / k, 1 / k))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """A quantizer saved before the debiasing (vqgen 0.2) has no update count: count it as long trained,
        where the bias has vanished."""
        state.setdefault(f"{prefix}updates", torch.tensor(LONG_TRAINED))
        super()._load_from_state_dict(state, prefix, *args, **kwargs)

    def _codebook_loss(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(codes, flat.detach())

    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        self.usage_ema.mul_(self.config.decay).add_(counts, alpha=1 - self.config.decay)
        self.updates += 1

    def _weight(self) -> torch.Tensor:
        """1 - decay**updates: the share of the usage average's weight that data has filled so far."""
        return 1 - self.config.decay ** self.updates.double().clamp_min(1)

    def _usage(self) -> torch.Tensor:
        return self.usage_ema / self._weight().float()

    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        super()._set_codes(which, vectors)
        self.usage_ema[which] *= self._weight().float()  # debiased, a restarted code reads as the threshold


class EMAQuantizer(Quantizer):
    """Codebook as exponential moving averages of assigned encoder outputs (appendix A.1)."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__(config)
        codebook = torch.randn(config.codebook_size, config.space)
        self.register_buffer("codebook", codebook)
        self.register_buffer("embed_avg", codebook.clone())
        self.register_buffer("cluster_size", torch.ones(config.codebook_size))

    def _codebook_loss(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return flat.new_zeros(())

    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        decay, eps, k = self.config.decay, self.config.eps, self.config.codebook_size
        sums = all_reduce_sum(torch.zeros_like(self.embed_avg).index_add_(0, indices, flat))  # (K, d)
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + eps) / (n + k * eps) * n  # Laplace smoothing of the counts
        self.codebook.copy_(self.embed_avg / smoothed[:, None])
        self.usage_ema.copy_(self.cluster_size)

    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        super()._set_codes(which, vectors)
        size = max(self.config.restart_threshold, 1.0)
        self.cluster_size[which] = size
        self.embed_avg[which] = vectors.float() * size


def build_quantizer(config: QuantizerConfig) -> Quantizer:
    return {"ema": EMAQuantizer, "straight_through": StraightThroughQuantizer}[config.kind](config)
