"""The model card of an exported run: README.md in the Hub's format, from what the run directory holds.

The Hub reads the YAML front matter (library, tags, dataset) and shows the rest as the model's page;
every figure comes from the run's own files (run.json, report.json, eval.json), so the card says what
was measured, with the protocol, and nothing else. A folder dataset is named by its folder's name
only: the card is meant to be published, and a local path says nothing to a reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqgen.engine.train_config import TrainConfig
from vqgen.pipeline.evaluation.report import describe_setting
from vqgen.pipeline.spec import RunSpec
from vqgen.stage1_vqvae.config import VQVAEConfig
from vqgen.stage2_prior.config import PriorConfig

# The Hub's copies of the torchvision datasets vqgen reads by name, for the card's `datasets:` field.
HUB_DATASETS = {"mnist": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist",
                "cifar10": "uoft-cs/cifar10"}
SAMPLES_FILE = "samples.png"


def dataset_name(spec: RunSpec) -> str:
    """"mnist", "the built-in digits", or a folder's own name."""
    if spec.data == "builtin":
        return "the built-in digits"
    return spec.data if spec.data in HUB_DATASETS else f"the image folder {Path(spec.data).name!r}"


def front_matter(spec: RunSpec, conditional: bool) -> str:
    """The YAML block the Hub reads: library, pipeline, tags and, for a known dataset, its Hub id. The Hub's
    image-generation pipelines are text-to-image, image-to-image and unconditional-image-generation; a
    class-conditional model is none of them, so it names no pipeline and its tags say class-conditional."""
    tags = ["vqgen", "vq-vae", "pixelcnn", "image-generation"] + (["class-conditional"] if conditional else [])
    pipeline = [] if conditional else ["pipeline_tag: unconditional-image-generation"]
    lines = ["---", "library_name: vqgen", "license: mit", *pipeline, "tags:"] + [f"- {tag}" for tag in tags]
    if spec.data in HUB_DATASETS:
        lines += ["datasets:", f"- {HUB_DATASETS[spec.data]}"]
    return "\n".join(lines + ["---"])


def _data(spec: RunSpec, manifest: dict[str, Any]) -> list[str]:
    """The export manifest counts what the prior trained on: with spec.flip, each image and its mirror image
    (data/images.py, Mirrored), twice the images of the split."""
    channels, height, width = manifest["source"]["image_shape"]
    classes = manifest["num_classes"]
    images = manifest["count"] // 2 if spec.flip else manifest["count"]
    return ["## Data", "",
            f"Trained on the train split of {dataset_name(spec)}: {images:,} images of {channels}x{height}x"
            f"{width} (channels x height x width)" + (f", {classes} classes" if classes else ", unlabelled")
            + (f", and their {images:,} horizontal mirror images" if spec.flip else "") + "."]


def _training(config: TrainConfig, stage: dict[str, Any], minutes: float | None) -> str:
    """Steps, batch and learning rate of a stage. The steps are those of its last training record in
    report.json, the state its figures measure, which a time budget (max_seconds, or the run's minutes) may
    have stopped short of the steps configured."""
    trained = stage["train"]["step"]
    steps = f"{trained:,} step{'' if trained == 1 else 's'}"
    if minutes is not None:
        steps += f" (its share of a {minutes:g}-minute run)"
    elif trained < config.steps:
        budget = f"time budget of {config.max_seconds:g} s; " if config.max_seconds else ""
        steps += f" ({budget}{config.steps:,} configured)"
    return f"{steps}, batch {config.batch_size}, lr {config.lr:g}"


def _models(spec: RunSpec, report: dict[str, Any], vqvae: VQVAEConfig, prior: PriorConfig) -> list[str]:
    rows = ["## Models", "",
            "| stage | architecture | training |", "|---|---|---|",
            f"| VQ-VAE | {vqvae.downsamples} downsamplings, hidden {vqvae.hidden}, {vqvae.res_blocks} residual blocks, "
            f"K={vqvae.codebook_size} codes of D={vqvae.code_dim} ({vqvae.quantizer} quantizer), "
            f"{vqvae.grid[0]}x{vqvae.grid[1]} code grid | {_training(spec.vqvae_train, report['vqvae'], spec.minutes)} |",
            f"| gated PixelCNN prior | {prior.layers} layers of {prior.channels} channels, {_attention(prior)}"
            f"{prior.num_classes or 'no'} classes, label dropout {prior.label_dropout:g} | "
            f"{_training(spec.prior_train, report['prior'], spec.minutes)}, weight average {spec.prior_train.ema:g} |"]
    if spec.decoder_train is not None and report.get("decoder"):
        rows.append("| VQ-VAE decoder, tuned alone on the exported codes (encoder and codebook frozen) | as above | "
                    f"{_training(spec.decoder_train, report['decoder'], spec.minutes)} |")
    return rows


def _attention(prior: PriorConfig) -> str:
    """'2 causal attention layers (1 head), ', or nothing for the plain gated PixelCNN."""
    layers, heads = len(prior.attention_after), prior.attention_heads
    if not layers:
        return ""
    return f"{layers} causal attention layer{'s' * (layers > 1)} ({heads} head{'s' * (heads > 1)}), "


def _score_row(name: str, scores: dict[str, Any], floor: float) -> str:
    accuracy = "n/a" if scores["class_accuracy"] is None else f"{scores['class_accuracy']:.1%}"
    return (f"| {name} | {scores['frechet']:.2f} | {scores['frechet'] / floor:.1f}x | {accuracy} | "
            f"{scores['precision']:.2f} | {scores['recall']:.2f} |")


def _evaluation(report: dict[str, Any], figures: dict[str, Any] | None) -> list[str]:
    likelihood = (f"Likelihood: {report['likelihood']['bits_per_dim']:.3f} bits/dim (two-stage bound on "
                  f"{report['likelihood']['images']} held-out images); the prior "
                  f"{report['prior']['eval']['bits_per_code']:.3f} bits per code.")
    if not figures:
        return ["## Evaluation", "", likelihood, "", "Samples were not scored (`vqgen eval` was not run)."]
    chosen, floor = figures["chosen"], figures["real"]["frechet"]
    setting = describe_setting(chosen)
    lines = ["## Evaluation", "", likelihood, "",
             f"`vqgen eval`: {figures['n']} images per set, each scored against {figures['reference']} real held-out "
             f"images, on the features of a judge CNN trained on this dataset ({figures['judge']['task']}, test "
             f"accuracy {figures['judge']['test_accuracy']:.1%}). These Frechet distances are not Inception FIDs "
             "and do not compare with papers' figures; the real held-out images are their floor.", "",
             "| set | Frechet (judge) | x real | class accuracy | precision | recall |", "|---|---|---|---|---|---|",
             _score_row("real held-out (floor)", figures["real"], floor),
             _score_row("reconstructions", figures["reconstructions"], floor),
             _score_row(f"samples, {setting}", chosen, floor)]
    cas = figures.get("classification_accuracy_score")
    if cas:
        lines += ["", f"Classification accuracy score: a classifier trained on {cas['images']} samples scores "
                      f"{cas['samples']:.1%} on real test images ({cas['real']:.1%} trained on as many real images)."]
    return lines + _standard_fid(figures.get("standard_fid"))


def _standard_fid(fid: dict[str, Any] | None) -> list[str]:
    if not fid:
        return []
    return ["", f"Standard FID ({fid['feature_extractor']}, {fid['library']}): {fid['fid']:.2f} for {fid['samples']:,} "
                f"samples against the {fid['reference']}; KID {fid['kid_mean']:.4f} +- {fid['kid_std']:.4f}; "
                f"Inception Score {fid['inception_score_mean']:.2f} +- {fid['inception_score_std']:.2f}."]


def _usage(num_classes: int | None, has_samples: bool) -> list[str]:
    """Class 0 is the one label every conditional model has."""
    sample = (f"generator.sample(16, labels=0)  # 16 samples of class 0 (labels run 0 to {num_classes - 1})"
              if num_classes else "generator.sample(16)  # 16 samples")
    lines = ["## Use", "", "```python", "import vqgen", "",
             'generator = vqgen.Generator.from_pretrained("OWNER/NAME")  # this repo, or a local copy of this folder',
             f"samples = {sample}; .images: (16, C, H, W) in [0, 1]", "```", "",
             "Reading a Hub id needs `pip install 'vqgen[hub]'`. The prior samples at the setting `vqgen eval` chose "
             "(prior/sampling.json) unless told otherwise. Files: vqvae/ and prior/, each a config.json and a "
             "model.safetensors."]
    return lines + (["", f"![samples]({SAMPLES_FILE})", "", "Samples of the run" +
                     (", a row per class." if num_classes else ".")] if has_samples else [])


def model_card(spec: RunSpec, report: dict[str, Any], figures: dict[str, Any] | None, vqvae: VQVAEConfig,
               prior: PriorConfig, has_samples: bool) -> str:
    """README.md of an exported run: front matter, what it is, data, models, figures, how to load it."""
    conditional = bool(prior.num_classes)
    title = [f"# vqgen: VQ-VAE and gated PixelCNN prior on {dataset_name(spec)}", "",
             "A two-stage discrete-latent image generator (van den Oord et al. 2017, \"Neural Discrete Representation "
             "Learning\", arXiv 1711.00937; gated PixelCNN of arXiv 1606.05328), trained and exported with vqgen "
             "(`vqgen run`, then `vqgen export-model`)."]
    sections = [title, _usage(prior.num_classes, has_samples), _data(spec, report["export"]["train"]["manifest"]),
                _models(spec, report, vqvae, prior), _evaluation(report, figures)]
    return "\n\n".join([front_matter(spec, conditional)] + ["\n".join(s) for s in sections]) + "\n"
