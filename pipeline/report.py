"""RUN/report.json and RUN/curves.png, rebuilt from each stage's metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqgen.engine.checkpoint import CONFIG_FILE
from vqgen.engine.files import read_json, write_json
from vqgen.data.latents import read_manifest
from vqgen.engine.metrics_log import read_metrics
from vqgen.engine.runtime import machine
from vqgen.pipeline.evaluation.report import EVAL_FILE
from vqgen.pipeline.generate import DECODER_FOLDER
from vqgen.pipeline.plots import Panel, Series, plot_curves


def _series(records: list[dict[str, Any]], split: str, key: str) -> Series:
    return [(r["step"], float(r[key])) for r in records if r.get("split") == split and key in r]


def _last(records: list[dict[str, Any]], split: str) -> dict[str, Any]:
    matching = [r for r in records if r.get("split") == split]
    return {k: v for k, v in matching[-1].items() if k != "split"} if matching else {}


def _mean(records: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in records if r.get("split") == "train" and key in r]
    return sum(values) / len(values) if values else None


def _stage(records: list[dict[str, Any]], rate: str) -> dict[str, Any]:
    return {"eval": _last(records, "eval"), "train": _last(records, "train"), f"train_{rate}": _mean(records, rate),
            "setup": _last(records, "setup")}


def _trained_config(directory: Path) -> dict[str, Any]:
    """The config a stage was trained with (the prior's K, grid and classes come from its latents)."""
    return {k: v for k, v in read_json(directory / CONFIG_FILE).items() if k not in ("kind", "version")}


def write_report(out: Path, spec: dict[str, Any], timings: dict[str, float], exports: dict[str, dict[str, float]],
                 likelihood: dict[str, Any], steps: dict[str, int], budget: dict[str, Any] | None) -> dict[str, Any]:
    """`steps`: what each training stage took (`vqgen run --steps-of` trains exactly those); `budget`: the plan
    of a run sized in minutes (pipeline/budget.py), None for one sized in steps."""
    vqvae = read_metrics(out / "vqvae" / "metrics.jsonl")
    decoder = out / DECODER_FOLDER / "metrics.jsonl"  # a tuned decoder's (stage1_vqvae/decoder_tuning.py)
    prior = read_metrics(out / "prior" / "metrics.jsonl")
    previous = read_json(out / "report.json") if (out / "report.json").exists() else {}
    export_figures = {split: figures or previous.get("export", {}).get(split, {}) for split, figures in exports.items()}
    report = {
        "vqvae": _stage(vqvae, "images_per_s"),
        "decoder": _stage(read_metrics(decoder), "images_per_s") if decoder.exists() else None,
        "export": {split: {**figures, "manifest": read_manifest(out / "latents" / split).to_json()}
                   for split, figures in export_figures.items()},
        "prior": _stage(prior, "grids_per_s"),
        "likelihood": likelihood,
        "samples": {"grid": "samples/grid.png", "codes": "samples/codes.npy"},
        "eval": read_json(out / EVAL_FILE) if (out / EVAL_FILE).exists() else None,
        "steps": steps,
        "timings_s": {**timings, "total": sum(timings.values())},
        "budget": budget,
        "config": {**spec, "vqvae": _trained_config(out / "vqvae"), "prior": _trained_config(out / "prior")},
        "machine": machine(),
    }
    write_json(out / "report.json", report)
    plot_curves(out / "curves.png", _panels(vqvae, prior, report["config"]["vqvae"]["codebook_size"]))
    return report


def _panels(vqvae: list[dict[str, Any]], prior: list[dict[str, Any]], codebook_size: int) -> list[Panel]:
    """curves.png: MSE on a log scale (it falls by decades), perplexity against K, bits per code against the
    unigram baseline, PSNR."""
    return [
        Panel("VQ-VAE reconstruction MSE", {"train": _series(vqvae, "train", "mse"),
                                            "eval": _series(vqvae, "eval", "mse")},
              "MSE (pixels in [0, 1])", log=True),
        Panel(f"VQ-VAE codebook perplexity (K = {codebook_size} codes)",
              {"train (per batch)": _series(vqvae, "train", "perplexity"),
               "eval (held-out split)": _series(vqvae, "eval", "perplexity")}, "perplexity (codes)"),
        Panel("prior bits per code", {"train": _series(prior, "train", "bits_per_code"),
                                      "eval": _series(prior, "eval", "bits_per_code"),
                                      "unigram baseline (eval)": _series(prior, "eval", "unigram_bits_per_code")},
              "bits per code"),
        Panel("VQ-VAE held-out PSNR", {"eval": _series(vqvae, "eval", "psnr")}, "PSNR (dB)"),
    ]
