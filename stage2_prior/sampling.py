"""Sampling code grids from the prior, one position at a time in raster order.

`sample` is incremental: every layer keeps the vertical-stack rows and the current row of the
horizontal stack already computed (`GatedBlock.incremental`, in layers.py beside the layer's `forward`),
so a new position costs a few (B, C) matrix products per layer instead of a pass over the whole grid
(the caching of Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive Models",
arXiv 1704.06001); this module only walks the positions. `sample_naive` runs the full model once per
position. Both draw the same codes from the same generator.

Each code is drawn from the logits after, in this order: classifier-free guidance (Ho & Salimans
2022: the conditional and unconditional logits of one doubled batch, mixed as
`uncond + s * (cond - uncond)`, with s constant or, as the field's autoregressive samplers use it,
ramped over the raster order or confined to the first positions: `SamplingOptions.scale_at`), the
temperature, top-k truncation, and nucleus truncation (top-p, Holtzman et al. 2020, "The Curious
Case of Neural Text Degeneration", arXiv 1904.09751).
The network is convolutional, so any grid size can be sampled; `known` codes are kept where given
(completion, stage2_prior/completion.py).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, Protocol

import torch
from tqdm import tqdm

from vqgen.engine.configs import config_from_dict, option, require
from vqgen.engine.errors import UsageError
from vqgen.stage2_prior.config import PriorConfig
from vqgen.stage2_prior.model import GatedPixelCNN

Labels = int | torch.Tensor | None
GuidanceSchedule = Literal["constant", "linear"]
GUIDANCE_SCHEDULES: tuple[str, ...] = typing.get_args(GuidanceSchedule)


@dataclass(frozen=True)
class SamplingOptions:
    """How each code is drawn from the prior's logits: one value that travels whole from the command line
    (pipeline/options.py makes its flags from these fields) to the sampler.

    `guidance` s: 1 samples the conditional prior as trained, 0 the unconditional one (the null class) at
    every position, whatever the schedule; s > 1 pushes each grid further toward its class; it needs a
    prior trained with label dropout. A constant scale makes every code typical of the class and so costs
    diversity; the `guidance_schedule` "linear" ramps it from 1 at the first position to s at the last
    (MAR's and VAR's linear schedules: the first codes, which fix a grid's layout, are drawn as the prior
    has learnt them), and `guidance_interval` f guides only the first f of the positions in raster order
    and draws the rest at scale 1 (LlamaGen's cfg_interval). `top_k` None and `top_p` None keep every code.
    Errors name the field; the command line names the flag.
    """

    temperature: float = option(1.0, "softmax temperature (> 0)")
    top_k: int | None = option(None, "sample among the k most likely codes only (none: all codes)")
    top_p: float | None = option(None, "sample among the fewest most likely codes holding this share of the "
                                       "probability (nucleus sampling, 0 < P <= 1; none: all codes)")
    guidance: float = option(1.0, "classifier-free guidance scale (1: the conditional prior as trained, 0: "
                                  "unconditional, above 1: closer to the class; needs a prior trained with "
                                  "label dropout)")
    guidance_schedule: GuidanceSchedule = option("constant", "constant: the scale at every position; linear: "
                                                 "ramped from 1 at the first position to the scale at the last, "
                                                 "in raster order")
    guidance_interval: float = option(1.0, "share of the positions guided, from the first in raster order "
                                           "(0 < F <= 1; the rest are drawn at scale 1)")

    def __post_init__(self) -> None:
        require(self.temperature > 0, f"temperature={self.temperature} is not allowed; must be > 0")
        require(self.top_k is None or self.top_k >= 1,
                f"top_k={self.top_k} is not allowed; must be in 1..K (the prior's codes), or none")
        require(self.top_p is None or 0 < self.top_p <= 1, f"top_p={self.top_p} is not allowed; must be in (0, 1]")
        require(self.guidance >= 0, f"guidance={self.guidance} is not allowed; must be >= 0 (1: plain conditional)")
        require(self.guidance_schedule in GUIDANCE_SCHEDULES, f"guidance_schedule={self.guidance_schedule!r} is "
                f"not allowed; must be one of {', '.join(GUIDANCE_SCHEDULES)}")
        require(0 < self.guidance_interval <= 1, f"guidance_interval={self.guidance_interval} is not allowed; "
                "must be in (0, 1] (the share of the positions guided, from the first; 1: all)")

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str = "sampling options") -> "SamplingOptions":
        """The options among a record's keys (eval.json's settings hold scores beside them), by name; a
        field a record of an older version lacks keeps its default."""
        names = {f.name for f in dataclasses.fields(cls)}
        return config_from_dict(cls, {k: v for k, v in record.items() if k in names}, source)

    def scale_at(self, position: int, positions: int) -> float:
        """The guidance scale at a raster position (0 .. positions - 1) of a grid."""
        if self.guidance == 0:
            return 0.0
        if position >= self.guidance_interval * positions:
            return 1.0
        if self.guidance_schedule == "linear":
            return 1 + (self.guidance - 1) * position / max(1, positions - 1)
        return self.guidance

    @property
    def uniform(self) -> bool:
        """Whether every position is drawn at the scale `guidance`."""
        return self.guidance in (0, 1) or (self.guidance_schedule == "constant" and self.guidance_interval == 1)

    def describe(self) -> str:
        """The setting in words, as commands print it: 'T=0.9 top-k=all top-p=all guidance=5 (linear)'."""
        guidance = f"guidance={self.guidance:g}"
        if self.guidance == 0:
            guidance += " (unconditional)"
        elif self.guidance != 1:
            guidance += "" if self.guidance_schedule == "constant" else f" ({self.guidance_schedule})"
            guidance += "" if self.guidance_interval == 1 else f" on the first {self.guidance_interval:.0%}"
        return f"T={self.temperature:g} top-k={self.top_k or 'all'} top-p={self.top_p or 'all'} {guidance}"

    def check(self, config: PriorConfig) -> None:
        """What depends on the prior: top-k within its K, guidance only with a null class."""
        require(self.top_k is None or self.top_k <= config.codebook_size,
                f"top_k={self.top_k} is not allowed; must be in 1..{config.codebook_size} (the prior's K)")
        if self.guidance == 1:
            return
        require(bool(config.num_classes), f"guidance={self.guidance:g} needs a class-conditional prior; this one "
                "is unconditional (use guidance 1)")
        require(config.null_label is not None, f"guidance={self.guidance:g} needs a prior trained with label "
                "dropout (a null class); this one was trained without: use guidance 1, or retrain with a "
                "label dropout such as 0.1")


def log_probs(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """(B, K) logits -> (B, K) log-probabilities a code is drawn from: divided by the temperature,
    truncated to the top_k codes, then to the fewest most likely codes whose mass reaches top_p."""
    logits = logits.float() / options.temperature
    if options.top_k is not None and options.top_k < logits.shape[1]:
        kth = torch.topk(logits, options.top_k, dim=1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p is not None and options.top_p < 1:
        ranked, order = logits.sort(dim=1, descending=True)  # (B, K) each
        mass_before = ranked.softmax(1).cumsum(1) - ranked.softmax(1)  # (B, K): mass of the likelier codes
        ranked = ranked.masked_fill(mass_before >= options.top_p, float("-inf"))  # the likeliest always stays
        logits = torch.empty_like(logits).scatter_(1, order, ranked)
    return logits.log_softmax(1)


def draw(log_p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, K) log-probabilities -> (B,) codes."""
    return torch.multinomial(log_p.exp(), 1, generator=generator)[:, 0]


class Sampler(Protocol):
    """What `generate` asks of a sampler, built over the (B, H, W) grid that sampling fills."""

    def __init__(self, model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None) -> None: ...

    def logits(self, i: int, j: int) -> torch.Tensor:
        """(B, K) logits at (i, j), given every code committed before it in raster order."""

    def commit(self, i: int, j: int, drawn: torch.Tensor) -> None:
        """Record the (B,) codes drawn at (i, j)."""


class NaiveSampler:
    """The baseline: a full forward pass over the grid for every position."""

    def __init__(self, model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.model, self.codes, self.labels = model, codes.clone(), labels

    def logits(self, i: int, j: int) -> torch.Tensor:
        return self.model(self.codes, self.labels)[:, :, i, j]  # (B, K)

    def commit(self, i: int, j: int, drawn: torch.Tensor) -> None:
        self.codes[:, i, j] = drawn


class IncrementalSampler:
    """Per-position logits from cached activations, equal to the full model's on the same prefix.

    Call `logits(i, j)` then `commit(i, j, codes)` for each position in raster order. Each layer runs
    as its `BlockCache` (`GatedBlock.incremental`), each attention layer as its `AttentionCache` (its keys
    and values so far); the gated features of every layer at the current position go into one (B, L, C)
    buffer, which the model's `PositionHead` turns into logits.
    """

    def __init__(self, model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.model, self.grid = model, tuple(codes.shape[1:])
        self.caches = [layer.incremental(len(codes), self.grid, labels) for layer in model.layers]
        self.attention = {index: model.attention_at(index).incremental(len(codes), self.grid)  # type: ignore[union-attr]
                          for index in model.config.attention_after}  # by the gated layer each follows
        self.head = model.incremental_head()
        channels = model.config.channels
        self.gated = codes.new_zeros(len(codes), len(self.caches), channels, dtype=model.embedding.weight.dtype)

    def logits(self, i: int, j: int) -> torch.Tensor:
        """(B, K) logits at (i, j): each layer's horizontal stack at column j only, then skip and head."""
        caches, gated = self.caches, self.gated
        for index, cache in enumerate(caches):
            cache.gate_at(j, gated[:, index])
            if index + 1 < len(caches):  # the last layer's horizontal stack feeds nothing
                h = cache.output_at(j, gated[:, index])  # (B, C)
                if index in self.attention:
                    h = self.attention[index].at(i, j, h)
                caches[index + 1].take_horizontal(j, h)
        return self.head(gated)  # (B, K)

    def commit(self, i: int, j: int, drawn: torch.Tensor) -> None:
        """Embed the codes drawn at (i, j); at the end of a row, advance every layer's vertical stack."""
        self.caches[0].take_code(i, j, self.model.embedding(drawn))
        if j < self.grid[1] - 1 or i == self.grid[0] - 1:
            return
        for cache, after in zip(self.caches[:-1], self.caches[1:]):
            after.take_vertical(i, cache.finish_row(i))
        self.caches[-1].finish_row(i)


class GuidedSampler:
    """Classifier-free guidance over any sampler: the grids' conditional and unconditional (null-class)
    logits come from one doubled batch, and both halves are given the same drawn codes."""

    def __init__(self, sampler: type[Sampler], model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor,
                 options: SamplingOptions) -> None:
        null = torch.full_like(labels, model.config.null_label)
        self.inner = sampler(model, codes.repeat(2, 1, 1), torch.cat([labels, null]))  # (2B, H, W)
        self.options, self.width, self.positions = options, codes.shape[2], codes.shape[1] * codes.shape[2]

    def logits(self, i: int, j: int) -> torch.Tensor:
        conditional, unconditional = self.inner.logits(i, j).chunk(2)  # (B, K) each
        scale = self.options.scale_at(i * self.width + j, self.positions)
        return unconditional + scale * (conditional - unconditional)

    def commit(self, i: int, j: int, drawn: torch.Tensor) -> None:
        self.inner.commit(i, j, drawn.repeat(2))


class Known(NamedTuple):
    """Codes given in advance: `codes` (H, W) is kept wherever `mask` (H, W) is True."""

    codes: torch.Tensor
    mask: torch.Tensor


class Drawn(NamedTuple):
    codes: torch.Tensor       # (n, H, W) int64
    log_weight: torch.Tensor  # (n,) log-probability of the known codes that follow the first drawn one


def check_request(model: GatedPixelCNN, n: int, labels: Labels, options: SamplingOptions,
                  grid: tuple[int, int] | None = None) -> torch.Tensor | None:
    """Everything about a request that can be wrong, checked before any work (or any output directory);
    returns the (n,) labels on the prior's device."""
    if n < 1:
        raise UsageError(f"-n={n} is not allowed; must be >= 1")
    options.check(model.config)
    grid = tuple(grid or model.config.grid)  # type: ignore[assignment]
    if len(grid) != 2 or min(grid) < 1:  # type: ignore[arg-type]
        raise UsageError(f"--grid={'x'.join(map(str, grid))} is not allowed; must be HxW with H, W >= 1")  # type: ignore[union-attr]
    return _label_tensor(model, n, labels, model.embedding.weight.device)


def _check_call(model: GatedPixelCNN, generator: torch.Generator | None, grid: tuple[int, int],
                known: Known | None) -> None:
    device = model.embedding.weight.device
    if generator is not None and generator.device.type != device.type:
        raise UsageError(f"the generator is on {generator.device} but the prior is on {device}; "
                         f"make it with torch.Generator({str(device)!r})")
    if known is not None and (tuple(known.codes.shape) != tuple(grid) or tuple(known.mask.shape) != tuple(grid)):
        raise UsageError(f"known codes of shape {tuple(known.codes.shape)} do not fit the {grid[0]}x{grid[1]} grid")


def _label_tensor(model: GatedPixelCNN, n: int, labels: Labels, device: torch.device) -> torch.Tensor | None:
    """None, an int shared by all n grids, or (n,) labels -> (n,) int64 labels on `device`."""
    classes = model.config.num_classes
    if labels is None:
        if classes:
            raise UsageError(f"this prior is conditioned on {classes} classes; pass --label (0..{classes - 1})")
        return None
    if not classes:
        raise UsageError("this prior is unconditional; --label cannot be used")
    tensor = torch.as_tensor(labels, dtype=torch.long, device=device)
    if tensor.shape not in ((), (n,)):
        raise UsageError(f"labels have shape {tuple(tensor.shape)}; pass one int or {n} labels, one per grid")
    bad = tensor[(tensor < 0) | (tensor >= classes)]
    if bad.numel():
        raise UsageError(f"--label={int(bad.flatten()[0])} is outside the prior's classes 0..{classes - 1}")
    return tensor.expand(n).contiguous()  # (n,)


def _state(sampler: type[Sampler], model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None,
           options: SamplingOptions) -> Sampler:
    """The sampler for these options: guidance 0 throughout is the null class alone, guidance 1 the
    conditional prior, any other a doubled batch."""
    if labels is None or options.guidance == 1:
        return sampler(model, codes, labels)
    if options.guidance == 0 and options.uniform:
        return sampler(model, codes, torch.full_like(labels, model.config.null_label))
    return GuidedSampler(sampler, model, codes, labels, options)


@torch.no_grad()
def generate(model: GatedPixelCNN, n: int, labels: Labels = None, options: SamplingOptions = SamplingOptions(),
             generator: torch.Generator | None = None, progress: bool = True,
             sampler: type[Sampler] = IncrementalSampler, grid: tuple[int, int] | None = None,
             known: Known | None = None) -> Drawn:
    """n grids drawn in raster order, each code given the codes before it; `known` codes are kept, and the
    log-probability the prior gives those that follow a drawn code is returned (completion's weights)."""
    label_tensor = check_request(model, n, labels, options, grid)
    grid = tuple(grid or model.config.grid)
    _check_call(model, generator, grid, known)  # type: ignore[arg-type]
    device = model.embedding.weight.device
    height, width = grid
    codes = torch.zeros(n, height, width, dtype=torch.long, device=device)
    log_weight = torch.zeros(n, device=device)
    state = _state(sampler, model, codes, label_tensor, options)
    kept = known.mask.cpu().flatten().tolist() if known is not None else [False] * (height * width)
    weighing = replace(options, top_k=None, top_p=None)  # a known code is data: never truncated away
    drawn_any = False
    for position in tqdm(range(height * width), desc="sample", unit="code", disable=not progress, leave=False):
        i, j = divmod(position, width)
        # the logits of the code at (i, j), given every code before it
        logits = state.logits(i, j)  # (n, K)
        if kept[position]:
            # a known code: kept, and once a drawn code precedes it, weighed by how likely the prior finds it
            code = known.codes[i, j].to(device).expand(n)  # type: ignore[union-attr]
            if drawn_any:
                log_weight += log_probs(logits, weighing)[:, code[0]]
        else:
            # guide, scale by the temperature, truncate to top-k and top-p, and draw one code per grid
            code = draw(log_probs(logits, options), generator)
            drawn_any = True
        codes[:, i, j] = code
        # let the sampler cache what the later positions need from this code
        state.commit(i, j, code)
    return Drawn(codes, log_weight)


def sample(model: GatedPixelCNN, n: int, labels: Labels = None, options: SamplingOptions = SamplingOptions(),
           generator: torch.Generator | None = None, progress: bool = True,
           grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(n, H, W) codes by the incremental sampler, the default (H, W: the training grid unless `grid`)."""
    return generate(model, n, labels, options, generator, progress, IncrementalSampler, grid).codes


def sample_naive(model: GatedPixelCNN, n: int, labels: Labels = None, options: SamplingOptions = SamplingOptions(),
                 generator: torch.Generator | None = None, progress: bool = True,
                 grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(n, H, W) codes by one full forward pass per position: the baseline `sample` must equal."""
    return generate(model, n, labels, options, generator, progress, NaiveSampler, grid).codes
