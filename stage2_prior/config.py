"""PriorConfig: everything needed to rebuild a gated PixelCNN prior, saved beside its weights."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from vqgen.engine.configs import option, require


# Share of labels the presets replace by the null class; measured on MNIST (docs/experiments.md, "Guidance").
LABEL_DROPOUT = 0.1


@dataclass(frozen=True)
class PriorConfig:
    """Gated PixelCNN (van den Oord et al. 2016, arXiv 1606.05328) over a grid of K discrete codes.

    K, the grid and the classes come from the latent dataset the prior trains on; the rest are the
    network's sizes. `head_channels` is the width of the skip connections and of the output head;
    `skips` sums a skip connection from every layer into the head, as WaveNet does; without them the
    head reads the last layer only (a config file without the field is a prior with them);
    `dropout` drops gated horizontal features in training (as PixelCNN++ drops inside its residual
    blocks, Salimans et al. 2017), a regulariser for small datasets. `label_dropout` is the share of
    training labels replaced by a null class (label id `num_classes`), which teaches a conditional
    prior the unconditional distribution as well, so that it can sample with classifier-free guidance
    (Ho & Salimans 2022); 0 builds no null class. The presets turn it on; a config file without the
    field is a prior trained without it. `attention_every` N adds a causal self-attention layer over the
    horizontal stack after every N-th gated layer (not after the last), global context as PixelSNAIL adds it
    (stage2_prior/attention.py); 0, and a config file without the field, is the plain gated PixelCNN. One
    head by default, as PixelSNAIL's: on a CPU, heads narrower than 64 channels cost far more per channel
    (docs/experiments.md, "Attention").
    """

    codebook_size: int = option(512, "K, the number of codes", resume="binding", from_data=True)
    grid_height: int = option(7, "rows of the code grid", resume="binding", from_data=True)
    grid_width: int = option(7, "columns of the code grid", resume="binding", from_data=True)
    num_classes: int = option(0, "classes of the labels (0: unconditional)", resume="binding", from_data=True)
    channels: int = option(64, "channels of each PixelCNN stack", resume="binding")
    layers: int = option(15, "gated layers", resume="binding")
    first_kernel: int = option(7, "kernel size of the first (mask A) layer", resume="binding")
    kernel: int = option(3, "kernel size of the other layers", resume="binding")
    head_channels: int = option(256, "channels of the skip connections and the output head", resume="binding")
    skips: bool = option(True, "sum a skip connection from every gated layer into the head (off: the head reads "
                               "the last layer)", resume="binding")
    dropout: float = option(0.0, "dropout of the gated features in training (0: off)", resume="binding")
    label_dropout: float = option(0.0, "share of training labels replaced by a null class, so that the prior can "
                                       "sample with classifier-free guidance (0: no null class)", resume="binding")
    attention_every: int = option(0, "a causal self-attention layer after every N-th gated layer but the last, "
                                     "global context over all earlier positions (0: none)", resume="binding")
    attention_heads: int = option(1, "heads of each attention layer (they split the channels)", resume="binding")

    def __post_init__(self) -> None:
        require(self.codebook_size >= 2, f"codebook_size={self.codebook_size} is not allowed; must be >= 2")
        require(self.num_classes >= 0, f"num_classes={self.num_classes} is not allowed; must be >= 0 (0: none)")
        for name in ("grid_height", "grid_width", "channels", "layers", "head_channels"):
            value = getattr(self, name)
            require(value >= 1, f"{name}={value} is not allowed; must be >= 1")
        require(0 <= self.dropout < 1, f"dropout={self.dropout} is not allowed; must be in [0, 1)")
        require(0 <= self.label_dropout < 1,
                f"label_dropout={self.label_dropout} is not allowed; must be in [0, 1) (0: no null class)")
        require(0 <= self.attention_every < self.layers or self.attention_every == 0,
                f"attention_every={self.attention_every} is not allowed; must be in 0..{self.layers - 1} (0: no "
                f"attention; an attention layer never follows the last of the {self.layers} gated layers)")
        require(self.attention_heads >= 1 and (not self.attention_every or self.channels % self.attention_heads == 0),
                f"attention_heads={self.attention_heads} is not allowed; must be >= 1 and divide "
                f"channels={self.channels}")
        for name in ("first_kernel", "kernel"):
            value = getattr(self, name)
            require(value >= 3 and value % 2 == 1, f"{name}={value} is not allowed; must be odd and >= 3")

    @property
    def grid(self) -> tuple[int, int]:
        return self.grid_height, self.grid_width

    @property
    def attention_after(self) -> tuple[int, ...]:
        """The gated layers an attention layer follows: every `attention_every`-th, never the last (which
        feeds only the head)."""
        every = self.attention_every
        return tuple(i for i in range(self.layers - 1) if every and (i + 1) % every == 0)

    @property
    def null_label(self) -> int | None:
        """The label id that stands for "no class" (guidance's unconditional half), when the prior has one."""
        return self.num_classes if self.num_classes and self.label_dropout > 0 else None

    @property
    def label_embeddings(self) -> int:
        """Rows of each layer's label-bias table: one per class, and the null class when there is one."""
        return self.num_classes + (self.null_label is not None)

    @classmethod
    def tiny(cls, **overrides: Any) -> PriorConfig:
        """For tests: a few thousand weights over 16 codes, still deep enough to see a 7x7 grid."""
        return replace(cls(codebook_size=16, channels=8, layers=6, head_channels=16), **overrides)

    @classmethod
    def small(cls, **overrides: Any) -> PriorConfig:
        """The CPU default: 15 gated layers of 64 channels, with a null class for guidance."""
        return replace(cls(label_dropout=LABEL_DROPOUT), **overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> PriorConfig:
        """GPU sizes after van den Oord et al. 2016: 20 gated layers of 128 channels."""
        return replace(cls(channels=128, layers=20, head_channels=512, label_dropout=LABEL_DROPOUT), **overrides)


PRESETS: dict[str, Callable[..., PriorConfig]] = {
    "tiny": PriorConfig.tiny, "small": PriorConfig.small, "paper": PriorConfig.paper}
