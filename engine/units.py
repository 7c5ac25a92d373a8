"""Figures as a person reads them: each with its unit, and shares of the codebook as counts of K.

Files keep plain numbers (`codes_used: 1.0` is a share); only what is printed goes through here, so
that `codes_used=1` can no longer be read as "one code".
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

LABELS: dict[str, Callable[[float], str]] = {
    "loss": lambda v: f"loss {v:.4g}",
    "mse": lambda v: f"MSE {v:.3g}",
    "psnr": lambda v: f"PSNR {v:.1f} dB",
    "bits_per_code": lambda v: f"{v:.3f} bits/code",
    "bits_per_image": lambda v: f"{v:.1f} bits/image",
    "unigram_bits_per_code": lambda v: f"unigram {v:.3f} bits/code",
    "uniform_bits_per_code": lambda v: f"uniform {v:.3f} bits/code",
    "accuracy": lambda v: f"accuracy {v:.1%}",
    "test_accuracy": lambda v: f"test accuracy {v:.1%}",
    "flops_per_s": lambda v: f"{v / 1e9:.1f} GFLOP/s",
    "flops_share": lambda v: f"{v:.0%} of the matmul rate",
}
CODE_SHARES = ("usage", "codes_used")  # share of the K codes in use: in this batch, on the held-out split


def codes(share: float, codebook_size: int) -> str:
    """`codes 120/128 (94%)`: the share as a count of K, and the share that count is."""
    used = round(share * codebook_size)
    return f"codes {used}/{codebook_size} ({used / codebook_size:.0%})"


def describe_one(name: str, value: float, codebook_size: int | None = None) -> str:
    """One figure with its unit; perplexity (the effective number of codes) beside K when K is known."""
    if name in CODE_SHARES and codebook_size:
        return codes(value, codebook_size)
    if name == "perplexity":
        return f"perplexity {value:.1f}" + (f" of {codebook_size} codes" if codebook_size else "")
    return LABELS.get(name, lambda v: f"{name} {v:.4g}")(value)


def describe(metrics: Mapping[str, float], names: Iterable[str] | None = None,
             codebook_size: int | None = None) -> str:
    """`names` of `metrics` (all, in their order, by default) joined with commas; absent names are left out."""
    chosen = list(metrics) if names is None else [n for n in names if n in metrics]
    return ", ".join(describe_one(n, float(metrics[n]), codebook_size) for n in chosen)
